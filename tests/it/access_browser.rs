//! The sign-in flow end to end: real nginx doing what ingress-nginx does for a private stand's
//! Ingress (auth_request to draftd's `/access/check`, 401 → `/access/start?rd=…`, over https so the
//! browser keeps a `Secure` cookie), draftd's own pages behind nginx on `access.stands.test`, the
//! fake GitHub and GitLab as OAuth providers, and a local app behind the gate.
//!
//! - Chromium (GitHub): a reader signs in and reaches the app; someone who cannot read the
//!   repository gets draftd's refusal page and never the app.
//! - reqwest through nginx: a tampered or expired cookie is sent to sign in, the current run's
//!   access token gets through and an old run's does not, and the GitLab flow by hand.

use draftd::config::ForgeKind;
use draftd::credentials::access::{Grant, Grants};
use draftd::http::{AppState, router};
use fantoccini::Locator;
use reqwest::StatusCode;
use sqlx::PgPool;

use super::access::{config_with, key, stand, token_run};
use super::dashboard_browser::{Chromedriver, artifacts, chromedriver, connect_with, text_when};
use crate::support::forge_fake::{Fake, GITLAB_REPO};
use crate::support::nginx_auth::{Gate, GatedNginx};

const STAND_HOST: &str = "draft-login.stands.test";
const ACCESS_HOST: &str = "access.stands.test";
const APP_TEXT: &str = "Hello from the private stand";
const CLIENT_ID: &str = "Iv1.draftd";
const CLIENT_SECRET: &str = "gh-client-secret-0b9a8c7d";

/// draftd, the app and nginx in front of both.
struct Setup {
    nginx: GatedNginx,
    state: AppState,
}

impl Setup {
    fn url(&self, path: &str) -> String {
        self.nginx.https_url(STAND_HOST, path)
    }

    /// A client that resolves the test hosts to nginx, takes its self-signed certificate and follows nothing.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .resolve(STAND_HOST, self.nginx.addr())
            .resolve(ACCESS_HOST, self.nginx.addr())
            .danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }
}

