//! The lookup join: (l) is (c) with every reading looked up in
//! `bench.devices` by its device before the window, the cache warm after the
//! first batch; (l1) the same with no cache, so every batch reads its
//! distinct devices from Cassandra; (l0) the driver alone reading devices by
//! key, as many at a time as the lookup (256): the read ceiling for (l1).

use std::time::Instant;

use flumen::lookup::LookupCache;
use flumen::prelude::*;
use flumen_cassandra::CassandraLookup;
use futures::StreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::{process, BoxError, Measured};

/// Requests in flight, as `CassandraLookup::max_in_flight`'s default.
const IN_FLIGHT: usize = 256;
/// Reads (l0) times.
const RAW_READS: u64 = 200_000;

/// Creates `bench.devices (device_id text PRIMARY KEY, site text, max_temp
/// double)` with `dev-0` .. `dev-{devices - 1}`.
pub async fn prepare(session: &Session, devices: u64) -> Result<(), BoxError> {
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS bench.devices \
             (device_id text PRIMARY KEY, site text, max_temp double)",
            &[],
        )
        .await?;
    let insert = session
        .prepare("INSERT INTO bench.devices (device_id, site, max_temp) VALUES (?, ?, ?)")
        .await?;
    let writes = futures::stream::iter(0..devices)
        .map(|n| {
            let insert = &insert;
            let values = (
                format!("dev-{n}"),
                format!("site-{}", n % 10),
                20.0 + (n % 10) as f64,
            );
            async move { session.execute_unpaged(insert, values).await }
        })
        .buffer_unordered(IN_FLIGHT);
    let results: Vec<_> = writes.collect().await;
    for result in results {
        result?;
    }
    Ok(())
}

/// The frame's readings with their device's site and max_temp.
pub fn enriched(
    frame: &StreamingDataFrame,
    cassandra: &str,
    cache: LookupCache,
) -> StreamingDataFrame {
    frame.lookup(
        CassandraLookup::table("bench.devices")
            .nodes(cassandra)
            .on([(col("device"), "device_id")])
            .columns(["site", "max_temp"])
            .cache(cache),
    )
}

/// Reads `RAW_READS` devices by key (round robin over `devices`).
async fn read_all(
    session: &Session,
    select: &PreparedStatement,
    devices: u64,
) -> Result<(), BoxError> {
    let mut reads = futures::stream::iter(0..RAW_READS)
        .map(|i| async move {
            let device = format!("dev-{}", i % devices.max(1));
            session.execute_unpaged(select, (device,)).await
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(result) = reads.next().await {
        result?;
    }
    Ok(())
}

/// (l0): reads/s of the driver alone; a first pass warms the node up.
pub async fn raw_reads(session: &Session, devices: u64) -> Result<Measured, BoxError> {
    let select = session
        .prepare("SELECT site, max_temp FROM bench.devices WHERE device_id = ? LIMIT 1")
        .await?;
    read_all(session, &select, devices).await?;
    let cpu = process::cpu_seconds();
    let started = Instant::now();
    read_all(session, &select, devices).await?;
    Ok(Measured {
        name: "l0 raw cassandra read",
        records: RAW_READS,
        output_rows: RAW_READS,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: process::cpu_seconds() - cpu,
        writes_only: true,
        ..Measured::default()
    })
}
