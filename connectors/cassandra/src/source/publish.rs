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
const MAX_RECORDS_PER_COMMIT: usize = 50_000;

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

    /// Publishes pages as they come until the channel closes.
    pub(crate) async fn pages(
        &self,
        pass: &Pass,
        pages: &mut mpsc::Receiver<Page>,
    ) -> Result<(), CassandraError> {
        while let Some(first) = pages.recv().await {
            let mut group = vec![first];
            let mut records: usize = group[0].records.len();
            while records < MAX_RECORDS_PER_COMMIT {
                match pages.try_recv() {
                    Ok(page) => {
                        records += page.records.len();
                        group.push(page);
                    }
                    Err(_) => break,
                }
            }
            self.commit(pass, group).await?;
        }
        Ok(())
    }

    /// Publishes a group of pages and the positions they reach, atomically
    /// with exactly-once.
    async fn commit(&self, pass: &Pass, group: Vec<Page>) -> Result<(), CassandraError> {
        let mut positions: BTreeMap<usize, RangeProgress> = BTreeMap::new();
        let headers = headers_with(
            None,
            &[
                ("flumen.source.table", &self.table),
                ("flumen.source.mode", pass.kind.as_str()),
            ],
        );
        self.begin()?;
        let rows = DeliveryBatch::new();
        let mut count = 0u64;
        for page in group {
            for record in &page.records {
                let out = OutRecord {
                    topic: &self.topic,
                    key: Some(&record.key),
                    value: Some(&record.value),
                    timestamp_ms: Some(record.timestamp_ms),
                    partition: None,
                };
                self.producer
                    .send(out, Some(headers.clone()), &rows)
                    .await
                    .map_err(|e| self.failed(e))?;
                count += 1;
            }
            positions.insert(page.range, page.progress);
        }
        if !self.exactly_once {
            rows.wait().await.map_err(|e| self.failed(e))?;
        }
        let done = positions.values().filter(|p| p.done).count();
        let marks: Vec<(String, Vec<u8>)> = positions
            .iter()
            .map(|(range, p)| (range_key(*range), serde_json::to_vec(p).unwrap_or_default()))
            .collect();
        self.write_progress(&marks).await?;
        self.end().await?;
        self.stats.published(count, done);
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
