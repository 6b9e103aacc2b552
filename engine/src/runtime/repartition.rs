//! Splitting a plan at its repartitions into stages joined by Kafka topics.
//!
//! A `group_by` that must move records between partitions becomes two stages of
//! one application: the upstream stage writes the frame (every data column as
//! JSON, the new key as the message key, the event time as the record timestamp)
//! to `<consumer group>-repartition-<name>`; the downstream stage reads that
//! topic as one more input of the same consumer group and runs the rest of the
//! plan. Each stage commits its own offsets after its outputs were delivered,
//! so records are never lost between the stages (at-least-once).

use std::collections::HashMap;
use std::sync::Arc;

use crate::records::{is_metadata_column, KEY_COLUMN};
use arrow::datatypes::{DataType, Schema};
use datafusion::logical_expr::cast;
use datafusion::prelude::SessionContext;

use crate::operators::WithColumn;
use crate::plan::physical::frame_schema;
use crate::plan::{Node, Op, Output, RepartitionSpec, SinkSpec};
use crate::topic::Topic;
use crate::{Error, Result};

/// A repartition topic the application needs.
#[derive(Debug, Clone)]
pub(crate) struct RepartitionTopic {
    /// `<consumer group>-repartition-<name>`.
    pub(crate) name: String,
    /// The topic whose records are repartitioned (for its partition count).
    pub(crate) input: String,
    /// Partitions when created; `None`: as many as `input`.
    pub(crate) partitions: Option<i32>,
}

/// The plan with its repartitions split into stages.
pub(crate) struct Stages {
    /// Every input topic: the user's and the repartition topics.
    pub(crate) topics: HashMap<String, Topic>,
    /// Every output, none of them crossing a repartition.
    pub(crate) outputs: Vec<Output>,
    /// The repartition topics, upstream ones first.
    pub(crate) repartitions: Vec<RepartitionTopic>,
}

/// Splits `outputs` at every repartition, upstream first.
pub(crate) fn split(
    group: &str,
    mut topics: HashMap<String, Topic>,
    mut outputs: Vec<Output>,
    ctx: &Arc<SessionContext>,
) -> Result<Stages> {
    let mut repartitions: Vec<RepartitionTopic> = Vec::new();
    // The first repartition of a chain reads a topic whose schema is known.
    while let Some((node, spec)) = first_repartition(&outputs) {
        let name = format!("{group}-repartition-{}", spec.name);
        if repartitions.iter().any(|r| r.name == name) || topics.contains_key(&name) {
            return Err(Error::Plan(format!(
                "two group_by stages would share the repartition topic '{name}'; \
                 name them apart with GroupedFrame::name(...)"
            )));
        }
        let Some(parent) = node.parent.clone() else {
            return Err(Error::Plan("a repartition without an input".into()));
        };
        let input = topics.get(&*node.source).ok_or_else(|| {
            Error::Plan(format!("the input topic '{}' is not known", node.source))
        })?;
        let schema = data_schema(input, &parent, ctx)?;
        let upstream = Output {
            node: Node::child(
                &parent,
                Op::Operator(Arc::new(WithColumn(
                    KEY_COLUMN.into(),
                    cast(spec.key.clone(), DataType::Utf8),
                ))),
            ),
            sink: SinkSpec::Topic(Topic::json(&name)),
        };
        let root = Node::source(&name);
        let mut moved: HashMap<usize, Arc<Node>> = HashMap::from([(node.id, root)]);
        outputs = outputs
            .into_iter()
            .map(|o| match below(&o.node, &mut moved) {
                Some(rerooted) => Output {
                    node: rerooted,
                    sink: o.sink,
                },
                None => o,
            })
            .collect();
        outputs.push(upstream);
        repartitions.push(RepartitionTopic {
            name: name.clone(),
            input: node.source.to_string(),
            partitions: spec.partitions,
        });
        topics.insert(name.clone(), Topic::json(&name).schema(schema));
    }
    Ok(Stages {
        topics,
        outputs,
        repartitions,
    })
}

/// The first repartition node on any output's chain (nearest its source).
fn first_repartition(outputs: &[Output]) -> Option<(Arc<Node>, Arc<RepartitionSpec>)> {
    outputs.iter().find_map(|o| {
        o.node.chain().into_iter().find_map(|n| match &n.op {
            Some(Op::Repartition(spec)) => Some((Arc::clone(&n), Arc::clone(spec))),
            _ => None,
        })
    })
}

/// `node`'s chain re-rooted below a cut: `moved` maps old node ids to their
/// copies, starting with the cut itself -> the new source (copies are shared by
/// outputs that branch below the cut). `None` when `node` does not descend
/// from the cut.
fn below(node: &Arc<Node>, moved: &mut HashMap<usize, Arc<Node>>) -> Option<Arc<Node>> {
    if let Some(copy) = moved.get(&node.id) {
        return Some(Arc::clone(copy));
    }
    let parent = below(node.parent.as_ref()?, moved)?;
    let op = node.op.clone()?;
    let copy = Node::child(&parent, op);
    moved.insert(node.id, Arc::clone(&copy));
    Some(copy)
}

