//! `StreamingDataFrame`: the user-facing DSL.

pub(crate) mod expr;
mod window;

pub use window::{GroupedFrame, WindowedFrame};

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use datafusion::logical_expr::Expr;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::operators::{
    typed_map, Deduplicate, DropColumns, Filter, LookupJoin, MapBatches, Select, WithColumn,
};
use crate::plan::{BoxError, Node, Op, Output, SinkSpec};
use crate::topic::Topic;

/// The outputs registered so far, shared by every frame of an application.
pub(crate) type Outputs = Arc<Mutex<Vec<Output>>>;

/// An unbounded table of records flowing from a Kafka topic, transformed by
/// operations. Every method returns a new frame and leaves `self` usable, so one
/// frame can feed several outputs (branching).
///
/// Each frame carries metadata columns: `_key`, `_timestamp` (event time),
/// `_partition` and `_offset`. `select` keeps them unless selected explicitly,
/// and JSON outputs do not write them.
#[derive(Clone)]
pub struct StreamingDataFrame {
    node: Arc<Node>,
    outputs: Outputs,
}

impl StreamingDataFrame {
    pub(crate) fn new(topic: &str, outputs: Outputs) -> Self {
        StreamingDataFrame {
            node: Node::source(topic),
            outputs,
        }
    }

    pub(crate) fn with(&self, op: Op) -> Self {
        StreamingDataFrame {
            node: Node::child(&self.node, op),
            outputs: Arc::clone(&self.outputs),
        }
    }

    /// Keeps the records for which `predicate` is true (null counts as false).
    pub fn filter(&self, predicate: Expr) -> Self {
        self.with(Op::Operator(Arc::new(Filter(predicate))))
    }

    /// Replaces the columns with `exprs` (name them with `.alias(...)`).
    pub fn select(&self, exprs: impl IntoIterator<Item = Expr>) -> Self {
        self.with(Op::Operator(Arc::new(Select(exprs.into_iter().collect()))))
    }

    /// Adds a column, or replaces the column of that name.
    pub fn with_column(&self, name: impl Into<String>, expr: Expr) -> Self {
        self.with(Op::Operator(Arc::new(WithColumn(name.into(), expr))))
    }

    /// Removes columns.
    pub fn drop<S: Into<String>>(&self, columns: impl IntoIterator<Item = S>) -> Self {
        let columns = columns.into_iter().map(Into::into).collect();
        self.with(Op::Operator(Arc::new(DropColumns(columns))))
    }

    /// Applies `f` to every micro-batch. An error stops the application and names
    /// the topic, partition and offsets of the batch.
    pub fn map_batches<F>(&self, f: F) -> Self
    where
        F: Fn(RecordBatch) -> Result<RecordBatch, BoxError> + Send + Sync + 'static,
    {
        self.with(Op::Operator(Arc::new(MapBatches {
            name: "map_batches".into(),
            f: Arc::new(f),
        })))
    }

    /// Maps every row through serde: rows are deserialized as `In` (extra columns
    /// are ignored), mapped, and serialized back from `Out`. Metadata columns
    /// are kept.
    pub fn map<In, Out, F>(&self, f: F) -> Self
    where
        In: DeserializeOwned + 'static,
        Out: Serialize + DeserializeOwned + 'static,
        F: Fn(In) -> Out + Send + Sync + 'static,
    {
        let name = format!(
            "map::<{}, {}>",
            std::any::type_name::<In>(),
            std::any::type_name::<Out>()
        );
        self.with(Op::Operator(Arc::new(MapBatches {
            name,
            f: typed_map(f),
        })))
    }

    /// Drops a record when one with the same `key` was kept less than
    /// `within` apart in event time (per input partition: the input must be
    /// keyed, that is partitioned, by it). The kept keys are state, in a store named
    /// `deduplicate-<n>` (changelogged, restored after a restart like window
    /// state); a key is forgotten once the partition's stream time passed
    /// its kept time plus `within`, so a repeat arriving later than that is
    /// kept. Records without a key or event time are kept. Dropped repeats
    /// are counted (`Stats::duplicate_records`, `flumen_duplicate_records_total`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use flumen::prelude::*;
    ///
    /// fn once_per_minute(orders: &StreamingDataFrame) -> StreamingDataFrame {
    ///     orders.deduplicate(col("order_id"), Duration::from_secs(60))
    /// }
    /// ```
    pub fn deduplicate(&self, key: Expr, within: std::time::Duration) -> Self {
        self.with(Op::Operator(Arc::new(Deduplicate { key, within })))
    }

    /// Adds the columns of a lookup table to each row: a lookup join, e.g.
    /// with flumen-cassandra's `CassandraLookup`. Each batch looks every
    /// distinct key up once, in the cache first (see
    /// [`LookupCache`](crate::lookup::LookupCache)); rows keep their order.
    /// The looked-up columns are nullable: a row whose key is null or not
    /// found keeps nulls there, unless the lookup drops it
    /// ([`OnMiss`](crate::lookup::OnMiss)). A looked-up column may not have
    /// the name of a column of the frame.
    pub fn lookup(&self, lookup: impl crate::lookup::Lookup) -> Self {
        self.with(Op::Operator(Arc::new(LookupJoin::new(Arc::new(lookup)))))
    }

    fn output(&self, sink: SinkSpec) {
        let output = Output {
            node: Arc::clone(&self.node),
            sink,
        };
        match self.outputs.lock() {
            Ok(mut outputs) => outputs.push(output),
            Err(poisoned) => poisoned.into_inner().push(output),
        }
    }

    /// Writes every record to `topic`. JSON values hold every non-metadata
    /// column; the key is `topic`'s key column if set, else the input key.
    pub fn to_topic(&self, topic: Topic) {
        self.output(SinkSpec::Topic(topic));
    }

    /// Writes every record to `sink` (e.g. `flumen_cassandra::CassandraSink`).
    /// The sink is opened, and checked against this frame's schema, before
    /// anything is consumed; offsets are committed only after its writes.
    pub fn sink(&self, sink: impl crate::sink::Sink) {
        self.output(SinkSpec::Custom(Arc::new(sink)));
    }

    /// Prints every micro-batch as a table on stdout.
    pub fn print(&self) {
        self.output(SinkSpec::Print);
    }
}
