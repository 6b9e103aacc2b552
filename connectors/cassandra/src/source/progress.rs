//! Where the source is: one *pass* at a time over every token range (the
//! snapshot is pass 0; each change-capture poll is the next pass), and per
//! range how far the pass got (the driver's paging state after the last
//! published page). Kept as JSON records in a compacted Kafka topic, keyed
//! `pass` and `range/<index>`; with exactly-once they are written in the same
//! transaction as the rows they account for.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Duration;

use base64::Engine as _;
use flumen_kafka::{read_partition, KafkaConfig};
use serde::{Deserialize, Serialize};

use crate::error::CassandraError;

/// What a pass reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PassKind {
    /// Every row.
    Snapshot,
    /// Rows whose write time is in `(low, high]`.
    Writetime,
    /// Rows whose change column is in `(low, high]`.
    Incremental,
}

impl PassKind {
    /// The `flumen.source.mode` header value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PassKind::Snapshot => "snapshot",
            PassKind::Writetime => "writetime",
            PassKind::Incremental => "incremental",
        }
    }
}

/// One pass over the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pass {
    /// 0, 1, 2, ...
    pub(crate) number: u64,
    pub(crate) kind: PassKind,
    /// Lower bound (exclusive), microseconds since the epoch; the next pass
    /// starts where this one's `high` is.
    pub(crate) low_us: i64,
    /// Upper bound (inclusive), microseconds since the epoch.
    pub(crate) high_us: i64,
    /// How many token ranges the ring was cut into for this pass.
    pub(crate) splits: u32,
}

/// How far one range of the current pass got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RangeProgress {
    /// The pass this position belongs to (older ones are stale).
    pub(crate) pass: u64,
    /// The driver's paging state to continue from (base64); `None` with
    /// `done == false`: not started.
    pub(crate) paging_state: Option<String>,
    pub(crate) done: bool,
    /// Rows published from this range in this pass.
    pub(crate) rows: u64,
}

impl RangeProgress {
    /// The raw paging state.
    pub(crate) fn paging_bytes(&self) -> Option<Vec<u8>> {
        let text = self.paging_state.as_ref()?;
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    }

    /// Progress after a page whose continuation is `next` (`None`: the range is done).
    pub(crate) fn after_page(pass: u64, rows: u64, next: Option<&[u8]>) -> Self {
        RangeProgress {
            pass,
            paging_state: next.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            done: next.is_none(),
            rows,
        }
    }
}

/// The key of the pass record.
pub(crate) const PASS_KEY: &str = "pass";

/// The key of range `index`'s record.
pub(crate) fn range_key(index: usize) -> String {
    format!("range/{index}")
}

/// Everything recorded so far: the current pass and its ranges' positions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    pub(crate) pass: Option<Pass>,
    pub(crate) ranges: HashMap<usize, RangeProgress>,
}

impl Progress {
    /// Range `index`'s position in the current pass (not started when the
    /// record is missing or belongs to an earlier pass).
    pub(crate) fn range(&self, index: usize) -> Option<&RangeProgress> {
        let pass = self.pass.as_ref()?.number;
        self.ranges.get(&index).filter(|r| r.pass == pass)
    }

    /// Applies one record (last one wins, as compaction keeps it).
    fn apply(
        &mut self,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), CassandraError> {
        let bad = |reason: String| CassandraError::Progress {
            topic: topic.to_string(),
            reason,
        };
        let key = std::str::from_utf8(key).map_err(|e| bad(format!("a key is not text: {e}")))?;
        let Some(value) = value else {
            return Ok(());
        };
        if key == PASS_KEY {
            let pass =
                serde_json::from_slice(value).map_err(|e| bad(format!("record '{key}': {e}")))?;
            self.pass = Some(pass);
        } else if let Some(index) = key.strip_prefix("range/") {
            let index = index
                .parse::<usize>()
                .map_err(|e| bad(format!("record '{key}': {e}")))?;
            let range =
                serde_json::from_slice(value).map_err(|e| bad(format!("record '{key}': {e}")))?;
            self.ranges.insert(index, range);
        }
        Ok(())
    }
}

/// Reads the progress topic from its start (committed records only).
pub(crate) fn load(config: &KafkaConfig, topic: &str) -> Result<Progress, CassandraError> {
    let mut progress = Progress::default();
    let mut failure = None;
    read_partition(config, topic, 0, Duration::from_secs(30), |record| {
        let Some(key) = record.key else {
            return ControlFlow::Continue(());
        };
        match progress.apply(topic, key, record.value) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        }
    })
    .map_err(|e| CassandraError::Progress {
        topic: topic.to_string(),
        reason: e.to_string(),
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(progress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_an_earlier_pass_are_stale() {
        let mut progress = Progress::default();
        let pass = |n| Pass {
            number: n,
            kind: PassKind::Writetime,
            low_us: 0,
            high_us: 1,
            splits: 8,
        };
        let record = |p: &Pass| serde_json::to_vec(p).unwrap_or_default();
        progress
            .apply("t", PASS_KEY.as_bytes(), Some(&record(&pass(1))))
            .ok();
        let done = RangeProgress::after_page(1, 10, None);
        let value = serde_json::to_vec(&done).unwrap_or_default();
        progress
            .apply("t", range_key(3).as_bytes(), Some(&value))
            .ok();
        assert_eq!(progress.range(3).map(|r| r.done), Some(true));
        progress
            .apply("t", PASS_KEY.as_bytes(), Some(&record(&pass(2))))
            .ok();
        assert_eq!(progress.range(3), None);
    }

    #[test]
    fn a_paging_state_survives_the_record() {
        let p = RangeProgress::after_page(0, 5, Some(&[1, 2, 255]));
        let back: RangeProgress =
            serde_json::from_slice(&serde_json::to_vec(&p).unwrap_or_default())
                .unwrap_or(p.clone());
        assert_eq!(back.paging_bytes(), Some(vec![1, 2, 255]));
        assert!(!back.done);
    }
}
