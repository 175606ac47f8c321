//! GitHub reporting in depth, against the local GitHub fake driving the real octocrab client: check
//! runs with the Re-run action (as an App), commit statuses (with a token), deployments and their
//! statuses through teardown, the `draft-tested` label, App installation tokens and their refresh,
//! collaborator permission checks with audit and reply, rate limits (429 `Retry-After`, secondary
//! limits) and a long outage compressed in time.

use std::time::{Duration, Instant};

use draftd::config::{Config, ForgeKind};
use draftd::forge::client::{AnyForge, AppCredentials, CheckReport, CheckState, GithubClient, marker};
use draftd::pipeline::authorise::{Authorise, ForgeAuthoriser, Verdict};
use draftd::reporter::{
    CheckPayload, Outbound, Reporter, ReporterSettings, Status, StepLine, TESTED_LABEL, Target, enqueue, outbound,
};
use draftd::stand::{RunKind, StandId, StepState};
use forge_fake::github::CheckRun;
use forge_fake::*;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::forge_fake;
use draftd::stand::Failure;

const APP_ID: u64 = 123_456;

async fn app_fake(ttl: Duration) -> (Fake, AppCredentials) {
    let fake = Fake::start(ForgeKind::Github).await;
    let (private, public) = forge_fake::github::app_key();
    fake.gh_app(APP_ID, public, ttl);
    (fake, AppCredentials { app_id: APP_ID, private_key_pem: private, installation_id: None })
}

fn app_client(fake: &Fake, app: AppCredentials) -> GithubClient {
    GithubClient::app(&fake.url(), app, Duration::from_secs(5)).unwrap()
}

fn token_client(fake: &Fake) -> GithubClient {
    GithubClient::new(&fake.url(), &SecretString::from(TOKEN), Duration::from_secs(5)).unwrap()
}

fn reporter_with(pool: &PgPool, client: GithubClient, settings: ReporterSettings) -> Reporter<AnyForge> {
    Reporter::new(pool.clone(), settings).with_forge(ForgeKind::Github, AnyForge::Github(client))
}

fn sha(n: u32) -> String {
    format!("{n:040x}")
}

fn check(sha: &str, state: CheckState) -> Outbound {
    Outbound::Check(CheckPayload {
        forge: ForgeKind::Github,
        repo: REPO.into(),
        check: CheckReport {
            sha: sha.into(),
            state,
            title: format!("{state:?}"),
            summary: "### ✅ Draft stand ready".into(),
            details_url: Some("http://127.0.0.1:8080/stands/1/runs/1".into()),
            branch: None,
        },
    })
}

/// Every report of a deploy run at `sha` in `status`, as the report step enqueues them.
fn reports(stand_id: StandId, run: i32, sha: &str, status: Status, labelled: bool) -> Vec<Outbound> {
    let mut v = view(stand_id, run, status);
    v.sha = Some(sha.into());
    v.head_sha = Some(sha.into());
    v.steps.push(StepLine {
        name: "smoke".into(),
        state: if status == Status::Ready { StepState::Succeeded } else { StepState::Pending },
        duration_ms: Some(900),
        note: None,
    });
    if status == Status::Failed {
        v.steps[3].state = StepState::Failed;
        v.error = Some("deploy: helm upgrade failed".into());
    }
    outbound(&v, &Target { forge: ForgeKind::Github, repo: REPO, number: Some(PR), labelled })
}

async fn enqueue_all(pool: &PgPool, stand_id: StandId, rows: &[Outbound]) {
    for r in rows {
        enqueue(pool, stand_id, None, r).await.unwrap();
    }
}

async fn pending(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from outbox where state = 'pending'").fetch_one(pool).await.unwrap()
}

async fn drain_all(r: &Reporter<AnyForge>, pool: &PgPool, deadline: Duration) {
    let end = Instant::now() + deadline;
    while pending(pool).await > 0 && Instant::now() < end {
        r.pass().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pending(pool).await, 0, "the outbox drained within {deadline:?}");
}

fn history(c: &CheckRun) -> Vec<&str> {
    c.history.iter().map(String::as_str).collect()
}

