//! `Application`: configuration, the frames of a pipeline, and running them.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::records::RecordDecoder;
use datafusion::prelude::SessionContext;
use flumen_kafka::{Admin, AutoOffsetReset, GroupConsumer, KafkaConfig, Producer};

use crate::dataframe::{Outputs, StreamingDataFrame};
use crate::plan::physical::PhysicalPlan;
use crate::plan::{Output, SinkSpec};
use crate::publisher::{Input, Publisher};
use crate::runtime::lock;
use crate::runtime::pipeline::{PartitionPipeline, SourcePlan};
use crate::runtime::repartition::{self, Stages};
use crate::runtime::stats::Stats;
use crate::runtime::stop::StopHandle;
use crate::runtime::worker::{BatchSettings, Rebalancer, RunSettings, TransactionSettings, Worker};
use crate::runtime::{internal_topics, state_dir};
use crate::state::{self, Changelogs, ReplayClients, ReplayLogs, StateSettings};
use crate::topic::Topic;
use crate::{Error, Result};

/// What a run promises about the effects of each input record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessingGuarantee {
    /// Offsets are committed after every output of their records was
    /// acknowledged; after a crash the records since the last commit are
    /// processed again, so Kafka outputs may hold some results twice.
    #[default]
    AtLeastOnce,
    /// Each input partition's outputs, changelog records and consumer offsets
    /// are committed together in one Kafka transaction every
    /// `commit_interval` (a transactional producer per partition,
    /// `transactional.id` = `<consumer group>-<topic>-<partition>`); a failed
    /// transaction is aborted and the application rewinds to the last
    /// committed offsets. Consumers reading the outputs with
    /// `isolation.level=read_committed` see every result exactly once.
    /// Cassandra outputs stay idempotent upserts.
    ExactlyOnce,
}

/// Builds an [`Application`]. `Debug` shows secret properties as `***`.
#[derive(Clone)]
pub struct ApplicationBuilder {
    brokers: Option<String>,
    group: Option<String>,
    reset: AutoOffsetReset,
    commit_interval: Duration,
    max_batch_records: usize,
    max_batch_bytes: usize,
    max_batch_delay: Duration,
    extra: Vec<(String, String)>,
    consumer_extra: Vec<(String, String)>,
    producer_extra: Vec<(String, String)>,
    state_dir: Option<PathBuf>,
    block_cache_bytes: usize,
    max_unacknowledged_bytes: usize,
    changelogs: bool,
    replication_factor: i32,
    guarantee: ProcessingGuarantee,
}

/// Extra properties with secret values shown as `***`.
fn shown(properties: &[(String, String)]) -> Vec<(&str, &str)> {
    properties
        .iter()
        .map(|(k, v)| (k.as_str(), flumen_kafka::redacted(k, v)))
        .collect()
}

impl std::fmt::Debug for ApplicationBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplicationBuilder")
            .field("brokers", &self.brokers)
            .field("group", &self.group)
            .field("reset", &self.reset)
            .field("commit_interval", &self.commit_interval)
            .field("max_batch_records", &self.max_batch_records)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("max_batch_delay", &self.max_batch_delay)
            .field("config", &shown(&self.extra))
            .field("consumer_config", &shown(&self.consumer_extra))
            .field("producer_config", &shown(&self.producer_extra))
            .field("state_dir", &self.state_dir)
            .field("block_cache_bytes", &self.block_cache_bytes)
            .field("max_unacknowledged_bytes", &self.max_unacknowledged_bytes)
            .field("changelogs", &self.changelogs)
            .field("replication_factor", &self.replication_factor)
            .field("guarantee", &self.guarantee)
            .finish()
    }
}

impl Default for ApplicationBuilder {
    fn default() -> Self {
        ApplicationBuilder {
            brokers: None,
            group: None,
            reset: AutoOffsetReset::Earliest,
            commit_interval: Duration::from_secs(1),
            max_batch_records: 10_000,
            max_batch_bytes: 4 << 20,
            max_batch_delay: Duration::from_millis(100),
            extra: Vec::new(),
            consumer_extra: Vec::new(),
            producer_extra: Vec::new(),
            state_dir: None,
            block_cache_bytes: 64 << 20,
            max_unacknowledged_bytes: 128 << 20,
            changelogs: true,
            replication_factor: -1,
            guarantee: ProcessingGuarantee::AtLeastOnce,
        }
    }
}

impl ApplicationBuilder {
    /// Bootstrap brokers, `host:port[,host:port...]`. Required.
    pub fn brokers(mut self, brokers: impl Into<String>) -> Self {
        self.brokers = Some(brokers.into());
        self
    }

