//! The sensor workload: JSON readings `{"device","ts","temp","humidity"}` keyed by device.

use crate::topics::TestRecord;

/// Parameters of a generated workload.
#[derive(Debug, Clone, Copy)]
pub struct SensorWorkload {
    /// Number of events.
    pub events: u64,
    /// Number of devices, visited round-robin.
    pub devices: u64,
    /// Event-time step between consecutive events, in ms.
    pub step_ms: i64,
    /// Event time of the first event (epoch ms).
    pub start_ms: i64,
}

impl Default for SensorWorkload {
    fn default() -> Self {
        SensorWorkload {
            events: 10_000,
            devices: 10,
            step_ms: 100,
            start_ms: 1_700_000_000_000,
        }
    }
}

/// One reading, deterministic in its index.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Sequence number (0-based).
    pub id: u64,
    /// `dev-<k>`.
    pub device: String,
    /// Event time, epoch ms.
    pub ts: i64,
    /// Temperature; about one in ten is negative.
    pub temp: f64,
    /// Relative humidity.
    pub humidity: f64,
}

impl Reading {
    /// The JSON value of this reading.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"id":{},"device":"{}","ts":{},"temp":{},"humidity":{}}}"#,
            self.id, self.device, self.ts, self.temp, self.humidity
        )
    }
}

impl SensorWorkload {
    /// The `i`-th reading.
    pub fn reading(&self, i: u64) -> Reading {
        let devices = self.devices.max(1);
        // A cheap deterministic hash spreads the values.
        let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
        let temp = ((h % 5000) as f64) / 100.0 - 5.0;
        Reading {
            id: i,
            device: format!("dev-{}", i % devices),
            ts: self.start_ms + i as i64 * self.step_ms,
            temp,
            humidity: ((h >> 20) % 1000) as f64 / 10.0,
        }
    }

    /// Every reading, in order.
    pub fn readings(&self) -> impl Iterator<Item = Reading> + '_ {
        (0..self.events).map(|i| self.reading(i))
    }

    /// Every reading as a record keyed by device.
    pub fn records(&self) -> impl Iterator<Item = TestRecord> + '_ {
        self.readings()
            .map(|r| TestRecord::new(r.device.clone(), r.to_json()))
    }
}