#[sqlx::test]
async fn an_app_reports_a_check_run_in_progress_then_done_with_a_rerun_button(pool: PgPool) {
    let (fake, app) = app_fake(Duration::from_secs(3600)).await;
    let r = reporter_with(&pool, app_client(&fake, app), settings());
    let stand_id = stand(&pool, "feature/login").await;
    let sha = sha(1);
    enqueue(&pool, StandId::new(stand_id), None, &check(&sha, CheckState::InProgress)).await.unwrap();
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    enqueue(&pool, StandId::new(stand_id), None, &check(&sha, CheckState::Success)).await.unwrap();
    drain_all(&r, &pool, Duration::from_secs(5)).await;

    let checks = fake.gh_checks(REPO, &sha);
    let errors: Vec<(String, Option<String>)> =
        sqlx::query_as("select state, last_error from outbox").fetch_all(&pool).await.unwrap();
    assert_eq!(
        checks.len(),
        1,
        "one check run, updated in place: {checks:?} {errors:?} {:?} {:?}",
        fake.seen(),
        fake.violations()
    );
    assert_eq!(history(&checks[0]), ["in_progress", "completed/success"]);
    assert_eq!(
        checks[0].actions,
        json!([{ "label": "Re-run", "description": "Deploy this draft stand again",
                                           "identifier": "rerun" }])
    );
    assert_eq!(checks[0].details_url.as_deref(), Some("http://127.0.0.1:8080/stands/1/runs/1"));
    // One installation lookup and one token served both calls.
    let (lookups, issued, jwts) = fake.gh_state(|g| {
        let a = g.app.as_ref().unwrap();
        (a.lookups, a.issued.len(), a.jwts_seen)
    });
    assert_eq!((lookups, issued, jwts), (1, 1, 2));
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[sqlx::test]
async fn installation_tokens_are_replaced_before_they_expire(pool: PgPool) {
    // Tokens live 4 s here; the client replaces one with less than 3 s left.
    let (fake, app) = app_fake(Duration::from_secs(4)).await;
    let client = app_client(&fake, app).with_token_refresh(Duration::from_secs(3));
    let r = reporter_with(&pool, client, settings());
    let stand_id = stand(&pool, "feature/login").await;
    enqueue(&pool, StandId::new(stand_id), None, &check(&sha(1), CheckState::InProgress)).await.unwrap();
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    enqueue(&pool, StandId::new(stand_id), None, &check(&sha(1), CheckState::Success)).await.unwrap();
    drain_all(&r, &pool, Duration::from_secs(5)).await;

    let issued = fake.gh_state(|g| g.app.as_ref().unwrap().issued.clone());
    assert_eq!(issued.len(), 2, "a second token, fetched before the first expired: {issued:?}");
    assert!(issued[1].1 > issued[0].1);
    let lookups = fake.gh_state(|g| g.app.as_ref().unwrap().lookups);
    assert_eq!(lookups, 1, "the installation id is remembered");
    assert!(fake.seen().iter().all(|s| s.status != 401), "never sent an expired token: {:?}", fake.seen());
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[sqlx::test]
async fn with_a_token_the_check_is_a_commit_status(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Github).await;
    let r = reporter_with(&pool, token_client(&fake), settings());
    let stand_id = stand(&pool, "feature/login").await;
    enqueue(&pool, StandId::new(stand_id), None, &check(&sha(2), CheckState::InProgress)).await.unwrap();
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    enqueue(&pool, StandId::new(stand_id), None, &check(&sha(2), CheckState::Failure)).await.unwrap();
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    let statuses = fake.gh_state(|g| g.statuses.clone());
    let states: Vec<&str> = statuses.iter().map(|s| s.2.as_str()).collect();
    assert_eq!(states, ["pending", "failure"]);
    assert!(statuses.iter().all(|s| s.0 == REPO && s.1 == sha(2)));
    assert!(fake.gh_checks(REPO, &sha(2)).is_empty());
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[sqlx::test]
async fn deployments_go_in_progress_success_and_inactive_at_teardown(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Github).await;
    let r = reporter_with(&pool, token_client(&fake), settings());
    let stand_id = stand(&pool, "feature/login").await;
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 1, &sha(1), Status::Deploying, false))
        .await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 1, &sha(1), Status::Ready, false))
        .await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    // A new push: a new deployment for the new commit.
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 2, &sha(2), Status::Ready, true)).await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    let mut removed = view(StandId::new(stand_id), 3, Status::Removed);
    removed.kind = RunKind::Teardown;
    removed.sha = Some(sha(2));
    let target = Target { forge: ForgeKind::Github, repo: REPO, number: Some(PR), labelled: true };
    enqueue_all(&pool, StandId::new(stand_id), &outbound(&removed, &target)).await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;

    let deployments = fake.gh_deployments(REPO);
    assert_eq!(deployments.len(), 2, "{deployments:?}");
    let url = Some("https://draft-feature-login.draft.example.com".to_owned());
    for (d, sha) in deployments.iter().zip([sha(1), sha(2)]) {
        assert_eq!((d.sha.as_str(), d.environment.as_str()), (sha.as_str(), "draft/feature/login"));
        assert!(d.transient && !d.production);
    }
    // The newer commit's success retired the older deployment; the teardown the newer one.
    assert_eq!(
        deployments[0].statuses,
        [("in_progress".to_owned(), url.clone()), ("success".to_owned(), url.clone()), ("inactive".to_owned(), None)]
    );
    assert_eq!(deployments[1].statuses, [("success".to_owned(), url.clone()), ("inactive".to_owned(), None)]);
    // The label stays after teardown: a merged PR keeps its draft-tested mark.
    assert_eq!(fake.gh_labels(REPO, PR), [TESTED_LABEL]);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[sqlx::test]
