//! The source table's columns: which form the partition key, which can carry
//! a write time, the `SELECT` that reads them and the Arrow schema of the
//! records the source publishes.

use arrow::datatypes::{DataType, Field, Fields, Schema};
use scylla::client::session::Session;

use crate::error::CassandraError;
use crate::schema::{qualified_ident, quote_ident, type_argument};

/// One column of the source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub(crate) name: String,
    /// `partition_key`, `clustering`, `regular` or `static`.
    pub(crate) kind: String,
    /// Position within the partition key or clustering columns.
    pub(crate) position: i32,
    /// The CQL type as `system_schema.columns` writes it.
    pub(crate) cql: String,
}

impl Column {
    fn is_collection_or_udt(&self) -> bool {
        let t = self.cql.to_ascii_lowercase();
        !t.starts_with("frozen<")
            && (t.starts_with("list<")
                || t.starts_with("set<")
                || t.starts_with("map<")
                || !simple_type(&t))
    }

    /// Whether `WRITETIME(column)` is defined: a regular or static column of a
    /// non-collection type (a frozen collection is one cell).
    pub(crate) fn has_writetime(&self) -> bool {
        matches!(self.kind.as_str(), "regular" | "static")
            && !self.is_collection_or_udt()
            && !self.cql.eq_ignore_ascii_case("counter")
    }
}

/// The table, as the source reads it.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub(crate) keyspace: String,
    pub(crate) name: String,
    /// Every column, partition key first (in key order), then clustering
    /// columns (in order), then the rest by name.
    pub(crate) columns: Vec<Column>,
}

impl Table {
    /// `keyspace.table`, for messages.
    pub(crate) fn qualified(&self) -> String {
        format!("{}.{}", self.keyspace, self.name)
    }

    /// The partition key columns, in key order.
    pub(crate) fn partition_key(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.kind == "partition_key")
    }

    /// Indexes (into [`Table::columns`]) of the columns whose write time is read.
    pub(crate) fn writetime_columns(&self) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|&i| self.columns[i].has_writetime())
            .collect()
    }

    /// What a scan selects: every column, then the write times.
    pub(crate) fn selected_columns(&self) -> Vec<String> {
        let mut selected: Vec<String> = self.columns.iter().map(|c| quote_ident(&c.name)).collect();
        selected.extend(
            self.writetime_columns()
                .into_iter()
                .map(|i| format!("WRITETIME({})", quote_ident(&self.columns[i].name))),
        );
        selected
    }

    /// `SELECT <columns>, WRITETIME(<c>)..., token(<pk>) FROM ks.t WHERE
    /// token(<pk>) > ? AND token(<pk>) <= ?` plus `extra` conditions.
    pub(crate) fn range_select(&self, extra: &str) -> String {
        let token = format!(
            "token({})",
            self.partition_key()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        format!(
            "SELECT {} FROM {} WHERE {token} > ? AND {token} <= ?{extra}",
            self.selected_columns().join(", "),
            qualified_ident(&self.keyspace, &self.name),
        )
    }

    /// The Arrow schema of the published JSON records (see the module docs of
    /// `source` for the mapping). Tuples, UDTs and vectors stay in the JSON
    /// but are left out of the frame's schema.
    pub(crate) fn arrow_schema(&self) -> Schema {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .filter_map(|c| {
                let nullable = c.kind != "partition_key" && c.kind != "clustering";
                arrow_type(&c.cql).map(|t| Field::new(&c.name, t, nullable))
            })
            .collect();
        Schema::new(fields)
    }
}

