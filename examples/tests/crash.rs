//! Process-level crash test: `sensor_metrics` as a child process, killed with
//! SIGKILL three times mid-stream and restarted with the same flags (twice on
//! an empty state directory, restored from the changelog); the final Cassandra
//! table equals an uninterrupted run's, row for row.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers fail loudly

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flumen_examples::cassandra::{prepare_table, read_rows, Row};
use flumen_testkit::cql::CqlTestServer;
use flumen_testkit::sensor::SensorWorkload;
use flumen_testkit::{unique_name, DevStack};
use scylla::client::session::Session;

const EVENTS: u64 = 9_000;
const DEVICES: u64 = 30;
const DEADLINE: Duration = Duration::from_secs(120);

/// The `sensor_metrics` example binary, built by `cargo test` next to this test.
fn sensor_metrics() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/crash-<hash> -> target/<profile>/examples/sensor_metrics
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join("sensor_metrics");
    assert!(
        path.exists(),
        "{} missing: run through `cargo test -p flumen-examples`, which builds the examples",
        path.display()
    );
    path
}

/// The child's command line: the same flags every time, but the state directory.
struct Run<'a> {
    stack: &'a DevStack,
    nodes: &'a str,
    input: &'a str,
    group: String,
    table: String,
}

impl Run<'_> {
    fn spawn(&self, state: &Path) -> Child {
        Command::new(sensor_metrics())
            .args(["--brokers", self.stack.brokers()])
            .args(["--input", self.input])
            .args(["--group", &self.group])
            .args(["--window", "tumbling:10s"])
            .args(["--sink", "cassandra"])
            .args(["--cassandra", self.nodes])
            .args(["--keyspace", "metrics", "--table", &self.table])
            .args(["--exit-when-idle", "3"])
            .arg("--state-dir")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sensor_metrics")
    }
}

/// Waits for `child` to exit on its own, successfully.
fn wait_for_exit(mut child: Child) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            assert!(status.success(), "sensor_metrics failed: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "sensor_metrics did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn row_count(session: &Session, table: &str) -> i64 {
    session
        .query_unpaged(format!("SELECT count(*) FROM metrics.{table}"), &[])
        .await
        .expect("count")
        .into_rows_result()
        .expect("rows")
        .single_row::<(i64,)>()
        .expect("one row")
        .0
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn assert_same_rows(actual: &[Row], expected: &[Row]) {
    assert_eq!(actual.len(), expected.len(), "number of windows");
    for (a, e) in actual.iter().zip(expected) {
        assert_eq!((&a.0, a.1, a.2, a.3), (&e.0, e.1, e.2, e.3), "window");
        for (x, y) in [(a.4, e.4), (a.5, e.5), (a.6, e.6), (a.7, e.7)] {
            assert!(close(x, y), "{a:?} != {e:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_metrics_killed_three_times_writes_the_uninterrupted_table() {
    let stack = DevStack::start().expect("dev stack");
    let server = CqlTestServer::start().expect("cql server");
    let nodes = server.node();
    let input = unique_name("readings");
    stack.create_topic(&input, 3).await.expect("input topic");
    // One record per producer batch: a restart may resume at any offset on Tansu.
    let workload = SensorWorkload {
        events: EVENTS,
        devices: DEVICES,
        step_ms: 100,
        ..Default::default()
    };
    stack
        .produce(&input, workload.records())
        .await
        .expect("produce");

    let run = |table: &str| Run {
        stack: &stack,
        nodes: &nodes,
        input: &input,
        group: unique_name("crash"),
        table: table.to_string(),
    };
    let session = prepare_table(&nodes, "metrics", "reference")
        .await
        .expect("reference table");
    prepare_table(&nodes, "metrics", "crashed")
        .await
        .expect("crash table");

    let reference_state = tempfile::tempdir().expect("state");
    wait_for_exit(run("reference").spawn(reference_state.path()));
    let expected = read_rows(&session, "metrics", "reference")
        .await
        .expect("reference rows");
    assert!(expected.len() > 500, "{} windows", expected.len());

    let crashed = run("crashed");
    let same_state = tempfile::tempdir().expect("state");
    let mut empty_states = Vec::new();
    for (i, share) in [0.2, 0.45, 0.7].into_iter().enumerate() {
        // Runs 1 and 3 start on an empty state directory: restored from the changelog.
        let state = if i % 2 == 0 {
            empty_states.push(tempfile::tempdir().expect("state"));
            empty_states.last().expect("pushed").path().to_path_buf()
        } else {
            same_state.path().to_path_buf()
        };
        let mut child = crashed.spawn(&state);
        let want = (expected.len() as f64 * share) as i64;
        let deadline = Instant::now() + DEADLINE;
        while row_count(&session, "crashed").await < want {
            assert!(Instant::now() < deadline, "run {i} never wrote {want} rows");
            assert!(
                child.try_wait().expect("status").is_none(),
                "run {i} exited before it was killed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    wait_for_exit(crashed.spawn(same_state.path()));

    let actual = read_rows(&session, "metrics", "crashed")
        .await
        .expect("rows");
    assert_same_rows(&actual, &expected);
}