async fn the_label_comes_with_passing_smoke_and_goes_with_a_later_failure(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Github).await;
    let r = reporter_with(&pool, token_client(&fake), settings());
    let stand_id = stand(&pool, "feature/login").await;
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 1, &sha(1), Status::Ready, false))
        .await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    assert_eq!(fake.gh_labels(REPO, PR), [TESTED_LABEL]);
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 2, &sha(2), Status::Failed, true))
        .await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    assert!(fake.gh_labels(REPO, PR).is_empty());
    // Removing it again (a second failure) is not an error: GitHub's 404 for a missing label is fine.
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 3, &sha(3), Status::Failed, true))
        .await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    let failed: i64 =
        sqlx::query_scalar("select count(*) from outbox where state = 'failed'").fetch_one(&pool).await.unwrap();
    assert_eq!(failed, 0);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[sqlx::test]
async fn five_rapid_pushes_make_one_comment_and_the_last_state_wins(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Github).await;
    let r = reporter_with(&pool, token_client(&fake), settings());
    let stand_id = stand(&pool, "feature/login").await;
    for n in 1..=5 {
        enqueue_all(
            &pool,
            StandId::new(stand_id),
            &reports(StandId::new(stand_id), n as i32, &sha(n), Status::Deploying, false),
        )
        .await;
    }
    let last_ready = reports(StandId::new(stand_id), 5, &sha(5), Status::Ready, false);
    enqueue_all(&pool, StandId::new(stand_id), &last_ready).await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;

    let ours = fake.marked(REPO, PR, &marker(StandId::new(stand_id)));
    assert_eq!(ours.len(), 1);
    let Outbound::Comment(c) = &last_ready[0] else { panic!() };
    assert_eq!(ours[0].body, c.body);
    // The comment, then the newest commit's status and deployment: older commits were superseded
    // before anything was sent.
    let statuses = fake.gh_state(|g| g.statuses.clone());
    assert_eq!(statuses.iter().map(|s| (s.1.clone(), s.2.clone())).collect::<Vec<_>>(), [(sha(5), "success".into())]);
    let deployments = fake.gh_deployments(REPO);
    assert_eq!(deployments.len(), 1);
    assert_eq!(deployments[0].sha, sha(5));
    assert_eq!(fake.count("POST", "/comments"), 1);
    // A push after an in-progress check was sent: the older commit's check is closed, not left spinning.
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 6, &sha(6), Status::Deploying, false))
        .await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 7, &sha(7), Status::Ready, false))
        .await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    let statuses = fake.gh_state(|g| g.statuses.clone());
    let tail: Vec<(String, String)> = statuses[1..].iter().map(|s| (s.1.clone(), s.2.clone())).collect();
    assert_eq!(
        tail,
        [(sha(6), "pending".into()), (sha(6), "error".into()), (sha(7), "success".into())],
        "{statuses:?}"
    );
    assert_eq!(statuses[2].3, format!("Superseded by {}", &sha(7)[..7]));
    assert_eq!(fake.violations(), Vec::<String>::new());
}