    /// The consumer group; instances with the same group share the partitions. Required.
    pub fn consumer_group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Where to start when the group has no committed offset (default: earliest).
    pub fn auto_offset_reset(mut self, reset: AutoOffsetReset) -> Self {
        self.reset = reset;
        self
    }

    /// How often delivered offsets are committed (default 1 s).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Largest micro-batch in records (default 10,000).
    pub fn max_batch_records(mut self, records: usize) -> Self {
        self.max_batch_records = records.max(1);
        self
    }

    /// Largest micro-batch in key + value bytes (default 4 MiB).
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes.max(1);
        self
    }

    /// Longest a record waits for its micro-batch to fill (default 100 ms).
    pub fn max_batch_delay(mut self, delay: Duration) -> Self {
        self.max_batch_delay = delay.max(Duration::from_millis(1));
        self
    }

    /// An extra librdkafka property for every client (consumer, producer, admin),
    /// e.g. `security.protocol` or `session.timeout.ms`.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }

    /// An extra librdkafka property for the consumer only (e.g. `session.timeout.ms`).
    pub fn consumer_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer_extra.push((key.into(), value.into()));
        self
    }

    /// An extra librdkafka property for the producer only (e.g. `linger.ms`).
    pub fn producer_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer_extra.push((key.into(), value.into()));
        self
    }

    /// Where windowed operators keep their RocksDB state: one database per input
    /// topic and partition below this directory (default:
    /// `$XDG_STATE_HOME/flumen/<consumer group>`, else
    /// `~/.local/state/flumen/<consumer group>`, created with mode 0700). It
    /// must belong to the user running the application and not be writable by
    /// others (checked at start). Restart an application on the same
    /// directory to continue from its state.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Whether window state is also written to changelog topics (default:
    /// yes). Each window store of an input `T` writes its changes to
    /// `<consumer group>-changelog-<T>-<store>` (created at start, partitioned
    /// like `T`, compacted), and a state directory that is missing, empty or
    /// behind the group's committed offsets is rebuilt from it; without
    /// changelogs such a directory stops the start with `Error::StateBehind`.
    pub fn changelogs(mut self, enabled: bool) -> Self {
        self.changelogs = enabled;
        self
    }

    /// Replication factor of the internal topics flumen creates (changelog and
    /// repartition topics; default -1: the broker's `default.replication.factor`,
    /// as Kafka Streams does).
    pub fn replication_factor(mut self, replication: i32) -> Self {
        self.replication_factor = replication;
        self
    }

    /// At-least-once (default) or exactly-once processing; see [`ProcessingGuarantee`].
    pub fn processing_guarantee(mut self, guarantee: ProcessingGuarantee) -> Self {
        self.guarantee = guarantee;
        self
    }

    /// Size of the RocksDB block cache shared by the partitions' states (default 64 MiB).
    pub fn block_cache_bytes(mut self, bytes: usize) -> Self {
        self.block_cache_bytes = bytes;
        self
    }

    /// At-least-once: about how much memory batches awaiting the broker's
    /// acknowledgements may hold, over every partition (their state changes and
    /// queued output records; default 128 MiB). Processing pauses at the limit.
    /// It must cover the records produced while the broker takes to
    /// acknowledge (throughput x acknowledgement latency); lower it when many
    /// keys make every record change state and memory matters more than speed.
    pub fn max_unacknowledged_bytes(mut self, bytes: usize) -> Self {
        self.max_unacknowledged_bytes = bytes;
        self
    }

    /// Checks the settings and builds the application.
    pub fn build(self) -> Result<Application> {
        let brokers = self
            .brokers
            .clone()
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| {
                Error::Config("brokers are required (ApplicationBuilder::brokers)".into())
            })?;
        let group = self
            .group
            .clone()
            .filter(|g| !g.trim().is_empty())
            .ok_or_else(|| {
                Error::Config(
                    "a consumer group is required (ApplicationBuilder::consumer_group)".into(),
                )
            })?;
        let mut kafka = KafkaConfig::new(brokers);
        for (k, v) in &self.extra {
            kafka.insert(k.clone(), v.clone());
        }
        Ok(Application {
            kafka,
            group,
            settings: self,
            topics: Mutex::new(HashMap::new()),
            publishers: Mutex::new(Vec::new()),
            outputs: Arc::new(Mutex::new(Vec::new())),
            stats: Arc::new(Stats::default()),
            stop: StopHandle::default(),
        })
    }
}

