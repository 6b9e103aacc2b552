//! Operators: one file per operator, all behind two traits.
//!
//! A DSL call adds a [`LogicalOperator`] to the plan. The planner
//! ([`crate::plan::physical`]) calls [`LogicalOperator::plan`] once per input
//! schema: that checks the operator against the schema (errors name the DSL
//! call), gives its output schema without running it, and yields an
//! [`Operator`], one per partition, which processes batches. A stateful
//! operator declares its store with [`LogicalOperator::store`] and hands its
//! state over through [`Operator::state`]; side outputs (late records for a
//! dead-letter topic) go through the [`OpContext`].
//!
//! Adding an operator takes one file here (its logical and running forms) and
//! one DSL method that adds it with `Op::Operator(Arc::new(..))`.

mod dead_letter;
mod deduplicate;
mod drop;
mod error;
mod expr;
mod filter;
mod lookup;
mod map;
mod project;
mod typed_map;
mod window;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use flumen_kafka::RawBatch;
use futures::future::BoxFuture;

use crate::state::StoreHandle;

pub(crate) use dead_letter::{DeadLetter, DeadLetterReason, SourceRecord};
pub(crate) use deduplicate::Deduplicate;
pub(crate) use drop::DropColumns;
pub(crate) use error::OpError;
pub(crate) use filter::Filter;
pub(crate) use lookup::LookupJoin;
pub(crate) use map::MapBatches;
pub(crate) use project::{Select, WithColumn};
pub use typed_map::typed_map;
pub(crate) use window::WindowAggregate;
pub use window::{WINDOW_END, WINDOW_START};

/// An operation as the DSL wrote it, before it knows its input schema.
pub(crate) trait LogicalOperator: Send + Sync {
    /// The DSL call, for errors and metrics, e.g. `filter(temp >= 20)`.
    fn name(&self) -> String;

    /// Checks the operation against `input` and builds it for one partition.
    /// Called once by the planner (which keeps the output schema) and once
    /// per partition the application processes.
    fn plan(
        &self,
        input: &SchemaRef,
        ctx: &Arc<SessionContext>,
    ) -> Result<Box<dyn Operator>, OpError>;

    /// Connects what the operator needs before it can be planned (a lookup's
    /// table). Called once per run, before planning; an error stops the
    /// start.
    fn connect(&self) -> BoxFuture<'_, Result<(), crate::BoxError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The state store the operator keeps, if it keeps one.
    fn store(&self) -> Option<StoreRequest> {
        None
    }

    /// The dead-letter topic the operator writes side outputs to, with its
    /// role (for error messages).
    fn dead_letter_topic(&self) -> Option<(String, String)> {
        None
    }
}

/// The store a stateful operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreRequest {
    /// The name the user gave (`store_name(..)`).
    pub(crate) name: Option<String>,
    /// The default name's prefix: the planner appends the store's index
    /// among the stores of its input (`window` -> `window-0`).
    pub(crate) default_prefix: &'static str,
    /// The store also keeps a replay log ([`StoreHandle::replay_log`])
    /// where replay logs are kept (exactly-once runs).
    pub(crate) replay_log: bool,
    /// The store keeps the operator's state; when `false` it holds nothing
    /// but its replay log's position, and is kept only with a replay log.
    pub(crate) keeps_state: bool,
}

/// One operator of one partition.
pub(crate) trait Operator: Send + Sync {
    /// The schema of the batches it returns (for the schema it was planned with).
    fn output_schema(&self) -> SchemaRef;

    /// Processes one batch. May await I/O; must not panic on data. The
    /// batch is empty on an idle tick ([`Operator::due`]).
    fn process<'a>(
        &'a mut self,
        batch: RecordBatch,
        ctx: &'a mut OpContext<'_>,
    ) -> BoxFuture<'a, Result<RecordBatch, OpError>>;

    /// When the operator wants to run even if no record arrives (a held row
    /// to retry): the partition then processes an empty batch.
    fn due(&self) -> Option<std::time::Instant> {
        None
    }

    /// The operator's state, when it keeps one.
    fn state(&mut self) -> Option<&mut dyn OperatorState> {
        None
    }
}

/// The state of a stateful operator, kept in its store.
pub(crate) trait OperatorState: Send + Sync {
    /// Opens the state on its store, when the partition is assigned (again).
    /// An operator that keeps its whole state in memory (a window) loads it
    /// here with [`StoreHandle::for_each`]; one that reads key by key keeps
    /// the handle.
    fn open(&mut self, store: StoreHandle) -> Result<(), StoreError>;
    /// Called after every batch: an operator that keeps its state in memory
    /// writes what changed since the last call
    /// ([`StoreHandle::write_batch`]).
    fn flush(&mut self) {}
    /// Records the operator did not use so far.
    fn dropped(&self) -> crate::window::Dropped;
}

/// Why an operator's stored state could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The store failed.
    #[error(transparent)]
    Read(#[from] flumen_state::StateError),
    /// An entry is not what the operator wrote.
    #[error("{0}")]
    Corrupt(#[from] crate::window::CorruptState),
}

/// What an operator sees besides its input batch, and where its side
/// outputs go.
#[derive(Debug, Default)]
pub(crate) struct OpContext<'r> {
    heartbeat: Option<i64>,
    /// The source records of the batch (none on an idle tick).
    raw: Option<&'r RawBatch>,
    dead_letters: Vec<DeadLetter>,
}

impl<'r> OpContext<'r> {
    /// A context for a batch of `raw` after which event time moved to
    /// `heartbeat` without a record.
    pub(crate) fn new(heartbeat: Option<i64>, raw: Option<&'r RawBatch>) -> Self {
        OpContext {
            heartbeat,
            raw,
            dead_letters: Vec::new(),
        }
    }

    /// Event time reached without a record (a source heartbeat), if any.
    pub(crate) fn heartbeat(&self) -> Option<i64> {
        self.heartbeat
    }

    /// A copy of the batch's source record at `offset`, for an operator that
    /// holds a row past its batch and may dead-letter it later.
    pub(crate) fn source_record(&self, offset: i64) -> Option<SourceRecord> {
        let raw = self.raw?;
        Some(SourceRecord::copy(raw, raw.index_of(offset)?))
    }

    /// Sends a source record to a dead-letter topic (those of the batch in
    /// offset order).
    pub(crate) fn dead_letter(&mut self, record: DeadLetter) {
        self.dead_letters.push(record);
    }

    /// The dead letters since the last call.
    pub(crate) fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead_letters)
    }
}

/// The names of `schema`'s columns, for error messages.
pub(crate) fn column_list(schema: &arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod testing {
    //! Running one operator on one batch, for the operators' unit tests.
    use super::*;

    /// Plans `op` for `batch`'s schema and runs it on `batch`.
    pub(crate) fn run(
        op: &dyn LogicalOperator,
        batch: RecordBatch,
    ) -> Result<RecordBatch, OpError> {
        let mut planned = op.plan(batch.schema_ref(), &Arc::new(SessionContext::new()))?;
        futures::executor::block_on(planned.process(batch, &mut OpContext::default()))
    }

    /// Three readings: device, temp (one null) and `_offset`.
    pub(crate) fn sensor_batch() -> RecordBatch {
        use arrow::array::{Float64Array, Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("temp", DataType::Float64, true),
            Field::new("_offset", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Float64Array::from(vec![Some(-1.0), Some(2.0), None])),
                Arc::new(Int64Array::from(vec![0, 1, 2])),
            ],
        )
        .unwrap_or_else(|e| panic!("test batch: {e}"))
    }
}
