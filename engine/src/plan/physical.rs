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
    /// Whether the store keeps a replay log.
    pub(crate) replay_log: bool,
}

impl PhysicalPlan {
    /// Plans `outputs` of input `topic`, whose records decode to `schema`;
    /// stores that exist for a replay log alone are kept when
    /// `replay_logs` (exactly-once runs).
    pub(crate) fn new(
        topic: &str,
        schema: &SchemaRef,
        outputs: &[Output],
        (ctx, replay_logs): (&Arc<SessionContext>, bool),
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
        plan.name_stores(topic, replay_logs)?;
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
            replay_log: false,
        });
        Ok(planned.output_schema())
    }

    /// Gives every stateful operator its store name: the one asked for or
    /// `<prefix>-<n>`, n counting this input's stateful operators of that
    /// kind in plan order (adding a deduplicate does not rename the windows'
    /// stores).
    fn name_stores(&mut self, topic: &str, replay_logs: bool) -> Result<()> {
        let mut names: Vec<String> = Vec::new();
        let mut per_kind: HashMap<&'static str, usize> = HashMap::new();
        for node in &mut self.nodes {
            let Some(request) = node.op.store() else {
                continue;
            };
            node.replay_log = request.replay_log && replay_logs;
            if !request.keeps_state && !node.replay_log {
                continue;
            }
            let n = per_kind.entry(request.default_prefix).or_default();
            let default = format!("{}-{n}", request.default_prefix);
            *n += 1;
            let name = request.name.unwrap_or(default);
            if names.contains(&name) {
                return Err(Error::Plan(format!(
                    "two stateful operators of topic '{topic}' use the state store name \
                     '{name}'; name windows apart with store_name(...)"
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

    /// The stores that keep a replay log, in plan order.
    pub(crate) fn replay_log_stores(&self) -> Vec<String> {
        let logged = self.nodes.iter().filter(|n| n.replay_log);
        logged.filter_map(|n| n.store.clone()).collect()
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
    let output = std::slice::from_ref(&output);
    let plan = PhysicalPlan::new(topic, schema, output, (ctx, false))?;
    plan.outputs
        .into_iter()
        .next()
        .map(|(_, schema)| schema)
        .ok_or_else(|| Error::Plan(format!("a frame of topic '{topic}' has no schema")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::prelude::*;

    fn app() -> Result<(Application, StreamingDataFrame)> {
        let app = Application::builder()
            .brokers("unused:9092")
            .consumer_group("plan-test")
            .build()?;
        let schema = Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("temp", DataType::Float64, true),
        ]);
        let frame = app.dataframe(Topic::json("in").schema(schema).timestamp_field("ts"))?;
        Ok((app, frame))
    }

    fn plan(app: &Application) -> Result<PhysicalPlan> {
        let outputs = app.outputs();
        let topic = Topic::json("in").schema(Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("temp", DataType::Float64, true),
        ]));
        let schema = crate::runtime::decoder_of(&topic.timestamp_field("ts"))?
            .schema()
            .clone();
        let ctx = Arc::new(SessionContext::new());
        PhysicalPlan::new("in", &schema, &outputs, (&ctx, false))
    }

    #[test]
    fn stores_are_named_per_kind_and_shared_prefixes_planned_once() -> Result<()> {
        let (app, frame) = app()?;
        let windows = |f: &StreamingDataFrame| {
            f.tumbling_window(Duration::from_secs(10))
                .agg([count()])
                .final_()
        };
        let deduplicated = frame.deduplicate(col("device"), Duration::from_secs(5));
        windows(&frame).print();
        windows(&deduplicated).print();
        deduplicated.print();
        let plan = plan(&app)?;
        assert_eq!(
            plan.store_names(),
            ["window-0", "deduplicate-0", "window-1"]
        );
        // window, deduplicate, window: the deduplicate is planned once for two outputs.
        assert_eq!(plan.nodes.len(), 3);
        assert_eq!(plan.outputs[2].0, [1]);
        Ok(())
    }

    #[test]
    fn output_schemas_come_from_expressions() -> Result<()> {
        let (app, frame) = app()?;
        frame
            .select([col("device"), (col("temp") * lit(2)).alias("t2")])
            .print();
        let plan = plan(&app)?;
        let schema = &plan.outputs[0].1;
        let fields: Vec<(&str, &DataType)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type()))
            .collect();
        assert_eq!(
            fields[..2],
            [("device", &DataType::Utf8), ("t2", &DataType::Float64)]
        );
        Ok(())
    }

    #[test]
    fn errors_name_the_output_the_topic_and_the_dsl_call() -> Result<()> {
        let (app, frame) = app()?;
        frame.print();
        frame.filter(col("nope").gt(lit(1))).print();
        let Err(error) = plan(&app) else {
            panic!("an unknown column is an error")
        };
        let error = error.to_string();
        assert!(
            error.contains("output 1 of topic 'in'") && error.contains("filter(nope > Int32(1))"),
            "{error}"
        );
        Ok(())
    }

    #[test]
    fn two_stores_of_one_name_are_refused() -> Result<()> {
        let (app, frame) = app()?;
        for _ in 0..2 {
            frame
                .tumbling_window(Duration::from_secs(10))
                .store_name("counts")
                .agg([count()])
                .final_()
                .print();
        }
        let Err(error) = plan(&app) else {
            panic!("a store name used twice is an error")
        };
        assert!(error.to_string().contains("'counts'"), "{error}");
        Ok(())
    }
}