/// A flumen application: one member of a consumer group running the frames
/// created from it.
///
/// ```no_run
/// use arrow::datatypes::{DataType, Field, Schema};
/// use flumen::prelude::*;
///
/// # async fn run() -> flumen::Result<()> {
/// let app = Application::builder()
///     .brokers("localhost:9092")
///     .consumer_group("sensors")
///     .build()?;
/// let schema = Schema::new(vec![
///     Field::new("device", DataType::Utf8, false),
///     Field::new("temp", DataType::Float64, false),
/// ]);
/// let readings = app.dataframe(Topic::json("readings").schema(schema))?;
/// readings
///     .filter(col("temp").gt_eq(lit(0.0)))
///     .with_column("temp_f", col("temp") * lit(1.8) + lit(32.0))
///     .to_topic(Topic::json("readings-f"));
/// app.run().await // until SIGINT / SIGTERM
/// # }
/// ```
pub struct Application {
    kafka: KafkaConfig,
    group: String,
    settings: ApplicationBuilder,
    topics: Mutex<HashMap<String, Topic>>,
    publishers: Mutex<Vec<Arc<dyn Publisher>>>,
    outputs: Outputs,
    stats: Arc<Stats>,
    stop: StopHandle,
}

impl Application {
    /// Starts building an application.
    pub fn builder() -> ApplicationBuilder {
        ApplicationBuilder::default()
    }

    /// A frame of the records of `input`: a [`Topic`], or what a
    /// [`Publisher`] (e.g. `flumen_cassandra::CassandraSource`) writes into
    /// its topic, which the application then runs beside the pipeline. Fails
    /// when the topic's value format is not usable (a JSON topic without
    /// schema, a bad timestamp field) or the topic is already an input.
    pub fn dataframe(&self, input: impl Into<Input>) -> Result<StreamingDataFrame> {
        let (name, topic) = match input.into() {
            Input::Topic(topic) => {
                check_input_topic(&topic)?;
                (topic.name.clone(), topic)
            }
            Input::Published(publisher) => {
                let name = publisher.topic_name(&self.group);
                lock(&self.publishers).push(publisher);
                // Described (schema, format) when the application starts.
                (name.clone(), Topic::json(name))
            }
        };
        let mut topics = lock(&self.topics);
        if topics.contains_key(&name) {
            return Err(Error::Config(format!(
                "topic '{name}' is already an input of this application; branch the frame you have instead"
            )));
        }
        topics.insert(name.clone(), topic);
        Ok(StreamingDataFrame::new(&name, Arc::clone(&self.outputs)))
    }

    /// Describes the publishers' topics (creating them when missing).
    async fn describe_publishers(&self) -> Result<()> {
        let publishers: Vec<Arc<dyn Publisher>> = lock(&self.publishers).clone();
        for publisher in publishers {
            let topic = publisher
                .describe(&self.kafka, &self.group)
                .await
                .map_err(|e| Error::Publisher {
                    publisher: publisher.name(),
                    source: e,
                })?;
            check_input_topic(&topic)?;
            lock(&self.topics).insert(publisher.topic_name(&self.group), topic);
        }
        Ok(())
    }

