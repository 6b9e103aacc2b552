//! [`DevStack`]: the Kafka broker a test or example runs against.

use std::sync::Arc;

use flumen_kafka::{Admin, KafkaConfig, TopicSpec};

use crate::proxy::OutageProxy;
use crate::stack::{self, KafkaOptions, KafkaServer};
use crate::TestkitError;

/// A Kafka broker for tests and examples: the process's shared broker
/// ([`DevStack::start`]), one of its own ([`DevStack::start_dedicated`],
/// [`DevStack::start_behind_proxy`]), or an external cluster named by
/// `FLUMEN_KAFKA_BROKERS`.
///
/// ```no_run
/// # async fn demo() -> Result<(), flumen_testkit::TestkitError> {
/// let stack = flumen_testkit::DevStack::start()?;
/// stack.create_topic("readings", 3).await?;
/// println!("broker at {}", stack.brokers());
/// # Ok(())
/// # }
/// ```
pub struct DevStack {
    brokers: String,
    server: Option<Arc<KafkaServer>>,
    proxy: Option<OutageProxy>,
}

impl DevStack {
    /// Points at an existing cluster; starts nothing.
    pub fn connect(brokers: impl Into<String>) -> DevStack {
        DevStack {
            brokers: brokers.into(),
            server: None,
            proxy: None,
        }
    }

    /// The broker this process shares among its tests (started on first use,
    /// see [`stack::shared_kafka`]), or `FLUMEN_KAFKA_BROKERS` when set.
    pub fn start() -> Result<DevStack, TestkitError> {
        if let Some(brokers) = external_brokers() {
            return Ok(DevStack::connect(brokers));
        }
        let server = stack::shared_kafka()?;
        Ok(DevStack {
            brokers: server.brokers(),
            server: Some(server),
            proxy: None,
        })
    }

    /// A broker of this test's own, for tests that stop, kill or restart it.
    /// Ignores `FLUMEN_KAFKA_BROKERS`.
    pub fn start_dedicated() -> Result<DevStack, TestkitError> {
        let server = KafkaServer::start(&KafkaOptions::default())?;
        eprintln!(
            "flumen-testkit: dedicated Kafka at {} (log: {})",
            server.brokers(),
            server.log_path().display()
        );
        Ok(DevStack {
            brokers: server.brokers(),
            server: Some(Arc::new(server)),
            proxy: None,
        })
    }

    /// A broker of this test's own whose clients all connect through an
    /// [`OutageProxy`] (the broker advertises the proxy's address), so a test
    /// can cut the broker off and bring it back ([`DevStack::proxy`]). Ignores
    /// `FLUMEN_KAFKA_BROKERS`.
    pub fn start_behind_proxy() -> Result<DevStack, TestkitError> {
        let proxy_port = stack::rundir::free_port()?;
        let options = KafkaOptions {
            advertised_port: Some(proxy_port),
            ..KafkaOptions::default()
        };
        let server = KafkaServer::start(&options)?;
        let target = ([127, 0, 0, 1], server.port()).into();
        let proxy = OutageProxy::start_on(([127, 0, 0, 1], proxy_port).into(), target)?;
        eprintln!(
            "flumen-testkit: Kafka behind a proxy at {} (log: {})",
            server.brokers(),
            server.log_path().display()
        );
        Ok(DevStack {
            brokers: server.brokers(),
            server: Some(Arc::new(server)),
            proxy: Some(proxy),
        })
    }

    /// The proxy in front of the broker (see [`DevStack::start_behind_proxy`]).
    pub fn proxy(&self) -> Option<&OutageProxy> {
        self.proxy.as_ref()
    }

    /// The broker process, when this stack started one.
    pub fn server(&self) -> Option<&KafkaServer> {
        self.server.as_deref()
    }

    /// `host:port` of the broker.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Whether the broker runs locally (false with `FLUMEN_KAFKA_BROKERS`).
    pub fn is_local(&self) -> bool {
        self.server.is_some()
    }

    /// Consumer settings for tests: a 6 s session (the broker's minimum), so
    /// that a killed member leaves its group within seconds.
    pub fn consumer_settings(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "1000"),
        ]
    }

    /// A Kafka client configuration for this broker.
    pub fn kafka_config(&self) -> KafkaConfig {
        KafkaConfig::new(&self.brokers)
    }

    /// Creates a topic (explicit `retention.ms` and `cleanup.policy`) and waits until it is visible.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<(), TestkitError> {
        self.create_topic_spec(&TopicSpec::new(name, partitions))
            .await
    }

    /// Creates a topic from a full spec.
    pub async fn create_topic_spec(&self, spec: &TopicSpec) -> Result<(), TestkitError> {
        Admin::new(&self.kafka_config())?.create_topic(spec).await?;
        Ok(())
    }
}

/// `FLUMEN_KAFKA_BROKERS`, when set and not empty.
fn external_brokers() -> Option<String> {
    std::env::var("FLUMEN_KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.trim().is_empty())
}
