//! What each CLI subcommand does; `main.rs` only parses arguments and calls these.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpSocket};

use std::sync::Arc;

use crate::config::{ClusterMode, Config, Projects};
use crate::credentials::StandCredentials;
use crate::forge::client::AnyForge;
use crate::forge::{Command, Trigger};
use crate::helm::HelmCli;
use crate::http::{self, AppState};
use crate::pipeline::authorise::{Authorise, ForgeAuthoriser};
use crate::pipeline::image::Registries;
use crate::pipeline::steps::{DryRunSteps, KubernetesSteps};
use crate::pipeline::{Engine, EngineSettings, Fault, StepRunner};
use crate::reaper::{Reaper, SweepOutcome};
use crate::reporter::{Reporter, ReporterSettings};
use crate::stand::StandState;
use crate::store::manual::{self, ManualOutcome, ManualRequest, StandLookup};
use crate::store::{self, stands};
use futures_util::future::BoxFuture;
use secrecy::SecretString;
use std::collections::BTreeMap;

/// `draftd serve`: bind first (so `/health` answers at once), migrate in the background, serve until
/// SIGTERM/Ctrl-C, then let in-flight requests finish.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let projects = Projects::resolve(&config)?;
    // In kubernetes mode, a configuration that cannot reach a cluster is an error now, not a failure
    // of the first run.
    let kube = match config.cluster.mode {
        ClusterMode::Kubernetes => {
            let client = crate::cluster::client::connect(&config.cluster).await?;
            let probes = crate::cluster::client::connect_for_probes(&config.cluster).await?;
            Some(crate::cluster::Kubernetes::new(client, config.cluster.clone()).with_probe_client(probes))
        }
        ClusterMode::DryRun => None,
    };
    let pool = store::pool(&config.database_url, config.intake.db_pool_size)?;
    let state = AppState::new(&config, projects, pool.clone());
    let listener = listen(config.listen, config.intake.listen_backlog)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, mode = ?config.cluster.mode, projects = config.projects.len(), "draftd serving");

    let mut migrations = tokio::spawn(migrate_until_done(pool.clone(), state.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    start_background(&config, kube, &pool, &state, &stop_rx)?;
    let app = http::router(state);
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    });
    let signal = async move {
        shutdown_signal().await;
        tracing::info!(drain_timeout = ?http::DRAIN_TIMEOUT, "shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
        tokio::time::sleep(http::DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        r = server => r.context("server failed")?,
        _ = signal => tracing::warn!("drain timeout reached; exiting with requests still open"),
        r = &mut migrations => {
            // Only a permanent migration failure ends the task; the server cannot serve then.
            r.context("migration task panicked")??;
            unreachable!("migrate_until_done returns only on error")
        }
    }
    // A migration attempt still waiting for an unreachable database would hold up pool.close().
    migrations.abort();
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Workers (with the step runner of the cluster mode) and the reporter, each starting once
/// migrations are applied and stopping with `stop`. A run a worker is in when the process ends is
/// resumed by the next worker whose claim finds its lease expired.
fn start_background(
    config: &Config,
    kube: Option<crate::cluster::Kubernetes>,
    pool: &sqlx::PgPool,
    state: &AppState,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let config = Arc::new(config.clone());
    let root = std::env::current_dir().context("current directory")?;
    let helm = Arc::new(HelmCli::from_config(&config.cluster, &root).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "deploy steps will fail until helm is found");
        HelmCli::new("helm")
    }));
    // Each run in flight uses up to three connections (concurrent steps) and its heartbeat one.
    let workers_pool = store::worker_pool(&config.database_url, config.stands.workers * 4 + 2)?;
    let credentials = StandCredentials::from_config(workers_pool.clone(), &config)?.map(Arc::new);
    // One set of clients, shared by the reporter and the access check: one token cache and one
    // rate-limit hold per forge.
    let forges: Vec<AnyForge> = AnyForge::from_config(&config)
        .context("forge clients")?
        .into_iter()
        .map(|f| f.watch_problems(state.forge_problems()))
        .collect();
    let clients = forges.iter().map(|f| (f.kind(), f.clone())).collect();
    let authoriser: Arc<dyn Authorise> =
        Arc::new(ForgeAuthoriser::with_clients(workers_pool.clone(), &config, clients));
    // The image step's registries: a bad CA file or reference stops the start, not the first run.
    let registries = Some(Arc::new(Registries::from_config(&config).context("registry clients")?));
    let reaper = Reaper::new(workers_pool.clone(), config.clone(), lease_owner())
        .with_forges(forges.clone())
        .with_credentials(credentials.clone())
        .with_wake(state.wake().clone());
    match (config.cluster.mode, kube) {
        (ClusterMode::Kubernetes, Some(mut cluster)) => {
            if let Some(host) = credentials.as_ref().and_then(|c| c.database_host()) {
                cluster = cluster.with_database_host(host);
            }
            let cluster = Arc::new(cluster);
            spawn_reaper(reaper.with_cluster(cluster.clone()), &config, state, stop)?;
            if let Some(c) = &credentials {
                let deliver = deliver_to_cluster(cluster.clone(), workers_pool.clone(), config.clone());
                spawn_keeper(c.clone(), deliver, state, stop);
            }
            let steps = KubernetesSteps::new(workers_pool.clone(), config.clone(), helm, cluster)
                .with_credentials(credentials)
                .with_registries(registries)
                .with_forges(Arc::new(forges.clone()));
            spawn_engine(steps, workers_pool, &config, authoriser, state, stop)?;
        }
        (ClusterMode::Kubernetes, None) => anyhow::bail!("kubernetes mode without a Kubernetes client"),
        (ClusterMode::DryRun, _) => {
            spawn_reaper(reaper, &config, state, stop)?;
            if let Some(c) = &credentials {
                // Nobody uses a dry-run stand's logins: replaced ones are simply not handed out.
                spawn_keeper(c.clone(), |_, _, _| async { Ok(()) }, state, stop);
            }
            let steps = DryRunSteps::new(workers_pool.clone(), config.clone(), helm)
                .with_credentials(credentials)
                .with_registries(registries);
            spawn_engine(steps, workers_pool, &config, authoriser, state, stop)?;
        }
    }
    if forges.is_empty() {
        tracing::info!("no forge token configured: reports stay in the outbox");
    } else {
        let reporter = Reporter::new(pool.clone(), ReporterSettings::default()).with_forges(forges);
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            if wait_migrated(&state, &stop).await {
                reporter.run(stop).await;
            }
        });
    }
    Ok(())
}

