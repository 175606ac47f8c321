//! What the bench binaries need: a process entry point, command-line flags, a throwaway database, a
//! `draftd serve` process, and the statistics.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection};

/// A bench binary's command line: `--flag value` or `--flag=value`. `--bench`, which `cargo bench`
/// passes to every bench binary, is skipped; `-h`/`--help` prints the usage and exits.
pub struct Flags {
    args: std::iter::Skip<std::env::Args>,
    usage: &'static str,
    /// The `=value` part of the current flag, when it came that way.
    inline: Option<String>,
}

impl Flags {
    pub fn new(usage: &'static str) -> Self {
        Flags { args: std::env::args().skip(1), usage, inline: None }
    }

    /// The next flag; `None` once there are no more.
    pub fn next_flag(&mut self) -> Option<String> {
        loop {
            let arg = self.args.next()?;
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
                None => (arg, None),
            };
            self.inline = inline;
            match flag.as_str() {
                "--bench" => continue,
                "-h" | "--help" => {
                    println!("{}", self.usage);
                    std::process::exit(0);
                }
                _ => return Some(flag),
            }
        }
    }

    /// The current flag's value.
    pub fn value(&mut self, name: &str) -> anyhow::Result<String> {
        // `cargo bench` appends `--bench`: after a flag with no value, it is no value either.
        let next = self.inline.take().or_else(|| self.args.next().filter(|a| a != "--bench"));
        next.ok_or_else(|| anyhow::anyhow!("{name} needs a value\n{}", self.usage))
    }

    /// The current flag's value as a whole number.
    pub fn whole<T: std::str::FromStr>(&mut self, name: &str) -> anyhow::Result<T> {
        let v = self.value(name)?;
        v.parse().map_err(|_| anyhow::anyhow!("{name}: {v:?} is not a whole number\n{}", self.usage))
    }

    /// The error for a flag the bench does not know.
    pub fn unknown(&self, flag: &str) -> anyhow::Error {
        anyhow::anyhow!("unknown argument {flag:?}\n{}", self.usage)
    }
}