/// Rows of `n` stands, one per PR, each due now.
async fn stands(pool: &PgPool, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id: i64 = sqlx::query_scalar(
            "insert into stands (project, branch, namespace, pr_number) values ('shop', $1, $2, $3) returning stand_id",
        )
        .bind(format!("feature/f{i}"))
        .bind(format!("draft-feature-f{i}"))
        .bind(100 + i as i64)
        .fetch_one(pool)
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

#[sqlx::test]
async fn a_429_with_retry_after_is_waited_out(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Github).await;
    let r = reporter_with(&pool, token_client(&fake), settings());
    let ids = stands(&pool, 3).await;
    fake.script(&[Mode::RateLimited(2)]);
    for (i, id) in ids.iter().enumerate() {
        enqueue(&pool, StandId::new(*id), None, &check(&sha(i as u32 + 1), CheckState::Success)).await.unwrap();
    }
    drain_all(&r, &pool, Duration::from_secs(10)).await;
    let seen = fake.seen();
    let limited = seen.iter().find(|s| s.status == 429).expect("a 429").at;
    // Requests already on their way when the 429 went out arrive within a few milliseconds; the next
    // one sent after it must wait.
    let next = seen
        .iter()
        .filter(|s| s.arrived > limited + Duration::from_millis(100))
        .map(|s| s.arrived)
        .min()
        .expect("a request after the 429");
    let waited = next - limited;
    println!("429 Retry-After: 2 s; next request after {:.3} s", waited.as_secs_f64());
    assert!(waited >= Duration::from_secs(2), "waited {waited:?}");
    assert!(waited < Duration::from_millis(3500), "not much longer than asked: {waited:?}");
    assert_eq!(seen.iter().filter(|s| s.status == 429).count(), 1, "nobody called while held: {seen:?}");
    assert_eq!(fake.gh_state(|g| g.statuses.len()), 3);
}

#[sqlx::test]
async fn a_secondary_rate_limit_holds_every_call_of_the_client(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Github).await;
    // No retry-after: GitHub's docs say to wait at least a minute; shortened here.
    let client = token_client(&fake).with_secondary_wait(Duration::from_millis(1500));
    let r = reporter_with(&pool, client, settings());
    let ids = stands(&pool, 4).await;
    fake.script(&[Mode::SecondaryLimit(None)]);
    for (i, id) in ids.iter().enumerate() {
        enqueue(&pool, StandId::new(*id), None, &check(&sha(i as u32 + 1), CheckState::Success)).await.unwrap();
    }
    drain_all(&r, &pool, Duration::from_secs(10)).await;
    let seen = fake.seen();
    let limited = seen.iter().find(|s| s.status == 403).expect("a 403").at;
    let next =
        seen.iter().filter(|s| s.arrived > limited + Duration::from_millis(100)).map(|s| s.arrived).min().unwrap();
    println!("secondary limit without retry-after: next request after {:.3} s", (next - limited).as_secs_f64());
    assert!(next - limited >= Duration::from_millis(1500));
    assert_eq!(seen.iter().filter(|s| s.status == 403).count(), 1, "{seen:?}");
    // And with retry-after, that time is used.
    fake.script(&[Mode::SecondaryLimit(Some(1))]);
    enqueue(&pool, StandId::new(ids[0]), None, &check(&sha(9), CheckState::Success)).await.unwrap();
    drain_all(&r, &pool, Duration::from_secs(10)).await;
    let seen = fake.seen();
    let limited = seen.iter().filter(|s| s.status == 403).map(|s| s.at).max().unwrap();
    let next =
        seen.iter().filter(|s| s.arrived > limited + Duration::from_millis(100)).map(|s| s.arrived).min().unwrap();
    assert!(next - limited >= Duration::from_secs(1), "{:?}", next - limited);
    assert_eq!(fake.gh_state(|g| g.statuses.len()), 5);
}

