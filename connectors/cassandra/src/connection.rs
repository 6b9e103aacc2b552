//! `Connection`: how the sink and the source reach a cluster (contact points,
//! data center, credentials, TLS, consistency, request timeout).

use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::statement::Consistency;

use crate::error::CassandraError;
use crate::tls::Tls;

/// The builder methods a sink and a source share, for a type with a
/// `connection: Connection` field: contact points, data center, credentials,
/// TLS and the client-side request timeout.
macro_rules! connection_builder_methods {
    () => {
        /// Contact points, `host:port[,host:port...]`.
        pub fn nodes(mut self, nodes: impl AsRef<str>) -> Self {
            self.connection.set_nodes(nodes.as_ref());
            self
        }

        /// Prefers the nodes of this data center (and `LOCAL_*` consistency refers to it).
        pub fn local_datacenter(mut self, datacenter: impl Into<String>) -> Self {
            self.connection.datacenter = Some(datacenter.into());
            self
        }

        /// Username and password (PasswordAuthenticator).
        pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
            self.connection.credentials = Some((user.into(), password.into()));
            self
        }

        /// Encrypts the connections (off by default).
        pub fn tls(mut self, tls: $crate::tls::Tls) -> Self {
            self.connection.tls = Some(tls);
            self
        }

        /// Client-side timeout of one request: a write attempt of the sink, a
        /// page of the source (default 12 s).
        pub fn request_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.connection.request_timeout = timeout;
            self
        }
    };
}
pub(crate) use connection_builder_methods;

/// Connection settings. `Debug` shows the user but never the password.
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) nodes: Vec<String>,
    pub(crate) datacenter: Option<String>,
    pub(crate) credentials: Option<(String, String)>,
    pub(crate) consistency: Consistency,
    pub(crate) request_timeout: Duration,
    pub(crate) tls: Option<Tls>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("nodes", &self.nodes)
            .field("datacenter", &self.datacenter)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("password", &self.credentials.as_ref().map(|_| "***"))
            .field("consistency", &self.consistency)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Connection {
    /// `127.0.0.1:9042`, `LOCAL_QUORUM`, no credentials, no TLS.
    pub(crate) fn new(request_timeout: Duration) -> Self {
        Connection {
            nodes: vec!["127.0.0.1:9042".into()],
            datacenter: None,
            credentials: None,
            consistency: Consistency::LocalQuorum,
            request_timeout,
            tls: None,
        }
    }

    /// Sets the contact points from `host:port[,host:port...]`.
    pub(crate) fn set_nodes(&mut self, nodes: &str) {
        self.nodes = nodes
            .split(',')
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
    }

    /// Opens a session. The driver does not retry: flumen retries with
    /// backoff itself, knowing which requests are idempotent.
    pub(crate) async fn connect(&self) -> Result<Session, CassandraError> {
        let mut policy = DefaultPolicy::builder();
        if let Some(dc) = &self.datacenter {
            policy = policy.prefer_datacenter(dc.clone());
        }
        let profile = ExecutionProfile::builder()
            .consistency(self.consistency)
            .request_timeout(Some(self.request_timeout))
            .load_balancing_policy(policy.build())
            .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&self.nodes)
            .default_execution_profile_handle(profile.into_handle());
        if let Some((user, password)) = &self.credentials {
            builder = builder.user(user, password);
        }
        if let Some(tls) = &self.tls {
            builder = builder.tls_context(Some(tls.context()?));
        }
        builder.build().await.map_err(|e| CassandraError::Connect {
            nodes: self.nodes.join(","),
            reason: e.to_string(),
        })
    }
}
