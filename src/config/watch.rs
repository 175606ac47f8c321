//! `[watch]`: the health watch, which probes each awake stand once per interval between deploys.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Whether `serve` probes awake stands at all (kubernetes mode only: dry-run stands run nothing).
    pub enabled: bool,
    /// Each awake stand is probed once per interval. Five minutes: the deployment plan's cadence,
    /// soon enough that a stand broken over lunch is flagged before anyone opens it, and with a
    /// thousand stands about three light requests a second.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// One probe's answer is awaited this long: a stand slower than this is not answering.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A failed probe is tried once more after this before the stand counts as degraded: a pod
    /// restarting or one lost connection is not an outage, and a second look costs nothing when all
    /// is well.
    #[serde(with = "humantime_serde")]
    pub recheck_after: Duration,
    /// Probes in flight at once, per replica: enough for a fleet whose stands all time out at once
    /// to be probed within its interval, few enough never to crowd the workers' connections.
    pub concurrency: u32,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(5 * 60),
            timeout: Duration::from_secs(5),
            recheck_after: Duration::from_secs(5),
            concurrency: 16,
        }
    }
}

impl WatchConfig {
    /// What the values' types cannot say, as `(key, message)`.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.interval < Duration::from_secs(1) {
            return Some(("interval", "must be at least 1s"));
        }
        if self.timeout.is_zero() || self.timeout + self.recheck_after + self.timeout >= self.interval {
            return Some(("timeout", "must be longer than zero, and a probe with its recheck shorter than interval"));
        }
        if self.concurrency == 0 {
            return Some(("concurrency", "must be at least 1"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn the_watch_probes_every_five_minutes_unless_told_and_refuses_a_probe_longer_than_its_interval() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.watch.interval, std::time::Duration::from_secs(300));
        let config = Config::from_toml("[watch]\ninterval = \"1m\"\nconcurrency = 4\n").unwrap();
        assert_eq!((config.watch.interval.as_secs(), config.watch.concurrency), (60, 4));
        let e = Config::from_toml("[watch]\ninterval = \"10s\"\ntimeout = \"5s\"\n").unwrap_err().to_string();
        assert!(e.contains("watch.timeout"), "{e}");
        let e = Config::from_toml("[watch]\nconcurrency = 0\n").unwrap_err().to_string();
        assert!(e.contains("watch.concurrency"), "{e}");
        assert!(Config::from_toml("[watch]\nintervall = \"1m\"\n").is_err(), "unknown keys are refused");
    }
}
