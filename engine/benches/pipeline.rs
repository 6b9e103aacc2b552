//! Engine-only benchmarks: the sensor workload in memory (no broker), decoded
//! from JSON, filtered and windowed by the real operators through
//! [`flumen::testing::TestDriver`], on one core (a current-thread runtime).
//!
//! `cargo bench -p flumen --bench pipeline` (add `-- tumbling` for one).
//! Throughput is in input records per second.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flumen::lookup::{Fetched, Lookup, LookupTable};
use flumen::prelude::*;
use flumen::testing::{RawBatch, TestDriver};
use flumen::BoxError;
use flumen_testkit::sensor::SensorWorkload;
use futures::future::BoxFuture;

const TOPIC: &str = "readings";
const OUTPUT: &str = "out";
/// Records per micro-batch: the runtime's default `max_batch_records`.
const BATCH: usize = 10_000;

/// The pipelines of the broker benchmark (examples/bench.rs), minus Kafka.
#[derive(Clone, Copy)]
enum Pipeline {
    /// JSON to Arrow only.
    Decode,
    /// (b) filter + project.
    Stateless,
    /// (c) filter -> tumbling 10 s (count, sum, min, max, mean).
    Tumbling,
    /// (d) filter -> hopping 10 s / 2 s.
    Hopping,
    /// (c) with a lookup of each device's site and max_temp (an in-memory
    /// table: the cost of the lookup operator and its cache, without I/O).
    LookupTumbling,
}

impl Pipeline {
    fn name(self) -> &'static str {
        match self {
            Pipeline::Decode => "decode",
            Pipeline::Stateless => "stateless",
            Pipeline::Tumbling => "tumbling",
            Pipeline::Hopping => "hopping",
            Pipeline::LookupTumbling => "lookup-tumbling",
        }
    }
}

/// The workload as micro-batches of one partition.
fn batches(events: u64, devices: u64) -> Vec<RawBatch> {
    let workload = SensorWorkload {
        events,
        devices,
        step_ms: 1,
        ..SensorWorkload::default()
    };
    let topic: Arc<str> = Arc::from(TOPIC);
    let mut batches = Vec::new();
    let mut batch = RawBatch::new(Arc::clone(&topic), 0);
    for (offset, reading) in workload.readings().enumerate() {
        let value = reading.to_json();
        batch.push(
            Some(reading.device.as_bytes()),
            Some(value.as_bytes()),
            Some(reading.ts),
            offset as i64,
            None,
        );
        if batch.len() == BATCH {
            batches.push(std::mem::replace(
                &mut batch,
                RawBatch::new(Arc::clone(&topic), 0),
            ));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Every device's site and max_temp, computed from its name.
struct Sites;

impl Lookup for Sites {
    fn name(&self) -> String {
        "sites".into()
    }

    fn key(&self) -> Vec<Expr> {
        vec![col("device")]
    }

    fn open(&self) -> BoxFuture<'_, Result<Arc<dyn LookupTable>, BoxError>> {
        Box::pin(async { Ok(Arc::new(Sites) as Arc<dyn LookupTable>) })
    }
}

impl LookupTable for Sites {
    fn columns(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("site", DataType::Utf8, true),
            Field::new("max_temp", DataType::Float64, true),
        ]))
    }

    fn fetch(&self, keys: RecordBatch) -> BoxFuture<'_, Result<Fetched, BoxError>> {
        let devices = keys.column(0).as_string::<i32>();
        let sites: StringArray = devices
            .iter()
            .map(|d| d.map(|d| format!("site-{}", d.len())))
            .collect();
        let max: Float64Array = devices.iter().map(|d| d.map(|d| d.len() as f64)).collect();
        let found = devices.iter().map(|d| Some(d.is_some())).collect();
        let rows = RecordBatch::try_new(self.columns(), vec![Arc::new(sites), Arc::new(max)]);
        Box::pin(async move { Ok(Fetched { rows: rows?, found }) })
    }
}

fn driver(rt: &tokio::runtime::Runtime, pipeline: Pipeline) -> TestDriver {
    let app = Application::builder()
        .brokers("unused:9092")
        .consumer_group("bench")
        .build()
        .unwrap();
    let schema = Schema::new(vec![
        Field::new("device", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("temp", DataType::Float64, false),
    ]);
    let frame = app
        .dataframe(Topic::json(TOPIC).schema(schema).timestamp_field("ts"))
        .unwrap();
    let aggregations = || {
        [
            count(),
            sum(col("temp")).alias("sum"),
            min(col("temp")).alias("min"),
            max(col("temp")).alias("max"),
            mean(col("temp")).alias("mean"),
        ]
    };
    let readings = frame.filter(col("temp").gt_eq(lit(0.0)));
    match pipeline {
        Pipeline::Decode => frame.to_topic(Topic::json(OUTPUT)),
        Pipeline::Stateless => readings
            .select([
                col("device"),
                col("ts"),
                (col("temp") * lit(1.8) + lit(32.0)).alias("temp_f"),
            ])
            .to_topic(Topic::json(OUTPUT)),
        Pipeline::Tumbling => readings
            .tumbling_window(Duration::from_secs(10))
            .agg(aggregations())
            .final_()
            .to_topic(Topic::json(OUTPUT)),
        Pipeline::LookupTumbling => readings
            .lookup(Sites)
            .tumbling_window(Duration::from_secs(10))
            .agg(aggregations())
            .final_()
            .to_topic(Topic::json(OUTPUT)),
        Pipeline::Hopping => readings
            .hopping_window(Duration::from_secs(10), Duration::from_secs(2))
            .agg(aggregations())
            .final_()
            .to_topic(Topic::json(OUTPUT)),
    }
    rt.block_on(TestDriver::new(&app)).unwrap()
}

fn run(rt: &tokio::runtime::Runtime, mut driver: TestDriver, batches: Vec<RawBatch>) -> usize {
    rt.block_on(async {
        let mut rows = 0;
        for batch in batches {
            driver.process(batch).await.unwrap();
            rows += driver
                .take_output(OUTPUT)
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>();
        }
        rows
    })
}

fn pipelines(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let events = 200_000;
    for devices in [1_000, 100_000] {
        let input = batches(events, devices);
        let mut group = c.benchmark_group(format!("{devices} devices"));
        group.throughput(Throughput::Elements(events));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(5));
        for pipeline in [
            Pipeline::Decode,
            Pipeline::Stateless,
            Pipeline::Tumbling,
            Pipeline::Hopping,
            Pipeline::LookupTumbling,
        ] {
            if devices > 1_000 && matches!(pipeline, Pipeline::Decode | Pipeline::Stateless) {
                continue; // the key count matters to windows only
            }
            group.bench_function(pipeline.name(), |b| {
                b.iter_batched(
                    || (driver(&rt, pipeline), input.clone()),
                    |(driver, input)| run(&rt, driver, input),
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, pipelines);
criterion_main!(benches);
