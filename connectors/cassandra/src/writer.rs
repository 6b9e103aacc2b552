//! Writing micro-batches: one idempotent prepared upsert per row, a bounded
//! number in flight, retries with backoff, a ticket settled per row.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use backon::Retryable;
use flumen::sink::{row_as_json, Acks, SinkWriter, SourcePosition, WriteTicket};
use flumen::BoxError;
use futures::future::BoxFuture;
use futures::FutureExt;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use scylla::value::{CqlValue, MaybeUnset};
use tokio::sync::Semaphore;

use crate::convert::{column_values, Bind};
use crate::error::CassandraError;
use crate::schema::{qualified_ident, quote_ident, Bound};
use crate::sink::Ttl;
use crate::timestamp::WriteTimestamp;

/// How the writer behaves.
#[derive(Debug, Clone)]
pub(crate) struct WriterSettings {
    pub(crate) table: String,
    pub(crate) max_in_flight: usize,
    pub(crate) retries: usize,
    pub(crate) write_nulls: bool,
    pub(crate) ttl: Ttl,
    pub(crate) consistency: Consistency,
    pub(crate) max_batch_bytes: Option<usize>,
    pub(crate) write_timestamp: WriteTimestamp,
}

/// What every write task needs, shared: the session, the prepared upsert
/// and the table's metric handles (registered once, not per row).
struct Upsert {
    session: Session,
    insert: PreparedStatement,
    table: String,
    retries: usize,
    consistency: Consistency,
    in_flight: metrics::Gauge,
    written: metrics::Counter,
    requests: metrics::Counter,
    retried: metrics::Counter,
    failed: metrics::Counter,
    latency: metrics::Histogram,
}

/// One request: a single row's upsert, or the upserts of rows that share a
/// partition key in one UNLOGGED batch.
struct Request {
    rows: Vec<usize>,
    values: Vec<Vec<Bind>>,
}

impl Upsert {
    /// Writes one request, retrying what can pass; settles nothing.
    async fn write(&self, request: &Request) -> Result<(), Arc<WriteFailed>> {
        let started = Instant::now();
        let backoff = crate::retry::backoff(self.retries);
        let batch = (request.values.len() > 1).then(|| {
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in &request.values {
                batch.append_statement(self.insert.clone());
            }
            batch.set_is_idempotent(true);
            batch.set_consistency(self.consistency);
            batch
        });
        let result = (|| async {
            match &batch {
                Some(batch) => self.session.batch(batch, &request.values).await.map(drop),
                None => self
                    .session
                    .execute_unpaged(&self.insert, &request.values[0])
                    .await
                    .map(drop),
            }
        })
        .retry(backoff)
        .when(crate::retry::retryable)
        .notify(|error, after| {
            self.retried.increment(1);
            tracing::warn!(table = %self.table, %error, ?after, "retrying a write");
        })
        .await;
        self.latency.record(started.elapsed().as_secs_f64());
        let rows = request.rows.len() as u64;
        match result {
            Ok(()) => {
                self.written.increment(rows);
                self.requests.increment(1);
                Ok(())
            }
            Err(source) => {
                self.failed.increment(rows);
                Err(Arc::new(WriteFailed {
                    table: self.table.clone(),
                    rows: request.rows.len(),
                    retries: self.retries,
                    source,
                }))
            }
        }
    }
}

/// A request's rows could not be written, even after retries.
#[derive(Debug, thiserror::Error)]
#[error(
    "table {table}: {} could not be written (after up to {retries} retries): {source}",
    if *rows == 1 { "a row".to_string() } else { format!("a batch of {rows} rows") }
)]
pub(crate) struct WriteFailed {
    table: String,
    rows: usize,
    retries: usize,
    #[source]
    source: scylla::errors::ExecutionError,
}

/// Splits the rows (in order) into requests: one per row, or with
/// `max_batch_bytes`, the rows of each partition key in batches of at most
/// that many (estimated) bytes.
fn requests(
    rows: Vec<Vec<Bind>>,
    partition_key: &[usize],
    max_batch_bytes: Option<usize>,
) -> Vec<Request> {
    let Some(limit) = max_batch_bytes else {
        return rows
            .into_iter()
            .enumerate()
            .map(|(row, values)| Request {
                rows: vec![row],
                values: vec![values],
            })
            .collect();
    };
    // Open request (index into `out`, its bytes) per partition key.
    let mut open: HashMap<String, (usize, usize)> = HashMap::new();
    let mut out: Vec<Request> = Vec::new();
    for (row, values) in rows.into_iter().enumerate() {
        let key = format!(
            "{:?}",
            partition_key
                .iter()
                .map(|&i| &values[i])
                .collect::<Vec<_>>()
        );
        let bytes: usize = values.iter().map(bind_bytes).sum();
        match open.get_mut(&key) {
            Some((at, size)) if *size + bytes <= limit => {
                *size += bytes;
                out[*at].rows.push(row);
                out[*at].values.push(values);
            }
            _ => {
                open.insert(key, (out.len(), bytes));
                out.push(Request {
                    rows: vec![row],
                    values: vec![values],
                });
            }
        }
    }
    out
}

