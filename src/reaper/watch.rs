//! The health watch (issue 24): between deploys, each awake stand is probed once per `[watch]
//! interval` the way verify's gate probes it (one request, same target, same rule: a 5xx, a timeout
//! or an answer the app never gave fails). A stand whose probe fails twice in a row
//! (`recheck_after` apart) turns degraded: its sticky comment and check say so with verify's
//! diagnostics, an audit row records it, and `draftd_stand_health` counts it. It turns healthy by
//! itself at its next answer, said the same way. Nothing is written or asked of Kubernetes while
//! all is well: only changes are recorded and reported.
//!
//! Each tick claims the stands whose slot came (store/health.rs spreads the slots over the
//! interval, so a fleet is probed a few stands a second, never in a burst) in one statement that
//! also moves them to their next slot, so replicas never probe one stand twice in an interval.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use sqlx::PgPool;

use super::ReapError;
use crate::cluster::verify::{ProbeResult, Prober, UrlProber};
use crate::cluster::{Cluster, Kubernetes};
use crate::config::Config;
use crate::helm::release_name;
use crate::reporter::StandReport;
use crate::stand::{Health, StandId, stand_host, stand_url};
use crate::store::health::{self, Due, Finding};

/// Log lines per failing container quoted in the diagnostics, and their length: as verify quotes them.
const QUOTED_LINES: usize = 20;
const MAX_DIAGNOSTICS_CHARS: usize = 4000;

/// What one tick did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tick {
    /// Stands whose slot came, probed or not.
    pub claimed: usize,
    /// Probe requests sent (a failed probe is tried once more).
    pub probes: usize,
    /// Claimed with a run in flight: the run's verify judges it, the watch waits for its next slot.
    pub skipped: usize,
    pub degraded: Vec<StandId>,
    pub recovered: Vec<StandId>,
    /// Parts that failed (a report, a record); the rest of the tick went on.
    pub errors: Vec<String>,
}

/// What the check of one claimed stand came to.
#[derive(Debug, Default)]
struct Checked {
    probes: usize,
    skipped: bool,
    changed: Option<Health>,
    error: Option<String>,
}

pub struct Watch<C = Kubernetes> {
    pool: PgPool,
    config: Arc<Config>,
    /// Stands without a host are probed through the API server proxy, and a degraded stand's pods
    /// are diagnosed, through it; without one they are neither.
    cluster: Option<Arc<C>>,
    /// `[access]`'s key: a private stand is probed with its current access token.
    access: Option<crate::credentials::access::AccessKey>,
}

impl<C: Cluster> Watch<C> {
    pub fn new(pool: PgPool, config: Arc<Config>) -> Self {
        Self { pool, config, cluster: None, access: None }
    }

    pub fn with_access(mut self, key: Option<crate::credentials::access::AccessKey>) -> Self {
        self.access = key;
        self
    }

    /// The stand's current access token, when its URL is private (a token was handed out).
    async fn token(&self, due: &Due) -> Option<secrecy::SecretString> {
        let key = self.access.as_ref()?;
        let run = crate::store::access::token_run(&self.pool, due.stand_id).await.ok()??;
        Some(key.token(due.stand_id, run).0)
    }

    pub fn with_cluster(mut self, cluster: Arc<C>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// How often the due stands are claimed: a second for the default interval (a few stands each
    /// with a thousand awake), finer for short intervals so each stand's slot is kept.
    pub fn tick_every(&self) -> Duration {
        (self.config.watch.interval / 300).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// One tick at `now`, waiting for its probes: claims the due stands (at most `limit`), checks
    /// them `[watch] concurrency` at a time, and records and reports each change.
    pub async fn tick(&self, now: DateTime<Utc>, limit: usize) -> Result<Tick, ReapError> {
        let due = self.claim(now, limit).await?;
        let mut tick = Tick { claimed: due.len(), ..Tick::default() };
        let concurrency = self.config.watch.concurrency as usize;
        let mut checks = futures_util::stream::iter(due).map(|d| self.check(d)).buffer_unordered(concurrency);
        while let Some((stand, checked)) = checks.next().await {
            tick.add(stand, checked);
        }
        Ok(tick)
    }

    async fn claim(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Due>, ReapError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(health::claim_due(&self.pool, now, self.config.watch.interval, limit).await?)
    }

    /// Probes one claimed stand (again after `recheck_after` when a healthy one fails) and records
    /// and reports a change of its health.
    async fn check(&self, due: Due) -> (StandId, Checked) {
        let stand = due.stand_id;
        if due.busy {
            metrics::counter!(crate::metrics::WATCH_PROBES, "outcome" => "skipped").increment(1);
            return (stand, Checked { skipped: true, ..Checked::default() });
        }
        let timeout = self.config.watch.timeout;
        let probed_at = Utc::now();
        let mut checked = Checked::default();
        let mut failure = None;
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(self.config.watch.recheck_after).await;
            }
            let Some((target, result)) = self.probe(&due).await else { return (stand, checked) };
            checked.probes += 1;
            metrics::counter!(crate::metrics::WATCH_PROBES, "outcome" => result.label()).increment(1);
            failure = result.failure(timeout).map(|why| format!("probe of {target} {why}"));
            // A degraded stand needs one answer to recover and one failure to stay as it is.
            if failure.is_none() || due.health == Health::Degraded {
                break;
            }
        }
        let changed = match (due.health, failure) {
            (Health::Healthy, Some(reason)) => self.degrade(&due, reason, probed_at).await,
            (Health::Degraded, None) => self.recover(&due, probed_at).await,
            _ => Ok(None),
        };
        match changed {
            Ok(changed) => checked.changed = changed,
            Err(e) => checked.error = Some(format!("health of stand {stand}: {e}")),
        }
        (stand, checked)
    }

