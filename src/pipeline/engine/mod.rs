//! Workers: claim a run, hold its lease with a heartbeat, drive its steps, end it in one state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::Instrument;

use super::authorise::{Authorise, Verdict, needs_check};
use super::step::{StepError, StepErrorKind, StepName, StepRunner};
use crate::metrics;
use crate::stand::{RunId, RunState, StepState};
use crate::store::caps::{self, Admission};
use crate::store::lifecycle;
use crate::store::runs::{self, Advance, ClaimedRun, Overtaken, RunStoreError, StepEnd};

mod lease;
mod observe;
mod settings;
mod wake;

use lease::{AbortOnDrop, Signals, durable, flagged, heartbeat, lease_lost, newer_deploy};
use observe::{StepTimer, count_run};
use settings::backoff;
pub use settings::{Caps, EngineSettings, Fault};
pub use wake::Wake;

/// How a run ended for the worker that drove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Succeeded,
    Failed,
    /// A newer deploy of the stand was queued: this one stopped at a step boundary.
    Superseded,
    /// A teardown was queued: this deploy stopped at a step boundary.
    Cancelled,
    /// Asked for by a forge user without write access (or with no way to check it): not acted on.
    Rejected,
    /// Another worker holds the run now; this one stopped without writing anything more.
    LeaseLost,
    /// Past `max_active`: back in the queue until a place frees.
    Waiting,
}

/// Why a step could not be driven to its end (a step that fails has an end: see [`Ended`]).
enum StepFailure {
    Lease,
    /// The stand's teardown was queued while this deploy step ran: it was stopped where it was.
    Cancelled,
    /// A newer deploy of the stand was queued while a step that only waits (the image step) ran.
    Superseded,
    Store(RunStoreError),
}

impl From<RunStoreError> for StepFailure {
    fn from(e: RunStoreError) -> Self {
        match e {
            RunStoreError::LeaseLost(_) => StepFailure::Lease,
            other => StepFailure::Store(other),
        }
    }
}

pub struct Engine<R> {
    pool: PgPool,
    runner: Arc<R>,
    settings: EngineSettings,
    /// Names this process in leases: unique per process, readable in `runs.lease_owner`.
    owner: String,
    /// Run limits of projects that set one (project → limit), as `runs::claim` reads them.
    project_limits: serde_json::Value,
    wake: Wake,
    /// Checks forge users' access before their runs act; without one, their runs are refused.
    authoriser: Option<Arc<dyn Authorise>>,
    /// Projects whose stands live longer or shorter than `settings.ttl`.
    project_ttls: HashMap<String, Duration>,
    caps: Caps,
}

/// How a step's attempts ended, as its group collects them.
struct Ended {
    /// The record still to be written at the next boundary; `None` when the step wrote it itself.
    record: Option<StepEnd>,
    error: Option<StepError>,
}

impl<R: StepRunner> Engine<R> {
    pub fn new(pool: PgPool, runner: Arc<R>, settings: EngineSettings, owner: impl Into<String>) -> Self {
        Self {
            pool,
            runner,
            settings,
            owner: owner.into(),
            project_limits: json!({}),
            wake: Wake::default(),
            authoriser: None,
            project_ttls: HashMap::new(),
            caps: Caps::default(),
        }
    }

    /// Caps on stands up at once (`max_active`), counted across every replica.
    pub fn with_caps(mut self, caps: Caps) -> Self {
        self.caps = caps;
        self
    }

