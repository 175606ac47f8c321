//! The real `draftd` binary as a child process: health probes, webhooks over TCP, graceful shutdown,
//! the `stands` and `migrate` commands, configuration errors, and that secrets never reach the logs.
//!
//! Each test that needs a database makes its own on the server `DATABASE_URL` points at
//! (`source scripts/pg-env.sh`) and drops it at the end. Every wait has a deadline, and a child still
//! running when a test ends (or panics) is killed, so a hung `draftd` fails a test instead of hanging it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

use crate::support::{forge_fake, github_pr, gitlab_mr, sha, sign};

const DRAFTD: &str = env!("CARGO_BIN_EXE_draftd");
/// `serve` must log its address, and `/health/startup` must pass, within this.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// A one-shot command (`migrate`, `stands …`, a `serve` that refuses to start) must exit within this.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// `serve` must exit this soon after SIGTERM once its requests are answered.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
const DB_TIMEOUT: Duration = Duration::from_secs(15);
/// Nothing listens on port 1: the database is "down".
const DEAD_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:1/x";

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

// ---------------------------------------------------------------------------------------------------
// A database per test
// ---------------------------------------------------------------------------------------------------

/// A fresh database on the `DATABASE_URL` server. Call [`TestDb::drop_db`] at the end of the test; a
/// panicking test leaks it (its name says where it came from).
struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn create() -> TestDb {
        let admin_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
            panic!("DATABASE_URL is not set: point it at a Postgres server (`source scripts/pg-env.sh`)")
        });
        let name = format!("draftd_cli_{}", unique());
        let mut conn = admin(&admin_url).await;
        tokio::time::timeout(DB_TIMEOUT, sqlx::query(&format!("create database {name}")).execute(&mut conn))
            .await
            .unwrap_or_else(|_| panic!("create database {name}: timed out"))
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        let _ = conn.close().await;
        let url = with_database(&admin_url, &name);
        TestDb { admin_url, name, url }
    }

    async fn drop_db(self) {
        let mut conn = admin(&self.admin_url).await;
        let sql = format!("drop database if exists {} with (force)", self.name);
        tokio::time::timeout(DB_TIMEOUT, sqlx::query(&sql).execute(&mut conn))
            .await
            .unwrap_or_else(|_| panic!("{sql}: timed out"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = conn.close().await;
    }
}

async fn admin(url: &str) -> PgConnection {
    tokio::time::timeout(DB_TIMEOUT, PgConnection::connect(url))
        .await
        .unwrap_or_else(|_| panic!("connecting to DATABASE_URL timed out"))
        .unwrap_or_else(|e| panic!("connecting to DATABASE_URL: {e}"))
}

/// `url` with its database (the path) replaced by `db`, keeping user, host, port and query.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map(|i| i + 3).unwrap_or_else(|| panic!("DATABASE_URL is not a URL"));
    let path = base[authority..].find('/').map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{db}", &base[..path]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------------

/// Everything a child wrote on stdout and stderr, line by line, as it arrives.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<String>>);

impl Output {
    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    fn push(&self, line: &str) {
        self.0.lock().unwrap().push_str(line);
    }
}

/// Copies `pipe` into `into` (and, when given, `own`) on a background thread until it closes.
fn drain(pipe: impl Read + Send + 'static, into: Output, own: Option<Output>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    into.push(&text);
                    if let Some(own) = &own {
                        own.push(&text);
                    }
                }
            }
        }
    })
}

/// A child that is killed when dropped, unless it has already exited.
struct Proc {
    child: Child,
    readers: Vec<JoinHandle<()>>,
    output: Output,
}

impl Proc {
    fn spawn(mut cmd: Command, output: Output, stdout: Option<Output>, stderr: Option<Output>) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {DRAFTD}: {e}"));
        let readers = vec![
            drain(child.stdout.take().unwrap(), output.clone(), stdout),
            drain(child.stderr.take().unwrap(), output.clone(), stderr),
        ];
        Proc { child, readers, output }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the exit and for the last of its output.
    fn wait(&mut self, timeout: Duration, what: &str) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{what} did not exit within {timeout:?}; output:\n{}", self.output.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
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

/// What a one-shot command did.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!("exit {}\n--- stdout\n{}--- stderr\n{}", self.status, self.stdout, self.stderr)
    }

    fn assert_success(&self, what: &str) {
        assert!(self.status.success(), "{what} failed: {}", self.describe());
    }
}

/// Runs `cmd` to completion (killing it after [`CLI_TIMEOUT`]), also appending its output to `all`.
fn run(cmd: Command, what: &str, all: &Output) -> Run {
    let (stdout, stderr) = (Output::default(), Output::default());
    let mut proc = Proc::spawn(cmd, all.clone(), Some(stdout.clone()), Some(stderr.clone()));
    let status = proc.wait(CLI_TIMEOUT, what);
    Run { status, stdout: stdout.text(), stderr: stderr.text() }
}

/// A config file, its secrets, and the database the children use.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    github_secret: String,
    gitlab_secret: String,
    database_url: String,
}

const GITHUB_SECRET_VAR: &str = "CLI_GH_SECRET";
const GITLAB_SECRET_VAR: &str = "CLI_GL_SECRET";

/// Projects matching the recorded payloads, as in tests/support/mod.rs's CONFIG, with this file's variables.
fn projects_toml() -> String {
    format!(
        r#"
[[projects]]
name = "hello-world"
forge = "github"
repo = "Codertocat/Hello-World"
webhook_secret_env = "{GITHUB_SECRET_VAR}"

[[projects]]
name = "gitlab-test"
forge = "gitlab"
repo = "gitlabhq/gitlab-test"
webhook_secret_env = "{GITLAB_SECRET_VAR}"
"#
    )
}

impl Setup {
    fn new(database_url: &str) -> Setup {
        let dir = tempfile::Builder::new().prefix("draftd-cli-").tempdir().expect("temp dir");
        let config = dir.path().join("draftd.toml");
        std::fs::write(&config, format!("[cluster]\nmode = \"dry-run\"\n{}", projects_toml())).expect("config");
        // Long, unique and unlike anything else in the output, so a leak cannot be missed or faked.
        let github_secret = format!("gh-cli-secret-{}-{}", unique(), unique());
        let gitlab_secret = format!("gl-cli-secret-{}-{}", unique(), unique());
        Setup { dir, config, github_secret, gitlab_secret, database_url: database_url.to_owned() }
    }