    /// Starts every publisher; they stop when `stop` is sent (or dropped).
    fn start_publishers(
        &self,
        stop: &tokio::sync::watch::Sender<bool>,
    ) -> tokio::task::JoinSet<Result<()>> {
        let mut running = tokio::task::JoinSet::new();
        let publishers: Vec<Arc<dyn Publisher>> = lock(&self.publishers).clone();
        for publisher in publishers {
            let (kafka, group) = (self.kafka.clone(), self.group.clone());
            let mut stopped = stop.subscribe();
            running.spawn(async move {
                let stop = Box::pin(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                });
                publisher
                    .publish(&kafka, &group, stop)
                    .await
                    .map_err(|e| Error::Publisher {
                        publisher: publisher.name(),
                        source: e,
                    })
            });
        }
        running
    }

    /// A handle that stops [`Application::run`] from elsewhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Live counters of this application.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The consumer group.
    pub fn consumer_group(&self) -> &str {
        &self.group
    }

    /// The directory of this application's state (see [`ApplicationBuilder::state_dir`]).
    pub fn state_dir(&self) -> PathBuf {
        self.settings.state_dir.clone().unwrap_or_else(|| {
            state_dir::default_for(&crate::runtime::worker::file_safe(&self.group))
        })
    }

    /// Runs until SIGINT or SIGTERM, then finishes in-flight batches, commits and returns.
    pub async fn run(&self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `until` completes (or a stop handle fires, or an error), then
    /// finishes in-flight batches, commits and returns.
    pub async fn run_until(&self, until: impl Future<Output = ()>) -> Result<()> {
        let result = self.run_restarting(until).await;
        // A stop asked before or during this run was consumed by it; the next
        // run of this application starts afresh. (Resetting at the start instead
        // would lose a stop asked just before the run's first poll.)
        self.stop.reset();
        result
    }

    /// Runs until `until`, a stop or an error; in exactly-once mode a run
    /// whose transaction was aborted starts again from the committed offsets
    /// (up to [`MAX_RESTARTS`] times in a row without a committed transaction).
    async fn run_restarting(&self, until: impl Future<Output = ()>) -> Result<()> {
        let mut until = std::pin::pin!(until);
        let mut failures = 0u32;
        loop {
            let committed_before = self.stats.transactions_committed();
            match self.run_once(until.as_mut()).await {
                Err(error @ Error::TransactionAborted { .. })
                    if self.stop.mode() == crate::runtime::stop::StopMode::Running =>
                {
                    if self.stats.transactions_committed() > committed_before {
                        failures = 0;
                    }
                    failures += 1;
                    if failures > MAX_RESTARTS {
                        return Err(error);
                    }
                    let backoff = Duration::from_millis(200 << failures.min(6));
                    tracing::warn!(
                        %error, attempt = failures, ?backoff,
                        "rewinding to the last committed offsets and starting again"
                    );
                    self.stats.add_restart();
                    tokio::time::sleep(backoff).await;
                }
                result => return result,
            }
        }
    }

    async fn run_once(&self, until: impl Future<Output = ()>) -> Result<()> {
        self.describe_publishers().await?;
        let worker = Arc::new(self.prepare().await?);
        let consumer = GroupConsumer::new(
            &with_extra(&self.kafka, &self.settings.consumer_extra),
            &self.group,
            self.settings.reset,
            Arc::new(Rebalancer(Arc::downgrade(&worker))),
        )?;
        let mut polling = self.spawn_polling_thread(&worker, consumer)?;
        tracing::info!(group = %self.group, inputs = worker.sources.len(), "running");
        // If this future is dropped mid-run, the polling thread still winds down.
        let guard = StopOnDrop(Some(self.stop.clone()));
        let (stop_publishers, _) = tokio::sync::watch::channel(false);
        let mut publishers = self.start_publishers(&stop_publishers);
        let done_rx = &mut polling.result;
        let died = || Err(polling_thread_error("it stopped without a result"));
        let (result, close_by) = tokio::select! {
            result = &mut *done_rx => (result.unwrap_or_else(|_| died()), None),
            () = until => {
                self.stop.stop();
                (done_rx.await.unwrap_or_else(|_| died()), None)
            }
            error = first_failure(&mut publishers) => {
                self.stop.stop();
                let _ = done_rx.await;
                (Err(error), None)
            }
            () = worker.wait_failed() => {
                // A failed run has one deadline for its whole stop.
                let close_by = tokio::time::Instant::now() + CLOSE_TIMEOUT;
                let result = result_within(CLOSE_TIMEOUT, done_rx, || worker.take_failure()).await;
                (result, Some(close_by))
            }
        };
        guard.disarm();
        let close_by = close_by.unwrap_or_else(|| tokio::time::Instant::now() + CLOSE_TIMEOUT);
        polling.closed_by(close_by).await;
        let _ = stop_publishers.send(true);
        let publishers = finish_publishers(publishers).await;
        result.and(publishers)
    }

    /// Starts the thread that subscribes, polls and, once stopped, commits,
    /// leaves the group and closes `consumer`.
    fn spawn_polling_thread(
        &self,
        worker: &Arc<Worker>,
        consumer: GroupConsumer,
    ) -> Result<PollingThread> {
        let topics: Vec<String> = worker.sources.keys().cloned().collect();
        let (result_tx, result) = tokio::sync::oneshot::channel();
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        let worker = Arc::clone(worker);
        std::thread::Builder::new()
            .name(format!("flumen-poll-{}", self.group))
            .spawn(move || {
                let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
                let polled = consumer
                    .subscribe(&refs)
                    .map_err(Error::from)
                    .and_then(|()| worker.poll_loop(&consumer));
                let _ = result_tx.send(polled);
                let closing = std::time::Instant::now();
                drop(consumer);
                tracing::debug!(elapsed = ?closing.elapsed(), "consumer closed");
                let _ = closed_tx.send(());
            })
            .map_err(|e| Error::Io {
                what: "starting the polling thread".into(),
                source: e,
            })?;
        Ok(PollingThread { result, closed })
    }

    /// The outputs of the frames built so far.
    #[cfg(test)]
    pub(crate) fn outputs(&self) -> Vec<Output> {
        lock(&self.outputs).clone()
    }

    /// The inputs and outputs of the frames built so far, split into stages at
    /// their repartitions.
    fn stages(&self, ctx: &Arc<SessionContext>) -> Result<Stages> {
        let topics = lock(&self.topics).clone();
        let outputs = lock(&self.outputs).clone();
        if topics.is_empty() {
            return Err(Error::Plan(
                "the application has no input: call Application::dataframe".into(),
            ));
        }
        if outputs.is_empty() {
            return Err(Error::Plan(
                "the application has no output: end a frame with to_topic(...) or print()".into(),
            ));
        }
        repartition::split(&self.group, topics, outputs, ctx)
    }

    /// The plans of every input, for running in memory: no repartition, no
    /// dead-letter topic, no changelog (see [`crate::testing::TestDriver`]).
    pub(crate) async fn in_memory_sources(
        &self,
        ctx: &Arc<SessionContext>,
    ) -> Result<HashMap<String, Arc<SourcePlan>>> {
        let outputs = lock(&self.outputs).clone();
        connect_operators(&outputs).await?;
        let Stages {
            topics,
            outputs,
            repartitions,
        } = self.stages(ctx)?;
        if let Some(r) = repartitions.first() {
            return Err(Error::Plan(format!(
                "a group_by that repartitions (through '{}') cannot run in memory; \
                 test the stages apart or run against a broker",
                r.name
            )));
        }
        let mut sources = HashMap::new();
        for (name, topic) in &topics {
            let mine = outputs_of(&outputs, name);
            let plan = plan_of(topic, &mine, (ctx, false))?;
            if let Some((dlq, _)) = dead_letter_topics(topic, &mine, &plan).first() {
                return Err(Error::Plan(format!(
                    "input '{name}' routes records to the dead-letter topic '{dlq}', \
                     which cannot run in memory; use BadInputPolicy::Fail or Skip there"
                )));
            }
            let plan = Arc::new(source_plan(topic, mine, plan).await?);
            PartitionPipeline::new(Arc::clone(&plan), None, Arc::clone(&self.stats), ctx)?
                .validate()?;
            sources.insert(name.clone(), plan);
        }
        Ok(sources)
    }

    /// Checks topics and the plan, connects the producer, builds the worker.
    async fn prepare(&self) -> Result<Worker> {
        state_dir::prepare(&self.state_dir())?;
        let ctx = Arc::new(SessionContext::new());
        let outputs = lock(&self.outputs).clone();
        connect_operators(&outputs).await?;
        let Stages {
            topics,
            outputs,
            repartitions,
        } = self.stages(&ctx)?;
        let admin = Admin::new(&self.kafka)?;
        for r in &repartitions {
            let partitions = match r.partitions {
                Some(p) => p,
                None => admin.require_topic(&r.input)?,
            };
            let replication = self.settings.replication_factor;
            internal_topics::ensure_repartition(&admin, &r.name, partitions, replication).await?;
        }
        let mut sources = HashMap::new();
        // Every topic a producer writes to: outputs, repartitions, dead letters, changelogs.
        let mut produced: BTreeSet<String> = BTreeSet::new();
        for (name, topic) in &topics {
            let mine = outputs_of(&outputs, name);
            let plan = self
                .source_of(&admin, (name, topic), mine, &ctx, &mut produced)
                .await?;
            sources.insert(name.clone(), Arc::new(plan));
        }
        let stats = Arc::clone(&self.stats);
        for source in sources.values() {
            PartitionPipeline::new(Arc::clone(source), None, Arc::clone(&stats), &ctx)?
                .validate()?;
        }
        let exactly_once = self.settings.guarantee == ProcessingGuarantee::ExactlyOnce;
        // In exactly-once mode every partition has its own transactional producer.
        let produced: Vec<String> = produced.into_iter().collect();
        let producer = if !produced.is_empty() && !exactly_once {
            let producer = Producer::new(&with_extra(&self.kafka, &self.settings.producer_extra))?;
            producer.connect(&produced, CONNECT_TIMEOUT)?;
            Some(Arc::new(producer))
        } else {
            None
        };
        let s = &self.settings;
        let settings = BatchSettings {
            max_records: s.max_batch_records,
            max_bytes: s.max_batch_bytes,
            max_delay: s.max_batch_delay,
            commit_interval: s.commit_interval,
            queued_batches: 2,
            unacknowledged_batches: 32,
            unacknowledged_bytes: s.max_unacknowledged_bytes,
            drain_timeout: Duration::from_secs(120),
        };
        let state = self.state_settings(&sources)?;
        let transactions = exactly_once.then(|| TransactionSettings {
            config: with_extra(&self.kafka, &self.settings.producer_extra),
            id_prefix: self.group.clone(),
            timeout: Duration::from_secs(60),
            topics: produced,
        });
        Ok(Worker::new(
            sources,
            producer,
            ctx,
            stats,
            self.stop.clone(),
            RunSettings {
                batches: settings,
                state,
                transactions,
            },
        ))
    }
}