#[sqlx::test]
async fn after_a_five_minute_outage_every_pr_ends_with_its_latest_state(pool: PgPool) {
    // Time compressed 100×: backoff capped at 3 s stands for GitHub's 5 minutes; the outage lasts 3 s
    // (5 minutes at that scale) and answers 500 and 503 in turn.
    let fake = Fake::start(ForgeKind::Github).await;
    let settings = ReporterSettings {
        poll: Duration::from_millis(20),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(600),
        ..settings()
    };
    let r = std::sync::Arc::new(reporter_with(&pool, token_client(&fake), settings));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let background = {
        let r = r.clone();
        tokio::spawn(async move { r.run(stop).await })
    };
    let ids = stands(&pool, 8).await;
    fake.set_mode(Mode::Down(503));
    let outage = Instant::now();
    let mut last: Vec<Vec<Outbound>> = vec![Vec::new(); ids.len()];
    // Each PR moves on during the outage: pushes, deploys, fails, recovers.
    for round in 0..4u32 {
        if round == 2 {
            fake.set_mode(Mode::Down(500));
        }
        for (i, id) in ids.iter().enumerate() {
            let n = (i as u32 + 1) * 10 + round;
            let status = match (round, i % 2) {
                (3, 0) => Status::Ready,
                (3, _) => Status::Failed,
                _ => Status::Deploying,
            };
            let rows = reports(StandId::new(*id), round as i32 + 1, &sha(n), status, false);
            let rows: Vec<Outbound> = rows
                .into_iter()
                .map(|o| match o {
                    Outbound::Comment(mut c) => {
                        c.number = 100 + i as u64;
                        Outbound::Comment(c)
                    }
                    Outbound::Label(mut l) => {
                        l.number = 100 + i as u64;
                        Outbound::Label(l)
                    }
                    // Each stand its own environment, as each branch has: a success retires the
                    // environment's earlier deployments.
                    Outbound::Environment(mut e) => {
                        e.env.environment = format!("draft/feature/f{i}");
                        Outbound::Environment(e)
                    }
                    other => other,
                })
                .collect();
            enqueue_all(&pool, StandId::new(*id), &rows).await;
            last[i] = rows;
        }
        tokio::time::sleep(Duration::from_millis(750)).await;
    }
    let during = fake.seen().len();
    fake.set_mode(Mode::Up);
    let recovered = Instant::now();
    let end = Instant::now() + Duration::from_secs(20);
    while pending(&pool).await > 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up = recovered.elapsed();
    stop_tx.send(true).unwrap();
    background.await.unwrap();
    assert_eq!(pending(&pool).await, 0);
    println!(
        "outage of {:.1} s: {during} requests refused; caught up {:.2} s after recovery",
        (recovered - outage).as_secs_f64(),
        caught_up.as_secs_f64()
    );
    for (i, rows) in last.iter().enumerate() {
        let number = 100 + i as u64;
        for row in rows {
            match row {
                Outbound::Comment(c) => {
                    let ours = fake.marked(REPO, number, &marker(StandId::new(ids[i])));
                    assert_eq!(ours.len(), 1, "PR {number}");
                    assert_eq!(ours[0].body, c.body, "PR {number} shows its newest comment");
                }
                Outbound::Check(c) => {
                    let statuses = fake.gh_state(|g| g.statuses.clone());
                    let newest = statuses.iter().rev().find(|s| s.1 == c.check.sha).map(|s| s.2.clone());
                    let want = if i % 2 == 0 { "success" } else { "failure" };
                    assert_eq!(newest.as_deref(), Some(want), "PR {number}");
                }
                Outbound::Environment(e) => {
                    let d = fake.gh_deployments(REPO).into_iter().rev().find(|d| d.sha == e.env.sha).unwrap();
                    let want = if i % 2 == 0 { "success" } else { "failure" };
                    assert_eq!(d.statuses.last().unwrap().0, want, "PR {number}");
                }
                Outbound::Label(l) => assert_eq!(fake.gh_labels(REPO, number).contains(&l.label), l.present),
                Outbound::Reply { .. } => unreachable!(),
            }
        }
    }
    let failed: i64 =
        sqlx::query_scalar("select count(*) from outbox where state = 'failed'").fetch_one(&pool).await.unwrap();
    assert_eq!(failed, 0, "nothing given up");
    assert!(during < 400, "backoff kept the outage's requests bounded: {during}");
    assert_eq!(fake.violations(), Vec::<String>::new());
}

fn shop_config() -> Config {
    Config::from_toml(&format!(
        r#"
[[projects]]
name = "shop"
forge = "github"
repo = "{REPO}"
webhook_secret_env = "GH_SECRET"
"#
    ))
    .unwrap()
}

