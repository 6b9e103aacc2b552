//! Publishing pages to Kafka with the progress they reach: with exactly-once,
//! one transaction carries a group of pages and the range positions after
//! them; with at-least-once, the positions are written once the pages are
//! acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flumen_kafka::{
    headers_with, DeliveryBatch, KafkaConfig, OutRecord, Producer, HEARTBEAT_HEADER,
};
use tokio::sync::mpsc;

use super::progress::{range_key, Pass, PassKind, RangeProgress, PASS_KEY};
use super::scan::Page;
use super::stats::SourceStats;
use crate::error::CassandraError;

/// Most records in one transaction (pages are grouped up to this).
const MAX_RECORDS_PER_COMMIT: usize = 200_000;

/// Longest a group stays open for more pages: the latency a
/// `read_committed` reader sees on top of the scan's.
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);

/// The pages of one transaction (exactly-once) or acknowledgement wait.
struct Group {
    headers: flumen_kafka::rdkafka::message::OwnedHeaders,
    rows: Arc<DeliveryBatch>,
    positions: BTreeMap<usize, RangeProgress>,
    count: usize,
}

/// How long a transaction may take to commit or abort.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how records go.
pub(crate) struct Publisher {
    pub(crate) producer: Arc<Producer>,
    pub(crate) exactly_once: bool,
    /// Partitions that get a heartbeat at each capture pass (0: none).
    pub(crate) heartbeat_partitions: i32,
    pub(crate) topic: String,
    pub(crate) progress_topic: String,
    pub(crate) table: String,
    pub(crate) stats: Arc<SourceStats>,
}

impl Publisher {
    /// A transactional producer (exactly-once) or an idempotent one.
    pub(crate) async fn open(
        config: &KafkaConfig,
        transactional_id: Option<String>,
        table: &str,
    ) -> Result<Producer, CassandraError> {
        let config = config.clone();
        let opened = tokio::task::spawn_blocking(move || match transactional_id {
            Some(id) => Producer::transactional(&config, &id, TRANSACTION_TIMEOUT),
            None => Producer::new(&config),
        })
        .await;
        let failed = |source| CassandraError::publish(table.to_string(), source);
        match opened {
            Ok(result) => result.map_err(failed),
            Err(e) => Err(CassandraError::Config(format!("opening the producer: {e}"))),
        }
    }

    fn failed(&self, source: flumen_kafka::KafkaError) -> CassandraError {
        CassandraError::publish(self.table.clone(), source)
    }

    /// Publishes pages as they come until the channel closes: a group of
    /// pages per transaction (exactly-once) or per acknowledgement wait,
    /// closed after [`MAX_RECORDS_PER_COMMIT`] records, after
    /// [`COMMIT_INTERVAL`], or when no more pages come.
    pub(crate) async fn pages(
        &self,
        pass: &Pass,
        pages: &mut mpsc::Receiver<Page>,
    ) -> Result<(), CassandraError> {
        while let Some(first) = pages.recv().await {
            let deadline = tokio::time::Instant::now() + COMMIT_INTERVAL;
            let mut group = self.begin_group(pass)?;
            self.add(&mut group, first).await?;
            while group.count < MAX_RECORDS_PER_COMMIT {
                match tokio::time::timeout_at(deadline, pages.recv()).await {
                    Ok(Some(page)) => self.add(&mut group, page).await?,
                    Ok(None) | Err(_) => break,
                }
            }
            self.finish_group(group).await?;
        }
        Ok(())
    }

    /// Opens a group (a transaction with exactly-once).
    fn begin_group(&self, pass: &Pass) -> Result<Group, CassandraError> {
        self.begin()?;
        Ok(Group {
            headers: headers_with(
                None,
                &[
                    ("flumen.source.table", &self.table),
                    ("flumen.source.mode", pass.kind.as_str()),
                ],
            ),
            rows: DeliveryBatch::new(),
            positions: BTreeMap::new(),
            count: 0,
        })
    }

