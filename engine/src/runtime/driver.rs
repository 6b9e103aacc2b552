//! Running an application's pipelines in memory, without a broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use flumen_kafka::{DeliveryBatch, RawBatch};
use futures::future::BoxFuture;

use crate::runtime::lock;
use crate::runtime::outputs::OutputWriter;
use crate::runtime::pipeline::{PartitionPipeline, SourcePlan};
use crate::sink::SourcePosition;
use crate::{Application, Error, Result};

/// Runs the pipelines of an [`Application`] on records handed to it in memory,
/// without a broker: for unit tests of a pipeline and for engine benchmarks.
///
/// Records go in as [`RawBatch`]es, one input partition each, in offset order;
/// they are decoded, filtered, windowed and so on exactly as in a run. What
/// the pipeline writes to a Kafka output is kept as Arrow batches (before
/// encoding) until [`TestDriver::take_output`]; custom sinks are opened and
/// written as in a run, `print()` prints. Window state lives in memory (no
/// state directory, no changelog), per input partition.
///
/// Plans that need Kafka beyond their input and outputs are refused when the
/// driver is created: a `group_by` that repartitions, and dead-letter topics.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{Array, Float64Array};
/// use arrow::datatypes::{DataType, Field, Schema};
/// use flumen::prelude::*;
/// use flumen::testing::{RawBatch, TestDriver};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> flumen::Result<()> {
/// let app = Application::builder().brokers("unused:9092").consumer_group("test").build()?;
/// let schema = Schema::new(vec![
///     Field::new("device", DataType::Utf8, false),
///     Field::new("temp", DataType::Float64, false),
/// ]);
/// app.dataframe(Topic::json("readings").schema(schema))?
///     .filter(col("temp").gt_eq(lit(20.0)))
///     .to_topic(Topic::json("warm"));
///
/// let mut driver = TestDriver::new(&app).await?;
/// let mut batch = RawBatch::new(Arc::from("readings"), 0);
/// batch.push(None, Some(br#"{"device":"a","temp":21.5}"#), Some(1_000), 0, None);
/// batch.push(None, Some(br#"{"device":"b","temp":3.0}"#), Some(1_001), 1, None);
/// driver.process(batch).await?;
///
/// let warm = driver.take_output("warm");
/// let temps = warm[0].column_by_name("temp").unwrap();
/// let temps = temps.as_any().downcast_ref::<Float64Array>().unwrap();
/// assert_eq!(temps.values(), &[21.5]);
/// # Ok(())
/// # }
/// ```
pub struct TestDriver {
    sources: HashMap<String, Arc<SourcePlan>>,
    /// Per input partition, its pipeline and the batches of its Kafka outputs.
    pipelines: HashMap<(String, i32), (PartitionPipeline, Vec<Collected>)>,
    app_stats: Arc<crate::Stats>,
    ctx: Arc<SessionContext>,
}

impl TestDriver {
    /// A driver for the frames built on `app` so far. Fails as
    /// [`Application::run`] would on a bad plan (unknown columns, type errors),
    /// and on plans that cannot run in memory.
    pub async fn new(app: &Application) -> Result<Self> {
        let ctx = Arc::new(SessionContext::new());
        let sources = app.in_memory_sources(&ctx).await?;
        Ok(TestDriver {
            sources,
            pipelines: HashMap::new(),
            app_stats: app.stats(),
            ctx,
        })
    }

