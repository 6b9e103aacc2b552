//! An idempotent producer whose deliveries are tracked per batch.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio::sync::Notify;

use crate::consumer::{offsets_list, GroupMetadata, TopicPartition};
use crate::{KafkaConfig, KafkaError, Result};

/// Tracks the deliveries of a group of records (for example every output of one
/// micro-batch), so the caller can wait until all of them are acknowledged.
#[derive(Debug, Default)]
pub struct DeliveryBatch {
    pending: AtomicUsize,
    failure: Mutex<Option<KafkaError>>,
    done: Notify,
}

impl DeliveryBatch {
    /// A new, empty batch.
    pub fn new() -> Arc<Self> {
        Arc::new(DeliveryBatch::default())
    }

    fn finish_one(&self, failure: Option<KafkaError>) {
        if let Some(error) = failure {
            if let Ok(mut slot) = self.failure.lock() {
                slot.get_or_insert(error);
            }
        }
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
            self.done.notify_one();
        }
    }

    /// Starts tracking one more delivery that is not a Kafka record (e.g. a
    /// database write): the batch completes only after the ticket is settled.
    /// A ticket dropped unsettled counts as a failure.
    pub fn track(self: &Arc<Self>, sink: &Arc<str>) -> DeliveryTicket {
        self.pending.fetch_add(1, Ordering::AcqRel);
        DeliveryTicket {
            batch: Some(Arc::clone(self)),
            sink: Arc::clone(sink),
        }
    }

    /// Records still waiting for an acknowledgement.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Waits until every record sent with this batch is acknowledged; returns the
    /// first delivery failure, if any.
    pub async fn wait(&self) -> Result<()> {
        loop {
            let notified = self.done.notified();
            if self.pending() == 0 {
                break;
            }
            notified.await;
        }
        match self.failure.lock() {
            Ok(mut slot) => slot.take().map_or(Ok(()), Err),
            Err(_) => Ok(()),
        }
    }
}

/// One tracked delivery of a [`DeliveryBatch`]; settle it with [`DeliveryTicket::done`].
#[derive(Debug)]
pub struct DeliveryTicket {
    batch: Option<Arc<DeliveryBatch>>,
    sink: Arc<str>,
}

impl DeliveryTicket {
    /// Settles the delivery: `Err(error)` fails the batch (the first failure is kept).
    pub fn done(
        mut self,
        result: std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>,
    ) {
        if let Some(batch) = self.batch.take() {
            batch.finish_one(result.err().map(|source| KafkaError::SinkWrite {
                sink: self.sink.to_string(),
                source,
            }));
        }
    }
}

impl Drop for DeliveryTicket {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            batch.finish_one(Some(KafkaError::SinkWrite {
                sink: self.sink.to_string(),
                source: "the write was abandoned before it completed".into(),
            }));
        }
    }
}

/// Producer context that settles [`DeliveryBatch`]es.
pub struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<DeliveryBatch>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Self::DeliveryOpaque) {
        let failure = match result {
            Ok(_) => None,
            Err((error, message)) => {
                use rdkafka::Message;
                Some(KafkaError::Delivery {
                    topic: message.topic().to_string(),
                    reason: error.to_string(),
                    retriable: false,
                })
            }
        };
        batch.finish_one(failure);
    }
}

/// One record to send.
#[derive(Debug, Clone, Copy)]
pub struct OutRecord<'a> {
    /// Destination topic.
    pub topic: &'a str,
    /// Record key (`None`: no key).
    pub key: Option<&'a [u8]>,
    /// Record value (`None`: a tombstone).
    pub value: Option<&'a [u8]>,
    /// Record timestamp in epoch ms.
    pub timestamp_ms: Option<i64>,
    /// Destination partition (`None`: chosen by key, murmur2).
    pub partition: Option<i32>,
}

