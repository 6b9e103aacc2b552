//! Outputs implemented outside the engine, such as `flumen-cassandra`'s
//! `CassandraSink`: [`StreamingDataFrame::sink`](crate::StreamingDataFrame::sink).
//!
//! A sink is opened once per run, before anything is consumed, with the schema
//! of the frame it receives (so it can refuse a mismatch up front). Its writer
//! then gets every micro-batch of every partition, with the source position
//! the batch covers. Each write holds a [`WriteTicket`]; the batch's offsets
//! are committed only after every ticket was settled successfully, so a sink
//! that acknowledges only durable writes loses nothing (at-least-once). A
//! writer that waits before accepting more (a full in-flight window) stops the
//! partition from pulling more records: backpressure, not buffering.
//!
//! A sink with a [dead-letter topic](Sink::dead_letter_topic) may settle a
//! write that finally failed with [`WriteTicket::dead_letter`]: the row goes
//! to that topic, and the batch commits once the broker acknowledged it.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use flumen_kafka::{headers_with, DeliveryBatch, DeliveryTicket, OutRecord, Producer};
use futures::future::BoxFuture;

use crate::plan::BoxError;

/// The source records a batch of a sink was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePosition<'a> {
    /// Input topic.
    pub topic: &'a str,
    /// Input partition.
    pub partition: i32,
    /// First offset of the micro-batch.
    pub first_offset: i64,
    /// Last offset of the micro-batch.
    pub last_offset: i64,
}

/// Where a sink's failed writes go: its dead-letter topic, through the
/// application's producer.
pub(crate) struct DeadLetterRoute {
    pub(crate) producer: Arc<Producer>,
    pub(crate) topic: String,
}

/// What a ticket needs to send its row to the dead-letter topic: the route,
/// the micro-batch that waits for the delivery and the source position.
struct DeadLetterTarget {
    route: Arc<DeadLetterRoute>,
    batch: Arc<DeliveryBatch>,
    sink: Arc<str>,
    topic: String,
    partition: String,
    offsets: String,
}

/// One write the runtime waits for before committing the batch's offsets.
/// Settle it with [`WriteTicket::done`] or [`WriteTicket::dead_letter`]; a
/// ticket dropped unsettled fails the batch.
pub struct WriteTicket {
    ticket: DeliveryTicket,
    dead_letters: Option<Arc<DeadLetterTarget>>,
}

impl std::fmt::Debug for WriteTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTicket")
            .field(
                "dead_letters",
                &self.dead_letters.as_ref().map(|t| &t.route.topic),
            )
            .finish()
    }
}

impl WriteTicket {
    /// Settles the write; `Err(error)` stops the application with that error.
    pub fn done(self, result: Result<(), BoxError>) {
        self.ticket.done(result);
    }

    /// Settles a write that finally failed. With a dead-letter topic the
    /// `value` (the row, e.g. as JSON) is produced there with headers
    /// `flumen.error.kind` = `sink`, `flumen.error.reason` = `reason`,
    /// `flumen.sink` and `flumen.source.{topic,partition,offsets}`, and the batch commits once the
    /// broker acknowledged it; without one this is `done(Err(error))`.
    pub async fn dead_letter(self, key: Option<Vec<u8>>, value: Vec<u8>, error: BoxError) {
        let Some(target) = self.dead_letters.clone() else {
            self.ticket.done(Err(error));
            return;
        };
        let reason = error.to_string();
        let headers = headers_with(
            None,
            &[
                ("flumen.error.kind", "sink"),
                ("flumen.error.reason", reason.as_str()),
                ("flumen.sink", &target.sink),
                ("flumen.source.topic", &target.topic),
                ("flumen.source.partition", &target.partition),
                ("flumen.source.offsets", &target.offsets),
            ],
        );
        let record = OutRecord {
            topic: &target.route.topic,
            key: key.as_deref(),
            value: Some(&value),
            timestamp_ms: None,
            partition: None,
        };
        // The delivery is tracked by the same batch: its offsets commit only
        // after the dead-letter record is acknowledged.
        match target
            .route
            .producer
            .send(record, Some(headers), &target.batch)
            .await
        {
            Ok(()) => {
                metrics::counter!("flumen_sink_dead_letters_total", "sink" => target.sink.to_string())
                    .increment(1);
                tracing::warn!(sink = %target.sink, topic = %target.route.topic, %reason, "a row went to the dead-letter topic");
                self.ticket.done(Ok(()));
            }
            Err(dead_letter) => self.ticket.done(Err(Box::new(DeadLetterFailed {
                topic: target.route.topic.clone(),
                write: error,
                dead_letter,
            }))),
        }
    }
}