impl Application {
    /// Where and how the partitions of `sources` keep their state.
    fn state_settings(&self, sources: &HashMap<String, Arc<SourcePlan>>) -> Result<StateSettings> {
        let s = &self.settings;
        let replay_logged = sources.values().any(|s| !s.replay_logs.is_empty());
        let replay = replay_logged
            .then(|| ReplayClients::new(&with_extra(&self.kafka, &s.producer_extra)))
            .transpose()?;
        Ok(StateSettings {
            kafka: with_extra(&self.kafka, &s.consumer_extra),
            dir: self.state_dir(),
            application: self.group.clone(),
            cache: flumen_state::BlockCache::new(s.block_cache_bytes),
            replay: replay.map(Arc::new),
        })
    }

    /// The plan of input `topic` with its `outputs`, after checking the
    /// topics it reads and writes; adds those it writes to `produced`.
    async fn source_of(
        &self,
        admin: &Admin,
        (name, topic): (&str, &Topic),
        outputs: Vec<Output>,
        ctx: &Arc<SessionContext>,
        produced: &mut BTreeSet<String>,
    ) -> Result<SourcePlan> {
        admin.require_topic(name)?;
        for o in &outputs {
            if let SinkSpec::Topic(t) = &o.sink {
                produced.insert(t.name().to_string());
                require_output(admin, t.name(), "output")?;
            }
        }
        let exactly_once = self.settings.guarantee == ProcessingGuarantee::ExactlyOnce;
        let plan = plan_of(topic, &outputs, (ctx, exactly_once))?;
        for (dlq, role) in dead_letter_topics(topic, &outputs, &plan) {
            require_output(admin, &dlq, &role)?;
            produced.insert(dlq);
        }
        let mut plan = source_plan(topic, outputs, plan).await?;
        if self.settings.changelogs {
            plan.changelogs = self.changelogs_of(admin, name, &plan).await?;
            produced.extend(plan.changelogs.values().cloned());
        }
        for store in plan.plan.replay_log_stores() {
            let log = state::replay_log::topic_name(&self.group, name, &store);
            let replication = self.settings.replication_factor;
            internal_topics::ensure_replay_log(admin, &log, name, replication).await?;
            plan.replay_logs.insert(store, log);
        }
        Ok(plan)
    }