    /// Per-project stand lifetimes, instead of `settings.ttl`.
    pub fn with_project_ttls<'a>(mut self, ttls: impl IntoIterator<Item = (&'a str, Duration)>) -> Self {
        self.project_ttls = ttls.into_iter().map(|(p, t)| (p.to_owned(), t)).collect();
        self
    }

    /// Lets `/draft` commands and check-run buttons act once the forge confirms write access.
    pub fn with_authoriser(mut self, authoriser: Arc<dyn Authorise>) -> Self {
        self.authoriser = Some(authoriser);
        self
    }

    /// Shares a [`Wake`] with whoever queues runs in this process (the webhook handler, the API).
    pub fn with_wake(mut self, wake: Wake) -> Self {
        self.wake = wake;
        self
    }

    /// Per-project caps on runs in flight across every replica, on top of `max_running`.
    pub fn with_project_limits<'a>(mut self, limits: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        self.project_limits = limits.into_iter().map(|(p, n)| (p.to_owned(), json!(n))).collect();
        self
    }

    /// `settings.workers` loops that claim and drive runs until `shutdown` turns true; a run in
    /// progress then finishes (or is resumed by another worker once its lease expires).
    pub async fn run_workers(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..self.settings.workers.max(1) {
            let (engine, mut shutdown) = (self.clone(), shutdown.clone());
            set.spawn(async move {
                while !*shutdown.borrow() {
                    match engine.run_one().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "worker could not claim or drive a run"),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(engine.settings.poll) => {}
                        _ = engine.wake.woken() => {}
                        _ = shutdown.changed() => {}
                    }
                }
            });
        }
        set.join_all().await;
    }

    /// Claims one runnable run and drives it to its end; `None` when nothing is runnable.
    pub async fn run_one(&self) -> Result<Option<(RunId, RunEnd)>, RunStoreError> {
        let claimed =
            runs::claim(&self.pool, &self.owner, self.settings.lease, self.settings.max_running, &self.project_limits)
                .await?;
        let Some(run) = claimed else {
            return Ok(None);
        };
        let span = tracing::info_span!(
            "run",
            run = run.run_id.get(),
            stand = run.stand_id.get(),
            project = %run.project,
            kind = %run.kind,
            request_id = tracing::field::Empty,
            delivery = tracing::field::Empty,
        );
        // Which request and delivery asked for the run, so its lines can be matched with theirs.
        match runs::origin(&self.pool, run.run_id).await {
            Ok(origin) => {
                if let Some(id) = &origin.request_id {
                    span.record("request_id", id.as_str());
                }
                if let Some(id) = &origin.delivery {
                    span.record("delivery", id.as_str());
                }
            }
            Err(e) => tracing::debug!(error = %e, run = run.run_id.get(), "run origin not found"),
        }
        async {
            tracing::info!(number = run.number, attempt = run.attempt, "run claimed");
            let (lost_tx, lost_rx) = watch::channel(false);
            let (cancel_tx, cancel_rx) = watch::channel(false);
            let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat(
                self.pool.clone(),
                run.run_id,
                self.owner.clone(),
                self.settings.clone(),
                lost_tx,
                cancel_tx,
            )));
            let signals = Signals { lost: lost_rx, cancel: cancel_rx };
            let end = self.drive(&run, &signals).await?;
            tracing::info!(end = ?end, "run ended");
            Ok(Some((run.run_id, end)))
        }
        .instrument(span)
        .await
    }

    async fn drive(&self, run: &ClaimedRun, signals: &Signals) -> Result<RunEnd, RunStoreError> {
        let lost = &signals.lost;
        // `/draft` commands and check-run buttons are honoured only from users with write access.
        if needs_check(run) {
            match self.authorise(run, lost).await {
                Ok(Ok(Verdict::Allowed)) => {}
                Ok(Ok(Verdict::Denied { reason })) => {
                    let error = json!({ "label": "unauthorised", "message": reason });
                    return self.end(run, RunState::Rejected, RunEnd::Rejected, Some(error), Vec::new()).await;
                }
                Ok(Err(e)) => {
                    let error = json!({ "kind": e.kind, "label": e.label, "message": e.message });
                    return self.end(run, RunState::Failed, RunEnd::Failed, Some(error), Vec::new()).await;
                }
                Err(failure) => return failure.into_end(),
            }
        }
        if run.kind.needs_place() && !self.place(run).await? {
            return Ok(RunEnd::Waiting);
        }
        // Resuming: steps recorded as done are never executed again. Steps are only recorded under a
        // claim, so a run claimed for the first time has none to read.
        let done: HashSet<String> = if run.attempt > 1 {
            runs::steps(&self.pool, run.run_id)
                .await?
                .into_iter()
                .filter(|s| s.state.is_done())
                .map(|s| s.name)
                .collect()
        } else {
            HashSet::new()
        };
        if run.kind.resets_expiry() {
            // The stand lives a TTL from when its newest deploy started (DESIGN.md's TTL contract);
            // before the first step, so the namespace step annotates the new expiry.
            let ttl = self.project_ttls.get(run.project.as_str()).copied().unwrap_or(self.settings.ttl);
            lifecycle::reset_expiry(&self.pool, run.run_id, ttl).await?;
        }
        if !done.contains(StepName::Report.as_str()) {
            self.runner.started(run).await;
        }
        // Ends of steps not yet written: each boundary writes them together with its own records.
        let mut ended: Vec<StepEnd> = Vec::new();
        let mut failure: Option<(StepName, StepError)> = None;
        for group in run.kind.plan() {
            let pending: Vec<StepName> = group.iter().copied().filter(|s| !done.contains(s.as_str())).collect();
            let attempts = match self.boundary(run, &mut ended, true, &pending).await {
                Ok(Advance::Started(attempts)) => attempts,
                Ok(Advance::Overtaken(Overtaken::ByDeploy)) => {
                    return self.end(run, RunState::Superseded, RunEnd::Superseded, None, ended).await;
                }
                Ok(Advance::Overtaken(Overtaken::ByTeardown)) => {
                    return self.end(run, RunState::Cancelled, RunEnd::Cancelled, None, ended).await;
                }
                Err(failure) => return failure.into_end(),
            };
            let left = AtomicUsize::new(pending.len());
            let results = join_all(
                pending.iter().zip(attempts).map(|(s, attempt)| self.step(run, *s, attempt, &left, signals, true)),
            )
            .await;
            let (mut cancelled, mut superseded) = (false, false);
            for (step, result) in pending.iter().zip(results) {
                match result {
                    Ok(Ended { record, error }) => {
                        ended.extend(record);
                        if let Some(e) = error {
                            failure.get_or_insert((*step, e));
                        }
                    }
                    Err(StepFailure::Cancelled) => {
                        cancelled = true;
                        let detail = json!({ "cancelled": "the stand's teardown was queued" });
                        ended.push(StepEnd { name: step.as_str(), state: StepState::Cancelled, detail, error: None });
                    }
                    Err(StepFailure::Superseded) => {
                        superseded = true;
                        let detail = json!({ "cancelled": "a newer push was queued while this run waited" });
                        ended.push(StepEnd { name: step.as_str(), state: StepState::Cancelled, detail, error: None });
                    }
                    Err(failure) => return failure.into_end(),
                }
            }
            if cancelled {
                return self.end(run, RunState::Cancelled, RunEnd::Cancelled, None, ended).await;
            }
            if superseded {
                return self.end(run, RunState::Superseded, RunEnd::Superseded, None, ended).await;
            }
            if failure.is_some() {
                break;
            }
        }
        if let Some((step, _)) = &failure
            && run.kind.rolls_back_on_failure()
            && step.needs_rollback_on_failure()
            && !done.contains(StepName::Rollback.as_str())
        {
            // A failed rollback is recorded on its row and in the report; the run fails either way.
            if let Err(failure) = self.final_step(run, StepName::Rollback, &mut ended, signals).await {
                return failure.into_end();
            }
        }
        if !done.contains(StepName::Report.as_str()) {
            match self.final_step(run, StepName::Report, &mut ended, signals).await {
                Ok(None) => {}
                Ok(Some(e)) => {
                    failure.get_or_insert((StepName::Report, e));
                }
                Err(failure) => return failure.into_end(),
            }
        }
        match failure {
            None => self.end(run, RunState::Succeeded, RunEnd::Succeeded, None, ended).await,
            Some((step, e)) => {
                let error = json!({ "step": step, "kind": e.kind, "label": e.label, "message": e.message });
                self.end(run, RunState::Failed, RunEnd::Failed, Some(error), ended).await
            }
        }
    }

    /// Takes one of `max_active`'s places for the run's stand; false when it must wait, with the
    /// run back in the queue and, the first time, its comment saying why.
    async fn place(&self, run: &ClaimedRun) -> Result<bool, RunStoreError> {
        let limits = self.caps.limits(run.project.as_str());
        // A run a newer deploy or a teardown overtook ends at its first boundary: it needs no place,
        // and waiting for one would hold up the runs behind it. Without a cap nothing waits.
        if limits.any() && runs::overtaken_by(&self.pool, run).await?.is_some() {
            return Ok(true);
        }
        match caps::admit(&self.pool, run.stand_id, limits).await? {
            Admission::Placed => Ok(true),
            Admission::Waiting { reason, news, made_room } => {
                tracing::info!(%reason, made_room = made_room.map(|s| s.get()), "waiting for a place");
                if news {
                    self.runner.started(run).await;
                }
                if made_room.is_some() {
                    self.wake.wake();
                }
                runs::defer(&self.pool, run.run_id, &self.owner, self.settings.place_recheck).await?;
                Ok(false)
            }
        }
    }

    /// The forge's word on the requester, asked again with backoff while the forge is unreachable.
    /// `Ok(Err(e))`: no answer could be had; `Err(_)`: the lease was lost meanwhile.
    async fn authorise(
        &self,
        run: &ClaimedRun,
        lost: &watch::Receiver<bool>,
    ) -> Result<Result<Verdict, StepError>, StepFailure> {
        let Some(authoriser) = &self.authoriser else {
            return Ok(Ok(Verdict::Denied { reason: "no forge client is configured to check write access".into() }));
        };
        let mut attempt = 1;
        loop {
            let result = tokio::select! {
                r = authoriser.authorise(run) => r,
                _ = lease_lost(lost) => return Err(StepFailure::Lease),
            };
            match result {
                Ok(v) => return Ok(Ok(v)),
                Err(e) if e.kind == StepErrorKind::Transient && attempt < self.settings.max_step_attempts => {
                    let delay = backoff(&self.settings, attempt);
                    tracing::info!(attempt, retry_in = ?delay, error = %e, "access check failed, will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = lease_lost(lost) => return Err(StepFailure::Lease),
                    }
                    attempt += 1;
                }
                Err(e) => return Ok(Err(e)),
            }
        }
    }

    /// Rollback and report: run whatever happened before, without giving way to a newer run.
    async fn final_step(
        &self,
        run: &ClaimedRun,
        step: StepName,
        ended: &mut Vec<StepEnd>,
        signals: &Signals,
    ) -> Result<Option<StepError>, StepFailure> {
        let Advance::Started(attempts) = self.boundary(run, ended, false, &[step]).await? else {
            unreachable!("a boundary that does not check for newer runs is never overtaken")
        };
        let Ended { record, error } = self.step(run, step, attempts[0], &AtomicUsize::new(1), signals, false).await?;
        ended.extend(record);
        Ok(error)
    }

    /// Writes the pending step ends and starts `next` in one statement (`runs::advance`), then fires
    /// any `after:` fault point of the steps it recorded.
    async fn boundary(
        &self,
        run: &ClaimedRun,
        ended: &mut Vec<StepEnd>,
        check_overtaken: bool,
        next: &[StepName],
    ) -> Result<Advance, StepFailure> {
        let names: Vec<&str> = next.iter().map(|s| s.as_str()).collect();
        let advance =
            durable(&self.settings, || runs::advance(&self.pool, run, &self.owner, ended, check_overtaken, &names))
                .await?;
        for end in ended.drain(..) {
            self.fault_point_named(true, end.name);
        }
        Ok(advance)
    }

    async fn end(
        &self,
        run: &ClaimedRun,
        state: RunState,
        end: RunEnd,
        error: Option<serde_json::Value>,
        ended: Vec<StepEnd>,
    ) -> Result<RunEnd, RunStoreError> {
        let finished = durable(&self.settings, || {
            runs::finish_run(&self.pool, run.run_id, &self.owner, state, error.as_ref(), &ended)
        })
        .await;
        match finished {
            Ok(()) => {
                for step in &ended {
                    self.fault_point_named(true, step.name);
                }
                count_run(run, state, error.as_ref());
                Ok(end)
            }
            Err(RunStoreError::LeaseLost(_)) => Ok(RunEnd::LeaseLost),
            Err(e) => Err(e),
        }
    }

    /// One step from its recorded start to its end: retried with backoff while it fails
    /// transiently, stopped when the lease is lost (or, when `cancellable`, when the stand's
    /// teardown is queued). `left` counts the steps of its group still running: the last to end
    /// returns its end for the next boundary to write with its own records; the others write
    /// theirs here, as they end. A cancelled step leaves its end to the caller.
    async fn step(
        &self,
        run: &ClaimedRun,
        step: StepName,
        mut attempt: i32,
        left: &AtomicUsize,
        signals: &Signals,
        cancellable: bool,
    ) -> Result<Ended, StepFailure> {
        let name = step.as_str();
        let lost = &signals.lost;
        let cancel = async { if cancellable { flagged(&signals.cancel).await } else { std::future::pending().await } };
        tokio::pin!(cancel);
        // A step that only waits gives way to a newer deploy at once, not at its end: the newer
        // commit's image is what the PR needs, and the old wait could hold the stand for minutes.
        let overtaken = async {
            if cancellable && run.kind.gives_way_to_newer_runs() && step.gives_way_while_running() {
                newer_deploy(&self.pool, run, self.settings.poll).await
            } else {
                std::future::pending().await
            }
        };
        tokio::pin!(overtaken);
        // Retries included: the figure is how long the step held the run up.
        let timer = StepTimer::start(name);
        loop {
            self.fault_point(false, step);
            let result = tokio::select! {
                r = self.runner.run(step, run) => r,
                _ = lease_lost(lost) => return Err(StepFailure::Lease),
                _ = &mut cancel => return Err(StepFailure::Cancelled),
                _ = &mut overtaken => return Err(StepFailure::Superseded),
            };
            let (end, error) = match result {
                Ok(outcome) => {
                    let state = if outcome.skipped { StepState::Skipped } else { StepState::Succeeded };
                    if step == StepName::Verify && !outcome.skipped {
                        self.observe_time_to_url(run).await;
                    }
                    (StepEnd { name, state, detail: outcome.detail, error: None }, None)
                }
                Err(e) if e.kind == StepErrorKind::Transient && attempt < self.settings.max_step_attempts => {
                    let error = serde_json::to_value(&e).expect("step errors serialise");
                    let no_detail = json!({});
                    durable(&self.settings, || {
                        runs::finish_step(
                            &self.pool,
                            run.run_id,
                            &self.owner,
                            name,
                            StepState::Running,
                            &no_detail,
                            Some(&error),
                        )
                    })
                    .await?;
                    let delay = backoff(&self.settings, attempt);
                    tracing::info!(step = name, attempt, retry_in = ?delay, error = %e, "step failed, will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = lease_lost(lost) => return Err(StepFailure::Lease),
                        _ = &mut cancel => return Err(StepFailure::Cancelled),
                    }
                    let names = &[name][..];
                    let Advance::Started(attempts) =
                        durable(&self.settings, || runs::advance(&self.pool, run, &self.owner, &[], false, names))
                            .await?
                    else {
                        unreachable!("a boundary that does not check for newer runs is never overtaken")
                    };
                    attempt = attempts[0];
                    continue;
                }
                Err(e) => {
                    tracing::warn!(step = name, attempt, error = %e, "step failed");
                    let error = serde_json::to_value(&e).expect("step errors serialise");
                    (StepEnd { name, state: StepState::Failed, detail: json!({}), error: Some(error) }, Some(e))
                }
            };
            timer.finish(end.state);
            if let Some(e) = &error {
                metrics::error("step", &e.label);
            }
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                return Ok(Ended { record: Some(end), error });
            }
            durable(&self.settings, || {
                runs::finish_step(&self.pool, run.run_id, &self.owner, name, end.state, &end.detail, end.error.as_ref())
            })
            .await?;
            self.fault_point(true, step);
            return Ok(Ended { record: None, error });
        }
    }
}

impl StepFailure {
    /// How the run ends when a step could not be driven to its end.
    fn into_end(self) -> Result<RunEnd, RunStoreError> {
        match self {
            StepFailure::Lease => Ok(RunEnd::LeaseLost),
            // Handled by the group that ran the step; a final step is never cancelled.
            StepFailure::Cancelled => Ok(RunEnd::Cancelled),
            StepFailure::Superseded => Ok(RunEnd::Superseded),
            StepFailure::Store(e) => Err(e),
        }
    }
}

impl<R> Engine<R> {
    fn fault_point_named(&self, after: bool, name: &str) {
        if let Some(step) = StepName::ALL.iter().copied().find(|s| s.as_str() == name) {
            self.fault_point(after, step);
        }
    }

    fn fault_point(&self, after: bool, step: StepName) {
        if self.settings.fault == Some(Fault { after, step }) {
            tracing::error!(step = step.as_str(), after, "DRAFTD_FAULT: aborting the process");
            std::process::abort();
        }
    }
}
