//! Reading the keys of a batch that share a partition in one request. When
//! the lookup key is the table's whole primary key and the table has
//! clustering columns, several keys may name rows of one partition: those
//! are read with `WHERE <partition key> = ? AND (<clustering>) IN ?`, one
//! partition read instead of one per key, at most [`MAX_IN`] keys a
//! request. A key alone in its partition is read alone.

use std::collections::HashMap;

use scylla::value::{CqlValue, MaybeUnset};
use serde_json::Value;

use crate::convert::Bind;
use crate::schema::{qualified_ident, quote_ident};
use crate::source::json::to_json;
use crate::source::table::{Column, Table};

/// Keys per `IN` list at most.
pub(super) const MAX_IN: usize = 100;

/// How the keys of one partition are read together.
#[derive(Debug, Clone)]
pub(super) struct Grouping {
    /// The statement: clustering columns, then the looked-up ones.
    pub(super) cql: String,
    /// Where the partition key columns are among a key's values (in the
    /// statement's order).
    partition: Vec<usize>,
    /// Where the clustering columns are among a key's values (in the
    /// table's clustering order).
    clustering: Vec<usize>,
}

/// One read of a batch's keys (indices into its keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Request {
    /// One key, with the per-key statement.
    One(usize),
    /// Keys of one partition, with the grouped statement.
    Partition(Vec<usize>),
}

