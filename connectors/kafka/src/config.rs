//! Client configuration shared by consumers, producers and admin clients.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// Whether a librdkafka property holds a secret (passwords, keys, tokens,
/// JAAS configs): such values never appear in `Debug` output or logs.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "token",
        "ssl.key.pem",
        "ssl_key",
        "private",
    ]
    .iter()
    .any(|part| key.contains(part))
}

/// `value`, or `***` when `key` names a secret.
pub fn redacted<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret_property(key) {
        "***"
    } else {
        value
    }
}

/// Connection settings for one Kafka cluster plus extra librdkafka properties.
///
/// Extra properties are applied last, so they override flumen's defaults.
/// `Debug` shows secret properties (`sasl.password`, `ssl.key.password`, ...)
/// as `***`.
#[derive(Clone, Default)]
pub struct KafkaConfig {
    brokers: String,
    extra: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let extra: BTreeMap<&str, &str> = self
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), redacted(k, v)))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("extra", &extra)
            .finish()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect 10 of #16: secrets never show in `Debug`.
    #[test]
    fn debug_output_hides_secrets() {
        let config = KafkaConfig::new("b:9092")
            .set("sasl.password", "hunter2")
            .set("ssl.key.password", "s3cret")
            .set("sasl.oauthbearer.client.secret", "t0ken")
            .set("security.protocol", "SASL_SSL");
        let shown = format!("{config:?}");
        for secret in ["hunter2", "s3cret", "t0ken"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("SASL_SSL") && shown.contains("***"),
            "{shown}"
        );
    }
}
