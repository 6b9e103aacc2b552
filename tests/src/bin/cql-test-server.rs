//! `cql-test-server --port P`: the testkit's CQL test server as a process, for
//! trying the Cassandra sink or a driver by hand. Serves until killed.

use std::net::SocketAddr;

use clap::Parser;
use flumen_testkit::cql::CqlTestServer;

/// A CQL native protocol v4 server over an in-memory store (for tests).
#[derive(Parser)]
struct Args {
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 9042)]
    port: u16,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let server = CqlTestServer::start_on(SocketAddr::from(([127, 0, 0, 1], args.port)))?;
    println!("cql-test-server listening on {}", server.node());
    loop {
        std::thread::park();
    }
}
