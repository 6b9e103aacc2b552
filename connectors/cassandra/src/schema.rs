//! Which frame column goes into which table column, and whether the table's
//! CQL types can hold the frame's Arrow types.

use arrow::datatypes::{DataType, SchemaRef};
use scylla::client::session::Session;

use crate::error::CassandraError;
use crate::sink::Ttl;

/// The argument of a parameterized CQL type (lowercase): `int` of
/// `list<int>` for `list`, `None` when `cql` is not a `name<...>`.
pub(crate) fn type_argument<'a>(cql: &'a str, name: &str) -> Option<&'a str> {
    cql.strip_prefix(name)?.strip_prefix('<')?.strip_suffix('>')
}

/// A CQL type flumen writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CqlType {
    Text,
    Ascii,
    BigInt,
    Int,
    SmallInt,
    TinyInt,
    Double,
    Float,
    Boolean,
    Timestamp,
    Blob,
    List(Box<CqlType>),
    Set(Box<CqlType>),
}

impl CqlType {
    /// Parses `system_schema.columns.type` (`text`, `frozen<list<double>>`, ...).
    pub(crate) fn parse(text: &str) -> Option<CqlType> {
        let t = text.trim().to_ascii_lowercase();
        if let Some(i) = type_argument(&t, "frozen") {
            return CqlType::parse(i);
        }
        if let Some(i) = type_argument(&t, "list") {
            return CqlType::parse(i).map(|e| CqlType::List(Box::new(e)));
        }
        if let Some(i) = type_argument(&t, "set") {
            return CqlType::parse(i).map(|e| CqlType::Set(Box::new(e)));
        }
        Some(match t.as_str() {
            "text" | "varchar" => CqlType::Text,
            "ascii" => CqlType::Ascii,
            "bigint" | "counter" => CqlType::BigInt,
            "int" => CqlType::Int,
            "smallint" => CqlType::SmallInt,
            "tinyint" => CqlType::TinyInt,
            "double" => CqlType::Double,
            "float" => CqlType::Float,
            "boolean" => CqlType::Boolean,
            "timestamp" => CqlType::Timestamp,
            "blob" => CqlType::Blob,
            _ => return None,
        })
    }

    fn name(&self) -> String {
        match self {
            CqlType::Text => "text".into(),
            CqlType::Ascii => "ascii".into(),
            CqlType::BigInt => "bigint".into(),
            CqlType::Int => "int".into(),
            CqlType::SmallInt => "smallint".into(),
            CqlType::TinyInt => "tinyint".into(),
            CqlType::Double => "double".into(),
            CqlType::Float => "float".into(),
            CqlType::Boolean => "boolean".into(),
            CqlType::Timestamp => "timestamp".into(),
            CqlType::Blob => "blob".into(),
            CqlType::List(e) => format!("list<{}>", e.name()),
            CqlType::Set(e) => format!("set<{}>", e.name()),
        }
    }

    /// Whether values of `arrow` convert into this type without loss.
    fn holds(&self, arrow: &DataType) -> bool {
        use DataType as A;
        match (self, arrow) {
            (CqlType::Text | CqlType::Ascii, A::Utf8 | A::LargeUtf8 | A::Utf8View) => true,
            (CqlType::BigInt, A::Int64 | A::Int32 | A::Int16 | A::Int8)
            | (CqlType::BigInt, A::UInt32 | A::UInt16 | A::UInt8) => true,
            (CqlType::Int, A::Int32 | A::Int16 | A::Int8 | A::UInt16 | A::UInt8) => true,
            (CqlType::SmallInt, A::Int16 | A::Int8 | A::UInt8) => true,
            (CqlType::TinyInt, A::Int8) => true,
            (CqlType::Double, A::Float64 | A::Float32) => true,
            (CqlType::Float, A::Float32) => true,
            (CqlType::Boolean, A::Boolean) => true,
            // Epoch milliseconds (window_start / window_end), or Arrow timestamps.
            (CqlType::Timestamp, A::Int64 | A::Timestamp(..)) => true,
            (CqlType::Blob, A::Binary | A::LargeBinary) => true,
            (CqlType::List(e) | CqlType::Set(e), A::List(f) | A::LargeList(f)) => {
                e.holds(f.data_type())
            }
            _ => false,
        }
    }

