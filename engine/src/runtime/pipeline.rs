//! Processing one micro-batch of one partition: decode, route bad input, run
//! the operators of every output, hand the results to the sinks.

use std::sync::Arc;

use crate::records::{BadRecord, RecordDecoder};
use crate::state::{Changelogs, PartitionState, ReplayLogs};
use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use flumen_kafka::{headers_with, DeliveryBatch, OutRecord, Producer, RawBatch};
use flumen_state::WriteBatch;

use crate::operators::{DeadLetter, OpContext, OpError, Operator, StoreError};
use crate::plan::physical::PhysicalPlan;
use crate::plan::{Output, SinkSpec};
use crate::runtime::event_time::{now_ms, EventTimeBound};
use crate::runtime::outputs::{KafkaOutput, OutputWriter, PrintOutput, SinkOutput};
use crate::runtime::stats::Stats;
use crate::topic::{BadInputPolicy, Topic};
use crate::{Error, Result};

/// Room kept for the headers of a dead letter (flumen's and the source
/// record's) when deciding whether its key and value still fit.
const DEAD_LETTER_HEADER_BYTES: usize = 16 << 10;

/// A source topic with its decoder and the outputs that read from it.
pub(crate) struct SourcePlan {
    pub(crate) topic: Topic,
    pub(crate) decoder: RecordDecoder,
    pub(crate) outputs: Vec<Output>,
    /// The operators of the outputs, planned.
    pub(crate) plan: PhysicalPlan,
    /// The opened writer of each output with a custom sink (by output index).
    pub(crate) writers: Vec<Option<Arc<dyn crate::sink::SinkWriter>>>,
    /// The changelog topic of each store (empty: no changelogs).
    pub(crate) changelogs: Changelogs,
    /// The replay-log topic of each store that keeps one (exactly-once).
    pub(crate) replay_logs: ReplayLogs,
}

/// What processing a batch left to do: wait for `ack`, then commit `next_offset`.
pub(crate) struct BatchOutcome {
    pub(crate) ack: Arc<DeliveryBatch>,
    pub(crate) next_offset: i64,
    /// Set when a bad record under the `fail` policy stopped the batch.
    pub(crate) failure: Option<Error>,
    /// The state changes of the batch, to write with a checkpoint at `next_offset`
    /// once `ack` has completed.
    pub(crate) state: WriteBatch,
}

/// The operators and sinks of one source partition.
pub(crate) struct PartitionPipeline {
    source: Arc<SourcePlan>,
    producer: Option<Arc<Producer>>,
    stats: Arc<Stats>,
    /// One per node of the plan, in its order.
    operators: Vec<Box<dyn Operator>>,
    /// One writer per output, in the order of the plan's outputs.
    outputs: Vec<Box<dyn OutputWriter>>,
    /// The partition's state stores (none: stateless, or in memory only).
    state: Option<Arc<PartitionState>>,
    /// Records before this offset are already reflected in the state; skipped.
    skip_below: i64,
    /// Rejects records whose event time is too far ahead.
    event_time: EventTimeBound,
    /// The partition and the offset the next batch starts at, once known
    /// (from the attached state's checkpoint or the last batch): where an
    /// idle tick commits.
    position: Option<(i32, i64)>,
}

/// Identifies the batch in error messages.
struct BatchRef<'a> {
    topic: &'a str,
    partition: i32,
    first: i64,
    last: i64,
    raw: Option<&'a RawBatch>,
}

impl BatchRef<'_> {
    /// The error of operator `operator` on this batch.
    fn operator_error(&self, operator: String, error: OpError) -> Error {
        match error {
            OpError::Plan(_) | OpError::Compile(_) => {
                Error::Plan(format!("{operator} on topic '{}': {error}", self.topic))
            }
            OpError::Eval(source) => Error::Operator {
                operator,
                topic: self.topic.to_string(),
                partition: self.partition,
                first_offset: self.first,
                last_offset: self.last,
                source,
            },
        }
    }
}

