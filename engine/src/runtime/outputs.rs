//! The outputs of a partition's pipeline, all behind [`OutputWriter`]: Kafka
//! topics, `print`, and [`Sink`](crate::sink::Sink)s such as Cassandra. The
//! [`TestDriver`](crate::testing::TestDriver) puts its own in place of the
//! Kafka ones.

use std::sync::Arc;

use crate::records::RecordEncoder;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use flumen_kafka::{DeliveryBatch, OutRecord, Producer};
use futures::future::BoxFuture;

use crate::sink::{Acks, DeadLetterRoute, SourcePosition};
use crate::topic::Topic;
use crate::{Error, Result};

/// Where one output of a partition's pipeline writes its batches.
pub(crate) trait OutputWriter: Send + Sync {
    /// The output's name in metrics (a topic, `print`, a sink's name).
    fn name(&self) -> &str;

    /// Checks, before anything is consumed, that batches of `schema` can be written.
    fn check(&mut self, _schema: &SchemaRef) -> Result<()> {
        Ok(())
    }

    /// Writes `batch` (never empty) of the input records at `position`; its
    /// deliveries are tracked by `ack`.
    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        position: SourcePosition<'a>,
        ack: &'a Arc<DeliveryBatch>,
    ) -> BoxFuture<'a, Result<()>>;
}

/// A Kafka topic: rows encoded by the topic's formats, produced by the
/// partition's producer.
pub(crate) struct KafkaOutput {
    topic: Topic,
    producer: Option<Arc<Producer>>,
    /// The encoder for the last batch schema seen.
    encoder: Option<(SchemaRef, RecordEncoder)>,
}

impl KafkaOutput {
    /// Writes to `topic` through `producer` (none: the output may only be checked).
    pub(crate) fn new(topic: Topic, producer: Option<Arc<Producer>>) -> Self {
        KafkaOutput {
            topic,
            producer,
            encoder: None,
        }
    }

    /// The encoder for batches of `schema` (a new one when the schema changed).
    fn encoder_for(&mut self, schema: &SchemaRef) -> Result<&RecordEncoder> {
        let topic = &self.topic;
        if self.encoder.as_ref().is_none_or(|(s, _)| s != schema) {
            let value_format = topic
                .value_format
                .clone()
                .unwrap_or_else(|| crate::records::Format::json(arrow::datatypes::Schema::empty()));
            let built = RecordEncoder::new(
                topic.name(),
                topic.key_format.clone(),
                value_format,
                topic.key_column.clone(),
                schema,
            )
            .map_err(|e| Error::Plan(e.to_string()))?;
            self.encoder = Some((Arc::clone(schema), built));
        }
        match &self.encoder {
            Some((_, encoder)) => Ok(encoder),
            None => Err(Error::Internal("encoder missing")),
        }
    }

    async fn produce(&mut self, batch: &RecordBatch, ack: &Arc<DeliveryBatch>) -> Result<()> {
        let producer = self.producer.clone();
        let producer = producer.ok_or(Error::Internal("no producer for a Kafka output"))?;
        let encoder = self.encoder_for(batch.schema_ref())?;
        let encoded = encoder.encode(batch)?;
        for row in 0..encoded.len() {
            let record = OutRecord {
                topic: encoder.topic(),
                key: encoded.key(row),
                value: encoded.value(row),
                timestamp_ms: encoded.timestamp(row),
                partition: None,
            };
            producer.send(record, None, ack).await?;
        }
        Ok(())
    }
}

impl OutputWriter for KafkaOutput {
    fn name(&self) -> &str {
        self.topic.name()
    }

    fn check(&mut self, schema: &SchemaRef) -> Result<()> {
        self.encoder_for(schema).map(drop)
    }

    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        _position: SourcePosition<'a>,
        ack: &'a Arc<DeliveryBatch>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.produce(batch, ack))
    }
}

/// Batches printed as tables on stdout.
pub(crate) struct PrintOutput;

impl OutputWriter for PrintOutput {
    fn name(&self) -> &str {
        "print"
    }

    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        _position: SourcePosition<'a>,
        _ack: &'a Arc<DeliveryBatch>,
    ) -> BoxFuture<'a, Result<()>> {
        let printed = arrow::util::pretty::pretty_format_batches(std::slice::from_ref(batch))
            .map(|table| println!("{table}"))
            .map_err(|e| Error::Sink {
                sink: "print".into(),
                source: Box::new(e),
            });
        Box::pin(std::future::ready(printed))
    }
}

/// An opened [`Sink`](crate::sink::Sink), shared by the partitions of a run.
pub(crate) struct SinkOutput {
    name: Arc<str>,
    writer: Arc<dyn crate::sink::SinkWriter>,
    dead_letters: Option<Arc<DeadLetterRoute>>,
}

impl SinkOutput {
    /// Writes through `writer` of `sink`; rows it gives up on go to the
    /// sink's dead-letter topic through `producer`.
    pub(crate) fn new(
        sink: &dyn crate::sink::Sink,
        writer: Arc<dyn crate::sink::SinkWriter>,
        producer: Option<Arc<Producer>>,
    ) -> Self {
        let dead_letters = sink
            .dead_letter_topic()
            .zip(producer)
            .map(|(topic, producer)| Arc::new(DeadLetterRoute { producer, topic }));
        SinkOutput {
            name: Arc::from(sink.name()),
            writer,
            dead_letters,
        }
    }
}

impl OutputWriter for SinkOutput {
    fn name(&self) -> &str {
        &self.name
    }

    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        position: SourcePosition<'a>,
        ack: &'a Arc<DeliveryBatch>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let acks = Acks::new(ack, &self.name, self.dead_letters.as_ref(), position);
            self.writer
                .write(batch.clone(), position, acks)
                .await
                .map_err(|source| Error::Sink {
                    sink: self.name.to_string(),
                    source,
                })
        })
    }
}
