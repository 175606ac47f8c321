//! Prometheus metrics: the names in one place, the recorder installed once per process, and the
//! gauges that are read from the database when `/metrics` is scraped.
//!
//! Counters and histograms are recorded where things happen (through the `metrics` facade, so the
//! code that records does not carry a registry around). Figures that describe the state of the
//! database rather than events (queue depth, stands by state) are computed at scrape time, so every
//! replica reports the same truth and nothing drifts after a restart.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Webhook deliveries by `forge`, `event`, `outcome` (queued, ignored, duplicate, refused).
pub const WEBHOOK_DELIVERIES: &str = "draftd_webhook_deliveries_total";
/// Seconds from a webhook request arriving to its answer, by `forge`.
pub const INTAKE_DURATION: &str = "draftd_intake_duration_seconds";
/// Finished runs by `kind`, `trigger` and `outcome` (succeeded, failed, cancelled, superseded, rejected).
pub const RUNS: &str = "draftd_runs_total";
/// Seconds a step took, by `step` and `outcome`.
pub const STEP_DURATION: &str = "draftd_step_duration_seconds";
/// Seconds from the forge event (the delivery's arrival) to a working stand URL, by `project`.
pub const TIME_TO_URL: &str = "draftd_time_to_url_seconds";
/// Runs waiting for a worker (scrape time).
pub const QUEUE_DEPTH: &str = "draftd_queue_depth";
/// Age in seconds of the oldest run waiting for a worker; 0 when none waits (scrape time).
pub const QUEUE_OLDEST_AGE: &str = "draftd_queue_oldest_age_seconds";
/// Stands by `state` (active, closing, removed) (scrape time).
pub const STANDS: &str = "draftd_stands";
/// Stands that are up (state active) (scrape time).
pub const STANDS_ACTIVE: &str = "draftd_stands_active";
/// Stands closing whose teardown failed so often the reaper stopped retrying (scrape time). Alert on > 0.
pub const STANDS_STUCK: &str = "draftd_stands_stuck_closing";
/// Finished teardown runs by `reason` (the trigger: closed, merged, command, api, expired, …) and `outcome`.
pub const TEARDOWNS: &str = "draftd_teardowns_total";
/// Reaper sweeps by `outcome` (ok, errors, busy).
pub const REAPER_SWEEPS: &str = "draftd_reaper_sweeps_total";
/// Seconds a reaper sweep took.
pub const REAPER_SWEEP_DURATION: &str = "draftd_reaper_sweep_duration_seconds";
/// Unix time the last reaper sweep finished, from any replica or the CronJob; 0 before the first (scrape time).
pub const REAPER_LAST_SWEEP: &str = "draftd_reaper_last_sweep_timestamp_seconds";
/// A gauge, though cumulative: recomputed from the recorded awake stretches at each scrape.
pub const STAND_COST: &str = "draftd_stand_cost_total";
/// Stands the reaper found expired and queued for teardown.
pub const REAPER_EXPIRED: &str = "draftd_reaper_expired_total";
/// Orphans the reaper removed, by `kind` (namespace, folder, database, role, login, vault_role).
pub const REAPER_ORPHANS_REMOVED: &str = "draftd_reaper_orphans_removed_total";
/// Forge API calls by `forge`, `operation` and `outcome` (ok, or the error's label).
pub const FORGE_CALLS: &str = "draftd_forge_api_calls_total";
/// Times a forge call waited for a rate limit to pass, by `forge`.
pub const FORGE_RATE_LIMIT_WAITS: &str = "draftd_forge_rate_limit_waits_total";
/// Answers of `/access/check` by `verdict` (person, allowed, sign_in, refused): who comes into private stands.
pub const ACCESS_CHECKS: &str = "draftd_access_checks_total";
/// Awake stands the health watch looks after, by `project` and `health` (healthy, degraded)
/// (scrape time). Per project, not per stand: a fleet of a thousand stands is two series a project,
/// and the stand itself is named by its comment, check, dashboard row and audit row.
pub const STAND_HEALTH: &str = "draftd_stand_health";
/// Probes of the health watch by `outcome`: `answered` (below 500), `5xx`, `timeout`,
/// `unreachable`, `refused` (something in front of the app answered), `skipped` (a run in flight).
pub const WATCH_PROBES: &str = "draftd_watch_probes_total";
/// Errors by their stable `metric_label` and `source` (http, step, reporter, reaper).
pub const ERRORS: &str = "draftd_errors_total";

