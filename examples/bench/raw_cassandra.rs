//! (e0): the raw Cassandra write ceiling: the `scylla` driver alone writing
//! the rows (e) writes (the workload's tumbling 10 s windows per device), as
//! the same prepared upserts `USING TIMESTAMP`, with the same number of
//! requests in flight as the sink (`max_in_flight`, 256). The rows are written
//! twice and the second pass is timed: the first warms the node's JIT up, as
//! the scenarios before (e) do for (e).

use std::collections::BTreeMap;
use std::time::Instant;

use futures::StreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use crate::{process, BoxError, Measured};
use flumen_testkit::sensor::SensorWorkload;

/// Requests in flight, as `CassandraSink::max_in_flight`'s default.
const IN_FLIGHT: usize = 256;

/// One window row: device, start, end, count, sum, min, max, mean.
type WindowRow = (String, CqlTimestamp, CqlTimestamp, i64, f64, f64, f64, f64);

/// The closed tumbling 10 s windows of `temp >= 0` readings per device, as
/// (e) emits them with `final_()` (the last window of each partition's
/// stream time stays open; its rows are left out here too, approximately:
/// windows ending after the last event time).
fn window_rows(workload: &SensorWorkload) -> Vec<WindowRow> {
    const SIZE: i64 = 10_000;
    let mut windows: BTreeMap<(String, i64), (i64, f64, f64, f64)> = BTreeMap::new();
    let mut last_ts = i64::MIN;
    for r in workload.readings() {
        last_ts = last_ts.max(r.ts);
        if r.temp < 0.0 {
            continue;
        }
        let start = r.ts - r.ts.rem_euclid(SIZE);
        let w = windows
            .entry((r.device, start))
            .or_insert((0, 0.0, f64::MAX, f64::MIN));
        w.0 += 1;
        w.1 += r.temp;
        w.2 = w.2.min(r.temp);
        w.3 = w.3.max(r.temp);
    }
    windows
        .into_iter()
        .filter(|((_, start), _)| start + SIZE <= last_ts)
        .map(|((device, start), (count, sum, min, max))| {
            let (s, e) = (CqlTimestamp(start), CqlTimestamp(start + SIZE));
            (device, s, e, count, sum, min, max, sum / count as f64)
        })
        .collect()
}

/// Writes every row, `IN_FLIGHT` requests at a time.
async fn write_all(
    session: &Session,
    insert: &PreparedStatement,
    rows: &[WindowRow],
) -> Result<(), BoxError> {
    let mut writes = futures::stream::iter(rows.iter().enumerate())
        .map(|(i, row)| async move {
            let values = (
                &row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, i as i64,
            );
            session.execute_unpaged(insert, values).await
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(result) = writes.next().await {
        result?;
    }
    Ok(())
}

/// Writes the window rows of `workload` into `keyspace.device_temp_raw`
/// (created by the caller) and measures rows/s.
pub async fn raw_cassandra_write(
    session: &Session,
    keyspace: &str,
    workload: &SensorWorkload,
) -> Result<Measured, BoxError> {
    let rows = window_rows(workload);
    let mut insert = session
        .prepare(format!(
            "INSERT INTO {keyspace}.device_temp_raw (device, window_start, window_end, count, \
             sum, min, max, mean) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
        ))
        .await?;
    insert.set_is_idempotent(true);
    write_all(session, &insert, &rows).await?;
    let cpu = process::cpu_seconds();
    let started = Instant::now();
    write_all(session, &insert, &rows).await?;
    Ok(Measured {
        name: "e0 raw cassandra write",
        records: rows.len() as u64,
        output_rows: rows.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: process::cpu_seconds() - cpu,
        writes_only: true,
        ..Measured::default()
    })
}
