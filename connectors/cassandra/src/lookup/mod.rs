//! [`CassandraLookup`]: enriches a stream with the rows of a Cassandra table
//! (`frame.lookup(..)`). Each distinct key of a batch not in the engine's
//! cache is read with a prepared, token-aware `SELECT .. LIMIT 1`, a bounded
//! number at a time, retried with backoff on timeouts and unavailable nodes;
//! keys that share a partition are read together when that is cheaper
//! (`grouped.rs`). A preloaded table is scanned by token ranges.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use backon::Retryable;
use flumen::expr::Expr;
use flumen::lookup::{Fetched, Lookup, LookupCache, LookupTable, OnMiss, Scanned};
use flumen::BoxError;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use serde_json::{Map, Value};

mod grouped;

use crate::connection::Connection;
use crate::convert::{column_values, Bind};
use crate::error::CassandraError;
use crate::schema::{qualified_ident, quote_ident, CqlType};
use crate::sink::Consistency;
use crate::source::json::to_json;
use crate::source::ranges::{split_ring, TokenRange};
use crate::source::table::{arrow_type, read_table, Column, Table};
use grouped::{Grouping, Request};

/// Looks rows up in a Cassandra table by key, for
/// [`StreamingDataFrame::lookup`](flumen::StreamingDataFrame::lookup).
///
/// The key must cover the table's partition key, and may add clustering
/// columns in order; the first matching row in clustering order is used (with
/// a clustering order `DESC` on time, the latest). The looked-up columns are
/// all non-key columns unless [`columns`](Self::columns) names them.
///
/// ```no_run
/// use flumen::prelude::*;
/// use flumen::lookup::LookupCache;
/// use flumen_cassandra::CassandraLookup;
///
/// fn enrich(readings: &StreamingDataFrame) -> StreamingDataFrame {
///     readings.lookup(
///         CassandraLookup::table("iot.devices")
///             .nodes("127.0.0.1:9042")
///             .on([(col("device"), "device_id")])
///             .columns(["site", "max_temp"])
///             .cache(LookupCache::default().ttl(std::time::Duration::from_secs(30))),
///     )
/// }
/// ```
#[derive(Debug, Clone)]
pub struct CassandraLookup {
    keyspace: String,
    table: String,
    connection: Connection,
    on: Vec<(Expr, String)>,
    columns: Option<Vec<String>>,
    cache: LookupCache,
    on_miss: OnMiss,
    max_in_flight: usize,
    retries: usize,
}

impl CassandraLookup {
    crate::connection::connection_builder_methods!();

    /// A lookup in `keyspace.table` on `127.0.0.1:9042`; name its key with
    /// [`on`](Self::on).
    pub fn table(table: &str) -> Self {
        let (keyspace, name) = table.split_once('.').unwrap_or(("", table));
        CassandraLookup {
            keyspace: keyspace.to_string(),
            table: name.to_string(),
            connection: Connection::new(std::time::Duration::from_secs(5)),
            on: Vec::new(),
            columns: None,
            cache: LookupCache::default(),
            on_miss: OnMiss::KeepNulls,
            max_in_flight: 256,
            retries: 5,
        }
    }

    /// The key: pairs of an expression over the stream and the table column
    /// it must equal.
    pub fn on<C: Into<String>>(mut self, key: impl IntoIterator<Item = (Expr, C)>) -> Self {
        self.on = key.into_iter().map(|(e, c)| (e, c.into())).collect();
        self
    }

    /// The columns to add (default: every non-key column).
    pub fn columns<C: Into<String>>(mut self, columns: impl IntoIterator<Item = C>) -> Self {
        self.columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// The cache in front of the table.
    pub fn cache(mut self, cache: LookupCache) -> Self {
        self.cache = cache;
        self
    }

    /// What becomes of a row whose key is not in the table.
    pub fn on_miss(mut self, on_miss: OnMiss) -> Self {
        self.on_miss = on_miss;
        self
    }

    /// Reads at most `requests` keys at once (default 256).
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests.max(1);
        self
    }

