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

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use flumen_kafka::{DeliveryBatch, DeliveryTicket};
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

/// One write the runtime waits for before committing the batch's offsets.
/// Settle it with [`WriteTicket::done`]; a ticket dropped unsettled fails the batch.
#[derive(Debug)]
pub struct WriteTicket(DeliveryTicket);

impl WriteTicket {
    /// Settles the write; `Err(reason)` stops the application with that reason.
    pub fn done(self, result: Result<(), String>) {
        self.0.done(result);
    }
}

/// Hands out the tickets of one micro-batch.
#[derive(Debug)]
pub struct Acks<'a> {
    batch: &'a Arc<DeliveryBatch>,
    sink: &'a Arc<str>,
}

impl<'a> Acks<'a> {
    pub(crate) fn new(batch: &'a Arc<DeliveryBatch>, sink: &'a Arc<str>) -> Self {
        Acks { batch, sink }
    }

    /// A ticket for one more pending write of this batch.
    pub fn ticket(&self) -> WriteTicket {
        WriteTicket(self.batch.track(self.sink))
    }
}

/// An output implemented outside the engine.
pub trait Sink: Send + Sync + 'static {
    /// A name for errors and metrics, e.g. `cassandra table 'metrics.device_temp'`.
    fn name(&self) -> String;

    /// Checks the sink against the frame's schema and connects. Called once
    /// per run, before any record is consumed; an error stops the start.
    fn open(&self, schema: SchemaRef) -> BoxFuture<'_, Result<Arc<dyn SinkWriter>, BoxError>>;
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