    /// Processes the records of `batch` (of one input partition). Bad records
    /// follow their topic's policy: under `fail` the error is returned.
    pub async fn process(&mut self, batch: RawBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let key = (batch.topic().to_string(), batch.partition());
        let pipeline = match self.pipelines.get_mut(&key) {
            Some(pipeline) => pipeline,
            None => {
                let source = self.sources.get(&key.0).ok_or_else(|| {
                    Error::Config(format!(
                        "'{}' is not an input topic of this application",
                        key.0
                    ))
                })?;
                let mut pipeline = PartitionPipeline::new(
                    Arc::clone(source),
                    None,
                    Arc::clone(&self.app_stats),
                    &self.ctx,
                )?;
                let collected = collect_kafka_outputs(&mut pipeline);
                self.pipelines.entry(key).or_insert((pipeline, collected))
            }
        };
        let outcome = pipeline.0.process(batch).await?;
        // Nothing to wait for in memory: the batch's state commits at once.
        if let Some(state) = pipeline.0.state() {
            state.commit(outcome.state, outcome.next_offset)?;
        }
        match outcome.failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The batches written to the Kafka output `topic` since the last call, in
    /// the order they were written (per input partition).
    pub fn take_output(&mut self, topic: &str) -> Vec<RecordBatch> {
        let mut partitions: Vec<_> = self.pipelines.iter_mut().collect();
        partitions.sort_by(|a, b| a.0.cmp(b.0));
        let mut taken = Vec::new();
        for (_, (_, collected)) in partitions {
            for output in collected.iter().filter(|c| c.topic == topic) {
                taken.append(&mut lock(&output.batches));
            }
        }
        taken
    }
}

/// A Kafka output of a [`TestDriver`]: its batches, kept until taken.
#[derive(Clone)]
pub(crate) struct Collected {
    pub(crate) topic: String,
    pub(crate) batches: Arc<Mutex<Vec<RecordBatch>>>,
}

impl OutputWriter for Collected {
    fn name(&self) -> &str {
        &self.topic
    }

    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        _position: SourcePosition<'a>,
        _ack: &'a Arc<DeliveryBatch>,
    ) -> BoxFuture<'a, Result<()>> {
        lock(&self.batches).push(batch.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Keeps the batches of `pipeline`'s Kafka outputs in memory instead of
/// producing them; returns where.
pub(crate) fn collect_kafka_outputs(pipeline: &mut PartitionPipeline) -> Vec<Collected> {
    let mut collected = Vec::new();
    pipeline.replace_kafka_outputs(|topic| {
        let output = Collected {
            topic: topic.name().to_string(),
            batches: Arc::default(),
        };
        collected.push(output.clone());
        Box::new(output)
    });
    collected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::time::Duration;

    fn app() -> Application {
        Application::builder()
            .brokers("unused:9092")
            .consumer_group("driver-test")
            .build()
            .unwrap()
    }

    fn readings(app: &Application, policy: BadInputPolicy) -> crate::StreamingDataFrame {
        let schema = Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("temp", DataType::Float64, false),
        ]);
        app.dataframe(
            Topic::json("readings")
                .schema(schema)
                .timestamp_field("ts")
                .on_bad_input(policy),
        )
        .unwrap()
    }