    /// Retries of a read that timed out or found too few replicas (default 5).
    pub fn retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// The consistency of the reads (default `LOCAL_QUORUM`).
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.connection.consistency = consistency;
        self
    }

    fn qualified(&self) -> String {
        format!("{}.{}", self.keyspace, self.table)
    }

    async fn open_table(&self) -> Result<CassandraTable, CassandraError> {
        let schema_error = |reason: String| CassandraError::Schema {
            table: self.qualified(),
            reason,
        };
        if self.on.is_empty() {
            return Err(CassandraError::Config(format!(
                "the lookup in {} has no key: name it with .on([(col(\"..\"), \"column\")])",
                self.qualified()
            )));
        }
        let session = self.connection.connect().await?;
        let table = read_table(&session, &self.keyspace, &self.table).await?;
        let keys = key_columns(&table, &self.on).map_err(schema_error)?;
        let selected = self.selected(&table).map_err(schema_error)?;
        let schema = lookup_schema(&selected).map_err(schema_error)?;
        let key_types = keys
            .iter()
            .map(|c| {
                CqlType::parse(&c.cql).ok_or_else(|| {
                    schema_error(format!(
                        "key column '{}' has type {}, which a lookup cannot bind yet",
                        c.name, c.cql
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prepared = self
            .prepare(&session, &select_cql(&table, &keys, &selected))
            .await?;
        let scan = self
            .cache
            .preload_value()
            .is_some()
            .then(|| scan_cql(&table, &keys, &selected));
        let scan = match scan {
            Some(cql) => Some(self.prepare_scan(&session, &cql).await?),
            None => None,
        };
        let grouped = match Grouping::of(&table, &keys, &selected) {
            Some(grouping) => {
                let prepared = self.prepare(&session, &grouping.cql).await?;
                Some((grouping, prepared))
            }
            None => None,
        };
        Ok(CassandraTable {
            table: self.qualified(),
            session: Arc::new(session),
            prepared,
            scan,
            grouped,
            key_schema: lookup_schema(&keys).map_err(schema_error)?,
            key_types,
            schema,
            max_in_flight: self.max_in_flight,
            retries: self.retries,
        })
    }

    /// Prepares the scan of a token range of a preloaded table.
    async fn prepare_scan(
        &self,
        session: &Session,
        cql: &str,
    ) -> Result<PreparedStatement, CassandraError> {
        let mut prepared = self.prepare(session, cql).await?;
        prepared.set_page_size(SCAN_PAGE_ROWS);
        Ok(prepared)
    }

    async fn prepare(
        &self,
        session: &Session,
        cql: &str,
    ) -> Result<PreparedStatement, CassandraError> {
        session
            .prepare(cql)
            .await
            .map_err(|e| CassandraError::Request {
                table: self.qualified(),
                operation: format!("preparing `{cql}`"),
                reason: e.to_string(),
            })
    }

    /// The columns to add: the named ones, or every non-key column.
    fn selected(&self, table: &Table) -> Result<Vec<Column>, String> {
        let Some(names) = &self.columns else {
            return Ok(table
                .columns
                .iter()
                .filter(|c| c.kind == "regular" || c.kind == "static")
                .cloned()
                .collect());
        };
        names
            .iter()
            .map(|name| {
                table
                    .columns
                    .iter()
                    .find(|c| &c.name == name)
                    .cloned()
                    .ok_or_else(|| {
                        format!("no column '{name}'; the table has {}", column_names(table))
                    })
            })
            .collect()
    }
}

fn column_names(table: &Table) -> String {
    let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    names.join(", ")
}

/// The table columns of the key, in the order of `on`: the whole partition
/// key, and clustering columns only as a prefix of theirs.
fn key_columns(table: &Table, on: &[(Expr, String)]) -> Result<Vec<Column>, String> {
    let partition_key: Vec<&str> = table.partition_key().map(|c| c.name.as_str()).collect();
    let mut keys = Vec::new();
    for (_, name) in on {
        let column = table
            .columns
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| format!("no column '{name}'; the table has {}", column_names(table)))?;
        if column.kind != "partition_key" && column.kind != "clustering" {
            return Err(format!(
                "'{name}' is not a key column; the partition key is ({})",
                partition_key.join(", ")
            ));
        }
        keys.push(column.clone());
    }
    let named = |kind: &str| keys.iter().filter(|c| c.kind == kind).count();
    if named("partition_key") != partition_key.len() {
        return Err(format!(
            "the lookup key must cover the partition key ({})",
            partition_key.join(", ")
        ));
    }
    let clustering = named("clustering");
    let prefix = table
        .columns
        .iter()
        .filter(|c| c.kind == "clustering")
        .take(clustering);
    if !prefix
        .clone()
        .all(|c| keys.iter().any(|k| k.name == c.name))
    {
        let names: Vec<&str> = prefix.map(|c| c.name.as_str()).collect();
        return Err(format!(
            "clustering columns in a lookup key must be a prefix of the table's: ({})",
            names.join(", ")
        ));
    }
    Ok(keys)
}

fn lookup_schema(columns: &[Column]) -> Result<SchemaRef, String> {
    let fields = columns
        .iter()
        .map(|c| {
            arrow_type(&c.cql)
                .map(|t| Field::new(&c.name, t, true))
                .ok_or_else(|| {
                    format!(
                        "column '{}' of type {} cannot be looked up yet",
                        c.name, c.cql
                    )
                })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

fn select_cql(table: &Table, keys: &[Column], selected: &[Column]) -> String {
    let columns: Vec<String> = selected.iter().map(|c| quote_ident(&c.name)).collect();
    let conditions: Vec<String> = keys
        .iter()
        .map(|c| format!("{} = ?", quote_ident(&c.name)))
        .collect();
    let columns = if columns.is_empty() {
        "*".to_string()
    } else {
        columns.join(", ")
    };
    format!(
        "SELECT {columns} FROM {} WHERE {} LIMIT 1",
        qualified_ident(&table.keyspace, &table.name),
        conditions.join(" AND ")
    )
}

/// Rows per page of a preloading scan.
const SCAN_PAGE_ROWS: i32 = 5_000;
/// The token ranges a preloading scan reads (more than run at once, so a
/// slow range does not hold the others up) ...
const SCAN_SPLITS: u32 = 64;
/// ... and how many it reads at once.
const SCAN_IN_FLIGHT: usize = 8;

/// The scan of one token range of a preloaded table: the key columns, then
/// the looked-up ones.
fn scan_cql(table: &Table, keys: &[Column], selected: &[Column]) -> String {
    let columns: Vec<String> = keys
        .iter()
        .chain(selected)
        .map(|c| quote_ident(&c.name))
        .collect();
    let partition_key: Vec<String> = table
        .partition_key()
        .map(|c| quote_ident(&c.name))
        .collect();
    let token = format!("token({})", partition_key.join(", "));
    format!(
        "SELECT {} FROM {} WHERE {token} > ? AND {token} <= ?",
        columns.join(", "),
        qualified_ident(&table.keyspace, &table.name)
    )
}

impl Lookup for CassandraLookup {
    fn name(&self) -> String {
        format!("cassandra table '{}'", self.qualified())
    }

    fn key(&self) -> Vec<Expr> {
        self.on.iter().map(|(e, _)| e.clone()).collect()
    }

    fn cache(&self) -> LookupCache {
        self.cache
    }

    fn on_miss(&self) -> OnMiss {
        self.on_miss.clone()
    }

    fn open(&self) -> BoxFuture<'_, Result<Arc<dyn LookupTable>, BoxError>> {
        Box::pin(async move {
            let table = self.open_table().await?;
            tracing::info!(table = %table.table, "lookup table opened");
            Ok(Arc::new(table) as Arc<dyn LookupTable>)
        })
    }
}

/// An opened lookup table.
struct CassandraTable {
    table: String,
    session: Arc<Session>,
    prepared: PreparedStatement,
    /// The scan of a token range, for a preloaded table.
    scan: Option<PreparedStatement>,
    /// The read of several keys of one partition, when the key is the whole
    /// primary key of a table with clustering columns.
    grouped: Option<(Grouping, PreparedStatement)>,
    /// The key columns, as a scan returns them.
    key_schema: SchemaRef,
    key_types: Vec<CqlType>,
    schema: SchemaRef,
    max_in_flight: usize,
    retries: usize,
}

impl CassandraTable {
    /// Runs a read, retried with backoff on timeouts and unavailable nodes
    /// (counted in `retried`).
    async fn read(
        &self,
        (prepared, values): (&PreparedStatement, &[Bind]),
        retried: &AtomicU64,
        operation: &str,
    ) -> Result<Vec<Row>, CassandraError> {
        let failed = |reason: String| CassandraError::Request {
            table: self.table.clone(),
            operation: operation.into(),
            reason,
        };
        let in_flight = metrics::gauge!("flumen_lookup_in_flight", "table" => self.table.clone());
        in_flight.increment(1.0);
        let result = (|| async { self.session.execute_unpaged(prepared, values).await })
            .retry(crate::retry::backoff(self.retries))
            .when(crate::retry::retryable)
            .notify(|error, after| {
                retried.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(table = %self.table, %error, ?after, "retrying a lookup");
            })
            .await;
        in_flight.decrement(1.0);
        let result = result.map_err(|e| failed(e.to_string()))?;
        let rows = result
            .into_rows_result()
            .map_err(|e| failed(e.to_string()))?;
        let rows = rows.rows::<Row>().map_err(|e| failed(e.to_string()))?;
        rows.map(|row| row.map_err(|e| failed(e.to_string())))
            .collect()
    }

    /// The row of each key a request reads, as JSON (`None`: not found).
    async fn answer(
        &self,
        request: Request,
        keys: &[Vec<Bind>],
        retried: &AtomicU64,
    ) -> Result<Vec<(usize, Option<Value>)>, CassandraError> {
        let (grouping, prepared, indices) = match (request, &self.grouped) {
            (Request::Partition(indices), Some((grouping, prepared))) => {
                (grouping, prepared, indices)
            }
            (Request::One(k), _) => {
                let read = (&self.prepared, keys[k].as_slice());
                let rows = self.read(read, retried, "looking a key up").await?;
                let row = rows.first().map(|r| json_object(&self.schema, &r.columns));
                return Ok(vec![(k, row)]);
            }
            (Request::Partition(_), None) => {
                return Err(CassandraError::Config(format!(
                    "lookup in {}: a grouped read without its statement (a bug in flumen)",
                    self.table
                )))
            }
        };
        let values = grouping.values(keys, &indices);
        let operation = "looking keys of one partition up";
        let rows = self.read((prepared, &values), retried, operation).await?;
        let mut found: HashMap<String, Value> = HashMap::new();
        for row in &rows {
            let values = row
                .columns
                .get(grouping.clustering_len()..)
                .unwrap_or_default();
            found
                .entry(grouping.row_identity(&row.columns))
                .or_insert_with(|| json_object(&self.schema, values));
        }
        Ok(indices
            .into_iter()
            .map(|k| (k, found.get(&grouping.key_identity(&keys[k])).cloned()))
            .collect())
    }

    /// Every key's first row (in clustering order), by paged scans of the
    /// ring's token ranges, [`SCAN_IN_FLIGHT`] at a time.
    async fn scan_all(&self) -> Result<Option<Scanned>, BoxError> {
        let Some(scan) = &self.scan else {
            return Ok(None);
        };
        let ranges: Vec<Vec<Row>> = futures::stream::iter(split_ring(SCAN_SPLITS))
            .map(|range| self.scan_range(scan, range))
            .buffered(SCAN_IN_FLIGHT)
            .try_collect()
            .await?;
        let n = self.key_schema.fields().len();
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        // A key covers the partition key, so all its rows are in one range.
        let mut seen = std::collections::HashSet::new();
        for row in ranges.iter().flatten() {
            let (key, value) = row.columns.split_at(n.min(row.columns.len()));
            let key = json_object(&self.key_schema, key);
            if seen.insert(key.to_string()) {
                keys.push(key);
                values.push(json_object(&self.schema, value));
            }
        }
        Ok(Some(Scanned {
            keys: to_batch(&self.key_schema, &keys.iter().collect::<Vec<_>>())?,
            rows: to_batch(&self.schema, &values.iter().collect::<Vec<_>>())?,
        }))
    }

    /// The rows of one token range, page by page, each page retried with
    /// backoff on timeouts and unavailable nodes.
    async fn scan_range(
        &self,
        scan: &PreparedStatement,
        range: TokenRange,
    ) -> Result<Vec<Row>, CassandraError> {
        let failed = |reason: String| CassandraError::Request {
            table: self.table.clone(),
            operation: format!(
                "scanning tokens ({}, {}] to preload the table",
                range.start, range.end
            ),
            reason,
        };
        let mut rows = Vec::new();
        let mut paging = PagingState::start();
        loop {
            let page = || async {
                let values = (range.start, range.end);
                self.session
                    .execute_single_page(scan, values, paging.clone())
                    .await
            };
            let (result, next) = page
                .retry(crate::retry::backoff(self.retries))
                .when(crate::retry::retryable)
                .notify(|error, after| {
                    tracing::warn!(table = %self.table, %error, ?after, "retrying a page of a preloading scan");
                })
                .await
                .map_err(|e| failed(e.to_string()))?;
            let result = result
                .into_rows_result()
                .map_err(|e| failed(e.to_string()))?;
            for row in result.rows::<Row>().map_err(|e| failed(e.to_string()))? {
                rows.push(row.map_err(|e| failed(e.to_string()))?);
            }
            match next {
                PagingStateResponse::HasMorePages { state } => paging = state,
                PagingStateResponse::NoMorePages => return Ok(rows),
            }
        }
    }

    /// The bound values of each key of `keys`.
    fn binds(&self, keys: &RecordBatch) -> Result<Vec<Vec<Bind>>, CassandraError> {
        let mut rows: Vec<Vec<Bind>> =
            vec![Vec::with_capacity(self.key_types.len()); keys.num_rows()];
        for (i, cql) in self.key_types.iter().enumerate() {
            let values = column_values(keys.column(i), cql, true).map_err(|reason| {
                CassandraError::Config(format!("lookup in {}: key {i}: {reason}", self.table))
            })?;
            for (row, value) in rows.iter_mut().zip(values) {
                row.push(value);
            }
        }
        Ok(rows)
    }

    async fn fetch_keys(&self, keys: RecordBatch) -> Result<Fetched, BoxError> {
        let retried = AtomicU64::new(0);
        let binds = self.binds(&keys)?;
        let requests = match &self.grouped {
            Some((grouping, _)) => grouping.requests(&binds),
            None => (0..binds.len()).map(Request::One).collect(),
        };
        let answers: Result<Vec<_>, _> = futures::stream::iter(requests)
            .map(|request| self.answer(request, &binds, &retried))
            .buffered(self.max_in_flight)
            .try_collect()
            .await;
        // One warning per batch, not one per key and attempt.
        let retries = retried.into_inner();
        if retries > 0 {
            let table = self.table.clone();
            metrics::counter!("flumen_lookup_retries_total", "table" => table).increment(retries);
            tracing::warn!(table = %self.table, keys = keys.num_rows(), retries, "lookups were retried");
        }
        let mut found: Vec<Option<Value>> = vec![None; binds.len()];
        for (k, row) in answers?.into_iter().flatten() {
            found[k] = row;
        }
        // A key not found is an empty object: nulls in every column.
        let missing = Value::Object(Map::new());
        let rows: Vec<&Value> = found
            .iter()
            .map(|r| r.as_ref().unwrap_or(&missing))
            .collect();
        let rows = to_batch(&self.schema, &rows)?;
        let found = found
            .iter()
            .map(|r| Some(r.is_some()))
            .collect::<BooleanArray>();
        Ok(Fetched { rows, found })
    }
}

/// A row's `values` as a JSON object with the names of `schema`'s fields.
fn json_object(schema: &SchemaRef, values: &[Option<CqlValue>]) -> Value {
    let object: Map<String, Value> = schema
        .fields()
        .iter()
        .zip(values)
        .map(|(field, value)| (field.name().clone(), to_json(value.as_ref())))
        .collect();
    Value::Object(object)
}

/// JSON objects as a batch of `schema`.
fn to_batch(schema: &SchemaRef, rows: &[&Value]) -> Result<RecordBatch, BoxError> {
    let mut decoder = arrow_json::ReaderBuilder::new(Arc::clone(schema)).build_decoder()?;
    decoder.serialize(rows)?;
    Ok(match decoder.flush()? {
        Some(batch) => batch,
        None => RecordBatch::new_empty(Arc::clone(schema)),
    })
}

impl LookupTable for CassandraTable {
    fn columns(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn fetch(&self, keys: RecordBatch) -> BoxFuture<'_, Result<Fetched, BoxError>> {
        Box::pin(self.fetch_keys(keys))
    }

    fn scan(&self) -> BoxFuture<'_, Result<Option<Scanned>, BoxError>> {
        Box::pin(self.scan_all())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::table::column;

    fn readings() -> Table {
        Table {
            keyspace: "ks".into(),
            name: "devices".into(),
            columns: vec![
                column("device", "partition_key", 0, "text"),
                column("region", "partition_key", 1, "text"),
                column("since", "clustering", 0, "timestamp"),
                column("site", "regular", -1, "text"),
            ],
        }
    }

    #[test]
    fn a_preloading_scan_reads_one_token_range_of_the_partition_key() {
        let table = readings();
        let keys = key_columns(
            &table,
            &[
                (flumen::expr::col("d"), "device".to_string()),
                (flumen::expr::col("r"), "region".to_string()),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let selected = [column("site", "regular", -1, "text")];
        assert_eq!(
            scan_cql(&table, &keys, &selected),
            "SELECT \"device\", \"region\", \"site\" FROM \"ks\".\"devices\" \
             WHERE token(\"device\", \"region\") > ? AND token(\"device\", \"region\") <= ?"
        );
    }

    #[test]
    fn a_key_must_cover_the_partition_key_and_a_prefix_of_the_clustering_columns() {
        let table = readings();
        let on = |names: &[&str]| -> Vec<(Expr, String)> {
            names
                .iter()
                .map(|n| (flumen::expr::col(*n), n.to_string()))
                .collect()
        };
        let error = key_columns(&table, &on(&["device"]))
            .err()
            .unwrap_or_default();
        assert!(
            error.contains("must cover the partition key (device, region)"),
            "{error}"
        );
        let error = key_columns(&table, &on(&["device", "site"]))
            .err()
            .unwrap_or_default();
        assert!(error.contains("'site' is not a key column"), "{error}");
        let full = key_columns(&table, &on(&["region", "device", "since"]));
        assert_eq!(full.map(|k| k.len()), Ok(3));
    }
}