    /// The type `create_table_if_missing` gives a frame column.
    fn for_arrow(name: &str, arrow: &DataType) -> Option<CqlType> {
        use DataType as A;
        let time_like = name.ends_with("_start")
            || name.ends_with("_end")
            || name == "ts"
            || name.contains("time");
        Some(match arrow {
            A::Utf8 | A::LargeUtf8 | A::Utf8View => CqlType::Text,
            A::Int64 if time_like => CqlType::Timestamp,
            A::Int64 | A::UInt32 => CqlType::BigInt,
            A::Int32 | A::UInt16 => CqlType::Int,
            A::Int16 | A::UInt8 => CqlType::SmallInt,
            A::Int8 => CqlType::TinyInt,
            A::Float64 => CqlType::Double,
            A::Float32 => CqlType::Float,
            A::Boolean => CqlType::Boolean,
            A::Timestamp(..) => CqlType::Timestamp,
            A::Binary | A::LargeBinary => CqlType::Blob,
            A::List(f) | A::LargeList(f) => {
                CqlType::List(Box::new(CqlType::for_arrow("", f.data_type())?))
            }
            _ => return None,
        })
    }
}

/// A frame column and the table column it goes to.
#[derive(Debug, Clone)]
pub(crate) struct Mapped {
    pub(crate) frame_index: usize,
    pub(crate) frame_name: String,
    pub(crate) column: String,
    pub(crate) arrow: DataType,
}

/// The frame columns to write, and where the TTL comes from.
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    pub(crate) columns: Vec<Mapped>,
    pub(crate) ttl_index: Option<usize>,
}

impl Mapping {
    pub(crate) fn new(
        schema: &SchemaRef,
        renames: &[(String, String)],
        ttl: &Ttl,
        table: &str,
    ) -> Result<Mapping, CassandraError> {
        let schema_error = |reason: String| CassandraError::Schema {
            table: table.to_string(),
            reason,
        };
        for (frame, _) in renames {
            if schema.index_of(frame).is_err() {
                return Err(schema_error(format!(
                    "column('{frame}', ..) names no column of the frame (columns: {})",
                    names(schema)
                )));
            }
        }
        let ttl_index = match ttl {
            Ttl::Column(c) => {
                let i = schema.index_of(c).map_err(|_| {
                    schema_error(format!(
                        "the TTL column '{c}' is not in the frame (columns: {})",
                        names(schema)
                    ))
                })?;
                if !schema.field(i).data_type().is_integer() {
                    return Err(schema_error(format!(
                        "the TTL column '{c}' has type {}; it must hold integer seconds",
                        schema.field(i).data_type()
                    )));
                }
                Some(i)
            }
            _ => None,
        };
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, f)| !f.name().starts_with('_') && Some(*i) != ttl_index)
            .map(|(i, f)| Mapped {
                frame_index: i,
                frame_name: f.name().clone(),
                column: renames
                    .iter()
                    .find(|(frame, _)| frame == f.name())
                    .map_or_else(|| f.name().clone(), |(_, t)| t.clone()),
                arrow: f.data_type().clone(),
            })
            .collect();
        Ok(Mapping { columns, ttl_index })
    }
}

fn names(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `name` as a quoted CQL identifier: taken literally (case kept), with `"`
/// doubled, so that no name can end the identifier early.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"keyspace"."table"`.
pub(crate) fn qualified_ident(keyspace: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(keyspace), quote_ident(table))
}