    fn batch(partition: i32, first_offset: i64, rows: &[(&str, i64, f64)]) -> RawBatch {
        let mut batch = RawBatch::new(Arc::from("readings"), partition);
        for (i, (device, ts, temp)) in rows.iter().enumerate() {
            let value = format!(r#"{{"device":"{device}","ts":{ts},"temp":{temp}}}"#);
            batch.push(
                Some(device.as_bytes()),
                Some(value.as_bytes()),
                None,
                first_offset + i as i64,
                None,
            );
        }
        batch
    }

    fn counts(batches: &[RecordBatch]) -> Vec<(i64, i64)> {
        let mut rows = Vec::new();
        for b in batches {
            let start = b.column_by_name("window_start").unwrap();
            let start = start.as_any().downcast_ref::<Int64Array>().unwrap();
            let count = b.column_by_name("count").unwrap();
            let count = count.as_any().downcast_ref::<Int64Array>().unwrap();
            rows.extend((0..b.num_rows()).map(|i| (start.value(i), count.value(i))));
        }
        rows
    }

    #[tokio::test]
    async fn windows_close_per_partition_as_event_time_moves() {
        let app = app();
        readings(&app, BadInputPolicy::Fail)
            .filter(col("temp").gt_eq(lit(0.0)))
            .tumbling_window(Duration::from_secs(10))
            .agg([count()])
            .final_()
            .to_topic(Topic::json("counts"));
        let mut driver = TestDriver::new(&app).await.unwrap();
        driver
            .process(batch(
                0,
                0,
                &[("a", 1_000, 1.0), ("a", 2_000, -1.0), ("a", 9_000, 2.0)],
            ))
            .await
            .unwrap();
        driver
            .process(batch(1, 0, &[("a", 25_000, 1.0)]))
            .await
            .unwrap();
        assert!(
            driver.take_output("counts").is_empty(),
            "no window closed yet in partition 0"
        );
        driver
            .process(batch(0, 3, &[("a", 12_000, 3.0)]))
            .await
            .unwrap();
        // The negative reading was filtered out.
        assert_eq!(counts(&driver.take_output("counts")), vec![(0, 2)]);
        assert!(driver.take_output("counts").is_empty(), "taken once");
        assert_eq!(app.stats().records_in(), 5);
    }

    /// A record with the heartbeat header is no row: it moves the partition's
    /// event time to its message timestamp, so a quiet input's windows close.
    #[tokio::test]
    async fn a_heartbeat_closes_windows_without_a_record() {
        let app = app();
        readings(&app, BadInputPolicy::Fail)
            .tumbling_window(Duration::from_secs(10))
            .agg([count()])
            .final_()
            .to_topic(Topic::json("counts"));
        let mut driver = TestDriver::new(&app).await.unwrap();
        driver
            .process(batch(0, 0, &[("a", 1_000, 1.0), ("a", 9_000, 2.0)]))
            .await
            .unwrap();
        let heartbeat = |offset, at_ms| {
            let mut raw = RawBatch::new(Arc::from("readings"), 0);
            let headers = flumen_kafka::headers_with(None, &[(flumen_kafka::HEARTBEAT_HEADER, "")]);
            raw.push(None, None, Some(at_ms), offset, Some(headers));
            raw
        };
        driver.process(heartbeat(2, 9_500)).await.unwrap();
        assert!(
            driver.take_output("counts").is_empty(),
            "9.5 s closes nothing"
        );
        driver.process(heartbeat(3, 10_000)).await.unwrap();
        assert_eq!(counts(&driver.take_output("counts")), vec![(0, 2)]);
        // Heartbeats are not rows (nor bad input: the policy here is `fail`).
        assert_eq!(app.stats().records_in(), 2);
    }

    #[tokio::test]
    async fn windows_count_the_records_they_drop_for_lack_of_a_key() {
        let app = app();
        readings(&app, BadInputPolicy::Fail)
            .tumbling_window(Duration::from_secs(10))
            .agg([count()])
            .final_()
            .to_topic(Topic::json("counts"));
        let mut driver = TestDriver::new(&app).await.unwrap();
        let mut raw = batch(0, 0, &[("a", 1_000, 1.0)]);
        raw.push(
            None,
            Some(br#"{"device":"b","ts":2000,"temp":1.0}"#),
            None,
            1,
            None,
        );
        raw.push(
            None,
            Some(br#"{"device":"b","ts":3000,"temp":1.0}"#),
            None,
            2,
            None,
        );
        driver.process(raw).await.unwrap();
        assert_eq!(app.stats().null_key_records(), 2);
        assert_eq!(app.stats().records_in(), 3);
    }

    #[tokio::test]
    async fn bad_records_fail_with_their_offset() {
        let app = app();
        readings(&app, BadInputPolicy::Fail).to_topic(Topic::json("out"));
        let mut driver = TestDriver::new(&app).await.unwrap();
        let mut raw = batch(2, 40, &[("a", 1, 1.0)]);
        raw.push(None, Some(b"{not json"), None, 41, None);
        let error = driver.process(raw).await.unwrap_err().to_string();
        assert!(
            error.contains("readings") && error.contains("41"),
            "{error}"
        );
        // The good record before it went through.
        assert_eq!(driver.take_output("out")[0].num_rows(), 1);
    }

    #[tokio::test]
    async fn plans_that_need_a_broker_are_refused() {
        let app = app();
        readings(&app, BadInputPolicy::dead_letter("readings-dlq")).print();
        let error = TestDriver::new(&app).await.err().unwrap().to_string();
        assert!(error.contains("readings-dlq"), "{error}");

        let app = self::app();
        readings(&app, BadInputPolicy::Skip)
            .group_by(col("device"))
            .tumbling_window(Duration::from_secs(10))
            .agg([count()])
            .final_()
            .to_topic(Topic::json("counts"));
        let error = TestDriver::new(&app).await.err().unwrap().to_string();
        assert!(error.contains("repartition"), "{error}");
    }

    #[tokio::test]
    async fn unknown_inputs_and_columns_are_errors() {
        let app = app();
        readings(&app, BadInputPolicy::Fail)
            .filter(col("nope").gt(lit(1)))
            .print();
        let error = TestDriver::new(&app).await.err().unwrap().to_string();
        assert!(error.contains("nope"), "{error}");

        let app = self::app();
        readings(&app, BadInputPolicy::Fail).print();
        let mut driver = TestDriver::new(&app).await.unwrap();
        let mut other = RawBatch::new(Arc::from("elsewhere"), 0);
        other.push(None, Some(b"{}"), None, 0, None);
        let error = driver.process(other).await.unwrap_err().to_string();
        assert!(error.contains("elsewhere"), "{error}");
    }
}
