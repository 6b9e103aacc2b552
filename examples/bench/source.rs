//! (s0) and (s): publishing a Cassandra table into Kafka. (s0) is the read
//! ceiling, the `scylla` driver alone scanning the whole table by token
//! ranges with the same splits, concurrency and page size as the source;
//! (s) is `CassandraSource`'s snapshot of the same table into a Kafka topic
//! (exactly-once: pages and positions in transactions), ending when the
//! snapshot is committed. Both count rows; after (s) is timed, its topic is
//! read back (`read_committed`) and checked to hold the table exactly:
//! every row once, with its values.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use scylla::client::session::Session;
use scylla::response::{PagingState, PagingStateResponse};

use crate::{process, BoxError, Measured};
use flumen::publisher::Publisher as _;
use flumen_cassandra::CassandraSource;
use flumen_testkit::{unique_name, DevStack, ReadRecord};

const SPLITS: u32 = 64;
const CONCURRENCY: usize = 8;
const PAGE_SIZE: i32 = 5_000;
const KEYSPACE: &str = "bench";
const TABLE: &str = "source_readings";

/// Creates `bench.source_readings` with `rows` rows (kept when it already
/// holds them: filling it takes a minute per million rows).
pub async fn prepare(session: &Session, rows: u64) -> Result<(), BoxError> {
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {KEYSPACE}.{TABLE} (device text, ts bigint, \
                 temp double, PRIMARY KEY (device, ts))"
            ),
            &[],
        )
        .await?;
    if scan(session).await?.0 == rows {
        return Ok(());
    }
    session
        .query_unpaged(format!("TRUNCATE {KEYSPACE}.{TABLE}"), &[])
        .await?;
    let insert = session
        .prepare(format!(
            "INSERT INTO {KEYSPACE}.{TABLE} (device, ts, temp) VALUES (?, ?, ?)"
        ))
        .await?;
    let started = Instant::now();
    let writes = (0..rows as i64).map(|n| {
        let (insert, session) = (&insert, session);
        async move { session.execute_unpaged(insert, row(n)).await.map(drop) }
    });
    let mut results = futures::stream::iter(writes).buffer_unordered(256);
    while let Some(result) = results.next().await {
        result?;
    }
    eprintln!(
        "filled {KEYSPACE}.{TABLE} with {rows} rows in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// Row `n` of the table: device `dev-{n % 10000}`, ts `n`, temp
/// `20 + (n % 100) / 10`.
fn row(n: i64) -> (String, i64, f64) {
    (
        format!("dev-{}", n % 10_000),
        n,
        20.0 + (n % 100) as f64 / 10.0,
    )
}

/// Scans the table by token ranges as the source does; returns rows and seconds.
async fn scan(session: &Session) -> Result<(u64, f64), BoxError> {
    let mut statement = session
        .prepare(format!(
            "SELECT device, ts, temp, WRITETIME(temp) FROM {KEYSPACE}.{TABLE} \
             WHERE token(device) > ? AND token(device) <= ?"
        ))
        .await?;
    statement.set_page_size(PAGE_SIZE);
    let statement = Arc::new(statement);
    let started = Instant::now();
    let ranges = split(SPLITS);
    let scans = ranges.into_iter().map(|(start, end)| {
        let statement = Arc::clone(&statement);
        async move {
            let mut rows = 0u64;
            let mut state = PagingState::start();
            loop {
                let (result, next) = session
                    .execute_single_page(&statement, (start, end), state)
                    .await?;
                let result = result.into_rows_result()?;
                for row in result.rows::<(String, i64, f64, i64)>()? {
                    row?;
                    rows += 1;
                }
                match next {
                    PagingStateResponse::HasMorePages { state: s } => state = s,
                    PagingStateResponse::NoMorePages => return Ok::<u64, BoxError>(rows),
                }
            }
        }
    });
    let mut total = 0;
    let mut scans = futures::stream::iter(scans).buffer_unordered(CONCURRENCY);
    while let Some(rows) = scans.next().await {
        total += rows?;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

/// The Murmur3 ring in `splits` equal ranges.
fn split(splits: u32) -> Vec<(i64, i64)> {
    let (min, width) = (
        i128::from(i64::MIN),
        i128::from(i64::MAX) - i128::from(i64::MIN),
    );
    let bound = |k: i128| i64::try_from(min + width * k / i128::from(splits)).unwrap_or(i64::MAX);
    (0..i128::from(splits))
        .map(|k| (bound(k), bound(k + 1)))
        .collect()
}

/// (s0): the driver alone; the second of two scans (the first warms
/// Cassandra's JIT and caches, which otherwise dominate the first).
pub async fn raw_scan(session: &Session) -> Result<Measured, BoxError> {
    scan(session).await?;
    let (cpu, servers) = (process::cpu_seconds(), process::servers_cpu_seconds());
    let (rows, seconds) = scan(session).await?;
    print_cpu("(s0)", process::cpu_seconds() - cpu, servers);
    Ok(Measured {
        name: "s0 cassandra scan (raw)",
        records: rows,
        output_rows: rows,
        seconds,
        cpu_seconds: process::cpu_seconds() - cpu,
        writes_only: true,
        ..Default::default()
    })
}

/// (s): the source's snapshot into Kafka; the second of two snapshots, as
/// (s0) is the second of two scans: the first warms the broker's JIT for
/// transactional produce (with a cold broker, its compiler threads took a
/// third of the machine's CPU during the snapshot).
pub async fn snapshot(stack: &DevStack, nodes: &str, rows: u64) -> Result<Measured, BoxError> {
    publish_snapshot(stack, nodes, rows, "(s) warm-up").await?;
    let (measured, topic) = publish_snapshot(stack, nodes, rows, "(s)").await?;
    let started = Instant::now();
    verify(stack, &topic, rows).await?;
    eprintln!(
        "(s) checked: '{topic}' holds every row of {KEYSPACE}.{TABLE} once, \
         with its values, as read_committed ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(measured)
}

/// Checks that `topic`, as a `read_committed` consumer sees it, holds the
/// rows [`prepare`] wrote ([`row`]), each once, keyed by their device.
async fn verify(stack: &DevStack, topic: &str, rows: u64) -> Result<(), BoxError> {
    let mut seen = vec![false; rows as usize];
    let check = move |record: ReadRecord| check_row(&record, &mut seen);
    let count = stack
        .visit_committed(topic, std::time::Duration::from_secs(600), check)
        .await?;
    if count as u64 != rows {
        return Err(format!("'{topic}' holds {count} records, the table {rows} rows").into());
    }
    Ok(())
}

/// One record of [`verify`]: a row of the table not seen before.
fn check_row(record: &ReadRecord, seen: &mut [bool]) -> Result<(), String> {
    let at = format!("partition {} offset {}", record.partition, record.offset);
    let json: serde_json::Value =
        serde_json::from_slice(record.value.as_deref().unwrap_or_default())
            .map_err(|e| format!("{at}: the value is not JSON: {e}"))?;
    let ts = json["ts"]
        .as_i64()
        .ok_or_else(|| format!("{at}: no integer ts in {json}"))?;
    let slot = usize::try_from(ts)
        .ok()
        .and_then(|n| seen.get_mut(n))
        .ok_or_else(|| format!("{at}: ts {ts} is not a row of the table"))?;
    if std::mem::replace(slot, true) {
        return Err(format!("{at}: row ts={ts} published twice"));
    }
    let (device, _, temp) = row(ts);
    let key = record.key.as_deref().map(String::from_utf8_lossy);
    if json["device"].as_str() != Some(device.as_str()) || key.as_deref() != Some(device.as_str()) {
        return Err(format!(
            "{at}: row ts={ts} has device {} and key {key:?}, expected {device}",
            json["device"]
        ));
    }
    if json["temp"].as_f64() != Some(temp) {
        return Err(format!(
            "{at}: row ts={ts} has temp {}, expected {temp}",
            json["temp"]
        ));
    }
    Ok(())
}

/// One snapshot of the table into a new topic; returns it with the topic.
async fn publish_snapshot(
    stack: &DevStack,
    nodes: &str,
    rows: u64,
    label: &str,
) -> Result<(Measured, String), BoxError> {
    let source = CassandraSource::table(&format!("{KEYSPACE}.{TABLE}"))
        .nodes(nodes)
        .splits(SPLITS)
        .concurrency(CONCURRENCY)
        .page_size(PAGE_SIZE)
        .replication_factor(1);
    let stats = source.stats();
    let (cpu, servers) = (process::cpu_seconds(), process::servers_cpu_seconds());
    // Timed from the start of the snapshot's scan, as (b)-(e) are from the
    // first record processed: creating the topics, joining the publishers'
    // group and opening the transactional producer are shown apart.
    let started = Instant::now();
    let watched = Arc::clone(&stats);
    let first_row = tokio::spawn(async move {
        while watched.ranges().1 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Instant::now()
    });
    let group = unique_name("bench-source");
    source
        .publish(stack.brokers(), &group, std::future::pending())
        .await?;
    let first = first_row.await?;
    let seconds = first.elapsed().as_secs_f64();
    eprintln!(
        "{label} started scanning {:.2} s after publish() was called",
        (first - started).as_secs_f64()
    );
    print_cpu(label, process::cpu_seconds() - cpu, servers);
    if stats.rows() != rows {
        return Err(format!("the snapshot published {} rows of {rows}", stats.rows()).into());
    }
    let measured = Measured {
        name: "s cassandra source",
        records: stats.rows(),
        output_rows: stats.rows(),
        seconds,
        cpu_seconds: process::cpu_seconds() - cpu,
        peak_rss_bytes: process::peak_rss(),
        writes_only: true,
        ..Default::default()
    };
    Ok((measured, source.topic_name(&group)))
}

/// Prints the CPU seconds `what` took in this process and in the servers
/// started by it (since `servers_before`): on a machine they share, the
/// snapshot's rows/s is bound by their sum, not by the scan alone.
fn print_cpu(what: &str, own: f64, servers_before: process::Servers) {
    let servers = process::servers_cpu_seconds() - servers_before;
    eprintln!(
        "{what} CPU: cassandra {:.1} s, kafka {:.1} s, this process {own:.1} s",
        servers.cassandra, servers.kafka
    );
}
