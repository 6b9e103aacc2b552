//! `CassandraSink`: its settings, and opening it (connect, check the table, prepare).

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use flumen::sink::{Sink, SinkWriter};
use flumen::BoxError;
use futures::future::BoxFuture;
use futures::FutureExt;

pub use scylla::statement::Consistency;

use crate::connection::Connection;
use crate::error::CassandraError;
use crate::schema::{check_columns, create_table_cql, read_columns, Mapping};
use crate::timestamp::WriteTimestamp;
use crate::writer::{CassandraWriter, WriterSettings};

/// How long written rows live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ttl {
    /// Forever (the table's default TTL applies).
    None,
    /// This long.
    Fixed(Duration),
    /// Seconds from this integer column of the frame (null or 0: forever).
    Column(String),
}

/// Upserts every row of a frame into a Cassandra / ScyllaDB table. See the
/// crate documentation for what it guarantees. `Debug` hides the password.
#[derive(Clone)]
pub struct CassandraSink {
    keyspace: String,
    table: String,
    connection: Connection,
    renames: Vec<(String, String)>,
    ttl: Ttl,
    create: Option<(Vec<String>, Vec<String>)>,
    max_in_flight: usize,
    retries: usize,
    write_nulls: bool,
    dead_letter_topic: Option<String>,
    max_batch_bytes: Option<usize>,
    write_timestamp: WriteTimestamp,
}

impl std::fmt::Debug for CassandraSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraSink")
            .field("table", &self.qualified())
            .field("connection", &self.connection)
            .field("renames", &self.renames)
            .field("ttl", &self.ttl)
            .field("create", &self.create)
            .field("max_in_flight", &self.max_in_flight)
            .field("retries", &self.retries)
            .field("write_nulls", &self.write_nulls)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("write_timestamp", &self.write_timestamp)
            .finish()
    }
}

impl CassandraSink {
    crate::connection::connection_builder_methods!();

    /// A sink into `keyspace.table`, on `127.0.0.1:9042` unless [`nodes`](Self::nodes) says otherwise.
    pub fn new(table: &str) -> Self {
        let (keyspace, table) = match table.split_once('.') {
            Some((k, t)) => (k.to_string(), t.to_string()),
            None => (String::new(), table.to_string()),
        };
        CassandraSink {
            keyspace,
            table,
            connection: Connection::new(Duration::from_secs(12)),
            renames: Vec::new(),
            ttl: Ttl::None,
            create: None,
            max_in_flight: 256,
            retries: 8,
            write_nulls: false,
            dead_letter_topic: None,
            max_batch_bytes: None,
            write_timestamp: WriteTimestamp::Now,
        }
    }

