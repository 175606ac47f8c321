//! The reporter end to end: outbox rows in a real Postgres (a fresh database per test), the real
//! GitHub (octocrab) and GitLab (`gitlab` crate) clients, and local HTTP fakes of both forges that
//! check method, path, auth header and body as the APIs document them and keep their comments in memory.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use draftd::config::ForgeKind;
use draftd::forge::client::{ForgeClient, marker};
use draftd::reporter::{ReportView, Reporter, ReporterSettings, Status, StepLine, render};
use draftd::stand::{RunId, StandId, StepState};
use serde_json::json;
use sqlx::PgPool;

use forge_fake::*;

use crate::support::forge_fake;
use draftd::stand::Failure;

// ---------------------------------------------------------------------------------------------
// (a), (b): five reports, one comment
// ---------------------------------------------------------------------------------------------

async fn five_reports_one_comment(pool: PgPool, kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    // Someone else's comments on the PR, and (GitLab) a system note: never touched.
    fake.seed(repo_of(kind), PR, "LGTM", false);
    fake.seed(repo_of(kind), PR, "added 1 commit", true);
    let r = reporter(&pool, &fake, kind);
    let stand_id = stand(&pool, "feature/login").await;
    let mut last = String::new();
    for run in 1..=5 {
        let (_, body) = enqueue(&pool, kind, StandId::new(stand_id), run).await;
        assert_eq!(r.deliver_due().await.unwrap(), 1, "run {run}");
        last = body;
    }
    let ours = fake.marked(repo_of(kind), PR, &marker(StandId::new(stand_id)));
    assert_eq!(ours.len(), 1, "exactly one sticky comment");
    assert_eq!(ours[0].body, last, "the fifth report is shown");
    assert!(ours[0].body.contains("run #5"));
    assert_eq!(fake.comments(repo_of(kind), PR).len(), 3, "others' comments untouched");
    let (list, create, edit) = match kind {
        ForgeKind::Github => (
            fake.count("GET", "/issues/7/comments"),
            fake.count("POST", "/issues/7/comments"),
            fake.count("PATCH", &format!("/issues/comments/{}", ours[0].id)),
        ),
        ForgeKind::Gitlab => (
            fake.count("GET", "/merge_requests/7/notes"),
            fake.count("POST", "/merge_requests/7/notes"),
            fake.count("PUT", &format!("/merge_requests/7/notes/{}", ours[0].id)),
        ),
    };
    assert_eq!(create, 1, "created once");
    assert_eq!(edit, 4, "edited four times");
    assert_eq!(list, 1, "listed only before the first post: the comment id is remembered");
    if kind == ForgeKind::Gitlab {
        assert_eq!(fake.count("GET", "/api/v4/user"), 1, "the gitlab client signs in once");
    }
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    let rows = states(&pool, StandId::new(stand_id)).await;
    assert!(rows.iter().all(|(_, s, a, e)| s == "delivered" && *a == 1 && e.is_none()), "{rows:?}");
    let remembered: Vec<Option<i64>> = sqlx::query_scalar(
        "select (payload->>'comment_id')::bigint from outbox where stand_id = $1 order by outbox_id",
    )
    .bind(stand_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(remembered.iter().all(|id| *id == Some(ours[0].id as i64)), "{remembered:?}");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn github_five_reports_make_one_comment_edited_four_times(pool: PgPool) {
    five_reports_one_comment(pool, ForgeKind::Github).await;
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn gitlab_five_reports_make_one_note_edited_four_times(pool: PgPool) {
    five_reports_one_comment(pool, ForgeKind::Gitlab).await;
}

// ---------------------------------------------------------------------------------------------
// (c): an outage
// ---------------------------------------------------------------------------------------------

async fn outage(pool: PgPool, kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    fake.set_mode(Mode::Down(502));
    // A backoff long enough that a loaded machine's next pass still falls inside it (the test
    // checks that a stream keeps its backoff), short enough to wait out: 400 ms, then 800 ms, each
    // ±20 %, so a wait of 1.1 s outlasts either.
    let settings = ReporterSettings {
        backoff_base: Duration::from_millis(400),
        backoff_max: Duration::from_millis(800),
        ..forge_fake::settings()
    };
    let r = Reporter::new(pool.clone(), settings).with_forge(kind, client(kind, &fake.url(), TOKEN));
    let stand_id = stand(&pool, "feature/login").await;
    for run in 1..=5 {
        enqueue(&pool, kind, StandId::new(stand_id), run).await;
    }
    let stats = r.pass().await.unwrap();
    assert_eq!((stats.claimed, stats.retried, stats.delivered), (1, 1, 0), "only the newest is tried");
    let rows = states(&pool, StandId::new(stand_id)).await;
    assert!(rows[..4].iter().all(|(_, s, a, _)| s == "superseded" && *a == 0), "{rows:?}");
    assert_eq!((rows[4].1.as_str(), rows[4].2), ("pending", 1));
    assert!(rows[4].3.as_deref().unwrap().contains("502"), "{rows:?}");

    // Still down: retried with backoff, never delivered, nothing posted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stats = r.pass().await.unwrap();
    assert_eq!((stats.claimed, stats.retried), (1, 1));
    let down_requests = fake.seen().iter().filter(|s| s.status == 502).count();
    assert!(down_requests >= 2, "retried: {down_requests}");

    // A sixth report during the outage, while the fifth is backing off: it waits behind the fifth
    // (the stream keeps its backoff) and then supersedes it.
    let (id6, last) = enqueue(&pool, kind, StandId::new(stand_id), 6).await;
    let stats = r.pass().await.unwrap();
    assert_eq!(stats.claimed, 0, "the stream is backing off");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stats = r.pass().await.unwrap();
    assert_eq!((stats.claimed, stats.retried), (1, 1), "due once the backoff is over");
    let rows = states(&pool, StandId::new(stand_id)).await;
    assert_eq!(rows[4].1, "superseded");

    fake.set_mode(Mode::Up);
    drain(&r, &pool, StandId::new(stand_id), Duration::from_secs(5)).await;
    let ours = fake.marked(repo_of(kind), PR, &marker(StandId::new(stand_id)));
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].body, last);
    let rows = states(&pool, StandId::new(stand_id)).await;
    let delivered: Vec<i64> = rows.iter().filter(|r| r.1 == "delivered").map(|r| r.0).collect();
    assert_eq!(delivered, vec![id6], "only the newest is delivered: {rows:?}");
    assert_eq!(rows.iter().filter(|r| r.1 == "superseded").count(), 5);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn github_outage_delivers_only_the_newest_report_once_it_recovers(pool: PgPool) {
    outage(pool, ForgeKind::Github).await;
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn gitlab_outage_delivers_only_the_newest_report_once_it_recovers(pool: PgPool) {
    outage(pool, ForgeKind::Gitlab).await;
}

// ---------------------------------------------------------------------------------------------
// (d): a comment left by an earlier draftd, on the second page
// ---------------------------------------------------------------------------------------------

async fn existing_comment_is_found(pool: PgPool, kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let stand_id = stand(&pool, "feature/login").await;
    let repo = repo_of(kind);
    for i in 0..120 {
        fake.seed(repo, PR, &format!("review comment {i}"), i % 10 == 0);
    }
    let old =
        fake.seed(repo, PR, &format!("{}\n### ⏳ Draft stand deploying\n", marker(StandId::new(stand_id))), false);
    for i in 0..40 {
        fake.seed(repo, PR, &format!("later comment {i}"), false);
    }
    // The same marker on another PR (an older PR of the branch) is not this PR's comment.
    let other = fake.seed(repo, PR + 1, &marker(StandId::new(stand_id)), false);
    let before = fake.comments(repo, PR).len();

    let r = reporter(&pool, &fake, kind);
    let (_, body) = enqueue(&pool, kind, StandId::new(stand_id), 2).await;
    assert_eq!(r.deliver_due().await.unwrap(), 1);
    let ours = fake.marked(repo, PR, &marker(StandId::new(stand_id)));
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].id, old, "the existing comment is edited");
    assert_eq!(ours[0].body, body);
    assert_eq!(fake.comments(repo, PR).len(), before, "nothing created");
    assert_eq!(fake.comments(repo, PR + 1)[0].id, other);
    assert_eq!(fake.comments(repo, PR + 1)[0].body, marker(StandId::new(stand_id)), "other PR untouched");
    let lists = fake
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && (s.path.contains("/comments?") || s.path.contains("/notes?")))
        .count();
    assert_eq!(lists, 2, "two pages listed (per_page=100), then stopped");
    assert!(fake.seen().iter().all(|s| !s.path.contains("per_page=") || s.path.contains("per_page=100")));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn github_comment_of_an_earlier_instance_is_edited_not_duplicated(pool: PgPool) {
    existing_comment_is_found(pool, ForgeKind::Github).await;
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn gitlab_note_of_an_earlier_instance_is_edited_not_duplicated(pool: PgPool) {
    existing_comment_is_found(pool, ForgeKind::Gitlab).await;
}

/// A person deleted the sticky comment: the remembered id answers 404, the marker is looked for,
/// and a new comment is posted.
async fn deleted_comment_is_posted_again(pool: PgPool, kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let r = reporter(&pool, &fake, kind);
    let stand_id = stand(&pool, "feature/login").await;
    enqueue(&pool, kind, StandId::new(stand_id), 1).await;
    assert_eq!(r.deliver_due().await.unwrap(), 1);
    let first = fake.marked(repo_of(kind), PR, &marker(StandId::new(stand_id)))[0].id;
    fake.delete(first);
    let (_, body) = enqueue(&pool, kind, StandId::new(stand_id), 2).await;
    assert_eq!(r.deliver_due().await.unwrap(), 1);
    let ours = fake.marked(repo_of(kind), PR, &marker(StandId::new(stand_id)));
    assert_eq!(ours.len(), 1);
    assert_ne!(ours[0].id, first);
    assert_eq!(ours[0].body, body);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn github_deleted_comment_is_posted_again(pool: PgPool) {
    deleted_comment_is_posted_again(pool, ForgeKind::Github).await;
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn gitlab_deleted_note_is_posted_again(pool: PgPool) {
    deleted_comment_is_posted_again(pool, ForgeKind::Gitlab).await;
}

// ---------------------------------------------------------------------------------------------
// (e): permanent failures, rate limits
// ---------------------------------------------------------------------------------------------

async fn permanent_failure(pool: PgPool, kind: ForgeKind, status: u16) {
    let fake = Fake::start(kind).await;
    fake.set_mode(Mode::Down(status));
    let r = reporter(&pool, &fake, kind);
    let stand_id = stand(&pool, "feature/login").await;
    enqueue(&pool, kind, StandId::new(stand_id), 1).await;
    let stats = r.pass().await.unwrap();
    assert_eq!((stats.claimed, stats.failed, stats.retried), (1, 1, 0), "{status}");
    let requests = fake.seen().len();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(r.pass().await.unwrap().claimed, 0, "not retried");
    assert_eq!(fake.seen().len(), requests);
    let rows = states(&pool, StandId::new(stand_id)).await;
    assert_eq!((rows[0].1.as_str(), rows[0].2), ("failed", 1));
    let error = rows[0].3.clone().unwrap();
    assert!(error.contains(&status.to_string()), "{error}");
    // The next report is tried afresh (the PR may have become reachable).
    fake.set_mode(Mode::Up);
    enqueue(&pool, kind, StandId::new(stand_id), 2).await;
    assert_eq!(r.deliver_due().await.unwrap(), 1);
    assert_eq!(fake.marked(repo_of(kind), PR, &marker(StandId::new(stand_id))).len(), 1);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn github_404_fails_the_row_without_retrying(pool: PgPool) {
    permanent_failure(pool, ForgeKind::Github, 404).await;
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn github_403_fails_the_row_without_retrying(pool: PgPool) {
    permanent_failure(pool, ForgeKind::Github, 403).await;
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn gitlab_404_fails_the_row_without_retrying(pool: PgPool) {
    permanent_failure(pool, ForgeKind::Gitlab, 404).await;
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn gitlab_403_fails_the_row_without_retrying(pool: PgPool) {
    permanent_failure(pool, ForgeKind::Gitlab, 403).await;
}

async fn rate_limited(pool: PgPool, kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let r = reporter(&pool, &fake, kind);
    let stand_id = stand(&pool, "feature/login").await;
    // GitLab: sign in first, so the 429 comes from the notes API itself.
    enqueue(&pool, kind, StandId::new(stand_id), 1).await;
    assert_eq!(r.deliver_due().await.unwrap(), 1);
    fake.set_mode(Mode::RateLimited(120));
    enqueue(&pool, kind, StandId::new(stand_id), 2).await;
    let stats = r.pass().await.unwrap();
    assert_eq!((stats.claimed, stats.retried), (1, 1));
    let wait: f64 = sqlx::query_scalar(
        "select extract(epoch from next_attempt_at - now())::float8 from outbox where stand_id = $1 and state = 'pending'",
    )
    .bind(stand_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!((110.0..=121.0).contains(&wait), "Retry-After honoured: {wait}");
    assert_eq!(r.pass().await.unwrap().claimed, 0);
}

/// Once a 429 holds the client, rows of other stands are held too: they wait for the hold to end
/// without counting an attempt (nothing reached the forge), so a burst of 429s can never exhaust
/// their attempts or stretch their backoff (found by benches/soak.rs).
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn rows_held_by_another_rows_rate_limit_count_no_attempt(pool: PgPool) {
    let kind = ForgeKind::Github;
    let fake = Fake::start(kind).await;
    let r = reporter(&pool, &fake, kind);
    let first = stand(&pool, "feature/first").await;
    let second = stand(&pool, "feature/second").await;
    fake.set_mode(Mode::RateLimited(120));
    enqueue(&pool, kind, StandId::new(first), 1).await;
    r.pass().await.unwrap();
    enqueue(&pool, kind, StandId::new(second), 1).await;
    for _ in 0..3 {
        r.pass().await.unwrap();
    }
    let attempts: Vec<i32> =
        sqlx::query_scalar("select attempts from outbox where state = 'pending' order by attempts")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(attempts, [0, 1], "one row met the 429; the other was held, never sent");
    let sent = fake.seen().len();
    assert_eq!(sent, 1, "only one request reached the forge");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn github_429_waits_for_retry_after(pool: PgPool) {
    rate_limited(pool, ForgeKind::Github).await;
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn gitlab_429_waits_for_retry_after(pool: PgPool) {
    rate_limited(pool, ForgeKind::Gitlab).await;
}

// ---------------------------------------------------------------------------------------------
// (f): the token never shows
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_token_never_appears_in_errors_or_logs(pool: PgPool) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut errors: Vec<String> = Vec::new();
    for kind in [ForgeKind::Github, ForgeKind::Gitlab] {
        let fake = Fake::start(kind).await;
        let good = client(kind, &fake.url(), TOKEN);
        let repo = repo_of(kind);
        // Error answers echoing the token, through both clients' error paths.
        fake.set_mode(Mode::Hostile);
        let e = good.upsert_sticky_comment(repo, PR, "<!-- m -->", "b").await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        errors.push(e.to_string());
        errors.push(format!("{e:?}"));
        let e = good.edit_comment(repo, PR, 1, "b").await.unwrap_err();
        errors.push(e.to_string());
        errors.push(format!("{e:?}"));
        // A wrong token: the fake's 401 names the right one.
        let wrong = client(kind, &fake.url(), "not-the-token");
        let e = wrong.upsert_sticky_comment(repo, PR, "<!-- m -->", "b").await.unwrap_err();
        assert!(!e.is_transient(), "{e}");
        assert_eq!(e.status(), Some(401), "{e}");
        // Nothing listening.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let gone = client(kind, &closed, TOKEN);
        let e = gone.upsert_sticky_comment(repo, PR, "<!-- m -->", "b").await.unwrap_err();
        assert!(e.is_transient(), "connection refused is transient: {e}");
        errors.push(e.to_string());
        errors.push(format!("{e:?}"));
        errors.push(format!("{good:?}"));

        // And through the reporter, into last_error and the logs.
        let r = Reporter::new(pool.clone(), settings()).with_forge(kind, client(kind, &fake.url(), TOKEN));
        let stand_id = stand(&pool, &format!("feature/token-{}", kind.as_str())).await;
        enqueue(&pool, kind, StandId::new(stand_id), 1).await;
        assert_eq!(r.pass().await.unwrap().retried, 1);
        fake.set_mode(Mode::Down(403));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(r.pass().await.unwrap().failed, 1);
        for (_, _, _, e) in states(&pool, StandId::new(stand_id)).await {
            errors.push(e.unwrap_or_default());
        }
    }
    assert!(errors.iter().any(|e| e.contains("[redacted]")), "the hostile echo was scrubbed: {errors:#?}");
    for e in &errors {
        assert!(!e.contains(TOKEN), "token leaked: {e}");
    }
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("report given up"), "{logs}");
    assert!(!logs.contains(TOKEN), "token leaked into logs");
}

// ---------------------------------------------------------------------------------------------
// Concurrency: two reporters, many reports, keys never overlap and end at the newest
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn two_reporters_never_overlap_on_a_comment_and_end_at_the_newest(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Github).await;
    fake.set_delay(Duration::from_millis(15));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let r = Arc::new(reporter(&pool, &fake, ForgeKind::Github));
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move { r.run(rx).await }));
    }
    let mut stands = Vec::new();
    for b in 0..4 {
        stands.push(stand(&pool, &format!("feature/c{b}")).await);
    }
    let mut newest = HashMap::new();
    for run in 1..=12 {
        for &s in &stands {
            let (_, body) = enqueue(&pool, ForgeKind::Github, StandId::new(s), run).await;
            newest.insert(s, body);
        }
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pending: i64 =
            sqlx::query_scalar("select count(*) from outbox where state = 'pending'").fetch_one(&pool).await.unwrap();
        if pending == 0 || tokio::time::Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    for &s in &stands {
        let ours = fake.marked(REPO, PR, &marker(StandId::new(s)));
        assert_eq!(ours.len(), 1, "stand {s}: {ours:?}");
        assert_eq!(&ours[0].body, &newest[&s], "stand {s} shows its newest report");
    }
    // All four stands share one PR in this test, so "in flight per PR" counts the stands' comments
    // together; what must hold is per comment: no row delivered twice, none left behind.
    let counts: Vec<(String, i64)> = sqlx::query_as("select state, count(*) from outbox group by state order by state")
        .fetch_all(&pool)
        .await
        .unwrap();
    let total: i64 = counts.iter().map(|c| c.1).sum();
    assert_eq!(total, 48);
    assert!(counts.iter().all(|(s, _)| s == "delivered" || s == "superseded"), "{counts:?}");
    let delivered = counts.iter().find(|c| c.0 == "delivered").map(|c| c.1).unwrap_or(0) as usize;
    let writes = fake.seen().iter().filter(|s| s.method == "POST" || s.method == "PATCH").count();
    assert_eq!(writes, delivered, "one forge write per delivered row");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn one_comment_is_never_written_by_two_reporters_at_once(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Gitlab).await;
    fake.set_delay(Duration::from_millis(25));
    let stand_id = stand(&pool, "feature/one").await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let r = Arc::new(reporter(&pool, &fake, ForgeKind::Gitlab));
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move { r.run(rx).await }));
    }
    let mut last = String::new();
    for run in 1..=20 {
        last = enqueue(&pool, ForgeKind::Gitlab, StandId::new(stand_id), run).await.1;
        tokio::time::sleep(Duration::from_millis(11)).await;
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < end {
        let pending: i64 =
            sqlx::query_scalar("select count(*) from outbox where state = 'pending'").fetch_one(&pool).await.unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(fake.max_in_flight(), 1, "requests about the MR never overlapped");
    let ours = fake.marked(GITLAB_REPO, PR, &marker(StandId::new(stand_id)));
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].body, last);
    let rows = states(&pool, StandId::new(stand_id)).await;
    assert_eq!(rows.last().unwrap().1, "delivered");
    assert!(rows.iter().all(|r| r.1 == "delivered" || r.1 == "superseded"), "{rows:?}");
}

// ---------------------------------------------------------------------------------------------
// (g): render snapshots
// ---------------------------------------------------------------------------------------------

fn snapshot(name: &str, actual: &str) {
    let path = format!("{}/tests/fixtures/forge/report/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e} (UPDATE_SNAPSHOTS=1 writes it)"));
    assert_eq!(actual, expected, "{name} changed; UPDATE_SNAPSHOTS=1 rewrites it after review");
}

#[test]
fn ready_report_snapshot() {
    snapshot("ready.md", &render(&view(StandId::new(42), 3, Status::Ready)));
}

#[test]
fn failed_report_snapshot() {
    let mut v = view(StandId::new(42), 4, Status::Failed);
    v.steps.push(StepLine {
        name: "verify".into(),
        state: StepState::Failed,
        duration_ms: Some(300_000),
        note: Some("rollout_timeout".into()),
    });
    v.steps.push(StepLine {
        name: "rollback".into(),
        state: StepState::Succeeded,
        duration_ms: Some(9_100),
        note: None,
    });
    v.error = Some(
        "verify: deployment/shop did not become ready within 5m: pod shop-7d9f-x2k1 CrashLoopBackOff\n\
         last log line: ```panic: DATABASE_URL | not set```"
            .into(),
    );
    snapshot("failed.md", &render(&v));
}

#[test]
fn removed_report_snapshot() {
    let mut v = view(StandId::new(42), 5, Status::Removed);
    v.steps =
        vec![StepLine { name: "teardown".into(), state: StepState::Succeeded, duration_ms: Some(2_400), note: None }];
    snapshot("removed.md", &render(&v));
}

/// Stands and their runs in the store render through `ReportView::from_detail`.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_stand_in_the_store_renders(pool: PgPool) {
    let stand_id = stand(&pool, "feature/login").await;
    let run_id: RunId = sqlx::query_scalar(
        "insert into runs (stand_id, number, kind, trigger, automatic, epoch, sha, state, started_at)
         values ($1, 1, 'deploy', 'opened', true, 0, 'abcdef0123456789', 'running', now()) returning run_id",
    )
    .bind(stand_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    for (name, state, error) in [
        ("namespace", "succeeded", None),
        ("database", "succeeded", None),
        ("secrets", "skipped", None),
        ("image", "succeeded", None),
        ("deploy", "failed", Some(json!({"kind": "permanent", "label": "helm_failed", "message": "chart not found"}))),
        ("report", "running", None),
    ] {
        sqlx::query(
            "insert into steps (run_id, name, state, detail, error, started_at, finished_at)
             values ($1, $2, $3, case when $3 = 'skipped' then '{\"skipped\": \"[vault] is not configured\"}'::jsonb else '{}' end,
                     $4, now() - interval '2 seconds', now())",
        )
        .bind(run_id)
        .bind(name)
        .bind(state)
        .bind(error)
        .execute(&pool)
        .await
        .unwrap();
    }
    let detail = draftd::store::stands::show(&pool, &draftd::store::stands::StandRef::Id(StandId::new(stand_id)), 5)
        .await
        .unwrap()
        .unwrap();
    let v = ReportView::from_detail(&detail, None, vec![], None).unwrap();
    assert_eq!(v.status, Status::Failed);
    assert_eq!(v.error.as_deref(), Some("deploy: chart not found"));
    assert!(v.steps.iter().all(|s| s.name != "report"));
    let body = render(&v);
    assert!(body.starts_with(&format!("{}\n### ❌ Draft stand failed\n", marker(StandId::new(stand_id)))), "{body}");
    assert!(body.contains("| secrets | ⏭️ skipped: [vault] is not configured | 2.0 s |"), "{body}");
    assert!(body.contains("| deploy | ❌ failed: helm_failed |"), "{body}");
    assert!(body.contains("`abcdef0`"), "{body}");
}
