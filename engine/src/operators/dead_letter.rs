//! Side outputs: source records an operator did not use, sent unchanged to a
//! dead-letter topic with headers that say why.

use std::sync::Arc;

use flumen_kafka::rdkafka::message::{Header, Headers, OwnedHeaders};
use flumen_kafka::RawBatch;
use serde::{Deserialize, Serialize};

/// A source record an operator sends to a dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    /// The topic it goes to.
    pub(crate) topic: Arc<str>,
    /// Its source offset.
    pub(crate) offset: i64,
    /// Why the operator did not use it.
    pub(crate) reason: DeadLetterReason,
    /// A copy of the record, when it is not in the current batch (a row the
    /// operator held); `None`: the batch's record at `offset`.
    pub(crate) copy: Option<Box<SourceRecord>>,
}

/// Why an operator sent a record to a dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeadLetterReason {
    /// It arrived after a window it belongs to had closed, at `watermark`.
    Late { watermark: i64 },
    /// `lookup` found no row for its key (or the key was null).
    LookupMiss { lookup: Arc<str> },
    /// `lookup` found no row for its key, looked up again for `held_ms`.
    LookupMissAfterRetries { lookup: Arc<str>, held_ms: u64 },
}

impl DeadLetterReason {
    /// The headers that say why (`flumen.error.kind`, `flumen.error.reason`
    /// and details).
    pub(crate) fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            DeadLetterReason::Late { watermark } => vec![
                ("flumen.error.kind", "late".into()),
                (
                    "flumen.error.reason",
                    "the record arrived after at least one of its windows had closed".into(),
                ),
                ("flumen.watermark", watermark.to_string()),
            ],
            DeadLetterReason::LookupMiss { lookup } => vec![
                ("flumen.error.kind", "lookup-miss".into()),
                (
                    "flumen.error.reason",
                    format!("{lookup} has no row for the record's key (or the key is null)"),
                ),
            ],
            DeadLetterReason::LookupMissAfterRetries { lookup, held_ms } => vec![
                ("flumen.error.kind", "lookup-miss".into()),
                (
                    "flumen.error.reason",
                    format!(
                        "{lookup} has no row for the record's key, looked up again for \
                         {held_ms} ms"
                    ),
                ),
            ],
        }
    }
}

/// A copy of one source record (what a dead letter forwards), kept by an
/// operator that holds a row past its batch, in its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SourceRecord {
    pub(crate) offset: i64,
    #[serde(with = "base64_bytes")]
    pub(crate) key: Option<Vec<u8>>,
    #[serde(with = "base64_bytes")]
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) headers: Vec<SourceHeader>,
}

/// One header of a [`SourceRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SourceHeader {
    pub(crate) key: String,
    #[serde(with = "base64_bytes")]
    pub(crate) value: Option<Vec<u8>>,
}

impl SourceRecord {
    /// Copies record `index` of `raw`.
    pub(crate) fn copy(raw: &RawBatch, index: usize) -> Self {
        let headers = raw.headers(index).map_or_else(Vec::new, |headers| {
            headers
                .iter()
                .map(|h| SourceHeader {
                    key: h.key.to_string(),
                    value: h.value.map(<[u8]>::to_vec),
                })
                .collect()
        });
        SourceRecord {
            offset: raw.offset(index),
            key: raw.key(index).map(<[u8]>::to_vec),
            value: raw.value(index).map(<[u8]>::to_vec),
            timestamp_ms: raw.timestamp(index),
            headers,
        }
    }

    /// The record as a batch of one, of `topic`/`partition`.
    pub(crate) fn to_raw(&self, topic: &Arc<str>, partition: i32) -> RawBatch {
        let mut raw = RawBatch::new(Arc::clone(topic), partition);
        let headers = (!self.headers.is_empty()).then(|| {
            self.headers.iter().fold(
                OwnedHeaders::new_with_capacity(self.headers.len()),
                |headers, h| {
                    headers.insert(Header {
                        key: &h.key,
                        value: h.value.as_deref(),
                    })
                },
            )
        });
        raw.push(
            self.key.as_deref(),
            self.value.as_deref(),
            self.timestamp_ms,
            self.offset,
            headers,
        );
        raw
    }
}

/// Bytes as base64 text in a stored [`SourceRecord`].
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(&STANDARD.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_record_round_trips_through_its_stored_form() {
        let mut raw = RawBatch::new(Arc::from("readings"), 2);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "trace",
                value: Some(&b"\x00\xffid"[..]),
            })
            .insert(Header {
                key: "empty",
                value: None::<&[u8]>,
            });
        raw.push(None, Some(b"{\"device\":\"x\"}"), Some(17), 41, None);
        raw.push(Some(b"k"), Some(b"v"), Some(18), 42, Some(headers));
        let copy = SourceRecord::copy(&raw, 1);
        let stored = serde_json::to_vec(&copy).unwrap_or_default();
        let back: SourceRecord = serde_json::from_slice(&stored).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, copy);
        let one = back.to_raw(&Arc::from("readings"), 2);
        assert_eq!(
            (one.len(), one.offset(0), one.timestamp(0)),
            (1, 42, Some(18))
        );
        assert_eq!(
            (one.key(0), one.value(0)),
            (Some(&b"k"[..]), Some(&b"v"[..]))
        );
        assert_eq!(SourceRecord::copy(&one, 0), copy);
        assert_eq!(SourceRecord::copy(&raw, 0).headers, Vec::new());
    }
}
