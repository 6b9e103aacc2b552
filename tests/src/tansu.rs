//! Installing the pinned dev broker: Tansu 0.6.0 with memory storage, plus
//! one route flumen adds.
//!
//! Tansu 0.6.0's storage implements ending a transaction (`txn_end`), but its
//! broker registers no route for EndTxn (API key 26): clients can open
//! transactions and never commit or abort them. The install therefore builds
//! Tansu from its published sources with `tests/tansu/end_txn_route.rs`
//! appended to `tansu-broker`'s route table (Tansu is Apache-2.0). Everything
//! else is the published 0.6.0, built with its own `Cargo.lock`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::TestkitError;

/// The pinned Tansu version.
pub const TANSU_VERSION: &str = "0.6.0";
/// Cargo features the broker is built with: the default build has no storage
/// engine at all; `dynostore` provides `memory://`.
pub const TANSU_FEATURES: &str = "dynostore";
/// What flumen adds to the published broker (part of the install directory's name).
pub const TANSU_PATCH: &str = "endtxn";

/// The route added to `tansu-broker/src/service/storage.rs`.
const END_TXN_ROUTE: &str = include_str!("../tansu/end_txn_route.rs");
/// Where in the route list of `services()` the route is registered.
const ROUTE_ANCHOR: &str = "        add_partitions_to_txn,\n";

/// Where tools are installed: `$FLUMEN_TOOLS_DIR`, else `~/.local/share/flumen`.
fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLUMEN_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".local/share/flumen")
}

fn install_error(reason: impl Into<String>) -> TestkitError {
    TestkitError::Install {
        version: TANSU_VERSION,
        reason: reason.into(),
    }
}

/// Returns the path of the pinned Tansu binary, building and installing it
/// (see the module docs) when it is missing. `$FLUMEN_TANSU_BIN` overrides
/// the location. Concurrent callers wait for one install.
pub fn ensure_tansu() -> Result<PathBuf, TestkitError> {
    if let Some(bin) = std::env::var_os("FLUMEN_TANSU_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let root = tools_dir().join(format!(
        "tansu-{TANSU_VERSION}-{TANSU_FEATURES}-{TANSU_PATCH}"
    ));
    let bin = root.join("bin/tansu");
    if bin.is_file() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&root)
        .map_err(TestkitError::io(format!("creating {}", root.display())))?;
    let lock_path = root.with_extension("lock");
    let lock = std::fs::File::create(&lock_path).map_err(TestkitError::io(format!(
        "creating {}",
        lock_path.display()
    )))?;
    lock.lock()
        .map_err(TestkitError::io(format!("locking {}", lock_path.display())))?;
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "flumen-testkit: the Kafka-protocol dev broker (Tansu {TANSU_VERSION} with the EndTxn \
         route, features {TANSU_FEATURES}) is not installed in {}.\n\
         flumen-testkit: building it now from its published sources \
         (first time only; about 15 minutes on 2 cores)...",
        root.display()
    );
    let work = root.with_extension("build");
    install(&work, &root)?;
    let _ = std::fs::remove_dir_all(&work);
    if !bin.is_file() {
        return Err(install_error(format!(
            "{} missing after the install",
            bin.display()
        )));
    }
    eprintln!(
        "flumen-testkit: Tansu {TANSU_VERSION} installed at {}",
        bin.display()
    );
    Ok(bin)
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .env_remove("CARGO_TARGET_DIR")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    command
}

