//! The in-memory tables of the test server: schema, cells with write
//! timestamps and TTLs (last write wins per cell), row and partition tombstones.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::types::{murmur3_token, partition_key_bytes, CqlType, SortKey};

/// A column of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    /// Name.
    pub name: String,
    /// Type.
    pub ty: CqlType,
}

/// A table's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDef {
    /// Keyspace.
    pub keyspace: String,
    /// Table name.
    pub name: String,
    /// Columns in declaration order.
    pub columns: Vec<ColumnDef>,
    /// Indexes of the partition key columns.
    pub partition_key: Vec<usize>,
    /// Indexes of the clustering columns.
    pub clustering: Vec<usize>,
}

impl TableDef {
    /// The index of column `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The column `name`, or an error naming the table.
    pub fn column(&self, name: &str) -> Result<(usize, &ColumnDef), String> {
        self.index_of(name)
            .map(|i| (i, &self.columns[i]))
            .ok_or_else(|| {
                format!(
                    "Undefined column name {name} in table {}.{}",
                    self.keyspace, self.name
                )
            })
    }

    /// Whether column `i` is part of the primary key.
    pub fn is_key(&self, i: usize) -> bool {
        self.partition_key.contains(&i) || self.clustering.contains(&i)
    }

    /// Column indexes in Cassandra's `SELECT *` order: partition key,
    /// clustering, then the other columns by name.
    pub fn select_all_order(&self) -> Vec<usize> {
        let mut regular: Vec<usize> = (0..self.columns.len())
            .filter(|&i| !self.is_key(i))
            .collect();
        regular.sort_by(|&a, &b| self.columns[a].name.cmp(&self.columns[b].name));
        self.partition_key
            .iter()
            .chain(&self.clustering)
            .copied()
            .chain(regular)
            .collect()
    }

    /// `kind` in `system_schema.columns`.
    pub fn kind_of(&self, i: usize) -> (&'static str, i32) {
        if let Some(p) = self.partition_key.iter().position(|&k| k == i) {
            ("partition_key", p as i32)
        } else if let Some(p) = self.clustering.iter().position(|&k| k == i) {
            ("clustering", p as i32)
        } else {
            ("regular", -1)
        }
    }
}

/// When a cell or row marker was written and when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Write timestamp.
    pub ts: i64,
    /// Expiry (unix seconds) and the TTL it came from.
    pub expires: Option<(i64, i32)>,
}

impl Liveness {
    fn live(&self, now: i64, deleted_at: Option<i64>) -> bool {
        self.expires.is_none_or(|(at, _)| at > now) && deleted_at.is_none_or(|d| self.ts > d)
    }
}

#[derive(Debug, Clone)]
struct Cell {
    /// `None`: a tombstone (a written null).
    value: Option<Vec<u8>>,
    at: Liveness,
}

#[derive(Debug, Clone, Default)]
struct Row {
    clustering: Vec<Vec<u8>>,
    marker: Option<Liveness>,
    cells: HashMap<usize, Cell>,
    deleted_at: Option<i64>,
}

#[derive(Debug, Clone, Default)]
struct Partition {
    key: Vec<Vec<u8>>,
    deleted_at: Option<i64>,
    rows: BTreeMap<Vec<SortKey>, Row>,
}

/// A live row as read: every column's value (`None` when null or unset).
#[derive(Debug, Clone)]
pub struct ReadRow {
    /// The partition's token.
    pub token: i64,
    /// Values by column index.
    pub values: Vec<Option<Vec<u8>>>,
    /// Write timestamp and TTL of each live regular cell, by column index.
    pub meta: Vec<Option<Liveness>>,
}

/// A table with its rows, partitions ordered by token.
#[derive(Debug, Clone)]
pub struct Table {
    /// Schema.
    pub def: Arc<TableDef>,
    partitions: BTreeMap<(i64, Vec<Vec<u8>>), Partition>,
}

