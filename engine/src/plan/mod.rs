//! The logical plan: a tree of operations rooted at source topics, with
//! outputs at the leaves; [`physical`] plans it for running.

pub(crate) mod physical;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::logical_expr::Expr;

use crate::operators::LogicalOperator;
use crate::topic::Topic;

/// A user function over whole batches.
pub type BatchFn = Arc<dyn Fn(RecordBatch) -> Result<RecordBatch, BoxError> + Send + Sync>;

/// A boxed error from user code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A windowed aggregation as written in the DSL.
#[derive(Debug, Clone)]
pub(crate) struct WindowSpec {
    /// The group key; `None` groups by the message key.
    pub(crate) key: Option<Expr>,
    /// The windows, or why the DSL call that gave them was invalid.
    pub(crate) windows: Result<crate::window::Windows, Arc<crate::Error>>,
    pub(crate) grace_ms: i64,
    pub(crate) aggs: Vec<crate::window::Aggregation>,
    pub(crate) emit: crate::window::Emit,
    /// What happens to records whose windows have closed.
    pub(crate) late: crate::window::LateRecords,
    /// The state store's name (default: `window-<n>`, n counting the windows of a source).
    pub(crate) store: Option<String>,
}

/// A `group_by` that routes records through a repartition topic keyed by `key`.
#[derive(Debug, Clone)]
pub(crate) struct RepartitionSpec {
    /// The topic is `<consumer group>-repartition-<name>`.
    pub(crate) name: String,
    /// The new key (rendered as a string into the record key).
    pub(crate) key: Expr,
    /// Partitions of the topic when flumen creates it (default: the input's).
    pub(crate) partitions: Option<i32>,
}

/// One operation of a frame.
#[derive(Clone)]
pub(crate) enum Op {
    /// An operator (see [`crate::operators`]).
    Operator(Arc<dyn LogicalOperator>),
    /// Splits the plan into two stages joined by a topic (see `runtime::repartition`).
    Repartition(Arc<RepartitionSpec>),
}

impl Op {
    /// The DSL call, for errors.
    pub(crate) fn name(&self) -> String {
        match self {
            Op::Operator(op) => op.name(),
            Op::Repartition(r) => format!("repartition({} by {})", r.name, r.key),
        }
    }

    /// The operator, unless this is a stage boundary.
    pub(crate) fn operator(&self) -> Option<&Arc<dyn LogicalOperator>> {
        match self {
            Op::Operator(op) => Some(op),
            Op::Repartition(_) => None,
        }
    }
}

static NEXT_NODE: AtomicUsize = AtomicUsize::new(0);

/// A node of the plan: an operation applied to its parent's output, or a source.
pub(crate) struct Node {
    pub(crate) id: usize,
    pub(crate) source: Arc<str>,
    pub(crate) parent: Option<Arc<Node>>,
    pub(crate) op: Option<Op>,
}

impl Node {
    pub(crate) fn source(topic: &str) -> Arc<Node> {
        Arc::new(Node {
            id: NEXT_NODE.fetch_add(1, Ordering::Relaxed),
            source: Arc::from(topic),
            parent: None,
            op: None,
        })
    }

    pub(crate) fn child(parent: &Arc<Node>, op: Op) -> Arc<Node> {
        Arc::new(Node {
            id: NEXT_NODE.fetch_add(1, Ordering::Relaxed),
            source: Arc::clone(&parent.source),
            parent: Some(Arc::clone(parent)),
            op: Some(op),
        })
    }

    /// The nodes from the source (excluded) down to this one.
    pub(crate) fn chain(self: &Arc<Node>) -> Vec<Arc<Node>> {
        let mut chain = Vec::new();
        let mut node = Some(Arc::clone(self));
        while let Some(n) = node {
            if n.op.is_some() {
                chain.push(Arc::clone(&n));
            }
            node = n.parent.clone();
        }
        chain.reverse();
        chain
    }
}

/// Where an output goes.
#[derive(Clone)]
pub(crate) enum SinkSpec {
    Topic(Topic),
    Print,
    /// A sink implemented outside the engine.
    Custom(Arc<dyn crate::sink::Sink>),
}

/// A frame's leaf: a node and where its batches go.
#[derive(Clone)]
pub(crate) struct Output {
    pub(crate) node: Arc<Node>,
    pub(crate) sink: SinkSpec,
}