/// An idempotent producer (`enable.idempotence=true`, `acks=all`) with a background
/// polling thread. Keys are partitioned with murmur2, as the Java client does.
///
/// A transactional producer ([`Producer::transactional`]) sends every record
/// inside a transaction that ends with [`Producer::commit_transaction`], which
/// also commits the consumer offsets the transaction covers.
pub struct Producer {
    /// Serves delivery reports until the producer is dropped.
    _poller: Poller,
    inner: Arc<BaseProducer<DeliveryContext>>,
    /// The `transactional.id`, for a transactional producer.
    transactional_id: Option<String>,
    /// Key + value + headers one record may have (from `message.max.bytes`).
    max_record_bytes: usize,
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// What a record costs beyond its key, value and headers in a request
/// (record batch and record framing), with room to spare.
const RECORD_OVERHEAD_BYTES: usize = 4 << 10;

/// The largest key + value + headers a producer made from `client` sends.
fn max_record_bytes(client: &rdkafka::ClientConfig) -> usize {
    client
        .get("message.max.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
        .saturating_sub(RECORD_OVERHEAD_BYTES)
}

/// How long the polling thread waits for delivery reports at a time: how soon
/// it notices that the producer is dropped (it is not waited for: see
/// [`Poller`]'s `Drop`).
///
/// rdkafka's `poll` waits for whole milliseconds until its deadline, so the
/// last fraction of a millisecond of every step is a busy loop: with a 10 ms
/// step, that was ~9% of a core per producer, idle or not. A long step makes
/// that rare, and [`POLL_SLACK`] makes it short when no report comes.
const POLL_STEP: Duration = Duration::from_millis(100);

/// Added to [`POLL_STEP`]: the first wait is then a whole [`POLL_STEP`], and
/// when it ends without a report at most this much is left to spin through.
const POLL_SLACK: Duration = Duration::from_micros(100);

/// The thread that serves a producer's delivery reports (settling
/// [`DeliveryBatch`]es) until the producer is dropped.
struct Poller {
    stop: Arc<AtomicBool>,
}

impl Poller {
    fn start(producer: &Arc<BaseProducer<DeliveryContext>>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (producer, stopped) = (Arc::clone(producer), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("flumen-producer-poll".into())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    producer.poll(POLL_STEP + POLL_SLACK);
                }
            })
            .map_err(|e| KafkaError::Io {
                context: "starting the producer's polling thread".into(),
                source: e,
            })?;
        Ok(Poller { stop })
    }
}

impl Drop for Poller {
    /// Stops the thread without waiting for it (that would take up to a
    /// [`POLL_STEP`]): it holds the client, which is destroyed (queued
    /// records purged, as when the last handle of a client is dropped) once
    /// the thread ends, within a step.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// flumen's producer defaults; the caller's extra settings override them.
const PRODUCER_DEFAULTS: [(&str, &str); 7] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    ("compression.type", "lz4"),
    ("partitioner", "murmur2_random"),
    ("queue.buffering.max.messages", "1000000"),
];

