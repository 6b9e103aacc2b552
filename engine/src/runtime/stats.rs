//! Counters of a running application, also exported as `metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::records::BadInputKind;

/// Live counters of one application (the same numbers go to `metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    records_in: AtomicU64,
    records_out: AtomicU64,
    batches: AtomicU64,
    assigned: AtomicU64,
    restored: AtomicU64,
    offset_commits: AtomicU64,
    transactions_committed: AtomicU64,
    transactions_aborted: AtomicU64,
    restarts: AtomicU64,
    bad: Mutex<BTreeMap<(BadInputKind, &'static str), u64>>,
    /// Per (topic, partition, window operator): records it dropped.
    dropped: Mutex<BTreeMap<(String, i32, usize), crate::window::Dropped>>,
}

impl Stats {
    /// Records decoded from input topics.
    pub fn records_in(&self) -> u64 {
        self.records_in.load(Ordering::Relaxed)
    }

    /// Records written to outputs (every output counts).
    pub fn records_out(&self) -> u64 {
        self.records_out.load(Ordering::Relaxed)
    }

    /// Micro-batches processed.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Input partitions this instance of the application owns now.
    pub fn assigned_partitions(&self) -> u64 {
        self.assigned.load(Ordering::Relaxed)
    }

    /// State changes restored from changelog topics so far.
    pub fn restored_changes(&self) -> u64 {
        self.restored.load(Ordering::Relaxed)
    }

    /// Offset commits of the input partitions (at-least-once mode), each made
    /// once every output of the records it covers was acknowledged: one per
    /// commit interval with new offsets (sent asynchronously) and the final one
    /// of a graceful stop (counted once the broker has confirmed it).
    pub fn offset_commits(&self) -> u64 {
        self.offset_commits.load(Ordering::Relaxed)
    }

    /// Transactions committed (exactly-once mode).
    pub fn transactions_committed(&self) -> u64 {
        self.transactions_committed.load(Ordering::Relaxed)
    }

    /// Transactions aborted (exactly-once mode); each rewinds the application
    /// to the last committed offsets.
    pub fn transactions_aborted(&self) -> u64 {
        self.transactions_aborted.load(Ordering::Relaxed)
    }

    /// Times a run rewound to the last committed offsets and started again
    /// after a failed transaction (exactly-once mode).
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub(crate) fn add_transaction(&self, committed: bool) {
        let (counter, outcome) = if committed {
            (&self.transactions_committed, "committed")
        } else {
            (&self.transactions_aborted, "aborted")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("flumen_transactions_total", "outcome" => outcome).increment(1);
    }

    pub(crate) fn add_offset_commit(&self) {
        self.offset_commits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("flumen_offset_commits_total").increment(1);
    }

    pub(crate) fn add_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("flumen_restarts_total").increment(1);
    }

    pub(crate) fn add_assigned(&self, partitions: usize) {
        let now = self
            .assigned
            .fetch_add(partitions as u64, Ordering::Relaxed)
            + partitions as u64;
        metrics::gauge!("flumen_assigned_partitions").set(now as f64);
    }

    pub(crate) fn remove_assigned(&self, partitions: usize) {
        let before = self
            .assigned
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(partitions as u64))
            })
            .unwrap_or(0);
        metrics::gauge!("flumen_assigned_partitions")
            .set(before.saturating_sub(partitions as u64) as f64);
    }

    pub(crate) fn add_restored(&self, changes: u64) {
        self.restored.fetch_add(changes, Ordering::Relaxed);
    }

    /// Bad records of `kind` handled by the policy named `policy` (`skip`, `dead_letter`, `fail`).
    pub fn bad_records(&self, kind: BadInputKind, policy: &str) -> u64 {
        self.bad
            .lock()
            .map(|m| m.get(&(kind, policy_name(policy))).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Bad records of any kind handled by `policy`.
    pub fn bad_records_total(&self, policy: &str) -> u64 {
        self.bad
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|((_, p), _)| *p == policy)
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Records that window operators dropped because their window had closed.
    pub fn late_records(&self) -> u64 {
        self.dropped
            .lock()
            .map(|m| m.values().map(|d| d.late).sum())
            .unwrap_or(0)
    }

    /// Records that window operators dropped because they had no key.
    pub fn null_key_records(&self) -> u64 {
        self.dropped
            .lock()
            .map(|m| m.values().map(|d| d.null_keys).sum())
            .unwrap_or(0)
    }

    /// Records `deduplicate` dropped as repeats, over every partition.
    pub fn duplicate_records(&self) -> u64 {
        self.dropped
            .lock()
            .map(|m| m.values().map(|d| d.duplicates).sum())
            .unwrap_or(0)
    }

    pub(crate) fn set_dropped(
        &self,
        topic: &str,
        partition: i32,
        node: usize,
        now: crate::window::Dropped,
    ) {
        let Ok(mut m) = self.dropped.lock() else {
            return;
        };
        let before = m
            .insert((topic.to_string(), partition, node), now)
            .unwrap_or_default();
        let late = now.late.saturating_sub(before.late);
        if late > 0 {
            metrics::counter!("flumen_late_records_total", "topic" => topic.to_string())
                .increment(late);
        }
        let duplicates = now.duplicates.saturating_sub(before.duplicates);
        if duplicates > 0 {
            metrics::counter!("flumen_duplicate_records_total", "topic" => topic.to_string())
                .increment(duplicates);
        }
        let null_keys = now.null_keys.saturating_sub(before.null_keys);
        if null_keys > 0 {
            metrics::counter!("flumen_null_key_records_total", "topic" => topic.to_string())
                .increment(null_keys);
            // Logged for the first such record and then once per 1,000.
            if before.null_keys == 0 || now.null_keys / 1000 > before.null_keys / 1000 {
                tracing::warn!(
                    topic, partition, dropped_so_far = now.null_keys,
                    "a window dropped records without a key; key the input topic or group_by a column"
                );
            }
        }
    }

    pub(crate) fn add_in(&self, topic: &str, n: usize) {
        self.records_in.fetch_add(n as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("flumen_records_in_total", "topic" => topic.to_string())
            .increment(n as u64);
    }

    pub(crate) fn add_out(&self, output: &str, n: usize) {
        self.records_out.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("flumen_records_out_total", "output" => output.to_string())
            .increment(n as u64);
    }

    /// Counts one bad record; returns how many of this kind and policy there were so far.
    pub(crate) fn add_bad(&self, topic: &str, kind: BadInputKind, policy: &'static str) -> u64 {
        metrics::counter!(
            "flumen_bad_records_total",
            "topic" => topic.to_string(),
            "kind" => kind.as_str(),
            "policy" => policy
        )
        .increment(1);
        match self.bad.lock() {
            Ok(mut m) => {
                let n = m.entry((kind, policy)).or_insert(0);
                *n += 1;
                *n
            }
            Err(_) => 0,
        }
    }
}

fn policy_name(policy: &str) -> &'static str {
    match policy {
        "skip" => "skip",
        "dead_letter" => "dead_letter",
        _ => "fail",
    }
}
