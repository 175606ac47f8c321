//! Private stands at the request level: `/access/check` as ingress-nginx calls it (cookie, access
//! token, unknown hosts), `/access/start`'s guard against sending people elsewhere, and the
//! callback's binding to the browser that started the sign-in. The whole flow through nginx, the
//! forge fakes' OAuth and Chromium is in tests/it/access_browser.rs.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use draftd::config::{Config, ForgeKind, Projects};
use draftd::credentials::access::{AccessKey, Grant, Grants};
use draftd::http::{AppState, router};
use draftd::stand::{RunId, StandId};
use secrecy::SecretString;
use sqlx::PgPool;
use tower::ServiceExt;

pub const KEY: &str = "access-test-key-8d1f0c3b5a7e9d2f4b6a8c0e1d3f5a7b";
pub const HOST: &str = "draft-login.stands.test";

pub fn config(extra: &str, github_url: &str) -> Config {
    config_with(extra, github_url, "")
}

/// As [`config`], with `shop` (the private project) given more keys.
pub fn config_with(extra: &str, github_url: &str, shop: &str) -> Config {
    Config::from_toml(&format!(
        r#"public_url = "https://draftd.stands.test"
[github]
api_url = "{github_url}"
[access]
url = "https://access.stands.test"
cookie_domain = "stands.test"
key_env = "ACCESS_KEY"
recheck = "10m"
[access.github]
client_id = "Iv1.draftd"
client_secret_env = "GH_CLIENT_SECRET"
url = "{github_url}"
{extra}
[[projects]]
name = "shop"
forge = "github"
repo = "acme/shop"
webhook_secret_env = "X"
host = "{{stand}}.stands.test"
{shop}
[[projects]]
name = "docs"
forge = "github"
repo = "acme/docs"
webhook_secret_env = "X"
host = "{{stand}}.docs.stands.test"
access = "public"
"#
    ))
    .unwrap()
}

pub fn projects(config: &Config) -> Projects {
    Projects::resolve_with(config, |var| match var {
        "ACCESS_KEY" => Some(KEY.into()),
        "GH_CLIENT_SECRET" => Some("gh-client-secret-0b9a8c7d".into()),
        _ => Some("x".into()),
    })
    .unwrap()
}

pub fn key() -> AccessKey {
    AccessKey::new(&SecretString::from(KEY)).unwrap()
}

