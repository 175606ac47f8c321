//! Pacing against GitHub's secondary rate limits: many stands reporting at once through one token,
//! to the fake GitHub enforcing the limits "Rate limits for the REST API" documents (100 concurrent
//! requests, 900 points a minute per endpoint, 80 content-creating requests a minute and 500 an
//! hour), on a clock twenty times faster than GitHub's: a "minute" of 3 s. Pacing is scaled alike.

use std::time::Duration;

use draftd::forge::client::{AnyForge, GithubClient, Pacing};
use secrecy::SecretString;
use sqlx::PgPool;

use forge_fake::burst::{self, Burst};
use forge_fake::github::Limits;
use forge_fake::*;

use crate::support::forge_fake;
use draftd::stand::StandId;

const SCALE: f64 = 0.05;

fn client(fake: &Fake, pacing: Pacing) -> AnyForge {
    let client = GithubClient::new(&fake.url(), &SecretString::from(TOKEN), Duration::from_secs(5))
        .unwrap()
        .with_pacing(pacing)
        .with_secondary_wait(Duration::from_secs(60).mul_f64(SCALE));
    AnyForge::Github(client)
}

const BURST: Burst =
    Burst { stands: 100, versions: 2, between: Duration::from_millis(500), deadline: Duration::from_secs(90) };

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_hundred_stands_reporting_at_once_stay_within_githubs_secondary_limits(pool: PgPool) {
    let fake = Fake::start(draftd::config::ForgeKind::Github).await;
    fake.gh_enforce_limits(Limits::github(SCALE));
    let out = burst::run(&pool, &fake, client(&fake, Pacing::GITHUB.scaled(SCALE)), settings(), BURST).await;
    assert!(out.all_current, "every comment shows its stand's newest report: {out:?}");
    assert_eq!(out.duplicated, 0, "{out:?}");
    assert_eq!(out.limited, 0, "no secondary-limit answer: {out:?}");
    assert_eq!(out.max_concurrent, 1, "one request of the installation at a time: {out:?}");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    // Writes about a (scaled) second apart: 100 creations and the edits that follow them cannot
    // all be done in less than 100 gaps.
    assert!(out.current_after >= Duration::from_secs(100).mul_f64(SCALE), "{out:?}");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_busy_installation_does_not_slow_another_installations_stand(pool: PgPool) {
    use draftd::config::ForgeKind;
    use draftd::forge::client::{AppCredentials, marker};
    use draftd::reporter::{CommentPayload, Reporter, enqueue_comment};
    let fake = Fake::start(ForgeKind::Github).await;
    let (private, public) = forge_fake::github::app_key();
    fake.gh_app(4242, public, Duration::from_secs(3600));
    fake.gh_enforce_limits(Limits::github(SCALE));
    // An App: one installation token per repository owner, so one pacing lane per owner.
    let app = AppCredentials { app_id: 4242, private_key_pem: private, installation_id: None };
    let client =
        GithubClient::app(&fake.url(), app, Duration::from_secs(5)).unwrap().with_pacing(Pacing::GITHUB.scaled(SCALE));
    let busy = burst::stands(&pool, 1..=40).await;
    let quiet = burst::stands(&pool, 41..=41).await[0];
    let reporter = Reporter::new(pool.clone(), settings()).with_forge(ForgeKind::Github, AnyForge::Github(client));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move { reporter.run(stopped).await });
    for (i, stand) in busy.iter().enumerate() {
        let payload = CommentPayload {
            forge: ForgeKind::Github,
            repo: REPO.into(),
            number: i as u64 + 1,
            marker: marker(StandId::new(*stand)),
            body: format!("{} busy", marker(StandId::new(*stand))),
        };
        enqueue_comment(&pool, StandId::new(*stand), None, &payload).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = std::time::Instant::now();
    let payload = CommentPayload {
        forge: ForgeKind::Github,
        repo: "elsewhere/shop".into(),
        number: 1,
        marker: marker(StandId::new(quiet)),
        body: format!("{} quiet", marker(StandId::new(quiet))),
    };
    enqueue_comment(&pool, StandId::new(quiet), None, &payload).await.unwrap();
    while fake.marked("elsewhere/shop", 1, &marker(StandId::new(quiet))).is_empty()
        && start.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let quiet_after = start.elapsed();
    let busy_left = busy
        .iter()
        .enumerate()
        .filter(|(i, stand)| fake.marked(REPO, *i as u64 + 1, &marker(StandId::new(**stand))).is_empty())
        .count();
    stop.send(true).ok();
    worker.await.ok();
    assert!(
        !fake.marked("elsewhere/shop", 1, &marker(StandId::new(quiet))).is_empty(),
        "the quiet stand's comment arrived"
    );
    assert!(busy_left > 10, "the busy installation was still working through its burst: {busy_left} left");
    // A pass waits at most `max_wait` for one write's turn, so the other owner's stand goes within a
    // pass or two, not behind the busy owner's queue of dozens of gaps.
    let bound = Pacing::GITHUB.scaled(SCALE).write_gap * 10;
    assert!(quiet_after < bound, "the quiet stand waited {quiet_after:?} (bound {bound:?})");
    assert_eq!(fake.gh_limited(), 0);
}
