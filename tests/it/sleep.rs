//! Sleep and wake without a cluster: which stands the sweep finds idle, what counts as activity,
//! and dry-run mode recording what it would scale. Against the control plane: tests/it/k8s.rs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use draftd::config::Config;
use draftd::helm::HelmCli;
use draftd::pipeline::steps::DryRunSteps;
use draftd::pipeline::{Engine, EngineSettings, RunEnd};
use draftd::reaper::{Reaper, Sweep, SweepOutcome};
use draftd::stand::{Command, RunId, StandId, Trigger};
use draftd::store::manual::{self, ManualRequest, StandLookup};
use draftd::store::{sleep, usage};
use serde_json::Value;
use sqlx::PgPool;

use crate::support;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn stand(pool: &PgPool, project: &str, branch: &str, idle_minutes: i64) -> StandId {
    sqlx::query_scalar(
        "insert into stands (project, branch, namespace, last_activity_at)
         values ($1, $2, 'draft-' || $1 || '-' || $2, now() - make_interval(mins => $3::int)) returning stand_id",
    )
    .bind(project)
    .bind(branch)
    .bind(idle_minutes)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn runs_of(pool: &PgPool, stand: StandId) -> Vec<(String, String, String)> {
    sqlx::query_as("select kind, trigger, state from runs where stand_id = $1 order by run_id")
        .bind(stand)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_sweep_queues_a_sleep_for_stands_idle_past_their_projects_time(pool: PgPool) {
    let idle = stand(&pool, "shop", "idle", 45).await;
    let recent = stand(&pool, "shop", "recent", 10).await;
    let busy = stand(&pool, "shop", "busy", 45).await;
    support::queue_run(&pool, "shop", "busy", "draft-shop-busy", "deploy", &"a".repeat(40)).await;
    let patient = stand(&pool, "blog", "idle", 45).await;
    let off = stand(&pool, "docs", "idle", 600).await;
    sqlx::query("update stands set state = 'closing' where stand_id = $1").bind(recent).execute(&pool).await.unwrap();

    let projects = [("shop".to_owned(), Duration::from_secs(1800)), ("blog".to_owned(), Duration::from_secs(3600))];
    let queued = sleep::queue_idle(&pool, Utc::now(), &projects, 10).await.unwrap();
    assert_eq!(queued.iter().map(|q| q.stand_id).collect::<Vec<_>>(), [idle]);
    assert_eq!(runs_of(&pool, idle).await, [("sleep".into(), "idle".into(), "queued".into())]);
    for other in [recent, patient, off] {
        assert!(runs_of(&pool, other).await.is_empty(), "stand {other}");
    }
    assert_eq!(runs_of(&pool, busy).await.len(), 1, "a stand with a run in flight is not idle");
    // Queued once: the sleep in flight keeps the next sweep from queueing another.
    assert!(sleep::queue_idle(&pool, Utc::now(), &projects, 10).await.unwrap().is_empty());
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_sweep_sleeps_the_longest_idle_first_and_at_most_its_limit(pool: PgPool) {
    let a = stand(&pool, "shop", "a", 40).await;
    let b = stand(&pool, "shop", "b", 90).await;
    let _c = stand(&pool, "shop", "c", 60).await;
    let projects = [("shop".to_owned(), Duration::from_secs(1800))];
    let queued = sleep::queue_idle(&pool, Utc::now(), &projects, 1).await.unwrap();
    assert_eq!(queued.iter().map(|q| q.stand_id).collect::<Vec<_>>(), [b]);
    assert!(runs_of(&pool, a).await.is_empty());
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_command_is_activity_and_a_wake_is_refused_for_an_awake_stand(pool: PgPool) {
    let id = stand(&pool, "shop", "feature", 120).await;
    sqlx::query("update stands set head_sha = $2 where stand_id = $1")
        .bind(id)
        .bind("b".repeat(40))
        .execute(&pool)
        .await
        .unwrap();
    let request = |command| ManualRequest {
        command,
        trigger: Trigger::Api,
        requested_by: "api",
        author_id: None,
        sha: None,
        authorised: true,
    };
    let mut tx = pool.begin().await.unwrap();
    let refused = manual::queue(&mut tx, StandLookup::Id(id), &request(Command::Wake)).await.unwrap();
    assert!(matches!(refused, manual::ManualOutcome::Refused { code: "stand_not_sleeping", .. }), "{refused:?}");
    manual::queue(&mut tx, StandLookup::Id(id), &request(Command::Rerun)).await.unwrap();
    tx.commit().await.unwrap();
    let idle_for: f64 = sqlx::query_scalar(
        "select extract(epoch from now() - last_activity_at)::float8 from stands where stand_id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(idle_for < 60.0, "a re-run is activity: idle for {idle_for} s");
}

/// Dry-run mode: the sleep records the rendered release's workloads as what it would scale to
/// zero, the stand sleeps; the wake records what it would scale back, and the stand is awake.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn dry_run_mode_records_what_a_sleep_and_a_wake_would_scale(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(support::dry_run_shop(&dir.path().join("stands"), ""));
    let helm = HelmCli::from_config(&config.cluster, &root()).unwrap();
    let steps = DryRunSteps::new(pool.clone(), config.clone(), Arc::new(helm));
    let settings = EngineSettings { max_step_attempts: 1, ..EngineSettings::default() };
    let engine = Engine::new(pool.clone(), Arc::new(steps), settings, "sleep-test");
    let namespace = "draft-feature-nap";
    let run = |kind: &'static str| {
        let (pool, engine) = (&pool, &engine);
        async move {
            let id: RunId = support::queue_run(pool, "shop", "feature/nap", namespace, kind, &"c".repeat(40)).await;
            let (claimed, end) = engine.run_one().await.unwrap().expect("a run to claim");
            assert_eq!((claimed, end), (id, RunEnd::Succeeded), "{kind}");
        }
    };
    run("deploy").await;
    run("sleep").await;
    let folder = dir.path().join("stands").join(namespace);
    let slept: Value = serde_json::from_str(&std::fs::read_to_string(folder.join("sleep.json")).unwrap()).unwrap();
    let workloads = slept["would_scale_to_zero"].as_array().unwrap().clone();
    assert!(
        workloads.iter().any(|w| w["kind"] == "Deployment" && w["replicas"] == 1),
        "the chart's app Deployment: {slept}"
    );
    let state: String = sqlx::query_scalar("select state from stands").fetch_one(&pool).await.unwrap();
    assert_eq!(state, "sleeping");

    run("wake").await;
    let woke: Value = serde_json::from_str(&std::fs::read_to_string(folder.join("wake.json")).unwrap()).unwrap();
    assert_eq!(woke["would_scale"].as_array().unwrap(), &workloads);
    let (state, record): (String, Option<Value>) =
        sqlx::query_as("select state, sleep_record from stands").fetch_one(&pool).await.unwrap();
    assert_eq!((state.as_str(), record), ("active", None));
}

/// Prometheus on loopback (scripts/prometheus-dev.sh), stopped on drop.
struct Prometheus {
    dir: tempfile::TempDir,
    url: String,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(root().join("scripts/prometheus-dev.sh"))
            .args(["start", dir.path().to_str().unwrap()])
            .env("PROM_TARGETS", target)
            .output()
            .unwrap();
        assert!(out.status.success(), "prometheus-dev.sh: {}", String::from_utf8_lossy(&out.stderr));
        let exports = String::from_utf8(out.stdout).unwrap();
        let url = exports.split_whitespace().find_map(|w| w.strip_prefix("PROM_URL=")).unwrap().to_owned();
        Prometheus { dir, url }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::process::Command::new(root().join("scripts/prometheus-dev.sh"))
            .args(["stop", self.dir.path().to_str().unwrap()])
            .status();
    }
}

fn reaper_config(prometheus_url: &str) -> Config {
    Config::from_toml(&format!(
        r#"
[reaper]
resync = false
orphans = false

[sleep]
prometheus_url = "{prometheus_url}"
traffic_window = "1m"

[[projects]]
name = "shop"
forge = "github"
repo = "acme/shop"
webhook_secret_env = "X"
"#
    ))
    .unwrap()
}

async fn sweep(pool: &PgPool, config: Config) -> Sweep {
    let reaper = Reaper::<draftd::cluster::Kubernetes>::new(pool.clone(), Arc::new(config), "sleep-test");
    match reaper.sweep(Utc::now()).await.unwrap() {
        SweepOutcome::Swept(sweep) => sweep,
        SweepOutcome::Busy => panic!("no other sweep runs here"),
    }
}

/// Requests to a stand, as ingress-nginx's counter in a real Prometheus shows them, keep it awake;
/// a stand without any sleeps. The counter is served by a local endpoint the test moves.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn requests_counted_in_prometheus_keep_a_stand_awake(pool: PgPool) {
    let used = stand(&pool, "shop", "used", 45).await;
    let unused = stand(&pool, "shop", "unused", 45).await;
    let counter = Arc::new(std::sync::Mutex::new(10u64));
    let exporter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = exporter.local_addr().unwrap().to_string();
    let served = counter.clone();
    tokio::spawn(async move {
        let metrics = move || {
            let n = *served.lock().unwrap();
            async move {
                format!(
                    "# TYPE nginx_ingress_controller_requests counter\n\
                     nginx_ingress_controller_requests{{namespace=\"draft-shop-used\",ingress=\"web\",status=\"200\",method=\"GET\",path=\"/\",service=\"web\",canary=\"\"}} {n}\n\
                     nginx_ingress_controller_requests{{namespace=\"monitoring\",ingress=\"grafana\",status=\"200\",method=\"GET\",path=\"/\",service=\"grafana\",canary=\"\"}} {n}\n"
                )
            }
        };
        axum::serve(exporter, axum::Router::new().route("/metrics", axum::routing::get(metrics))).await
    });
    let prometheus = Prometheus::start(&target);
    // A series' first sample shows no increase: let Prometheus see the counter before it moves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    *counter.lock().unwrap() += 3;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let swept = sweep(&pool, reaper_config(&prometheus.url)).await;
    assert!(swept.errors.is_empty(), "{:?}", swept.errors);
    assert_eq!(swept.requested, Some(1), "the used stand's requests were counted");
    assert_eq!(swept.slept.iter().map(|s| s.stand_id).collect::<Vec<_>>(), [unused]);
    assert!(runs_of(&pool, used).await.is_empty(), "requests are activity");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn without_an_answer_from_prometheus_nothing_is_put_to_sleep(pool: PgPool) {
    let idle = stand(&pool, "shop", "idle", 45).await;
    let closed = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    let swept = sweep(&pool, reaper_config(&closed)).await;
    assert!(swept.slept.is_empty());
    assert!(swept.errors.iter().any(|e| e.contains("no stand was put to sleep")), "{:?}", swept.errors);
    assert!(runs_of(&pool, idle).await.is_empty());
}

/// The cost of a stand from its recorded stretches, against values worked out by hand, in the
/// store, the API and `/metrics`.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn cost_is_priced_from_the_recorded_awake_stretches(pool: PgPool) {
    let id = stand(&pool, "shop", "priced", 0).await;
    // Created 15 h ago with 5 GiB of claims; awake 2 h at 500m + 1 GiB, asleep, awake again for the
    // last 3 h at 250m + 512 MiB.
    sqlx::query("update stands set created_at = now() - interval '15 hours', storage_bytes = 5::bigint * 1073741824 where stand_id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into stand_usage (stand_id, started_at, ended_at, cpu_millis, memory_bytes) values
            ($1, now() - interval '15 hours', now() - interval '13 hours', 500, 1073741824),
            ($1, now() - interval '3 hours', null, 250, 536870912)",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let prices = draftd::config::CostConfig {
        cpu_hour: 0.04,
        memory_gib_hour: 0.005,
        storage_gib_hour: 0.0002,
        currency: "USD".into(),
    };
    let priced = usage::priced(&pool, id, &prices, Utc::now()).await.unwrap().unwrap();
    // 2 × (0.5 × 0.04 + 1 × 0.005) + 3 × (0.25 × 0.04 + 0.5 × 0.005) + 5 × 15 × 0.0002 = 0.1025
    assert!((priced.cost.total - 0.1025).abs() < 1e-4, "{priced:?}");
    assert!((priced.cost.per_hour_awake - 0.0135).abs() < 1e-6, "{priced:?}");
    assert_eq!(priced.last_awake_until, None, "awake now");

    // The same stand's stretch at the same requests goes on; new requests end it and start another.
    usage::awake(&pool, id, 250, 536870912, 5 * 1073741824).await.unwrap();
    assert_eq!(usage::of(&pool, id).await.unwrap().unwrap().awake.len(), 2);
    usage::awake(&pool, id, 1000, 536870912, 5 * 1073741824).await.unwrap();
    usage::stopped(&pool, id).await.unwrap();
    let stretches = usage::of(&pool, id).await.unwrap().unwrap().awake;
    assert_eq!(stretches.len(), 3);
    assert!(stretches.iter().all(|a| a.until.is_some()), "a sleep ends the open stretch");

    let per_project = usage::per_project(&pool).await.unwrap();
    assert_eq!(per_project.len(), 1);
    let p = &per_project[0];
    assert!((p.cpu_core_hours - (2.0 * 0.5 + 3.0 * 0.25)).abs() < 1e-3, "{p:?}");
    assert!((p.memory_gib_hours - (2.0 + 1.5)).abs() < 1e-3, "{p:?}");
    assert!((p.storage_gib_hours - 75.0).abs() < 1e-2, "{p:?}");
}

/// A burst of requests to a sleeping stand queues one wake; none while a push's deploy, which wakes
/// it too, is on its way.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn requests_queue_one_wake_and_none_while_a_deploy_wakes_the_stand(pool: PgPool) {
    let id = stand(&pool, "shop", "nap", 0).await;
    sqlx::query("update stands set state = 'sleeping' where stand_id = $1").bind(id).execute(&pool).await.unwrap();
    let first = sleep::wake_on_visit(&pool, id).await.unwrap();
    assert!(first.is_some());
    assert_eq!(sleep::wake_on_visit(&pool, id).await.unwrap(), None, "a wake is already queued");
    assert_eq!(runs_of(&pool, id).await, [("wake".into(), "visit".into(), "queued".into())]);

    let other = stand(&pool, "shop", "pushed", 0).await;
    sqlx::query("update stands set state = 'sleeping' where stand_id = $1").bind(other).execute(&pool).await.unwrap();
    support::queue_run(&pool, "shop", "pushed", "draft-shop-pushed", "deploy", &"d".repeat(40)).await;
    assert_eq!(sleep::wake_on_visit(&pool, other).await.unwrap(), None, "the push's deploy wakes it");
    let visited = sleep::visited(&pool, "draft-shop-pushed").await.unwrap().unwrap();
    assert!(visited.waking);
}