/// About how many bytes a bound value takes in a request.
fn bind_bytes(value: &Bind) -> usize {
    4 + match value {
        MaybeUnset::Set(Some(CqlValue::Text(s) | CqlValue::Ascii(s))) => s.len(),
        MaybeUnset::Set(Some(CqlValue::Blob(b))) => b.len(),
        MaybeUnset::Set(Some(_)) => 16,
        _ => 0,
    }
}

/// The opened sink.
pub(crate) struct CassandraWriter {
    upsert: Arc<Upsert>,
    columns: Vec<Bound>,
    /// Indexes into a row's values of the partition key columns.
    partition_key: Vec<usize>,
    ttl_index: Option<usize>,
    settings: WriterSettings,
    permits: Arc<Semaphore>,
}

impl CassandraWriter {
    pub(crate) async fn new(
        session: Session,
        keyspace: &str,
        table: &str,
        (columns, ttl_index): (Vec<Bound>, Option<usize>),
        settings: WriterSettings,
    ) -> Result<Self, CassandraError> {
        let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.column)).collect();
        let markers = vec!["?"; columns.len()].join(", ");
        let ttl = match settings.ttl {
            Ttl::None => "",
            _ => " AND TTL ?",
        };
        let cql = format!(
            "INSERT INTO {} ({}) VALUES ({markers}) USING TIMESTAMP ?{ttl}",
            qualified_ident(keyspace, table),
            names.join(", ")
        );
        let mut insert = session
            .prepare(cql)
            .await
            .map_err(|e| CassandraError::Request {
                table: settings.table.clone(),
                operation: "preparing the upsert".into(),
                reason: e.to_string(),
            })?;
        // Upserts with explicit write timestamps: repeating one changes nothing.
        insert.set_is_idempotent(true);
        insert.set_consistency(settings.consistency);
        let table = settings.table.clone();
        let upsert = Upsert {
            session,
            insert,
            retries: settings.retries,
            consistency: settings.consistency,
            in_flight: metrics::gauge!("flumen_cassandra_in_flight", "table" => table.clone()),
            written: metrics::counter!("flumen_cassandra_rows_written_total", "table" => table.clone()),
            requests: metrics::counter!("flumen_cassandra_requests_total", "table" => table.clone()),
            retried: metrics::counter!("flumen_cassandra_retries_total", "table" => table.clone()),
            failed: metrics::counter!("flumen_cassandra_rows_failed_total", "table" => table.clone()),
            latency: metrics::histogram!("flumen_cassandra_write_seconds", "table" => table.clone()),
            table,
        };
        let partition_key = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.partition_key)
            .map(|(i, _)| i)
            .collect();
        Ok(CassandraWriter {
            upsert: Arc::new(upsert),
            columns,
            partition_key,
            ttl_index,
            permits: Arc::new(Semaphore::new(settings.max_in_flight)),
            settings,
        })
    }

    /// Seconds to live of each row, when the sink has a TTL.
    fn ttls(&self, batch: &RecordBatch) -> Result<Option<Vec<i32>>, CassandraError> {
        let n = batch.num_rows();
        Ok(match (&self.settings.ttl, self.ttl_index) {
            (Ttl::None, _) => None,
            (Ttl::Fixed(d), _) => Some(vec![i32::try_from(d.as_secs()).unwrap_or(i32::MAX); n]),
            (Ttl::Column(name), Some(i)) => {
                let secs =
                    cast(batch.column(i), &DataType::Int64).map_err(|e| CassandraError::Value {
                        table: self.settings.table.clone(),
                        column: name.clone(),
                        reason: e.to_string(),
                    })?;
                let secs = secs.as_primitive::<Int64Type>();
                Some(
                    (0..n)
                        .map(|r| {
                            if secs.is_null(r) {
                                0
                            } else {
                                i32::try_from(secs.value(r).max(0)).unwrap_or(i32::MAX)
                            }
                        })
                        .collect(),
                )
            }
            (Ttl::Column(_), None) => None,
        })
    }

    async fn write_batch(
        &self,
        batch: RecordBatch,
        position: SourcePosition<'_>,
        acks: Acks<'_>,
    ) -> Result<(), CassandraError> {
        let mut columns = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            let values = column_values(
                batch.column(c.frame_index),
                &c.cql,
                self.settings.write_nulls,
            )
            .map_err(|reason| CassandraError::Value {
                table: self.settings.table.clone(),
                column: c.column.clone(),
                reason,
            })?;
            columns.push(values.into_iter());
        }
        let ttls = self.ttls(&batch)?;
        let timestamps =
            self.settings
                .write_timestamp
                .of(&batch, &position, &self.settings.table)?;
        let rows: Vec<Vec<Bind>> = (0..batch.num_rows())
            .map(|row| {
                let mut values: Vec<Bind> = columns
                    .iter_mut()
                    .map(|c| c.next().unwrap_or(MaybeUnset::Unset))
                    .collect();
                values.push(MaybeUnset::Set(Some(CqlValue::BigInt(timestamps[row]))));
                if let Some(ttls) = &ttls {
                    values.push(MaybeUnset::Set(Some(CqlValue::Int(ttls[row]))));
                }
                values
            })
            .collect();
        let frame = Arc::new(batch);
        for request in requests(rows, &self.partition_key, self.settings.max_batch_bytes) {
            let permit = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(|e| CassandraError::Config(e.to_string()))?;
            let tickets: Vec<WriteTicket> = request.rows.iter().map(|_| acks.ticket()).collect();
            let upsert = Arc::clone(&self.upsert);
            let frame = Arc::clone(&frame);
            upsert.in_flight.increment(1.0);
            tokio::spawn(async move {
                let result = upsert.write(&request).await;
                drop(permit);
                upsert.in_flight.decrement(1.0);
                settle(tickets, result, &frame, &request.rows).await;
            });
        }
        Ok(())
    }
}