impl Grouping {
    /// The grouping of a lookup by `keys` (in the lookup's order) adding
    /// `selected`; `None` unless the key is the whole primary key of a table
    /// with clustering columns.
    pub(super) fn of(table: &Table, keys: &[Column], selected: &[Column]) -> Option<Self> {
        let clustering_columns = table.columns.iter().filter(|c| c.kind == "clustering");
        let mut clustering: Vec<usize> = keys
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind == "clustering")
            .map(|(i, _)| i)
            .collect();
        if clustering.is_empty() || clustering.len() != clustering_columns.count() {
            return None;
        }
        clustering.sort_by_key(|&i| keys[i].position);
        let partition: Vec<usize> = keys
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind == "partition_key")
            .map(|(i, _)| i)
            .collect();
        let names = |indices: &[usize]| -> Vec<String> {
            indices
                .iter()
                .map(|&i| quote_ident(&keys[i].name))
                .collect()
        };
        let conditions: Vec<String> = names(&partition)
            .into_iter()
            .map(|c| format!("{c} = ?"))
            .collect();
        let clustered = names(&clustering);
        let selected: Vec<String> = selected.iter().map(|c| quote_ident(&c.name)).collect();
        let columns: Vec<String> = clustered.iter().cloned().chain(selected).collect();
        // One column is `c IN ?` (a list of values); `(c) IN ?` would be a
        // list of tuples of one.
        let relation = match clustered.as_slice() {
            [one] => one.clone(),
            many => format!("({})", many.join(", ")),
        };
        let cql = format!(
            "SELECT {} FROM {} WHERE {} AND {relation} IN ?",
            columns.join(", "),
            qualified_ident(&table.keyspace, &table.name),
            conditions.join(" AND "),
        );
        Some(Grouping {
            cql,
            partition,
            clustering,
        })
    }

    /// The reads of `keys`: the keys of a partition that has more than one
    /// together (in chunks of [`MAX_IN`]), the others alone; partitions in
    /// the order of their first key.
    pub(super) fn requests(&self, keys: &[Vec<Bind>]) -> Vec<Request> {
        let mut order: Vec<Vec<usize>> = Vec::new();
        let mut group_of: HashMap<String, usize> = HashMap::new();
        for (k, key) in keys.iter().enumerate() {
            let id = identity(key, &self.partition);
            let group = *group_of.entry(id).or_insert_with(|| {
                order.push(Vec::new());
                order.len() - 1
            });
            order[group].push(k);
        }
        order
            .into_iter()
            .flat_map(|keys| {
                keys.chunks(MAX_IN)
                    .map(|chunk| match chunk {
                        [one] => Request::One(*one),
                        many => Request::Partition(many.to_vec()),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The bound values of a grouped read of `indices` of `keys`: the
    /// partition key, then the list of clustering values (tuples when more
    /// than one column).
    pub(super) fn values(&self, keys: &[Vec<Bind>], indices: &[usize]) -> Vec<Bind> {
        let Some(&first) = indices.first() else {
            return Vec::new();
        };
        let mut values: Vec<Bind> = self
            .partition
            .iter()
            .map(|&c| keys[first][c].clone())
            .collect();
        let clustering = indices.iter().map(|&k| {
            let mut columns = self.clustering.iter().map(|&c| value(&keys[k][c]));
            match self.clustering.len() {
                1 => columns.next().flatten().unwrap_or(CqlValue::Empty),
                _ => CqlValue::Tuple(columns.collect()),
            }
        });
        values.push(MaybeUnset::Set(Some(CqlValue::List(clustering.collect()))));
        values
    }

    /// The clustering values of a key, to match the rows a grouped read
    /// returns ([`Grouping::row_identity`]).
    pub(super) fn key_identity(&self, key: &[Bind]) -> String {
        identity(key, &self.clustering)
    }

    /// The clustering values of a row a grouped read returned (they lead
    /// its columns).
    pub(super) fn row_identity(&self, columns: &[Option<CqlValue>]) -> String {
        let values: Vec<Value> = columns
            .iter()
            .take(self.clustering.len())
            .map(|v| to_json(v.as_ref()))
            .collect();
        Value::Array(values).to_string()
    }

    /// How many leading columns of a returned row are clustering columns.
    pub(super) fn clustering_len(&self) -> usize {
        self.clustering.len()
    }
}

fn value(bind: &Bind) -> Option<CqlValue> {
    match bind {
        MaybeUnset::Set(value) => value.clone(),
        MaybeUnset::Unset => None,
    }
}

/// The values of `columns` of `key`, as JSON text (equal keys, equal text).
fn identity(key: &[Bind], columns: &[usize]) -> String {
    let values: Vec<Value> = columns
        .iter()
        .map(|&c| to_json(value(&key[c]).as_ref()))
        .collect();
    Value::Array(values).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, kind: &str, position: i32) -> Column {
        crate::source::table::column(name, kind, position, "text")
    }

    fn orders() -> Table {
        Table {
            keyspace: "ks".into(),
            name: "orders".into(),
            columns: vec![
                column("customer", "partition_key", 0),
                column("day", "clustering", 0),
                column("order_id", "clustering", 1),
                column("status", "regular", -1),
            ],
        }
    }

    fn text(s: &str) -> Bind {
        MaybeUnset::Set(Some(CqlValue::Text(s.into())))
    }

    #[test]
    fn only_a_whole_primary_key_with_clustering_columns_is_grouped() {
        let table = orders();
        let cols = |names: &[&str]| -> Vec<Column> {
            let find = |n: &&str| table.columns.iter().find(|c| c.name == *n).cloned();
            names.iter().filter_map(find).collect()
        };
        let status = cols(&["status"]);
        assert!(Grouping::of(&table, &cols(&["customer", "day"]), &status).is_none());
        // Key columns in any order; the IN list in clustering order.
        let grouping = Grouping::of(&table, &cols(&["order_id", "customer", "day"]), &status);
        let grouping = grouping.unwrap_or_else(|| panic!("grouped"));
        assert_eq!(
            grouping.cql,
            "SELECT \"day\", \"order_id\", \"status\" FROM \"ks\".\"orders\" \
             WHERE \"customer\" = ? AND (\"day\", \"order_id\") IN ?"
        );
        let keys = vec![
            vec![text("o1"), text("alice"), text("d1")],
            vec![text("o2"), text("bob"), text("d1")],
            vec![text("o3"), text("alice"), text("d2")],
        ];
        let requests = grouping.requests(&keys);
        assert_eq!(requests, [Request::Partition(vec![0, 2]), Request::One(1)]);
        let mut statuses = orders();
        statuses.columns.remove(1);
        let key = [statuses.columns[0].clone(), statuses.columns[1].clone()];
        let single = Grouping::of(&statuses, &key, &[]).map(|g| g.cql);
        let single = single.unwrap_or_default();
        assert!(
            single.ends_with("WHERE \"customer\" = ? AND \"order_id\" IN ?"),
            "one clustering column takes a list of values: {single}"
        );
        let values = grouping.values(&keys, &[0, 2]);
        let tuple = |d: &str, o: &str| {
            CqlValue::Tuple(vec![
                Some(CqlValue::Text(d.into())),
                Some(CqlValue::Text(o.into())),
            ])
        };
        let values: Vec<Option<CqlValue>> = values.iter().map(value).collect();
        let list = CqlValue::List(vec![tuple("d1", "o1"), tuple("d2", "o3")]);
        assert_eq!(values, [Some(CqlValue::Text("alice".into())), Some(list)]);
        let row = [
            Some(CqlValue::Text("d2".into())),
            Some(CqlValue::Text("o3".into())),
        ];
        assert_eq!(grouping.row_identity(&row), grouping.key_identity(&keys[2]));
        assert_ne!(grouping.row_identity(&row), grouping.key_identity(&keys[0]));
    }

    #[test]
    fn a_partition_with_more_keys_than_an_in_list_takes_several_reads() {
        let table = orders();
        let keys: Vec<Column> = table.columns[..3].to_vec();
        let grouping = Grouping::of(&table, &keys, &[]).unwrap_or_else(|| panic!("grouped"));
        let keys: Vec<Vec<Bind>> = (0..MAX_IN + 1)
            .map(|n| vec![text("alice"), text("d"), text(&n.to_string())])
            .collect();
        let requests = grouping.requests(&keys);
        let sizes: Vec<usize> = requests
            .iter()
            .map(|r| match r {
                Request::One(_) => 1,
                Request::Partition(keys) => keys.len(),
            })
            .collect();
        assert_eq!(sizes, [MAX_IN, 1]);
    }
}
