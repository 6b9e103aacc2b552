//! Where local state lives, and whether it can be trusted.
//!
//! The default is a per-user directory (`$XDG_STATE_HOME/flumen/<group>`,
//! else `~/.local/state/flumen/<group>`), created with mode 0700. Before a run
//! trusts the checkpoints in a state directory, the directory must belong to
//! the user running flumen and must not be writable by others: anyone who can
//! write there can plant a checkpoint that makes flumen skip records.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The default state directory of consumer group `group` (file-safe name).
pub(crate) fn default_for(group: &str) -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".local/state"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join(format!("flumen-{}", current_uid())));
    base.join("flumen").join(group)
}

/// The effective user id of this process (Linux: the owner of `/proc/self`).
fn current_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// Creates `dir` (mode 0700, parents as needed) when missing, and checks that
/// an existing one belongs to this user and is not writable by group or
/// others.
pub(crate) fn prepare(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| state_dir_error(dir, format!("cannot be created: {e}")))?;
    }
    let meta =
        std::fs::metadata(dir).map_err(|e| state_dir_error(dir, format!("cannot be read: {e}")))?;
    if !meta.is_dir() {
        return Err(state_dir_error(dir, "is not a directory".into()));
    }
    let uid = current_uid();
    if uid != u32::MAX && meta.uid() != uid {
        return Err(state_dir_error(
            dir,
            format!(
                "belongs to user {} but flumen runs as user {uid}; its checkpoints are not trusted",
                meta.uid()
            ),
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(state_dir_error(
            dir,
            format!(
                "is writable by other users (mode {:o}); anyone who can write there can plant \
                 a checkpoint. Run `chmod go-w {}`",
                mode & 0o777,
                dir.display()
            ),
        ));
    }
    Ok(())
}

fn state_dir_error(dir: &Path, reason: String) -> Error {
    Error::Config(format!("the state directory {} {reason}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect 10 of #16: state directories are private and checked.
    #[test]
    fn state_directories_are_created_private_and_shared_ones_refused() {
        let base = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = base.path().join("a/b");
        prepare(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(&dir).map_or(0, |m| m.permissions().mode());
        assert_eq!(mode & 0o777, 0o700);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .unwrap_or_else(|e| panic!("{e}"));
        let error = prepare(&dir).map_or_else(|e| e.to_string(), |()| String::new());
        assert!(error.contains("writable by other users"), "{error}");
    }

    #[test]
    fn the_default_is_per_user() {
        let dir = default_for("g");
        assert!(dir.ends_with("flumen/g"), "{}", dir.display());
        assert!(!dir.starts_with("/tmp/flumen/"), "{}", dir.display());
    }
}
