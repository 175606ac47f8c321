//! The real GitLab client (`gitlab` crate) against the local GitLab fake, beyond notes: the
//! `draftd` commit status (running → success, a repeated state refused by GitLab and taken as
//! delivered), the `draft/<branch>` environment (created, updated, stopped at teardown, replaced
//! once stopped), the `draft-tested` label, member access (by id and by username); the same
//! through the reporter's outbox (newest state of each kind shown, remembered ids reused); and the
//! forge authoriser allowing a Developer and refusing a Reporter with an audit row and a reply note.

use std::time::Duration;

use draftd::config::{Config, ForgeKind};
use draftd::forge::client::{
    AnyForge, CheckReport, CheckState, EnvironmentRef, EnvironmentReport, EnvironmentState, ForgeClient, ForgeUser,
    marker,
};
use draftd::pipeline::authorise::{Authorise, ForgeAuthoriser, Verdict, needs_check};
use draftd::reporter::{
    CheckPayload, CommentPayload, EnvironmentPayload, LabelPayload, Outbound, enqueue as enqueue_out,
};
use serde_json::{Value, json};
use sqlx::PgPool;

use forge_fake::*;

use crate::support::forge_fake;
use draftd::stand::{RunId, StandId};
use draftd::store::outbox::OutboxKind;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const SHA2: &str = "89abcdef0123456789abcdef0123456789abcdef";
const ENV: &str = "draft/feature/login";
const LABEL: &str = "draft-tested";

async fn gitlab() -> (Fake, AnyForge) {
    let fake = Fake::start(ForgeKind::Gitlab).await;
    let c = client(ForgeKind::Gitlab, &fake.url(), TOKEN);
    (fake, c)
}

fn check(sha: &str, state: CheckState, title: &str) -> CheckReport {
    CheckReport {
        sha: sha.into(),
        state,
        title: title.into(),
        summary: "steps: namespace, database, deploy".into(),
        details_url: Some("http://127.0.0.1:8080/stands/1/runs/1".into()),
        branch: None,
    }
}

fn env(state: EnvironmentState, url: Option<&str>) -> EnvironmentReport {
    EnvironmentReport {
        environment: ENV.into(),
        branch: "feature/login".into(),
        sha: SHA.into(),
        state,
        url: url.map(str::to_owned),
        log_url: Some("http://127.0.0.1:8080/stands/1/runs/1".into()),
        description: "deployed".into(),
    }
}

