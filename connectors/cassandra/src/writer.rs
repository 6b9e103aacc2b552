//! Writing micro-batches: one idempotent prepared upsert per row, a bounded
//! number in flight, retries with backoff, a ticket settled per row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use backon::{ExponentialBuilder, Retryable};
use flumen::sink::{Acks, SinkWriter, SourcePosition};
use flumen::BoxError;
use futures::future::BoxFuture;
use futures::FutureExt;
use scylla::client::session::Session;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use scylla::value::{CqlValue, MaybeUnset};
use tokio::sync::Semaphore;

use crate::convert::{column_values, Bind};
use crate::error::CassandraError;
use crate::schema::Bound;
use crate::sink::Ttl;

/// How the writer behaves.
#[derive(Debug, Clone)]
pub(crate) struct WriterSettings {
    pub(crate) table: String,
    pub(crate) max_in_flight: usize,
    pub(crate) retries: usize,
    pub(crate) write_nulls: bool,
    pub(crate) ttl: Ttl,
    pub(crate) consistency: Consistency,
}

/// What every row's write task needs, shared: the session, the prepared
/// upsert and the table's metric handles (registered once, not per row).
struct Upsert {
    session: Session,
    insert: PreparedStatement,
    table: String,
    retries: usize,
    in_flight: metrics::Gauge,
    written: metrics::Counter,
    retried: metrics::Counter,
    failed: metrics::Counter,
    latency: metrics::Histogram,
}

impl Upsert {
    /// Writes one row, retrying what can pass; settles nothing.
    async fn write(&self, values: Vec<Bind>) -> Result<(), String> {
        let started = Instant::now();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(self.retries)
            .with_jitter();
        let result = (|| async { self.session.execute_unpaged(&self.insert, &values).await })
            .retry(backoff)
            .when(retryable)
            .notify(|error, after| {
                self.retried.increment(1);
                tracing::warn!(table = %self.table, %error, ?after, "retrying a write");
            })
            .await;
        self.latency.record(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => {
                self.written.increment(1);
                Ok(())
            }
            Err(error) => {
                self.failed.increment(1);
                Err(format!(
                    "a row could not be written (after up to {} retries): {error}",
                    self.retries
                ))
            }
        }
    }
}

/// The opened sink.
pub(crate) struct CassandraWriter {
    upsert: Arc<Upsert>,
    columns: Vec<Bound>,
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
        let names: Vec<String> = columns
            .iter()
            .map(|c| format!("\"{}\"", c.column))
            .collect();
        let markers = vec!["?"; columns.len()].join(", ");
        let ttl = match settings.ttl {
            Ttl::None => "",
            _ => " AND TTL ?",
        };
        let cql = format!(
            "INSERT INTO {keyspace}.{table} ({}) VALUES ({markers}) USING TIMESTAMP ?{ttl}",
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
            in_flight: metrics::gauge!("flumen_cassandra_in_flight", "table" => table.clone()),
            written: metrics::counter!("flumen_cassandra_rows_written_total", "table" => table.clone()),
            retried: metrics::counter!("flumen_cassandra_retries_total", "table" => table.clone()),
            failed: metrics::counter!("flumen_cassandra_rows_failed_total", "table" => table.clone()),
            latency: metrics::histogram!("flumen_cassandra_write_seconds", "table" => table.clone()),
            table,
        };
        Ok(CassandraWriter {
            upsert: Arc::new(upsert),
            columns,
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
        // The write timestamp grows with the source position: a replay of an
        // older update (after a restart) never overwrites a newer one.
        let timestamp = position.last_offset;
        for row in 0..batch.num_rows() {
            let permit = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(|e| CassandraError::Config(e.to_string()))?;
            let mut values: Vec<Bind> = columns
                .iter_mut()
                .map(|c| c.next().unwrap_or(MaybeUnset::Unset))
                .collect();
            values.push(MaybeUnset::Set(Some(CqlValue::BigInt(timestamp))));
            if let Some(ttls) = &ttls {
                values.push(MaybeUnset::Set(Some(CqlValue::Int(ttls[row]))));
            }
            let ticket = acks.ticket();
            let upsert = Arc::clone(&self.upsert);
            upsert.in_flight.increment(1.0);
            tokio::spawn(async move {
                let result = upsert.write(values).await;
                drop(permit);
                upsert.in_flight.decrement(1.0);
                ticket.done(result);
            });
        }
        Ok(())
    }
}

/// Whether a failed write may succeed when tried again.
fn retryable(error: &ExecutionError) -> bool {
    match error {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::Overloaded
                | DbError::WriteTimeout { .. }
                | DbError::ReadTimeout { .. }
                | DbError::Unavailable { .. }
                | DbError::IsBootstrapping
                | DbError::ServerError
        ),
        ExecutionError::LastAttemptError(
            RequestAttemptError::BrokenConnectionError(_)
            | RequestAttemptError::UnableToAllocStreamId,
        ) => true,
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::EmptyPlan => true,
        _ => false,
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
