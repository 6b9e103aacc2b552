//! Process-level crash tests of `CassandraSource`: the `publish_table` example
//! as a child process, killed with SIGKILL at three points (mid-snapshot, at
//! the switch to change capture, during capture) and restarted with the same
//! flags. A `read_committed` read of the topic then holds every write: with
//! exactly-once each exactly once, with at-least-once each at least once.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers fail loudly

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flumen_testkit::{unique_name, DevCassandra, DevStack, ReadRecord};
use futures::StreamExt;
use scylla::client::session::Session;

const SNAPSHOT_ROWS: i64 = 12_000;
const LIVE_ROWS: i64 = 3_000;
const DEADLINE: Duration = Duration::from_secs(120);

/// The `publish_table` example binary, built by `cargo test` next to this test.
fn publish_table() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join("publish_table");
    assert!(
        path.exists(),
        "{} missing: run through `cargo test -p flumen-examples`, which builds the examples",
        path.display()
    );
    path
}

/// The last progress line of a run: (pass, rows published by this run).
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    pass: u64,
    rows: u64,
}

/// A child process, killed when dropped (also when the test fails).
struct Running {
    child: Child,
    progress: Arc<Mutex<Progress>>,
}

impl Running {
    /// Waits until `reached` holds for the run's progress, then SIGKILLs it.
    fn kill_when(mut self, what: &str, reached: impl Fn(Progress) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let now = *self.progress.lock().unwrap();
            if reached(now) {
                break;
            }
            assert!(Instant::now() < deadline, "never reached {what}: {now:?}");
            assert!(
                self.child.try_wait().expect("status").is_none(),
                "the publisher exited before {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
        eprintln!("killed at {what}: {:?}", *self.progress.lock().unwrap());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `pass P ranges D/T rows N lag L`.
fn parse(line: &str) -> Option<Progress> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["pass", pass, "ranges", _, "rows", rows, ..] => Some(Progress {
            pass: pass.parse().ok()?,
            rows: rows.parse().ok()?,
        }),
        _ => None,
    }
}

struct Publisher<'a> {
    stack: &'a DevStack,
    cassandra: &'a DevCassandra,
    table: &'a str,
    group: String,
    at_least_once: bool,
}

impl Publisher<'_> {
    fn spawn(&self) -> Running {
        let mut command = Command::new(publish_table());
        command
            .args(["--brokers", self.stack.brokers()])
            .args(["--nodes", self.cassandra.nodes()])
            .args(["--table", self.table, "--group", &self.group])
            .args(["--capture", "writetime", "--poll-ms", "300"])
            .args(["--splits", "16", "--page-size", "200"])
            .args(["--max-rows-per-second", "4000", "--progress-ms", "20"])
            // The killed leader's membership ends after this, not 45 s.
            .args(["--kafka-config", "session.timeout.ms=6000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if self.at_least_once {
            command.arg("--at-least-once");
        }
        let mut child = command.spawn().expect("spawn publish_table");
        let progress = Arc::new(Mutex::new(Progress::default()));
        let stdout = child.stdout.take().expect("stdout");
        let seen = Arc::clone(&progress);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = parse(&line) {
                    *seen.lock().unwrap() = p;
                }
            }
        });
        Running { child, progress }
    }
}

/// A keyspace of its own with `readings (device text, ts bigint, temp
/// double, PRIMARY KEY (device, ts))`.
async fn readings_table(cassandra: &DevCassandra) -> (Session, String) {
    let session = cassandra.session().await.expect("session");
    let keyspace = cassandra
        .create_keyspace(&session, "crash")
        .await
        .expect("keyspace");
    let table = format!("{keyspace}.readings");
    session
        .query_unpaged(
            format!(
                "CREATE TABLE {table} (device text, ts bigint, temp double, \
                 PRIMARY KEY (device, ts))"
            ),
            &[],
        )
        .await
        .expect("create table");
    (session, table)
}

/// Writes rows `range` (device `dev-{n % 40}`, ts `n`, temp `temp`); returns them.
async fn write(
    session: &Session,
    table: &str,
    range: std::ops::Range<i64>,
    temp: f64,
) -> Vec<(String, i64, u64)> {
    let insert = session
        .prepare(format!(
            "INSERT INTO {table} (device, ts, temp) VALUES (?, ?, ?)"
        ))
        .await
        .expect("prepare");
    let rows: Vec<(String, i64, u64)> = range
        .map(|n| (format!("dev-{}", n % 40), n, temp.to_bits()))
        .collect();
    let writes = rows.iter().map(|(device, ts, _)| {
        let (insert, session) = (&insert, session);
        async move { session.execute_unpaged(insert, (device, ts, temp)).await }
    });
    let results: Vec<_> = futures::stream::iter(writes)
        .buffer_unordered(64)
        .collect()
        .await;
    for result in results {
        result.expect("insert");
    }
    rows
}

/// How often each (device, ts, temp) was published; heartbeats skipped.
fn published(records: &[ReadRecord]) -> BTreeMap<(String, i64, u64), usize> {
    let mut seen = BTreeMap::new();
    for record in records.iter().filter(|r| r.value.is_some()) {
        let json = record.json();
        let row = (
            json["device"].as_str().expect("device").to_string(),
            json["ts"].as_i64().expect("ts"),
            json["temp"].as_f64().expect("temp").to_bits(),
        );
        *seen.entry(row).or_insert(0) += 1;
    }
    seen
}

async fn killed_three_times(at_least_once: bool) {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let (session, table) = readings_table(&cassandra).await;
    let mut written = write(&session, &table, 0..SNAPSHOT_ROWS, 20.0).await;
    let publisher = Publisher {
        stack: &stack,
        cassandra: &cassandra,
        table: &table,
        group: unique_name("crash-src"),
        at_least_once,
    };
    let rows = SNAPSHOT_ROWS as u64;
    publisher
        .spawn()
        .kill_when("a third of the snapshot", |p| p.rows >= rows / 3);
    publisher
        .spawn()
        .kill_when("the first capture pass", |p| p.pass >= 1);
    // New rows and updates of snapshot rows, caught by change capture only.
    written.extend(
        write(
            &session,
            &table,
            SNAPSHOT_ROWS..SNAPSHOT_ROWS + LIVE_ROWS,
            30.0,
        )
        .await,
    );
    written.extend(write(&session, &table, 0..LIVE_ROWS, 40.0).await);
    publisher
        .spawn()
        .kill_when("some of the captured rows", |p| {
            p.pass >= 1 && p.rows >= 500
        });
    let last = publisher.spawn();
    let topic = format!("{}-source-{table}", publisher.group);
    let deadline = Instant::now() + DEADLINE;
    let seen = loop {
        let records = stack.read_committed(&topic, DEADLINE).await.expect("read");
        let seen = published(&records);
        if written.iter().all(|w| seen.contains_key(w)) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    drop(last);
    let missing: Vec<_> = written.iter().filter(|w| !seen.contains_key(*w)).collect();
    assert!(
        missing.is_empty(),
        "{} writes never published, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let repeated = seen.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} writes, {repeated} published more than once",
        written.len()
    );
    if !at_least_once {
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{} writes published more than once, e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(5)]
        );
        assert_eq!(seen.len(), written.len(), "nothing but the writes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_three_points_exactly_once_publishes_every_write_once() {
    killed_three_times(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_three_points_at_least_once_publishes_every_write() {
    killed_three_times(true).await;
}
