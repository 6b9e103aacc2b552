//! A CQL native protocol v4 test server that the real `scylla` driver talks to
//! over TCP, for tests and the quickstart (no Cassandra or ScyllaDB can be
//! installed on the development machines).
//!
//! It speaks OPTIONS, STARTUP, REGISTER, QUERY, PREPARE (bind-marker and result
//! metadata), EXECUTE and BATCH; serves `system.local`, `system.peers` and the
//! `system_schema` tables drivers read for topology and schema; and keeps an
//! in-memory store: CREATE / DROP KEYSPACE and TABLE (IF [NOT] EXISTS), INSERT /
//! UPDATE with `USING TTL` and `USING TIMESTAMP` (last write wins per cell by
//! write timestamp), DELETE of rows and partitions, TRUNCATE, and SELECT by
//! partition key (`=`, `IN`), clustering ranges, `token()` ranges and full scans
//! in token order (Murmur3), with paging, `LIMIT`, `count(*)`, `writetime()`
//! and `ttl()`. [`Fault`]s can be injected into data requests: latency, write
//! timeouts, overloaded, unavailable, dropped connections.
//!
//! [`CqlTestServer::start_tls`] serves the same over TLS with a fresh
//! self-signed certificate.
//!
//! Not supported: authentication, compression, lightweight transactions,
//! counters' semantics, secondary indexes, user-defined types.

mod exec;
mod parse;
mod server;
mod store;
mod system;
mod tls;
mod types;

pub use server::{CqlTestServer, Fault, FaultScope};
pub use system::DATACENTER;
pub use tls::TestCertificate;
