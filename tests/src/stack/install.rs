//! Where the servers' jars and the Java that runs them come from.
//!
//! `tests/stack/pom.xml` copies each server's runtime classpath from Maven
//! Central into its own directory of the stack cache
//! (`$FLUMEN_STACK_DIR`, else `~/.cache/flumen/stack`). `tests/bootstrap.sh`
//! runs it; when the jars are missing anyway, the testkit runs it itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TestkitError;

/// The pinned Apache Kafka version (`tests/stack/pom.xml`).
pub const KAFKA_VERSION: &str = "4.4.0";
/// The pinned Apache Cassandra version (`tests/stack/pom.xml`).
pub const CASSANDRA_VERSION: &str = "5.0.8";

/// The Maven project that fetches the servers.
const STACK_POM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/stack/pom.xml");

/// The stack cache: `$FLUMEN_STACK_DIR`, else `~/.cache/flumen/stack`.
pub fn stack_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLUMEN_STACK_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache/flumen/stack")
}

/// The jar directories of both servers, fetching them first when missing.
#[derive(Debug, Clone)]
pub struct ServerJars {
    /// Kafka's runtime classpath.
    pub kafka: PathBuf,
    /// Cassandra's runtime classpath.
    pub cassandra: PathBuf,
}

fn has_jar(dir: &Path, prefix: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(prefix) && name.ends_with(".jar")
        })
    })
}

/// Returns the jar directories, running `mvn` on `tests/stack/pom.xml` once
/// when either is missing (concurrent callers wait for one fetch).
pub fn ensure_jars() -> Result<ServerJars, TestkitError> {
    let root = stack_dir();
    let jars = ServerJars {
        kafka: root.join(format!("kafka-{KAFKA_VERSION}")),
        cassandra: root.join(format!("cassandra-{CASSANDRA_VERSION}")),
    };
    let present =
        || has_jar(&jars.kafka, "kafka_2.13-") && has_jar(&jars.cassandra, "cassandra-all-");
    if present() {
        return Ok(jars);
    }
    std::fs::create_dir_all(&root)
        .map_err(TestkitError::io(format!("creating {}", root.display())))?;
    let lock_path = root.join(".fetch.lock");
    let lock = std::fs::File::create(&lock_path).map_err(TestkitError::io(format!(
        "creating {}",
        lock_path.display()
    )))?;
    lock.lock()
        .map_err(TestkitError::io(format!("locking {}", lock_path.display())))?;
    if present() {
        return Ok(jars);
    }
    eprintln!(
        "flumen-testkit: fetching Kafka {KAFKA_VERSION} and Cassandra {CASSANDRA_VERSION} \
         jars from Maven Central into {} (once)...",
        root.display()
    );
    let status = Command::new("mvn")
        .args([
            "-B",
            "-q",
            "-Dstyle.color=never",
            "-f",
            STACK_POM,
            "package",
        ])
        .arg(format!("-Dstack.dir={}", root.display()))
        .status()
        .map_err(|e| {
            fetch_error(format!(
                "running mvn (is Maven installed? run tests/bootstrap.sh): {e}"
            ))
        })?;
    if !status.success() || !present() {
        return Err(fetch_error(format!(
            "mvn -f {STACK_POM} package exited with {status}"
        )));
    }
    Ok(jars)
}

fn fetch_error(reason: String) -> TestkitError {
    TestkitError::Install { reason }
}

/// The `java` that runs the servers: Cassandra 5.0 runs on Java 11 or 17
/// only, Kafka 4 needs 17 or later, so Java 17. Looks at
/// `$FLUMEN_JAVA_HOME`, `$JAVA_HOME`, the `java` on `PATH` and
/// `/usr/lib/jvm/*17*`, and takes the first that is Java 17.
pub fn java17() -> Result<PathBuf, TestkitError> {
    let mut homes: Vec<PathBuf> = ["FLUMEN_JAVA_HOME", "JAVA_HOME"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    if let Some(home) = path_java_home() {
        homes.push(home);
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/jvm") {
        let mut found: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        found.sort();
        homes.extend(found);
    }
    homes
        .iter()
        .find(|home| java_major(home) == Some(17))
        .map(|home| home.join("bin/java"))
        .ok_or_else(|| {
            fetch_error(format!(
                "no Java 17 found (looked at {homes:?}); run tests/bootstrap.sh, \
                 or set FLUMEN_JAVA_HOME"
            ))
        })
}

/// The home of the `java` on `PATH` (`<home>/bin/java`, symlinks resolved).
fn path_java_home() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let java = std::env::split_paths(&path)
        .map(|dir| dir.join("java"))
        .find(|p| p.is_file())?;
    let real = std::fs::canonicalize(java).ok()?;
    Some(real.parent()?.parent()?.to_path_buf())
}

/// The major version of the JDK in `home`, from its `release` file.
fn java_major(home: &Path) -> Option<u32> {
    if !home.join("bin/java").is_file() {
        return None;
    }
    let release = std::fs::read_to_string(home.join("release")).ok()?;
    let line = release.lines().find(|l| l.starts_with("JAVA_VERSION="))?;
    let version = line.trim_start_matches("JAVA_VERSION=").trim_matches('"');
    let major = version.split(['.', '-', '+']).next()?;
    major.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_versions_are_the_pom_s() {
        let pom = std::fs::read_to_string(STACK_POM).unwrap_or_default();
        assert!(
            pom.contains(&format!("<kafka.version>{KAFKA_VERSION}</kafka.version>")),
            "tests/stack/pom.xml does not pin Kafka {KAFKA_VERSION}"
        );
        assert!(
            pom.contains(&format!(
                "<cassandra.version>{CASSANDRA_VERSION}</cassandra.version>"
            )),
            "tests/stack/pom.xml does not pin Cassandra {CASSANDRA_VERSION}"
        );
    }
}
