//! The one planner: turns the outputs of one input into a physical plan
//! before anything is consumed.
//!
//! Every operator is planned against the schema its parent produces (from
//! expressions; a user function is asked for its output on an empty batch),
//! which checks it and gives its output schema; every stateful operator gets
//! its store name; every dead-letter topic is collected. Errors name the
//! output, the input topic and the DSL call.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;

use crate::operators::{LogicalOperator, Operator};
use crate::plan::{Node, Output};
use crate::{Error, Result};

/// The operators of one input's outputs, planned.
pub(crate) struct PhysicalPlan {
    /// Every operator once, each after those it reads from.
    pub(crate) nodes: Vec<PlannedNode>,
    /// Per output (in the order of the outputs), its operators from the
    /// input down, as indices into `nodes`, and the schema it receives.
    pub(crate) outputs: Vec<(Vec<usize>, SchemaRef)>,
}

/// One planned operator.
pub(crate) struct PlannedNode {
    /// The DSL call.
    pub(crate) name: String,
    pub(crate) op: Arc<dyn LogicalOperator>,
    /// The schema it reads.
    pub(crate) input: SchemaRef,
    /// The store it keeps, by name, if it keeps one.
    pub(crate) store: Option<String>,
}

impl PhysicalPlan {
    /// Plans `outputs` of input `topic`, whose records decode to `schema`.
    pub(crate) fn new(
        topic: &str,
        schema: &SchemaRef,
        outputs: &[Output],
        ctx: &Arc<SessionContext>,
    ) -> Result<Self> {
        let mut plan = PhysicalPlan {
            nodes: Vec::new(),
            outputs: Vec::new(),
        };
        let mut planned: HashMap<usize, (usize, SchemaRef)> = HashMap::new();
        for (index, output) in outputs.iter().enumerate() {
            let at = |reason: String| {
                Error::Plan(format!("output {index} of topic '{topic}': {reason}"))
            };
            let mut chain = Vec::new();
            let mut schema = Arc::clone(schema);
            for node in output.node.chain() {
                if let Some((i, out)) = planned.get(&node.id) {
                    chain.push(*i);
                    schema = Arc::clone(out);
                    continue;
                }
                let out = plan.add(&node, &schema, ctx, at)?;
                planned.insert(node.id, (plan.nodes.len() - 1, Arc::clone(&out)));
                chain.push(plan.nodes.len() - 1);
                schema = out;
            }
            plan.outputs.push((chain, schema));
        }
        plan.name_stores(topic)?;
        Ok(plan)
    }

    /// Plans `node` for `input`; returns its output schema.
    fn add(
        &mut self,
        node: &Node,
        input: &SchemaRef,
        ctx: &Arc<SessionContext>,
        at: impl Fn(String) -> Error,
    ) -> Result<SchemaRef> {
        let Some(op) = node.op.as_ref() else {
            return Err(at("a node without an operation".into()));
        };
        let Some(operator) = op.operator() else {
            return Err(at(format!(
                "{}: a repartition is a stage boundary and cannot run as an operator",
                op.name()
            )));
        };
        let name = operator.name();
        let planned = operator
            .plan(input, ctx)
            .map_err(|e| at(format!("{name}: {e}")))?;
        self.nodes.push(PlannedNode {
            name,
            op: Arc::clone(operator),
            input: Arc::clone(input),
            store: None,
        });
        Ok(planned.output_schema())
    }

    /// Gives every stateful operator its store name: the one asked for or
    /// `<prefix>-<n>`, n counting the stores of this input in plan order.
    fn name_stores(&mut self, topic: &str) -> Result<()> {
        let mut names: Vec<String> = Vec::new();
        for node in &mut self.nodes {
            let Some(request) = node.op.store() else {
                continue;
            };
            let name = request
                .name
                .unwrap_or_else(|| format!("{}-{}", request.default_prefix, names.len()));
            if names.contains(&name) {
                return Err(Error::Plan(format!(
                    "two windows of topic '{topic}' use the state store name '{name}'; \
                     name them apart with store_name(...)"
                )));
            }
            names.push(name.clone());
            node.store = Some(name);
        }
        Ok(())
    }

    /// The state stores of the plan, in plan order.
    pub(crate) fn store_names(&self) -> Vec<String> {
        self.nodes.iter().filter_map(|n| n.store.clone()).collect()
    }

    /// The dead-letter topics the operators write to, each once, with its role.
    pub(crate) fn dead_letter_topics(&self) -> Vec<(String, String)> {
        let mut topics: Vec<(String, String)> = Vec::new();
        for (topic, role) in self.nodes.iter().filter_map(|n| n.op.dead_letter_topic()) {
            if !topics.iter().any(|(known, _)| known == &topic) {
                topics.push((topic, role));
            }
        }
        topics
    }

    /// The operators for one partition, in the order of `nodes`.
    pub(crate) fn instantiate(&self, ctx: &Arc<SessionContext>) -> Result<Vec<Box<dyn Operator>>> {
        self.nodes
            .iter()
            .map(|n| {
                n.op.plan(&n.input, ctx)
                    .map_err(|e| Error::Plan(format!("{}: {e}", n.name)))
            })
            .collect()
    }
}

/// The schema of the frame at `node`, read from input `topic` whose records
/// decode to `schema`.
pub(crate) fn frame_schema(
    topic: &str,
    schema: &SchemaRef,
    node: &Arc<Node>,
    ctx: &Arc<SessionContext>,
) -> Result<SchemaRef> {
    let output = Output {
        node: Arc::clone(node),
        sink: crate::plan::SinkSpec::Print,
    };
    let plan = PhysicalPlan::new(topic, schema, std::slice::from_ref(&output), ctx)?;
    plan.outputs
        .into_iter()
        .next()
        .map(|(_, schema)| schema)
        .ok_or_else(|| Error::Plan(format!("a frame of topic '{topic}' has no schema")))
}