fn assert_clean(fake: &Fake) {
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

// ---------------------------------------------------------------------------------------------
// (1) commit status
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn commit_status_runs_then_succeeds_and_a_repeat_is_taken_as_delivered() {
    let (fake, c) = gitlab().await;
    let running = check(SHA, CheckState::InProgress, "Deploying feature/login");
    let id = c.report_check(GITLAB_REPO, &running, None).await.unwrap().expect("a status id");

    // The same state again: GitLab answers 400 "Cannot transition status via :run from :running".
    assert_eq!(c.report_check(GITLAB_REPO, &running, Some(id)).await.unwrap(), None, "refusal is delivery");
    let refused: Vec<Seen> = fake.seen().into_iter().filter(|s| s.status == 400).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");

    let done = check(SHA, CheckState::Success, "Ready at https://draft-feature-login.draft.example.com");
    let id2 = c.report_check(GITLAB_REPO, &done, Some(id)).await.unwrap().expect("a status id");
    assert_eq!(id2, id, "the running status is moved on, not replaced");

    let status = fake.gl_status(GITLAB_REPO, SHA, "draftd").expect("a draftd status");
    assert_eq!(status.state, "success");
    assert_eq!(status.target_url.as_deref(), Some("http://127.0.0.1:8080/stands/1/runs/1"));
    assert_eq!(status.description.as_deref(), Some("Ready at https://draft-feature-login.draft.example.com"));
    assert_eq!(status.git_ref, None, "no ref sent: GitLab picks the branch holding the commit");

    // Success again: GitLab keeps the finished status and adds a new one; accepted either way.
    assert!(c.report_check(GITLAB_REPO, &done, Some(id2)).await.is_ok());
    assert_eq!(fake.gl_statuses(GITLAB_REPO, SHA), ["running", "success", "success"]);
    assert_eq!(fake.count("POST", &format!("/statuses/{SHA}")), 4);
    assert_clean(&fake);
}

#[tokio::test]
async fn commit_status_queued_then_running_then_failed_on_one_status() {
    let (fake, c) = gitlab().await;
    let q = c.report_check(GITLAB_REPO, &check(SHA, CheckState::Queued, "Queued"), None).await.unwrap();
    let r = c.report_check(GITLAB_REPO, &check(SHA, CheckState::InProgress, "Deploying"), q).await.unwrap();
    let f = c.report_check(GITLAB_REPO, &check(SHA, CheckState::Failure, "helm failed"), r).await.unwrap();
    assert!(q.is_some() && q == r && r == f, "{q:?} {r:?} {f:?}");
    assert_eq!(fake.gl_statuses(GITLAB_REPO, SHA), ["pending", "running", "failed"]);
    assert_eq!(fake.gl_status_records(GITLAB_REPO, SHA).len(), 1);

    // A long title is cut to 140 characters (GitLab's limit is 255).
    let long = "x".repeat(400);
    c.report_check(GITLAB_REPO, &check(SHA2, CheckState::Cancelled, &long), None).await.unwrap();
    let s = fake.gl_status(GITLAB_REPO, SHA2, "draftd").unwrap();
    assert_eq!(s.state, "canceled");
    assert!(s.description.unwrap().chars().count() <= 140);
    assert_clean(&fake);
}

// ---------------------------------------------------------------------------------------------
// (2) environment
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn environment_is_created_updated_stopped_and_recreated() {
    let (fake, c) = gitlab().await;
    // Nothing to stop yet.
    assert_eq!(c.report_environment(GITLAB_REPO, &env(EnvironmentState::Inactive, None), None).await.unwrap(), None);

    let url1 = "https://draft-feature-login.draft.example.com";
    let first = c
        .report_environment(GITLAB_REPO, &env(EnvironmentState::InProgress, Some(url1)), None)
        .await
        .unwrap()
        .expect("an environment");
    let e = fake.gl_environment(GITLAB_REPO, ENV).expect("created");
    assert_eq!(
        (e.id, e.external_url.as_deref(), e.tier.as_str(), e.state.as_str()),
        (first.id, Some(url1), "development", "available")
    );
    assert_eq!(fake.count("POST", "/environments"), 1);

    // The next report edits it by id, without searching.
    let url2 = "https://login.draft.example.com";
    let lists = fake.count("GET", "/environments");
    let second = c
        .report_environment(GITLAB_REPO, &env(EnvironmentState::Success, Some(url2)), Some(&first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(fake.gl_environment(GITLAB_REPO, ENV).unwrap().external_url.as_deref(), Some(url2));
    assert_eq!(fake.count("GET", "/environments"), lists, "no search when the id is known");
    assert_eq!(fake.count("GET", &format!("/environments/{}", first.id)), 1);
    assert_eq!(fake.count("PUT", &format!("/environments/{}", first.id)), 1);

    // Teardown stops it.
    let stopped =
        c.report_environment(GITLAB_REPO, &env(EnvironmentState::Inactive, None), Some(&second)).await.unwrap();
    assert_eq!(stopped.map(|r| r.id), Some(first.id));
    assert_eq!(fake.gl_environment(GITLAB_REPO, ENV).unwrap().state, "stopped");
    // Stopping again (a retried delivery) changes nothing.
    c.report_environment(GITLAB_REPO, &env(EnvironmentState::Inactive, None), Some(&second)).await.unwrap();
    assert_eq!(fake.gl_environments(GITLAB_REPO).len(), 1);

    // A new life of the stand: the stopped environment is deleted and made again.
    let third = c
        .report_environment(GITLAB_REPO, &env(EnvironmentState::InProgress, Some(url1)), Some(&second))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(third.id, first.id);
    let all = fake.gl_environments(GITLAB_REPO);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!((all[0].id, all[0].state.as_str(), all[0].external_url.as_deref()), (third.id, "available", Some(url1)));
    assert_eq!(fake.count("DELETE", &format!("/environments/{}", first.id)), 1);
    assert_clean(&fake);
}

#[tokio::test]
async fn environment_is_found_by_name_without_an_id_or_when_the_id_is_stale() {
    let (fake, c) = gitlab().await;
    let url = "https://draft-feature-login.draft.example.com";
    let made =
        c.report_environment(GITLAB_REPO, &env(EnvironmentState::InProgress, Some(url)), None).await.unwrap().unwrap();
    // No remembered id: found by name and edited, not created twice.
    let again =
        c.report_environment(GITLAB_REPO, &env(EnvironmentState::Success, Some(url)), None).await.unwrap().unwrap();
    assert_eq!(again.id, made.id);
    assert_eq!(fake.count("POST", "/environments"), 1);
    assert!(fake.seen().iter().any(|s| s.method == "GET" && s.path.contains("name=draft%2Ffeature%2Flogin")));

    // A remembered id that no longer exists (404): found by name instead.
    let stale = EnvironmentRef { id: 424_242, sha: SHA.into() };
    let found =
        c.report_environment(GITLAB_REPO, &env(EnvironmentState::Success, Some(url)), Some(&stale)).await.unwrap();
    assert_eq!(found.map(|r| r.id), Some(made.id));

    // Teardown without an id: found by name and stopped; an environment deleted since: nothing to do.
    let stopped = c.report_environment(GITLAB_REPO, &env(EnvironmentState::Inactive, None), None).await.unwrap();
    assert_eq!(stopped.map(|r| r.id), Some(made.id));
    assert_eq!(fake.gl_environment(GITLAB_REPO, ENV).unwrap().state, "stopped");
    fake.gl_delete_environment(GITLAB_REPO, ENV);
    let gone = EnvironmentRef { id: made.id, sha: SHA.into() };
    assert_eq!(
        c.report_environment(GITLAB_REPO, &env(EnvironmentState::Inactive, None), Some(&gone)).await.unwrap(),
        None
    );

    // No URL yet (a stand still deploying): created without one.
    let bare = c.report_environment(GITLAB_REPO, &env(EnvironmentState::InProgress, None), None).await.unwrap();
    assert!(bare.is_some());
    assert_eq!(fake.gl_environment(GITLAB_REPO, ENV).unwrap().external_url, None);
    assert_clean(&fake);
}

/// `environment` for `branch`, as the reporter asks for it: `draft/<branch>`.
fn env_for(branch: &str, state: EnvironmentState) -> EnvironmentReport {
    EnvironmentReport {
        environment: format!("draft/{branch}"),
        branch: branch.into(),
        url: (state != EnvironmentState::Inactive).then(|| "https://x.draft.example.com".to_owned()),
        ..env(state, None)
    }
}

/// Git allows `+ # @ , ' =`, non-ASCII letters and any length in a branch; GitLab allows environment
/// names of at most 255 ASCII `[a-zA-Z0-9_/${}. -]`. Every branch gets an environment, each its own,
/// named the same every time, and found again to stop it; a name GitLab already accepted is kept.
#[tokio::test]
async fn any_branch_gets_its_own_environment_under_gitlabs_name_rules() {
    let (fake, c) = gitlab().await;
    let long = format!("feature/{}", "long-".repeat(60));
    let branches = [
        "feature/login",
        "feature/a+b",
        "feature/a@b",
        "feature/a#b",
        "feature/a,b",
        "feature/a'b",
        "feature/a=b",
        "feature/café",
        "feature/日本",
        "feature/a-b",
        "trailing/",
        long.as_str(),
    ];
    let mut ids = Vec::new();
    for branch in branches {
        let made = c.report_environment(GITLAB_REPO, &env_for(branch, EnvironmentState::Success), None).await;
        let made = made.unwrap_or_else(|e| panic!("{branch:?}: {e}")).expect("an environment");
        ids.push(made.id);
        // The same branch again: the same environment, found by its name.
        let again = c.report_environment(GITLAB_REPO, &env_for(branch, EnvironmentState::Success), None).await;
        assert_eq!(again.unwrap().map(|r| r.id), Some(made.id), "{branch:?}");
    }
    let all = fake.gl_environments(GITLAB_REPO);
    assert_eq!(all.len(), branches.len(), "one environment per branch: {all:#?}");
    for e in &all {
        assert!(forge_fake::gitlab::valid_environment_name(&e.name), "{:?}", e.name);
        let branch = branches[ids.iter().position(|id| *id == e.id).unwrap()];
        let shown = e.description.as_deref().unwrap_or_default();
        assert!(shown.contains(branch), "the environment shows its branch {branch:?}: {shown:?}");
    }
    // Names GitLab accepted before stay exactly as they were, so existing environments are kept.
    assert!(fake.gl_environment(GITLAB_REPO, "draft/feature/login").is_some());
    assert!(fake.gl_environment(GITLAB_REPO, "draft/feature/a-b").is_some());
    // Teardown finds each by name and stops it, and only it.
    let stopped = c.report_environment(GITLAB_REPO, &env_for("feature/a+b", EnvironmentState::Inactive), None).await;
    assert_eq!(stopped.unwrap().map(|r| r.id), Some(ids[1]));
    let states: Vec<String> = fake.gl_environments(GITLAB_REPO).into_iter().map(|e| e.state).collect();
    assert_eq!(states.iter().filter(|s| **s == "stopped").count(), 1, "{states:?}");
    assert_clean(&fake);
}

// ---------------------------------------------------------------------------------------------
// (3) label
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn draft_tested_label_is_added_then_removed() {
    let (fake, c) = gitlab().await;
    fake.gl_set_labels(GITLAB_REPO, PR, &["backend"]);
    c.set_label(GITLAB_REPO, PR, LABEL, true).await.unwrap();
    assert_eq!(fake.gl_labels(GITLAB_REPO, PR), ["backend", LABEL]);
    assert_eq!(fake.gl_project_labels(GITLAB_REPO), [LABEL], "add_labels creates the label");
    c.set_label(GITLAB_REPO, PR, LABEL, true).await.unwrap();
    assert_eq!(fake.gl_labels(GITLAB_REPO, PR), ["backend", LABEL], "adding twice is one label");

    c.set_label(GITLAB_REPO, PR, LABEL, false).await.unwrap();
    assert_eq!(fake.gl_labels(GITLAB_REPO, PR), ["backend"], "others' labels stay");
    c.set_label(GITLAB_REPO, PR, LABEL, false).await.unwrap();
    assert_eq!(fake.gl_labels(GITLAB_REPO, PR), ["backend"], "removing a missing label is fine");
    assert_eq!(fake.count("PUT", &format!("/merge_requests/{PR}")), 4);
    assert_clean(&fake);
}

/// A call that answers no body draftd reads (label add and remove, environment and deploy token
/// DELETE) keeps GitLab's `Retry-After` like every other call: the error says when to come back,
/// and the client holds its calls until then.
#[tokio::test]
async fn throttled_label_and_delete_calls_keep_retry_after_and_hold_the_client() {
    let throttled = |e: &draftd::forge::client::ForgeError| (e.status(), e.retry_after());
    // Labels: add, then remove.
    for present in [true, false] {
        let (fake, c) = gitlab().await;
        c.set_label(GITLAB_REPO, PR, "warm-up", true).await.unwrap();
        fake.script(&[Mode::RateLimited(7)]);
        let e = c.set_label(GITLAB_REPO, PR, LABEL, present).await.unwrap_err();
        assert_eq!(throttled(&e), (Some(429), Some(Duration::from_secs(7))), "{present}: {e}");
        let held = c.set_label(GITLAB_REPO, PR, LABEL, present).await.unwrap_err();
        assert!(matches!(held, draftd::forge::client::ForgeError::Held { .. }), "{held}");
        assert_eq!(fake.count("PUT", &format!("/merge_requests/{PR}")), 2, "nothing sent while held");
    }

    // Environment DELETE (a stopped environment replaced by a new life of the stand).
    let (fake, c) = gitlab().await;
    let url = Some("https://a.example.com");
    let made = c.report_environment(GITLAB_REPO, &env(EnvironmentState::InProgress, url), None).await.unwrap();
    c.report_environment(GITLAB_REPO, &env(EnvironmentState::Inactive, None), made.as_ref()).await.unwrap();
    // GET by id answers, the DELETE is throttled.
    fake.script(&[Mode::Up, Mode::RateLimited(9)]);
    let e =
        c.report_environment(GITLAB_REPO, &env(EnvironmentState::InProgress, url), made.as_ref()).await.unwrap_err();
    assert_eq!(throttled(&e), (Some(429), Some(Duration::from_secs(9))), "{e}");
    assert_eq!(fake.count("DELETE", &format!("/environments/{}", made.unwrap().id)), 1);
    assert!(c.set_label(GITLAB_REPO, PR, LABEL, true).await.is_err(), "held");

    // Deploy token revocation.
    let (fake, forge) = gitlab().await;
    let AnyForge::Gitlab(client) = forge else { unreachable!() };
    let (id, ..) = client.read_only_token(GITLAB_REPO, "draftd-build-1-1").await.unwrap();
    fake.script(&[Mode::RateLimited(11)]);
    let e = client.revoke_deploy_token(GITLAB_REPO, id).await.unwrap_err();
    assert_eq!(throttled(&e), (Some(429), Some(Duration::from_secs(11))), "{e}");
}

// ---------------------------------------------------------------------------------------------
// (4) permission
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn developer_may_write_reporter_and_strangers_may_not() {
    let (fake, c) = gitlab().await;
    fake.gl_add_member(GITLAB_REPO, 11, "alice", 30);
    fake.gl_add_member(GITLAB_REPO, 12, "bob", 20);
    fake.gl_add_member(GITLAB_REPO, 13, "alice2", 40);
    fake.gl_add_member("acme/other", 14, "carol", 50);

    let p = c.permission(GITLAB_REPO, ForgeUser { login: "alice", id: Some(11) }).await.unwrap();
    assert!(p.write);
    assert_eq!(p.level, "developer (30)");
    let p = c.permission(GITLAB_REPO, ForgeUser { login: "bob", id: Some(12) }).await.unwrap();
    assert!(!p.write);
    assert_eq!(p.level, "reporter (20)");
    let p = c.permission(GITLAB_REPO, ForgeUser { login: "mallory", id: Some(99) }).await.unwrap();
    assert_eq!((p.level.as_str(), p.write), ("none", false));
    let p = c.permission(GITLAB_REPO, ForgeUser { login: "carol", id: Some(14) }).await.unwrap();
    assert!(!p.write, "a member of another project only");

    // Without the id: searched by username, exact match only.
    let p = c.permission(GITLAB_REPO, ForgeUser { login: "alice", id: None }).await.unwrap();
    assert_eq!((p.level.as_str(), p.write), ("developer (30)", true));
    let p = c.permission(GITLAB_REPO, ForgeUser { login: "alice2", id: None }).await.unwrap();
    assert_eq!(p.level, "maintainer (40)");
    let p = c.permission(GITLAB_REPO, ForgeUser { login: "bob", id: None }).await.unwrap();
    assert!(!p.write);
    let p = c.permission(GITLAB_REPO, ForgeUser { login: "ali", id: None }).await.unwrap();
    assert_eq!((p.level.as_str(), p.write), ("none", false), "a partial match is nobody");
    assert!(
        fake.seen().iter().any(|s| s.path.ends_with("/members/all?query=ali&per_page=100&page=1")),
        "{:?}",
        fake.seen()
    );
    assert_eq!(fake.count("GET", "/members/all/11"), 1);
    assert_clean(&fake);
}

// ---------------------------------------------------------------------------------------------
// (5) through the reporter
// ---------------------------------------------------------------------------------------------

fn out_check(state: CheckState, title: &str) -> Outbound {
    Outbound::Check(CheckPayload {
        forge: ForgeKind::Gitlab,
        repo: GITLAB_REPO.into(),
        check: check(SHA, state, title),
    })
}

fn out_env(state: EnvironmentState, url: Option<&str>) -> Outbound {
    Outbound::Environment(EnvironmentPayload {
        forge: ForgeKind::Gitlab,
        repo: GITLAB_REPO.into(),
        env: env(state, url),
    })
}

fn out_label(present: bool) -> Outbound {
    Outbound::Label(LabelPayload {
        forge: ForgeKind::Gitlab,
        repo: GITLAB_REPO.into(),
        number: PR,
        label: LABEL.into(),
        present,
    })
}

fn out_comment(stand_id: StandId, text: &str) -> Outbound {
    Outbound::Comment(CommentPayload {
        forge: ForgeKind::Gitlab,
        repo: GITLAB_REPO.into(),
        number: PR,
        marker: marker(stand_id),
        body: format!("{}\n{text}", marker(stand_id)),
    })
}

async fn outbox_rows(pool: &PgPool, stand_id: StandId) -> Vec<(String, String, Option<String>, Value)> {
    sqlx::query_as("select kind, state, last_error, payload from outbox where stand_id = $1 order by outbox_id")
        .bind(stand_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn reporter_delivers_the_newest_check_environment_comment_and_label(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Gitlab).await;
    let r = reporter(&pool, &fake, ForgeKind::Gitlab);
    let stand_id = stand(&pool, "feature/login").await;
    let url = "https://draft-feature-login.draft.example.com";
    let first = [
        out_check(CheckState::InProgress, "Deploying"),
        out_env(EnvironmentState::InProgress, None),
        out_comment(StandId::new(stand_id), "deploying"),
        out_check(CheckState::Success, "Ready"),
        out_env(EnvironmentState::Success, Some(url)),
        out_comment(StandId::new(stand_id), "ready"),
        out_label(true),
    ];
    for out in &first {
        enqueue_out(&pool, StandId::new(stand_id), None, out).await.unwrap();
    }
    drain(&r, &pool, StandId::new(stand_id), Duration::from_secs(5)).await;

    let status = fake.gl_status(GITLAB_REPO, SHA, "draftd").expect("status");
    assert_eq!(status.state, "success");
    assert_eq!(fake.gl_statuses(GITLAB_REPO, SHA), ["success"], "the superseded running state is skipped");
    assert_eq!(status.target_url.as_deref(), Some("http://127.0.0.1:8080/stands/1/runs/1"));
    let e = fake.gl_environment(GITLAB_REPO, ENV).expect("environment");
    assert_eq!((e.state.as_str(), e.external_url.as_deref()), ("available", Some(url)));
    let notes = fake.marked(GITLAB_REPO, PR, &marker(StandId::new(stand_id)));
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].body.ends_with("\nready"));
    assert_eq!(fake.gl_labels(GITLAB_REPO, PR), [LABEL]);
    let rows = outbox_rows(&pool, StandId::new(stand_id)).await;
    let states: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        states,
        ["superseded", "superseded", "superseded", "delivered", "delivered", "delivered", "delivered"],
        "{rows:?}"
    );
    assert_eq!(rows[4].3["receipt"]["id"], json!(e.id), "the environment id is remembered");
    assert_eq!(rows[3].3["check_id"], json!(status.id), "the status id is remembered");

    // Teardown: stopped by the remembered id, label removed, the note edited in place.
    let second = [
        out_check(CheckState::Cancelled, "Removed"),
        out_env(EnvironmentState::Inactive, None),
        out_comment(StandId::new(stand_id), "removed"),
        out_label(false),
    ];
    for out in &second {
        enqueue_out(&pool, StandId::new(stand_id), None, out).await.unwrap();
    }
    let searches = fake.count("GET", "/environments");
    drain(&r, &pool, StandId::new(stand_id), Duration::from_secs(5)).await;
    // A finished status is not changed again: GitLab adds a new one for the same commit.
    assert_eq!(fake.gl_status(GITLAB_REPO, SHA, "draftd").unwrap().state, "canceled");
    assert_eq!(fake.gl_environment(GITLAB_REPO, ENV).unwrap().state, "stopped");
    assert_eq!(fake.count("GET", "/environments"), searches, "stopped by id, without a search");
    assert_eq!(fake.count("POST", &format!("/environments/{}/stop", e.id)), 1);
    assert!(fake.gl_labels(GITLAB_REPO, PR).is_empty());
    let notes = fake.marked(GITLAB_REPO, PR, &marker(StandId::new(stand_id)));
    assert_eq!((notes.len(), notes[0].id), (1, e_note_id(&rows)));
    assert!(notes[0].body.ends_with("\nremoved"));
    let rows = outbox_rows(&pool, StandId::new(stand_id)).await;
    assert!(rows[7..].iter().all(|r| r.1 == "delivered" && r.2.is_none()), "{rows:?}");
    assert_eq!(fake.count("POST", &format!("/merge_requests/{PR}/notes")), 1, "one note, edited");
    assert_clean(&fake);
}

/// The note id the first comment delivery remembered.
fn e_note_id(rows: &[(String, String, Option<String>, Value)]) -> u64 {
    rows.iter().find(|r| r.0 == "comment" && r.1 == "delivered").and_then(|r| r.3["comment_id"].as_u64()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// (6) the forge authoriser
// ---------------------------------------------------------------------------------------------

fn config(fake: &Fake) -> Config {
    Config::from_toml(&format!(
        r#"
[gitlab]
url = "{}"

[[projects]]
name = "shop"
forge = "gitlab"
repo = "{GITLAB_REPO}"
webhook_secret_env = "GL_SECRET"
"#,
        fake.url()
    ))
    .expect("config")
}

async fn audit(pool: &PgPool, run_id: RunId) -> Vec<(String, String, Value)> {
    sqlx::query_as("select actor, action, detail from audit where run_id = $1 order by audit_id")
        .bind(run_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn authoriser_refuses_a_reporter_with_a_reply_and_lets_a_developer_through(pool: PgPool) {
    let (fake, c) = gitlab().await;
    fake.gl_add_member(GITLAB_REPO, 12, "bob", 20);
    fake.gl_add_member(GITLAB_REPO, 11, "alice", 30);
    let auth = ForgeAuthoriser::with_clients(pool.clone(), &config(&fake), vec![(ForgeKind::Gitlab, c)]);
    let stand_id = stand(&pool, "feature/login").await;

    // Bob (Reporter) asks for a rerun: refused, audited, answered.
    let run =
        command_run(&pool, StandId::new(stand_id), "deploy", "command", "bob", SHA, json!({ "author_id": 12 })).await;
    assert!(needs_check(&run));
    let verdict = auth.authorise(&run).await.unwrap();
    let Verdict::Denied { reason } = verdict else { panic!("bob was let through: {verdict:?}") };
    assert!(reason.contains("reporter (20)") && reason.contains(GITLAB_REPO), "{reason}");
    let rows = audit(&pool, run.run_id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("gitlab:bob", "command.denied"));
    assert_eq!(rows[0].2["permission"], "reporter (20)");
    assert_eq!(rows[0].2["repo"], GITLAB_REPO);
    assert_eq!(fake.count("GET", "/members/all/12"), 1, "looked up by the webhook's user id");

    let outbox: Vec<(String, String, Option<RunId>, Value)> =
        sqlx::query_as("select kind, state, run_id, payload from outbox where stand_id = $1")
            .bind(stand_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(
        (outbox[0].0.as_str(), outbox[0].1.as_str(), outbox[0].2),
        (OutboxKind::Reply.as_str(), "pending", Some(run.run_id))
    );
    assert_eq!(outbox[0].3["number"], json!(PR));

    let r = reporter(&pool, &fake, ForgeKind::Gitlab);
    drain(&r, &pool, StandId::new(stand_id), Duration::from_secs(5)).await;
    let notes = fake.comments(GITLAB_REPO, PR);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].body.starts_with("@bob "), "{}", notes[0].body);
    assert!(notes[0].body.contains("`/draft rerun`") && notes[0].body.contains("reporter (20)"), "{}", notes[0].body);
    let state: String = sqlx::query_scalar("select state from outbox where stand_id = $1")
        .bind(stand_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "delivered");

    // Alice (Developer) asks for a destroy: allowed, audited, no reply; the stand starts closing.
    let run2 =
        command_run(&pool, StandId::new(stand_id), "teardown", "command", "alice", SHA, json!({ "author_id": 11 }))
            .await;
    assert_eq!(auth.authorise(&run2).await.unwrap(), Verdict::Allowed);
    let rows = audit(&pool, run2.run_id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("gitlab:alice", "command.allowed"));
    assert_eq!(rows[0].2["permission"], "developer (30)");
    let pending: i64 = sqlx::query_scalar("select count(*) from outbox where stand_id = $1 and state = 'pending'")
        .bind(stand_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 0, "no reply for an allowed command");
    let stand_state: String = sqlx::query_scalar("select state from stands where stand_id = $1")
        .bind(stand_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stand_state, "closing");

    // Resumed by another worker: allowed from the audit, without asking GitLab again.
    let asked = fake.count("GET", "/members/all/11");
    assert_eq!(auth.authorise(&run2).await.unwrap(), Verdict::Allowed);
    assert_eq!(fake.count("GET", "/members/all/11"), asked);
    assert_eq!(audit(&pool, run2.run_id).await.len(), 1);
    assert_clean(&fake);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn authoriser_finds_a_requester_by_username_when_the_webhook_gave_no_id(pool: PgPool) {
    let (fake, c) = gitlab().await;
    fake.gl_add_member(GITLAB_REPO, 11, "alice", 30);
    let auth = ForgeAuthoriser::with_clients(pool.clone(), &config(&fake), vec![(ForgeKind::Gitlab, c)]);
    let stand_id = stand(&pool, "feature/login").await;
    let mut run =
        command_run(&pool, StandId::new(stand_id), "extend", "command", "alice", SHA, json!({ "author_id": 11 })).await;
    run.params = json!({});
    assert_eq!(auth.authorise(&run).await.unwrap(), Verdict::Allowed);
    assert_eq!(fake.count("GET", "/members/all"), 1);
    assert_eq!(fake.count("GET", "/members/all/11"), 0);
    assert_eq!(audit(&pool, run.run_id).await[0].1, "command.allowed");
    assert_clean(&fake);
}

// ---------------------------------------------------------------------------------------------
// The fake refuses what GitLab refuses (so the tests above prove something)
// ---------------------------------------------------------------------------------------------

async fn raw(fake: &Fake, method: reqwest::Method, path: &str, form: &str) -> (u16, Value) {
    let project = GITLAB_REPO.replace('/', "%2F");
    let url = format!("{}/api/v4/projects/{project}/{path}", fake.url());
    let mut req = reqwest::Client::new().request(method, url).header("PRIVATE-TOKEN", TOKEN);
    if !form.is_empty() {
        req = req.header("content-type", "application/x-www-form-urlencoded").body(form.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_fake_answers_as_gitlab_does_to_what_draftd_must_not_send() {
    use reqwest::Method;
    let (fake, c) = gitlab().await;
    let made = c
        .report_environment(GITLAB_REPO, &env(EnvironmentState::InProgress, Some("https://a.example.com")), None)
        .await
        .unwrap()
        .unwrap();
    assert_clean(&fake);

    // An available environment cannot be deleted; a stopped one can.
    let (status, body) = raw(&fake, Method::DELETE, &format!("environments/{}", made.id), "").await;
    assert_eq!((status, body), (403, json!({"message": "403 Forbidden"})));
    // Names cannot be changed, and a second environment of one name cannot be made.
    let (status, _) = raw(&fake, Method::PUT, &format!("environments/{}", made.id), "name=draft%2Fother").await;
    assert_eq!(status, 400);
    let (status, body) = raw(&fake, Method::POST, "environments", "name=draft%2Ffeature%2Flogin").await;
    assert_eq!((status, body), (400, json!({"message": {"name": ["has already been taken"]}})));
    // Commit statuses: GitHub's state names are not GitLab's; undocumented fields are refused.
    let (status, _) = raw(&fake, Method::POST, &format!("statuses/{SHA}"), "state=failure").await;
    assert_eq!(status, 400);
    let (status, _) = raw(&fake, Method::POST, &format!("statuses/{SHA}"), "state=running&context=x&summary=y").await;
    assert_eq!(status, 400);
    let (status, _) =
        raw(&fake, Method::POST, &format!("statuses/{SHA}"), &format!("state=running&description={}", "d".repeat(256)))
            .await;
    assert_eq!(status, 400);
    // A pending status cannot be enqueued again.
    assert_eq!(raw(&fake, Method::POST, &format!("statuses/{SHA}"), "state=pending&name=other").await.0, 201);
    let (status, body) = raw(&fake, Method::POST, &format!("statuses/{SHA}"), "state=pending&name=other").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["message"],
        "Cannot transition status via :enqueue from :pending (Reason(s): Status cannot transition via \"enqueue\")"
    );
    // MR update: labels only, at least one attribute.
    let (status, _) = raw(&fake, Method::PUT, &format!("merge_requests/{PR}"), "labels=a").await;
    assert_eq!(status, 400);
    let (status, _) = raw(&fake, Method::PUT, &format!("merge_requests/{PR}"), "").await;
    assert_eq!(status, 400);
    let (status, body) = raw(&fake, Method::PUT, &format!("merge_requests/{PR}"), "add_labels=a%2Cb").await;
    assert_eq!((status, body["labels"].clone(), body["iid"].clone()), (200, json!(["a", "b"]), json!(PR)));

    let violations = fake.violations();
    assert_eq!(violations.len(), 6, "the 403 and the taken name are GitLab rules, not mistakes: {violations:#?}");
}

/// A build of a private GitLab project fetches it with a deploy token that can only read the
/// repository and expires within the hour, revoked once the build is over.
#[tokio::test]
async fn a_build_gets_a_deploy_token_that_can_only_read_the_repository_for_an_hour() {
    let (fake, forge) = gitlab().await;
    let AnyForge::Gitlab(client) = forge else { unreachable!() };
    let (id, user, token, expires) = client.read_only_token(GITLAB_REPO, "draftd-build-1-1").await.unwrap();
    use secrecy::ExposeSecret as _;
    let made = fake.gl_deploy_tokens(GITLAB_REPO);
    assert_eq!(made.len(), 1);
    assert_eq!(
        (made[0].id, made[0].username.as_str(), made[0].token.as_str()),
        (id, user.as_str(), token.expose_secret())
    );
    assert_eq!(made[0].scopes, ["read_repository"]);
    let left = made[0].expires_at.unwrap() - chrono::Utc::now();
    assert!(left > chrono::Duration::minutes(58) && left <= chrono::Duration::hours(1), "{left}");
    assert!(expires <= chrono::Utc::now() + chrono::Duration::hours(1));
    client.revoke_deploy_token(GITLAB_REPO, id).await.unwrap();
    assert!(fake.gl_deploy_tokens(GITLAB_REPO)[0].revoked);
    // Revoking again (a retried step) is not an error.
    client.revoke_deploy_token(GITLAB_REPO, id).await.unwrap();
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}
