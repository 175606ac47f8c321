//! The ingress-nginx external-auth stand-in (tests/support/nginx_auth.rs) with a tiny auth stub
//! (200, 401 or 403 by cookie or access header) and a tiny app, through real nginx: what reaches
//! the auth URL, where 401 sends the person, and that 403 and other hosts never reach the app.

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::support::nginx_auth::{Gate, GatedNginx, signin_target};

const HOST: &str = "shop-pr-7.stands.test";
const SIGNIN: &str = "http://draftd.stands.test:8080/access/start";

/// What one server saw: (method, URI, headers, body).
type Seen = Arc<Mutex<Vec<(String, String, HeaderMap, Vec<u8>)>>>;

/// Serves `answer` on a free loopback port, recording each request; returns (port, requests).
async fn serve(answer: fn(&HeaderMap) -> Response) -> (u16, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec();
            let r = answer(&parts.headers);
            log.lock().unwrap().push((parts.method.to_string(), parts.uri.to_string(), parts.headers, body));
            r
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, seen)
}

/// Lets in `session=ok` and `X-Draftd-Access: run-2`, refuses `session=denied`, asks the rest to sign in.
fn check(h: &HeaderMap) -> Response {
    let cookie = h.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
    let access = h.get("x-draftd-access").and_then(|v| v.to_str().ok());
    if cookie.contains("session=ok") || access == Some("run-2") {
        (StatusCode::OK, [("set-cookie", "session=ok; Path=/; HttpOnly")], "").into_response()
    } else if cookie.contains("session=denied") {
        (StatusCode::FORBIDDEN, "draftd says no").into_response()
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

fn app(_: &HeaderMap) -> Response {
    (StatusCode::OK, "hello from the stand").into_response()
}

struct Setup {
    nginx: GatedNginx,
    auth: Seen,
    app: Seen,
    client: reqwest::Client,
}

async fn setup(signin: &str) -> Setup {
    let (auth_port, auth) = serve(check).await;
    let (app_port, app_seen) = serve(app).await;
    let nginx = GatedNginx::start(&Gate {
        server_name: HOST.into(),
        auth_url: format!("http://127.0.0.1:{auth_port}/access/check"),
        signin_url: signin.into(),
        upstream: format!("127.0.0.1:{app_port}"),
        tls: false,
        passthrough: Vec::new(),
    });
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(HOST, nginx.addr())
        .resolve("other.stands.test", nginx.addr())
        .build()
        .unwrap();
    Setup { nginx, auth, app: app_seen, client }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[tokio::test]
async fn the_gate_asks_the_auth_url_without_the_body_and_lets_allowed_requests_through() {
    let s = setup(SIGNIN).await;
    let url = s.nginx.url(HOST, "/orders/42?tab=items&x=1");
    let r = s.client.post(&url).header("cookie", "session=ok; theme=dark").body("order=1").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", s.nginx.error_log());
    assert_eq!(
        header(r.headers(), "set-cookie").as_deref(),
        Some("session=ok; Path=/; HttpOnly"),
        "the auth answer's cookie"
    );
    assert_eq!(r.text().await.unwrap(), "hello from the stand");

    let auth = s.auth.lock().unwrap();
    let (method, uri, h, body) = &auth[0];
    assert_eq!((method.as_str(), uri.as_str()), ("GET", "/access/check"), "auth_request sends a GET");
    assert!(body.is_empty() && header(h, "content-length").is_none(), "no body goes to the auth URL");
    assert_eq!(header(h, "x-original-url"), Some(format!("http://{HOST}:{}/orders/42?tab=items&x=1", s.nginx.port)));
    assert_eq!(header(h, "x-original-method").as_deref(), Some("POST"));
    assert_eq!(header(h, "x-auth-request-redirect").as_deref(), Some("/orders/42?tab=items&x=1"));
    assert_eq!(header(h, "x-sent-from").as_deref(), Some("nginx-ingress-controller"));
    assert_eq!(header(h, "cookie").as_deref(), Some("session=ok; theme=dark"));
    assert_eq!(header(h, "host").as_deref(), Some("127.0.0.1"));
    assert!(header(h, "x-request-id").is_some() && header(h, "x-forwarded-for").is_some());

    let app = s.app.lock().unwrap();
    let (method, uri, h, body) = &app[0];
    assert_eq!((method.as_str(), uri.as_str(), body.as_slice()), ("POST", "/orders/42?tab=items&x=1", &b"order=1"[..]));
    assert_eq!(header(h, "host"), Some(format!("{HOST}:{}", s.nginx.port)));
    assert!(s.nginx.access_log().contains("status=200"), "{}", s.nginx.access_log());
}

#[tokio::test]
async fn the_gate_sends_people_without_a_session_to_sign_in_with_the_original_url() {
    let s = setup(SIGNIN).await;
    let r = s.client.get(s.nginx.url(HOST, "/orders/42?tab=items&x=1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "{}", s.nginx.error_log());
    let location = header(r.headers(), "location").unwrap();
    // ingress-nginx: rd=$scheme://$http_host$escaped_request_uri, the URI escaped by set_escape_uri.
    let port = s.nginx.port;
    assert_eq!(location, format!("{SIGNIN}?rd=http://{HOST}:{port}%2Forders%2F42%3Ftab%3Ditems%26x%3D1"));
    let rd: Vec<(String, String)> = url::Url::parse(&location).unwrap().query_pairs().into_owned().collect();
    assert_eq!(rd, [("rd".to_owned(), format!("http://{HOST}:{port}/orders/42?tab=items&x=1"))]);
    assert!(s.app.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_sign_in_url_with_its_own_query_gets_rd_appended_or_kept() {
    assert_eq!(
        signin_target("http://d/access/start?project=shop"),
        "http://d/access/start?project=shop&rd=$pass_access_scheme://$http_host$escaped_request_uri"
    );
    assert_eq!(
        signin_target("http://d/access/start?rd=$escaped_request_uri"),
        "http://d/access/start?rd=$escaped_request_uri"
    );
    let s = setup("http://draftd.stands.test:8080/access/start?project=shop").await;
    let r = s.client.get(s.nginx.url(HOST, "/")).send().await.unwrap();
    let location = header(r.headers(), "location").unwrap();
    assert_eq!(
        location,
        format!("http://draftd.stands.test:8080/access/start?project=shop&rd=http://{HOST}:{}%2F", s.nginx.port)
    );
}

#[tokio::test]
async fn the_gate_answers_403_for_refused_people_and_lets_an_access_header_through() {
    let s = setup(SIGNIN).await;
    let r = s.client.get(s.nginx.url(HOST, "/")).header("cookie", "session=denied").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!r.text().await.unwrap().contains("draftd says no"), "nginx shows its own 403 page, not the auth answer");
    assert!(s.app.lock().unwrap().is_empty(), "a refused request never reaches the app");

    let r = s.client.get(s.nginx.url(HOST, "/health")).header("x-draftd-access", "run-1").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "an old run's access token is no session");
    let r = s.client.get(s.nginx.url(HOST, "/health")).header("x-draftd-access", "run-2").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&s.auth.lock().unwrap().last().unwrap().2, "x-draftd-access").as_deref(), Some("run-2"));

    let r = s.client.get(s.nginx.url("other.stands.test", "/")).header("cookie", "session=ok").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "only the stand's host is served");
    assert_eq!(s.app.lock().unwrap().len(), 1);
}
