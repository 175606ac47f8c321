//! The reaper (DESIGN.md): one sweep queues teardowns for stands that expired, retries teardowns
//! that failed, warns on the sticky comment before a stand expires, resyncs stands with the PRs/MRs
//! the forge lists (missed webhooks), and removes orphans: namespaces, dry-run folders, databases,
//! roles and Vault roles that no live stand owns.
//!
//! `draftd reap` runs one sweep (for a Kubernetes CronJob); `serve` runs them on `[reaper] schedule`.
//! A Postgres advisory lock lets one sweep run at a time across replicas and CronJob pods.
//!
//! Nothing is removed on a doubt: a stand is torn down for its PR only when the forge says, for
//! that PR, that it is closed or merged (an error, a timeout or a short list never does, Argo CD
//! issue 11464), and an orphan only when two consecutive scans of its kind found it.

mod orphans;
mod resync;
/// The health watch: awake stands probed between deploys, degraded and healthy again.
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::cluster::{Cluster, Kubernetes};
use crate::config::{Config, Project, Projects};
use crate::credentials::StandCredentials;
use crate::forge::client::AnyForge;
use crate::pipeline::Wake;
use crate::pipeline::lifecycle::queue_report;
use crate::stand::StandId;
use crate::store::StoreError;
use crate::store::lifecycle::{self, QueuedTeardown};
use crate::store::sleep::QueuedSleep;
use crate::store::{history, sweeps};
use crate::traffic::{Prometheus, Traffic};

pub use orphans::OrphanReport;
pub use resync::ProjectResync;

/// Stands queued for teardown per sweep at most; the next sweep takes the rest.
const MAX_EXPIRED_PER_SWEEP: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ReapError {
    fn from(e: sqlx::Error) -> Self {
        ReapError::Store(StoreError::Db(e))
    }
}

/// What one sweep did. Parts that failed are in `errors`; the rest of the sweep went on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sweep {
    pub sweep_id: i64,
    pub expired: Vec<QueuedTeardown>,
    pub retried: Vec<QueuedTeardown>,
    /// Stands whose sticky comment now warns that they expire soon.
    pub warned: Vec<StandId>,
    pub resync: Vec<ProjectResync>,
    pub orphans: Vec<OrphanReport>,
    /// Idle stands put to sleep (`[sleep] idle_after`).
    pub slept: Vec<QueuedSleep>,
    /// Stands that got requests since the last sweep (`[sleep] prometheus_url`), marked as used.
    pub requested: Option<u64>,
    pub errors: Vec<String>,
}