/// Settles the tickets of a request's rows: done, or each failed row to the
/// sink's dead-letter policy (the row as JSON).
async fn settle(
    tickets: Vec<WriteTicket>,
    result: Result<(), Arc<WriteFailed>>,
    frame: &RecordBatch,
    rows: &[usize],
) {
    for (ticket, &row) in tickets.into_iter().zip(rows) {
        match &result {
            Ok(()) => ticket.done(Ok(())),
            Err(failed) => match row_as_json(frame, row) {
                Ok(json) => {
                    ticket
                        .dead_letter(None, json, Box::new(Arc::clone(failed)))
                        .await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a row that failed to write cannot be shown");
                    ticket.done(Err(Box::new(Arc::clone(failed))));
                }
            },
        }
    }
}

impl SinkWriter for CassandraWriter {
    fn write<'a>(
        &'a self,
        batch: RecordBatch,
        position: SourcePosition<'a>,
        acks: Acks<'a>,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            self.write_batch(batch, position, acks).await?;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str, n: i64) -> Vec<Bind> {
        vec![
            MaybeUnset::Set(Some(CqlValue::Text(device.into()))),
            MaybeUnset::Set(Some(CqlValue::BigInt(n))),
        ]
    }

    fn rows_of(requests: &[Request]) -> Vec<Vec<usize>> {
        requests.iter().map(|r| r.rows.clone()).collect()
    }

    #[test]
    fn without_a_limit_every_row_is_a_request() {
        let rows = vec![row("a", 1), row("a", 2), row("b", 3)];
        assert_eq!(rows_of(&requests(rows, &[0], None)), [[0], [1], [2]]);
    }

    #[test]
    fn rows_of_a_partition_key_share_batches_under_the_byte_limit() {
        // Each row is (4 + 1) + (4 + 16) = 25 bytes: two fit in 50.
        let rows = vec![
            row("a", 1),
            row("b", 2),
            row("a", 3),
            row("a", 4),
            row("b", 5),
        ];
        let out = requests(rows, &[0], Some(50));
        assert_eq!(rows_of(&out), vec![vec![0, 2], vec![1, 4], vec![3]]);
        for request in &out {
            let size: usize = request.values.iter().flatten().map(bind_bytes).sum();
            assert!(size <= 50 || request.rows.len() == 1, "{size}");
        }
    }

    #[test]
    fn a_row_larger_than_the_limit_goes_alone() {
        let rows = vec![row("a", 1), row("a", 2)];
        assert_eq!(rows_of(&requests(rows, &[0], Some(10))), [[0], [1]]);
    }
}