#[sqlx::test]
async fn only_writers_may_rerun_or_destroy_and_every_decision_is_audited(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Github).await;
    fake.gh_grant(REPO, "alice", "write");
    fake.gh_grant(REPO, "maya", "maintain");
    fake.gh_grant(REPO, "tom", "triage");
    let client = AnyForge::Github(token_client(&fake));
    let authoriser = ForgeAuthoriser::with_clients(pool.clone(), &shop_config(), vec![(ForgeKind::Github, client)]);
    let stand_id = stand(&pool, "feature/login").await;

    let mut runs = Vec::new();
    for (login, trigger, kind, allowed) in [
        ("alice", "command", "deploy", true),
        ("maya", "check_run", "deploy", true),
        ("tom", "command", "teardown", false),
        ("mallory", "check_run", "deploy", false),
    ] {
        let run = command_run(&pool, StandId::new(stand_id), kind, trigger, login, &sha(1), json!({})).await;
        let verdict = authoriser.authorise(&run).await.unwrap();
        assert_eq!(matches!(verdict, Verdict::Allowed), allowed, "{login}: {verdict:?}");
        runs.push(run);
    }
    // A run resumed after its refusal was recorded is refused again without a new audit row or reply.
    let again = authoriser.authorise(&runs[2]).await.unwrap();
    assert_eq!(
        again,
        Verdict::Denied {
            reason: "tom has read (triage) access to acme/shop; `/draft destroy` needs write access".into()
        }
    );
    let audit: Vec<(String, String, Value)> =
        sqlx::query_as("select actor, action, detail from audit order by audit_id").fetch_all(&pool).await.unwrap();
    let decisions: Vec<(&str, &str, &str)> =
        audit.iter().map(|(a, act, d)| (a.as_str(), act.as_str(), d["permission"].as_str().unwrap())).collect();
    assert_eq!(
        decisions,
        [
            ("github:alice", "command.allowed", "write"),
            ("github:maya", "command.allowed", "write (maintain)"),
            ("github:tom", "command.denied", "read (triage)"),
            ("github:mallory", "command.denied", "none"),
        ]
    );
    // The refused destroy left the stand alone.
    let state: String = sqlx::query_scalar("select state from stands where stand_id = $1")
        .bind(stand_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "active");
    // Each refusal gets a short reply on the PR.
    let r = reporter_with(&pool, token_client(&fake), settings());
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    let replies: Vec<String> = fake.comments(REPO, PR).into_iter().map(|c| c.body).collect();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies[0].starts_with("@tom `/draft destroy` needs write access to `acme/shop`"), "{replies:?}");
    assert!(replies[1].starts_with("@mallory the Re-run button needs write access"), "{replies:?}");
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[sqlx::test]
async fn an_allowed_destroy_closes_the_stand_and_a_github_outage_is_transient(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Github).await;
    fake.gh_grant(REPO, "alice", "admin");
    let client = AnyForge::Github(token_client(&fake));
    let authoriser = ForgeAuthoriser::with_clients(pool.clone(), &shop_config(), vec![(ForgeKind::Github, client)]);
    let stand_id = stand(&pool, "feature/login").await;
    let run = command_run(&pool, StandId::new(stand_id), "teardown", "command", "alice", &sha(1), json!({})).await;
    fake.set_mode(Mode::Down(502));
    let err = authoriser.authorise(&run).await.unwrap_err();
    assert_eq!(err.label, "forge_unavailable", "{err:?}");
    fake.set_mode(Mode::Up);
    assert_eq!(authoriser.authorise(&run).await.unwrap(), Verdict::Allowed);
    let state: String = sqlx::query_scalar("select state from stands where stand_id = $1")
        .bind(stand_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "closing");
    // A resumed run is not asked about twice.
    let before = fake.seen().len();
    assert_eq!(authoriser.authorise(&run).await.unwrap(), Verdict::Allowed);
    assert_eq!(fake.seen().len(), before);
}

/// A build fetches the repository with a token narrowed to that one repository and to reading its
/// contents ("Create an installation access token for an app"), not the installation's own token;
/// with a personal token there is nothing to narrow, and no token is made.
#[tokio::test]
async fn a_build_gets_a_token_that_can_only_read_its_repository() {
    let (fake, app) = app_fake(Duration::from_secs(3600)).await;
    let client = app_client(&fake, app);
    let (token, expires) = client.read_only_token(REPO).await.unwrap().expect("an App can narrow a token");
    use secrecy::ExposeSecret as _;
    assert!(token.expose_secret().starts_with("ghs_"));
    assert!(expires > chrono::Utc::now() && expires <= chrono::Utc::now() + chrono::Duration::hours(1));
    let narrowings = fake.gh_state(|g| g.app.as_ref().unwrap().narrowings.clone());
    let name = REPO.split_once('/').unwrap().1;
    assert_eq!(
        narrowings.last().cloned().flatten(),
        Some(json!({ "repositories": [name], "permissions": { "contents": "read" } })),
        "{narrowings:?}"
    );
    assert_eq!(narrowings.iter().filter(|n| n.is_none()).count(), 1, "the client's own token stays as it was");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    assert!(token_client(&fake).read_only_token(REPO).await.unwrap().is_none());
}