pub async fn stand(pool: &PgPool, project: &str, namespace: &str) -> StandId {
    sqlx::query_scalar(
        "insert into stands (project, branch, namespace, state) values ($1, $2, $3, 'active') returning stand_id",
    )
    .bind(project)
    .bind(format!("feature/{namespace}"))
    .bind(namespace)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A run of `stand` whose access token the stand now takes, as its secrets step leaves it.
pub async fn token_run(pool: &PgPool, stand: StandId, number: i32) -> RunId {
    let run: RunId = sqlx::query_scalar(
        "insert into runs (stand_id, number, kind, trigger, automatic, epoch, sha, state) values ($1, $2, 'deploy', 'push', true, 0, 'abc' || $2, 'succeeded') returning run_id",
    )
    .bind(stand)
    .bind(number)
    .fetch_one(pool)
    .await
    .unwrap();
    draftd::store::access::set_token_run(pool, stand, run).await.unwrap();
    run
}

fn app(pool: PgPool) -> Router {
    let config = config("", "http://127.0.0.1:9");
    let state = AppState::new(&config, projects(&config), pool);
    state.set_migrated();
    router(state)
}

async fn check(app: &Router, host: &str, cookie: Option<&str>, token: Option<&str>) -> StatusCode {
    let mut req = Request::get("/access/check").header("x-original-url", format!("https://{host}/orders?id=1"));
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, format!("other=1; draftd_access={c}"));
    }
    if let Some(t) = token {
        req = req.header("x-draftd-access", t);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.headers().get(header::CACHE_CONTROL).map(|v| v.to_str().unwrap()), Some("no-store"));
    res.status()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn grant(repo: &str, until: i64) -> Grants {
    Grants::default().with(Grant { forge: ForgeKind::Github, repo: repo.into(), login: "alice".into(), until }, now())
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_private_stand_lets_in_a_signed_cookie_for_its_repository_and_sends_everyone_else_to_sign_in(pool: PgPool) {
    stand(&pool, "shop", "draft-login").await;
    let app = app(pool);
    assert_eq!(check(&app, HOST, None, None).await, StatusCode::UNAUTHORIZED, "no cookie: sign in");
    let good = key().seal(&grant("acme/shop", now() + 600));
    assert_eq!(check(&app, HOST, Some(&good), None).await, StatusCode::OK);
    assert_eq!(
        check(&app, "DRAFT-LOGIN.stands.test:443", Some(&good), None).await,
        StatusCode::OK,
        "host in any case, with a port"
    );
    let expired = key().seal(&grant("acme/shop", now() - 1));
    assert_eq!(check(&app, HOST, Some(&expired), None).await, StatusCode::UNAUTHORIZED, "an expired grant");
    let other_repo = key().seal(&grant("acme/other", now() + 600));
    assert_eq!(check(&app, HOST, Some(&other_repo), None).await, StatusCode::UNAUTHORIZED, "another repository's");
    // Tampered: the payload of another cookie under this one's MAC.
    let (_, mac) = good.rsplit_once('.').unwrap();
    let (forged_head, _) = other_repo.rsplit_once('.').unwrap();
    let forged = format!("{forged_head}.{mac}");
    assert_eq!(check(&app, HOST, Some(&forged), None).await, StatusCode::UNAUTHORIZED, "tampered");
    let foreign = AccessKey::new(&SecretString::from("z".repeat(40))).unwrap().seal(&grant("acme/shop", now() + 600));
    assert_eq!(check(&app, HOST, Some(&foreign), None).await, StatusCode::UNAUTHORIZED, "another key's");
    assert_eq!(check(&app, "nothing.stands.test", Some(&good), None).await, StatusCode::FORBIDDEN, "no such stand");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_check_answers_the_signed_in_login_for_the_app(pool: PgPool) {
    stand(&pool, "shop", "draft-login").await;
    let app = app(pool);
    let good = key().seal(&grant("acme/shop", now() + 600));
    let req = Request::get("/access/check")
        .header("x-original-url", format!("https://{HOST}/"))
        .header(header::COOKIE, format!("draftd_access={good}"))
        .body(Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-draftd-user"], "alice");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_public_projects_stand_lets_everyone_in(pool: PgPool) {
    stand(&pool, "docs", "draft-guide").await;
    let app = app(pool);
    assert_eq!(check(&app, "draft-guide.docs.stands.test", None, None).await, StatusCode::OK);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn only_the_current_runs_access_token_lets_a_program_in_and_each_use_is_audited(pool: PgPool) {
    let id = stand(&pool, "shop", "draft-login").await;
    let other = stand(&pool, "shop", "draft-other").await;
    let first = token_run(&pool, id, 1).await;
    let app = app(pool.clone());
    let first_token = key().token(id, first);
    assert_eq!(check(&app, HOST, None, Some(first_token.expose())).await, StatusCode::OK);
    // A new run hands out a new token: the old one stops at once (the check refreshes for a newer run).
    let second = token_run(&pool, id, 2).await;
    let second_token = key().token(id, second);
    assert_eq!(check(&app, HOST, None, Some(second_token.expose())).await, StatusCode::OK);
    assert_eq!(check(&app, HOST, None, Some(first_token.expose())).await, StatusCode::FORBIDDEN, "an old run's token");
    let others = key().token(other, token_run(&pool, other, 1).await);
    assert_eq!(check(&app, HOST, None, Some(others.expose())).await, StatusCode::FORBIDDEN, "another stand's");
    assert_eq!(check(&app, HOST, None, Some("da1.1.1.AAAA")).await, StatusCode::FORBIDDEN, "forged");
    // A token is never a cookie, nor the other way round.
    assert_eq!(check(&app, HOST, Some(second_token.expose()), None).await, StatusCode::UNAUTHORIZED);
    let mut audited = Vec::new();
    for _ in 0..50 {
        audited = sqlx::query_as::<_, (String, Option<i64>)>(
            "select action, run_id from audit where action like 'access.token%' order by audit_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if audited.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(audited.contains(&("access.token_used".into(), Some(first.get()))), "{audited:?}");
    assert!(audited.contains(&("access.token_used".into(), Some(second.get()))), "{audited:?}");
    assert!(audited.contains(&("access.token_refused".into(), Some(first.get()))), "{audited:?}");
    // Once per stand, run and outcome, not per request.
    assert_eq!(check(&app, HOST, None, Some(second_token.expose())).await, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let used: i64 = sqlx::query_scalar("select count(*) from audit where action = 'access.token_used' and run_id = $1")
        .bind(second)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(used, 1);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn sign_in_starts_only_for_a_stands_url_and_ties_the_flow_to_the_browser(pool: PgPool) {
    stand(&pool, "shop", "draft-login").await;
    let app = app(pool.clone());
    for rd in ["https://evil.example.com/", "javascript:alert(1)", "https://stands.test.evil.example/"] {
        let uri =
            format!("/access/start?rd={}", url::form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>());
        let res = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{rd}");
        assert!(res.headers().get(header::LOCATION).is_none());
    }
    let rd = format!("https://{HOST}/orders?id=1");
    let uri = format!("/access/start?rd={}", url::form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>());
    let res = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    let to = url::Url::parse(res.headers()[header::LOCATION].to_str().unwrap()).unwrap();
    assert_eq!(to.path(), "/login/oauth/authorize");
    let q: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], "Iv1.draftd");
    assert_eq!(q["redirect_uri"], "https://access.stands.test/access/callback");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(!to.as_str().contains("gh-client-secret"), "the secret never goes to the browser");
    let set_cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set_cookie.starts_with(&format!("draftd_access_state={}", q["state"])), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("Secure") && set_cookie.contains("SameSite=Lax"));
    let (flows, rd_kept): (i64, String) =
        sqlx::query_as("select count(*), max(rd) from access_flows").fetch_one(&pool).await.unwrap();
    assert_eq!((flows, rd_kept.as_str()), (1, rd.as_str()));

    // The forge's redirect reaching another browser (no state cookie, or another one) signs nobody in.
    for cookie in [None, Some("draftd_access_state=someone-elses")] {
        let mut req = Request::get(format!("/access/callback?code=abc&state={}", q["state"]));
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(res.headers().get(header::SET_COOKIE).is_none());
    }
    let flows: i64 = sqlx::query_scalar("select count(*) from access_flows").fetch_one(&pool).await.unwrap();
    assert_eq!(flows, 1, "a refused callback does not use up the flow");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn without_access_configured_the_endpoints_say_so(pool: PgPool) {
    let app = crate::support::app(pool);
    let req = Request::get("/access/check").header("x-original-url", "https://x.test/").body(Body::empty()).unwrap();
    assert_eq!(app.oneshot(req).await.unwrap().status(), StatusCode::NOT_FOUND);
}

/// Dry-run mode: a private project's run renders the Ingress with ingress-nginx's external-auth
/// annotations, hands its stand a new access token (recorded with its value redacted), and from
/// then on only that run's token is the stand's.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_private_stands_run_renders_the_auth_annotations_and_hands_out_its_own_token(pool: PgPool) {
    use draftd::helm::HelmCli;
    use draftd::pipeline::steps::DryRunSteps;
    use draftd::pipeline::{Engine, EngineSettings, RunEnd};
    use std::sync::Arc;

    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let stands = dir.path().join("stands");
    let r = root.display();
    let config = config_with(
        &format!(
            "[cluster]\nmode = \"dry-run\"\ndry_run_dir = \"{}\"\nhelm_path = \"{r}/.tools/bin/helm\"\n",
            stands.display(),
        ),
        "http://127.0.0.1:9",
        &format!(
            "image = \"registry.example.com/acme/shop\"\nchart = \"{r}/charts/stand\"\nvalues = [\"{r}/values/draft.yaml\"]"
        ),
    );
    let state = AppState::new(&config, projects(&config), pool.clone());
    let key = state.access().unwrap().key.clone();
    let config = Arc::new(config);
    let helm = HelmCli::from_config(&config.cluster, &root).unwrap();
    let steps = DryRunSteps::new(pool.clone(), config.clone(), Arc::new(helm)).with_access(Some(key.clone()));
    let settings = EngineSettings { max_step_attempts: 1, ..EngineSettings::default() };
    let engine = Engine::new(pool.clone(), Arc::new(steps), settings, "access-test");
    let namespace = "draft-login";
    let mut runs = Vec::new();
    for sha in ["a", "b"] {
        let id = crate::support::queue_run(&pool, "shop", "feature/login", namespace, "deploy", &sha.repeat(40)).await;
        let (claimed, end) = engine.run_one().await.unwrap().expect("a run to claim");
        assert_eq!((claimed, end), (id, RunEnd::Succeeded));
        runs.push(id);
    }
    let folder = stands.join(namespace);
    let manifests = std::fs::read_to_string(folder.join("manifests.yaml")).unwrap();
    for line in [
        "nginx.ingress.kubernetes.io/auth-url: https://access.stands.test/access/check",
        "nginx.ingress.kubernetes.io/auth-signin: https://access.stands.test/access/start",
        "nginx.ingress.kubernetes.io/auth-response-headers: X-Draftd-User",
    ] {
        assert!(manifests.contains(line), "{line} in:\n{manifests}");
    }
    let secrets = std::fs::read_to_string(folder.join("secrets.json")).unwrap();
    assert!(secrets.contains("draftd-access") && secrets.contains("DRAFTD_ACCESS_TOKEN"), "{secrets}");
    let (stand, token_run): (StandId, Option<RunId>) =
        sqlx::query_as("select stand_id, access_run_id from stands").fetch_one(&pool).await.unwrap();
    assert_eq!(token_run, Some(runs[1]), "the newest run's token is the stand's");
    let everything = walk(&folder);
    for run in &runs {
        let token = key.token(stand, *run);
        assert!(!everything.contains(token.expose()), "a token's value never reaches the dry-run folder");
    }
}

fn walk(dir: &std::path::Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.push_str(&walk(&path));
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            all.push_str(&text);
        }
    }
    all
}

/// An approved fork's stand is private even in a public project: reviewed code, not the project's.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_fork_stand_of_a_public_project_that_approves_forks_is_private(pool: PgPool) {
    let config = config_with("", "http://127.0.0.1:9", "");
    let mut config = config;
    config.projects[1].forks = draftd::config::ForkPolicy::Approve;
    let state = AppState::new(&config, projects(&config), pool.clone());
    state.set_migrated();
    let app = router(state);
    stand(&pool, "docs", "draft-guide").await;
    let fork = stand(&pool, "docs", "draft-from-fork").await;
    sqlx::query("update stands set fork = true where stand_id = $1").bind(fork).execute(&pool).await.unwrap();
    assert_eq!(check(&app, "draft-guide.docs.stands.test", None, None).await, StatusCode::OK, "the project's own");
    assert_eq!(
        check(&app, "draft-from-fork.docs.stands.test", None, None).await,
        StatusCode::UNAUTHORIZED,
        "the fork's"
    );
    let reader = key().seal(&grant("acme/docs", now() + 600));
    assert_eq!(check(&app, "draft-from-fork.docs.stands.test", Some(&reader), None).await, StatusCode::OK);
}
