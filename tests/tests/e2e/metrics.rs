//! The Prometheus endpoint serves flumen's counters (one test: the recorder is process-wide).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use crate::common::{builder, run_until_read, sensor_topics};
use arrow::datatypes::{DataType, Field, Schema};
use flumen::prelude::*;
use flumen_testkit::{unique_name, DevStack};

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_endpoint_serves_pipeline_counters() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    flumen::serve_metrics(addr).expect("serve metrics");
    assert!(
        flumen::serve_metrics(addr).is_err(),
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

    let body = scrape(addr);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let line = body
        .lines()
        .find(|l| l.starts_with("flumen_records_in_total{") && l.contains(&input))
        .unwrap_or_else(|| panic!("no records_in counter for {input}:\n{body}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, workload.events as f64, "{line}");
    assert!(body.contains("flumen_records_out_total"), "{body}");
}
