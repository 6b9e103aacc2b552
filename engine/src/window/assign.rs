//! Epoch-aligned window assignment.

use std::time::Duration;

use crate::{Error, Result};

/// Fixed-size windows over event time, epoch-aligned: tumbling (step = size) or
/// hopping (step < size). A window `[start, start + size)` has `start` a multiple
/// of `step`; its end is exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    size_ms: i64,
    step_ms: i64,
}

/// The most windows one record may fall into (`size / step` of a hopping window).
pub const MAX_WINDOWS_PER_RECORD: i64 = 1_000;

fn millis(d: Duration, what: &str) -> Result<i64> {
    let ms =
        i64::try_from(d.as_millis()).map_err(|_| Error::Plan(format!("{what} is too large")))?;
    if ms <= 0 {
        return Err(Error::Plan(format!(
            "{what} must be at least 1 ms, got {d:?}"
        )));
    }
    Ok(ms)
}

impl Windows {
    /// Tumbling windows of `size`.
    pub fn tumbling(size: Duration) -> Result<Self> {
        let size_ms = millis(size, "window size")?;
        Ok(Windows {
            size_ms,
            step_ms: size_ms,
        })
    }

    /// Hopping windows of `size` starting every `step` (`step <= size`); a
    /// record falls into `size / step` windows, at most
    /// [`MAX_WINDOWS_PER_RECORD`].
    pub fn hopping(size: Duration, step: Duration) -> Result<Self> {
        let size_ms = millis(size, "window size")?;
        let step_ms = millis(step, "window step")?;
        if step_ms > size_ms {
            return Err(Error::Plan(format!(
                "hopping window step ({step:?}) must not exceed its size ({size:?})"
            )));
        }
        let per_record = (size_ms + step_ms - 1) / step_ms;
        if per_record > MAX_WINDOWS_PER_RECORD {
            return Err(Error::Plan(format!(
                "hopping_window({size:?}, {step:?}) puts every record into {per_record} windows; \
                 at most {MAX_WINDOWS_PER_RECORD} are allowed (use a larger step)"
            )));
        }
        Ok(Windows { size_ms, step_ms })
    }

    /// Window size in ms.
    pub fn size_ms(&self) -> i64 {
        self.size_ms
    }

    /// Window step in ms.
    pub fn step_ms(&self) -> i64 {
        self.step_ms
    }

    /// Starts of the windows that contain `ts`, ascending. Windows whose
    /// start or end would not fit in an `i64` (event times within a window
    /// size of `i64::MIN` / `i64::MAX`) are left out.
    pub fn starts(&self, ts: i64) -> impl Iterator<Item = i64> {
        let (size, step) = (self.size_ms, self.step_ms);
        let behind = ts.rem_euclid(step);
        // Windows s with s <= ts < s + size: s = last - k * step for k in 0..n,
        // n = ceil((size - behind) / step) (at most size / step + 1: no overflow).
        let last = ts.checked_sub(behind);
        let n = match last {
            Some(_) => (size - behind).saturating_add(step - 1) / step,
            None => 0,
        };
        let last = last.unwrap_or(i64::MIN);
        (0..n).rev().filter_map(move |k| {
            let start = last.checked_sub(k * step)?;
            start.checked_add(size).map(|_| start)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(w: Windows, ts: i64) -> Vec<i64> {
        w.starts(ts).collect()
    }

    #[test]
    fn tumbling_and_hopping_are_epoch_aligned() {
        let t = Windows::tumbling(Duration::from_millis(10)).unwrap();
        assert_eq!(starts(t, 25), vec![20]);
        assert_eq!(starts(t, 20), vec![20]);
        assert_eq!(starts(t, -1), vec![-10]);
        let h = Windows::hopping(Duration::from_millis(10), Duration::from_millis(2)).unwrap();
        assert_eq!(starts(h, 25), vec![16, 18, 20, 22, 24]);
        let odd = Windows::hopping(Duration::from_millis(10), Duration::from_millis(3)).unwrap();
        assert_eq!(starts(odd, 25), vec![18, 21, 24]);
        assert!(Windows::hopping(Duration::from_millis(2), Duration::from_millis(3)).is_err());
        assert!(Windows::tumbling(Duration::ZERO).is_err());
    }

    #[test]
    fn every_start_contains_the_timestamp() {
        for (size, step) in [(10, 10), (10, 2), (10, 3), (7, 7), (1000, 1)] {
            let w =
                Windows::hopping(Duration::from_millis(size), Duration::from_millis(step)).unwrap();
            for ts in -50..50 {
                let got = starts(w, ts);
                let want: Vec<i64> = (-3000..3000)
                    .filter(|s| s % step as i64 == 0 && *s <= ts && ts < s + size as i64)
                    .collect();
                assert_eq!(got, want, "size {size} step {step} ts {ts}");
            }
        }
    }

    /// Defect 7 of #16: no overflow near the ends of the time line, and a
    /// bound on windows per record checked when the pipeline is built.
    #[test]
    fn extreme_times_overflow_nothing_and_huge_fan_out_is_refused() {
        let h = Windows::hopping(Duration::from_millis(10), Duration::from_millis(3)).unwrap();
        for ts in [i64::MAX, i64::MAX - 5, i64::MIN, i64::MIN + 5] {
            for start in h.starts(ts) {
                assert!(start <= ts && start.checked_add(10).is_some_and(|end| ts < end));
            }
        }
        let day = Duration::from_secs(86_400);
        let error = Windows::hopping(day, Duration::from_millis(1)).unwrap_err();
        assert!(error.to_string().contains("86400000 windows"), "{error}");
        assert!(Windows::hopping(day, Duration::from_secs(100)).is_ok());
    }
}