impl PartitionPipeline {
    pub(crate) fn new(
        source: Arc<SourcePlan>,
        producer: Option<Arc<Producer>>,
        stats: Arc<Stats>,
        ctx: &Arc<SessionContext>,
    ) -> Result<Self> {
        let event_time = EventTimeBound::new(source.topic.max_event_time_ahead_ms());
        let operators = source.plan.instantiate(ctx)?;
        let in_memory = !source.plan.store_names().is_empty();
        let outputs = source
            .outputs
            .iter()
            .zip(&source.writers)
            .map(|(output, writer)| output_writer(&output.sink, writer.as_ref(), &producer))
            .collect::<Result<_>>()?;
        let mut pipeline = PartitionPipeline {
            source,
            producer,
            stats,
            operators,
            outputs,
            state: None,
            skip_below: i64::MIN,
            event_time,
            position: None,
        };
        // Until a run attaches the partition's stores, state lives in memory.
        if in_memory {
            pipeline.attach(Arc::new(PartitionState::ephemeral(0)))?;
        }
        Ok(pipeline)
    }

    /// Replaces the writer of every Kafka output with the one `make` gives
    /// for its topic (the [`TestDriver`](crate::testing::TestDriver) keeps
    /// their batches in memory).
    pub(crate) fn replace_kafka_outputs(
        &mut self,
        mut make: impl FnMut(&Topic) -> Box<dyn OutputWriter>,
    ) {
        let source = Arc::clone(&self.source);
        for (writer, output) in self.outputs.iter_mut().zip(&source.outputs) {
            if let SinkSpec::Topic(topic) = &output.sink {
                *writer = make(topic);
            }
        }
    }

    /// What this pipeline runs.
    pub(crate) fn source(&self) -> &SourcePlan {
        &self.source
    }

    /// Opens the operators' state on `state`'s stores, skips the records it
    /// already reflects, and logs every batch's changes to its changelogs.
    pub(crate) fn attach(&mut self, state: Arc<PartitionState>) -> Result<()> {
        let source = Arc::clone(&self.source);
        for (node, operator) in source.plan.nodes.iter().zip(&mut self.operators) {
            let (Some(name), Some(operator)) = (&node.store, operator.state()) else {
                continue;
            };
            operator.open(state.handle(name)).map_err(|e| match e {
                StoreError::Read(e) => Error::State(e),
                StoreError::Corrupt(corrupt) => Error::StateUnreadable {
                    store: name.clone(),
                    topic: source.topic.name().to_string(),
                    reason: corrupt.0,
                },
            })?;
        }
        self.skip_below = state.checkpoint().unwrap_or(i64::MIN);
        self.position = state.checkpoint().map(|next| (state.partition(), next));
        self.state = Some(state);
        Ok(())
    }

    /// The partition's state (none: stateless).
    pub(crate) fn state(&self) -> Option<&Arc<PartitionState>> {
        self.state.as_ref()
    }

    /// Ends the batch before `next_offset`: the operators write what they
    /// keep in memory, and the batch's state changes are sealed.
    fn seal_state(&mut self, next_offset: i64) -> WriteBatch {
        for operator in &mut self.operators {
            if let Some(state) = operator.state() {
                state.flush();
            }
        }
        self.state
            .as_ref()
            .map_or_else(WriteBatch::default, |state| state.seal(next_offset))
    }

    /// Checks that every output can write the schema it receives.
    pub(crate) fn validate(&mut self) -> Result<()> {
        let source = Arc::clone(&self.source);
        for (writer, (_, schema)) in self.outputs.iter_mut().zip(&source.plan.outputs) {
            writer.check(schema)?;
        }
        Ok(())
    }

