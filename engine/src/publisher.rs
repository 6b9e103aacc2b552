//! Inputs that are not Kafka topics yet: a [`Publisher`] writes its records
//! into a Kafka topic, and the application reads that topic like any other
//! (so processing keeps Kafka's guarantees, scales with its partitions and
//! restarts from its offsets). `flumen_cassandra::CassandraSource` is one.

use futures::future::BoxFuture;

pub use flumen_kafka::KafkaConfig;

use crate::plan::BoxError;
use crate::topic::Topic;

/// Publishes records from outside Kafka into a topic the application reads.
/// [`Application::run`](crate::Application::run) runs it beside the
/// pipeline; its failure stops the application.
pub trait Publisher: Send + Sync + 'static {
    /// A name for logs and errors, e.g. `cassandra source 'iot.readings'`.
    fn name(&self) -> String;

    /// The topic it publishes to, for consumer group `group` (known without I/O).
    fn topic_name(&self, group: &str) -> String;

    /// Prepares the topic (creating it when missing) and describes it: its
    /// name, format and value schema. Called before anything is consumed.
    fn describe<'a>(
        &'a self,
        kafka: &'a KafkaConfig,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Topic, BoxError>>;

    /// Publishes until `stop` completes (then finishes what is in flight) or
    /// it has nothing more to publish.
    fn publish<'a>(
        &'a self,
        kafka: &'a KafkaConfig,
        group: &'a str,
        stop: BoxFuture<'static, ()>,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// What [`Application::dataframe`](crate::Application::dataframe) reads: a
/// topic, or what a publisher writes into one.
pub enum Input {
    /// An existing Kafka topic.
    Topic(Topic),
    /// A publisher's topic (the application runs the publisher too).
    Published(std::sync::Arc<dyn Publisher>),
}

impl From<Topic> for Input {
    fn from(topic: Topic) -> Self {
        Input::Topic(topic)
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Topic(topic) => f.debug_tuple("Topic").field(&topic.name()).finish(),
            Input::Published(p) => f.debug_tuple("Published").field(&p.name()).finish(),
        }
    }
}
