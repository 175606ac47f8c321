//! Security checks (issue 10): secret comparisons are constant-time (read from the sources), fork
//! pull requests get no run and so no secrets under `forks = "deny"` in both forges, and the API,
//! the dashboard login and the GitLab token refuse near-miss credentials.
//!
//! No assertion message here shows a secret: the suite's whole output is grepped for them
//! (scripts/check-secrets.sh), so cases are named, never printed.

use std::path::Path;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use draftd::config::Config;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::support::*;

const T1: &str = "2019-05-15T15:20:33Z";
const T2: &str = "2019-05-15T15:30:00Z";

// ---------------------------------------------------------------------------------------------
// Constant-time comparisons, checked in the source
// ---------------------------------------------------------------------------------------------

/// A source file without its `#[cfg(test)]` module and without `//` comments.
fn source(path: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap();
    code.lines().map(|l| l.split_once("//").map_or(l, |(code, _)| code)).collect::<Vec<_>>().join("\n")
}

/// The body of `fn name` in `code`, braces matched (good enough for these files: no braces in strings
/// of the functions checked).
fn body<'a>(code: &'a str, name: &str) -> &'a str {
    let head = format!("fn {name}");
    let start = code
        .match_indices(&head)
        .map(|(at, _)| at)
        .find(|at| code[at + head.len()..].starts_with(['(', '<']))
        .unwrap_or_else(|| panic!("fn {name} is gone"));
    let open = start + code[start..].find('{').unwrap();
    let mut depth = 0;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &code[open..=open + i];
                }
            }
            _ => {}
        }
    }
    panic!("fn {name}: unbalanced braces")
}

/// Every function of `code` (by name) whose body calls `needle`.
fn functions_using(code: &str, needle: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("fn ") {
        let after = &rest[at + 3..];
        let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() && after[name.len()..].starts_with(['(', '<']) && after.contains('{') {
            let b = body(&rest[at..], &name);
            if b.contains(needle) {
                names.push(name.clone());
            }
        }
        rest = &rest[at + 3..];
    }
    names.sort();
    names.dedup();
    names
}

const PLAIN_COMPARISONS: [&str; 8] =
    ["==", "!=", ".eq(", ".ne(", "eq_ignore_ascii_case", ".cmp(", ".starts_with(", ".contains("];

fn no_plain_comparison(what: &str, code: &str) {
    for op in PLAIN_COMPARISONS {
        assert!(!code.contains(op), "{what} compares with `{op}`; secrets are compared in constant time");
    }
}