/// A sink write failed and so did sending its row to the dead-letter topic.
#[derive(Debug, thiserror::Error)]
#[error("{write}; sending it to the dead-letter topic '{topic}' failed too: {dead_letter}")]
pub struct DeadLetterFailed {
    /// The dead-letter topic.
    pub topic: String,
    /// Why the write failed.
    pub write: BoxError,
    /// Why the dead letter failed.
    #[source]
    pub dead_letter: flumen_kafka::KafkaError,
}

/// Hands out the tickets of one micro-batch.
pub struct Acks<'a> {
    batch: &'a Arc<DeliveryBatch>,
    sink: &'a Arc<str>,
    dead_letters: Option<Arc<DeadLetterTarget>>,
}

impl std::fmt::Debug for Acks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acks").field("sink", self.sink).finish()
    }
}

impl<'a> Acks<'a> {
    pub(crate) fn new(
        batch: &'a Arc<DeliveryBatch>,
        sink: &'a Arc<str>,
        dead_letters: Option<&Arc<DeadLetterRoute>>,
        position: SourcePosition<'_>,
    ) -> Self {
        let dead_letters = dead_letters.map(|route| {
            Arc::new(DeadLetterTarget {
                route: Arc::clone(route),
                batch: Arc::clone(batch),
                sink: Arc::clone(sink),
                topic: position.topic.to_string(),
                partition: position.partition.to_string(),
                offsets: format!("{}-{}", position.first_offset, position.last_offset),
            })
        });
        Acks {
            batch,
            sink,
            dead_letters,
        }
    }

    /// A ticket for one more pending write of this batch.
    pub fn ticket(&self) -> WriteTicket {
        WriteTicket {
            ticket: self.batch.track(self.sink),
            dead_letters: self.dead_letters.clone(),
        }
    }
}

/// Row `row` of `batch` as a JSON object (for dead-letter records).
pub fn row_as_json(batch: &RecordBatch, row: usize) -> Result<Vec<u8>, BoxError> {
    let mut out = Vec::new();
    let mut writer = arrow_json::LineDelimitedWriter::new(&mut out);
    writer.write(&batch.slice(row, 1))?;
    writer.finish()?;
    drop(writer);
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    Ok(out)
}

/// An output implemented outside the engine.
pub trait Sink: Send + Sync + 'static {
    /// A name for errors and metrics, e.g. `cassandra table 'metrics.device_temp'`.
    fn name(&self) -> String;

    /// Checks the sink against the frame's schema and connects. Called once
    /// per run, before any record is consumed; an error stops the start.
    fn open(&self, schema: SchemaRef) -> BoxFuture<'_, Result<Arc<dyn SinkWriter>, BoxError>>;

    /// The topic that rows this sink finally fails to write go to, through
    /// [`WriteTicket::dead_letter`] (default: none; such a failure stops the
    /// application). It must exist when the application starts.
    fn dead_letter_topic(&self) -> Option<String> {
        None
    }
}

/// Writes micro-batches; shared by the partitions of a run.
pub trait SinkWriter: Send + Sync + 'static {
    /// Starts writing `batch` (never empty). Returns once the writes are
    /// accepted, each holding a ticket from `acks` that it settles when the
    /// write is durable or has finally failed. May wait before accepting
    /// (backpressure).
    fn write<'a>(
        &'a self,
        batch: RecordBatch,
        position: SourcePosition<'a>,
        acks: Acks<'a>,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}