/// The keeper's way of handing a replacement login to a running stand: its Secret updated and the
/// release's Deployments rolled onto it.
fn deliver_to_cluster(
    cluster: Arc<crate::cluster::Kubernetes>,
    pool: sqlx::PgPool,
    config: Arc<Config>,
) -> impl Fn(i64, String, BTreeMap<String, SecretString>) -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static
{
    use crate::cluster::Cluster;
    move |stand_id, namespace, data| {
        let (cluster, pool, config) = (cluster.clone(), pool.clone(), config.clone());
        Box::pin(async move {
            let (project, expires_at): (String, Option<chrono::DateTime<chrono::Utc>>) =
                sqlx::query_as("select project, expires_at from stands where stand_id = $1")
                    .bind(stand_id)
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
            let sa_token = config.projects.iter().find(|p| p.name == project).is_some_and(|p| p.service_account_token);
            let stand = crate::cluster::StandMeta {
                namespace: namespace.clone(),
                stand_id,
                project,
                expires_at: expires_at.unwrap_or_else(chrono::Utc::now),
                service_account_token: sa_token,
            };
            let checksum = cluster
                .apply_secret(&stand, crate::credentials::DATABASE_SECRET, &data)
                .await
                .map_err(|e| e.to_string())?;
            cluster
                .roll_on_secrets(&namespace, &crate::helm::release_name(&namespace), &checksum)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    }
}

/// Renews, replaces and revokes stand logins on a short period, from when migrations are applied
/// until `stop`.
fn spawn_keeper<F, Fut>(
    credentials: Arc<StandCredentials>,
    deliver: F,
    state: &AppState,
    stop: &tokio::sync::watch::Receiver<bool>,
) where
    F: Fn(i64, String, BTreeMap<String, SecretString>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    // Often enough to renew a lease at half its TTL and revoke replaced logins on time.
    let period = (credentials.lifetimes().lease / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let (state, mut stop) = (state.clone(), stop.clone());
    tokio::spawn(async move {
        if !wait_migrated(&state, &stop).await {
            return;
        }
        loop {
            match credentials.keep(&deliver).await {
                Ok(kept) if kept != Default::default() => tracing::info!(?kept, "credential upkeep"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "credential upkeep could not run"),
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
}

/// The in-process reaper on `[reaper] schedule`, unless `[reaper] enabled = false` (a CronJob runs
/// `draftd reap` instead).
fn spawn_reaper(
    reaper: Reaper,
    config: &Config,
    state: &AppState,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if !config.reaper.enabled {
        tracing::info!("in-process reaper off ([reaper] enabled = false)");
        return Ok(());
    }
    let schedule = config.reaper.cron().map_err(|e| anyhow::anyhow!("[reaper] schedule: {e}"))?;
    let (state, stop) = (state.clone(), stop.clone());
    tokio::spawn(async move {
        if wait_migrated(&state, &stop).await {
            crate::reaper::run(reaper, schedule, stop).await;
        }
    });
    Ok(())
}

fn spawn_engine<R: StepRunner>(
    steps: R,
    pool: sqlx::PgPool,
    config: &Config,
    authoriser: Arc<dyn Authorise>,
    state: &AppState,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let fault = match std::env::var("DRAFTD_FAULT") {
        Ok(text) => Some(text.parse::<Fault>().map_err(|e| anyhow::anyhow!("DRAFTD_FAULT: {e}"))?),
        Err(_) => None,
    };
    let settings = EngineSettings {
        workers: config.stands.workers as usize,
        max_running: i64::from(config.stands.max_concurrent_runs),
        lease: config.stands.lease,
        heartbeat: config.stands.lease / 3,
        fault,
        ttl: config.stands.ttl,
        ..EngineSettings::default()
    };
    let limits = config.projects.iter().filter_map(|p| Some((p.name.as_str(), p.max_concurrent_runs?)));
    let ttls = config.projects.iter().filter_map(|p| Some((p.name.as_str(), p.ttl?)));
    let engine = Engine::new(pool, Arc::new(steps), settings, lease_owner())
        .with_wake(state.wake().clone())
        .with_authoriser(authoriser)
        .with_project_limits(limits)
        .with_project_ttls(ttls);
    let engine = Arc::new(engine);
    let (state, stop) = (state.clone(), stop.clone());
    tokio::spawn(async move {
        if wait_migrated(&state, &stop).await {
            engine.run_workers(stop).await;
        }
    });
    Ok(())
}

/// False when asked to stop first.
async fn wait_migrated(state: &AppState, stop: &tokio::sync::watch::Receiver<bool>) -> bool {
    while !state.migrated() {
        if *stop.borrow() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// Unique per process and readable in `runs.lease_owner`: host, pid and a random suffix.
fn lease_owner() -> String {
    let host =
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "draftd".into());
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}

/// Retries while the database is unreachable (it may start after draftd); stops on a real migration error.
async fn migrate_until_done(pool: sqlx::PgPool, state: AppState) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        match store::migrate(&pool).await {
            Ok(()) => {
                state.set_migrated();
                tracing::info!("migrations applied");
                return std::future::pending().await;
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?delay, "database not reachable for migrations");
            }
            Err(e) => return Err(e).context("migrations failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Binds with `[intake] listen_backlog` rather than tokio's 128: the kernel holds that many
/// finished handshakes while draftd is paused, instead of dropping the SYNs of a burst.
fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As TcpListener::bind does: a restarted draftd rebinds at once, despite connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    if let Some(cap) = somaxconn().filter(|cap| *cap < backlog) {
        tracing::warn!(
            listen_backlog = backlog,
            somaxconn = cap,
            "the kernel caps the listen backlog at net.core.somaxconn; raise it to hold bursts"
        );
    }
    socket.listen(backlog)
}

/// Linux's cap on every listen backlog; `None` elsewhere.
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?.trim().parse().ok()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// `draftd migrate`: apply pending migrations and exit.
pub async fn migrate(config: Config) -> anyhow::Result<()> {
    let pool = store::pool(&config.database_url, 2)?;
    store::migrate(&pool).await.context("applying migrations")?;
    println!(
        "migrations applied ({} known)",
        store::MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).count()
    );
    Ok(())
}

/// `draftd reap`: one sweep, for a Kubernetes CronJob. Fails (exit 1) when a part of the sweep
/// failed, so the Job shows it; another sweep holding the lock is not a failure.
pub async fn reap(config: Config, json: bool) -> anyhow::Result<()> {
    let pool = store::pool(&config.database_url, 4)?;
    let config = Arc::new(config);
    let credentials = StandCredentials::from_config(pool.clone(), &config)?.map(Arc::new);
    let forges = AnyForge::from_config(&config).context("forge clients")?;
    let mut reaper =
        Reaper::new(pool.clone(), config.clone(), lease_owner()).with_forges(forges).with_credentials(credentials);
    if config.cluster.mode == ClusterMode::Kubernetes {
        let client = crate::cluster::client::connect(&config.cluster).await?;
        reaper = reaper.with_cluster(Arc::new(crate::cluster::Kubernetes::new(client, config.cluster.clone())));
    }
    let outcome = reaper.sweep(chrono::Utc::now()).await.context("sweep")?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &outcome)?;
        writeln!(out)?;
    }
    let SweepOutcome::Swept(sweep) = outcome else {
        if !json {
            writeln!(out, "another sweep holds the lock: nothing done")?;
        }
        return Ok(());
    };
    if !json {
        write_sweep(&mut out, &sweep)?;
    }
    if !sweep.errors.is_empty() {
        bail!("{} part(s) of sweep {} failed: {}", sweep.errors.len(), sweep.sweep_id, sweep.errors.join("; "));
    }
    Ok(())
}

fn write_sweep(out: &mut impl Write, s: &crate::reaper::Sweep) -> std::io::Result<()> {
    let stands = |q: &[crate::store::lifecycle::QueuedTeardown]| {
        q.iter().map(|t| t.namespace.as_str()).collect::<Vec<_>>().join(", ")
    };
    writeln!(out, "sweep {}", s.sweep_id)?;
    writeln!(out, "  expired, teardown queued: {} {}", s.expired.len(), stands(&s.expired))?;
    writeln!(out, "  failed teardowns retried: {} {}", s.retried.len(), stands(&s.retried))?;
    writeln!(out, "  expiry warnings: {}", s.warned.len())?;
    for r in &s.resync {
        match (&r.error, r.listed) {
            (Some(e), _) => writeln!(out, "  resync {}: not done: {e}", r.project)?,
            (None, listed) => writeln!(
                out,
                "  resync {}: {} open, {} deploy(s) and {} teardown(s) queued, {} looked up ({} failed)",
                r.project,
                listed.unwrap_or(0),
                r.deploys.len(),
                r.teardowns.len(),
                r.looked_up,
                r.lookup_errors
            )?,
        }
    }
    for o in &s.orphans {
        let what = if o.removed {
            "removed"
        } else if o.sightings >= 2 {
            "removal failed"
        } else {
            "kept until seen again"
        };
        writeln!(out, "  orphan {} {} (seen {}x): {what}", o.kind, o.name, o.sightings)?;
    }
    for e in &s.errors {
        writeln!(out, "  error: {e}")?;
    }
    Ok(())
}

/// `draftd stands list`.
pub async fn stands_list(
    config: Config,
    project: Option<String>,
    state: Option<StandState>,
    json: bool,
) -> anyhow::Result<()> {
    let pool = store::pool(&config.database_url, 2)?;
    let rows = stands::list(&pool, project.as_deref(), state.map(StandState::as_str)).await?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                s.stand_id.to_string(),
                s.project.clone(),
                s.branch.clone(),
                s.state.clone(),
                s.namespace.clone(),
                s.pr_number.map(|n| format!("#{n}")).unwrap_or_default(),
                short(s.head_sha.as_deref()),
                match (&s.last_run, &s.last_run_kind, &s.last_run_state) {
                    (Some(n), Some(k), Some(st)) => format!("#{n} {k} {st}"),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    write_table(&mut out, &["ID", "PROJECT", "BRANCH", "STATE", "NAMESPACE", "PR", "SHA", "LAST RUN"], &table)?;
    if rows.is_empty() {
        writeln!(out, "(no stands)")?;
    }
    Ok(())
}

/// `draftd stands show <id | project/branch>`.
pub async fn stands_show(config: Config, stand: stands::StandRef, json: bool) -> anyhow::Result<()> {
    let pool = store::pool(&config.database_url, 2)?;
    let Some(detail) = stands::show(&pool, &stand, 20).await? else {
        bail!("no stand {}", describe(&stand));
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &detail)?;
        writeln!(out)?;
        return Ok(());
    }
    let s = &detail.stand;
    let fields: [(&str, String); 9] = [
        ("stand", s.stand_id.to_string()),
        ("project", s.project.clone()),
        ("branch", s.branch.clone()),
        ("namespace", s.namespace.clone()),
        (
            "state",
            match &s.state_reason {
                Some(r) => format!("{} ({r})", s.state),
                None => s.state.clone(),
            },
        ),
        ("pull request", s.pr_number.map(|n| format!("#{n}")).unwrap_or_else(|| "-".into())),
        ("head sha", s.head_sha.clone().unwrap_or_else(|| "-".into())),
        ("expires", s.expires_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "- (set by the first deploy)".into())),
        ("created", s.created_at.to_rfc3339()),
    ];
    for (k, v) in fields {
        writeln!(out, "{:<13} {v}", format!("{k}:"))?;
    }
    writeln!(out)?;
    let runs: Vec<Vec<String>> = detail
        .runs
        .iter()
        .map(|r| {
            vec![
                format!("#{}", r.number),
                r.kind.clone(),
                r.trigger.clone(),
                short(r.sha.as_deref()),
                r.state.clone(),
                r.requested_by.clone().unwrap_or_default(),
                r.queued_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    write_table(&mut out, &["RUN", "KIND", "TRIGGER", "SHA", "STATE", "BY", "QUEUED (UTC)"], &runs)?;
    if let Some(run) = detail.runs.first().filter(|r| !r.steps.is_empty()) {
        writeln!(out, "\nsteps of run #{}:", run.number)?;
        let steps: Vec<Vec<String>> = run
            .steps
            .iter()
            .map(|s| {
                let took = match (s.started_at, s.finished_at) {
                    (Some(a), Some(b)) => format!("{} ms", (b - a).num_milliseconds()),
                    _ => String::new(),
                };
                let note = s
                    .error
                    .as_ref()
                    .and_then(|e| e.get("message"))
                    .or_else(|| s.detail.get("skipped"))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string();
                vec![s.name.clone(), s.state.clone(), s.attempt.to_string(), took, note]
            })
            .collect();
        write_table(&mut out, &["STEP", "STATE", "ATTEMPT", "TOOK", "NOTE"], &steps)?;
    }
    Ok(())
}

/// `draftd stands rerun|extend|destroy`: queued directly in the database, which whoever can reach it
/// is trusted with, and recorded with the operator's login.
pub async fn stands_queue(config: Config, stand: stands::StandRef, command: Command) -> anyhow::Result<()> {
    let pool = store::pool(&config.database_url, 2)?;
    let login = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let requested_by = format!("cli:{login}");
    let req = ManualRequest {
        command,
        trigger: Trigger::Cli,
        requested_by: &requested_by,
        author_id: None,
        sha: None,
        authorised: true,
    };
    let lookup = match &stand {
        stands::StandRef::Id(id) => StandLookup::Id(*id),
        stands::StandRef::Branch { project, branch } => StandLookup::Branch { project, branch },
    };
    let mut tx = pool.begin().await?;
    let outcome = manual::queue(&mut tx, lookup, &req).await?;
    tx.commit().await?;
    match outcome {
        ManualOutcome::Queued { stand, run } => {
            println!("queued run {run} for stand {stand}");
            Ok(())
        }
        ManualOutcome::Refused { reason, .. } => bail!("stand {}: {reason}", describe(&stand)),
    }
}

fn describe(stand: &stands::StandRef) -> String {
    match stand {
        stands::StandRef::Id(id) => format!("with id {id}"),
        stands::StandRef::Branch { project, branch } => format!("for branch {branch:?} of project {project:?}"),
    }
}

fn short(sha: Option<&str>) -> String {
    sha.map(|s| s.chars().take(12).collect()).unwrap_or_default()
}

fn write_table(out: &mut impl Write, head: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = *w));
            }
        }
        s.trim_end().to_owned()
    };
    writeln!(out, "{}", line(head.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}