    /// Sends a page's records and keeps the position it reaches.
    async fn add(&self, group: &mut Group, page: Page) -> Result<(), CassandraError> {
        for record in &page.records {
            let out = OutRecord {
                topic: &self.topic,
                key: Some(&record.key),
                value: Some(&record.value),
                timestamp_ms: Some(record.timestamp_ms),
                partition: None,
            };
            self.producer
                .send(out, Some(group.headers.clone()), &group.rows)
                .await
                .map_err(|e| self.failed(e))?;
        }
        group.count += page.records.len();
        group.positions.insert(page.range, page.progress);
        Ok(())
    }

    /// Writes the positions the group reached and commits it: atomically
    /// with its records (exactly-once) or after their acknowledgements.
    async fn finish_group(&self, group: Group) -> Result<(), CassandraError> {
        if !self.exactly_once {
            group.rows.wait().await.map_err(|e| self.failed(e))?;
        }
        let done = group.positions.values().filter(|p| p.done).count();
        let marks: Vec<(String, Vec<u8>)> = group
            .positions
            .iter()
            .map(|(range, p)| (range_key(*range), serde_json::to_vec(p).unwrap_or_default()))
            .collect();
        self.write_progress(&marks).await?;
        self.end().await?;
        self.stats.published(group.count as u64, done);
        Ok(())
    }

    /// Records the start of `pass` (in a transaction of its own with
    /// exactly-once), with the heartbeats of a capture pass.
    pub(crate) async fn start_pass(&self, pass: &Pass) -> Result<(), CassandraError> {
        let value = serde_json::to_vec(pass).unwrap_or_default();
        self.begin()?;
        if pass.kind != PassKind::Snapshot && pass.low_us > i64::MIN {
            self.heartbeats(pass.low_us.div_euclid(1000)).await?;
        }
        self.write_progress(&[(PASS_KEY.to_string(), value)])
            .await?;
        self.end().await
    }

    /// A heartbeat at `at_ms` in every partition: every write before it was published.
    async fn heartbeats(&self, at_ms: i64) -> Result<(), CassandraError> {
        let headers = headers_with(
            None,
            &[(HEARTBEAT_HEADER, ""), ("flumen.source.table", &self.table)],
        );
        let sent = DeliveryBatch::new();
        for partition in 0..self.heartbeat_partitions {
            let out = OutRecord {
                topic: &self.topic,
                key: None,
                value: None,
                timestamp_ms: Some(at_ms),
                partition: Some(partition),
            };
            self.producer
                .send(out, Some(headers.clone()), &sent)
                .await
                .map_err(|e| self.failed(e))?;
        }
        if !self.exactly_once {
            sent.wait().await.map_err(|e| self.failed(e))?;
        }
        Ok(())
    }

    async fn write_progress(&self, marks: &[(String, Vec<u8>)]) -> Result<(), CassandraError> {
        let batch = DeliveryBatch::new();
        for (key, value) in marks {
            let out = OutRecord {
                topic: &self.progress_topic,
                key: Some(key.as_bytes()),
                value: Some(value),
                timestamp_ms: None,
                partition: Some(0),
            };
            self.producer
                .send(out, None, &batch)
                .await
                .map_err(|e| self.failed(e))?;
        }
        if self.exactly_once {
            Ok(())
        } else {
            batch.wait().await.map_err(|e| self.failed(e))
        }
    }

    fn begin(&self) -> Result<(), CassandraError> {
        if self.exactly_once {
            self.producer
                .begin_transaction()
                .map_err(|e| self.failed(e))?;
        }
        Ok(())
    }

    /// Commits the transaction (exactly-once); on failure aborts it, so
    /// nothing of it is ever visible, and returns the error.
    async fn end(&self) -> Result<(), CassandraError> {
        if !self.exactly_once {
            return Ok(());
        }
        let producer = Arc::clone(&self.producer);
        let committed = tokio::task::spawn_blocking(move || {
            producer
                .commit_transaction(TRANSACTION_TIMEOUT)
                .inspect_err(|_| {
                    if let Err(error) = producer.abort_transaction(TRANSACTION_TIMEOUT) {
                        tracing::warn!(%error, "aborting the source's transaction failed");
                    }
                })
        })
        .await;
        match committed {
            Ok(result) => result.map_err(|e| self.failed(e)),
            Err(e) => Err(CassandraError::Config(format!(
                "committing the transaction: {e}"
            ))),
        }
    }
}