/// A completed check run is final (GitHub's checks guide: a re-run asks the app for a new check
/// run). A stand that failed and then passes at the same commit must end with a green `draftd`
/// check, or a required check keeps the PR from merging.
#[sqlx::test]
async fn a_rerun_after_a_failure_makes_a_new_check_run_and_the_check_turns_green(pool: PgPool) {
    let (fake, app) = app_fake(Duration::from_secs(3600)).await;
    let r = reporter_with(&pool, app_client(&fake, app), settings());
    let stand_id = stand(&pool, "feature/login").await;
    let sha = sha(1);
    for state in [CheckState::InProgress, CheckState::Failure, CheckState::InProgress, CheckState::Success] {
        enqueue(&pool, StandId::new(stand_id), None, &check(&sha, state)).await.unwrap();
        drain_all(&r, &pool, Duration::from_secs(5)).await;
    }
    let failed: Vec<(String, Option<String>)> =
        sqlx::query_as("select state, last_error from outbox where state in ('pending', 'failed')")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let checks = fake.gh_checks(REPO, &sha);
    assert_eq!(checks.len(), 2, "the re-run is a new check run: {checks:?}");
    assert_eq!(history(&checks[0]), ["in_progress", "completed/failure"]);
    assert_eq!(history(&checks[1]), ["in_progress", "completed/success"]);
    assert_eq!(fake.gh_check_state(REPO, &sha).as_deref(), Some("completed/success"));
    assert_eq!(fake.violations(), Vec::<String>::new());
}

/// draftd's deployments are transient, so GitHub's `auto_inactive` leaves them alone: draftd itself
/// marks every earlier deployment of the environment inactive once a newer one succeeds (a failed
/// one leaves the last good one active: its revision is what the stand rolled back to), and all of
/// them at teardown.
#[sqlx::test]
async fn earlier_deployments_go_inactive_when_a_newer_one_succeeds_and_all_at_teardown(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Github).await;
    let r = reporter_with(&pool, token_client(&fake), settings());
    let stand_id = stand(&pool, "feature/login").await;
    let last = |d: &forge_fake::github::Deployment| d.statuses.last().map(|s| s.0.clone()).unwrap_or_default();
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 1, &sha(1), Status::Ready, false))
        .await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 2, &sha(2), Status::Failed, false))
        .await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    let states: Vec<String> = fake.gh_deployments(REPO).iter().map(last).collect();
    assert_eq!(states, ["success", "failure"], "the last good deployment stays active after a failure");
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 3, &sha(3), Status::Ready, false))
        .await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    let states: Vec<String> = fake.gh_deployments(REPO).iter().map(last).collect();
    assert_eq!(states, ["inactive", "inactive", "success"], "{:?}", fake.gh_deployments(REPO));

    let mut removed = view(StandId::new(stand_id), 4, Status::Removed);
    removed.kind = RunKind::Teardown;
    removed.sha = Some(sha(3));
    let target = Target { forge: ForgeKind::Github, repo: REPO, number: Some(PR), labelled: false };
    enqueue_all(&pool, StandId::new(stand_id), &outbound(&removed, &target)).await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    let deployments = fake.gh_deployments(REPO);
    assert!(deployments.iter().all(|d| d.transient), "{deployments:?}");
    for d in &deployments {
        let inactive = d.statuses.iter().filter(|s| s.0 == "inactive").count();
        assert_eq!((last(d).as_str(), inactive), ("inactive", 1), "each marked once: {d:?}");
    }
    let undelivered: i64 = sqlx::query_scalar("select count(*) from outbox where state in ('pending', 'failed')")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(undelivered, 0);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

