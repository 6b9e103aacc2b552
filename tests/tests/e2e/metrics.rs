//! The Prometheus endpoint serves flumen's counters. The recorder is
//! process-wide: every test that reads metrics shares [`endpoint`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{builder, run_until_read, sensor_topics};
use arrow::datatypes::{DataType, Field, Schema};
use flumen::prelude::*;
use flumen_testkit::{unique_name, DevStack};

/// The metrics endpoint of this test process, installed on first use. Call
/// it before starting what you measure: metric handles taken before the
/// recorder exists record nothing.
pub(crate) fn endpoint() -> SocketAddr {
    static ENDPOINT: OnceLock<SocketAddr> = OnceLock::new();
    *ENDPOINT.get_or_init(|| {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        // Installed from a thread outside any test's runtime, so the exporter
        // runs on its own runtime and outlives the test that installed it.
        std::thread::spawn(move || flumen::serve_metrics(addr).map_err(|e| e.to_string()))
            .join()
            .expect("install thread")
            .expect("serve metrics");
        addr
    })
}

/// One scrape of the endpoint: status line, headers and body.
pub(crate) fn scrape() -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(endpoint()) {
            Ok(stream) => break stream,
            // The exporter binds its port in the background after installing.
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%e, "metrics endpoint not listening yet");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("connect to the metrics endpoint: {e}"),
        }
    };
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    body
}

/// The sum of metric `name` over its series whose labels contain `label`
/// (e.g. `topic="in-1"`); 0 when there is none yet.
pub(crate) fn metric(name: &str, label: &str) -> f64 {
    scrape()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_endpoint_serves_pipeline_counters() {
    endpoint();
    let other = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    assert!(
        flumen::serve_metrics(other).is_err(),
        "the recorder is process-wide"
    );

    let stack = DevStack::start().expect("dev stack");
    let (input, output, workload) = sensor_topics(&stack, 2, 300, 3).await;
    let app = builder(&stack, &unique_name("g")).build().expect("app");
    app.dataframe(Topic::json(&input).schema(Schema::new(vec![Field::new(
        "temp",
        DataType::Float64,
        false,
    )])))
    .expect("frame")
    .to_topic(Topic::json(&output));
    run_until_read(app, workload.events).await;

    let body = scrape();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert_eq!(
        metric("flumen_records_in_total", &format!("topic=\"{input}\"")),
        workload.events as f64,
        "{body}"
    );
    assert!(body.contains("flumen_records_out_total"), "{body}");
}