    /// Writes another config file next to the main one.
    fn write_config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("config");
        path
    }

    /// `draftd --config <config> <args>` with the database and both secrets in its environment, and
    /// nothing draftd reads inherited from the test's own environment.
    fn command_with(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(DRAFTD);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("DRAFTD_") || k == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        cmd.arg("--config")
            .arg(config)
            .args(args)
            .current_dir(self.dir.path())
            .env("DRAFTD_DATABASE_URL", &self.database_url)
            // Never the default 8080, even from a `serve` that was expected to refuse to start.
            .env("DRAFTD_LISTEN", "127.0.0.1:0")
            .env(GITHUB_SECRET_VAR, &self.github_secret)
            .env(GITLAB_SECRET_VAR, &self.gitlab_secret);
        cmd
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_with(&self.config, args)
    }

    fn cli(&self, args: &[&str], all: &Output) -> Run {
        run(self.command(args), &format!("draftd {}", args.join(" ")), all)
    }

    /// `draftd --log-format json serve`, once it has logged the address it listens on.
    fn serve(&self, env: &[(&str, &str)]) -> Server {
        let mut cmd = self.command(&["--log-format", "json", "serve"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Setup::serve_command(cmd)
    }

    /// Starts a prepared `serve` command and waits for its address.
    fn serve_command(cmd: Command) -> Server {
        let mut proc = Proc::spawn(cmd, Output::default(), None, None);
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            if let Some(addr) = listen_address(&proc.output.text()) {
                break addr;
            }
            if let Some(status) = proc.exited() {
                panic!("draftd serve exited ({status}) before listening; output:\n{}", proc.output.text());
            }
            if Instant::now() > deadline {
                panic!(
                    "draftd serve did not log its address within {START_TIMEOUT:?}; output:\n{}",
                    proc.output.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Server { proc, addr }
    }
}

/// The `listen` field of serve's JSON line `{"message": "draftd serving", "listen": "127.0.0.1:…"}`.
fn listen_address(output: &str) -> Option<SocketAddr> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|v| if v["message"] == "draftd serving" { v["listen"].as_str()?.parse().ok() } else { None })
}

struct Server {
    proc: Proc,
    addr: SocketAddr,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn output(&self) -> String {
        self.proc.output.text()
    }

    fn sigterm(&self) {
        let status =
            Command::new("kill").args(["-TERM", &self.proc.pid().to_string()]).status().expect("running kill -TERM");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.proc.pid());
    }

    /// SIGTERM, then the exit status (it must come within [`EXIT_TIMEOUT`]).
    fn stop(&mut self) -> ExitStatus {
        self.sigterm();
        self.proc.wait(EXIT_TIMEOUT, "draftd serve after SIGTERM")
    }

    fn stop_cleanly(&mut self) {
        let status = self.stop();
        assert!(status.success(), "draftd serve exited with {status} after SIGTERM; output:\n{}", self.output());
    }

    /// Polls `/health/startup` until it answers 200 (migrations applied).
    async fn wait_started(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(res) = client.get(self.url("/health/startup")).send().await
                && res.status() == reqwest::StatusCode::OK
            {
                return;
            }
            if let Some(status) = self.proc.exited() {
                panic!("draftd serve exited ({status}) while starting; output:\n{}", self.output());
            }
            if Instant::now() > deadline {
                panic!("/health/startup did not answer 200 within {START_TIMEOUT:?}; output:\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------------

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().expect("reqwest client")
}

struct Answer {
    status: u16,
    body: Value,
}

async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status().as_u16();
    let bytes = res.bytes().await.expect("response body");
    Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
}

async fn get(client: &reqwest::Client, server: &Server, path: &str) -> Answer {
    let res = client.get(server.url(path)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    answer(res).await
}

/// A GitHub delivery of `body` signed with `secret`.
async fn post_github(
    client: &reqwest::Client,
    server: &Server,
    secret: &str,
    event: &str,
    delivery: &str,
    body: &[u8],
) -> Answer {
    let res = client
        .post(server.url("/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign(secret, body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /webhooks/github: {e}"));
    answer(res).await
}

/// A GitLab delivery of `body` carrying `token`.
async fn post_gitlab(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    event: &str,
    uuid: &str,
    body: &[u8],
) -> Answer {
    let res = client
        .post(server.url("/webhooks/gitlab"))
        .header("content-type", "application/json")
        .header("x-gitlab-event", event)
        .header("x-gitlab-token", token)
        .header("x-gitlab-event-uuid", uuid)
        .body(body.to_vec())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /webhooks/gitlab: {e}"));
    answer(res).await
}

fn opened_pr() -> Vec<u8> {
    serde_json::to_vec(&github_pr("opened", "feature/cli", &sha(1), "2019-05-15T15:20:33Z")).unwrap()
}

/// Records the opened PR on `feature/cli` and returns serve's answer (asserted 202 with stand and run).
async fn record_opened_pr(client: &reqwest::Client, server: &Server, setup: &Setup, delivery: &str) -> Value {
    let res = post_github(client, server, &setup.github_secret, "pull_request", delivery, &opened_pr()).await;
    assert_eq!(res.status, 202, "{}; output:\n{}", res.body, server.output());
    assert!(res.body["stand"].is_i64(), "no numeric stand in {}", res.body);
    assert!(res.body["run"].is_i64(), "no numeric run in {}", res.body);
    res.body
}

/// A dry-run config for the `hello-world` project with the repository's chart and helm, stands
/// under `<test dir>/stands`, and `stands` as the body of its `[stands]` table.
fn dry_run_config(setup: &Setup, name: &str, stands: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    setup.write_config(
        name,
        &format!(
            r#"
[cluster]
mode = "dry-run"
dry_run_dir = "{dir}"
helm_path = "{helm}"

[stands]
{stands}

[[projects]]
name = "hello-world"
forge = "github"
repo = "Codertocat/Hello-World"
webhook_secret_env = "{GITHUB_SECRET_VAR}"
chart = "{chart}"
values = ["{values}"]
"#,
            dir = setup.dir.path().join("stands").display(),
            helm = root.join(".tools/bin/helm").display(),
            chart = root.join("charts/stand").display(),
            values = root.join("values/draft.yaml").display(),
        ),
    )
}

/// The steps a stand's folder logs as executed (`executions.jsonl`), as (step, pid), in order.
fn executions(folder: &Path) -> Vec<(String, u64)> {
    let log = std::fs::read_to_string(folder.join("executions.jsonl")).unwrap_or_default();
    log.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["step"].as_str().unwrap().to_owned(), v["pid"].as_u64().unwrap())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_health_probes_and_records_a_signed_delivery() {
    let db = TestDb::create().await;
    let setup = Setup::new(&db.url);
    let mut server = setup.serve(&[]);
    let client = client();

    server.wait_started(&client).await;
    let health = get(&client, &server, "/health").await;
    assert_eq!(health.status, 200, "{}", health.body);
    let ready = get(&client, &server, "/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body["database"], true, "{}", ready.body);
    assert_eq!(ready.body["migrated"], true, "{}", ready.body);

    let delivery = uuid::Uuid::new_v4().to_string();
    let recorded = record_opened_pr(&client, &server, &setup, &delivery).await;
    assert_eq!(recorded["delivery"], delivery.as_str(), "{recorded}");

    server.stop_cleanly();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_the_database_is_down_and_webhooks_get_503() {
    let setup = Setup::new(DEAD_DATABASE_URL);
    let mut server = setup.serve(&[]);
    let client = client();

    let health = get(&client, &server, "/health").await;
    assert_eq!(health.status, 200, "{}", health.body);
    let startup = get(&client, &server, "/health/startup").await;
    assert_eq!(startup.status, 503, "{}", startup.body);
    let ready = get(&client, &server, "/health/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.body["database"], false, "{}", ready.body);
    assert_eq!(ready.body["migrated"], false, "{}", ready.body);

    let delivery = uuid::Uuid::new_v4().to_string();
    let hook = post_github(&client, &server, &setup.github_secret, "pull_request", &delivery, &opened_pr()).await;
    assert_eq!(hook.status, 503, "{}", hook.body);
    assert!(hook.body["error"]["code"].is_string(), "not draftd's error shape: {}", hook.body);

    server.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_running_and_answering_health_through_a_long_database_outage() {
    let setup = Setup::new(DEAD_DATABASE_URL);
    let started = Instant::now();
    let mut server = setup.serve(&[]);
    let client = client();

    // Longer than one connection attempt (the pool gives up after 5 s): serve keeps retrying its
    // migrations in the background and keeps answering /health, so Kubernetes never restarts it.
    let outage = Duration::from_secs(12);
    while started.elapsed() < outage {
        assert!(
            server.proc.exited().is_none(),
            "draftd serve exited {:?} into a database outage; output:\n{}",
            started.elapsed(),
            server.output()
        );
        let health = get(&client, &server, "/health").await;
        assert_eq!(health.status, 200, "{}", health.body);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let startup = get(&client, &server, "/health/startup").await;
    assert_eq!(startup.status, 503, "{}", startup.body);

    server.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs() {
    let db = TestDb::create().await;
    let setup = Setup::new(&db.url);
    let mut server = setup.serve(&[("RUST_LOG", "trace")]);
    let client = client();
    server.wait_started(&client).await;

    let delivery = uuid::Uuid::new_v4().to_string();
    record_opened_pr(&client, &server, &setup, &delivery).await;

    let forged = uuid::Uuid::new_v4().to_string();
    let res = post_github(&client, &server, "not-the-secret", "pull_request", &forged, &opened_pr()).await;
    assert_eq!(res.status, 401, "{}", res.body);

    let mr = serde_json::to_vec(&gitlab_mr("open", "feature/cli", &sha(2), "2013-12-03T17:23:34Z")).unwrap();
    let event_uuid = uuid::Uuid::new_v4().to_string();
    let res = post_gitlab(&client, &server, &setup.gitlab_secret, "Merge Request Hook", &event_uuid, &mr).await;
    assert_eq!(res.status, 202, "{}", res.body);
    let other_uuid = uuid::Uuid::new_v4().to_string();
    let res = post_gitlab(&client, &server, "not-the-token", "Merge Request Hook", &other_uuid, &mr).await;
    assert_eq!(res.status, 401, "{}", res.body);

    let cli_output = Output::default();
    let mut list = setup.command(&["stands", "list"]);
    list.env("RUST_LOG", "trace");
    run(list, "draftd stands list", &cli_output).assert_success("draftd stands list");

    let bad = setup.write_config("bad-ttl.toml", &format!("[stands]\nttl = \"soon\"\n{}", projects_toml()));
    let mut refused = setup.command_with(&bad, &["--log-format", "json", "serve"]);
    refused.env("RUST_LOG", "trace");
    let refused = run(refused, "draftd serve with a bad ttl", &cli_output);
    assert_eq!(refused.status.code(), Some(2), "{}", refused.describe());

    server.stop_cleanly();
    let all = format!("{}{}", server.output(), cli_output.text());
    assert!(!all.contains(&setup.github_secret), "the GitHub webhook secret is in the output:\n{all}");
    assert!(!all.contains(&setup.gitlab_secret), "the GitLab webhook token is in the output:\n{all}");
    // Not vacuous: the logs did record the deliveries.
    assert!(all.contains(&delivery), "the delivery id {delivery} is not in the output:\n{all}");
    assert!(all.contains("delivery recorded"), "no \"delivery recorded\" in the output:\n{all}");

    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish() {
    let db = TestDb::create().await;
    let setup = Setup::new(&db.url);
    let mut server = setup.serve(&[]);
    server.wait_started(&client()).await;

    let body = opened_pr();
    let delivery = uuid::Uuid::new_v4().to_string();
    let head = format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {sig}\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n",
        addr = server.addr,
        sig = sign(&setup.github_secret, &body),
        len = body.len(),
    );
    let (first, rest) = body.split_at(body.len() / 2);
    let mut stream = TcpStream::connect_timeout(&server.addr, HTTP_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(first).unwrap();
    stream.flush().unwrap();

    std::thread::sleep(Duration::from_millis(300));
    server.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    // The rest is only sent once draftd has taken the signal: the request really is in flight.
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while !server.output().contains("shutting down") {
        assert!(Instant::now() < deadline, "no shutdown logged after SIGTERM; output:\n{}", server.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.proc.exited().is_none(), "draftd exited with a request in flight; output:\n{}", server.output());
    stream.write_all(rest).unwrap();
    stream.flush().unwrap();

    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap_or_else(|e| panic!("reading the response: {e}"));
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 202"), "response: {response:?}; output:\n{}", server.output());

    let status = server.proc.wait(EXIT_TIMEOUT, "draftd serve after SIGTERM");
    assert!(status.success(), "draftd serve exited with {status}; output:\n{}", server.output());
    let again = TcpStream::connect_timeout(&server.addr, Duration::from_secs(2));
    assert!(again.is_err(), "{} still accepts connections after draftd exited", server.addr);

    db.drop_db().await;
}

/// A burst from a busy forge, arriving while `serve` cannot run (a CPU-throttled pod).
const BURST: usize = 500;
/// How long `serve` is stopped at least, like a CPU-throttled pod.
const PAUSE: Duration = Duration::from_secs(1);
/// How long it stays stopped at most while the test waits for the kernel to complete every handshake.
const HOLD_WAIT: Duration = Duration::from_secs(5);

/// The kernel's cap on a listen backlog (`net.core.somaxconn`); `None` where it cannot be read.
fn somaxconn() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?.trim().parse().ok()
}

fn signal(server: &Server, name: &str) {
    let pid = server.proc.pid().to_string();
    let status = Command::new("kill").args([&format!("-{name}"), &pid]).status().expect("running kill");
    assert!(status.success(), "kill -{name} {pid} failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_arriving_while_serve_is_paused_is_held_and_every_request_answered() {
    match somaxconn() {
        Some(cap) if cap < BURST => {
            eprintln!("skipped: net.core.somaxconn is {cap}, below the {BURST} connections this test holds");
            return;
        }
        _ => {}
    }
    let db = TestDb::create().await;
    let setup = Setup::new(&db.url);
    let mut server = setup.serve(&[]);
    server.wait_started(&client()).await;

    signal(&server, "STOP");
    let stopped = Instant::now();
    let addr = server.addr;
    // Counted as the kernel completes each handshake, however late this process polls the task.
    let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let burst: Vec<_> = (0..BURST)
        .map(|_| {
            let connected = connected.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
                connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await.map_err(|e| format!("read: {e}"))?;
                let answer = String::from_utf8_lossy(&answer).into_owned();
                match answer.starts_with("HTTP/1.1 200") {
                    true => Ok(()),
                    false => Err(format!("answer: {answer:?}")),
                }
            })
        })
        .collect();
    let all_held = || connected.load(std::sync::atomic::Ordering::SeqCst) == BURST;
    while stopped.elapsed() < PAUSE || (!all_held() && stopped.elapsed() < HOLD_WAIT) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A connection the kernel did not take while draftd was stopped had its SYN dropped: it waits for
    // the SYN's retries (1, 3, 7 s…) and, under a longer pause, misses the forge's delivery timeout.
    let (held, paused) = (connected.load(std::sync::atomic::Ordering::SeqCst), stopped.elapsed());
    signal(&server, "CONT");

    let mut failed = Vec::new();
    for task in burst {
        match tokio::time::timeout(HTTP_TIMEOUT, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => failed.push(e),
            Ok(Err(e)) => failed.push(format!("task: {e}")),
            Err(_) => failed.push(format!("no answer within {HTTP_TIMEOUT:?}")),
        }
    }
    assert!(failed.is_empty(), "{} of {BURST} connections failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert_eq!(held, BURST, "connections the kernel took while draftd was stopped for {paused:?}");
    server.stop_cleanly();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stands_list_and_show_print_the_recorded_stand() {
    let db = TestDb::create().await;
    let setup = Setup::new(&db.url);
    let mut server = setup.serve(&[]);
    let client = client();
    server.wait_started(&client).await;
    let recorded = record_opened_pr(&client, &server, &setup, &uuid::Uuid::new_v4().to_string()).await;
    let stand_id = recorded["stand"].as_i64().unwrap();
    server.stop_cleanly();
    let out = Output::default();

    let list = setup.cli(&["stands", "list"], &out);
    list.assert_success("stands list");
    for expected in ["hello-world", "feature/cli", "draft-feature-cli"] {
        assert!(list.stdout.contains(expected), "no {expected:?} in the table: {}", list.describe());
    }

    let list_json = setup.cli(&["stands", "list", "--json"], &out);
    list_json.assert_success("stands list --json");
    let rows: Value = serde_json::from_str(&list_json.stdout)
        .unwrap_or_else(|e| panic!("stands list --json is not JSON ({e}): {}", list_json.describe()));
    let rows = rows.as_array().unwrap_or_else(|| panic!("not an array: {rows}"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["branch"], "feature/cli", "{rows:?}");
    assert_eq!(rows[0]["stand_id"], stand_id, "{rows:?}");

    // serve's workers may have claimed the run before it stopped: the CLI must print whatever state
    // the database holds.
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let state: String = sqlx::query_scalar("select state from runs").fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let show = setup.cli(&["stands", "show", "hello-world/feature/cli"], &out);
    show.assert_success("stands show hello-world/feature/cli");
    for expected in ["namespace:", "draft-feature-cli", state.as_str()] {
        assert!(show.stdout.contains(expected), "no {expected:?} in: {}", show.describe());
    }

    let id = stand_id.to_string();
    let show_json = setup.cli(&["stands", "show", &id, "--json"], &out);
    show_json.assert_success("stands show <id> --json");
    let detail: Value = serde_json::from_str(&show_json.stdout)
        .unwrap_or_else(|e| panic!("stands show --json is not JSON ({e}): {}", show_json.describe()));
    assert_eq!(detail["stand_id"], stand_id, "{detail}");
    assert_eq!(detail["runs"][0]["state"], state.as_str(), "{detail}");

    let missing = setup.cli(&["stands", "show", "999999"], &out);
    assert!(!missing.status.success(), "showing a missing stand succeeded: {}", missing.describe());
    assert!(missing.stderr.contains("no stand"), "{}", missing.describe());

    // rerun, extend and destroy queue runs straight in the database.
    for (args, what) in [
        (vec!["stands", "rerun", "hello-world/feature/cli"], "rerun"),
        (vec!["stands", "extend", &id, "--by", "24h"], "extend"),
        (vec!["stands", "destroy", "hello-world/feature/cli"], "destroy"),
    ] {
        let queued = setup.cli(&args, &out);
        queued.assert_success(what);
        assert!(queued.stdout.contains("queued run"), "{what}: {}", queued.describe());
    }
    let detail: Value =
        serde_json::from_str(&setup.cli(&["stands", "show", &id, "--json"], &out).stdout).expect("show --json");
    let kinds: Vec<&str> = detail["runs"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["teardown", "extend", "deploy", "deploy"], "{detail}");
    assert!(detail["runs"][0]["requested_by"].as_str().unwrap().starts_with("cli:"), "{detail}");
    assert_eq!(detail["state"], "closing", "{detail}");
    let refused = setup.cli(&["stands", "rerun", &id], &out);
    assert!(!refused.status.success(), "{}", refused.describe());
    assert!(refused.stderr.contains("stand is closing"), "{}", refused.describe());

    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_and_is_idempotent() {
    let db = TestDb::create().await;
    let setup = Setup::new(&db.url);
    let out = Output::default();

    for attempt in ["first", "second"] {
        let migrate = setup.cli(&["migrate"], &out);
        migrate.assert_success(&format!("{attempt} draftd migrate"));
        assert!(migrate.stdout.contains("migrations applied"), "{}", migrate.describe());
    }

    let mut conn = admin(&db.url).await;
    let stands: Option<String> =
        sqlx::query_scalar("select to_regclass('public.stands')::text").fetch_one(&mut conn).await.unwrap();
    assert_eq!(stands.as_deref(), Some("stands"), "no table stands after draftd migrate");
    let _ = conn.close().await;

    db.drop_db().await;
}

#[test]
fn bad_config_names_the_key_and_file() {
    let setup = Setup::new(DEAD_DATABASE_URL);
    let out = Output::default();

    let bad = setup.write_config("bad.toml", "[stands]\nttl = \"soon\"\n");
    let run_bad = run(setup.command_with(&bad, &["serve"]), "draftd serve with a bad ttl", &out);
    assert_eq!(run_bad.status.code(), Some(2), "{}", run_bad.describe());
    assert!(run_bad.stderr.contains("stands.ttl"), "{}", run_bad.describe());
    assert!(run_bad.stderr.contains(&bad.display().to_string()), "{}", run_bad.describe());

    let mut unset = setup.command(&["serve"]);
    unset.env_remove(GITHUB_SECRET_VAR);
    let unset = run(unset, "draftd serve without its GitHub secret", &out);
    assert!(!unset.status.success(), "serve started without {GITHUB_SECRET_VAR}: {}", unset.describe());
    assert!(unset.stderr.contains(GITHUB_SECRET_VAR), "{}", unset.describe());

    let missing = Path::new("/nonexistent.toml");
    let run_missing = run(setup.command_with(missing, &["serve"]), "draftd serve with a missing config", &out);
    assert!(!run_missing.status.success(), "{}", run_missing.describe());
    assert!(run_missing.stderr.contains("/nonexistent.toml"), "{}", run_missing.describe());

    // Kubernetes mode with no usable cluster configuration stops at start, naming what it tried.
    let kube = setup.write_config(
        "kube.toml",
        &format!("[cluster]\nmode = \"kubernetes\"\nkubeconfig = \"/nonexistent/kubeconfig\"\n{}", projects_toml()),
    );
    let run_kube = run(setup.command_with(&kube, &["serve"]), "draftd serve without a cluster", &out);
    assert!(!run_kube.status.success(), "{}", run_kube.describe());
    assert!(run_kube.stderr.contains("no Kubernetes configuration"), "{}", run_kube.describe());
    assert!(run_kube.stderr.contains("/nonexistent/kubeconfig"), "{}", run_kube.describe());
}

/// Every comment on the fake GitHub, oldest first.
fn bodies(fake: &forge_fake::Fake) -> Vec<String> {
    fake.all_comments().into_iter().map(|c| c.body).collect()
}

async fn wait_for_comments(fake: &forge_fake::Fake, what: &str, done: impl Fn(&[String]) -> bool, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !done(&bodies(fake)) {
        assert!(Instant::now() < deadline, "{what}: comments {:?}; output:\n{}", bodies(fake), server.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_stand_in_dry_run_mode_and_keeps_one_sticky_comment() {
    let db = TestDb::create().await;
    let setup = Setup::new(&db.url);
    // The tests' one fake GitHub, strict about what the real one refuses.
    let token = forge_fake::TOKEN;
    let fake = forge_fake::Fake::start(draftd::config::ForgeKind::Github).await;
    let forge = fake.url();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stands_dir = setup.dir.path().join("stands");
    let config = setup.write_config(
        "loop.toml",
        &format!(
            r#"
[cluster]
mode = "dry-run"
dry_run_dir = "{stands}"
helm_path = "{helm}"

[github]
api_url = "{forge}"
token_env = "CLI_GH_TOKEN"

[[projects]]
name = "hello-world"
forge = "github"
repo = "Codertocat/Hello-World"
webhook_secret_env = "{GITHUB_SECRET_VAR}"
chart = "{chart}"
values = ["{values}"]
host = "{{stand}}.draft.example.test"
"#,
            stands = stands_dir.display(),
            helm = root.join(".tools/bin/helm").display(),
            chart = root.join("charts/stand").display(),
            values = root.join("values/draft.yaml").display(),
        ),
    );
    let mut cmd = setup.command_with(&config, &["--log-format", "json", "serve"]);
    cmd.env("CLI_GH_TOKEN", token);
    let mut server = Setup::serve_command(cmd);
    let client = client();
    server.wait_started(&client).await;

    // Opened: the run renders the stand and one comment appears.
    record_opened_pr(&client, &server, &setup, &uuid::Uuid::new_v4().to_string()).await;
    wait_for_comments(&fake, "a ready comment", |b| b.len() == 1 && b[0].contains("ready"), &server).await;
    let ns = stands_dir.join("draft-feature-cli");
    let manifests = std::fs::read_to_string(ns.join("manifests.yaml")).expect("manifests rendered");
    assert!(manifests.contains("kind: Deployment") && manifests.contains("draft-feature-cli-"), "{manifests}");
    assert!(bodies(&fake)[0].contains("https://draft-feature-cli.draft.example.test"), "{:?}", bodies(&fake));

    // A push: the same comment is edited, never a second one.
    let pushed = format!("def5678{}", "0".repeat(33));
    let push = serde_json::to_vec(&github_pr("synchronize", "feature/cli", &pushed, "2019-05-15T15:21:00Z")).unwrap();
    let res = post_github(&client, &server, &setup.github_secret, "pull_request", "push-1", &push).await;
    assert_eq!(res.status, 202, "{}", res.body);
    let short = &pushed[..7];
    wait_for_comments(
        &fake,
        "the comment edited for the push",
        |b| b.len() == 1 && b[0].contains(short) && b[0].contains("ready"),
        &server,
    )
    .await;

    // Closed: the stand's folder goes, the stand is removed, and the same comment says so.
    let close = serde_json::to_vec(&github_pr("closed", "feature/cli", &pushed, "2019-05-15T15:22:00Z")).unwrap();
    let res = post_github(&client, &server, &setup.github_secret, "pull_request", "close-1", &close).await;
    assert_eq!(res.status, 202, "{}", res.body);
    wait_for_comments(
        &fake,
        "the comment edited for the teardown",
        |b| b.len() == 1 && b[0].contains("removed"),
        &server,
    )
    .await;
    assert!(!ns.exists(), "the dry-run folder is gone");
    let left: Vec<_> = std::fs::read_dir(&stands_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "nothing left behind in the dry-run folder: {left:?}");
    server.stop_cleanly();
    let out = Output::default();
    let shown =
        run(setup.command_with(&config, &["stands", "show", "hello-world/feature/cli", "--json"]), "show", &out);
    let detail: Value = serde_json::from_str(&shown.stdout).expect("show --json");
    assert_eq!(detail["state"], "removed", "{detail}");
    assert_eq!(fake.all_comments().len(), 1, "one sticky comment");
    let edits = fake.count("PATCH", &format!("/issues/comments/{}", fake.all_comments()[0].id));
    assert!(edits >= 2, "edits {edits}; bodies {:?}", bodies(&fake));
    assert!(fake.violations().is_empty(), "draftd called GitHub as it documents: {:?}", fake.violations());
    assert!(!server.output().contains(token), "the forge token is never logged");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_after_deploy_is_resumed_by_the_next_without_repeating_steps() {
    killed_and_resumed("after:deploy").await;
}

/// The reduced set `.ci/run` takes: the first step, a step of a parallel group, a step started but
/// not run, the boundary after verify, and the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_at_other_step_boundaries_is_resumed_without_repeating_steps() {
    for fault in ["before:namespace", "after:database", "before:deploy", "after:verify", "before:report"] {
        killed_and_resumed(fault).await;
    }
}

/// Every fault point of a deploy run (`cargo test --test it -- --ignored cli::every_fault_point`; about
/// a minute and a half).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long fault-injection run; .ci/run takes a reduced set"]
async fn every_fault_point_of_a_deploy_is_survived() {
    let steps = ["namespace", "database", "secrets", "image", "deploy", "migrate", "verify", "smoke", "report"];
    for step in steps {
        killed_and_resumed(&format!("before:{step}")).await;
        // After the report, the run is already recorded as done: nothing is left to resume.
        if step != "report" {
            killed_and_resumed(&format!("after:{step}")).await;
        }
    }
}

/// `draftd serve` aborts at `fault` (`DRAFTD_FAULT`: before a step runs, or after its end is
/// recorded); a second process takes the run over once the lease runs out and finishes it. Every
/// step is executed exactly once across both, and started at most twice.
async fn killed_and_resumed(fault: &str) {
    let (when, step) = fault.split_once(':').unwrap();
    let db = TestDb::create().await;
    let setup = Setup::new(&db.url);
    let config = dry_run_config(&setup, "crash.toml", "lease = \"1s\"");
    let client = client();
    let mut doomed = setup.command_with(&config, &["--log-format", "json", "serve"]);
    doomed.env("DRAFTD_FAULT", fault);
    let mut first = Setup::serve_command(doomed);
    first.wait_started(&client).await;
    let recorded = record_opened_pr(&client, &first, &setup, &uuid::Uuid::new_v4().to_string()).await;
    let run_id = recorded["run"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = first.proc.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "{fault}: the fault point never fired; output:\n{}", first.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "{fault}: the first process was meant to die: {status}");

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let steps =
        |rows: Vec<(String, String, i32)>| rows.into_iter().map(|(n, s, a)| format!("{n}:{s}:{a}")).collect::<Vec<_>>();
    let query = "select name, state, attempt from steps where run_id = $1 order by name";
    let before: Vec<(String, String, i32)> = sqlx::query_as(query).bind(run_id).fetch_all(&mut conn).await.unwrap();
    let at_fault = before.iter().find(|s| s.0 == step).map(|s| s.1.as_str());
    if when == "after" {
        assert!(matches!(at_fault, Some("succeeded" | "skipped")), "{fault}: {:?}", steps(before.clone()));
    } else {
        // Started (recorded as running) but never executed.
        assert_eq!(at_fault, Some("running"), "{fault}: {:?}", steps(before.clone()));
    }
    if fault == "after:deploy" {
        // The boundary that recorded deploy as done also recorded migrate as started; it never ran.
        assert!(
            before.iter().all(|s| s.0 != "migrate" || s.1 == "running"),
            "the process died before migrate ran: {:?}",
            steps(before.clone())
        );
    }

    // A new process takes the run over once the dead one's lease has expired, and finishes it.
    let mut second = Setup::serve_command(setup.command_with(&config, &["--log-format", "json", "serve"]));
    second.wait_started(&client).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state: String = sqlx::query_scalar("select state from runs where run_id = $1")
            .bind(run_id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if state == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{fault}: run {run_id} is {state}; output:\n{}", second.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.stop_cleanly();
    let after: Vec<(String, String, i32)> = sqlx::query_as(query).bind(run_id).fetch_all(&mut conn).await.unwrap();
    assert_eq!(after.len(), 9, "{fault}: {:?}", steps(after.clone()));
    for (name, state, attempt) in &after {
        assert!(state == "succeeded" || state == "skipped", "{fault}: {name} is {state}");
        assert!(*attempt <= 2, "{fault}: {name} was started {attempt} times");
    }
    // Executions, as the dry-run runner logs them, across both processes: a step recorded as done
    // before the kill never again; the step the fault stopped before it ran, exactly once; only a
    // step of the same group still in flight when the process died may have run twice.
    let folder = std::fs::read_dir(setup.dir.path().join("stands")).unwrap().next().unwrap().unwrap().path();
    let log = executions(&folder);
    for (name, ..) in &after {
        let runs = log.iter().filter(|(s, _)| s == name).count();
        let in_flight = before.iter().any(|s| &s.0 == name && s.1 == "running") && name != step;
        assert!(runs == 1 || (in_flight && runs == 2), "{fault}: {name} executed {runs} times: {log:?}");
    }
    let pids: std::collections::HashSet<u64> = log.iter().map(|(_, pid)| *pid).collect();
    // Both processes executed steps, unless the first died before any step was done.
    let done_before = before.iter().any(|s| s.1 == "succeeded" || s.1 == "skipped");
    assert_eq!(pids.len(), if done_before { 2 } else { 1 }, "{fault}: {log:?}");
    let claims: i32 = sqlx::query_scalar("select attempt from runs where run_id = $1")
        .bind(run_id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(claims, 2, "{fault}: claimed by the dead process, then by the new one");
    conn.close().await.unwrap();
    db.drop_db().await;
}

/// Two replicas behind one load balancer; one dies in the middle of a run (after its deploy step).
/// The survivor takes the dead one's run over once its lease runs out and finishes every run, each
/// step executed exactly once across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_of_two_replicas_dies_the_other_finishes_every_run() {
    const BRANCHES: usize = 6;
    let db = TestDb::create().await;
    let setup = Setup::new(&db.url);
    let config = dry_run_config(&setup, "replicas.toml", "workers = 2\nlease = \"1s\"");
    let client = client();
    let mut doomed = setup.command_with(&config, &["--log-format", "json", "serve"]);
    doomed.env("DRAFTD_FAULT", "after:deploy");
    // One worker: the only run it holds when it dies is the one at the fault point.
    doomed.env("DRAFTD_STANDS__WORKERS", "1");
    let mut servers = vec![Setup::serve_command(doomed)];
    servers.push(Setup::serve_command(setup.command_with(&config, &["--log-format", "json", "serve"])));
    for server in &mut servers {
        server.wait_started(&client).await;
    }
    let mut runs = Vec::new();
    for i in 0..BRANCHES {
        let body = serde_json::to_vec(&github_pr(
            "opened",
            &format!("feature/replica-{i}"),
            &sha(i as u32 + 1),
            "2019-05-15T15:20:33Z",
        ))
        .unwrap();
        // Sent to whichever replica still answers, as a load balancer would.
        let delivery = uuid::Uuid::new_v4().to_string();
        let mut answered = None;
        for server in &mut servers {
            if server.proc.exited().is_none() {
                let res = post_github(&client, server, &setup.github_secret, "pull_request", &delivery, &body).await;
                answered = Some(res);
                break;
            }
        }
        let res = answered.expect("a live replica");
        assert!(res.status == 202 || res.status == 200, "{}", res.body);
        runs.push(res.body["run"].as_i64().unwrap());
    }

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open: i64 = sqlx::query_scalar("select count(*) from runs where state in ('queued', 'running')")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} runs still open; survivor:\n{}", servers[1].output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = servers[0].proc.exited().expect("the doomed replica died at its fault point");
    assert!(!status.success());
    servers[1].stop_cleanly();

    let states: Vec<(String, i32)> =
        sqlx::query_as("select state, attempt from runs where run_id = any($1) order by run_id")
            .bind(&runs)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(states.iter().all(|(s, _)| s == "succeeded"), "{states:?}");
    let taken_over = states.iter().filter(|(_, attempt)| *attempt == 2).count();
    assert_eq!(taken_over, 1, "exactly the dead replica's run was claimed again: {states:?}");
    for entry in std::fs::read_dir(setup.dir.path().join("stands")).unwrap() {
        let folder = entry.unwrap().path();
        let mut steps: Vec<String> = executions(&folder).into_iter().map(|(s, _)| s).collect();
        steps.sort();
        assert_eq!(
            steps,
            ["database", "deploy", "image", "migrate", "namespace", "report", "secrets", "smoke", "verify"],
            "{}: each step exactly once",
            folder.display()
        );
    }
    conn.close().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_on_one_database_share_runs_and_never_run_one_twice() {
    const BRANCHES: usize = 8;
    let db = TestDb::create().await;
    let setup = Setup::new(&db.url);
    let config = dry_run_config(&setup, "two.toml", "workers = 2");
    let client = client();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let mut server = Setup::serve_command(setup.command_with(&config, &["--log-format", "json", "serve"]));
        server.wait_started(&client).await;
        servers.push(server);
    }
    // The webhooks land on both replicas, as behind a load balancer.
    let mut runs = Vec::new();
    for i in 0..BRANCHES {
        let body = serde_json::to_vec(&github_pr(
            "opened",
            &format!("feature/two-{i}"),
            &sha(i as u32 + 1),
            "2019-05-15T15:20:33Z",
        ))
        .unwrap();
        let server = &servers[i % 2];
        let delivery = uuid::Uuid::new_v4().to_string();
        let res = post_github(&client, server, &setup.github_secret, "pull_request", &delivery, &body).await;
        assert_eq!(res.status, 202, "{}; output:\n{}", res.body, server.output());
        runs.push(res.body["run"].as_i64().unwrap());
    }

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open: i64 = sqlx::query_scalar("select count(*) from runs where state in ('queued', 'running')")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} runs still open; outputs:\n{}\n---\n{}",
            servers[0].output(),
            servers[1].output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pids: Vec<u64> = servers.iter().map(|s| u64::from(s.proc.pid())).collect();
    for server in &mut servers {
        server.stop_cleanly();
    }

    let states: Vec<(String, i32)> =
        sqlx::query_as("select state, attempt from runs where run_id = any($1) order by run_id")
            .bind(&runs)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(states, vec![("succeeded".to_string(), 1); BRANCHES], "every run succeeded, claimed once");
    let mut drivers = std::collections::HashSet::new();
    let folders: Vec<PathBuf> =
        std::fs::read_dir(setup.dir.path().join("stands")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(folders.len(), BRANCHES, "{folders:?}");
    for folder in folders {
        let log = executions(&folder);
        let mut steps: Vec<&str> = log.iter().map(|(s, _)| s.as_str()).collect();
        steps.sort();
        assert_eq!(
            steps,
            ["database", "deploy", "image", "migrate", "namespace", "report", "secrets", "smoke", "verify"],
            "{}: each step exactly once",
            folder.display()
        );
        let by: std::collections::HashSet<u64> = log.iter().map(|(_, pid)| *pid).collect();
        assert_eq!(by.len(), 1, "{}: one process drove the run: {log:?}", folder.display());
        drivers.extend(by);
    }
    assert_eq!(drivers, pids.into_iter().collect(), "both processes drove runs");
    conn.close().await.unwrap();
    db.drop_db().await;
}

/// A password-checking Postgres (scripts/pg-passwords.sh) for stand databases; stopped on drop.
struct StandsPg {
    dir: tempfile::TempDir,
    url: String,
}

impl StandsPg {
    fn start() -> StandsPg {
        let dir = tempfile::Builder::new().prefix("draftd-pgpw-").tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-passwords.sh");
        let out = Command::new("bash").arg(script).arg("start").arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8_lossy(&out.stdout).trim().strip_prefix("export STANDS_PG_URL=").unwrap().to_owned();
        StandsPg { dir, url }
    }
}

impl Drop for StandsPg {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-passwords.sh");
        let _ = Command::new("bash").arg(script).arg("stop").arg(self.dir.path()).status();
    }
}

/// An OpenBao dev server at a fixed port and root token (scripts/openbao-dev.sh); stopped on drop.
struct DevBao {
    dir: tempfile::TempDir,
    addr: String,
    token: String,
}

impl DevBao {
    fn start(port: u16, token: &str) -> DevBao {
        let dir = tempfile::Builder::new().prefix("draftd-bao-").tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openbao-dev.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg("start")
            .arg(dir.path())
            .env("BAO_DEV_PORT", port.to_string())
            .env("BAO_DEV_TOKEN", token)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        DevBao { dir, addr: format!("http://127.0.0.1:{port}"), token: token.to_owned() }
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request =
            client().request(method, format!("{}/v1/{path}", self.addr)).header("X-Vault-Token", &self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let res = request.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for DevBao {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openbao-dev.sh");
        let _ = Command::new("bash").arg(script).arg("stop").arg(self.dir.path()).status();
    }
}

/// Polls draftd's database until `query` (one boolean) is true.
async fn wait_until(url: &str, what: &str, query: &str, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn = admin(url).await;
    loop {
        let done: Option<bool> = sqlx::query_scalar(query).fetch_optional(&mut conn).await.unwrap();
        if done == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within 60 s; output:\n{}", server.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stand_gets_real_credentials_through_a_vault_outage_and_no_secret_shows_anywhere() {
    let db = TestDb::create().await;
    let setup = Setup::new(&db.url);
    let pg = StandsPg::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let root_token = format!("root-{}-{}", unique(), unique());
    let token_file = setup.dir.path().join("vault-token");
    std::fs::write(&token_file, &root_token).unwrap();
    let kv_value = format!("kv-secret-{}-{}", unique(), unique());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stands_dir = setup.dir.path().join("stands");
    let config = setup.write_config(
        "credentials.toml",
        &format!(
            r#"
[cluster]
mode = "dry-run"
dry_run_dir = "{stands}"
helm_path = "{helm}"

[postgres]
admin_url_env = "CLI_STANDS_PG_URL"

[vault]
address = "http://127.0.0.1:{port}"
auth = "token"
token_file = "{token_file}"
credential_ttl = "10m"
lease_ttl = "5m"

[[projects]]
name = "hello-world"
forge = "github"
repo = "Codertocat/Hello-World"
webhook_secret_env = "{GITHUB_SECRET_VAR}"
chart = "{chart}"
values = ["{values}"]
team = "payments"
service = "shop"
"#,
            stands = stands_dir.display(),
            helm = root.join(".tools/bin/helm").display(),
            token_file = token_file.display(),
            chart = root.join("charts/stand").display(),
            values = root.join("values/draft.yaml").display(),
        ),
    );
    let mut cmd = setup.command_with(&config, &["--log-format", "json", "serve"]);
    cmd.env("CLI_STANDS_PG_URL", &pg.url).env("RUST_LOG", "trace");
    let mut server = Setup::serve_command(cmd);
    let client = client();
    server.wait_started(&client).await;

    // Vault is down: the database step fails as transient and is retried, the run stays open.
    record_opened_pr(&client, &server, &setup, &uuid::Uuid::new_v4().to_string()).await;
    wait_until(
        &db.url,
        "a transient failure of the database step",
        "select exists (select 1 from steps where name = 'database' and error->>'label' = 'vault_unavailable')",
        &server,
    )
    .await;
    let open: String = sqlx::query_scalar("select state from runs order by run_id limit 1")
        .fetch_one(&mut admin(&db.url).await)
        .await
        .unwrap();
    assert!(open == "queued" || open == "running", "the run waits for Vault: {open}");

    // Vault comes up, set up, and only then reachable at draftd's address; the retry goes through.
    let bao_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bao = DevBao::start(bao_port, &root_token);
    let (status, _) = bao
        .api(reqwest::Method::POST, "draft/data/payments/shop", Some(json!({ "data": { "API_KEY": kv_value } })))
        .await;
    assert_eq!(status, 200);
    let proxy = forward(port, bao_port).await;
    wait_until(&db.url, "the run to succeed", "select state = 'succeeded' from runs order by run_id limit 1", &server)
        .await;

    let stands_pg = PgPoolOptions::new().max_connections(1).connect(&pg.url).await.unwrap();
    let roles: Vec<String> = sqlx::query_scalar("select rolname::text from pg_roles where rolname like 'v-%'")
        .fetch_all(&stands_pg)
        .await
        .unwrap();
    assert_eq!(roles.len(), 1, "one live login from Vault: {roles:?}");
    let (status, leases) = bao
        .api(reqwest::Method::from_bytes(b"LIST").unwrap(), "sys/leases/lookup/database/creds/draft_feature_cli", None)
        .await;
    assert_eq!((status, leases["data"]["keys"].as_array().map(Vec::len)), (200, Some(1)), "{leases}");
    let secrets = std::fs::read_to_string(stands_dir.join("draft-feature-cli/secrets.json")).unwrap();
    assert!(secrets.contains("API_KEY") && secrets.contains("PGPASSWORD"), "the keys are rendered: {secrets}");

    let out = Output::default();
    let show = run(setup.command_with(&config, &["stands", "show", "hello-world/feature/cli", "--json"]), "show", &out);
    show.assert_success("draftd stands show");
    let detail: Value = serde_json::from_str(&show.stdout).unwrap();
    assert!(detail.to_string().contains(&roles[0]), "the login's name is shown: {detail}");

    // Closed: logins revoked, then database and owner role dropped; nothing left in either server.
    let close = serde_json::to_vec(&github_pr("closed", "feature/cli", &sha(1), "2019-05-15T15:22:00Z")).unwrap();
    let res = post_github(&client, &server, &setup.github_secret, "pull_request", "close-1", &close).await;
    assert_eq!(res.status, 202, "{}", res.body);
    wait_until(&db.url, "the stand to be removed", "select state = 'removed' from stands", &server).await;
    let left: Vec<String> = sqlx::query_scalar(
        "select rolname::text from pg_roles where rolname like 'v-%' or rolname like 'draft%'
         union all select datname::text from pg_database where datname like 'draft%'",
    )
    .fetch_all(&stands_pg)
    .await
    .unwrap();
    assert!(left.is_empty(), "left in Postgres: {left:?}");
    let (status, _) = bao
        .api(reqwest::Method::from_bytes(b"LIST").unwrap(), "sys/leases/lookup/database/creds/draft_feature_cli", None)
        .await;
    assert_eq!(status, 404, "no lease left in Vault");
    server.stop_cleanly();
    proxy.abort();

    // No secret in the logs (at trace level), the CLI's output or the dry-run folder.
    let admin_password = url::Url::parse(&pg.url).unwrap().password().unwrap().to_owned();
    let mut everything = format!("{}{}", server.output(), out.text());
    for entry in walk(setup.dir.path()) {
        if entry.extension().is_some_and(|e| e == "json" || e == "yaml" || e == "md" || e == "jsonl") {
            everything.push_str(&std::fs::read_to_string(&entry).unwrap_or_default());
        }
    }
    for (what, secret) in
        [("the KV value", kv_value.as_str()), ("the Vault token", &root_token), ("the admin password", &admin_password)]
    {
        assert!(!everything.contains(secret), "{what} shows in the output or the dry-run folder");
    }
    assert!(!everything.contains("postgres://v-"), "a database URL with a login shows somewhere");
    assert!(everything.contains("vault_unavailable"), "not vacuous: the logs recorded the outage");
    db.drop_db().await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

/// Forwards 127.0.0.1:`from` to 127.0.0.1:`to`: an address that refuses connections until this starts.
async fn forward(from: u16, to: u16) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", from)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}
