//! `POST /webhooks/github` against a real Postgres (a fresh database per test) with recorded payloads.

use axum::http::StatusCode;
use draftd::stand::Namespace;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::*;

const T1: &str = "2019-05-15T15:20:33Z";
const T2: &str = "2019-05-15T15:20:40Z";
const T3: &str = "2019-05-15T15:21:18Z";

fn delivery() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn opened_pull_request_records_delivery_stand_and_queued_run(pool: PgPool) {
    let app = app(pool.clone());
    let id = delivery();
    let res = github(&app, "pull_request", &id, &github_pr("opened", "feature/login", &sha(1), T1)).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    assert_eq!(res.body["delivery"], json!(id));
    let stand = stand(&pool, "hello-world", "feature/login").await.unwrap();
    assert_eq!(res.body["stand"], json!(stand.stand_id));
    assert_eq!(stand.namespace, "draft-feature-login");
    assert_eq!(stand.state, "active");
    assert_eq!(stand.pr_number, Some(2));
    let runs = runs(&pool).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(res.body["run"], json!(runs[0].run_id));
    let r = &runs[0];
    assert_eq!((r.kind.as_str(), r.trigger.as_str(), r.state.as_str(), r.number), ("deploy", "opened", "queued", 1));
    assert_eq!(r.sha.as_deref(), Some(sha(1).as_str()));
    assert!(r.automatic);
    let (outcome, event): (String, String) =
        sqlx::query_as("select outcome, event from deliveries where delivery_id = $1")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((outcome.as_str(), event.as_str()), ("queued", "pull_request"));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn ping_answers_200_and_records_nothing(pool: PgPool) {
    let app = app(pool.clone());
    let mut ping = fixture("github/ping.json");
    ping["repository"]["full_name"] = "Codertocat/Hello-World".into();
    let res = github(&app, "ping", &delivery(), &ping).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["pong"], json!(true));
    assert_eq!(count(&pool, "deliveries").await, 0);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn signatures_must_match_the_raw_body(pool: PgPool) {
    let app = app(pool.clone());
    let body = serde_json::to_vec(&github_pr("opened", "feature/login", &sha(1), T1)).unwrap();
    let good = sign(GITHUB_SECRET, &body);
    let wrong_secret = sign("not-the-secret", &body);
    let sha1_style = format!("sha1={}", &good[7..47]);
    let bad: [(&str, Option<&str>); 6] = [
        ("wrong secret", Some(&wrong_secret)),
        ("missing", None),
        ("not hex", Some("sha256=zzzz")),
        ("no prefix", Some(&good[7..])),
        ("sha1", Some(&sha1_style)),
        ("truncated", Some(&good[..good.len() - 2])),
    ];
    for (what, sig) in bad {
        let res = github_raw(&app, "pull_request", &delivery(), body.clone(), sig, "application/json").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{what}: {}", res.body);
        assert_eq!(res.body["error"]["code"], json!("unauthorized"));
    }
    // A valid-looking signature over the original body does not cover a tampered one.
    let mut tampered = github_pr("opened", "feature/login", &sha(1), T1);
    tampered["pull_request"]["head"]["sha"] = sha(666).into();
    let res = github_raw(
        &app,
        "pull_request",
        &delivery(),
        serde_json::to_vec(&tampered).unwrap(),
        Some(&good),
        "application/json",
    )
    .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(count(&pool, "deliveries").await, 0);
    assert_eq!(count(&pool, "stands").await, 0);

    let res = github_raw(&app, "pull_request", &delivery(), body, Some(&good), "application/json").await;
    assert_eq!(res.status, StatusCode::ACCEPTED);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn bad_requests_get_clear_json_errors_and_verified_odd_shapes_are_recorded(pool: PgPool) {
    let app = app(pool.clone());
    let body = serde_json::to_vec(&github_pr("opened", "feature/login", &sha(1), T1)).unwrap();
    let sig = sign(GITHUB_SECRET, &body);

    let res = github_raw(&app, "pull_request", &delivery(), body.clone(), Some(&sig), "text/plain").await;
    assert_eq!(res.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res =
        github_raw(&app, "pull_request", &delivery(), body.clone(), Some(&sig), "application/x-www-form-urlencoded")
            .await;
    assert_eq!(res.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(res.body["error"]["message"].as_str().unwrap().contains("application/json"));
    let res =
        github_raw(&app, "pull_request", &delivery(), body.clone(), Some(&sig), "application/json; charset=utf-8")
            .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "charset parameter is fine: {}", res.body);

    let not_json = b"{\"action\": ".to_vec();
    let res = github_raw(
        &app,
        "pull_request",
        &delivery(),
        not_json.clone(),
        Some(&sign(GITHUB_SECRET, &not_json)),
        "application/json",
    )
    .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);

    let mut shapeless = github_pr("opened", "feature/login", &sha(2), T1);
    shapeless["pull_request"]["head"].as_object_mut().unwrap().remove("sha");
    let b = serde_json::to_vec(&shapeless).unwrap();
    let res =
        github_raw(&app, "pull_request", &delivery(), b.clone(), Some(&sign(GITHUB_SECRET, &b)), "application/json")
            .await;
    // Signed with the project's secret, so GitHub's, but not the shape draftd knows: GitHub would
    // send it again on every such event. Recorded and ignored, saying why.
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let ignored = res.body["ignored"].as_str().unwrap();
    assert!(ignored.contains("pull_request.head") && ignored.contains("sha"), "{ignored}");

    let mut no_repo = shapeless.clone();
    no_repo.as_object_mut().unwrap().remove("repository");
    let b = serde_json::to_vec(&no_repo).unwrap();
    let res =
        github_raw(&app, "pull_request", &delivery(), b.clone(), Some(&sign(GITHUB_SECRET, &b)), "application/json")
            .await;
    assert_eq!((res.status, res.body["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("repository")));

    let res = send(
        &app,
        axum::http::Request::post("/webhooks/github")
            .header("content-type", "application/json")
            .header("x-github-delivery", delivery())
            .header("x-hub-signature-256", &sig)
            .body(axum::body::Body::from(body.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!((res.status, res.body["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("x-github-event")));

    let mut unknown = github_pr("opened", "feature/login", &sha(3), T1);
    unknown["repository"]["full_name"] = "someone/else".into();
    let res = github(&app, "pull_request", &delivery(), &unknown).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(res.body["error"]["code"], json!("not_found"));

    // Repository names match case-insensitively.
    let mut lower = github_pr("opened", "feature/lower", &sha(4), T1);
    lower["repository"]["full_name"] = "codertocat/hello-world".into();
    assert_eq!(github(&app, "pull_request", &delivery(), &lower).await.status, StatusCode::ACCEPTED);

    assert_eq!(count(&pool, "deliveries").await, 3, "only the deliveries a project's secret verified are recorded");
    assert_eq!(count(&pool, "runs").await, 2);
}

/// A webhook may be set to send `application/x-www-form-urlencoded`: the JSON payload comes as the
/// form's `payload` field, signed as sent. GitHub would send every event that way, so it is read.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn form_encoded_deliveries_are_read_like_json_ones(pool: PgPool) {
    let app = app(pool.clone());
    let json = serde_json::to_string(&github_pr("opened", "feature/form", &sha(1), T1)).unwrap();
    let form: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("payload", &json).finish();
    let body = form.into_bytes();
    let sig = sign(GITHUB_SECRET, &body);
    let res =
        github_raw(&app, "pull_request", &delivery(), body.clone(), Some(&sig), "application/x-www-form-urlencoded")
            .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    assert!(res.body["run"].is_i64(), "{}", res.body);
    assert_eq!(stand(&pool, "hello-world", "feature/form").await.unwrap().head_sha, Some(sha(1)));
    // Signed over the bytes as sent: the same form with another signature is refused.
    let res = github_raw(
        &app,
        "pull_request",
        &delivery(),
        body,
        Some(&sign("other", b"x")),
        "application/x-www-form-urlencoded",
    )
    .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{}", res.body);
    assert_eq!(count(&pool, "deliveries").await, 1);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn bodies_over_25_mib_get_413(pool: PgPool) {
    let app = app(pool.clone());
    let mut big = vec![b' '; 25 * 1024 * 1024 + 1];
    big[0] = b'{';
    let sig = sign(GITHUB_SECRET, &big);
    // Without a Content-Length header the limit is enforced while reading.
    let res = github_raw(&app, "pull_request", &delivery(), big.clone(), Some(&sig), "application/json").await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", res.body);
    // With one, before reading.
    let res = send(
        &app,
        axum::http::Request::post("/webhooks/github")
            .header("content-type", "application/json")
            .header("content-length", big.len())
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", delivery())
            .header("x-hub-signature-256", &sig)
            .body(axum::body::Body::from(big))
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.body["error"]["code"], json!("payload_too_large"));
    assert_eq!(count(&pool, "deliveries").await, 0);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn redelivering_the_same_id_three_times_creates_one_run(pool: PgPool) {
    let app = app(pool.clone());
    let id = delivery();
    let payload = github_pr("opened", "feature/login", &sha(1), T1);
    let first = github(&app, "pull_request", &id, &payload).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    for _ in 0..2 {
        let again = github(&app, "pull_request", &id, &payload).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.body, first.body, "a redelivery gets the original answer");
    }
    assert_eq!(count(&pool, "runs").await, 1);
    assert_eq!(count(&pool, "deliveries").await, 1);

    // A push to the existing stand takes the general path; its redeliveries are undone just the same.
    let id = delivery();
    let payload = github_pr("synchronize", "feature/login", &sha(2), T2);
    let first = github(&app, "pull_request", &id, &payload).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    for _ in 0..2 {
        let again = github(&app, "pull_request", &id, &payload).await;
        assert_eq!((again.status, &again.body), (StatusCode::OK, &first.body));
    }
    assert_eq!(count(&pool, "runs").await, 2);
    assert_eq!(count(&pool, "deliveries").await, 2);
    let numbers: Vec<i32> = runs(&pool).await.into_iter().map(|r| r.number).collect();
    assert_eq!(numbers, vec![1, 2]);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn concurrent_redeliveries_create_one_run(pool: PgPool) {
    let app = app(pool.clone());
    let id = delivery();
    let payload = github_pr("opened", "feature/race", &sha(1), T1);
    let results = futures_join(&app, &id, &payload, 8).await;
    assert_eq!(results.iter().filter(|s| **s == StatusCode::ACCEPTED).count(), 1, "{results:?}");
    assert!(results.iter().all(|s| *s == StatusCode::ACCEPTED || *s == StatusCode::OK), "{results:?}");
    assert_eq!(count(&pool, "runs").await, 1);
}

async fn futures_join(app: &axum::Router, id: &str, payload: &Value, n: usize) -> Vec<StatusCode> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (app, id, payload) = (app.clone(), id.to_owned(), payload.clone());
        set.spawn(async move { github(&app, "pull_request", &id, &payload).await.status });
    }
    set.join_all().await
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn one_automatic_deploy_per_commit_whatever_the_event(pool: PgPool) {
    let app = app(pool.clone());
    let a = github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/login", &sha(1), T1)).await;
    let b = github(&app, "pull_request", &delivery(), &github_pr("synchronize", "feature/login", &sha(1), T2)).await;
    assert_eq!(b.status, StatusCode::ACCEPTED);
    assert_eq!(b.body["run"], a.body["run"], "the same commit's run is named, not a new one");
    assert_eq!(b.body["ignored"], json!("commit already has a run"));
    let c = github(&app, "pull_request", &delivery(), &github_pr("synchronize", "feature/login", &sha(2), T3)).await;
    assert_ne!(c.body["run"], a.body["run"]);
    let runs = runs(&pool).await;
    assert_eq!(runs.iter().map(|r| r.number).collect::<Vec<_>>(), vec![1, 2], "run numbers stay dense");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn out_of_order_pushes_the_newest_commit_wins(pool: PgPool) {
    let app = app(pool.clone());
    github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/login", &sha(1), T1)).await;
    // The push of sha 3 (newer) arrives before the push of sha 2 (older).
    let newer =
        github(&app, "pull_request", &delivery(), &github_pr("synchronize", "feature/login", &sha(3), T3)).await;
    let older =
        github(&app, "pull_request", &delivery(), &github_pr("synchronize", "feature/login", &sha(2), T2)).await;
    assert_eq!(newer.status, StatusCode::ACCEPTED);
    assert_eq!(older.status, StatusCode::ACCEPTED, "recorded, not refused");
    assert_eq!(older.body["run"], Value::Null);
    assert!(older.body["ignored"].as_str().unwrap().contains("older than"), "{}", older.body);
    let shas: Vec<_> = runs(&pool).await.into_iter().map(|r| r.sha.unwrap()).collect();
    assert_eq!(shas, vec![sha(1), sha(3)]);
    assert_eq!(stand(&pool, "hello-world", "feature/login").await.unwrap().head_sha, Some(sha(3)));
    assert_eq!(count(&pool, "deliveries").await, 3);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn close_then_a_late_push_leaves_the_stand_closing_until_reopened(pool: PgPool) {
    let app = app(pool.clone());
    github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/login", &sha(1), T1)).await;
    let close = github(&app, "pull_request", &delivery(), &github_pr("closed", "feature/login", &sha(1), T2)).await;
    assert_eq!(close.status, StatusCode::ACCEPTED);
    let s = stand(&pool, "hello-world", "feature/login").await.unwrap();
    assert_eq!(s.state, "closing");

    // A push delivered late, older than the close.
    let late = github(&app, "pull_request", &delivery(), &github_pr("synchronize", "feature/login", &sha(2), T1)).await;
    assert_eq!(late.body["run"], Value::Null);
    // Even one that claims to be newer: only a reopen revives a closing stand.
    let later =
        github(&app, "pull_request", &delivery(), &github_pr("synchronize", "feature/login", &sha(3), T3)).await;
    assert_eq!(later.body["run"], Value::Null);
    assert!(later.body["ignored"].as_str().unwrap().contains("closing"), "{}", later.body);
    assert_eq!(stand(&pool, "hello-world", "feature/login").await.unwrap().state, "closing");
    let kinds: Vec<_> = runs(&pool).await.into_iter().map(|r| (r.kind, r.trigger)).collect();
    assert_eq!(kinds, vec![("deploy".into(), "opened".into()), ("teardown".into(), "closed".into())]);

    // Reopened at the very commit that already had a run: it deploys again.
    let reopen = github(
        &app,
        "pull_request",
        &delivery(),
        &github_pr("reopened", "feature/login", &sha(1), "2019-05-15T16:00:00Z"),
    )
    .await;
    assert!(reopen.body["run"].is_i64(), "{}", reopen.body);
    assert_eq!(stand(&pool, "hello-world", "feature/login").await.unwrap().state, "active");
    assert_eq!(count(&pool, "runs").await, 3);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn merged_pull_request_queues_a_merged_teardown_once(pool: PgPool) {
    let app = app(pool.clone());
    github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/login", &sha(1), T1)).await;
    let mut merged = github_pr("closed", "feature/login", &sha(1), T2);
    merged["pull_request"]["merged"] = true.into();
    github(&app, "pull_request", &delivery(), &merged).await;
    // GitHub may send the close twice under two delivery ids; one teardown.
    let again = github(&app, "pull_request", &delivery(), &merged).await;
    assert!(again.body["ignored"].as_str().unwrap().contains("already closing"));
    let teardowns: Vec<_> = runs(&pool).await.into_iter().filter(|r| r.kind == "teardown").collect();
    assert_eq!(teardowns.len(), 1);
    assert_eq!(teardowns[0].trigger, "merged");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn close_of_an_unknown_branch_leaves_a_tombstone_a_late_push_cannot_revive(pool: PgPool) {
    let app = app(pool.clone());
    let close = github(&app, "pull_request", &delivery(), &github_pr("closed", "feature/ghost", &sha(1), T2)).await;
    assert_eq!(close.body["run"], Value::Null);
    assert_eq!(stand(&pool, "hello-world", "feature/ghost").await.unwrap().state, "removed");
    let late = github(&app, "pull_request", &delivery(), &github_pr("synchronize", "feature/ghost", &sha(2), T3)).await;
    assert_eq!(late.body["run"], Value::Null);
    assert_eq!(count(&pool, "runs").await, 0);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn branch_globs_decide_which_branches_get_stands(pool: PgPool) {
    let app = app(pool.clone());
    let long = format!("feature/{}", "a-very-long-branch-name-".repeat(12));
    let cases = [
        ("feature/login", true),
        ("feature/deep/nested/branch", true),
        ("bugfix/crash-on-start", true),
        ("feature/ünïcødé-ブランチ", true),
        (long.as_str(), true),
        ("feature", false),
        ("main", false),
        ("features/x", false),
        ("hotfix/feature/x", false),
        ("changes", false),
    ];
    for (i, (branch, matches)) in cases.iter().enumerate() {
        let res = github(&app, "pull_request", &delivery(), &github_pr("opened", branch, &sha(i as u32), T1)).await;
        assert_eq!(res.status, StatusCode::ACCEPTED, "{branch}");
        assert_eq!(res.body["run"].is_i64(), *matches, "{branch}: {}", res.body);
        if !matches {
            assert!(res.body["ignored"].as_str().unwrap().contains("matches none"), "{branch}");
        }
    }
    let namespaces: Vec<String> =
        sqlx::query_scalar("select namespace from stands order by stand_id").fetch_all(&pool).await.unwrap();
    assert_eq!(namespaces.len(), 5);
    for ns in &namespaces {
        assert!(ns.len() <= 63 && draftd::stand::is_dns_label(ns), "{ns}");
    }
    assert_eq!(namespaces[3], "draft-feature-n-c-d", "non-ASCII characters become separators");
    assert_eq!(namespaces[4].len(), 63, "cut and hashed: {}", namespaces[4]);
    // Ignored deliveries are recorded too, with their reason.
    let ignored: i64 = sqlx::query_scalar(
        "select count(*) from deliveries where outcome = 'ignored' and reason like '%matches none%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ignored, 5);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn branches_that_would_share_a_namespace_get_the_hash_suffix(pool: PgPool) {
    let app = app(pool.clone());
    github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/a_b", &sha(1), T1)).await;
    github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/a-b", &sha(2), T1)).await;
    let first = stand(&pool, "hello-world", "feature/a_b").await.unwrap();
    let second = stand(&pool, "hello-world", "feature/a-b").await.unwrap();
    assert_eq!(first.namespace, "draft-feature-a-b");
    let project = draftd::stand::ProjectName::new("hello-world").unwrap();
    let branch = draftd::stand::BranchName::new("feature/a-b").unwrap();
    assert_eq!(second.namespace, Namespace::hashed(&project, &branch, false).as_str());
    assert_ne!(first.namespace, second.namespace);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn forks_are_ignored_unless_the_project_allows_them(pool: PgPool) {
    let app = app(pool.clone());
    let mut fork = github_pr("opened", "feature/from-fork", &sha(1), T1);
    fork["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World".into();
    let res = github(&app, "pull_request", &delivery(), &fork).await;
    assert_eq!((res.status, res.body["ignored"].clone()), (StatusCode::ACCEPTED, json!("fork")));
    let reason: String = sqlx::query_scalar("select reason from deliveries").fetch_one(&pool).await.unwrap();
    assert_eq!(reason, "fork");

    // forks-welcome serves Octocoders/Hello-World with forks = "allow".
    fork["repository"]["full_name"] = "Octocoders/Hello-World".into();
    fork["pull_request"]["base"]["repo"]["full_name"] = "Octocoders/Hello-World".into();
    let res = github(&app, "pull_request", &delivery(), &fork).await;
    assert!(res.body["run"].is_i64(), "{}", res.body);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn draft_pull_requests_wait_for_ready_for_review(pool: PgPool) {
    let app = app(pool.clone());
    let mut draft = github_pr("opened", "feature/wip", &sha(1), T1);
    draft["pull_request"]["draft"] = true.into();
    let res = github(&app, "pull_request", &delivery(), &draft).await;
    assert_eq!(res.body["ignored"], json!("draft"));
    let ready =
        github(&app, "pull_request", &delivery(), &github_pr("ready_for_review", "feature/wip", &sha(1), T2)).await;
    assert!(ready.body["run"].is_i64());
    assert_eq!(runs(&pool).await[0].trigger, "ready_for_review");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn opt_out_label_tears_down_and_holds_deploys_until_removed(pool: PgPool) {
    let app = app(pool.clone());
    github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/login", &sha(1), T1)).await;
    let mut label = github_pr("labeled", "feature/login", &sha(1), "2019-05-15T15:20:35Z");
    label["label"]["name"] = "draft:skip".into();
    label["pull_request"]["labels"] = json!([{ "name": "draft:skip" }]);
    let res = github(&app, "pull_request", &delivery(), &label).await;
    assert!(res.body["run"].is_i64());
    assert_eq!(stand(&pool, "hello-world", "feature/login").await.unwrap().state, "closing");

    let mut push = github_pr("synchronize", "feature/login", &sha(2), T2);
    push["pull_request"]["labels"] = json!([{ "name": "draft:skip" }]);
    let res = github(&app, "pull_request", &delivery(), &push).await;
    assert!(res.body["ignored"].as_str().unwrap().contains("opted out"), "{}", res.body);

    let mut unlabel = github_pr("unlabeled", "feature/login", &sha(2), T3);
    unlabel["label"]["name"] = "draft:skip".into();
    unlabel["pull_request"]["labels"] = json!([]);
    let res = github(&app, "pull_request", &delivery(), &unlabel).await;
    assert!(res.body["run"].is_i64(), "{}", res.body);
    assert_eq!(stand(&pool, "hello-world", "feature/login").await.unwrap().state, "active");
    let triggers: Vec<_> = runs(&pool).await.into_iter().map(|r| r.trigger).collect();
    assert_eq!(triggers, vec!["opened", "opt_out", "opt_in"]);

    // Any other label is nothing to draftd.
    let res = github(&app, "pull_request", &delivery(), &github_pr("labeled", "feature/login", &sha(2), T3)).await;
    assert!(res.body["ignored"].as_str().unwrap().contains("labeled"));
}

fn comment(body: &str) -> Value {
    let mut v = fixture("github/issue_comment.created.json");
    v["issue"]["number"] = 2.into();
    v["issue"]["pull_request"] = json!({ "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2" });
    v["comment"]["body"] = body.into();
    v
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn draft_commands_in_comments_queue_runs_with_the_commenter(pool: PgPool) {
    let app = app(pool.clone());
    // Before any stand exists for PR #2 there is nothing to re-run.
    let res = github(&app, "issue_comment", &delivery(), &comment("/draft rerun")).await;
    assert_eq!(res.body["ignored"], json!("no stand for pull request #2"));

    github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/login", &sha(1), T1)).await;
    for body in ["/draft rerun", "/draft extend 24h", "/draft destroy"] {
        let res = github(&app, "issue_comment", &delivery(), &comment(body)).await;
        assert!(res.body["run"].is_i64(), "{body}: {}", res.body);
    }
    let runs = runs(&pool).await;
    let manual: Vec<_> = runs.iter().skip(1).collect();
    assert_eq!(manual.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(), vec!["deploy", "extend", "teardown"]);
    for r in &manual {
        assert_eq!(r.requested_by.as_deref(), Some("Codertocat"));
        assert_eq!(r.trigger, "command");
        assert!(!r.automatic);
    }
    assert_eq!(manual[0].sha.as_deref(), Some(sha(1).as_str()), "a re-run deploys the stand's head commit");
    // The commenter's id rides along for the access check.
    assert_eq!(manual[1].params, json!({ "by_seconds": 86400, "author_id": 21031067 }));
    // Authorisation comes before a destroy acts, so the stand is not closing yet.
    assert_eq!(stand(&pool, "hello-world", "feature/login").await.unwrap().state, "active");

    let res = github(&app, "issue_comment", &delivery(), &comment("/draft explode")).await;
    assert!(res.body["ignored"].as_str().unwrap().contains("unknown /draft command"));
    let res = github(&app, "issue_comment", &delivery(), &comment("Looks good to me")).await;
    assert_eq!(res.body["ignored"], json!("comment is not a /draft command"));
    let res = github(&app, "issue_comment", &delivery(), &fixture("github/issue_comment.created.json")).await;
    assert_eq!(res.body["ignored"], json!("comment on an issue, not a pull request"));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn check_run_rerun_requests_queue_a_manual_deploy(pool: PgPool) {
    let app = app(pool.clone());
    github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/login", &sha(1), T1)).await;
    let mut rerun = fixture("github/check_run.requested_action.json");
    rerun["repository"]["full_name"] = "Codertocat/Hello-World".into();
    rerun["check_run"]["name"] = "draftd".into();
    rerun["check_run"]["head_sha"] = sha(1).into();
    rerun["check_run"]["pull_requests"][0]["head"]["ref"] = "feature/login".into();
    rerun["requested_action"]["identifier"] = "rerun".into();
    let res = github(&app, "check_run", &delivery(), &rerun).await;
    assert!(res.body["run"].is_i64(), "{}", res.body);

    let mut rerequested = rerun.clone();
    rerequested["action"] = "rerequested".into();
    rerequested.as_object_mut().unwrap().remove("requested_action");
    let res = github(&app, "check_run", &delivery(), &rerequested).await;
    assert!(res.body["run"].is_i64(), "{}", res.body);

    let runs = runs(&pool).await;
    assert_eq!(runs.len(), 3);
    assert!(
        runs[1..]
            .iter()
            .all(|r| r.trigger == "check_run" && !r.automatic && r.requested_by.as_deref() == Some("codebytere"))
    );

    // The recorded payloads are someone else's checks.
    let mut foreign = fixture("github/check_run.rerequested.json");
    foreign["repository"]["full_name"] = "Codertocat/Hello-World".into();
    let res = github(&app, "check_run", &delivery(), &foreign).await;
    assert!(res.body["ignored"].as_str().unwrap().contains("not draftd's"));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn webhooks_wait_for_migrations(pool: PgPool) {
    let config = config();
    let state = draftd::http::AppState::new(&config, projects(&config), pool.clone());
    let app = draftd::http::router(state.clone());
    let res = github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/login", &sha(1), T1)).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    let startup =
        send(&app, axum::http::Request::get("/health/startup").body(axum::body::Body::empty()).unwrap()).await;
    assert_eq!(startup.status, StatusCode::SERVICE_UNAVAILABLE);
    state.set_migrated();
    let ready = send(&app, axum::http::Request::get("/health/ready").body(axum::body::Body::empty()).unwrap()).await;
    assert_eq!((ready.status, ready.body["database"].clone()), (StatusCode::OK, json!(true)));
    let res = github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/login", &sha(1), T1)).await;
    assert_eq!(res.status, StatusCode::ACCEPTED);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn an_app_wide_secret_signs_for_every_project_and_own_secrets_still_work(pool: PgPool) {
    const APP_SECRET: &str = "app-wide-secret-0b7e";
    let config = draftd::config::Config::from_toml(
        r#"
        [github]
        webhook_secret_env = "APP_SECRET"
        [[projects]]
        name = "app-only"
        forge = "github"
        repo = "Codertocat/Hello-World"
        [[projects]]
        name = "own-too"
        forge = "github"
        repo = "Octocoders/Hello-World"
        webhook_secret_env = "GH_SECRET"
        "#,
    )
    .unwrap();
    let projects = draftd::config::Projects::resolve_with(&config, |var| match var {
        "APP_SECRET" => Some(APP_SECRET.into()),
        "GH_SECRET" => Some(GITHUB_SECRET.into()),
        _ => None,
    })
    .unwrap();
    let state = draftd::http::AppState::new(&config, projects, pool.clone());
    state.set_migrated();
    let app = draftd::http::router(state);

    let post = |repo: &str, branch: &str, secret: &str| {
        let mut v = github_pr("opened", branch, &sha(1), T1);
        v["repository"]["full_name"] = repo.into();
        v["pull_request"]["base"]["repo"]["full_name"] = repo.into();
        v["pull_request"]["head"]["repo"]["full_name"] = repo.into();
        let body = serde_json::to_vec(&v).unwrap();
        let sig = sign(secret, &body);
        let app = app.clone();
        async move { github_raw(&app, "pull_request", &delivery(), body, Some(&sig), "application/json").await.status }
    };
    assert_eq!(post("Codertocat/Hello-World", "feature/a", APP_SECRET).await, StatusCode::ACCEPTED);
    assert_eq!(post("Octocoders/Hello-World", "feature/b", APP_SECRET).await, StatusCode::ACCEPTED);
    assert_eq!(post("Octocoders/Hello-World", "feature/c", GITHUB_SECRET).await, StatusCode::ACCEPTED);
    assert_eq!(post("Codertocat/Hello-World", "feature/d", GITHUB_SECRET).await, StatusCode::UNAUTHORIZED);
    assert_eq!(post("Octocoders/Hello-World", "feature/e", "neither").await, StatusCode::UNAUTHORIZED);
    assert_eq!(count(&pool, "deliveries").await, 3);

    // The App is installed on repositories draftd does not serve, and sends events that name no
    // repository (installation, marketplace): what its secret verifies is answered 202, not 4xx.
    let app_signed = |event: &'static str, body: Vec<u8>, content_type: &'static str| {
        let sig = sign(APP_SECRET, &body);
        let app = app.clone();
        async move { github_raw(&app, event, &delivery(), body, Some(&sig), content_type).await }
    };
    let mut elsewhere = github_pr("opened", "feature/f", &sha(1), T1);
    elsewhere["repository"]["full_name"] = "someone/else".into();
    let res = app_signed("pull_request", serde_json::to_vec(&elsewhere).unwrap(), "application/json").await;
    assert_eq!((res.status, res.body["ignored"].clone()), (StatusCode::ACCEPTED, json!("unknown_project")));
    assert!(res.body["delivery"].is_string(), "{}", res.body);
    let mut installation = github_pr("opened", "feature/f", &sha(1), T1);
    installation.as_object_mut().unwrap().remove("repository");
    let res = app_signed("installation", serde_json::to_vec(&installation).unwrap(), "application/json").await;
    assert_eq!((res.status, res.body["ignored"].clone()), (StatusCode::ACCEPTED, json!("no_project")));
    let res = app_signed("pull_request", b"{\"action\": ".to_vec(), "application/json").await;
    assert_eq!((res.status, res.body["ignored"].clone()), (StatusCode::ACCEPTED, json!("unreadable_payload")));
    let res = app_signed("pull_request", serde_json::to_vec(&elsewhere).unwrap(), "text/plain").await;
    assert_eq!((res.status, res.body["ignored"].clone()), (StatusCode::ACCEPTED, json!("unsupported_content_type")));
    // Unsigned, or signed with a secret nobody configured: refused.
    let res = github_raw(
        &app,
        "pull_request",
        &delivery(),
        serde_json::to_vec(&elsewhere).unwrap(),
        None,
        "application/json",
    )
    .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{}", res.body);
    assert_eq!(count(&pool, "deliveries").await, 3, "only served repositories' deliveries are recorded");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn concurrent_first_deliveries_for_one_new_branch_make_one_stand_and_one_run(pool: PgPool) {
    let app = app(pool.clone());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let app = app.clone();
        set.spawn(async move {
            github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/race", &sha(1), T1)).await
        });
    }
    let results = set.join_all().await;
    assert!(
        results.iter().all(|r| r.status == StatusCode::ACCEPTED),
        "{:?}",
        results.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    let stands: Vec<_> = results.iter().map(|r| r.body["stand"].clone()).collect();
    assert!(stands.iter().all(|s| *s == stands[0] && s.is_i64()), "{stands:?}");
    let run_ids: Vec<_> = results.iter().map(|r| r.body["run"].clone()).collect();
    assert!(run_ids.iter().all(|r| *r == run_ids[0]), "every answer names the one run: {run_ids:?}");
    assert_eq!(count(&pool, "stands").await, 1);
    assert_eq!(count(&pool, "runs").await, 1);
    assert_eq!(count(&pool, "deliveries").await, 8);
    let dangling: i64 = sqlx::query_scalar(
        "select count(*) from deliveries d where d.stand_id is not null and not exists (select 1 from stands s where s.stand_id = d.stand_id)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(dangling, 0);
}

/// The recorded `check_suite` `rerequested` payload (PR #2 of Codertocat/Hello-World, branch
/// `changes`), on `branch`: the projects' default globs admit only `feature/**` and `bugfix/**`.
fn suite_on(branch: &str) -> Value {
    let mut suite = fixture("github/check_suite.rerequested.json");
    suite["check_suite"]["head_branch"] = branch.into();
    suite["check_suite"]["pull_requests"][0]["head"]["ref"] = branch.into();
    suite
}

/// "Re-run all checks" and "Re-run failed checks" send `check_suite` `rerequested` (a recorded
/// payload); the stand at that head commit deploys again, asked for by the person who clicked.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn re_run_all_checks_redeploys_the_stand_of_the_suites_commit(pool: PgPool) {
    let app = app(pool.clone());
    let suite = suite_on("feature/changes");
    let head = suite["check_suite"]["head_sha"].as_str().unwrap().to_owned();
    github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/login", &sha(1), T1)).await;
    github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/changes", &head, T1)).await;
    let res = github(&app, "check_suite", &delivery(), &suite).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    assert!(res.body["run"].is_i64(), "{}", res.body);
    let changes = stand(&pool, "hello-world", "feature/changes").await.unwrap();
    assert_eq!(res.body["stand"], json!(changes.stand_id));
    let run = runs(&pool).await.into_iter().last().unwrap();
    assert_eq!((run.kind.as_str(), run.trigger.as_str(), run.automatic), ("deploy", "check_run", false));
    assert_eq!(
        (run.sha.as_deref(), run.requested_by.as_deref()),
        (Some(head.as_str()), Some("octocoders-linter[bot]"))
    );
    // A new push starts its own suite (`requested`): the pull_request event already deployed it.
    let mut requested = suite.clone();
    requested["action"] = "requested".into();
    let res = github(&app, "check_suite", &delivery(), &requested).await;
    assert_eq!(res.body["ignored"], json!("check_suite action \"requested\" needs nothing"));
}

/// A fork's check runs carry `pull_requests: []` (the recorded `check_run.rerequested` payload does):
/// the stand is found by its head commit, its suite's branch breaking a tie, and the answer goes to
/// the stand's pull request.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_rerun_without_pull_requests_finds_the_stand_by_its_commit(pool: PgPool) {
    let app = app(pool.clone());
    let mut fork = github_pr("opened", "feature/from-fork", &sha(1), T1);
    fork["repository"]["full_name"] = "Octocoders/Hello-World".into();
    fork["pull_request"]["base"]["repo"]["full_name"] = "Octocoders/Hello-World".into();
    fork["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World".into();
    let res = github(&app, "pull_request", &delivery(), &fork).await;
    let stand_id = res.body["stand"].as_i64().unwrap();

    let mut rerun = fixture("github/check_run.rerequested.json");
    assert_eq!(rerun["check_run"]["pull_requests"], json!([]));
    rerun["repository"]["full_name"] = "Octocoders/Hello-World".into();
    rerun["check_run"]["name"] = "draftd".into();
    rerun["check_run"]["head_sha"] = sha(1).into();
    rerun["check_run"]["check_suite"]["head_branch"] = "feature/from-fork".into();
    let res = github(&app, "check_run", &delivery(), &rerun).await;
    assert_eq!((res.body["stand"].as_i64(), res.body["run"].is_i64()), (Some(stand_id), true), "{}", res.body);
    let run = runs(&pool).await.into_iter().last().unwrap();
    assert_eq!((run.trigger.as_str(), run.sha.as_deref()), ("check_run", Some(sha(1).as_str())));
    assert_eq!(run.requested_by.as_deref(), Some("octocat"));

    // A commit draftd has no stand for: recorded and ignored, nothing to answer on.
    rerun["check_run"]["head_sha"] = sha(9).into();
    rerun["check_run"]["check_suite"]["head_branch"] = "feature/unknown".into();
    let res = github(&app, "check_run", &delivery(), &rerun).await;
    assert_eq!(res.body["ignored"], json!(format!("no stand at commit {}", &sha(9)[..7])), "{}", res.body);
}

/// A Re-run that cannot start is answered on the PR: otherwise GitHub shows the check queued for
/// ever, waiting for a check run that will not come.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_rerun_of_a_removed_stand_is_answered_on_its_pull_request(pool: PgPool) {
    let app = app(pool.clone());
    let suite = suite_on("feature/changes");
    let head = suite["check_suite"]["head_sha"].as_str().unwrap().to_owned();
    github(&app, "pull_request", &delivery(), &github_pr("opened", "feature/changes", &head, T1)).await;
    github(&app, "pull_request", &delivery(), &github_pr("closed", "feature/changes", &head, T2)).await;
    let res = github(&app, "check_suite", &delivery(), &suite).await;
    assert_eq!(res.body["ignored"], json!("stand is closing"), "{}", res.body);
    let rows: Vec<(String, Value)> =
        sqlx::query_as("select kind, payload from outbox order by outbox_id").fetch_all(&pool).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let reply = draftd::reporter::Outbound::from_row(&rows[0].0, None, &rows[0].1).unwrap();
    let draftd::reporter::Outbound::Reply { reply, .. } = reply else { panic!("{reply:?}") };
    assert_eq!((reply.repo.as_str(), reply.number), ("Codertocat/Hello-World", 2));
    assert_eq!(reply.body, "@octocoders-linter[bot] the Re-run was not started: stand is closing.");
}