/// Parses the arguments (exit 2 on bad ones), runs `bench` on a fresh tokio runtime, exits 1 on failure.
pub fn main_with<A, Fut>(parse: fn() -> anyhow::Result<A>, bench: fn(A) -> Fut) -> ExitCode
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nbench FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Creates `<prefix>_<random>` on the server of `DATABASE_URL`; returns (admin URL, database name).
pub async fn create_database(prefix: &str, script: &str) -> anyhow::Result<(String, String)> {
    let admin_url = std::env::var("DATABASE_URL")
        .with_context(|| format!("DATABASE_URL is not set ({script} sets it from scripts/pg-env.sh)"))?;
    let db = format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut admin = PgConnection::connect(&admin_url).await.context("connecting to DATABASE_URL")?;
    sqlx::query(&format!("create database {db}"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating {db}"))?;
    admin.close().await.ok();
    println!("bench database {db}");
    Ok((admin_url, db))
}

/// A bench around a `draftd serve`: makes its database, runs `run(admin_url, db, log_path)` until it
/// ends or Ctrl-C (whatever it started is stopped with its future), drops the database however it
/// ended, and keeps draftd's log on failure or when asked.
#[allow(dead_code)] // benches/pipeline.rs drives the library, not a server
pub async fn with_fresh_database<F, Fut>(prefix: &str, script: &str, keep_log: bool, run: F) -> anyhow::Result<()>
where
    F: FnOnce(String, String, std::path::PathBuf) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (admin_url, db) = create_database(prefix, script).await?;
    let log_path = std::env::temp_dir().join(format!("{db}.draftd.log"));
    let result = tokio::select! {
        r = run(admin_url.clone(), db.clone(), log_path.clone()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let dropped = drop_database(&admin_url, &db).await;
    match &dropped {
        Ok(()) => println!("dropped database {db}"),
        Err(e) => eprintln!("could not drop database {db}: {e:#}"),
    }
    if result.is_err() {
        print_log_tail(&log_path, 40);
        eprintln!("draftd's log is kept at {}", log_path.display());
    } else if keep_log {
        println!("draftd's log: {}", log_path.display());
    } else {
        let _ = std::fs::remove_file(&log_path);
    }
    result.and(dropped)
}

/// A bench that drives the library itself: makes its database, runs `run(url)` until it ends or
/// Ctrl-C (the engines and pools it made go with its future), and drops the database however it
/// ended (`with (force)` ends any connection left).
#[allow(dead_code)] // the benches around a `draftd serve` use with_fresh_database
pub async fn in_fresh_database<F, Fut>(prefix: &str, script: &str, run: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (admin_url, db) = create_database(prefix, script).await?;
    let result = tokio::select! {
        r = run(with_database(&admin_url, &db)) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let dropped = drop_database(&admin_url, &db).await;
    match &dropped {
        Ok(()) => println!("dropped database {db}"),
        Err(e) => eprintln!("could not drop database {db}: {e:#}"),
    }
    result.and(dropped)
}

pub async fn drop_database(admin_url: &str, db: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("drop database if exists {db} with (force)")).execute(&mut admin).await?;
    admin.close().await.ok();
    Ok(())
}

/// `postgres://…/postgres?x=y` with the database part replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[after_scheme..].find('/').map(|i| after_scheme + i).unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..authority_end])
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

// ---------------------------------------------------------------------------------------------
// The real `draftd serve` process, for the benches that measure it from outside (intake, soak).

/// How to start `draftd serve`: its config, database, log file, working directory and binary, and
/// the environment variables the bench sets (secrets by name, settings overridden by `DRAFTD_…`).
#[allow(dead_code)]
pub struct ServerSpec {
    pub config: std::path::PathBuf,
    pub database_url: String,
    pub log: std::path::PathBuf,
    pub dir: std::path::PathBuf,
    pub binary: std::path::PathBuf,
    pub env: Vec<(String, String)>,
}

/// A running `draftd serve`; dropping it stops it (SIGTERM, then SIGKILL after 10 s).
#[allow(dead_code)]
pub struct Server {
    child: Option<std::process::Child>,
    pub pid: u32,
    pub addr: String,
    pub started: std::time::Instant,
}

#[allow(dead_code)]
const READY_POLL: Duration = Duration::from_millis(5);
#[allow(dead_code)]
const READY_TIMEOUT: Duration = Duration::from_secs(60);
#[allow(dead_code)]
const STOP_GRACE: Duration = Duration::from_secs(10);

#[allow(dead_code)]
impl Server {
    /// On a free loopback port.
    pub fn start(spec: &ServerSpec) -> anyhow::Result<Server> {
        Self::start_at(spec, &format!("127.0.0.1:{}", free_port()?))
    }

    /// On `addr` (a restarted server takes its predecessor's address, so senders keep their URL).
    pub fn start_at(spec: &ServerSpec, addr: &str) -> anyhow::Result<Server> {
        use std::process::{Command, Stdio};
        let log = std::fs::File::options().create(true).append(true).open(&spec.log)?;
        let mut cmd = Command::new(&spec.binary);
        cmd.arg("serve").arg("--config").arg(&spec.config).current_dir(&spec.dir);
        // Only what the bench sets: no inherited DRAFTD_* overrides, default log level and format.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DRAFTD_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env_remove("RUST_LOG").env("DRAFTD_DATABASE_URL", &spec.database_url).env("DRAFTD_LISTEN", addr);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let started = std::time::Instant::now();
        let child = cmd.spawn().with_context(|| format!("starting {}", spec.binary.display()))?;
        let pid = child.id();
        Ok(Server { child: Some(child), pid, addr: addr.to_owned(), started })
    }

    /// Polls `/health/ready` every 5 ms; the time from spawn until it answers 200.
    pub async fn wait_ready(&mut self, probe: &reqwest::Client) -> anyhow::Result<Duration> {
        let url = format!("http://{}/health/ready", self.addr);
        loop {
            if let Ok(res) = probe.get(&url).send().await
                && res.status() == reqwest::StatusCode::OK
            {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                anyhow::bail!("draftd exited before it was ready: {status}");
            }
            if self.started.elapsed() > READY_TIMEOUT {
                anyhow::bail!("draftd was not ready after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// SIGKILL, as a crash or an OOM kill would end it, and reaped.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL; how long it took to exit.
    pub fn stop(&mut self) -> anyhow::Result<Duration> {
        let Some(mut child) = self.child.take() else { return Ok(Duration::ZERO) };
        let t0 = std::time::Instant::now();
        if child.try_wait()?.is_some() {
            return Ok(Duration::ZERO);
        }
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        while t0.elapsed() < STOP_GRACE {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    eprintln!("draftd exited with {status} after SIGTERM");
                }
                return Ok(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("draftd still running {STOP_GRACE:?} after SIGTERM; killing it");
        child.kill()?;
        child.wait()?;
        Ok(t0.elapsed())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping draftd (pid {}): {e:#}", self.pid);
        }
    }
}

#[allow(dead_code)]
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `sha256=<hex>`: GitHub's `X-Hub-Signature-256` of `body` with `secret`.
#[allow(dead_code)]
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A `kB` line of /proc/<pid>/status, e.g. VmRSS or VmHWM.
#[allow(dead_code)]
pub fn proc_status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {key} in /proc/{pid}/status"))
}

/// The last `lines` lines of a log file, on stderr.
#[allow(dead_code)]
pub fn print_log_tail(path: &std::path::Path, lines: usize) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    eprintln!("--- last lines of draftd's log ({}) ---", path.display());
    for l in &all[all.len().saturating_sub(lines)..] {
        eprintln!("{l}");
    }
}