#[test]
fn secret_values_are_only_exposed_where_they_are_compared_in_constant_time() {
    // Where the raw secret (webhook secret, GitLab token, API token) leaves its SecretString: only
    // to key an HMAC or to be digested, in these functions, and nowhere else under src/http.
    let expected: &[(&str, &[&str])] = &[
        ("src/http/webhooks/extract.rs", &["verify_github", "verify_gitlab"]),
        ("src/http/auth.rs", &["token_matches"]),
        ("src/http/api.rs", &[]),
        ("src/http/dashboard/session.rs", &["keyed"]),
        ("src/http/dashboard/mod.rs", &[]),
        ("src/http/dashboard/view.rs", &[]),
        ("src/http/mod.rs", &[]),
        ("src/http/webhooks/mod.rs", &[]),
        ("src/http/dashboard/page.rs", &[]),
        ("src/http/dashboard/chart.rs", &[]),
        ("src/http/dashboard/figures.rs", &[]),
        ("src/http/dashboard/logs.rs", &[]),
        ("src/http/openapi.rs", &[]),
        ("src/http/health.rs", &[]),
        ("src/http/metrics.rs", &[]),
        ("src/http/error.rs", &[]),
        ("src/http/schema.rs", &[]),
        ("src/http/wake.rs", &[]),
    ];
    let mut dir: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http"))
        .unwrap()
        .chain(std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/dashboard")).unwrap())
        .chain(std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/webhooks")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().display().to_string())
        .collect();
    dir.sort();
    for file in &dir {
        let listed = expected.iter().find(|(f, _)| f == file);
        let (_, allowed) = listed.unwrap_or_else(|| panic!("{file} is new: say here where it may expose a secret"));
        assert_eq!(functions_using(&source(file), "expose_secret()"), *allowed, "{file}: functions exposing a secret");
    }

    let webhook = source("src/http/webhooks/extract.rs");
    let github = body(&webhook, "verify_github");
    assert!(github.contains(".verify_slice("), "the GitHub signature is checked with Mac::verify_slice");
    no_plain_comparison("verify_github", &github.replace(".strip_prefix(\"sha256=\")", ""));
    let gitlab = body(&webhook, "verify_gitlab");
    assert!(gitlab.contains(".ct_eq(") && gitlab.matches("Sha256::digest(").count() == 2, "GitLab: digests, ct_eq");
    no_plain_comparison("verify_gitlab", gitlab);

    let api = source("src/http/api.rs");
    let auth = source("src/http/auth.rs");
    let matches = body(&auth, "token_matches");
    assert!(matches.contains(".ct_eq(") && matches.matches("Sha256::digest(").count() == 2, "API: digests, ct_eq");
    no_plain_comparison("token_matches", matches);
    // The API and the dashboard login both decide through token_matches.
    assert!(body(&api, "from_request_parts").contains("token_matches(token, given)"));
    let dashboard = source("src/http/dashboard/mod.rs");
    let login = body(&dashboard, "login");
    assert!(login.contains("token_matches(token, given)"), "the dashboard login checks the API token");
    no_plain_comparison("dashboard login", &login.replace("given.is_empty()", ""));

    let session = source("src/http/dashboard/session.rs");
    assert!(body(&session, "verify").contains(".verify_slice("), "session cookies: HMAC verify_slice");
    let check_post = body(&session, "check_post");
    assert!(check_post.contains(".ct_eq(self.csrf.as_bytes())"), "CSRF: ct_eq");
    no_plain_comparison("check_post", check_post);

    // Nowhere under src/http does a line compare anything that names a secret.
    for file in &dir {
        for (n, line) in source(file).lines().enumerate() {
            let lower = line.to_ascii_lowercase();
            let names_secret = ["secret", "token", "signature", "csrf", "mac", "given", "digest", "password"]
                .iter()
                .any(|w| lower.contains(w));
            let compares = ["==", "!=", ".eq(", "eq_ignore_ascii_case"].iter().any(|op| line.contains(op));
            assert!(!(names_secret && compares), "{file}:{}: a plain comparison near a secret: {line}", n + 1);
        }
    }
}

#[test]
fn the_source_checks_see_what_they_look_for() {
    let code = "fn a(x: u8) { if x == 1 { b() } }\nfn c() { expose_secret() }\nfn d<T>() { { expose_secret() } }";
    assert_eq!(body(code, "a"), "{ if x == 1 { b() } }");
    assert_eq!(functions_using(code, "expose_secret()"), ["c", "d"]);
    assert!(std::panic::catch_unwind(|| no_plain_comparison("a", body(code, "a"))).is_err());
}

// ---------------------------------------------------------------------------------------------
// Fork pull requests: no run, so no secrets
// ---------------------------------------------------------------------------------------------

fn delivery() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A recorded GitHub PR event whose head lives in a fork (`None`: the fork was deleted).
fn github_fork(action: &str, head_repo: Option<&str>, updated_at: &str) -> Value {
    let mut v = github_pr(action, "feature/from-fork", &sha(7), updated_at);
    v["pull_request"]["head"]["repo"] = match head_repo {
        Some(r) => json!({ "full_name": r }),
        None => Value::Null,
    };
    v
}

async fn nothing_queued(pool: &PgPool, what: &str) {
    assert_eq!(count(pool, "runs").await, 0, "{what}: no run");
    assert_eq!(count(pool, "stands").await, 0, "{what}: no stand");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn github_fork_pull_requests_queue_no_run_under_deny(pool: PgPool) {
    // hello-world (Codertocat/Hello-World) keeps the default, forks = "deny".
    let app = app(pool.clone());
    for action in ["opened", "reopened", "synchronize", "ready_for_review", "labeled", "unlabeled"] {
        for head in [Some("mallory/Hello-World"), None] {
            let res = github(&app, "pull_request", &delivery(), &github_fork(action, head, T1)).await;
            assert_eq!(res.status, StatusCode::ACCEPTED, "{action} {head:?}: {}", res.body);
            assert!(res.body["run"].is_null(), "{action} {head:?}: {}", res.body);
            if action != "labeled" && action != "unlabeled" {
                assert_eq!(res.body["ignored"], json!("fork"), "{action} {head:?}");
            }
        }
    }
    // A re-run asked for in a comment on the fork's PR finds no stand to run.
    let mut comment = fixture("github/issue_comment.created.json");
    comment["issue"]["number"] = github_fork("opened", Some("mallory/Hello-World"), T1)["number"].clone();
    comment["comment"]["body"] = "/draft rerun".into();
    let res = github(&app, "issue_comment", &delivery(), &comment).await;
    assert!(res.body["run"].is_null(), "{}", res.body);
    nothing_queued(&pool, "GitHub fork").await;
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn gitlab_fork_merge_requests_queue_no_run_under_deny(pool: PgPool) {
    let app = app(pool.clone());
    for action in ["open", "reopen", "update"] {
        for project in ["gitlabhq/gitlab-test", "gitlab-org/gitlab-test"] {
            let mut mr = gitlab_mr(action, "feature/from-fork", &sha(7), T1);
            mr["project"]["path_with_namespace"] = project.into();
            let target = mr["object_attributes"]["target_project_id"].as_u64().unwrap();
            mr["object_attributes"]["source_project_id"] = (target + 4242).into();
            let res = gitlab(&app, "Merge Request Hook", &mr).await;
            assert_eq!(res.status, StatusCode::ACCEPTED, "{action} {project}: {}", res.body);
            assert!(res.body["run"].is_null(), "{action} {project}: {}", res.body);
            assert_eq!(res.body["ignored"], json!("fork"), "{action} {project}");
        }
    }
    // The real update fixture, from a fork.
    let mut update = fixture("gitlab/merge_request.update.json");
    let target = update["object_attributes"]["target_project_id"].as_u64().unwrap();
    update["object_attributes"]["source_project_id"] = (target + 1).into();
    let res = gitlab(&app, "Merge Request Hook", &update).await;
    assert!(res.body["run"].is_null(), "{}", res.body);
    // A `/draft rerun` note on the fork's MR finds no stand to run.
    let mut note = fixture("gitlab/note.merge_request.json");
    note["object_attributes"]["note"] = "/draft rerun".into();
    note["merge_request"]["iid"] = gitlab_mr("open", "x", &sha(1), T1)["object_attributes"]["iid"].clone();
    let res = gitlab(&app, "Note Hook", &note).await;
    assert!(res.body["run"].is_null(), "{}", res.body);
    nothing_queued(&pool, "GitLab fork").await;
}

/// Under `forks = "allow"` a fork's PR gets a stand marked as a fork (whose runs get no secrets and
/// no logins: tests/it/kube_runner.rs), and never the repository's own stand of the same branch name:
/// while that one lives, the fork can neither take it over, nor push to it, nor close it.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn under_allow_a_fork_gets_a_stand_of_its_own_marked_as_a_fork(pool: PgPool) {
    let app = app(pool.clone());
    let own = |v: &mut Value| {
        v["repository"]["full_name"] = "Octocoders/Hello-World".into();
        v["pull_request"]["base"]["repo"]["full_name"] = "Octocoders/Hello-World".into();
    };
    let mut inside = github_pr("opened", "feature/from-fork", &sha(1), T1);
    own(&mut inside);
    inside["pull_request"]["head"]["repo"] = json!({ "full_name": "Octocoders/Hello-World" });
    let first = github(&app, "pull_request", &delivery(), &inside).await;
    assert!(first.body["run"].is_i64(), "{}", first.body);

    for action in ["opened", "synchronize", "closed"] {
        let mut fork = github_fork(action, Some("mallory/Hello-World"), T2);
        own(&mut fork);
        fork["number"] = 99.into();
        fork["pull_request"]["number"] = 99.into();
        let res = github(&app, "pull_request", &delivery(), &fork).await;
        assert!(res.body["run"].is_null(), "{action}: the fork gets no run on the repository's stand: {}", res.body);
        assert!(res.body["ignored"].as_str().unwrap().contains("belongs to the repository"), "{}", res.body);
    }
    let stand = stand(&pool, "forks-welcome", "feature/from-fork").await.unwrap();
    assert_eq!(
        stand.pr_number,
        inside["pull_request"]["number"].as_i64(),
        "the stand still follows the repository's PR"
    );
    assert_eq!(count(&pool, "runs").await, 1);

    // A fork's own branch name: a stand of its own, marked as a fork.
    let mut fork = github_pr("opened", "feature/only-in-fork", &sha(8), T2);
    own(&mut fork);
    fork["pull_request"]["head"]["repo"] = json!({ "full_name": "mallory/Hello-World" });
    let res = github(&app, "pull_request", &delivery(), &fork).await;
    assert!(res.body["run"].is_i64(), "forks = \"allow\" deploys a fork's own branch: {}", res.body);
    let marked: Vec<(String, bool)> =
        sqlx::query_as("select branch, fork from stands order by stand_id").fetch_all(&pool).await.unwrap();
    assert_eq!(
        marked,
        [("feature/from-fork".to_owned(), false), ("feature/only-in-fork".to_owned(), true)],
        "only the fork's stand is marked"
    );
}

// ---------------------------------------------------------------------------------------------
// Near-miss credentials
// ---------------------------------------------------------------------------------------------

/// Credentials that are almost right, by name (the values are never printed).
fn near_misses(secret: &str) -> Vec<(&'static str, String)> {
    let mut last_changed = secret.to_owned();
    let last = last_changed.pop().unwrap();
    last_changed.push(if last == '0' { '1' } else { '0' });
    vec![
        ("a prefix", secret[..secret.len() - 1].to_owned()),
        ("one character more", format!("{secret}0")),
        ("the last character changed", last_changed),
        ("upper-cased", secret.to_ascii_uppercase()),
        ("empty", String::new()),
    ]
}

fn api_call(method: &str, path: &str, authorization: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    req.body(Body::empty()).unwrap()
}

fn api_routes(id: i64) -> Vec<(&'static str, String)> {
    vec![
        ("GET", "/api/v1/stands".into()),
        ("GET", format!("/api/v1/stands/{id}")),
        ("POST", format!("/api/v1/stands/{id}/runs")),
        ("POST", format!("/api/v1/stands/{id}/extend")),
        ("POST", format!("/api/v1/stands/{id}/wake")),
        ("DELETE", format!("/api/v1/stands/{id}")),
        ("GET", "/api/v1/metrics/summary".into()),
    ]
}

async fn seed(app: &axum::Router) -> i64 {
    let res = github(app, "pull_request", &delivery(), &github_pr("opened", "feature/sec", &sha(1), T1)).await;
    res.body["stand"].as_i64().unwrap()
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_api_refuses_near_miss_tokens_other_schemes_and_query_tokens(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app).await;
    let mut headers: Vec<(&str, Option<String>)> =
        near_misses(API_TOKEN).into_iter().map(|(what, t)| (what, Some(format!("Bearer {t}")))).collect();
    headers.push(("the token without a scheme", Some(API_TOKEN.to_owned())));
    headers.push(("scheme Token", Some(format!("Token {API_TOKEN}"))));
    headers.push(("scheme Basic", Some(format!("Basic {API_TOKEN}"))));
    headers.push(("Bearer without a space", Some(format!("Bearer{API_TOKEN}"))));
    for (method, path) in api_routes(id) {
        for (what, header) in &headers {
            let res = send(&app, api_call(method, &path, header.as_deref())).await;
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{method} {path}: {what}");
            assert_eq!(res.body["error"]["code"], json!("unauthorized"), "{method} {path}: {what}");
        }
        for param in ["token", "access_token"] {
            let uri = format!("{path}?{param}={API_TOKEN}");
            let res = send(&app, api_call(method, &uri, None)).await;
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{method} {path}: the token as ?{param}=");
        }
    }
    assert_eq!(count(&pool, "runs").await, 1, "nothing queued by refused calls");
    // The right token still works, with blanks around it.
    let ok = send(&app, api_call("GET", "/api/v1/stands", Some(&format!("Bearer  {API_TOKEN} ")))).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn without_a_configured_token_the_api_refuses_everyone(pool: PgPool) {
    let text = CONFIG.replace("[api]\ntoken_env = \"API_TOKEN\"\n", "");
    assert!(!text.contains("[api]"));
    let config = Config::from_toml(&text).unwrap();
    let app = app_with(pool.clone(), &config);
    let id = seed(&app).await;
    for (method, path) in api_routes(id) {
        for (what, header) in [("no header", None), ("the test token", Some(format!("Bearer {API_TOKEN}")))] {
            let res = send(&app, api_call(method, &path, header.as_deref())).await;
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{method} {path}: {what}");
        }
    }
    assert_eq!(count(&pool, "runs").await, 1);
}

fn login(token: &str) -> Request<Body> {
    let body = format!("token={}&next=%2Fstands", urlencode(token));
    Request::post("/login").header("content-type", "application/x-www-form-urlencoded").body(Body::from(body)).unwrap()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_dashboard_login_refuses_near_miss_tokens(pool: PgPool) {
    let app = app(pool.clone());
    for (what, token) in near_misses(API_TOKEN) {
        let res = app.clone().oneshot(login(&token)).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(res.headers().get("set-cookie").is_none(), "{what}: no session");
    }
    let ok = app.clone().oneshot(login(API_TOKEN)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::SEE_OTHER, "the token itself logs in");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn webhooks_refuse_near_miss_secrets(pool: PgPool) {
    let app = app(pool.clone());
    let mr = serde_json::to_vec(&gitlab_mr("open", "feature/sec", &sha(2), T1)).unwrap();
    for (what, token) in near_misses(GITLAB_SECRET) {
        let uuid = uuid::Uuid::new_v4().to_string();
        let headers = [("x-gitlab-token", token.as_str()), ("x-gitlab-event-uuid", uuid.as_str())];
        let res = gitlab_raw(&app, "Merge Request Hook", &headers, mr.clone()).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "GitLab token: {what}");
    }
    let pr = serde_json::to_vec(&github_pr("opened", "feature/sec", &sha(3), T1)).unwrap();
    let good = sign(GITHUB_SECRET, &pr);
    let mut signatures: Vec<(&str, String)> =
        near_misses(GITHUB_SECRET).into_iter().map(|(what, s)| (what, sign(&s, &pr))).collect();
    signatures.push(("a truncated signature", good[..good.len() - 2].to_owned()));
    signatures.push(("sha1= instead of sha256=", good.replace("sha256=", "sha1=")));
    signatures.push(("the secret itself", format!("sha256={}", hex::encode(GITHUB_SECRET))));
    for (what, signature) in &signatures {
        let res = github_raw(&app, "pull_request", &delivery(), pr.clone(), Some(signature), "application/json").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "GitHub signature: {what}");
    }
    assert_eq!(count(&pool, "runs").await, 0);
}