async fn serve(router: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

/// `forge`'s fake serves sign-in; the project `shop` lives there, private, host `{stand}.stands.test`.
async fn setup(pool: &PgPool, fake: &Fake, forge: ForgeKind) -> Setup {
    let app_port = serve(axum::Router::new().fallback(|| async { APP_TEXT })).await;
    let draftd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let draftd_port = draftd.local_addr().unwrap().port();
    let nginx = GatedNginx::start(&Gate {
        server_name: STAND_HOST.into(),
        auth_url: format!("http://127.0.0.1:{draftd_port}/access/check"),
        // nginx's own port, as ingress-nginx would have the public one.
        signin_url: format!("https://{ACCESS_HOST}:$server_port/access/start"),
        upstream: format!("127.0.0.1:{app_port}"),
        tls: true,
        passthrough: vec![(ACCESS_HOST.into(), format!("127.0.0.1:{draftd_port}"))],
    });
    let callback = format!("https://{ACCESS_HOST}:{}/access/callback", nginx.port);
    let (extra, shop) = match forge {
        ForgeKind::Github => {
            fake.gh_register_app_client(CLIENT_ID, CLIENT_SECRET, &callback);
            (String::new(), String::new())
        }
        ForgeKind::Gitlab => {
            fake.register_oauth_app(CLIENT_ID, CLIENT_SECRET, &callback);
            let gitlab = format!(
                "[access.gitlab]\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"GH_CLIENT_SECRET\"\n[gitlab]\nurl = \"{}\"\n",
                fake.url()
            );
            (gitlab, String::new())
        }
    };
    let mut config = config_with(&extra, &fake.url(), &shop);
    let access = config.access.as_mut().unwrap();
    access.url = format!("https://{ACCESS_HOST}:{}", nginx.port);
    if forge == ForgeKind::Gitlab {
        config.projects[0].repo = GITLAB_REPO.into();
        config.projects[0].forge = ForgeKind::Gitlab;
    }
    let state = AppState::new(&config, super::access::projects(&config), pool.clone());
    state.set_migrated();
    let app = router(state.clone());
    tokio::spawn(async move { axum::serve(draftd, app).await });
    Setup { nginx, state }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_reader_signs_in_with_github_and_reaches_the_app_and_someone_else_is_refused_in_chromium(pool: PgPool) {
    if std::env::var("DRAFTD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipped: DRAFTD_SKIP_BROWSER=1 (the sign-in browser test did not run)");
        return;
    }
    let driver_path = chromedriver();
    let fake = Fake::start(ForgeKind::Github).await;
    fake.gh_grant("acme/shop", "alice", "read");
    stand(&pool, "shop", "draft-login").await;
    let setup = setup(&pool, &fake, ForgeKind::Github).await;
    let dir = tempfile::tempdir().unwrap();
    let driver = Chromedriver::start(&driver_path, dir.path()).await;
    let args = [
        "--host-resolver-rules=MAP *.stands.test 127.0.0.1".to_owned(),
        // nginx's certificate is self-signed; the cookie's `Secure` still needs https.
        "--ignore-certificate-errors".to_owned(),
    ];

    // alice can read acme/shop: GitHub sends her straight back, draftd sets the cookie, the app answers.
    fake.oauth_sign_in("alice");
    let client = connect_with(&driver, &dir.path().join("alice"), &args).await;
    client.goto(&setup.url("/orders/42?tab=items")).await.unwrap();
    let body = text_when(&client, "body", |t| t.contains(APP_TEXT)).await;
    assert!(body.contains(APP_TEXT), "{body}");
    let at = client.current_url().await.unwrap();
    assert_eq!(
        (at.host_str(), at.path(), at.query()),
        (Some(STAND_HOST), "/orders/42", Some("tab=items")),
        "back where she asked"
    );
    let cookies = client.get_all_cookies().await.unwrap();
    let access = cookies.iter().find(|c| c.name() == "draftd_access").expect("the access cookie");
    let domain = access.domain().map(|d| d.trim_start_matches('.'));
    assert_eq!(domain, Some("stands.test"), "for every stand's host");
    assert_eq!((access.http_only(), access.secure()), (Some(true), Some(true)));
    // A second visit asks nobody: the cookie alone lets her in.
    let authorizes = fake.oauth_authorize_requests().len();
    client.goto(&setup.url("/")).await.unwrap();
    text_when(&client, "body", |t| t.contains(APP_TEXT)).await;
    assert_eq!(fake.oauth_authorize_requests().len(), authorizes);
    let _ = std::fs::write(artifacts().join("access-signed-in.png"), client.screenshot().await.unwrap());
    client.close().await.unwrap();

    // bob cannot read it: draftd's refusal page, and never the app.
    fake.oauth_sign_in("bob");
    let client = connect_with(&driver, &dir.path().join("bob"), &args).await;
    client.goto(&setup.url("/orders/42")).await.unwrap();
    let page = text_when(&client, "body", |t| t.contains("cannot read")).await;
    assert!(page.contains("bob") && page.contains("acme/shop") && !page.contains(APP_TEXT), "{page}");
    let _ = std::fs::write(artifacts().join("access-refused.png"), client.screenshot().await.unwrap());
    assert!(client.find(Locator::Css("body")).await.is_ok());
    client.close().await.unwrap();

    let actions: Vec<(String, String)> =
        sqlx::query_as("select action, actor from audit where action like 'access.%' order by audit_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        actions,
        vec![("access.signed_in".into(), "github:alice".into()), ("access.refused".into(), "github:bob".into())]
    );
    // draftd sent the verifier and its secret in the body, never in the browser's URL.
    let tokens = fake.oauth_token_requests();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    for a in fake.oauth_authorize_requests() {
        assert!(!a.values().any(|v| v.contains(CLIENT_SECRET)), "{a:?}");
        assert_eq!(a.get("code_challenge_method").map(String::as_str), Some("S256"));
    }
    drop(setup);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn through_nginx_a_tampered_or_expired_cookie_signs_in_again_and_only_the_current_runs_token_passes(
    pool: PgPool,
) {
    let fake = Fake::start(ForgeKind::Github).await;
    let id = stand(&pool, "shop", "draft-login").await;
    let first = token_run(&pool, id, 1).await;
    let setup = setup(&pool, &fake, ForgeKind::Github).await;
    let client = setup.client();
    let get = |cookie: Option<String>, token: Option<String>| {
        let mut req = client.get(setup.url("/orders"));
        if let Some(c) = cookie {
            req = req.header("cookie", format!("draftd_access={c}"));
        }
        if let Some(t) = token {
            req = req.header("x-draftd-access", t);
        }
        req.send()
    };
    let now = chrono::Utc::now().timestamp();
    let grants = |until| {
        Grants::default()
            .with(Grant { forge: ForgeKind::Github, repo: "acme/shop".into(), login: "alice".into(), until }, now)
    };
    let good = key().seal(&grants(now + 600));
    let res = get(Some(good.clone()), None).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), APP_TEXT);
    let expired = key().seal(&grants(now - 5));
    let mut tampered = good.clone();
    tampered.insert(5, if tampered.as_bytes()[5] == b'A' { 'B' } else { 'A' });
    for (what, cookie) in [("no", None), ("an expired", Some(expired)), ("a tampered", Some(tampered))] {
        let res = get(cookie, None).await.unwrap();
        assert_eq!(res.status(), StatusCode::FOUND, "{what} cookie");
        let to = res.headers()["location"].to_str().unwrap();
        // ingress-nginx's `rd`: scheme and host as they are, the path escaped.
        let port = setup.nginx.port;
        let expected = format!("https://{ACCESS_HOST}:{port}/access/start?rd=https://{STAND_HOST}:{port}%2Forders");
        assert!(to.starts_with(&expected), "{what} cookie: sent to {to}");
    }
    let first_token = key().token(id, first).expose().to_owned();
    let res = get(None, Some(first_token.clone())).await.unwrap();
    assert_eq!((res.status(), res.text().await.unwrap().as_str()), (StatusCode::OK, APP_TEXT));
    let second = token_run(&pool, id, 2).await;
    let second_token = key().token(id, second).expose().to_owned();
    assert_eq!(get(None, Some(second_token)).await.unwrap().status(), StatusCode::OK);
    let res = get(None, Some(first_token)).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "an old run's token");
    assert!(!res.text().await.unwrap().contains(APP_TEXT));
    // The API shows the current token to holders of the API token.
    let shown = setup.state.access().unwrap().shown(id, "shop").await.unwrap().unwrap();
    assert_eq!(shown.token.as_deref(), Some(key().token(id, second).expose()));
}

