//! The system tables drivers read: `system.local`, `system.peers` and the
//! `system_schema` tables, kept in step with CREATE / DROP.

use super::exec::Database;
use super::store::{ColumnDef, RowWrite, TableDef};
use super::types::{collection, CqlType};

/// The one node's host id.
pub const HOST_ID: [u8; 16] = *b"flumen-cql-test!";
/// The one node's data center.
pub const DATACENTER: &str = "datacenter1";

fn def(keyspace: &str, name: &str, columns: &[(&str, &str)], pk: usize, ck: usize) -> TableDef {
    TableDef {
        keyspace: keyspace.into(),
        name: name.into(),
        columns: columns
            .iter()
            .map(|(n, t)| ColumnDef {
                name: (*n).into(),
                ty: CqlType::parse(t).unwrap_or(CqlType::Blob),
            })
            .collect(),
        partition_key: (0..pk).collect(),
        clustering: (pk..pk + ck).collect(),
    }
}

/// The system tables, empty.
pub fn tables() -> Vec<TableDef> {
    vec![
        def(
            "system",
            "local",
            &[
                ("key", "text"),
                ("host_id", "uuid"),
                ("rpc_address", "inet"),
                ("broadcast_address", "inet"),
                ("listen_address", "inet"),
                ("data_center", "text"),
                ("rack", "text"),
                ("tokens", "set<text>"),
                ("cluster_name", "text"),
                ("schema_version", "uuid"),
                ("release_version", "text"),
                ("cql_version", "text"),
                ("native_protocol_version", "text"),
                ("partitioner", "text"),
            ],
            1,
            0,
        ),
        def(
            "system",
            "peers",
            &[
                ("peer", "inet"),
                ("host_id", "uuid"),
                ("rpc_address", "inet"),
                ("data_center", "text"),
                ("rack", "text"),
                ("tokens", "set<text>"),
                ("schema_version", "uuid"),
                ("release_version", "text"),
            ],
            1,
            0,
        ),
        def(
            "system_schema",
            "keyspaces",
            &[
                ("keyspace_name", "text"),
                ("durable_writes", "boolean"),
                ("replication", "map<text, text>"),
            ],
            1,
            0,
        ),
        def(
            "system_schema",
            "tables",
            &[
                ("keyspace_name", "text"),
                ("table_name", "text"),
                ("id", "uuid"),
                ("comment", "text"),
            ],
            1,
            1,
        ),
        def(
            "system_schema",
            "columns",
            &[
                ("keyspace_name", "text"),
                ("table_name", "text"),
                ("column_name", "text"),
                ("clustering_order", "text"),
                ("kind", "text"),
                ("position", "int"),
                ("type", "text"),
            ],
            1,
            2,
        ),
        def(
            "system_schema",
            "types",
            &[
                ("keyspace_name", "text"),
                ("type_name", "text"),
                ("field_names", "list<text>"),
                ("field_types", "list<text>"),
            ],
            1,
            1,
        ),
        def(
            "system_schema",
            "views",
            &[
                ("keyspace_name", "text"),
                ("view_name", "text"),
                ("base_table_name", "text"),
            ],
            1,
            1,
        ),
    ]
}

/// The replication of the system keyspaces.
pub fn local_strategy() -> Vec<(String, String)> {
    vec![(
        "class".into(),
        "org.apache.cassandra.locator.LocalStrategy".into(),
    )]
}

