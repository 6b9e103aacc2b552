//! Client configuration shared by consumers, producers and admin clients.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// Connection settings for one Kafka cluster plus extra librdkafka properties.
///
/// Extra properties are applied last, so they override flumen's defaults.
#[derive(Debug, Clone, Default)]
pub struct KafkaConfig {
    brokers: String,
    extra: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Settings for the cluster at `brokers` (`host:port[,host:port...]`).
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            extra: BTreeMap::new(),
        }
    }

    /// Sets an extra librdkafka property (for example `security.protocol`).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Sets an extra librdkafka property in place.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.extra.insert(key.into(), value.into());
    }

    /// The bootstrap brokers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The extra librdkafka properties.
    pub fn extra(&self) -> &BTreeMap<String, String> {
        &self.extra
    }

    /// A librdkafka configuration with `defaults` applied first and the extra properties last.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }
}