/// The GitLab flow by hand, as a browser would follow it: start, authorize, callback, the app.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_gitlab_member_signs_in_and_reaches_the_app_and_a_stranger_is_refused(pool: PgPool) {
    let fake = Fake::start(ForgeKind::Gitlab).await;
    fake.gl_add_member(GITLAB_REPO, 42, "carol", 20);
    stand(&pool, "shop", "draft-login").await;
    let setup = setup(&pool, &fake, ForgeKind::Gitlab).await;
    let client = setup.client();
    let follow = |res: &reqwest::Response| res.headers()["location"].to_str().unwrap().to_owned();
    let state_cookie =
        |res: &reqwest::Response| {
            res.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
                c.split(';').next().filter(|kv| kv.starts_with("draftd_access_state=")).map(str::to_owned)
            })
        };
    for (who, readable) in [("carol", true), ("dave", false)] {
        fake.oauth_sign_in(who);
        let res = client.get(setup.url("/")).send().await.unwrap();
        let start = follow(&res);
        let res = client.get(&start).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FOUND);
        let flow = state_cookie(&res).expect("a state cookie");
        let authorize = follow(&res);
        assert!(authorize.starts_with(&format!("{}/oauth/authorize?", fake.url())), "{authorize}");
        assert!(authorize.contains("response_type=code") && authorize.contains("scope=read_api"), "{authorize}");
        let res = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let res = res.get(&authorize).send().await.unwrap();
        let callback = follow(&res);
        let res = client.get(&callback).header("cookie", &flow).send().await.unwrap();
        if readable {
            assert_eq!(res.status(), StatusCode::FOUND, "{}", res.text().await.unwrap());
            let cookie = res
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|c| c.starts_with("draftd_access="))
                .expect("the access cookie")
                .to_owned();
            assert!(cookie.contains("Domain=stands.test") && cookie.contains("HttpOnly") && cookie.contains("Secure"));
            let back = follow(&res);
            let value = cookie.split(';').next().unwrap().to_owned();
            let res = client.get(&back).header("cookie", value).send().await.unwrap();
            assert_eq!((res.status(), res.text().await.unwrap().as_str()), (StatusCode::OK, APP_TEXT));
        } else {
            assert_eq!(res.status(), StatusCode::FORBIDDEN);
            let page = res.text().await.unwrap();
            assert!(page.contains("dave") && page.contains("cannot read"), "{page}");
        }
    }
    let tokens = fake.oauth_token_requests();
    assert_eq!(tokens.len(), 2);
}

/// The same in Chromium with GitLab: a member signs in and reaches the app; a stranger is refused.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_gitlab_member_signs_in_in_chromium_and_a_stranger_is_refused(pool: PgPool) {
    if std::env::var("DRAFTD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipped: DRAFTD_SKIP_BROWSER=1 (the GitLab sign-in browser test did not run)");
        return;
    }
    let driver_path = chromedriver();
    let fake = Fake::start(ForgeKind::Gitlab).await;
    fake.gl_add_member(GITLAB_REPO, 42, "carol", 20);
    stand(&pool, "shop", "draft-login").await;
    let setup = setup(&pool, &fake, ForgeKind::Gitlab).await;
    let dir = tempfile::tempdir().unwrap();
    let driver = Chromedriver::start(&driver_path, dir.path()).await;
    let args =
        ["--host-resolver-rules=MAP *.stands.test 127.0.0.1".to_owned(), "--ignore-certificate-errors".to_owned()];
    for (who, readable) in [("carol", true), ("dave", false)] {
        fake.oauth_sign_in(who);
        let client = connect_with(&driver, &dir.path().join(who), &args).await;
        client.goto(&setup.url("/orders/7")).await.unwrap();
        if readable {
            let body = text_when(&client, "body", |t| t.contains(APP_TEXT)).await;
            assert!(body.contains(APP_TEXT), "{body}");
        } else {
            let page = text_when(&client, "body", |t| t.contains("cannot read")).await;
            assert!(page.contains("dave") && page.contains("GitLab") && !page.contains(APP_TEXT), "{page}");
        }
        client.close().await.unwrap();
    }
    let actions: Vec<String> =
        sqlx::query_scalar("select actor from audit where action like 'access.%' order by audit_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(actions, vec!["gitlab:carol".to_owned(), "gitlab:dave".to_owned()]);
}