impl Sweep {
    /// Teardowns and deploys this sweep queued: what workers should be woken for.
    pub fn queued_runs(&self) -> usize {
        self.expired.len()
            + self.retried.len()
            + self.slept.len()
            + self.resync.iter().map(|r| r.deploys.len() + r.teardowns.len()).sum::<usize>()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SweepOutcome {
    Swept(Sweep),
    /// Another replica (or CronJob pod) holds the sweep lock: this one did nothing.
    Busy,
}

pub struct Reaper<C = Kubernetes> {
    pool: PgPool,
    config: Arc<Config>,
    /// The configured projects, for their branch globs and fork policy (resync filters like intake).
    projects: Vec<Project>,
    forges: Vec<AnyForge>,
    cluster: Option<Arc<C>>,
    credentials: Option<Arc<StandCredentials>>,
    holder: String,
    wake: Option<Wake>,
}

impl<C: Cluster> Reaper<C> {
    pub fn new(pool: PgPool, config: Arc<Config>, holder: impl Into<String>) -> Self {
        // The reaper verifies no webhook: the projects' secrets are not needed, and a CronJob pod
        // need not be given them.
        let projects =
            Projects::resolve_with(&config, |_| Some("unused".into())).map(|p| p.projects).unwrap_or_default();
        Self {
            pool,
            config,
            projects,
            forges: Vec::new(),
            cluster: None,
            credentials: None,
            holder: holder.into(),
            wake: None,
        }
    }

    /// The forge clients resync lists PRs/MRs with; without one for a project, it is not resynced.
    pub fn with_forges(mut self, forges: Vec<AnyForge>) -> Self {
        self.forges = forges;
        self
    }

    /// Kubernetes mode: namespaces are scanned for orphans.
    pub fn with_cluster(mut self, cluster: Arc<C>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Stand databases, roles and Vault roles are scanned for orphans.
    pub fn with_credentials(mut self, credentials: Option<Arc<StandCredentials>>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Workers in this process start at once on the runs a sweep queues.
    pub fn with_wake(mut self, wake: Wake) -> Self {
        self.wake = Some(wake);
        self
    }

    /// One sweep at `now`, unless another holds the lock. The lock is held on a connection of its
    /// own, closed at the end, so a sweeper that dies (or is dropped mid-sweep) never keeps it.
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<SweepOutcome, ReapError> {
        let started = std::time::Instant::now();
        let outcome = self.sweep_once(now).await;
        count_sweep(&outcome, started.elapsed());
        outcome
    }

    async fn sweep_once(&self, now: DateTime<Utc>) -> Result<SweepOutcome, ReapError> {
        let Some(lock) = sweeps::try_lock(&self.pool).await? else {
            return Ok(SweepOutcome::Busy);
        };
        let swept = self.sweep_locked(now).await;
        lock.release().await;
        let sweep = swept?;
        if let Some(wake) = &self.wake {
            for _ in 0..sweep.queued_runs() {
                wake.wake();
            }
        }
        Ok(SweepOutcome::Swept(sweep))
    }

    async fn sweep_locked(&self, now: DateTime<Utc>) -> Result<Sweep, ReapError> {
        let sweep_id = sweeps::start(&self.pool, &self.holder, now).await?;
        let mut sweep = Sweep { sweep_id, ..Sweep::default() };
        sweep.expired = lifecycle::queue_expired(&self.pool, now, MAX_EXPIRED_PER_SWEEP).await?;
        sweep.retried = lifecycle::queue_retries(&self.pool, lifecycle::MAX_TEARDOWN_ATTEMPTS).await?;
        self.warn(now, &mut sweep).await?;
        sweep.slept = self.sleep_idle(now, &mut sweep).await?;
        // The dashboard's stands-by-state chart: a state is a moment, so each sweep counts them.
        history::record_counts(&self.pool, sweep_id, now).await?;
        if self.config.reaper.resync {
            for project in &self.projects {
                let Some(forge) = self.forges.iter().find(|f| f.kind() == project.settings.forge) else { continue };
                let report = resync::project(&self.pool, &self.config, project, forge).await;
                if let Some(e) = &report.error {
                    sweep.errors.push(format!("resync of {}: {e}", project.name.as_str()));
                }
                sweep.resync.push(report);
            }
        }
        if self.config.reaper.orphans {
            let found = orphans::sweep(self, &mut sweep.errors).await?;
            sweep.orphans = found;
        }
        sweeps::finish(&self.pool, sweep_id, &serde_json::to_value(&sweep).unwrap_or_default()).await?;
        Ok(sweep)
    }

    /// Queues a sleep for each stand idle for longer than its project's `[sleep] idle_after`.
    /// Requests to a stand count as activity when Prometheus is configured; when it does not answer,
    /// nothing is put to sleep this sweep (a stand in use must not go dark for a lost query).
    async fn sleep_idle(&self, now: DateTime<Utc>, sweep: &mut Sweep) -> Result<Vec<QueuedSleep>, ReapError> {
        let sleep = &self.config.sleep;
        let idle: Vec<(String, std::time::Duration)> = self
            .config
            .projects
            .iter()
            .filter_map(|p| sleep.idle_after_for(&p.sleep).map(|after| (p.name.clone(), after)))
            .collect();
        if idle.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(prometheus) = Prometheus::from_config(sleep) {
            match prometheus.requests(sleep.traffic_window).await {
                Ok(counts) => {
                    let namespaces: Vec<String> = counts.into_keys().collect();
                    sweep.requested = Some(crate::store::sleep::requests_seen(&self.pool, &namespaces).await?);
                }
                Err(e) => {
                    sweep.errors.push(format!("counting requests to the stands: {e}; no stand was put to sleep"));
                    return Ok(Vec::new());
                }
            }
        }
        Ok(crate::store::sleep::queue_idle(&self.pool, now, &idle, i64::from(sleep.max_per_sweep)).await?)
    }

    /// Stands that expire within `[reaper] warn_before` get their sticky comment re-rendered with
    /// the warning, once per expiry (an extend or a deploy moves it, and the next approach warns again).
    async fn warn(&self, now: DateTime<Utc>, sweep: &mut Sweep) -> Result<(), ReapError> {
        let warn_before = self.config.reaper.warn_before;
        for stand in lifecycle::take_warnings(&self.pool, now, warn_before).await? {
            match queue_report(&self.pool, &self.config, stand, None, now, None).await {
                Ok(_) => sweep.warned.push(stand),
                Err(e) => sweep.errors.push(format!("expiry warning of stand {stand}: {e}")),
            }
        }
        Ok(())
    }
}

/// A sweep in the reaper's metrics: its outcome and duration, what it expired and which orphans it removed.
fn count_sweep(outcome: &Result<SweepOutcome, ReapError>, took: Duration) {
    use crate::metrics as m;
    let label = match outcome {
        Ok(SweepOutcome::Busy) => "busy",
        Ok(SweepOutcome::Swept(s)) if s.errors.is_empty() => "ok",
        Ok(SweepOutcome::Swept(_)) => "errors",
        Err(_) => "failed",
    };
    metrics::counter!(m::REAPER_SWEEPS, "outcome" => label).increment(1);
    if let Ok(SweepOutcome::Swept(s)) = outcome {
        metrics::histogram!(m::REAPER_SWEEP_DURATION).record(took.as_secs_f64());
        metrics::counter!(m::REAPER_EXPIRED).increment(s.expired.len() as u64);
        for orphan in s.orphans.iter().filter(|o| o.removed) {
            metrics::counter!(m::REAPER_ORPHANS_REMOVED, "kind" => orphan.kind.clone()).increment(1);
        }
        for _ in &s.errors {
            m::error("reaper", "sweep_part_failed");
        }
    }
    if outcome.is_err() {
        m::error("reaper", "sweep_failed");
    }
}

/// Sweeps on `schedule` until `stop` turns true; each failure is logged and the next sweep tried.
pub async fn run<C: Cluster>(
    reaper: Reaper<C>,
    schedule: cron::Schedule,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let Some(next) = schedule.upcoming(Utc).next() else { return };
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match reaper.sweep(Utc::now()).await {
            Ok(SweepOutcome::Swept(s)) => tracing::info!(
                sweep = s.sweep_id,
                expired = s.expired.len(),
                retried = s.retried.len(),
                warned = s.warned.len(),
                queued = s.queued_runs(),
                orphans_removed = s.orphans.iter().filter(|o| o.removed).count(),
                errors = s.errors.len(),
                "sweep done"
            ),
            Ok(SweepOutcome::Busy) => tracing::debug!("another sweep holds the lock"),
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }
}
