//! Per-server run directories and free ports.
//!
//! A server's data, configuration and log live in
//! `<temp>/flumen-stack-<uid>/<pid>-<server>-<n>` (mode 0700). A server shared by
//! a test binary is never dropped, so its directory outlives the process: each
//! new directory first sweeps those whose process is gone.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::TestkitError;

/// A free TCP port on 127.0.0.1 (bound once, then released).
pub fn free_port() -> Result<u16, TestkitError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(TestkitError::io("finding a free port"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(TestkitError::io("reading the free port"))
}

fn base() -> PathBuf {
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    std::env::temp_dir().join(format!("flumen-stack-{uid}"))
}

/// Creates a fresh run directory for `server` (removing leftovers of ended
/// test processes first).
pub(crate) fn create(server: &str) -> Result<PathBuf, TestkitError> {
    static N: AtomicU32 = AtomicU32::new(0);
    let base = base();
    create_private(&base)?;
    sweep(&base);
    let dir = base.join(format!(
        "{}-{server}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    create_private(&dir)?;
    Ok(dir)
}

fn create_private(dir: &Path) -> Result<(), TestkitError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(TestkitError::io(format!("creating {}", dir.display())))
}

/// Removes run directories whose process no longer exists.
fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
