//! The dashboard in a real browser: Debian's chromium, headless, driven over WebDriver (chromedriver)
//! by fantoccini, against the real router served on 127.0.0.1 over a per-test Postgres. Log in, find
//! the stand the recorded webhook made, press Re-run and Destroy, and keep a screenshot.
//!
//! `scripts/install-browser.sh` installs chromium and chromedriver when they are missing; when it
//! cannot, the test fails and says why. `DRAFTD_SKIP_BROWSER=1` skips it, saying so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use draftd::config::Config;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use sqlx::PgPool;

use crate::support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Long enough for a cold chromium start on a busy CI machine.
const WAIT: Duration = Duration::from_secs(30);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// chromedriver's path, installing chromium and chromedriver first when they are missing.
pub(crate) fn chromedriver() -> PathBuf {
    let script = root().join("scripts/install-browser.sh");
    let out = Command::new("bash").arg(&script).stderr(Stdio::piped()).output().expect("running bash");
    assert!(
        out.status.success(),
        "the dashboard's browser test needs chromium and chromedriver, and {} could not install them:\n{}\n\
         Install Debian's chromium and chromium-driver packages, or set DRAFTD_SKIP_BROWSER=1 to skip this test.",
        script.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(path.is_file(), "install-browser.sh printed {path:?}, which is not a file");
    assert!(Path::new(CHROMIUM).is_file(), "{CHROMIUM} is missing although install-browser.sh succeeded");
    path
}

/// A chromedriver on a free loopback port; on drop it is stopped with every process it started
/// (chromium and its helpers), by process id.
pub(crate) struct Chromedriver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Chromedriver {
    pub(crate) async fn start(path: &Path, dir: &Path) -> Chromedriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.join("chromedriver.log");
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        let driver = Chromedriver { child, port, log };
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port}:\n{}", driver.log_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let pid = self.child.id();
        // Chromium may leave its process group; walking the process tree finds every descendant.
        let mut pids = descendants(pid);
        pids.push(pid);
        signal("TERM", &pids);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
            let _ = self.child.try_wait();
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("KILL", &pids.iter().copied().filter(|p| alive(*p)).collect::<Vec<_>>());
        let _ = self.child.wait();
    }
}

/// Every process below `pid`, from `/proc/<pid>/stat` (`pid (comm) state ppid …`).
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| {
                    let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                    let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
                    Some((p, ppid))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![];
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (child, _) in parents.iter().filter(|(_, pp)| *pp == parent) {
            found.push(*child);
            frontier.push(*child);
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes; its parent reaps it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

fn signal(name: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// Where the screenshot goes: `$CARGO_TARGET_DIR/artifacts/`, else `target/artifacts/`.
pub(crate) fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

pub(crate) async fn connect(driver: &Chromedriver, profile: &Path) -> Client {
    connect_with(driver, profile, &[]).await
}

/// As [`connect`], with Chromium's `extra` arguments (host resolver rules, certificate errors).
pub(crate) async fn connect_with(driver: &Chromedriver, profile: &Path, extra: &[String]) -> Client {
    let mut args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--window-size=1280,1400",
    ]
    .map(str::to_owned)
    .to_vec();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.extend(extra.iter().cloned());
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": args,
        }),
    );
    // chromedriver speaks plain HTTP on loopback: no TLS connector needed.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| panic!("no WebDriver session: {e}\n{}", driver.log_tail()))
}

/// The text of the first `css` element once `ready` accepts it. A click returns before the next page
/// has loaded, so the old page may still answer (or its elements go stale) for a moment.
pub(crate) async fn text_when(client: &Client, css: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if ready(&text) {
                return text;
            }
            last = text;
        }
        assert!(Instant::now() < deadline, "{css} never became ready; last seen: {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_text(client: &Client, css: &str, expected: &str) {
    text_when(client, css, |t| t == expected).await;
}

/// Clicks the button labelled `label`, and waits for the page it leads to to say `queued`.
async fn press(client: &Client, label: &str, queued: &str) {
    let xpath = format!("//form[@method='post']/button[normalize-space()='{label}']");
    client
        .find(Locator::XPath(&xpath))
        .await
        .unwrap_or_else(|e| panic!("no {label} button: {e}"))
        .click()
        .await
        .unwrap();
    wait_for_text(client, "p[role=status]", queued).await;
}

/// The dashboard's router served on 127.0.0.1, its `public_url` its own address: one host
/// throughout, as the cookie is Secure (loopback counts as secure) and bound to this host.
async fn serve(pool: &PgPool) -> (String, axum::Router, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let config = Config::from_toml(&format!("public_url = \"{base}\"\n{CONFIG}")).unwrap();
    let app = app_with(pool.clone(), &config);
    let server = tokio::spawn({
        let app = app.clone();
        async move { axum::serve(listener, app).await }
    });
    (base, app, server)
}

