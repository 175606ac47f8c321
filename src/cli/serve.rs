//! `draftd serve`, the composition root: reads the secrets, connects what the cluster mode needs,
//! and wires the HTTP server, the workers, the reaper, the keeper and the reporter together.

use std::sync::Arc;

use anyhow::Context;

use super::keeper;
use super::runtime::{lease_owner, listen, migrate_until_done, shutdown_signal, wait_migrated};
use crate::config::{ClusterMode, Config, OnCap, Projects};
use crate::credentials::StandCredentials;
use crate::forge::client::AnyForge;
use crate::helm::HelmCli;
use crate::http::{self, AppState};
use crate::pipeline::authorise::{Authorise, ForgeAuthoriser};
use crate::pipeline::image::Registries;
use crate::pipeline::steps::{DryRunSteps, KubernetesSteps};
use crate::pipeline::{Caps, Engine, EngineSettings, Fault, StepRunner};
use crate::reaper::Reaper;
use crate::reaper::watch::Watch;
use crate::reporter::{Reporter, ReporterSettings};
use crate::store;

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
    let mut state = AppState::new(&config, projects, pool.clone());
    if let Some(cluster) = &kube {
        state = state.with_logs(Arc::new(cluster.clone()));
    }
    let listener = listen(config.listen, config.intake.listen_backlog)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, mode = ?config.cluster.mode, projects = config.projects.len(), "draftd serving");

    let mut migrations = tokio::spawn(migrate_until_done(pool.clone(), state.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    start_background(&config, kube, &pool, &state, &stop_rx)?;
    if let Some(address) = config.sleep.listen {
        let wake = listen(address, config.intake.listen_backlog)
            .with_context(|| format!("cannot listen on {address} ([sleep] listen)"))?;
        tracing::info!(listen = %wake.local_addr()?, "waking sleeping stands on their requests");
        let app = http::wake::router(state.clone(), config.sleep.hold);
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(wake, app).with_graceful_shutdown(stopped).await {
                tracing::error!(error = %e, "the wake listener failed");
            }
        });
    }
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
    // Private stands' access tokens are made with the key the check verifies them with.
    let access_key = state.access().map(|gate| gate.key.clone());
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
            spawn_watch(
                Watch::new(workers_pool.clone(), config.clone())
                    .with_cluster(cluster.clone())
                    .with_access(access_key.clone()),
                &config,
                state,
                stop,
            );
            if let Some(c) = &credentials {
                let deliver = keeper::deliver_to_cluster(cluster.clone(), workers_pool.clone(), config.clone());
                keeper::spawn_keeper(c.clone(), deliver, state, stop);
            }
            let steps = KubernetesSteps::new(workers_pool.clone(), config.clone(), helm, cluster)
                .with_credentials(credentials)
                .with_registries(registries)
                .with_access(access_key)
                .with_forges(Arc::new(forges.clone()));
            spawn_engine(steps, workers_pool, &config, authoriser, state, stop)?;
        }
        (ClusterMode::Kubernetes, None) => anyhow::bail!("kubernetes mode without a Kubernetes client"),
        (ClusterMode::DryRun, _) => {
            spawn_reaper(reaper, &config, state, stop)?;
            if let Some(c) = &credentials {
                // Nobody uses a dry-run stand's logins: replaced ones are simply not handed out.
                keeper::spawn_keeper(c.clone(), |_, _, _| async { Ok(()) }, state, stop);
            }
            let steps = DryRunSteps::new(workers_pool.clone(), config.clone(), helm)
                .with_credentials(credentials)
                .with_registries(registries)
                .with_access(access_key);
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

/// The health watch beside the reaper, unless `[watch] enabled = false`. Only in kubernetes mode:
/// a dry-run stand runs nothing to probe. Every replica runs one; their claims never overlap.
fn spawn_watch(watch: Watch, config: &Config, state: &AppState, stop: &tokio::sync::watch::Receiver<bool>) {
    if !config.watch.enabled {
        tracing::info!("health watch off ([watch] enabled = false)");
        return;
    }
    let (state, stop) = (state.clone(), stop.clone());
    tokio::spawn(async move {
        if wait_migrated(&state, &stop).await {
            crate::reaper::watch::run(watch, stop).await;
        }
    });
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
    let caps = Caps {
        all: config.stands.max_active.map(|n| n.get()),
        projects: config.projects.iter().filter_map(|p| Some((p.name.clone(), p.max_active?.get()))).collect(),
        sleep_idlest: config.stands.on_cap == OnCap::SleepIdlest,
    };
    let engine = Engine::new(pool, Arc::new(steps), settings, lease_owner())
        .with_wake(state.wake().clone())
        .with_authoriser(authoriser)
        .with_project_limits(limits)
        .with_project_ttls(ttls)
        .with_caps(caps);
    let engine = Arc::new(engine);
    let (state, stop) = (state.clone(), stop.clone());
    tokio::spawn(async move {
        if wait_migrated(&state, &stop).await {
            engine.run_workers(stop).await;
        }
    });
    Ok(())
}