    /// The changelog topics of `plan`'s state stores, created when missing
    /// and checked when present.
    async fn changelogs_of(
        &self,
        admin: &Admin,
        topic: &str,
        plan: &SourcePlan,
    ) -> Result<Changelogs> {
        let mut changelogs = Changelogs::new();
        for store in plan.plan.store_names() {
            let name = state::topic_name(&self.group, topic, &store);
            let spec = internal_topics::ChangelogTopic {
                name: &name,
                source: topic,
                group: &self.group,
                replication: self.settings.replication_factor,
            };
            internal_topics::ensure_changelog(admin, &self.kafka, &spec).await?;
            changelogs.insert(store, name);
        }
        Ok(changelogs)
    }
}

/// How long a producer may take to learn the topics it writes to before the run starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often in a row a run may be restarted after an aborted transaction
/// without committing one in between.
const MAX_RESTARTS: u32 = 10;

/// Asks a run to stop when the future driving it is dropped before it ended.
struct StopOnDrop(Option<StopHandle>);

impl StopOnDrop {
    /// The run ended: nothing to stop.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = &self.0 {
            stop.stop();
        }
    }
}

fn with_extra(config: &KafkaConfig, extra: &[(String, String)]) -> KafkaConfig {
    let mut config = config.clone();
    for (k, v) in extra {
        config.insert(k.clone(), v.clone());
    }
    config
}

