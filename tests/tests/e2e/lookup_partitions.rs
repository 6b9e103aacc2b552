//! Lookups keyed by a whole primary key with clustering columns: the keys
//! of a batch that share a partition are read together (`IN` on the
//! clustering columns, one column or a tuple of two), and every event
//! still gets exactly its own row, or nulls when its row is missing.

use std::collections::BTreeMap;

use crate::common::{builder, start, DEADLINE};
use arrow::datatypes::{DataType, Field, Schema};
use flumen::prelude::*;
use flumen_cassandra::CassandraLookup;
use flumen_testkit::topics::TestRecord;
use flumen_testkit::{unique_name, DevCassandra, DevStack};
use serde_json::{json, Value};

const CUSTOMERS: i64 = 20;
const ORDERS: i64 = 12;

/// Whether order `o` has a status row, and a line row.
fn has_status(o: i64) -> bool {
    o % 4 != 3
}
fn has_line(o: i64) -> bool {
    o % 5 != 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_one_partition_read_together_still_get_their_own_rows() {
    let stack = DevStack::start().expect("dev stack");
    let cassandra = DevCassandra::start().expect("cassandra");
    let session = cassandra.session().await.expect("session");
    let keyspace = cassandra
        .create_keyspace(&session, "lookup_partitions")
        .await
        .expect("keyspace");
    let statuses = format!("{keyspace}.statuses");
    let lines = format!("{keyspace}.lines");
    for create in [
        format!("CREATE TABLE {statuses} (customer text, order_id int, status text, PRIMARY KEY (customer, order_id))"),
        format!("CREATE TABLE {lines} (customer text, day text, order_id int, total double, PRIMARY KEY (customer, day, order_id))"),
    ] {
        session.query_unpaged(create, &[]).await.expect("create");
    }
    let mut events = Vec::new();
    let mut expected = BTreeMap::new();
    for c in 0..CUSTOMERS {
        for o in 0..ORDERS {
            let (customer, day) = (format!("c-{c}"), format!("d-{}", o % 3));
            let (status, total) = (format!("s-{c}-{o}"), (c * 100 + o) as f64);
            if has_status(o) {
                let insert =
                    format!("INSERT INTO {statuses} (customer, order_id, status) VALUES (?, ?, ?)");
                let values = (&customer, o as i32, &status);
                session.query_unpaged(insert, values).await.expect("insert");
            }
            if has_line(o) {
                let insert = format!(
                    "INSERT INTO {lines} (customer, day, order_id, total) VALUES (?, ?, ?, ?)"
                );
                let values = (&customer, &day, o as i32, total);
                session.query_unpaged(insert, values).await.expect("insert");
            }
            let value = json!({"customer": customer, "day": day, "order_id": o});
            events.push(TestRecord::new(&customer, value.to_string()));
            let row = json!({
                "status": has_status(o).then_some(status),
                "total": has_line(o).then_some(total),
            });
            expected.insert((customer, o), row);
        }
    }

    let (input, output) = (unique_name("orders"), unique_name("enriched"));
    stack.create_topic(&input, 2).await.expect("input");
    stack.create_topic(&output, 2).await.expect("output");
    let app = builder(&stack, &unique_name("g")).build().expect("app");
    let schema = Schema::new(vec![
        Field::new("customer", DataType::Utf8, false),
        Field::new("day", DataType::Utf8, false),
        Field::new("order_id", DataType::Int64, false),
    ]);
    let by_order = CassandraLookup::table(&statuses)
        .nodes(cassandra.nodes())
        .on([(col("order_id"), "order_id"), (col("customer"), "customer")]);
    let by_line = CassandraLookup::table(&lines).nodes(cassandra.nodes()).on([
        (col("customer"), "customer"),
        (col("order_id"), "order_id"),
        (col("day"), "day"),
    ]);
    app.dataframe(Topic::json(&input).schema(schema))
        .expect("frame")
        .lookup(by_order)
        .lookup(by_line)
        .to_topic(Topic::json(&output));
    let running = start(app);
    stack.produce(&input, events).await.expect("produce");
    let count = (CUSTOMERS * ORDERS) as usize;
    stack
        .wait_for_count(&output, count, DEADLINE)
        .await
        .expect("enriched");
    running.stop().await.expect("run");

    let mut seen = BTreeMap::new();
    for record in stack.read_all(&output, DEADLINE).await.expect("read") {
        let json = record.json();
        let key = (
            json["customer"].as_str().unwrap_or_default().to_string(),
            json["order_id"].as_i64().unwrap_or_default(),
        );
        let row: Value = json!({"status": json["status"], "total": json["total"]});
        assert!(seen.insert(key.clone(), row).is_none(), "{key:?} twice");
    }
    assert_eq!(seen, expected);
}