/// A table column as `system_schema.columns` describes it.
#[derive(Debug, Clone)]
pub(crate) struct TableColumn {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) cql: String,
}

/// The columns of `keyspace.table`, read through the driver.
pub(crate) async fn read_columns(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> Result<Vec<TableColumn>, CassandraError> {
    let qualified = format!("{keyspace}.{table}");
    let failed = |operation: &str, reason: String| CassandraError::Request {
        table: qualified.clone(),
        operation: operation.to_string(),
        reason,
    };
    let rows = session
        .query_unpaged(
            "SELECT column_name, kind, type FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, table),
        )
        .await
        .map_err(|e| failed("reading the table's schema", e.to_string()))?
        .into_rows_result()
        .map_err(|e| failed("reading the table's schema", e.to_string()))?;
    let columns = rows
        .rows::<(String, String, String)>()
        .map_err(|e| failed("reading the table's schema", e.to_string()))?
        .map(|r| r.map(|(name, kind, cql)| TableColumn { name, kind, cql }))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed("reading the table's schema", e.to_string()))?;
    if columns.is_empty() {
        return Err(CassandraError::Schema {
            table: qualified,
            reason: "the table does not exist; create it, or use \
                     CassandraSink::create_table_if_missing(..)"
                .into(),
        });
    }
    Ok(columns)
}

/// A frame column bound to a table column of a type that can hold it.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    pub(crate) frame_index: usize,
    pub(crate) column: String,
    pub(crate) cql: CqlType,
    /// Whether it is (part of) the table's partition key.
    pub(crate) partition_key: bool,
}