/// One write to a row.
#[derive(Debug, Clone, Default)]
pub struct RowWrite {
    /// Partition key values.
    pub partition: Vec<Vec<u8>>,
    /// Clustering values.
    pub clustering: Vec<Vec<u8>>,
    /// Regular cells: column index and value (`None` writes a null).
    pub cells: Vec<(usize, Option<Vec<u8>>)>,
    /// INSERT: also write the row marker (the row exists without cells).
    pub marker: bool,
    /// Write timestamp.
    pub ts: i64,
    /// TTL in seconds (0: none).
    pub ttl: i32,
}

/// Current unix time in seconds.
pub fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Current unix time in microseconds (the default write timestamp).
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Table {
    /// An empty table.
    pub fn new(def: TableDef) -> Self {
        Table {
            def: Arc::new(def),
            partitions: BTreeMap::new(),
        }
    }

    /// The token of a partition key.
    pub fn token(partition: &[Vec<u8>]) -> i64 {
        murmur3_token(&partition_key_bytes(partition))
    }

    fn clustering_key(&self, clustering: &[Vec<u8>]) -> Vec<SortKey> {
        self.def
            .clustering
            .iter()
            .zip(clustering)
            .map(|(&i, v)| self.def.columns[i].ty.sort_key(v))
            .collect()
    }

    /// Applies a write: each cell (and the marker) replaces the stored one when
    /// its timestamp is newer (on a tie, the larger value wins, as in Cassandra).
    pub fn write(&mut self, w: RowWrite) {
        let token = Table::token(&w.partition);
        let clustering_key = self.clustering_key(&w.clustering);
        let expires = (w.ttl > 0).then(|| (now_seconds() + i64::from(w.ttl), w.ttl));
        let at = Liveness { ts: w.ts, expires };
        let partition = self
            .partitions
            .entry((token, w.partition.clone()))
            .or_insert_with(|| Partition {
                key: w.partition.clone(),
                ..Default::default()
            });
        let row = partition.rows.entry(clustering_key).or_insert_with(|| Row {
            clustering: w.clustering.clone(),
            ..Default::default()
        });
        if w.marker && row.marker.is_none_or(|m| m.ts <= w.ts) {
            row.marker = Some(at);
        }
        for (column, value) in w.cells {
            let newer = match row.cells.get(&column) {
                None => true,
                Some(old) => {
                    old.at.ts < w.ts || (old.at.ts == w.ts && wins_tie(&value, &old.value))
                }
            };
            if newer {
                row.cells.insert(column, Cell { value, at });
            }
        }
    }

    /// Deletes a row (full primary key) or, with no clustering values, a partition.
    pub fn delete(&mut self, partition: Vec<Vec<u8>>, clustering: Option<Vec<Vec<u8>>>, ts: i64) {
        let token = Table::token(&partition);
        let key = clustering.as_ref().map(|c| self.clustering_key(c));
        let entry = self
            .partitions
            .entry((token, partition.clone()))
            .or_insert_with(|| Partition {
                key: partition,
                ..Default::default()
            });
        match (key, clustering) {
            (Some(key), Some(clustering)) => {
                let row = entry.rows.entry(key).or_insert_with(|| Row {
                    clustering,
                    ..Default::default()
                });
                row.deleted_at = Some(row.deleted_at.map_or(ts, |d| d.max(ts)));
            }
            _ => entry.deleted_at = Some(entry.deleted_at.map_or(ts, |d| d.max(ts))),
        }
    }

    /// Removes every row.
    pub fn truncate(&mut self) {
        self.partitions.clear();
    }

    /// The live rows of the partitions `keys` (all partitions, in token order,
    /// when `None`).
    pub fn read(&self, keys: Option<&[Vec<Vec<u8>>]>) -> Vec<ReadRow> {
        let now = now_seconds();
        let mut out = Vec::new();
        let mut emit = |token: i64, p: &Partition| {
            for row in p.rows.values() {
                if let Some(r) = self.live_row(token, p, row, now) {
                    out.push(r);
                }
            }
        };
        match keys {
            Some(keys) => {
                let mut wanted: Vec<(i64, &Vec<Vec<u8>>)> =
                    keys.iter().map(|k| (Table::token(k), k)).collect();
                wanted.sort();
                wanted.dedup();
                for (token, key) in wanted {
                    if let Some(p) = self.partitions.get(&(token, key.clone())) {
                        emit(token, p);
                    }
                }
            }
            None => {
                for ((token, _), p) in &self.partitions {
                    emit(*token, p);
                }
            }
        }
        out
    }

    fn live_row(&self, token: i64, p: &Partition, row: &Row, now: i64) -> Option<ReadRow> {
        let deleted = match (p.deleted_at, row.deleted_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let n = self.def.columns.len();
        let mut values = vec![None; n];
        let mut meta = vec![None; n];
        let mut any = row.marker.is_some_and(|m| m.live(now, deleted));
        for (&i, cell) in &row.cells {
            if cell.value.is_some() && cell.at.live(now, deleted) {
                values[i] = cell.value.clone();
                meta[i] = Some(cell.at);
                any = true;
            }
        }
        if !any {
            return None;
        }
        for (&i, v) in self.def.partition_key.iter().zip(&p.key) {
            values[i] = Some(v.clone());
        }
        for (&i, v) in self.def.clustering.iter().zip(&row.clustering) {
            values[i] = Some(v.clone());
        }
        Some(ReadRow {
            token,
            values,
            meta,
        })
    }
}

/// On equal timestamps a tombstone wins, then the larger value.
fn wins_tie(new: &Option<Vec<u8>>, old: &Option<Vec<u8>>) -> bool {
    match (new, old) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a > b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table::new(TableDef {
            keyspace: "ks".into(),
            name: "t".into(),
            columns: vec![
                ColumnDef {
                    name: "k".into(),
                    ty: CqlType::Text,
                },
                ColumnDef {
                    name: "c".into(),
                    ty: CqlType::BigInt,
                },
                ColumnDef {
                    name: "v".into(),
                    ty: CqlType::Double,
                },
            ],
            partition_key: vec![0],
            clustering: vec![1],
        })
    }

    fn put(t: &mut Table, c: i64, v: f64, ts: i64) {
        t.write(RowWrite {
            partition: vec![b"a".to_vec()],
            clustering: vec![c.to_be_bytes().to_vec()],
            cells: vec![(2, Some(v.to_be_bytes().to_vec()))],
            marker: true,
            ts,
            ttl: 0,
        });
    }

    fn values(t: &Table) -> Vec<(i64, f64)> {
        t.read(None)
            .iter()
            .map(|r| {
                let c = i64::from_be_bytes(r.values[1].clone().unwrap().try_into().unwrap());
                let v = f64::from_be_bytes(r.values[2].clone().unwrap().try_into().unwrap());
                (c, v)
            })
            .collect()
    }

    #[test]
    fn last_write_wins_by_timestamp_not_by_arrival() {
        let mut t = table();
        put(&mut t, 1, 2.0, 20);
        put(&mut t, 1, 1.0, 10); // an older replay
        put(&mut t, -5, 3.0, 10);
        assert_eq!(
            values(&t),
            [(-5, 3.0), (1, 2.0)],
            "clustering order by value"
        );
    }

    #[test]
    fn deletes_hide_older_writes_only() {
        let mut t = table();
        put(&mut t, 1, 2.0, 20);
        t.delete(
            vec![b"a".to_vec()],
            Some(vec![1i64.to_be_bytes().to_vec()]),
            15,
        );
        assert_eq!(values(&t).len(), 1, "the write is newer than the delete");
        t.delete(vec![b"a".to_vec()], None, 30);
        assert!(values(&t).is_empty());
        put(&mut t, 1, 4.0, 31);
        assert_eq!(values(&t), [(1, 4.0)]);
    }
}