    /// Write consistency (default `LOCAL_QUORUM`).
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.connection.consistency = consistency;
        self
    }

    /// Writes frame column `frame` into table column `table` (columns map by
    /// name otherwise). Metadata columns (`_key`, ...) are never written.
    pub fn column(mut self, frame: impl Into<String>, table: impl Into<String>) -> Self {
        self.renames.push((frame.into(), table.into()));
        self
    }

    /// How long rows live (default: forever).
    pub fn ttl(mut self, ttl: Ttl) -> Self {
        self.ttl = ttl;
        self
    }

    /// Creates the table at start when it does not exist, with these partition
    /// key and clustering columns (table column names) and a column per frame
    /// column, typed from the frame (`Int64` columns named like `*_start` /
    /// `*_end` / `ts` / `*time*` become `timestamp`). The keyspace must exist.
    pub fn create_table_if_missing<S: Into<String>>(
        mut self,
        partition_key: impl IntoIterator<Item = S>,
        clustering: impl IntoIterator<Item = S>,
    ) -> Self {
        self.create = Some((
            partition_key.into_iter().map(Into::into).collect(),
            clustering.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// Most writes in flight at once (default 256); when reached, the
    /// partition that writes waits (and stops pulling from Kafka).
    pub fn max_in_flight(mut self, writes: usize) -> Self {
        self.max_in_flight = writes.max(1);
        self
    }

    /// Retries of a write after a timeout, overload or unavailability (default
    /// 8, exponential backoff from 50 ms with jitter, up to 5 s apart). After
    /// the last one the application stops with the error; nothing of the batch
    /// is committed, so a restart writes it again.
    pub fn retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// Rows that finally cannot be written (after the retries, or refused
    /// outright, e.g. invalid) go to this Kafka topic as JSON objects of the
    /// frame's columns, with headers `flumen.error.kind` (`sink`),
    /// `flumen.error.reason`, `flumen.sink` and
    /// `flumen.source.{topic,partition,offsets}`, instead of stopping the
    /// application. Their batch commits once the topic acknowledged them. The
    /// topic must exist.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Groups the rows of a micro-batch that share a partition key into
    /// UNLOGGED batches of at most `max_bytes` (estimated; a larger row is sent
    /// alone). Off by default: one request per row. Fewer, larger requests help
    /// when many rows land in one partition (e.g. hopping windows of a device).
    pub fn batch_by_partition(mut self, max_bytes: usize) -> Self {
        self.max_batch_bytes = Some(max_bytes.max(1));
        self
    }

    /// How each row's write timestamp (`USING TIMESTAMP`) is chosen, which
    /// decides which of two writes of a row wins; see [`WriteTimestamp`]
    /// (default: the wall clock, so reprocessing corrects existing rows).
    pub fn write_timestamp(mut self, mode: WriteTimestamp) -> Self {
        self.write_timestamp = mode;
        self
    }

    /// Writes nulls as nulls (tombstones) instead of leaving the column unset.
    pub fn write_nulls(mut self, yes: bool) -> Self {
        self.write_nulls = yes;
        self
    }

    fn qualified(&self) -> String {
        format!("{}.{}", self.keyspace, self.table)
    }

    async fn open_writer(&self, schema: SchemaRef) -> Result<CassandraWriter, CassandraError> {
        if self.keyspace.is_empty() || self.table.is_empty() {
            return Err(CassandraError::Config(format!(
                "the table must be written as keyspace.table, not '{}'",
                self.table
            )));
        }
        let table = self.qualified();
        let mapping = Mapping::new(&schema, &self.renames, &self.ttl, &table)?;
        let session = self.connection.connect().await?;
        if let Some((pk, ck)) = &self.create {
            let ddl = create_table_cql(&self.keyspace, &self.table, &mapping, pk, ck)?;
            session
                .query_unpaged(ddl, &[])
                .await
                .map_err(|e| CassandraError::Request {
                    table: table.clone(),
                    operation: "CREATE TABLE IF NOT EXISTS".into(),
                    reason: e.to_string(),
                })?;
        }
        let columns = read_columns(&session, &self.keyspace, &self.table).await?;
        let bound = check_columns(&mapping, &columns, &table)?;
        let settings = WriterSettings {
            table,
            max_in_flight: self.max_in_flight,
            retries: self.retries,
            write_nulls: self.write_nulls,
            ttl: self.ttl.clone(),
            consistency: self.connection.consistency,
            max_batch_bytes: self.max_batch_bytes,
            write_timestamp: self.write_timestamp,
        };
        CassandraWriter::new(session, &self.keyspace, &self.table, bound, settings).await
    }
}

impl Sink for CassandraSink {
    fn name(&self) -> String {
        format!("cassandra table '{}'", self.qualified())
    }

    fn open(&self, schema: SchemaRef) -> BoxFuture<'_, Result<Arc<dyn SinkWriter>, BoxError>> {
        async move {
            let writer = self.open_writer(schema).await?;
            Ok(Arc::new(writer) as Arc<dyn SinkWriter>)
        }
        .boxed()
    }

    fn dead_letter_topic(&self) -> Option<String> {
        self.dead_letter_topic.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Tls;

    /// Defect 10 of #16: neither the password nor in-memory key bytes show
    /// in `Debug`.
    #[test]
    fn debug_output_hides_the_password_and_keys() {
        let sink = CassandraSink::new("ks.t")
            .credentials("flumen", "hunter2")
            .tls(Tls::new().client_identity_pem(b"CERT".to_vec(), b"PRIVATE-KEY-BYTES".to_vec()));
        let shown = format!("{sink:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            !shown.contains("PRIVATE-KEY-BYTES") && !shown.contains("80, 82"),
            "{shown}"
        );
        assert!(shown.contains("flumen") && shown.contains("***"), "{shown}");
    }
}