fn text(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

/// Writes `cells` (by column name) into `keyspace.table` as one row.
fn put(db: &mut Database, keyspace: &str, table: &str, cells: &[(&str, Option<Vec<u8>>)]) {
    let Some(t) = db.table_mut(keyspace, table) else {
        return;
    };
    let def = t.def.clone();
    let value = |c: usize| {
        cells
            .iter()
            .find(|(n, _)| *n == def.columns[c].name)
            .and_then(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let write = RowWrite {
        partition: def.partition_key.iter().map(|&c| value(c)).collect(),
        clustering: def.clustering.iter().map(|&c| value(c)).collect(),
        cells: cells
            .iter()
            .filter_map(|(n, v)| def.index_of(n).map(|i| (i, v.clone())))
            .filter(|(i, _)| !def.is_key(*i))
            .collect(),
        marker: true,
        ts: super::store::now_micros(),
        ttl: 0,
    };
    t.write(write);
}

/// Fills `system.local` for one node owning the whole ring.
pub fn fill_local(db: &mut Database) {
    let localhost = Some(vec![127, 0, 0, 1]);
    put(
        db,
        "system",
        "local",
        &[
            ("key", text("local")),
            ("host_id", Some(HOST_ID.to_vec())),
            ("rpc_address", localhost.clone()),
            ("broadcast_address", localhost.clone()),
            ("listen_address", localhost),
            ("data_center", text(DATACENTER)),
            ("rack", text("rack1")),
            (
                "tokens",
                Some(collection(&[i64::MIN.to_string().into_bytes()])),
            ),
            ("cluster_name", text("flumen-cql-test-server")),
            ("schema_version", Some(b"flumen-schema-v1".to_vec())),
            ("release_version", text("4.0.11")),
            ("cql_version", text("3.4.5")),
            ("native_protocol_version", text("4")),
            (
                "partitioner",
                text("org.apache.cassandra.dht.Murmur3Partitioner"),
            ),
        ],
    );
}

/// Adds a keyspace to `system_schema.keyspaces`.
pub fn publish_keyspace(db: &mut Database, keyspace: &str, replication: &[(String, String)]) {
    let mut map = (replication.len() as i32).to_be_bytes().to_vec();
    for (k, v) in replication {
        for s in [k, v] {
            map.extend((s.len() as i32).to_be_bytes());
            map.extend(s.as_bytes());
        }
    }
    put(
        db,
        "system_schema",
        "keyspaces",
        &[
            ("keyspace_name", text(keyspace)),
            ("durable_writes", Some(vec![1])),
            ("replication", Some(map)),
        ],
    );
}

/// Removes a keyspace from `system_schema.keyspaces`.
pub fn unpublish_keyspace(db: &mut Database, keyspace: &str) {
    if let Some(t) = db.table_mut("system_schema", "keyspaces") {
        t.delete(
            vec![keyspace.as_bytes().to_vec()],
            None,
            super::store::now_micros(),
        );
    }
}

/// Adds a table and its columns to `system_schema`.
pub fn publish_table(db: &mut Database, def: &TableDef) {
    put(
        db,
        "system_schema",
        "tables",
        &[
            ("keyspace_name", text(&def.keyspace)),
            ("table_name", text(&def.name)),
            ("comment", text("")),
        ],
    );
    for (i, column) in def.columns.iter().enumerate() {
        let (kind, position) = def.kind_of(i);
        put(
            db,
            "system_schema",
            "columns",
            &[
                ("keyspace_name", text(&def.keyspace)),
                ("table_name", text(&def.name)),
                ("column_name", text(&column.name)),
                (
                    "clustering_order",
                    text(if kind == "clustering" { "asc" } else { "none" }),
                ),
                ("kind", text(kind)),
                ("position", Some(position.to_be_bytes().to_vec())),
                ("type", text(&column.ty.name())),
            ],
        );
    }
}

/// Removes a table and its columns from `system_schema`.
pub fn unpublish_table(db: &mut Database, keyspace: &str, table: &str) {
    for name in ["tables", "columns"] {
        let Some(t) = db.table_mut("system_schema", name) else {
            continue;
        };
        // Rows of this table only: a row delete per clustering prefix is not
        // supported, so the keyspace partition is rewritten without them.
        let def = t.def.clone();
        let keep: Vec<_> = t
            .read(Some(&[vec![keyspace.as_bytes().to_vec()]]))
            .into_iter()
            .filter(|r| r.values[1].as_deref() != Some(table.as_bytes()))
            .collect();
        t.delete(
            vec![keyspace.as_bytes().to_vec()],
            None,
            super::store::now_micros(),
        );
        let ts = super::store::now_micros() + 1;
        for r in keep {
            t.write(RowWrite {
                partition: def
                    .partition_key
                    .iter()
                    .map(|&c| r.values[c].clone().unwrap_or_default())
                    .collect(),
                clustering: def
                    .clustering
                    .iter()
                    .map(|&c| r.values[c].clone().unwrap_or_default())
                    .collect(),
                cells: (0..def.columns.len())
                    .filter(|&i| !def.is_key(i))
                    .map(|i| (i, r.values[i].clone()))
                    .collect(),
                marker: true,
                ts,
                ttl: 0,
            });
        }
    }
}