fn run(mut command: Command, what: &str) -> Result<(), TestkitError> {
    let status = command
        .status()
        .map_err(|e| install_error(format!("{what}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(install_error(format!("{what} exited with {status}")))
    }
}

/// Fetches the published sources, adds the route and installs into `root`.
fn install(work: &Path, root: &Path) -> Result<(), TestkitError> {
    let _ = std::fs::remove_dir_all(work);
    let fetch = work.join("fetch");
    std::fs::create_dir_all(fetch.join("src"))
        .map_err(TestkitError::io(format!("creating {}", fetch.display())))?;
    let write = |path: PathBuf, text: &str| {
        std::fs::write(&path, text).map_err(TestkitError::io(format!("writing {}", path.display())))
    };
    write(
        fetch.join("Cargo.toml"),
        &format!(
            "[package]\nname = \"flumen-tansu-sources\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             [dependencies]\ntansu = \"={TANSU_VERSION}\"\ntansu-broker = \"={TANSU_VERSION}\"\n"
        ),
    )?;
    write(fetch.join("src/lib.rs"), "")?;
    let mut fetch_cmd = cargo();
    fetch_cmd
        .arg("fetch")
        .arg("--manifest-path")
        .arg(fetch.join("Cargo.toml"));
    run(fetch_cmd, "cargo fetch of the Tansu sources")?;

    let tansu = work.join(format!("tansu-{TANSU_VERSION}"));
    let broker = work.join(format!("tansu-broker-{TANSU_VERSION}"));
    copy_dir(&registry_source(&format!("tansu-{TANSU_VERSION}"))?, &tansu)?;
    copy_dir(
        &registry_source(&format!("tansu-broker-{TANSU_VERSION}"))?,
        &broker,
    )?;
    add_end_txn_route(&broker.join("src/service/storage.rs"))?;
    use_patched_broker(&tansu, &broker)?;

    let mut install = cargo();
    install
        .arg("install")
        .arg("--path")
        .arg(&tansu)
        .args(["--locked", "--features", TANSU_FEATURES, "--root"])
        .arg(root);
    run(install, "cargo install of the patched Tansu")
}

/// The unpacked source of crate `name-version` in Cargo's registry cache.
fn registry_source(dir_name: &str) -> Result<PathBuf, TestkitError> {
    let cargo_home = std::env::var_os("CARGO_HOME").map_or_else(
        || {
            let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
            home.join(".cargo")
        },
        PathBuf::from,
    );
    let registries = cargo_home.join("registry/src");
    let entries = std::fs::read_dir(&registries).map_err(TestkitError::io(format!(
        "listing {}",
        registries.display()
    )))?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(dir_name))
        .find(|p| p.join("Cargo.toml").is_file())
        .ok_or_else(|| {
            install_error(format!(
                "{dir_name} not found under {}",
                registries.display()
            ))
        })
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), TestkitError> {
    std::fs::create_dir_all(to).map_err(TestkitError::io(format!("creating {}", to.display())))?;
    let entries =
        std::fs::read_dir(from).map_err(TestkitError::io(format!("listing {}", from.display())))?;
    for entry in entries {
        let entry = entry.map_err(TestkitError::io(format!("listing {}", from.display())))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if source.is_dir() {
            copy_dir(&source, &target)?;
        } else {
            std::fs::copy(&source, &target)
                .map_err(TestkitError::io(format!("copying {}", source.display())))?;
        }
    }
    Ok(())
}

/// Registers and appends the EndTxn route in `tansu-broker`'s `storage.rs`.
fn add_end_txn_route(storage_rs: &Path) -> Result<(), TestkitError> {
    let source = std::fs::read_to_string(storage_rs).map_err(TestkitError::io(format!(
        "reading {}",
        storage_rs.display()
    )))?;
    if !source.contains(ROUTE_ANCHOR) {
        return Err(install_error(format!(
            "{} has changed: the route list entry {ROUTE_ANCHOR:?} is missing",
            storage_rs.display()
        )));
    }
    let patched = source.replacen(
        ROUTE_ANCHOR,
        &format!("{ROUTE_ANCHOR}        flumen_end_txn,\n"),
        1,
    ) + END_TXN_ROUTE;
    std::fs::write(storage_rs, patched).map_err(TestkitError::io(format!(
        "writing {}",
        storage_rs.display()
    )))
}

/// Points `tansu` at the patched `tansu-broker` in `broker`, keeping every
/// other locked version: a `[patch]` entry, and the lock file's entry for
/// `tansu-broker` without its registry source.
fn use_patched_broker(tansu: &Path, broker: &Path) -> Result<(), TestkitError> {
    let manifest = tansu.join("Cargo.toml");
    let mut text = std::fs::read_to_string(&manifest)
        .map_err(TestkitError::io(format!("reading {}", manifest.display())))?;
    text.push_str(&format!(
        "\n[patch.crates-io]\ntansu-broker = {{ path = {:?} }}\n",
        broker.display().to_string()
    ));
    std::fs::write(&manifest, text)
        .map_err(TestkitError::io(format!("writing {}", manifest.display())))?;
    let lock = tansu.join("Cargo.lock");
    let text = std::fs::read_to_string(&lock)
        .map_err(TestkitError::io(format!("reading {}", lock.display())))?;
    let mut found = false;
    let blocks: Vec<String> = text
        .split("\n[[package]]\n")
        .map(|block| {
            if block.starts_with("name = \"tansu-broker\"\n") {
                found = true;
                block
                    .lines()
                    .filter(|l| !l.starts_with("source = ") && !l.starts_with("checksum = "))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                block.to_string()
            }
        })
        .collect();
    if !found {
        return Err(install_error(format!(
            "{} has no tansu-broker entry",
            lock.display()
        )));
    }
    std::fs::write(&lock, blocks.join("\n[[package]]\n"))
        .map_err(TestkitError::io(format!("writing {}", lock.display())))
}