/// Reads the columns of `keyspace.table`.
pub(crate) async fn read_table(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> Result<Table, CassandraError> {
    let qualified = format!("{keyspace}.{table}");
    let failed = |reason: String| CassandraError::Request {
        table: qualified.clone(),
        operation: "reading the table's schema".into(),
        reason,
    };
    let rows = session
        .query_unpaged(
            "SELECT column_name, kind, position, type FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, table),
        )
        .await
        .map_err(|e| failed(e.to_string()))?
        .into_rows_result()
        .map_err(|e| failed(e.to_string()))?;
    let mut columns = rows
        .rows::<(String, String, i32, String)>()
        .map_err(|e| failed(e.to_string()))?
        .map(|r| {
            r.map(|(name, kind, position, cql)| Column {
                name,
                kind,
                position,
                cql,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))?;
    if columns.is_empty() {
        return Err(CassandraError::Schema {
            table: qualified,
            reason: "the table does not exist (or the keyspace is not visible to this user)".into(),
        });
    }
    columns.sort_by_key(|c| (kind_rank(&c.kind), c.position, c.name.clone()));
    Ok(Table {
        keyspace: keyspace.into(),
        name: table.into(),
        columns,
    })
}

fn kind_rank(kind: &str) -> u8 {
    match kind {
        "partition_key" => 0,
        "clustering" => 1,
        "static" => 2,
        _ => 3,
    }
}

fn simple_type(t: &str) -> bool {
    scalar_arrow_type(t).is_some() || t == "counter"
}

fn scalar_arrow_type(t: &str) -> Option<DataType> {
    Some(match t {
        "text" | "varchar" | "ascii" | "uuid" | "timeuuid" | "inet" | "blob" | "date"
        | "varint" | "decimal" | "duration" => DataType::Utf8,
        "bigint" | "counter" | "timestamp" | "time" => DataType::Int64,
        "int" => DataType::Int32,
        "smallint" => DataType::Int16,
        "tinyint" => DataType::Int8,
        "double" => DataType::Float64,
        "float" => DataType::Float32,
        "boolean" => DataType::Boolean,
        _ => return None,
    })
}

/// The Arrow type of a CQL type in the published JSON, where the frame can
/// decode it (`None`: tuples, UDTs, vectors).
pub(crate) fn arrow_type(cql: &str) -> Option<DataType> {
    let t = cql.trim().to_ascii_lowercase();
    let inner = |name: &str| type_argument(&t, name);
    if let Some(i) = inner("frozen") {
        return arrow_type(i);
    }
    if let Some(i) = inner("list").or_else(|| inner("set")) {
        let element = arrow_type(i)?;
        return Some(DataType::List(Field::new("item", element, true).into()));
    }
    if let Some(i) = inner("map") {
        let (k, v) = split_top_level(i)?;
        // JSON object keys are strings: the key type must print as one.
        let _ = arrow_type(k)?;
        let entries = Fields::from(vec![
            Field::new("keys", DataType::Utf8, false),
            Field::new("values", arrow_type(v)?, true),
        ]);
        return Some(DataType::Map(
            Field::new("entries", DataType::Struct(entries), false).into(),
            false,
        ));
    }
    scalar_arrow_type(&t)
}

/// `a, b` of `map<a, b>` split at the top-level comma.
fn split_top_level(s: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    for (i, ch) in s.char_indices() {
        match ch {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => return Some((s[..i].trim(), s[i + 1..].trim())),
            _ => {}
        }
    }
    None
}

/// A column as `system_schema.columns` describes it, for tests.
#[cfg(test)]
pub(crate) fn column(name: &str, kind: &str, position: i32, cql: &str) -> Column {
    Column {
        name: name.into(),
        kind: kind.into(),
        position,
        cql: cql.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_select_reads_every_column_their_write_times_and_the_token() {
        let table = Table {
            keyspace: "ks".into(),
            name: "readings".into(),
            columns: vec![
                column("device", "partition_key", 0, "text"),
                column("day", "partition_key", 1, "date"),
                column("ts", "clustering", 0, "timestamp"),
                column("tags", "regular", -1, "set<text>"),
                column("temp", "regular", -1, "double"),
            ],
        };
        assert_eq!(
            table.range_select(""),
            "SELECT \"device\", \"day\", \"ts\", \"tags\", \"temp\", WRITETIME(\"temp\") \
             FROM \"ks\".\"readings\" WHERE token(\"device\", \"day\") > ? \
             AND token(\"device\", \"day\") <= ?"
        );
    }

    #[test]
    fn cql_types_map_to_arrow_where_json_can_carry_them() {
        assert_eq!(arrow_type("text"), Some(DataType::Utf8));
        assert_eq!(arrow_type("timestamp"), Some(DataType::Int64));
        assert!(matches!(
            arrow_type("frozen<list<int>>"),
            Some(DataType::List(_))
        ));
        assert!(matches!(
            arrow_type("map<text, frozen<list<double>>>"),
            Some(DataType::Map(..))
        ));
        assert_eq!(arrow_type("tuple<int, text>"), None);
        assert_eq!(arrow_type("frozen<address>"), None);
    }
}
