//! `[stands]`, `[reaper]` and `[intake]`: how long stands live, how much work runs at once, when
//! the sweep runs, and what intake accepts.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::checked;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StandsConfig {
    /// A stand lives this long after its last deploy started; 48h covers a weekend-free review cycle.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Upper bound on runs in flight across all projects and replicas, to protect the cluster and the forge API.
    pub max_concurrent_runs: u32,
    /// Runs one draftd process drives at once.
    pub workers: u32,
    /// A run whose process stopped renewing its lease for this long is resumed by another worker;
    /// long enough to ride out a slow database, short enough that a crash costs little.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How much `extend` adds when it is not told (`/draft extend`, `stands extend` without `--by`).
    #[serde(with = "humantime_serde")]
    pub extend_by: Duration,
    /// `extend` never moves a stand's expiry further than this from now: a forgotten stand still goes.
    #[serde(with = "humantime_serde")]
    pub max_expiry: Duration,
    /// Stands up at once (awake, or being brought up) across every project; sleeping, waiting and
    /// removed ones hold no place. None: no cap.
    pub max_active: Option<std::num::NonZeroU32>,
    /// What a stand that would pass a cap does.
    pub on_cap: OnCap,
}

/// `[stands] on_cap`: past `max_active` (all projects', or one project's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnCap {
    /// The new stand waits in state `waiting` (its comment says why) until a place frees: another
    /// stand goes to sleep or is removed.
    #[default]
    Wait,
    /// The least recently active stand is put to sleep to make room; the new one waits for that.
    SleepIdlest,
}

impl Default for StandsConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(48 * 3600),
            max_concurrent_runs: 8,
            workers: 4,
            lease: Duration::from_secs(30),
            extend_by: Duration::from_secs(24 * 3600),
            max_expiry: Duration::from_secs(7 * 24 * 3600),
            max_active: None,
            on_cap: OnCap::Wait,
        }
    }
}

/// The sweep that removes what should be gone (DESIGN.md's reaper): expired stands, stands whose
/// PR was closed while a webhook was lost, and orphans. `serve` runs it on `schedule`; `draftd reap`
/// runs one sweep, for a Kubernetes CronJob.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReaperConfig {
    /// Whether `serve` sweeps by itself; off when a CronJob runs `draftd reap` instead (both may
    /// run: an advisory lock lets one sweep at a time).
    pub enabled: bool,
    /// Cron expression with seconds (the `cron` crate's: sec min hour day-of-month month day-of-week).
    #[serde(deserialize_with = "cron_expression")]
    pub schedule: String,
    /// The sticky comment warns this long before a stand expires.
    #[serde(with = "humantime_serde")]
    pub warn_before: Duration,
    /// Compare open PRs/MRs on the forge with the stands (missed webhooks).
    pub resync: bool,
    /// Look for namespaces, folders, databases, roles and Vault roles that no live stand owns.
    pub orphans: bool,
    /// PRs/MRs looked up one by one per project and sweep, to confirm they were closed; bounds the
    /// forge calls a sweep makes when the list of open ones comes back short.
    pub max_lookups: u32,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            schedule: "0 */10 * * * *".into(),
            warn_before: Duration::from_secs(4 * 3600),
            resync: true,
            orphans: true,
            max_lookups: 50,
        }
    }
}

impl ReaperConfig {
    /// The parsed schedule; a loaded [`super::Config`] holds one that parses.
    pub fn cron(&self) -> Result<cron::Schedule, String> {
        parse_cron(&self.schedule)
    }
}

fn parse_cron(schedule: &str) -> Result<cron::Schedule, String> {
    use std::str::FromStr;
    cron::Schedule::from_str(schedule).map_err(|e| e.to_string())
}

fn cron_expression<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |schedule: &String| {
        parse_cron(schedule)
            .map(drop)
            .map_err(|e| format!("{schedule:?} is not a cron expression with seconds, like \"0 */10 * * * *\": {e}"))
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeConfig {
    /// GitHub caps webhook payloads at 25 MiB; anything larger is not from a forge.
    pub max_body_bytes: usize,
    /// Connections to draftd's own database; intake holds one only for its single transaction.
    pub db_pool_size: u32,
    /// Connections the kernel completes and holds for draftd while it cannot accept them (a pod
    /// throttled or paused for a second): beyond it, connecting clients' SYNs are dropped and
    /// retried 1, 3, 7 s later, past a forge's delivery timeout, and GitHub does not redeliver by
    /// itself. Linux caps it at `net.core.somaxconn` (4096 since kernel 5.4, 128 before; `serve`
    /// warns when it is lower than this value). The default, 1024, is twice a burst of 500
    /// deliveries (a busy forge after a pause), well inside the default somaxconn.
    pub listen_backlog: u32,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self { max_body_bytes: 25 * 1024 * 1024, db_pool_size: 32, listen_backlog: 1024 }
    }
}