    /// Processes one micro-batch.
    pub(crate) async fn process(&mut self, raw: RawBatch) -> Result<BatchOutcome> {
        let ack = DeliveryBatch::new();
        let (Some(first), Some(last)) = (raw.first_offset(), raw.last_offset()) else {
            return Err(Error::Internal("an empty micro-batch"));
        };
        let decoded = self.source.decoder.decode(&raw)?;
        let decoded = self.event_time.check(decoded, now_ms())?;
        // Records the state already reflects (processed before a restart whose
        // offsets were not committed yet) are skipped.
        let skip = if first < self.skip_below {
            (0..raw.len())
                .position(|i| raw.offset(i) >= self.skip_below)
                .unwrap_or(raw.len())
        } else {
            0
        };
        let (limit, failure) = self
            .route_bad_records(&raw, &decoded.bad, skip, &ack)
            .await?;
        let from = decoded.rows.partition_point(|&r| (r as usize) < skip);
        let to = decoded.rows.partition_point(|&r| (r as usize) < limit);
        let batch = if to - from < decoded.batch.num_rows() {
            decoded.batch.slice(from, to.saturating_sub(from))
        } else {
            decoded.batch
        };
        self.stats.add_in(raw.topic(), batch.num_rows());
        let at = BatchRef {
            topic: raw.topic(),
            partition: raw.partition(),
            first,
            last,
            raw: Some(&raw),
        };
        // A batch stopped by a bad record is read again from it: a heartbeat
        // after it must not move the event time before then.
        let heartbeat = decoded.heartbeat.filter(|_| limit == raw.len());
        if let Some(at_ms) = heartbeat {
            tracing::debug!(
                topic = raw.topic(),
                partition = raw.partition(),
                at_ms,
                "heartbeat"
            );
        }
        if batch.num_rows() > 0 || heartbeat.is_some() {
            self.run_outputs(&batch, heartbeat, &ack, &at).await?;
        }
        let next_offset = if limit < raw.len() {
            raw.offset(limit)
        } else {
            last + 1
        };
        // A batch read from below the state's checkpoint (the group had not
        // committed that far) must not move the checkpoint back: the state
        // already reflects every record up to it.
        let next_offset = next_offset.max(self.skip_below);
        self.position = Some((raw.partition(), next_offset));
        self.end_batch(next_offset, ack, failure).await
    }

    /// When an operator wants to run although no record arrived (known only
    /// once the partition's position is).
    pub(crate) fn due(&self) -> Option<std::time::Instant> {
        self.position?;
        self.operators.iter().filter_map(|op| op.due()).min()
    }

    /// Runs the operators on no records (an operator is [`due`](Self::due)),
    /// at the partition's current position; `None` when it is not known.
    pub(crate) async fn tick(&mut self) -> Result<Option<BatchOutcome>> {
        let Some((partition, next_offset)) = self.position else {
            return Ok(None);
        };
        let ack = DeliveryBatch::new();
        let empty = RecordBatch::new_empty(Arc::clone(self.source.decoder.schema()));
        let topic = self.source.topic.name().to_string();
        let at = BatchRef {
            topic: &topic,
            partition,
            first: next_offset,
            last: next_offset - 1,
            raw: None,
        };
        self.run_outputs(&empty, None, &ack, &at).await?;
        self.end_batch(next_offset, ack, None).await.map(Some)
    }

    /// Seals the batch's state changes at `next_offset` and logs them.
    async fn end_batch(
        &mut self,
        next_offset: i64,
        ack: Arc<DeliveryBatch>,
        failure: Option<Error>,
    ) -> Result<BatchOutcome> {
        let state = self.seal_state(next_offset);
        let logged = self.state.as_ref().filter(|s| s.is_logged());
        if let (Some(partition_state), false) = (logged, state.is_empty()) {
            partition_state
                .log(self.producer()?, &state, next_offset, &ack)
                .await?;
        }
        Ok(BatchOutcome {
            ack,
            next_offset,
            failure,
            state,
        })
    }

    /// Applies each bad record's policy (from index `skip`); returns where a
    /// `fail` policy stops the batch (its length otherwise) and the error.
    async fn route_bad_records(
        &self,
        raw: &RawBatch,
        bad: &[BadRecord],
        skip: usize,
        ack: &Arc<DeliveryBatch>,
    ) -> Result<(usize, Option<Error>)> {
        for record in bad.iter().filter(|b| b.index >= skip) {
            if let Some(error) = self.route_bad(raw, record, ack).await? {
                return Ok((record.index, Some(error)));
            }
        }
        Ok((raw.len(), None))
    }

