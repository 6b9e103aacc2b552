//! jemalloc as the process's allocator (the default `jemalloc` feature).
//!
//! librdkafka allocates and frees several blocks per record (the message,
//! its headers, its delivery report) on different threads: the caller's,
//! the broker thread's and the polling thread's. glibc's malloc serves that
//! badly: in the Cassandra source's snapshot, malloc and free took about a
//! third of the process's CPU, and jemalloc cut the process's CPU per row
//! from ~3.1 µs to ~1.8 µs (README, "Memory allocator").
//!
//! The feature makes jemalloc Rust's global allocator and, being built with
//! unprefixed symbols, the `malloc` and `free` of the whole process, so C
//! code (librdkafka, RocksDB, OpenSSL) allocates from it too. An application
//! that wants another allocator turns the feature off (`default-features =
//! false` on `flumen` and `flumen-cassandra`); two global allocators in one
//! program do not compile.

#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Whether this build made jemalloc the process's allocator.
pub const JEMALLOC: bool = cfg!(all(feature = "jemalloc", not(target_env = "msvc")));

#[cfg(all(test, feature = "jemalloc", target_os = "linux"))]
mod tests {
    use std::process::Command;

    /// The functions C code allocates with, as this executable exports them
    /// (`nm -D --defined-only`): defined here, they take the place of
    /// glibc's for librdkafka and every other library in the process.
    fn exported_allocation_functions() -> Vec<String> {
        let exe = std::env::current_exe().unwrap_or_default();
        let listed = Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(&exe)
            .output();
        let listed = match listed {
            Ok(output) if output.status.success() => output.stdout,
            other => panic!("`nm -D {}` (binutils) failed: {other:?}", exe.display()),
        };
        String::from_utf8_lossy(&listed)
            .lines()
            .filter_map(|line| line.split_whitespace().last())
            .filter(|name| ["malloc", "free", "calloc", "realloc"].contains(name))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn c_code_allocates_from_jemalloc_too() {
        let mut found = exported_allocation_functions();
        found.sort();
        assert_eq!(found, ["calloc", "free", "malloc", "realloc"]);
    }
}