/// Connects what the operators of `outputs` need before planning (lookup
/// tables), each operator once.
async fn connect_operators(outputs: &[Output]) -> Result<()> {
    let mut connected = std::collections::HashSet::new();
    for output in outputs {
        for node in output.node.chain() {
            let Some(op) = node.op.as_ref().and_then(|op| op.operator()) else {
                continue;
            };
            if connected.insert(node.id) {
                op.connect().await.map_err(|source| Error::Lookup {
                    lookup: op.name(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

/// Opens a sink with the schema of the frame it receives.
async fn open_sink(
    sink: &Arc<dyn crate::sink::Sink>,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<Arc<dyn crate::sink::SinkWriter>> {
    tracing::info!(sink = %sink.name(), "opening sink");
    sink.open(Arc::clone(schema))
        .await
        .map_err(|source| Error::Sink {
            sink: sink.name(),
            source,
        })
}

/// The outputs that read `source`.
fn outputs_of(outputs: &[crate::plan::Output], source: &str) -> Vec<crate::plan::Output> {
    outputs
        .iter()
        .filter(|o| &*o.node.source == source)
        .cloned()
        .collect()
}

/// The dead-letter topics input `topic`, the operators of its `plan` and its
/// `outputs` write to, each with its role (for error messages): bad input,
/// late records, failed sink rows.
fn dead_letter_topics(
    topic: &Topic,
    outputs: &[Output],
    plan: &PhysicalPlan,
) -> Vec<(String, String)> {
    let mut topics: Vec<(String, String)> = topic
        .dead_letter_topics()
        .into_iter()
        .map(|t| (t.to_string(), "dead-letter".to_string()))
        .collect();
    for (t, role) in plan.dead_letter_topics() {
        if !topics.iter().any(|(known, _)| known == &t) {
            topics.push((t, role));
        }
    }
    for output in outputs {
        if let SinkSpec::Custom(sink) = &output.sink {
            if let Some(t) = sink.dead_letter_topic() {
                topics.push((t, format!("{} dead-letter", sink.name())));
            }
        }
    }
    topics
}

/// The operators of input `topic`'s `outputs`, planned (with stores for
/// replay logs when `replay_logs`).
fn plan_of(
    topic: &Topic,
    outputs: &[Output],
    planning: (&Arc<SessionContext>, bool),
) -> Result<PhysicalPlan> {
    let schema = decoder_of(topic)?.schema().clone();
    PhysicalPlan::new(topic.name(), &schema, outputs, planning)
}

/// The plan of input `topic` for `outputs`, its custom sinks opened (no
/// changelogs yet).
async fn source_plan(
    topic: &Topic,
    outputs: Vec<Output>,
    plan: PhysicalPlan,
) -> Result<SourcePlan> {
    let mut writers = Vec::new();
    for (o, (_, schema)) in outputs.iter().zip(&plan.outputs) {
        writers.push(match &o.sink {
            SinkSpec::Custom(sink) => Some(open_sink(sink, schema).await?),
            _ => None,
        });
    }
    Ok(SourcePlan {
        topic: topic.clone(),
        decoder: decoder_of(topic)?,
        outputs,
        plan,
        writers,
        changelogs: Changelogs::new(),
        replay_logs: ReplayLogs::new(),
    })
}

fn require_output(admin: &Admin, topic: &str, role: &str) -> Result<()> {
    match admin.partition_count(topic)? {
        Some(_) => Ok(()),
        None => Err(Error::Config(format!(
            "{role} topic '{topic}' does not exist; create it before starting the application"
        ))),
    }
}

/// The first publisher error; pending forever when none fails.
async fn first_failure(publishers: &mut tokio::task::JoinSet<Result<()>>) -> Error {
    while let Some(joined) = publishers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return error,
            Err(e) => {
                return Error::Task {
                    task: "a publisher".into(),
                    source: Box::new(e),
                }
            }
        }
    }
    std::future::pending().await
}

/// What the polling thread reports: its result once it has stopped
/// (committed and left the group), then that its consumer has closed.
struct PollingThread {
    result: tokio::sync::oneshot::Receiver<Result<()>>,
    closed: tokio::sync::oneshot::Receiver<()>,
}

impl PollingThread {
    /// Waits until `deadline` for the consumer to close: with the brokers
    /// unreachable, librdkafka's close waits for requests to time out, and a
    /// stopping run need not (the consumer goes on closing in the background).
    async fn closed_by(self, deadline: tokio::time::Instant) {
        if tokio::time::timeout_at(deadline, self.closed)
            .await
            .is_err()
        {
            tracing::warn!(
                "the Kafka consumer has not closed in time (are the brokers reachable?); \
                 it goes on closing in the background"
            );
        }
    }
}

/// The polling thread's result; after `timeout`, the failure the run stops
/// with (the thread then goes on in the background: with the brokers
/// unreachable, librdkafka's final commit and leave can each wait for its
/// socket timeout).
async fn result_within(
    timeout: Duration,
    done: &mut tokio::sync::oneshot::Receiver<Result<()>>,
    failure: impl FnOnce() -> Option<Error>,
) -> Result<()> {
    match tokio::time::timeout(timeout, done).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(polling_thread_error("it stopped without a result")),
        Err(_) => {
            tracing::warn!(
                ?timeout,
                "the polling thread has not stopped since the run failed (are the brokers \
                 reachable?); returning, it goes on stopping in the background"
            );
            Err(failure().unwrap_or_else(|| polling_thread_error("it did not stop in time")))
        }
    }
}

fn polling_thread_error(reason: &str) -> Error {
    Error::Task {
        task: "the polling thread".into(),
        source: reason.into(),
    }
}

/// How long a failed run waits for its polling thread to commit and leave
/// the group, and any run for its consumer to close (Kafka's Java consumer's
/// default close timeout).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits (up to [`PUBLISHER_STOP_TIMEOUT`]) for stopped publishers to finish
/// what they have in flight.
async fn finish_publishers(mut publishers: tokio::task::JoinSet<Result<()>>) -> Result<()> {
    let finishing = async {
        while let Some(joined) = publishers.join_next().await {
            if let Ok(Err(error)) = joined {
                return Err(error);
            }
        }
        Ok(())
    };
    tokio::time::timeout(PUBLISHER_STOP_TIMEOUT, finishing)
        .await
        .unwrap_or(Ok(()))
}

/// How long a stopping application waits for its publishers.
const PUBLISHER_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// An input topic's value format is usable.
fn check_input_topic(topic: &Topic) -> Result<()> {
    if topic.value_format.is_none() {
        return Err(Error::Config(format!(
            "input topic '{}' is JSON without a schema: declare one with Topic::schema(...) \
             (or infer one with flumen::format::Format::json_inferred(samples))",
            topic.name
        )));
    }
    decoder_of(topic).map(drop)
}

pub(crate) fn decoder_of(topic: &Topic) -> Result<RecordDecoder> {
    let value = topic
        .value_format
        .clone()
        .ok_or_else(|| Error::Config(format!("topic '{}' has no value format", topic.name)))?;
    RecordDecoder::new(
        topic.key_format.clone(),
        value,
        topic.timestamp.clone(),
        topic.key_required,
        topic.max_record_bytes,
    )
    .map_err(|e| Error::Config(format!("input topic '{}': {e}", topic.name)))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received; finishing in-flight batches");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect 10 of #16: secret properties never show in `Debug`.
    #[test]
    fn debug_output_hides_secret_properties() {
        let builder = Application::builder()
            .brokers("b:9092")
            .config("sasl.password", "hunter2")
            .consumer_config("ssl.key.password", "s3cret")
            .config("security.protocol", "SASL_SSL");
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("SASL_SSL"), "{shown}");
    }

    fn failure() -> Option<Error> {
        Some(Error::Plan("the failure".into()))
    }

    /// A failed run whose polling thread does not stop (librdkafka waiting
    /// on unreachable brokers) still returns its failure, after the timeout.
    #[tokio::test]
    async fn a_failed_run_returns_its_failure_when_the_polling_thread_does_not_stop() {
        let (_never_sent, mut done) = tokio::sync::oneshot::channel::<Result<()>>();
        let timeout = Duration::from_millis(50);
        let started = tokio::time::Instant::now();
        let result = result_within(timeout, &mut done, failure).await;
        assert!(
            matches!(&result, Err(Error::Plan(m)) if m == "the failure"),
            "{result:?}"
        );
        assert!(started.elapsed() >= timeout);
    }

    /// A polling thread that stops in time gives its own result.
    #[tokio::test]
    async fn a_polling_thread_that_stops_in_time_gives_its_own_result() {
        let (sent, mut done) = tokio::sync::oneshot::channel::<Result<()>>();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = sent.send(Err(Error::Plan("from the thread".into())));
        });
        let result = result_within(CLOSE_TIMEOUT, &mut done, failure).await;
        assert!(
            matches!(&result, Err(Error::Plan(m)) if m == "from the thread"),
            "{result:?}"
        );
    }
}