    /// Applies the record's policy; returns the error to stop with under `fail`.
    async fn route_bad(
        &self,
        raw: &RawBatch,
        bad: &BadRecord,
        ack: &Arc<DeliveryBatch>,
    ) -> Result<Option<Error>> {
        let topic = &self.source.topic;
        let policy = topic.policy_for(bad.kind);
        let offset = raw.offset(bad.index);
        let count = self.stats.add_bad(topic.name(), bad.kind, policy.as_str());
        match policy {
            BadInputPolicy::Fail => Ok(Some(Error::BadInput {
                topic: raw.topic().to_string(),
                partition: raw.partition(),
                offset,
                kind: bad.kind,
                reason: bad.reason.clone(),
            })),
            BadInputPolicy::Skip => {
                if count == 1 || count.is_multiple_of(topic.log_every) {
                    tracing::warn!(
                        topic = raw.topic(), partition = raw.partition(), offset,
                        kind = %bad.kind, reason = %bad.reason, skipped_so_far = count,
                        "skipping bad record"
                    );
                }
                Ok(None)
            }
            BadInputPolicy::DeadLetter(dlq) => {
                let error = [
                    ("flumen.error.kind", bad.kind.as_str()),
                    ("flumen.error.reason", bad.reason.as_str()),
                ];
                self.dead_letter(dlq, raw, bad.index, &error, ack).await?;
                Ok(None)
            }
        }
    }

    /// Forwards the source record at `index` of `raw` unchanged to `topic`, with
    /// its headers plus `extra` and `flumen.source.{topic,partition,offset}`.
    async fn dead_letter(
        &self,
        topic: &str,
        raw: &RawBatch,
        index: usize,
        extra: &[(&str, &str)],
        ack: &Arc<DeliveryBatch>,
    ) -> Result<()> {
        let partition = raw.partition().to_string();
        let offset = raw.offset(index).to_string();
        let mut added = extra.to_vec();
        added.extend([
            ("flumen.source.topic", raw.topic()),
            ("flumen.source.partition", partition.as_str()),
            ("flumen.source.offset", offset.as_str()),
        ]);
        let producer = self.producer()?;
        let (key, value) = (raw.key(index), raw.value(index));
        let size = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        // A record the producer cannot send is referenced, not copied: its
        // source position (and size) are in the headers.
        let omitted = (size + DEAD_LETTER_HEADER_BYTES > producer.max_record_bytes())
            .then(|| size.to_string());
        let record = OutRecord {
            topic,
            key: if omitted.is_some() { None } else { key },
            value: if omitted.is_some() { None } else { value },
            timestamp_ms: raw.timestamp(index),
            partition: None,
        };
        let headers = match &omitted {
            Some(bytes) => {
                added.extend([
                    ("flumen.dead_letter.omitted", "key,value,headers"),
                    ("flumen.dead_letter.original_bytes", bytes.as_str()),
                ]);
                headers_with(None, &added)
            }
            None => headers_with(raw.headers(index), &added),
        };
        producer
            .send(record, Some(headers), ack)
            .await
            .map_err(Error::from)
    }

    /// Writes the source records an operator did not use to their
    /// dead-letter topics: first those it held past their batch (copies),
    /// then those of `raw` (in offset order).
    async fn write_dead_letters(
        &self,
        at: &BatchRef<'_>,
        dead_letters: &[DeadLetter],
        ack: &Arc<DeliveryBatch>,
    ) -> Result<()> {
        let (copies, in_batch): (Vec<_>, Vec<_>) =
            dead_letters.iter().partition(|d| d.copy.is_some());
        let topic: Arc<str> = Arc::from(at.topic);
        for record in copies {
            if let Some(copy) = &record.copy {
                let one = copy.to_raw(&topic, at.partition);
                self.dead_letter_of(record, &one, 0, ack).await?;
            }
        }
        let mut index = 0;
        for record in in_batch {
            let Some(raw) = at.raw else {
                return Err(Error::Internal("a dead letter without its batch"));
            };
            // Offsets ascend in both the batch and `dead_letters`.
            while index < raw.len() && raw.offset(index) < record.offset {
                index += 1;
            }
            if index >= raw.len() || raw.offset(index) != record.offset {
                return Err(Error::Internal("a dead letter is not in its batch"));
            }
            self.dead_letter_of(record, raw, index, ack).await?;
        }
        Ok(())
    }

