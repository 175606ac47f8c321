//! The health watch (issue 24) against a real Postgres: how the probe slots spread a fleet over the
//! interval, which stands a tick claims (and that two replicas never claim one stand), and, at the
//! request level, a stand whose app starts answering 500 turning degraded (comment, check, audit,
//! metric, API) and healthy again, probed through `[cluster.verify] ingress_address` as verify
//! probes it. The same on the local Kubernetes control plane is in k8s.rs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use chrono::{DateTime, TimeZone, Utc};
use draftd::cluster::Kubernetes;
use draftd::config::Config;
use draftd::reaper::watch::Watch;
use draftd::stand::StandId;
use draftd::store::health;
use serde_json::Value;
use sqlx::PgPool;

use crate::support;

const FIVE_MINUTES: Duration = Duration::from_secs(300);

fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 8, 9, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

/// `n` stands of project `p`, active, none verified yet.
async fn stands(pool: &PgPool, n: i64) -> Vec<StandId> {
    sqlx::query_scalar(
        "insert into stands (project, branch, namespace)
         select 'p', 'b' || i, 'draft-b' || i from generate_series(1, $1) i returning stand_id",
    )
    .bind(n)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn next_probe(pool: &PgPool, stand: StandId) -> Option<DateTime<Utc>> {
    sqlx::query_scalar("select next_probe_at from stands where stand_id = $1")
        .bind(stand)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_thousand_stands_verified_at_once_are_probed_a_few_a_second_never_in_a_burst(pool: PgPool) {
    let ids = stands(&pool, 1000).await;
    let now = at(0);
    for id in &ids {
        health::verified(&pool, *id, now, FIVE_MINUTES).await.unwrap();
    }
    let mut per_second = BTreeMap::<i64, usize>::new();
    for id in &ids {
        let next = next_probe(&pool, *id).await.expect("watched once verified");
        let offset = (next - now).num_milliseconds();
        assert!(offset > 0 && offset <= 300_000, "stand {id}: first probe {offset} ms after verify");
        *per_second.entry(offset / 1000).or_default() += 1;
    }
    let busiest = per_second.values().max().copied().unwrap();
    // 1000 stands over 300 seconds: 3.3 a second on average.
    assert!(busiest <= 5, "at most 5 probes in any second, not {busiest}: {per_second:?}");
    assert!(per_second.len() >= 295, "nearly every second has its probes: {}", per_second.len());

    // A stand keeps its slot: verified again later, or claimed, it is next due a whole number of
    // intervals after its first slot.
    let first = next_probe(&pool, ids[0]).await.unwrap();
    health::verified(&pool, ids[0], at(1234), FIVE_MINUTES).await.unwrap();
    let again = next_probe(&pool, ids[0]).await.unwrap();
    assert!(whole_intervals(again - first), "{first} then {again}");
    assert!(again > at(1234) && again <= at(1234 + 300));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_tick_claims_only_awake_verified_due_stands_and_moves_each_one_interval_on(pool: PgPool) {
    let ids = stands(&pool, 5).await;
    let [due, never_verified, asleep, later, deploying] = ids[..] else { unreachable!() };
    for id in [due, asleep, later, deploying] {
        health::verified(&pool, id, at(0), FIVE_MINUTES).await.unwrap();
    }
    sqlx::query("update stands set state = 'sleeping' where stand_id = $1").bind(asleep).execute(&pool).await.unwrap();
    sqlx::query("update stands set next_probe_at = $2 where stand_id = any($1)")
        .bind(vec![due, asleep, deploying])
        .bind(at(10))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("update stands set next_probe_at = $2 where stand_id = $1")
        .bind(later)
        .bind(at(100))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into runs (stand_id, number, kind, trigger, automatic, epoch, state)
         values ($1, 1, 'deploy', 'pushed', true, 0, 'running')",
    )
    .bind(deploying)
    .execute(&pool)
    .await
    .unwrap();

    let claimed = health::claim_due(&pool, at(20), FIVE_MINUTES, 100).await.unwrap();
    let got: Vec<(StandId, bool)> = claimed.iter().map(|d| (d.stand_id, d.busy)).collect();
    assert_eq!(
        got,
        [(due, false), (deploying, true)],
        "never verified {never_verified}, asleep {asleep}, later {later}"
    );
    assert!(health::claim_due(&pool, at(20), FIVE_MINUTES, 100).await.unwrap().is_empty(), "claimed once");
    let next = next_probe(&pool, due).await.unwrap();
    assert!(next > at(20) && next <= at(320), "{next}");
    assert_eq!(next_probe(&pool, never_verified).await, None);
    // Its next slot: claimed again then, not before.
    let before = next - chrono::Duration::milliseconds(1);
    assert!(!health::claim_due(&pool, before, FIVE_MINUTES, 100).await.unwrap().iter().any(|d| d.stand_id == due));
    let claimed = health::claim_due(&pool, next, FIVE_MINUTES, 100).await.unwrap();
    assert!(claimed.iter().any(|d| d.stand_id == due));
    let after = next_probe(&pool, due).await.unwrap();
    assert!(after - next > chrono::Duration::seconds(299) && whole_intervals(after - next), "{next} then {after}");
}

/// A whole number of five-minute intervals, to the microsecond timestamps are kept in.
fn whole_intervals(d: chrono::Duration) -> bool {
    let off = d.num_microseconds().unwrap().rem_euclid(300_000_000);
    off <= 2 || off >= 300_000_000 - 2
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn two_replicas_claiming_at_once_never_share_a_stand(pool: PgPool) {
    let ids = stands(&pool, 300).await;
    for id in &ids {
        health::verified(&pool, *id, at(0), FIVE_MINUTES).await.unwrap();
    }
    let now = at(400);
    let (a, b) = tokio::join!(
        health::claim_due(&pool, now, FIVE_MINUTES, 200),
        health::claim_due(&pool, now, FIVE_MINUTES, 200)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut all: Vec<StandId> = a.iter().chain(&b).map(|d| d.stand_id).collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "a stand claimed by both");
    // Whatever the first claims left is the next tick's.
    let rest = health::claim_due(&pool, now, FIVE_MINUTES, 300).await.unwrap();
    assert_eq!(n + rest.len(), 300);
}

/// A stand's app as the watch reaches it through the ingress address: answers `status`, counts requests.
struct App {
    address: String,
    status: Arc<AtomicU16>,
    requests: Arc<AtomicUsize>,
}

async fn app() -> App {
    let status = Arc::new(AtomicU16::new(200));
    let requests = Arc::new(AtomicUsize::new(0));
    let (s, r) = (status.clone(), requests.clone());
    let handler = move || {
        let (s, r) = (s.clone(), r.clone());
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            axum::http::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
    App { address, status, requests }
}

fn config(app: &App) -> Config {
    Config::from_toml(&format!(
        r#"
[api]
token_env = "API_TOKEN"
[cluster.verify]
ingress_address = "{}"
[watch]
interval = "4s"
timeout = "1s"
recheck_after = "50ms"
[[projects]]
name = "shop"
forge = "github"
repo = "acme/shop"
webhook_secret_env = "GH_SECRET"
host = "{{stand}}.draft.test"
"#,
        app.address
    ))
    .unwrap()
}

/// A stand of `shop` whose deploy passed (a finished run a while ago) and that is due now.
async fn deployed(pool: &PgPool) -> StandId {
    let run = support::queue_run(pool, "shop", "feature/x", "draft-feature-x", "deploy", &"a".repeat(40)).await;
    sqlx::query(
        "update runs set state = 'succeeded', started_at = now() - interval '2 minutes',
                         finished_at = now() - interval '1 minute' where run_id = $1",
    )
    .bind(run)
    .execute(pool)
    .await
    .unwrap();
    let stand: StandId = sqlx::query_scalar(
        "update stands set pr_number = 7, head_sha = $1 where namespace = 'draft-feature-x' returning stand_id",
    )
    .bind("a".repeat(40))
    .fetch_one(pool)
    .await
    .unwrap();
    health::verified(pool, stand, Utc::now(), Duration::from_secs(4)).await.unwrap();
    due_now(pool, stand).await;
    stand
}

async fn due_now(pool: &PgPool, stand: StandId) {
    sqlx::query("update stands set next_probe_at = now() where stand_id = $1").bind(stand).execute(pool).await.unwrap();
}

/// The outbox rows queued so far, as (kind, payload), oldest first.
async fn outbox(pool: &PgPool) -> Vec<(String, Value)> {
    sqlx::query_as("select kind, payload from outbox order by outbox_id").fetch_all(pool).await.unwrap()
}

async fn audit(pool: &PgPool) -> Vec<(String, String, Value)> {
    sqlx::query_as("select actor, action, detail from audit order by audit_id").fetch_all(pool).await.unwrap()
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_stand_answering_500_turns_degraded_and_healthy_again_saying_so_only_when_it_changes(pool: PgPool) {
    let app = app().await;
    let config = config(&app);
    let stand = deployed(&pool).await;
    let watch: Watch<Kubernetes> = Watch::new(pool.clone(), Arc::new(config.clone()));

    let tick = watch.tick(Utc::now(), 16).await.unwrap();
    assert_eq!((tick.claimed, tick.probes, tick.degraded.len()), (1, 1, 0), "{tick:?}");
    assert!(outbox(&pool).await.is_empty(), "nothing to say while it answers");

    app.status.store(500, Ordering::SeqCst);
    due_now(&pool, stand).await;
    let tick = watch.tick(Utc::now(), 16).await.unwrap();
    assert_eq!((tick.probes, tick.degraded.clone()), (2, vec![stand]), "one failure is looked at twice: {tick:?}");
    let row =
        draftd::store::stands::show(&pool, &draftd::store::stands::StandRef::Id(stand), 5).await.unwrap().unwrap();
    assert_eq!(row.stand.health, draftd::stand::Health::Degraded);
    let reason = row.stand.health_reason.clone().unwrap();
    assert!(reason.contains("draft-feature-x.draft.test") && reason.contains("answered 500"), "{reason}");
    let rows = outbox(&pool).await;
    let kinds: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["comment", "check"], "the deployment and label stay as the deploy left them");
    assert!(rows[0].1["body"].as_str().unwrap().contains("Draft stand degraded"), "{}", rows[0].1["body"]);
    assert_eq!(rows[1].1["state"], "failure");
    assert!(rows[1].1["title"].as_str().unwrap().starts_with("Degraded: probe of"), "{}", rows[1].1["title"]);
    assert_eq!(audit(&pool).await[0].1, "health.degraded");

    // Still failing: nothing new is said.
    due_now(&pool, stand).await;
    let tick = watch.tick(Utc::now(), 16).await.unwrap();
    assert_eq!((tick.probes, tick.degraded.len()), (1, 0), "{tick:?}");
    assert_eq!(outbox(&pool).await.len(), 2);

    // What operators and scripts see meanwhile.
    let snapshot = draftd::store::metrics::snapshot(&pool, 3).await.unwrap();
    assert_eq!(snapshot.health, [("shop".to_owned(), 0, 1)]);
    let api = support::app_with(pool.clone(), &config);
    let response = support::send(
        &api,
        Request::get(format!("/api/v1/stands/{stand}"))
            .header("authorization", format!("Bearer {}", support::API_TOKEN))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let body = response.body;
    assert_eq!(body["health"], "degraded", "{body}");
    assert!(body["health_reason"].as_str().unwrap().contains("answered 500"));

    app.status.store(200, Ordering::SeqCst);
    due_now(&pool, stand).await;
    let tick = watch.tick(Utc::now(), 16).await.unwrap();
    assert_eq!((tick.probes, tick.recovered.clone()), (1, vec![stand]), "{tick:?}");
    let rows = outbox(&pool).await;
    assert_eq!(rows.len(), 4);
    assert!(rows[2].1["body"].as_str().unwrap().contains("Draft stand ready"));
    assert_eq!(rows[3].1["state"], "success");
    let actions: Vec<String> =
        audit(&pool).await.into_iter().map(|(actor, action, _)| format!("{actor} {action}")).collect();
    assert_eq!(actions, ["draftd:watch health.degraded", "draftd:watch health.recovered"]);
    let snapshot = draftd::store::metrics::snapshot(&pool, 3).await.unwrap();
    assert_eq!(snapshot.health, [("shop".to_owned(), 1, 0)]);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_stand_with_a_run_in_flight_is_not_probed_and_a_deploy_that_passes_verify_makes_it_healthy(pool: PgPool) {
    let app = app().await;
    let watch: Watch<Kubernetes> = Watch::new(pool.clone(), Arc::new(config(&app)));
    let stand = deployed(&pool).await;
    app.status.store(503, Ordering::SeqCst);
    assert_eq!(watch.tick(Utc::now(), 16).await.unwrap().degraded, [stand]);

    // A push: its run is in flight, so the watch leaves the stand to the run's verify.
    let run = support::queue_run(&pool, "shop", "feature/x", "draft-feature-x", "deploy", &"b".repeat(40)).await;
    due_now(&pool, stand).await;
    let seen = app.requests.load(Ordering::SeqCst);
    let tick = watch.tick(Utc::now(), 16).await.unwrap();
    assert_eq!((tick.claimed, tick.skipped, tick.probes), (1, 1, 0), "{tick:?}");
    assert_eq!(app.requests.load(Ordering::SeqCst), seen, "no request while a run is in flight");

    // Its verify passed: healthy at once, recorded as a recovery.
    health::verified(&pool, stand, Utc::now(), Duration::from_secs(4)).await.unwrap();
    sqlx::query("update runs set state = 'succeeded', finished_at = now() where run_id = $1")
        .bind(run)
        .execute(&pool)
        .await
        .unwrap();
    let health: String =
        sqlx::query_scalar("select health from stands where stand_id = $1").bind(stand).fetch_one(&pool).await.unwrap();
    assert_eq!(health, "healthy");
    let recovered = audit(&pool).await.pop().unwrap();
    assert_eq!(recovered.1, "health.recovered");
    assert_eq!(recovered.2["reason"], "a deploy of the stand passed verify");
}
