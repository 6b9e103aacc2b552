//! End-to-end tests on the dev stack: real Apache Kafka and Apache Cassandra
//! (one of each shared by the whole binary, started on first use; tests keep
//! apart by topic, group and keyspace), real RocksDB on disk.
//!
//! One test binary for all of them: each binary links the whole engine (DataFusion,
//! librdkafka, RocksDB), so one link instead of one per file saves minutes and gigabytes.
//! Tests that stop, kill or cut off a server start one of their own.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers fail loudly

mod common;

mod bad_input;
mod cassandra_options;
mod cassandra_sink;
mod cassandra_source;
mod cql_server;
mod deduplicate;
mod exactly_once;
mod faults;
mod lookup;
mod lookup_partitions;
mod metrics;
mod outage;
mod restart;
mod stateless;
mod window_restart;
mod windows;
