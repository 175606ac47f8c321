//! `POST /webhooks/gitlab` against a real Postgres with recorded payloads.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::support::{self, *};

const T1: &str = "2013-12-03T17:23:34Z";
const T2: &str = "2013-12-03T17:25:00Z";
const T3: &str = "2013-12-03 17:30:00 UTC";

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// An MR update carrying new commits.
fn push(branch: &str, sha: &str, at: &str) -> Value {
    let mut v = gitlab_mr("update", branch, sha, at);
    v["object_attributes"]["oldrev"] = support::sha(999).into();
    v.as_object_mut().unwrap().remove("changes");
    v
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn opened_merge_request_queues_a_deploy_run(pool: PgPool) {
    let app = app(pool.clone());
    let res = gitlab(&app, "Merge Request Hook", &gitlab_mr("open", "feature/viewport", &sha(1), T1)).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let s = stand(&pool, "gitlab-test", "feature/viewport").await.unwrap();
    assert_eq!((s.namespace.as_str(), s.pr_number), ("draft-feature-viewport", Some(1)));
    let runs = runs(&pool).await;
    assert_eq!(
        (runs[0].kind.as_str(), runs[0].trigger.as_str(), runs[0].sha.clone()),
        ("deploy", "opened", Some(sha(1)))
    );
    // As recorded, the MR's branch is outside the globs.
    let as_is = gitlab(&app, "Merge Request Hook", &fixture("gitlab/merge_request.open.json")).await;
    assert!(as_is.body["ignored"].as_str().unwrap().contains("ms-viewport"));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn tokens_are_checked(pool: PgPool) {
    let app = app(pool.clone());
    let b = body(&gitlab_mr("open", "feature/viewport", &sha(1), T1));
    let cases: [(&[(&str, &str)], StatusCode); 4] = [
        (&[], StatusCode::UNAUTHORIZED),
        (&[("x-gitlab-token", "wrong")], StatusCode::UNAUTHORIZED),
        (&[("x-gitlab-token", "gl-test-secret-8d2b7c4")], StatusCode::UNAUTHORIZED),
        (&[("x-gitlab-token", GITLAB_SECRET)], StatusCode::ACCEPTED),
    ];
    for (headers, expected) in cases {
        let res = gitlab_raw(&app, "Merge Request Hook", headers, b.clone()).await;
        assert_eq!(res.status, expected, "{headers:?}: {}", res.body);
    }
    assert_eq!(count(&pool, "deliveries").await, 1);
}

/// GitLab sends a new `X-Gitlab-Event-UUID` with every request, retries and manual resends
/// included; `Idempotency-Key` (GitLab 17.4+) is what a resend keeps. Without it, a resend is
/// known by its bytes.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn resends_are_deduplicated_by_idempotency_key_else_by_body_whatever_the_event_uuid(pool: PgPool) {
    let app = app(pool.clone());
    let tok = ("x-gitlab-token", GITLAB_SECRET);
    // Resends keep the Idempotency-Key; the event UUID is new each time.
    let b = body(&gitlab_mr("open", "feature/a", &sha(1), T1));
    let mut answers = Vec::new();
    for uuid in ["u-1", "u-2", "u-3"] {
        let headers = [tok, ("idempotency-key", "key-1"), ("x-gitlab-event-uuid", uuid)];
        answers.push(gitlab_raw(&app, "Merge Request Hook", &headers, b.clone()).await);
    }
    let statuses: Vec<StatusCode> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [StatusCode::ACCEPTED, StatusCode::OK, StatusCode::OK]);
    assert_eq!(answers[0].body["delivery"], json!("key-1"));

    // An older GitLab sends no key: a resend is the same bytes under a new event UUID.
    let b = body(&gitlab_mr("open", "feature/b", &sha(2), T1));
    let first = gitlab_raw(&app, "Merge Request Hook", &[tok, ("x-gitlab-event-uuid", "uuid-b1")], b.clone()).await;
    let resent = gitlab_raw(&app, "Merge Request Hook", &[tok, ("x-gitlab-event-uuid", "uuid-b2")], b.clone()).await;
    assert_eq!((first.status, resent.status), (StatusCode::ACCEPTED, StatusCode::OK), "{}", resent.body);
    assert_eq!(first.body, resent.body);
    assert_eq!(first.body["delivery"], json!(format!("sha256:{}", hex::encode(Sha256::digest(&b)))));

    // The event UUID names no delivery: two events that happen to carry the same one are two.
    let c1 = body(&gitlab_mr("open", "feature/c", &sha(3), T1));
    let c2 = body(&push("feature/c", &sha(4), T2));
    let one = gitlab_raw(&app, "Merge Request Hook", &[tok, ("x-gitlab-event-uuid", "same")], c1).await;
    let two = gitlab_raw(&app, "Merge Request Hook", &[tok, ("x-gitlab-event-uuid", "same")], c2).await;
    assert_eq!((one.status, two.status), (StatusCode::ACCEPTED, StatusCode::ACCEPTED), "{}", two.body);
    assert!(two.body["run"].is_i64(), "{}", two.body);

    assert_eq!(count(&pool, "deliveries").await, 4);
    assert_eq!(count(&pool, "runs").await, 4);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn updates_deploy_only_with_new_commits_and_the_newest_wins(pool: PgPool) {
    let app = app(pool.clone());
    gitlab(&app, "Merge Request Hook", &gitlab_mr("open", "feature/a", &sha(1), T1)).await;
    let mut no_commits = gitlab_mr("update", "feature/a", &sha(1), T2);
    no_commits.as_object_mut().unwrap().remove("changes");
    let res = gitlab(&app, "Merge Request Hook", &no_commits).await;
    assert_eq!(res.body["ignored"], json!("merge request update without new commits"));

    // Newer push (older-style timestamp) first, then an older one.
    let newer = gitlab(&app, "Merge Request Hook", &push("feature/a", &sha(3), T3)).await;
    assert!(newer.body["run"].is_i64(), "{}", newer.body);
    let older = gitlab(&app, "Merge Request Hook", &push("feature/a", &sha(2), T2)).await;
    assert_eq!(older.body["run"], Value::Null);
    assert_eq!(stand(&pool, "gitlab-test", "feature/a").await.unwrap().head_sha, Some(sha(3)));
    let triggers: Vec<_> = runs(&pool).await.into_iter().map(|r| r.trigger).collect();
    assert_eq!(triggers, vec!["opened", "pushed"]);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn recorded_update_with_oldrev_deploys(pool: PgPool) {
    let app = app(pool.clone());
    let res = gitlab(&app, "Merge Request Hook", &fixture("gitlab/merge_request.update.json")).await;
    assert!(res.body["run"].is_i64(), "{}", res.body);
    let s = stand(&pool, "woodpecker", "next-feature").await.unwrap();
    assert_eq!(s.head_sha.as_deref(), Some("0ab96a10266b95b4b533dcfd98738015fbe70889"));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn close_and_merge_tear_down_and_late_updates_stay_out(pool: PgPool) {
    let app = app(pool.clone());
    for (branch, action) in [("feature/closed", "close"), ("feature/merged", "merge")] {
        gitlab(&app, "Merge Request Hook", &gitlab_mr("open", branch, &sha(1), T1)).await;
        let res = gitlab(&app, "Merge Request Hook", &gitlab_mr(action, branch, &sha(1), T2)).await;
        assert!(res.body["run"].is_i64());
        assert_eq!(stand(&pool, "gitlab-test", branch).await.unwrap().state, "closing");
        let late = gitlab(&app, "Merge Request Hook", &push(branch, &sha(2), T3)).await;
        assert_eq!(late.body["run"], Value::Null, "{}", late.body);
    }
    let reopened =
        gitlab(&app, "Merge Request Hook", &gitlab_mr("reopen", "feature/closed", &sha(2), "2013-12-04T00:00:00Z"))
            .await;
    assert!(reopened.body["run"].is_i64());
    let kinds: Vec<_> = runs(&pool).await.into_iter().map(|r| format!("{}:{}", r.kind, r.trigger)).collect();
    assert_eq!(kinds, vec!["deploy:opened", "teardown:closed", "deploy:opened", "teardown:merged", "deploy:reopened"]);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn forks_and_drafts_are_recorded_but_ignored(pool: PgPool) {
    let app = app(pool.clone());
    let mut fork = gitlab_mr("open", "feature/a", &sha(1), T1);
    fork["object_attributes"]["source_project_id"] = 4242.into();
    assert_eq!(gitlab(&app, "Merge Request Hook", &fork).await.body["ignored"], json!("fork"));
    let mut draft = gitlab_mr("open", "feature/b", &sha(2), T1);
    draft["object_attributes"]["draft"] = true.into();
    assert_eq!(gitlab(&app, "Merge Request Hook", &draft).await.body["ignored"], json!("draft"));
    assert_eq!(count(&pool, "runs").await, 0);
    assert_eq!(count(&pool, "deliveries").await, 2);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn draft_commands_in_merge_request_notes(pool: PgPool) {
    let app = app(pool.clone());
    let mut open = gitlab_mr("open", "feature/notes", &sha(1), T1);
    open["project"]["path_with_namespace"] = "gitlab-org/gitlab-test".into();
    gitlab(&app, "Merge Request Hook", &open).await;

    let mut note = fixture("gitlab/note.merge_request.json");
    let as_is = gitlab(&app, "Note Hook", &note).await;
    assert_eq!(as_is.body["ignored"], json!("comment is not a /draft command"));
    note["merge_request"]["source_branch"] = "feature/notes".into();
    note["object_attributes"]["note"] = "/draft rerun".into();
    let res = gitlab(&app, "Note Hook", &note).await;
    assert!(res.body["run"].is_i64(), "{}", res.body);
    let runs = runs(&pool).await;
    assert_eq!(runs[1].requested_by.as_deref(), Some("root"));
    assert_eq!(runs[1].sha, Some(sha(1)));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn bad_requests_are_refused(pool: PgPool) {
    let app = app(pool.clone());
    let tok = ("x-gitlab-token", GITLAB_SECRET);
    let mut unknown = gitlab_mr("open", "feature/a", &sha(1), T1);
    unknown["project"]["path_with_namespace"] = "nobody/nothing".into();
    assert_eq!(gitlab(&app, "Merge Request Hook", &unknown).await.status, StatusCode::NOT_FOUND);
    let res = gitlab_raw(&app, "Merge Request Hook", &[tok], b"not json".to_vec()).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    // Verified by the project's token, but not the shape draftd knows: GitLab would send it again
    // and again, and switch the hook off after four refusals. Recorded and ignored, saying why.
    let mut no_sha = gitlab_mr("open", "feature/a", &sha(1), T1);
    no_sha["object_attributes"]["last_commit"] = json!({});
    let res = gitlab(&app, "Merge Request Hook", &no_sha).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let ignored = res.body["ignored"].as_str().unwrap();
    assert!(ignored.contains("object_attributes.last_commit"), "{ignored}");
    let res = send(
        &app,
        axum::http::Request::post("/webhooks/gitlab")
            .header("content-type", "text/xml")
            .header("x-gitlab-event", "Merge Request Hook")
            .header("x-gitlab-token", GITLAB_SECRET)
            .body(axum::body::Body::from("<xml/>"))
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = gitlab_raw(&app, "Merge Request Hook", &[tok], vec![b' '; 25 * 1024 * 1024 + 1]).await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    let res = gitlab(&app, "Push Hook", &fixture("gitlab/push.json")).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "mike/diaspora is not configured");
    let mut pushed = fixture("gitlab/push.json");
    pushed["project"]["path_with_namespace"] = "gitlabhq/gitlab-test".into();
    let res = gitlab(&app, "Push Hook", &pushed).await;
    assert_eq!(res.status, StatusCode::ACCEPTED);
    assert!(res.body["ignored"].as_str().unwrap().contains("Push Hook"));
    assert_eq!(count(&pool, "deliveries").await, 2);
    assert_eq!(count(&pool, "runs").await, 0);
}

/// The group-wide token in `[gitlab] webhook_secret_env`.
const GROUP_SECRET: &str = "gl-group-secret-3e91a7d0";

/// A group webhook sends every project's events, and group events that name no project. What the
/// group's token verifies is answered 202, never 4xx: GitLab switches a hook off after four failed
/// deliveries in a row, 4xx included, and then draftd's own projects' events stop too. What no
/// token verifies is still refused.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_group_hook_is_never_refused_what_its_token_verifies(pool: PgPool) {
    let config = draftd::config::Config::from_toml(
        r#"
        [gitlab]
        webhook_secret_env = "GROUP_SECRET"
        [[projects]]
        name = "gitlab-test"
        forge = "gitlab"
        repo = "gitlabhq/gitlab-test"
        [[projects]]
        name = "own-token"
        forge = "gitlab"
        repo = "test/woodpecker"
        webhook_secret_env = "GL_SECRET"
        branches = ["feature/**"]
        "#,
    )
    .unwrap();
    let projects = draftd::config::Projects::resolve_with(&config, |var| match var {
        "GROUP_SECRET" => Some(GROUP_SECRET.into()),
        "GL_SECRET" => Some(GITLAB_SECRET.into()),
        _ => None,
    })
    .unwrap();
    let state = draftd::http::AppState::new(&config, projects, pool.clone());
    state.set_migrated();
    let app = draftd::http::router(state);
    let group = ("x-gitlab-token", GROUP_SECRET);
    let own = ("x-gitlab-token", GITLAB_SECRET);

    // Another project of the group.
    let mut elsewhere = gitlab_mr("open", "feature/a", &sha(1), T1);
    elsewhere["project"]["path_with_namespace"] = "acme/not-served".into();
    let res = gitlab_raw(&app, "Merge Request Hook", &[group], body(&elsewhere)).await;
    assert_eq!((res.status, res.body["ignored"].clone()), (StatusCode::ACCEPTED, json!("unknown_project")));
    assert!(res.body["delivery"].is_string(), "{}", res.body);
    // A group event with no project (subgroups, members).
    let mut no_project = gitlab_mr("open", "feature/a", &sha(1), T1);
    no_project.as_object_mut().unwrap().remove("project");
    let res = gitlab_raw(&app, "Subgroup Hook", &[group], body(&no_project)).await;
    assert_eq!((res.status, res.body["ignored"].clone()), (StatusCode::ACCEPTED, json!("no_project")));
    // A body that is not JSON, or not declared as JSON.
    let res = gitlab_raw(&app, "Merge Request Hook", &[group], b"{\"object_kind\": ".to_vec()).await;
    assert_eq!((res.status, res.body["ignored"].clone()), (StatusCode::ACCEPTED, json!("unreadable_payload")));
    let res = send(
        &app,
        axum::http::Request::post("/webhooks/gitlab")
            .header("content-type", "text/plain")
            .header("x-gitlab-event", "Merge Request Hook")
            .header("x-gitlab-token", GROUP_SECRET)
            .body(axum::body::Body::from(body(&elsewhere)))
            .unwrap(),
    )
    .await;
    assert_eq!((res.status, res.body["ignored"].clone()), (StatusCode::ACCEPTED, json!("unsupported_content_type")));
    // A served project's event of a shape draftd does not know: recorded, and ignored.
    let mut odd = gitlab_mr("open", "feature/a", &sha(1), T1);
    odd["object_attributes"]["updated_at"] = json!(12);
    let res = gitlab_raw(&app, "Merge Request Hook", &[group], body(&odd)).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    assert!(res.body["ignored"].as_str().unwrap().contains("object_attributes.updated_at"), "{}", res.body);
    // The group's token serves its projects as before.
    let res =
        gitlab_raw(&app, "Merge Request Hook", &[group], body(&gitlab_mr("open", "feature/b", &sha(2), T1))).await;
    assert!(res.body["run"].is_i64(), "{}", res.body);

    // What nothing verifies is refused: a wrong token, a project's token for another project.
    let res = gitlab_raw(&app, "Merge Request Hook", &[("x-gitlab-token", "nope")], body(&elsewhere)).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{}", res.body);
    let res = gitlab_raw(&app, "Merge Request Hook", &[own], body(&elsewhere)).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{}", res.body);
    let mut woodpecker = gitlab_mr("open", "feature/c", &sha(3), T1);
    woodpecker["project"]["path_with_namespace"] = "test/woodpecker".into();
    let res = gitlab_raw(&app, "Merge Request Hook", &[("x-gitlab-token", "nope")], body(&woodpecker)).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{}", res.body);
    let res = gitlab_raw(&app, "Merge Request Hook", &[own], b"not json".to_vec()).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.body);
    let res = gitlab_raw(&app, "Merge Request Hook", &[own], body(&woodpecker)).await;
    assert!(res.body["run"].is_i64(), "a project's own token still works: {}", res.body);

    // Only served projects' deliveries are recorded.
    assert_eq!(count(&pool, "deliveries").await, 3);
}