    /// Writes record `index` of `raw` as the dead letter `record`.
    async fn dead_letter_of(
        &self,
        record: &DeadLetter,
        raw: &RawBatch,
        index: usize,
        ack: &Arc<DeliveryBatch>,
    ) -> Result<()> {
        let headers = record.reason.headers();
        let extra: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.dead_letter(&record.topic, raw, index, &extra, ack)
            .await?;
        self.stats.add_out(&record.topic, 1);
        Ok(())
    }

    fn producer(&self) -> Result<&Arc<Producer>> {
        self.producer
            .as_ref()
            .ok_or(Error::Internal("no producer for a Kafka output"))
    }

    async fn run_outputs(
        &mut self,
        input: &RecordBatch,
        heartbeat: Option<i64>,
        ack: &Arc<DeliveryBatch>,
        at: &BatchRef<'_>,
    ) -> Result<()> {
        let source = Arc::clone(&self.source);
        let mut done: Vec<Option<RecordBatch>> = vec![None; self.operators.len()];
        for (index, (chain, _)) in source.plan.outputs.iter().enumerate() {
            let mut batch = input.clone();
            for &node in chain {
                batch = match &done[node] {
                    Some(out) => out.clone(),
                    None => self.run_operator(node, batch, heartbeat, ack, at).await?,
                };
                done[node] = Some(batch.clone());
            }
            self.write(index, &batch, ack, at).await?;
        }
        Ok(())
    }

    /// Runs operator `node` on `batch` and routes its side outputs.
    async fn run_operator(
        &mut self,
        node: usize,
        batch: RecordBatch,
        heartbeat: Option<i64>,
        ack: &Arc<DeliveryBatch>,
        at: &BatchRef<'_>,
    ) -> Result<RecordBatch> {
        let mut ctx = OpContext::new(heartbeat, at.raw);
        let operator = &mut self.operators[node];
        let out = match operator.process(batch, &mut ctx).await {
            Ok(out) => out,
            Err(e) => {
                let name = self.source.plan.nodes[node].name.clone();
                return Err(at.operator_error(name, e));
            }
        };
        if let Some(state) = operator.state() {
            let dropped = state.dropped();
            self.stats
                .set_dropped(at.topic, at.partition, node, dropped);
        }
        let dead_letters = ctx.take_dead_letters();
        if !dead_letters.is_empty() {
            self.write_dead_letters(at, &dead_letters, ack).await?;
        }
        Ok(out)
    }

    async fn write(
        &mut self,
        index: usize,
        batch: &RecordBatch,
        ack: &Arc<DeliveryBatch>,
        at: &BatchRef<'_>,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let position = crate::sink::SourcePosition {
            topic: at.topic,
            partition: at.partition,
            first_offset: at.first,
            last_offset: at.last,
        };
        let writer = &mut self.outputs[index];
        writer.write(batch, position, ack).await?;
        self.stats.add_out(writer.name(), batch.num_rows());
        Ok(())
    }
}

/// The writer of an output to `sink` (`opened`: a custom sink's writer).
fn output_writer(
    sink: &SinkSpec,
    opened: Option<&Arc<dyn crate::sink::SinkWriter>>,
    producer: &Option<Arc<Producer>>,
) -> Result<Box<dyn OutputWriter>> {
    Ok(match (sink, opened) {
        (SinkSpec::Topic(topic), _) => Box::new(KafkaOutput::new(topic.clone(), producer.clone())),
        (SinkSpec::Print, _) => Box::new(PrintOutput),
        (SinkSpec::Custom(sink), Some(writer)) => Box::new(SinkOutput::new(
            sink.as_ref(),
            Arc::clone(writer),
            producer.clone(),
        )),
        (SinkSpec::Custom(_), None) => return Err(Error::Internal("a sink was not opened")),
    })
}