impl Producer {
    /// Creates a producer; `extra` settings override the defaults.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let client = config.client_config(&PRODUCER_DEFAULTS);
        let inner: BaseProducer<DeliveryContext> = client
            .create_with_context(DeliveryContext)
            .map_err(|e| KafkaError::client("creating producer", e))?;
        Producer::polled(inner, None, max_record_bytes(&client))
    }

    /// The most key + value + header bytes one record may have
    /// (`message.max.bytes` less the record framing); larger records are
    /// refused by the client.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Creates a transactional producer with `transactional.id` =
    /// `transactional_id` and initializes it: the broker fences every earlier
    /// producer with the same id and aborts its open transaction. Blocking.
    pub fn transactional(
        config: &KafkaConfig,
        transactional_id: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let context = || format!("transactional producer '{transactional_id}'");
        let mut client = config.client_config(&PRODUCER_DEFAULTS);
        client.set("transactional.id", transactional_id);
        let inner: BaseProducer<DeliveryContext> = client
            .create_with_context(DeliveryContext)
            .map_err(|e| KafkaError::client(format!("creating {}", context()), e))?;
        let limit = max_record_bytes(&client);
        let producer = Producer::polled(inner, Some(transactional_id.to_string()), limit)?;
        producer
            .inner
            .init_transactions(timeout)
            .map_err(|e| KafkaError::client(format!("initializing {}", context()), e))?;
        Ok(producer)
    }

    /// `inner` with its delivery reports served by a polling thread.
    fn polled(
        inner: BaseProducer<DeliveryContext>,
        transactional_id: Option<String>,
        max_record_bytes: usize,
    ) -> Result<Self> {
        let inner = Arc::new(inner);
        Ok(Producer {
            _poller: Poller::start(&inner)?,
            inner,
            transactional_id,
            max_record_bytes,
        })
    }

    fn transaction_context(&self, what: &str) -> String {
        format!(
            "{what} of transactional producer '{}'",
            self.transactional_id.as_deref().unwrap_or("-")
        )
    }

    /// Starts a transaction (transactional producers only). Local: no request.
    pub fn begin_transaction(&self) -> Result<()> {
        self.inner
            .begin_transaction()
            .map_err(|e| KafkaError::client(self.transaction_context("beginning a transaction"), e))
    }

    /// Adds `offsets` (the next offsets to read, for `group`) to the open
    /// transaction: they are committed with it, or not at all. Blocking.
    pub fn send_offsets_to_transaction(
        &self,
        offsets: &[(TopicPartition, i64)],
        group: &GroupMetadata,
        timeout: Duration,
    ) -> Result<()> {
        let list = offsets_list(offsets)?;
        self.inner
            .send_offsets_to_transaction(&list, group.as_rdkafka(), timeout)
            .map_err(|e| {
                KafkaError::client(
                    self.transaction_context("sending offsets to the transaction"),
                    e,
                )
            })
    }

    /// Commits the open transaction: its records become visible to
    /// `read_committed` consumers and its offsets are committed, or neither.
    /// Blocking; flushes queued records first.
    pub fn commit_transaction(&self, timeout: Duration) -> Result<()> {
        self.inner.commit_transaction(timeout).map_err(|e| {
            KafkaError::client(self.transaction_context("committing the transaction"), e)
        })
    }

    /// Aborts the open transaction: its records are never visible to
    /// `read_committed` consumers and its offsets are not committed. Blocking.
    pub fn abort_transaction(&self, timeout: Duration) -> Result<()> {
        self.inner.abort_transaction(timeout).map_err(|e| {
            KafkaError::client(self.transaction_context("aborting the transaction"), e)
        })
    }

    /// Queues one record; its acknowledgement settles `batch`. Waits while the
    /// local queue is full.
    pub async fn send(
        &self,
        record: OutRecord<'_>,
        headers: Option<OwnedHeaders>,
        batch: &Arc<DeliveryBatch>,
    ) -> Result<()> {
        batch.pending.fetch_add(1, Ordering::AcqRel);
        let mut headers = headers;
        loop {
            let mut base: BaseRecord<'_, [u8], [u8], Arc<DeliveryBatch>> =
                BaseRecord::with_opaque_to(record.topic, Arc::clone(batch));
            if let Some(key) = record.key {
                base = base.key(key);
            }
            if let Some(value) = record.value {
                base = base.payload(value);
            }
            if let Some(partition) = record.partition {
                base = base.partition(partition);
            }
            if let Some(ts) = record.timestamp_ms {
                base = base.timestamp(ts);
            }
            if let Some(h) = headers.take() {
                base = base.headers(h);
            }
            match self.inner.send(base) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    returned,
                )) => {
                    headers = returned.headers;
                    // The local queue drains as the broker acknowledges; wait a little.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((error, _)) => {
                    batch.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(KafkaError::client(
                        format!("producing to topic '{}'", record.topic),
                        error,
                    ));
                }
            }
        }
    }

    /// Connects to the cluster and learns the partitions of `topics` before
    /// the first record is sent, so the first batches do not wait for the
    /// connection, the topic metadata and the idempotent producer id
    /// (about 0.5 s on the dev broker). Blocking.
    pub fn connect(&self, topics: &[impl AsRef<str>], timeout: Duration) -> Result<()> {
        use rdkafka::producer::Producer as _;
        for topic in topics {
            let topic = topic.as_ref();
            self.inner
                .client()
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| {
                    KafkaError::client(format!("fetching metadata of topic '{topic}'"), e)
                })?;
        }
        Ok(())
    }

    /// Waits until every queued record is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner
            .flush(timeout)
            .map_err(|e| KafkaError::client("flushing producer", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU time (in clock ticks) of this process's producer polling threads.
    #[cfg(target_os = "linux")]
    fn polling_threads_cpu_ticks() -> u64 {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0;
        };
        tasks
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == "flumen-producer")
            })
            .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
            .map(|stat| {
                // utime and stime: fields 14 and 15, the 12th and 13th after the name.
                let after_name = stat.rsplit(')').next().unwrap_or_default();
                let fields: Vec<&str> = after_name.split_whitespace().collect();
                let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
                ticks(11).unwrap_or(0) + ticks(12).unwrap_or(0)
            })
            .sum()
    }

    /// An idle producer's polling thread sleeps: with rdkafka's whole-ms
    /// waits and a 10 ms step, each spun through ~9% of a core (two idle
    /// producers took ~36 ticks in 2 s; now ~1).
    #[cfg(target_os = "linux")]
    #[test]
    fn idle_producers_do_not_spin() {
        let producers: Vec<Producer> = (0..2)
            .map(|_| Producer::new(&KafkaConfig::new("127.0.0.1:1")).expect("producer"))
            .collect();
        let before = polling_threads_cpu_ticks();
        // The measurement window, not a wait for a condition.
        std::thread::sleep(Duration::from_secs(2));
        // Saturating: a thread of another test may have ended meanwhile.
        let ticks = polling_threads_cpu_ticks().saturating_sub(before);
        assert!(
            ticks < 12,
            "two idle producers' polling took {ticks} ticks in 2 s"
        );
        drop(producers);
    }

    #[test]
    fn connecting_without_a_reachable_broker_names_the_topic() {
        // Port 1 on loopback: nothing listens, connections are refused at once.
        let producer = Producer::new(&KafkaConfig::new("127.0.0.1:1")).expect("producer");
        let error = producer
            .connect(&["sensor-readings"], Duration::from_millis(300))
            .expect_err("no broker");
        assert!(
            error.to_string().contains("'sensor-readings'"),
            "unexpected error: {error}"
        );
    }
}
