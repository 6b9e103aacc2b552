//! [`DevCassandra`]: the Cassandra cluster a test or example writes to.

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use crate::stack::{self, CassandraOptions, CassandraServer};
use crate::{unique_name, TestkitError};

/// A Cassandra cluster for tests and examples: the node this process shares
/// among its tests ([`DevCassandra::start`]), one of its own
/// ([`DevCassandra::start_dedicated`]), or an external cluster named by
/// `FLUMEN_CASSANDRA_NODES`. Tests keep apart by keyspace
/// ([`DevCassandra::create_keyspace`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), flumen_testkit::TestkitError> {
/// let cassandra = flumen_testkit::DevCassandra::start()?;
/// let session = cassandra.session().await?;
/// let keyspace = cassandra.create_keyspace(&session, "demo").await?;
/// println!("{keyspace} on {}", cassandra.nodes());
/// # Ok(())
/// # }
/// ```
pub struct DevCassandra {
    nodes: String,
    server: Option<Arc<CassandraServer>>,
}

impl DevCassandra {
    /// Points at an existing cluster (`host:port[,host:port...]`).
    pub fn connect(nodes: impl Into<String>) -> DevCassandra {
        DevCassandra {
            nodes: nodes.into(),
            server: None,
        }
    }

    /// The node this process shares (started on first use, see
    /// [`stack::shared_cassandra`]), or `FLUMEN_CASSANDRA_NODES` when set.
    pub fn start() -> Result<DevCassandra, TestkitError> {
        if let Some(nodes) = external_nodes() {
            return Ok(DevCassandra::connect(nodes));
        }
        let server = stack::shared_cassandra()?;
        Ok(DevCassandra {
            nodes: server.node(),
            server: Some(server),
        })
    }

    /// A node of this test's own, for tests that stop, kill or pause it, or
    /// that need other settings (TLS). Ignores `FLUMEN_CASSANDRA_NODES`.
    pub fn start_dedicated(options: &CassandraOptions) -> Result<DevCassandra, TestkitError> {
        let started = std::time::Instant::now();
        let server = CassandraServer::start(options)?;
        eprintln!(
            "flumen-testkit: dedicated Cassandra at {} in {:.1?} (log: {})",
            server.node(),
            started.elapsed(),
            server.log_path().display()
        );
        Ok(DevCassandra {
            nodes: server.node(),
            server: Some(Arc::new(server)),
        })
    }

    /// The contact points, `host:port[,...]`.
    pub fn nodes(&self) -> &str {
        &self.nodes
    }

    /// The node process, when this cluster runs locally.
    pub fn server(&self) -> Option<&CassandraServer> {
        self.server.as_deref()
    }

    /// A driver session to the cluster.
    pub async fn session(&self) -> Result<Session, TestkitError> {
        if let Some(server) = &self.server {
            return server.session().await;
        }
        SessionBuilder::new()
            .known_nodes(self.nodes.split(',').map(str::trim))
            .build()
            .await
            .map_err(TestkitError::cql(format!("connecting to {}", self.nodes)))
    }

    /// Creates a keyspace no other test uses, `<prefix>_<unique>`
    /// (SimpleStrategy, replication factor 1), and returns its name.
    pub async fn create_keyspace(
        &self,
        session: &Session,
        prefix: &str,
    ) -> Result<String, TestkitError> {
        let name = unique_name(prefix).replace('-', "_");
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE {name} WITH replication = \
                     {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
                ),
                &[],
            )
            .await
            .map_err(TestkitError::cql(format!("creating keyspace {name}")))?;
        Ok(name)
    }
}

/// `FLUMEN_CASSANDRA_NODES`, when set and not empty.
fn external_nodes() -> Option<String> {
    std::env::var("FLUMEN_CASSANDRA_NODES")
        .ok()
        .filter(|n| !n.trim().is_empty())
}