/// `GET /repos/{o}/{r}/installation` answering 404 means the App is not installed there: not a user
/// without access, not a label or deployment already gone.
#[sqlx::test]
async fn an_app_not_installed_on_the_repository_is_its_own_error(pool: PgPool) {
    use draftd::forge::client::{EnvironmentRef, EnvironmentReport, EnvironmentState, ForgeClient, ForgeUser};
    let (fake, app) = app_fake(Duration::from_secs(3600)).await;
    fake.gh_grant(REPO, "alice", "admin");
    fake.gh_uninstall(REPO);
    let client = app_client(&fake, app);

    let e = client.permission(REPO, ForgeUser { login: "alice", id: None }).await.unwrap_err();
    assert_eq!((e.metric_label(), e.is_not_found(), e.is_transient()), ("app_not_installed", false, false), "{e}");
    assert!(e.to_string().contains("not installed on acme/shop"), "{e}");
    let e = client.set_label(REPO, PR, TESTED_LABEL, false).await.unwrap_err();
    assert_eq!(e.metric_label(), "app_not_installed", "{e}");
    let gone = EnvironmentReport {
        environment: "draft/feature/login".into(),
        branch: "feature/login".into(),
        sha: sha(1),
        state: EnvironmentState::Inactive,
        url: None,
        log_url: None,
        description: "Draft stand removed".into(),
    };
    let e = client.report_environment(REPO, &gone, Some(&EnvironmentRef { id: 9_000_001, sha: sha(1) })).await;
    assert_eq!(e.unwrap_err().metric_label(), "app_not_installed");

    // The Re-run button is not refused as if the person had no access: the check itself failed.
    let authoriser = ForgeAuthoriser::with_clients(
        pool.clone(),
        &shop_config(),
        vec![(ForgeKind::Github, AnyForge::Github(client.clone()))],
    );
    let stand_id = stand(&pool, "feature/login").await;
    let run = command_run(&pool, StandId::new(stand_id), "deploy", "check_run", "alice", &sha(1), json!({})).await;
    let err = authoriser.authorise(&run).await.unwrap_err();
    assert!(err.message.contains("not installed"), "{err:?}");
    let audit: i64 = sqlx::query_scalar("select count(*) from audit").fetch_one(&pool).await.unwrap();
    assert_eq!(audit, 0, "no decision was made about alice");

    // `/health/ready` names the project, so the operator knows where to install the App.
    let config = shop_config();
    let projects = draftd::config::Projects::resolve_with(&config, |_| Some("gh-test-secret-5f0c9a1e".into())).unwrap();
    let state = draftd::http::AppState::new(&config, projects, pool.clone());
    state.set_migrated();
    let client = client.watch_problems(state.forge_problems().clone());
    let _ = client.permission(REPO, ForgeUser { login: "alice", id: None }).await;
    let ready = health(draftd::http::router(state.clone())).await;
    assert_eq!(ready["status"], "ok", "one project's missing App does not take draftd out of service");
    assert_eq!(ready["forges"], json!([{ "project": "shop", "repo": REPO, "problem": "app_not_installed" }]));
    // Installed again: the next call clears it.
    fake.0.lock().unwrap().gh.app.as_mut().unwrap().not_installed.clear();
    client.permission(REPO, ForgeUser { login: "alice", id: None }).await.unwrap();
    assert_eq!(health(draftd::http::router(state)).await["forges"], json!([]));
    assert_eq!(fake.violations(), Vec::<String>::new());
}

async fn health(app: axum::Router) -> Value {
    use tower::ServiceExt as _;
    let req = axum::http::Request::get("/health/ready").body(axum::body::Body::empty()).unwrap();
    let res = app.oneshot(req).await.unwrap();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A renamed or transferred repository answers 301 (GET) or 307 (other methods) for its old path;
/// draftd follows, so reports keep arriving, and names the new name once so the configuration can be
/// updated.
#[sqlx::test]
async fn a_renamed_repository_is_followed_and_its_new_name_is_found(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Github).await;
    fake.seed(REPO, PR, "LGTM", false);
    fake.gh_rename(REPO, "acme/storefront");
    let client = token_client(&fake);
    let r = reporter_with(&pool, client.clone(), settings());
    let stand_id = stand(&pool, "feature/login").await;
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 1, &sha(1), Status::Ready, false))
        .await;
    enqueue_all(&pool, StandId::new(stand_id), &reports(StandId::new(stand_id), 2, &sha(1), Status::Failed, true))
        .await;
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    let undelivered: Vec<(String, Option<String>)> =
        sqlx::query_as("select state, last_error from outbox where state in ('pending', 'failed')")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(undelivered.is_empty(), "{undelivered:?}");
    assert_eq!(fake.marked("acme/storefront", PR, &marker(StandId::new(stand_id))).len(), 1);
    assert_eq!(fake.gh_deployments("acme/storefront").len(), 1);
    let statuses = fake.gh_state(|g| g.statuses.clone());
    assert!(statuses.iter().all(|s| s.0 == "acme/storefront"), "{statuses:?}");
    assert!(fake.seen().iter().any(|s| s.status == 301) && fake.seen().iter().any(|s| s.status == 307));
    assert_eq!(client.moved_repositories(), [(REPO.to_owned(), "acme/storefront".to_owned())]);

    // As an App too: the installation is found through the redirect.
    let (fake, app) = app_fake(Duration::from_secs(3600)).await;
    fake.gh_rename(REPO, "acme/storefront");
    let r = reporter_with(&pool, app_client(&fake, app), settings());
    enqueue(&pool, StandId::new(stand_id), None, &check(&sha(7), CheckState::Success)).await.unwrap();
    drain_all(&r, &pool, Duration::from_secs(5)).await;
    assert_eq!(fake.gh_check_state("acme/storefront", &sha(7)).as_deref(), Some("completed/success"));
    assert_eq!(fake.violations(), Vec::<String>::new());
}
