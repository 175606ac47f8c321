//! schemathesis (PyPI; `scripts/install-schemathesis.sh` puts it in `.tools/bin/st`) driven by draftd's
//! own OpenAPI document against a live `draftd serve`: no 5xx, no schema-valid request refused, every
//! status, content type and body as documented. Bounded: a fixed seed and at most 60 cases per
//! operation and phase, about 15 s.
//!
//! Without `.tools/bin/st` the test says so and passes, unless `DRAFTD_REQUIRE_SCHEMATHESIS=1`
//! (scripts/test.sh sets it after installing), which makes a missing `st` a failure.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;

use crate::support::{API_TOKEN, CONFIG, GITHUB_SECRET, GITLAB_SECRET, github_pr, sha, sign};

const DRAFTD: &str = env!("CARGO_BIN_EXE_draftd");
/// `serve` must log its address and pass `/health/startup` within this.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The whole schemathesis run; it takes about 15 s on two cores.
const ST_TIMEOUT: Duration = Duration::from_secs(150);
/// Test cases per operation and phase: enough to reach every documented answer, few enough to stay bounded.
const MAX_EXAMPLES: &str = "60";
/// The checks the run must pass; every other check schemathesis has is left out.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,positive_data_acceptance";

fn st() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/st")
}

/// Whether `st` is installed; when it is not, says so (or fails, under `DRAFTD_REQUIRE_SCHEMATHESIS=1`).
fn available() -> bool {
    if st().is_file() {
        return true;
    }
    assert!(
        std::env::var("DRAFTD_REQUIRE_SCHEMATHESIS").as_deref() != Ok("1"),
        "{} is missing and DRAFTD_REQUIRE_SCHEMATHESIS=1: run scripts/install-schemathesis.sh",
        st().display()
    );
    eprintln!(
        "skipped: {} is missing, so schemathesis did not run (scripts/install-schemathesis.sh installs it; \
         DRAFTD_REQUIRE_SCHEMATHESIS=1 makes this a failure)",
        st().display()
    );
    false
}

/// A child killed when dropped, its output collected as it comes.
struct Proc {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        for mut pipe in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Proc { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `listen` field of serve's JSON line `{"message": "draftd serving", "listen": "127.0.0.1:…"}`.
fn listen_address(output: &str) -> Option<SocketAddr> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|v| if v["message"] == "draftd serving" { v["listen"].as_str()?.parse().ok() } else { None })
}

/// `draftd serve` in dry-run mode on the test's database, with the suite's projects, secrets and API
/// token, once `/health/startup` answers 200.
async fn serve(pool: &PgPool, dir: &Path) -> (Proc, SocketAddr) {
    let admin = std::env::var("DATABASE_URL").expect("DATABASE_URL (source scripts/pg-env.sh)");
    let mut url = url::Url::parse(&admin).expect("DATABASE_URL is a URL");
    url.set_path(pool.connect_options().get_database().expect("the test's database"));
    let config = dir.join("draftd.toml");
    let stands = dir.join("stands");
    std::fs::write(&config, format!("[cluster]\nmode = \"dry-run\"\ndry_run_dir = {:?}\n{CONFIG}", stands))
        .expect("config");
    let mut cmd = Command::new(DRAFTD);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DRAFTD_") {
            cmd.env_remove(&key);
        }
    }
    cmd.arg("--config")
        .arg(&config)
        .args(["--log-format", "json", "serve"])
        .current_dir(dir)
        .env("RUST_LOG", "warn,draftd=info")
        .env("DRAFTD_DATABASE_URL", url.as_str())
        .env("DRAFTD_LISTEN", "127.0.0.1:0")
        .env("API_TOKEN", API_TOKEN)
        .env("GH_SECRET", GITHUB_SECRET)
        .env("GL_SECRET", GITLAB_SECRET);
    let mut child = Proc::spawn(cmd);
    let deadline = Instant::now() + START_TIMEOUT;
    let addr = loop {
        if let Some(addr) = listen_address(&child.output()) {
            break addr;
        }
        if let Ok(Some(status)) = child.child.try_wait() {
            panic!("draftd serve exited ({status}) before listening:\n{}", child.output());
        }
        assert!(Instant::now() < deadline, "draftd serve did not listen in time:\n{}", child.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let client = reqwest::Client::new();
    loop {
        let res = client.get(format!("http://{addr}/health/startup")).send().await;
        if res.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
            break;
        }
        assert!(Instant::now() < deadline, "/health/startup did not pass in time:\n{}", child.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr)
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn schemathesis_finds_the_api_as_its_document_says(pool: PgPool) {
    if !available() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("draftd-schemathesis-").tempdir().expect("temp dir");
    let (server, addr) = serve(&pool, dir.path()).await;

    // A stand with a run, so the listings schemathesis reads have something in them.
    let body = serde_json::to_vec(&github_pr("opened", "feature/schema", &sha(1), "2019-05-15T15:20:33Z")).unwrap();
    let seeded = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-hub-signature-256", sign(GITHUB_SECRET, &body))
        .body(body)
        .send()
        .await
        .expect("seeding a stand");
    assert_eq!(seeded.status(), reqwest::StatusCode::ACCEPTED);

    let artifacts = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("artifacts/schemathesis");
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut cmd = Command::new(st());
    cmd.arg("run")
        .arg(format!("http://{addr}/api/v1/openapi.json"))
        .args(["--checks", CHECKS])
        .args(["--header", &format!("Authorization: Bearer {API_TOKEN}")])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", "21"])
        .args(["--workers", "2"])
        .args(["--request-timeout", "10"])
        .args(["--suppress-health-check", "all"])
        .args(["--output-sanitize", "true"])
        .arg("--no-color")
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(&artifacts)
        .current_dir(dir.path())
        .env("NO_COLOR", "1");
    let started = Instant::now();
    let mut run = Proc::spawn(cmd);
    let status = loop {
        if let Some(status) = run.child.try_wait().expect("waiting for st") {
            break status;
        }
        assert!(started.elapsed() < ST_TIMEOUT, "st run took over {ST_TIMEOUT:?}:\n{}", run.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Let the readers catch the last lines.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let output = run.output();
    eprintln!("st run: {status} after {:.1?}\n{output}", started.elapsed());
    let log = artifacts.join("draftd.log");
    std::fs::write(&log, server.output()).unwrap();
    assert!(status.success(), "schemathesis found failures (above); draftd's log is in {}", log.display());
}
