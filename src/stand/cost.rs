//! What a stand costs: the CPU and memory its pods request, times the hours they are awake, plus
//! the storage its claims request, times the stand's life, at the configured prices. Pure: the
//! store keeps the awake intervals, this prices them.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Prices per unit and hour (`[cost]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub cpu_hour: f64,
    pub memory_gib_hour: f64,
    pub storage_gib_hour: f64,
}

/// One stretch of time the stand was awake, with what its pods requested meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awake {
    pub from: DateTime<Utc>,
    /// Still awake when `None`.
    pub until: Option<DateTime<Utc>>,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn hours(from: DateTime<Utc>, until: DateTime<Utc>) -> f64 {
    ((until - from).num_milliseconds().max(0) as f64) / 3_600_000.0
}

impl Rates {
    /// What these requests cost per hour awake.
    pub fn hourly(&self, cpu_millis: i64, memory_bytes: i64) -> f64 {
        cpu_millis as f64 / 1000.0 * self.cpu_hour + memory_bytes as f64 / GIB * self.memory_gib_hour
    }

    /// What storage of `bytes` costs per hour.
    pub fn storage_hourly(&self, bytes: i64) -> f64 {
        bytes as f64 / GIB * self.storage_gib_hour
    }
}

/// A stand's cost so far.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Cost {
    /// Everything so far: awake hours and storage.
    pub total: f64,
    /// Per hour while awake, at its current requests (storage included); 0 asleep or gone.
    pub per_hour_awake: f64,
    /// Hours its workloads ran.
    pub awake_hours: f64,
    pub currency: String,
}

/// Prices `awake` and `storage_bytes` held from `created` until `until` (now, or the end of the
/// stand) at `rates`.
pub fn cost(
    rates: &Rates,
    currency: &str,
    awake: &[Awake],
    storage_bytes: i64,
    created: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Cost {
    let mut total = rates.storage_hourly(storage_bytes) * hours(created, until);
    let mut awake_hours = 0.0;
    for a in awake {
        let h = hours(a.from, a.until.unwrap_or(until).min(until));
        awake_hours += h;
        total += rates.hourly(a.cpu_millis, a.memory_bytes) * h;
    }
    let per_hour_awake = awake
        .iter()
        .find(|a| a.until.is_none())
        .map_or(0.0, |a| rates.hourly(a.cpu_millis, a.memory_bytes) + rates.storage_hourly(storage_bytes));
    Cost { total, per_hour_awake, awake_hours, currency: currency.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).unwrap()
    }

    #[test]
    fn awake_hours_at_their_requests_plus_storage_for_the_whole_life() {
        let rates = Rates { cpu_hour: 0.04, memory_gib_hour: 0.005, storage_gib_hour: 0.0002 };
        // 2 h at 500m + 1 GiB, asleep 10 h, then awake for the last 3 h at 250m + 512 MiB.
        let awake = [
            Awake { from: at(0), until: Some(at(2)), cpu_millis: 500, memory_bytes: 1 << 30 },
            Awake { from: at(12), until: None, cpu_millis: 250, memory_bytes: 1 << 29 },
        ];
        let c = cost(&rates, "USD", &awake, 5 << 30, at(0), at(15));
        // By hand: 2 × (0.5 × 0.04 + 1 × 0.005) = 0.05; 3 × (0.25 × 0.04 + 0.5 × 0.005) = 0.0375;
        // storage 5 GiB × 15 h × 0.0002 = 0.015.
        assert!((c.total - 0.1025).abs() < 1e-9, "{c:?}");
        assert!((c.awake_hours - 5.0).abs() < 1e-9);
        assert!((c.per_hour_awake - (0.0125 + 0.001)).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn asleep_costs_storage_only_and_nothing_per_hour_awake() {
        let rates = Rates { cpu_hour: 1.0, memory_gib_hour: 1.0, storage_gib_hour: 1.0 };
        let awake = [Awake { from: at(0), until: Some(at(1)), cpu_millis: 1000, memory_bytes: 0 }];
        let c = cost(&rates, "EUR", &awake, 0, at(0), at(10));
        assert_eq!((c.total, c.per_hour_awake, c.currency.as_str()), (1.0, 0.0, "EUR"));
    }
}