/// Checks every mapped column against the table; every primary key column of
/// the table must be written.
pub(crate) fn check_columns(
    mapping: &Mapping,
    table_columns: &[TableColumn],
    table: &str,
) -> Result<(Vec<Bound>, Option<usize>), CassandraError> {
    let schema_error = |reason: String| CassandraError::Schema {
        table: table.to_string(),
        reason,
    };
    let mut bound = Vec::new();
    for m in &mapping.columns {
        let Some(column) = table_columns.iter().find(|c| c.name == m.column) else {
            return Err(schema_error(format!(
                "has no column '{}' for the frame's column '{}' ({}); table columns: {} \
                 (map names with CassandraSink::column(frame, table))",
                m.column,
                m.frame_name,
                m.arrow,
                table_columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let cql = CqlType::parse(&column.cql).filter(|t| t.holds(&m.arrow));
        let Some(cql) = cql else {
            return Err(schema_error(format!(
                "column '{}' has CQL type {}, which cannot hold the frame's column '{}' of Arrow type {}",
                column.name, column.cql, m.frame_name, m.arrow
            )));
        };
        bound.push(Bound {
            frame_index: m.frame_index,
            column: column.name.clone(),
            cql,
            partition_key: column.kind == "partition_key",
        });
    }
    let missing: Vec<&str> = table_columns
        .iter()
        .filter(|c| c.kind == "partition_key" || c.kind == "clustering")
        .filter(|c| !bound.iter().any(|b| b.column == c.name))
        .map(|c| c.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(schema_error(format!(
            "no frame column is written into its primary key column(s) {}",
            missing.join(", ")
        )));
    }
    Ok((bound, mapping.ttl_index))
}

/// `CREATE TABLE IF NOT EXISTS` for the mapped columns.
pub(crate) fn create_table_cql(
    keyspace: &str,
    table: &str,
    mapping: &Mapping,
    partition_key: &[String],
    clustering: &[String],
) -> Result<String, CassandraError> {
    let qualified = format!("{keyspace}.{table}");
    let target = qualified_ident(keyspace, table);
    if partition_key.is_empty() {
        return Err(CassandraError::Config(format!(
            "create_table_if_missing for {qualified} needs at least one partition key column"
        )));
    }
    let mut columns = Vec::new();
    for m in &mapping.columns {
        let cql =
            CqlType::for_arrow(&m.column, &m.arrow).ok_or_else(|| CassandraError::Schema {
                table: qualified.clone(),
                reason: format!(
                    "no CQL type for the frame's column '{}' of Arrow type {}",
                    m.frame_name, m.arrow
                ),
            })?;
        columns.push(format!("{} {}", quote_ident(&m.column), cql.name()));
    }
    for key in partition_key.iter().chain(clustering) {
        if !mapping.columns.iter().any(|m| &m.column == key) {
            return Err(CassandraError::Config(format!(
                "create_table_if_missing: key column '{key}' of {qualified} is not a column the frame writes"
            )));
        }
    }
    let quote = |cs: &[String]| {
        cs.iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut key = format!("({})", quote(partition_key));
    if !clustering.is_empty() {
        key = format!("{key}, {}", quote(clustering));
    }
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {target} ({}, PRIMARY KEY ({key}))",
        columns.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("window_start", DataType::Int64, false),
            Field::new("count", DataType::Int64, false),
            Field::new("mean", DataType::Float64, true),
            Field::new("_key", DataType::Utf8, false),
        ]))
    }

    fn column(name: &str, kind: &str, cql: &str) -> TableColumn {
        TableColumn {
            name: name.into(),
            kind: kind.into(),
            cql: cql.into(),
        }
    }

    #[test]
    fn columns_map_by_name_or_rename_and_types_are_checked() {
        let renames = vec![("key".to_string(), "device".to_string())];
        let mapping = Mapping::new(&schema(), &renames, &Ttl::None, "m.t").unwrap();
        assert_eq!(mapping.columns.len(), 4, "metadata columns are not written");
        let table = vec![
            column("device", "partition_key", "text"),
            column("window_start", "clustering", "timestamp"),
            column("count", "regular", "bigint"),
            column("mean", "regular", "double"),
        ];
        let (bound, _) = check_columns(&mapping, &table, "m.t").unwrap();
        assert_eq!(bound[1].cql, CqlType::Timestamp);

        let wrong = vec![
            column("device", "partition_key", "text"),
            column("window_start", "clustering", "timestamp"),
            column("count", "regular", "int"),
            column("mean", "regular", "double"),
        ];
        let err = check_columns(&mapping, &wrong, "m.t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'count'") && err.contains("int") && err.contains("Int64"),
            "{err}"
        );

        let missing_key = vec![
            column("device", "partition_key", "text"),
            column("window_start", "clustering", "timestamp"),
            column("count", "regular", "bigint"),
            column("mean", "regular", "double"),
            column("region", "partition_key", "text"),
        ];
        let err = check_columns(&mapping, &missing_key, "m.t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("region"), "{err}");

        let mapping = Mapping::new(&schema(), &[], &Ttl::None, "m.t").unwrap();
        let err = check_columns(&mapping, &table, "m.t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no column 'key'"), "{err}");
    }

    #[test]
    fn create_table_types_follow_the_frame() {
        let renames = vec![("key".to_string(), "device".to_string())];
        let mapping = Mapping::new(&schema(), &renames, &Ttl::None, "m.t").unwrap();
        let cql = create_table_cql(
            "m",
            "t",
            &mapping,
            &["device".into()],
            &["window_start".into()],
        )
        .unwrap();
        assert_eq!(
            cql,
            "CREATE TABLE IF NOT EXISTS \"m\".\"t\" (\"device\" text, \"window_start\" timestamp, \
             \"count\" bigint, \"mean\" double, PRIMARY KEY ((\"device\"), \"window_start\"))"
        );
    }

    /// Defect 10 of #16: a `"` in a name cannot end the identifier early.
    #[test]
    fn identifiers_are_quoted_with_quotes_doubled() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            qualified_ident("Ks", "t\"; DROP TABLE x; --"),
            "\"Ks\".\"t\"\"; DROP TABLE x; --\""
        );
    }
}
