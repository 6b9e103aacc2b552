//! Incremental capture of a table bucketed by time: the partition key is one
//! column holding the time bucket of each row (a day, an hour, ...), so a
//! capture pass reads only the buckets its time slice touches, one partition
//! each (`WHERE bucket = ? AND column > ? AND column <= ?`), instead of
//! every token range with `ALLOW FILTERING`.

use std::time::Duration;

use scylla::value::{CqlDate, CqlTimestamp, CqlValue};

use super::table::Table;
use crate::error::CassandraError;
use crate::schema::{qualified_ident, quote_ident};

const DAY_MS: i64 = 86_400_000;

/// How a bucket is written in its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BucketType {
    /// The bucket's start (`timestamp`).
    Timestamp,
    /// The bucket's first day (`date`; the width is whole days).
    Date,
    /// The bucket's number, epoch ms / width (`bigint`).
    BigInt,
    /// The bucket's number, epoch ms / width (`int`).
    Int,
}

/// The bucket column of a table and the width of its buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Buckets {
    column: String,
    width_ms: i64,
    kind: BucketType,
}

impl Buckets {
    /// Checks that `column` is the table's whole partition key, of a bucket
    /// type, and that `width` fits it.
    pub(crate) fn check(
        table: &Table,
        column: &str,
        width: Duration,
    ) -> Result<Self, CassandraError> {
        let fail = |reason: String| CassandraError::Schema {
            table: table.qualified(),
            reason,
        };
        let key: Vec<&str> = table.partition_key().map(|c| c.name.as_str()).collect();
        if key != [column] {
            return Err(fail(format!(
                "bucket column '{column}' must be the whole partition key to read a bucket \
                 as one partition; the partition key is ({})",
                key.join(", ")
            )));
        }
        let width_ms = i64::try_from(width.as_millis()).unwrap_or(i64::MAX);
        let cql = table
            .columns
            .iter()
            .find(|c| c.name == column)
            .map(|c| c.cql.to_ascii_lowercase())
            .unwrap_or_default();
        let kind = match cql.as_str() {
            "timestamp" => BucketType::Timestamp,
            "date" => BucketType::Date,
            "bigint" => BucketType::BigInt,
            "int" => BucketType::Int,
            other => {
                return Err(fail(format!(
                    "bucket column '{column}' has type {other}; expected timestamp, date, \
                     bigint or int (epoch ms / width)"
                )))
            }
        };
        if width_ms <= 0 || (kind == BucketType::Date && width_ms % DAY_MS != 0) {
            return Err(fail(format!(
                "bucket width {width:?} does not fit column '{column}' ({cql}): it must be \
                 positive, and whole days for a date"
            )));
        }
        Ok(Buckets {
            column: column.to_string(),
            width_ms,
            kind,
        })
    }

    /// The number of the bucket holding `at_us`.
    fn number(&self, at_us: i64) -> i64 {
        (at_us / 1000).div_euclid(self.width_ms)
    }

    /// How many buckets the slice `(low_us, high_us]` touches.
    pub(crate) fn count(&self, low_us: i64, high_us: i64) -> u32 {
        let span = self.number(high_us) - self.number(low_us) + 1;
        u32::try_from(span.max(1)).unwrap_or(u32::MAX)
    }

    /// The column value of the `index`th bucket of the slice starting at `low_us`.
    pub(crate) fn value(&self, low_us: i64, index: usize) -> CqlValue {
        let number = self.number(low_us) + index as i64;
        let start_ms = number.saturating_mul(self.width_ms);
        match self.kind {
            BucketType::Timestamp => CqlValue::Timestamp(CqlTimestamp(start_ms)),
            BucketType::Date => {
                let days = start_ms.div_euclid(DAY_MS) + (1i64 << 31);
                CqlValue::Date(CqlDate(u32::try_from(days).unwrap_or(u32::MAX)))
            }
            BucketType::BigInt => CqlValue::BigInt(number),
            BucketType::Int => CqlValue::Int(i32::try_from(number).unwrap_or(i32::MAX)),
        }
    }

    /// The select of one bucket's rows in a slice of `column` (the change
    /// column): columns, their write times, by bucket then slice.
    pub(crate) fn select(&self, table: &Table, column: &str) -> String {
        let change = table.columns.iter().find(|c| c.name == column);
        let bound = match change.map(|c| c.cql.to_ascii_lowercase()) {
            Some(t) if t == "timeuuid" => "maxTimeuuid(?)",
            _ => "?",
        };
        // Filtering within one partition reads only that partition.
        let first_clustering = change.is_some_and(|c| c.kind == "clustering" && c.position == 0);
        let filtering = if first_clustering {
            ""
        } else {
            " ALLOW FILTERING"
        };
        let changed = quote_ident(column);
        format!(
            "SELECT {} FROM {} WHERE {} = ? AND {changed} > {bound} AND {changed} <= {bound}{filtering}",
            table.selected_columns().join(", "),
            qualified_ident(&table.keyspace, &table.name),
            quote_ident(&self.column),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::table::Column;

    fn table(key_type: &str) -> Table {
        let column = |name: &str, kind: &str, position, cql: &str| Column {
            name: name.into(),
            kind: kind.into(),
            position,
            cql: cql.into(),
        };
        Table {
            keyspace: "ks".into(),
            name: "events".into(),
            columns: vec![
                column("day", "partition_key", 0, key_type),
                column("ts", "clustering", 0, "timestamp"),
                column("v", "regular", -1, "double"),
            ],
        }
    }

    #[test]
    fn buckets_of_a_slice_in_each_column_type() {
        let day = Duration::from_secs(86_400);
        let dated = Buckets::check(&table("date"), "day", day).expect("date buckets");
        // 1970-01-02T23:00 .. 1970-01-04T01:00 touches days 1, 2 and 3.
        let (low, high) = (47 * 3_600_000_000, 73 * 3_600_000_000);
        assert_eq!(dated.count(low, high), 3);
        assert_eq!(dated.value(low, 0), CqlValue::Date(CqlDate((1 << 31) + 1)));
        assert_eq!(dated.value(low, 2), CqlValue::Date(CqlDate((1 << 31) + 3)));
        let stamped = Buckets::check(&table("timestamp"), "day", day).expect("timestamp");
        assert_eq!(
            stamped.value(low, 1),
            CqlValue::Timestamp(CqlTimestamp(2 * DAY_MS))
        );
        let numbered = Buckets::check(&table("bigint"), "day", day).expect("bigint");
        assert_eq!(numbered.value(low, 0), CqlValue::BigInt(1));
        assert_eq!(
            dated.select(&table("date"), "ts"),
            "SELECT \"day\", \"ts\", \"v\", WRITETIME(\"v\") FROM \"ks\".\"events\" \
             WHERE \"day\" = ? AND \"ts\" > ? AND \"ts\" <= ?"
        );
    }

    #[test]
    fn bucket_columns_that_cannot_be_read_by_bucket_are_refused() {
        let day = Duration::from_secs(86_400);
        let text = Buckets::check(&table("text"), "day", day).expect_err("text");
        assert!(text.to_string().contains("has type text"), "{text}");
        let not_key = Buckets::check(&table("date"), "ts", day).expect_err("not the key");
        assert!(
            not_key.to_string().contains("the partition key is (day)"),
            "{not_key}"
        );
        let hours = Buckets::check(&table("date"), "day", Duration::from_secs(3_600));
        assert!(hours.is_err(), "a date bucket of an hour");
    }
}