/// Buckets for step durations and time to URL: seconds to tens of minutes.
const SLOW_BUCKETS: &[f64] = &[0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0];
/// Buckets for intake: the webhook answer is meant to take milliseconds.
const FAST_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Buckets for reaper sweeps: milliseconds for the database part, up to minutes with resync and orphan
/// scans against slow forges and clusters.
const SWEEP_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns the handle that renders it. Safe to call
/// from every test and from `serve`; later calls return the first handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(INTAKE_DURATION.into()), FAST_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STEP_DURATION.into()), SLOW_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(TIME_TO_URL.into()), SLOW_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(REAPER_SWEEP_DURATION.into()), SWEEP_BUCKETS))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder (a test harness's) may already be global; then ours only renders what
        // is recorded through it, which is nothing, and the tests that read metrics install first.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(WEBHOOK_DELIVERIES, "Webhook deliveries by forge, event and outcome");
    describe_histogram!(INTAKE_DURATION, Unit::Seconds, "Time to answer a webhook");
    describe_counter!(RUNS, "Finished runs by kind, trigger and outcome");
    describe_histogram!(STEP_DURATION, Unit::Seconds, "Step durations by step and outcome");
    describe_histogram!(TIME_TO_URL, Unit::Seconds, "Time from the forge event to a working stand URL");
    describe_gauge!(QUEUE_DEPTH, "Runs waiting for a worker");
    describe_gauge!(QUEUE_OLDEST_AGE, Unit::Seconds, "Age of the oldest run waiting for a worker");
    describe_gauge!(STANDS, "Stands by state");
    describe_gauge!(STANDS_ACTIVE, "Stands that are up");
    describe_gauge!(STANDS_STUCK, "Stands closing whose teardown gave up");
    describe_counter!(TEARDOWNS, "Finished teardowns by reason and outcome");
    describe_gauge!(REAPER_LAST_SWEEP, Unit::Seconds, "When the last reaper sweep finished (unix time)");
    describe_counter!(REAPER_SWEEPS, "Reaper sweeps by outcome");
    describe_histogram!(REAPER_SWEEP_DURATION, Unit::Seconds, "Reaper sweep durations");
    describe_counter!(REAPER_EXPIRED, "Expired stands the reaper queued for teardown");
    describe_counter!(REAPER_ORPHANS_REMOVED, "Orphans the reaper removed, by kind");
    describe_counter!(FORGE_CALLS, "Forge API calls by forge, operation and outcome");
    describe_counter!(FORGE_RATE_LIMIT_WAITS, "Forge calls held back by a rate limit, by forge");
    describe_counter!(ERRORS, "Errors by stable label and source");
    describe_counter!(ACCESS_CHECKS, "Answers of the private stands' access check, by verdict");
    describe_gauge!(STAND_HEALTH, "Awake stands by project and health (healthy, degraded)");
    describe_counter!(WATCH_PROBES, "Health watch probes by outcome");
    describe_gauge!(
        STAND_COST,
        "What each project's stands have cost so far, in [cost] currency (an estimate from requests)"
    );
}

/// Counts an answer of the access check.
pub fn access_check(verdict: &'static str) {
    metrics::counter!(ACCESS_CHECKS, "verdict" => verdict).increment(1);
}

/// Counts an error under its stable label.
pub fn error(source: &'static str, label: &str) {
    metrics::counter!(ERRORS, "source" => source, "metric_label" => label.to_owned()).increment(1);
}

/// The state figures `/metrics` reports beside the counters, read from the database at scrape time
/// (`store::metrics::snapshot`).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Runs waiting for a worker: queued and not held back by a retry backoff.
    pub queued: i64,
    pub oldest_queued: Option<Duration>,
    /// (state, count) for every state that has stands.
    pub stands: Vec<(String, i64)>,
    /// Closing stands whose teardowns failed `max_teardowns` times: the reaper stopped retrying them.
    pub stuck_closing: i64,
    /// Unix time the newest finished sweep ended.
    pub last_sweep: Option<f64>,
    /// (project, what its stands have cost so far at `[cost]`'s prices).
    pub cost: Vec<(String, f64)>,
    /// (project, awake watched stands healthy, degraded), for every project that has stands.
    pub health: Vec<(String, i64, i64)>,
}

/// Sets the database-backed gauges from `snapshot` and renders everything as Prometheus text.
pub fn render(snapshot: &Snapshot) -> String {
    let handle = install();
    metrics::gauge!(QUEUE_DEPTH).set(snapshot.queued as f64);
    metrics::gauge!(QUEUE_OLDEST_AGE).set(snapshot.oldest_queued.map_or(0.0, |d: Duration| d.as_secs_f64()));
    for state in crate::stand::StandState::ALL {
        let n = snapshot.stands.iter().find(|(s, _)| s == state.as_str()).map_or(0, |(_, n)| *n);
        metrics::gauge!(STANDS, "state" => state.as_str()).set(n as f64);
        if state == crate::stand::StandState::Active {
            metrics::gauge!(STANDS_ACTIVE).set(n as f64);
        }
    }
    metrics::gauge!(STANDS_STUCK).set(snapshot.stuck_closing as f64);
    metrics::gauge!(REAPER_LAST_SWEEP).set(snapshot.last_sweep.unwrap_or(0.0));
    for (project, healthy, degraded) in &snapshot.health {
        for (health, n) in [(crate::stand::Health::Healthy, healthy), (crate::stand::Health::Degraded, degraded)] {
            metrics::gauge!(STAND_HEALTH, "project" => project.clone(), "health" => health.as_str()).set(*n as f64);
        }
    }
    for (project, cost) in &snapshot.cost {
        metrics::gauge!(STAND_COST, "project" => project.clone()).set(*cost);
    }
    handle.render()
}