/// Fills the login form in with the API token and sends it.
async fn submit_token(client: &Client) {
    client.find(Locator::Css("input[name=token]")).await.unwrap().send_keys(API_TOKEN).await.unwrap();
    client.find(Locator::Css("form[action='/login'] button")).await.unwrap().click().await.unwrap();
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn log_in_rerun_and_destroy_in_chromium(pool: PgPool) {
    if std::env::var("DRAFTD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipped: DRAFTD_SKIP_BROWSER=1 (the dashboard's real-browser test did not run)");
        return;
    }
    let driver_path = chromedriver();
    let (base, app, server) = serve(&pool).await;
    let payload = github_pr("opened", "feature/browser", &sha(1), "2019-05-15T15:20:33Z");
    let seeded = github(&app, "pull_request", &uuid::Uuid::new_v4().to_string(), &payload).await;
    let id = seeded.body["stand"].as_i64().expect("a stand from the webhook");

    let dir = tempfile::tempdir().unwrap();
    let driver = Chromedriver::start(&driver_path, dir.path()).await;
    let client = connect(&driver, &dir.path().join("profile")).await;

    client.goto(&format!("{base}/stands")).await.unwrap();
    let url = client.current_url().await.unwrap();
    assert_eq!((url.path(), url.query()), ("/login", Some("next=%2Fstands")), "redirected to the login form");
    submit_token(&client).await;
    wait_for_text(&client, "h1", "Stands").await;
    assert_eq!(client.current_url().await.unwrap().path(), "/stands");
    let cookie = client.get_named_cookie("draftd_session").await.expect("the session cookie is kept");
    assert_eq!((cookie.secure(), cookie.http_only()), (Some(true), Some(true)), "Secure works on loopback");

    wait_for_text(&client, "table caption", "1 stand").await;
    client.find(Locator::LinkText("feature/browser")).await.unwrap().click().await.unwrap();
    wait_for_text(&client, "h1", "hello-world / feature/browser").await;
    assert_eq!(client.current_url().await.unwrap().path(), format!("/stands/{id}"));

    press(&client, "Re-run", "Run #2 (deploy) queued.").await;
    let newest = client.find(Locator::Css("main > table tbody tr")).await.unwrap();
    let mut cells = Vec::new();
    for cell in newest.find_all(Locator::Css("th, td")).await.unwrap().iter().take(5) {
        cells.push(cell.text().await.unwrap());
    }
    assert_eq!(cells, ["#2", "deploy", "dashboard", "dashboard", "queued"], "the newest run, queued from here");

    press(&client, "Destroy", "Run #3 (teardown) queued.").await;
    let summary = text_when(&client, "dl", |t| t.contains("closing")).await;
    assert!(summary.contains("Draft stand being removed"), "{summary}");
    assert!(summary.contains("closing (dashboard)"), "{summary}");
    assert!(client.find(Locator::XPath("//button[normalize-space()='Destroy']")).await.is_err(), "no more buttons");

    let png = client.screenshot().await.unwrap();
    let path = artifacts().join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {}", path.display());
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() > 10_000, "a real page, {} bytes", png.len());

    client.close().await.unwrap();
    drop(driver);
    server.abort();
    let runs = runs(&pool).await;
    let kinds: Vec<(&str, &str)> = runs.iter().map(|r| (r.kind.as_str(), r.trigger.as_str())).collect();
    assert_eq!(kinds, vec![("deploy", "opened"), ("deploy", "dashboard"), ("teardown", "dashboard")]);
}

/// The front page's charts as Chromium draws them, kept as `dashboard-charts.png`.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_front_pages_charts_render_in_chromium(pool: PgPool) {
    if std::env::var("DRAFTD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipped: DRAFTD_SKIP_BROWSER=1 (the dashboard's charts were not drawn)");
        return;
    }
    let driver_path = chromedriver();
    crate::dashboard::seed_figures(&pool, chrono::Utc::now()).await;
    let (base, _, server) = serve(&pool).await;

    let dir = tempfile::tempdir().unwrap();
    let driver = Chromedriver::start(&driver_path, dir.path()).await;
    let client = connect(&driver, &dir.path().join("profile")).await;
    client.goto(&format!("{base}/login?next=%2Fstands")).await.unwrap();
    submit_token(&client).await;
    wait_for_text(&client, "h2#figures", "Figures").await;
    let charts = client.find_all(Locator::Css("figure svg")).await.unwrap();
    assert_eq!(charts.len(), 4);
    for chart in &charts {
        let (_, _, width, height) = chart.rectangle().await.unwrap();
        assert!(width > 300.0 && height > 100.0, "drawn at {width}×{height}");
    }
    let bars = client.find_all(Locator::Css("figure#chart-states svg rect")).await.unwrap();
    assert!(bars.len() >= 14, "a bar a day: {} rects", bars.len());
    client.find(Locator::Css("#chart-cost")).await.unwrap();
    client.set_window_size(1400, 1300).await.unwrap();
    let png = client.screenshot().await.unwrap();
    let path = artifacts().join("dashboard-charts.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {}", path.display());
    assert!(png.len() > 10_000, "a real page, {} bytes", png.len());
    client.close().await.unwrap();
    drop(driver);
    server.abort();
}