    /// One probe, of what verify probes: the stand's host through the ingress controller
    /// (`[cluster.verify] ingress_address`), else its URL, else its Service through the API server.
    /// `None` when there is nothing to probe (no host and no cluster).
    async fn probe(&self, due: &Due) -> Option<(String, ProbeResult)> {
        let v = &self.config.cluster.verify;
        let timeout = self.config.watch.timeout;
        let project = self.config.projects.iter().find(|p| p.name == due.project);
        let host = project.and_then(|p| p.host.as_deref()).map(|pattern| stand_host(pattern, &due.namespace));
        match (host, &v.ingress_address, &self.cluster) {
            (Some(host), Some(address), _) => {
                let prober = UrlProber::through(address, &host, &v.probe_path).with_access(self.token(due).await);
                Some(once(&prober, timeout).await)
            }
            (Some(host), None, _) => {
                let prober =
                    UrlProber::new(format!("{}{}", stand_url(&host), v.probe_path)).with_access(self.token(due).await);
                Some(once(&prober, timeout).await)
            }
            (None, _, Some(cluster)) => {
                let release = release_name(&due.namespace);
                Some(once(&cluster.service_prober(&due.namespace, &release, "http", &v.probe_path), timeout).await)
            }
            (None, _, None) => None,
        }
    }

    async fn degrade(&self, due: &Due, reason: String, probed_at: DateTime<Utc>) -> Result<Option<Health>, String> {
        let diagnostics = match &self.cluster {
            Some(cluster) => Some(match cluster.diagnose(&due.namespace).await {
                Ok(d) => d.summary(QUOTED_LINES, MAX_DIAGNOSTICS_CHARS),
                Err(e) => format!("(diagnostics unavailable: {e})"),
            }),
            None => None,
        };
        let finding = Finding { reason, diagnostics };
        let now = Utc::now();
        let changed = health::degrade(&self.pool, due.stand_id, &finding, probed_at, now).await;
        if !changed.map_err(|e| e.to_string())? {
            return Ok(None);
        }
        tracing::warn!(stand = %due.stand_id, namespace = %due.namespace, reason = %finding.reason, "stand degraded");
        self.report(due.stand_id, now).await?;
        Ok(Some(Health::Degraded))
    }

    async fn recover(&self, due: &Due, probed_at: DateTime<Utc>) -> Result<Option<Health>, String> {
        let now = Utc::now();
        let changed = health::recover(&self.pool, due.stand_id, "it answered its probe again", probed_at, now).await;
        if !changed.map_err(|e| e.to_string())? {
            return Ok(None);
        }
        tracing::info!(stand = %due.stand_id, namespace = %due.namespace, "stand healthy again");
        self.report(due.stand_id, now).await?;
        Ok(Some(Health::Healthy))
    }

    /// The sticky comment and the check, as the stand's newest run and its health now make them.
    async fn report(&self, stand: StandId, now: DateTime<Utc>) -> Result<(), String> {
        let report = StandReport::load(&self.pool, &self.config, stand, now).await.map_err(|e| e.to_string())?;
        report.queue_health(&self.pool).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

async fn once<P: Prober>(prober: &P, timeout: Duration) -> (String, ProbeResult) {
    (prober.target(), prober.probe(timeout).await)
}

impl Tick {
    fn add(&mut self, stand: StandId, checked: Checked) {
        self.probes += checked.probes;
        self.skipped += usize::from(checked.skipped);
        match checked.changed {
            Some(Health::Degraded) => self.degraded.push(stand),
            Some(Health::Healthy) => self.recovered.push(stand),
            None => {}
        }
        if let Some(e) = checked.error {
            crate::metrics::error("watch", "health_change_failed");
            self.errors.push(e);
        }
    }
}

/// Watches until `stop` turns true: every [`Watch::tick_every`] the due stands are claimed, as many
/// as probes may start (`[watch] concurrency` in flight), and each is checked on its own task, so a
/// slow probe never holds up the next stand's slot.
pub async fn run<C: Cluster>(watch: Watch<C>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let watch = Arc::new(watch);
    let permits = Arc::new(tokio::sync::Semaphore::new(watch.config.watch.concurrency as usize));
    let mut ticks = tokio::time::interval(watch.tick_every());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let free = permits.available_permits();
        if free == 0 {
            continue;
        }
        let due = match watch.claim(Utc::now(), free).await {
            Ok(due) => due,
            Err(e) => {
                crate::metrics::error("watch", "claim_failed");
                tracing::warn!(error = %e, "the health watch could not claim due stands");
                continue;
            }
        };
        for d in due {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let watch = watch.clone();
            tokio::spawn(async move {
                let (stand, checked) = watch.check(d).await;
                drop(permit);
                let mut tick = Tick::default();
                tick.add(stand, checked);
                for e in &tick.errors {
                    tracing::warn!(error = %e, "health watch");
                }
            });
        }
    }
}