/// The data columns (no metadata) of the frame at `node`.
fn data_schema(input: &Topic, node: &Arc<Node>, ctx: &Arc<SessionContext>) -> Result<Schema> {
    let decoded = crate::runtime::application::decoder_of(input)?
        .schema()
        .clone();
    let schema = frame_schema(input.name(), &decoded, node, ctx)?;
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| !is_metadata_column(f.name()))
        .cloned()
        .collect();
    Ok(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataframe::Outputs;
    use crate::prelude::*;
    use crate::StreamingDataFrame;
    use arrow::datatypes::Field;
    use std::sync::Mutex;
    use std::time::Duration;

    fn readings() -> (Topic, StreamingDataFrame, Outputs) {
        let topic = Topic::json("readings").schema(Schema::new(vec![
            Field::new("site", DataType::Utf8, false),
            Field::new("device", DataType::Utf8, false),
            Field::new("temp", DataType::Float64, false),
        ]));
        let outputs: Outputs = Arc::new(Mutex::new(Vec::new()));
        let frame = StreamingDataFrame::new("readings", Arc::clone(&outputs));
        (topic, frame, outputs)
    }

    fn stages(topic: Topic, outputs: &Outputs) -> Result<Stages> {
        let outputs = outputs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let topics = HashMap::from([(topic.name().to_string(), topic)]);
        split("app", topics, outputs, &Arc::new(SessionContext::new()))
    }

    fn source_of(output: &Output) -> &str {
        &output.node.source
    }

    #[test]
    fn group_by_a_column_becomes_two_stages() -> Result<()> {
        let (topic, frame, outputs) = readings();
        let windows = frame
            .filter(col("temp").gt_eq(lit(0.0)))
            .group_by(col("device"))
            .tumbling_window(Duration::from_secs(10))
            .agg([count()])
            .final_();
        windows.to_topic(Topic::json("counts"));
        windows.print();
        let stages = stages(topic, &outputs)?;
        assert_eq!(stages.repartitions.len(), 1);
        let r = &stages.repartitions[0];
        assert_eq!(
            (r.name.as_str(), r.input.as_str()),
            ("app-repartition-device", "readings")
        );
        // Two outputs below the cut now read the repartition topic; one more
        // writes it, after the filter.
        assert_eq!(stages.outputs.len(), 3);
        assert_eq!(source_of(&stages.outputs[0]), "app-repartition-device");
        assert_eq!(source_of(&stages.outputs[1]), "app-repartition-device");
        // Branches below the cut share their copied nodes.
        assert_eq!(stages.outputs[0].node.id, stages.outputs[1].node.id);
        let upstream = &stages.outputs[2];
        assert_eq!(source_of(upstream), "readings");
        assert!(
            matches!(&upstream.sink, SinkSpec::Topic(t) if t.name() == "app-repartition-device")
        );
        let ops: Vec<String> = upstream
            .node
            .chain()
            .iter()
            .filter_map(|n| n.op.as_ref().map(Op::name))
            .collect();
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(ops[0].starts_with("filter"), "{ops:?}");
        assert!(ops[1].starts_with("with_column(_key"), "{ops:?}");
        // The repartition topic carries the data columns of the frame at the cut.
        let schema = stages.topics["app-repartition-device"]
            .value_format
            .clone()
            .map(|f| f.value_fields());
        let names: Vec<String> = schema
            .unwrap_or_default()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["site", "device", "temp"]);
        Ok(())
    }

    #[test]
    fn grouping_by_the_message_key_or_within_partitions_keeps_one_stage() -> Result<()> {
        let (topic, frame, outputs) = readings();
        frame
            .group_by(col("_key"))
            .tumbling_window(Duration::from_secs(10))
            .agg([count()])
            .final_()
            .print();
        frame
            .group_by(col("device"))
            .within_partitions()
            .tumbling_window(Duration::from_secs(10))
            .agg([count()])
            .final_()
            .print();
        let stages = stages(topic, &outputs)?;
        assert!(stages.repartitions.is_empty());
        assert_eq!(stages.outputs.len(), 2);
        Ok(())
    }

    #[test]
    fn names_and_partitions_are_configurable_and_must_differ() {
        let (topic, frame, outputs) = readings();
        for _ in 0..2 {
            frame
                .group_by(col("device"))
                .name("by device!")
                .partitions(6)
                .tumbling_window(Duration::from_secs(10))
                .agg([count()])
                .final_()
                .print();
        }
        match stages(topic, &outputs) {
            Err(Error::Plan(m)) => {
                assert!(m.contains("app-repartition-by_device_"), "{m}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(s) => panic!("two stages share a topic: {:?}", s.repartitions),
        }
    }

    #[test]
    fn an_unknown_column_before_the_cut_is_a_plan_error() {
        let (topic, frame, outputs) = readings();
        frame
            .filter(col("nope").gt(lit(1)))
            .group_by(col("device"))
            .tumbling_window(Duration::from_secs(10))
            .agg([count()])
            .final_()
            .print();
        match stages(topic, &outputs) {
            Err(Error::Plan(m)) => assert!(m.contains("nope"), "{m}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("planned a filter on a missing column"),
        }
    }
}
