//! The helm CLI (Helm 4) behind one small trait, [`Helm`]: `upgrade --install` of a stand's release with the
//! project's values files and the stand's `--set-string` overrides, `history`, `rollback`, `uninstall`, and
//! `template`/`lint` for dry-run and checks. The pipeline talks to the trait; [`HelmCli`] runs the binary.
//!
//! Values given with `--set-string` may be sensitive, so they never appear in an error, a log line or a
//! `Debug` print: commands are shown with `key=***`, and the values are cut out of helm's stderr too.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::config::ClusterConfig;
use crate::stand::Failure;

/// Helm's limit on release names.
pub const RELEASE_NAME_MAX: usize = 53;
/// How much of helm's stderr an error keeps (its end, where the reason is).
pub const STDERR_TAIL: usize = 2048;
/// What a redacted value is shown as.
pub const REDACTED: &str = "***";
/// Set values shorter than this are not cut out of stderr (a "42" would mangle line numbers); they are
/// still never shown in a command.
const REDACT_MIN_LEN: usize = 4;
/// Where scripts/install-tools.sh puts Helm 4, relative to the project root.
pub const TOOLS_HELM: &str = ".tools/bin/helm";

/// One stand's Helm release: what `upgrade --install` and `template` are given.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Release {
    /// The release name; see [`release_name`].
    pub name: String,
    pub namespace: String,
    /// A chart directory (or packaged chart).
    pub chart: PathBuf,
    /// Values files, in order: later files win.
    pub values: Vec<PathBuf>,
    /// `--set-string key=value` overrides (image.tag, host, stand.id …), applied after the files. Keys are
    /// Helm paths (`image.tag`) written by draftd; values are escaped for Helm and never shown.
    pub set: BTreeMap<String, String>,
}

impl fmt::Debug for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set: BTreeMap<&str, &str> = self.set.keys().map(|k| (k.as_str(), REDACTED)).collect();
        f.debug_struct("Release")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("chart", &self.chart)
            .field("values", &self.values)
            .field("set", &set)
            .finish()
    }
}

/// One line of `helm history -o json` (Helm's own field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub revision: u32,
    /// `deployed`, `superseded`, `failed`, `pending-install`, `pending-upgrade`, `pending-rollback`,
    /// `uninstalling`, `uninstalled`, `unknown`.
    #[serde(default)]
    pub status: String,
    /// `<chart name>-<chart version>`.
    #[serde(default)]
    pub chart: String,
    #[serde(default)]
    pub app_version: String,
    #[serde(default)]
    pub description: String,
    /// RFC 3339 as helm prints it; Helm 4 leaves the field out when unknown (then empty here).
    #[serde(default)]
    pub updated: String,
}

impl Revision {
    pub fn is_deployed(&self) -> bool {
        self.status == "deployed"
    }
    /// An operation on the release started and never finished (e.g. helm was killed): the next upgrade
    /// fails with "another operation is in progress" until the release is rolled back.
    pub fn is_pending(&self) -> bool {
        self.status.starts_with("pending-")
    }
    /// A revision helm can roll back to: it was applied in full (the live one, or one it replaced).
    pub fn is_complete(&self) -> bool {
        matches!(self.status.as_str(), "deployed" | "superseded")
    }
    /// When helm made it, when helm says.
    pub fn updated_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.updated).ok().map(|t| t.with_timezone(&chrono::Utc))
    }
    /// Whether this is the revision recorded as `revision` made at `updated`. Revision numbers restart
    /// when a release is uninstalled and installed again, so the time tells the two lives apart; a
    /// time missing on either side leaves the number alone to decide.
    pub fn is(&self, revision: u32, updated: &str) -> bool {
        if self.revision != revision {
            return false;
        }
        let recorded = chrono::DateTime::parse_from_rfc3339(updated).ok();
        match (self.updated_at(), recorded) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

/// A failed helm command. Its text never holds a `--set-string` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelmError {
    #[error(
        "helm not found ({tried}): run scripts/install-tools.sh to install Helm 4 into .tools/bin, \
         or set [cluster] helm_path to a Helm 4 binary"
    )]
    NotFound { tried: String },
    #[error("`{command}` timed out after {} and was killed", humantime::format_duration(*.after))]
    Timeout { command: String, after: Duration },
    #[error("`{command}` failed ({}): {stderr}", exit_text(*.code))]
    Failed {
        /// The command with `--set-string` values redacted.
        command: String,
        /// The exit code; `None` when killed by a signal.
        code: Option<i32>,
        /// The last [`STDERR_TAIL`] bytes of stderr, set values cut out.
        stderr: String,
    },
    #[error("could not read the output of `{command}`: {message}")]
    Parse { command: String, message: String },
    #[error("could not run `{command}`: {message}")]
    Io { command: String, message: String },
}

fn exit_text(code: Option<i32>) -> String {
    code.map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit code {c}"))
}

/// Substrings (lower case) of helm's stderr that mean the API server or the network hiccuped: trying
/// again later may pass.
const TRANSIENT_MARKERS: &[&str] = &[
    "connection refused",
    "connection reset by peer",
    "i/o timeout",
    "tls handshake timeout",
    "etcdserver",
    "the server is currently unable",
    "context deadline exceeded",
    "client connection lost",
    "http2: server sent goaway",
    "no route to host",
    "too many requests",
    "the object has been modified",
    "unexpected eof",
    // A ResourceQuota just created has no status until the quota controller computes it; until then the
    // API server refuses pods and workloads it would count ("status unknown for quota").
    "status unknown for quota",
];

/// Helm refuses to touch a release with an unfinished operation (see [`Revision::is_pending`]).
const LOCKED_MARKER: &str = "another operation (install/upgrade/rollback) is in progress";

impl HelmError {
    /// The release has an unfinished operation; a rollback clears it, retrying does not.
    pub fn is_locked(&self) -> bool {
        matches!(self, HelmError::Failed { stderr, .. } if stderr.to_lowercase().contains(LOCKED_MARKER))
    }
}

impl Failure for HelmError {
    /// Timeouts, failures to start the process other than a missing binary, and API-server or
    /// network errors in stderr.
    fn is_transient(&self) -> bool {
        match self {
            HelmError::Timeout { .. } | HelmError::Io { .. } => true,
            HelmError::Failed { stderr, .. } => {
                let stderr = stderr.to_lowercase();
                TRANSIENT_MARKERS.iter().any(|m| stderr.contains(m))
            }
            HelmError::NotFound { .. } | HelmError::Parse { .. } => false,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            HelmError::NotFound { .. } => "helm_missing",
            HelmError::Timeout { .. } => "helm_timeout",
            HelmError::Failed { .. } if self.is_locked() => "helm_locked",
            HelmError::Failed { .. } => "helm_failed",
            HelmError::Parse { .. } => "helm_parse",
            HelmError::Io { .. } => "helm_io",
        }
    }
}

/// A helm command line: the arguments helm gets and, beside them, how they are shown (set values
/// redacted). `Display` and `Debug` show the redacted form.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Argv {
    args: Vec<OsString>,
    shown: Vec<String>,
}

impl Argv {
    pub fn new() -> Self {
        Self::default()
    }

    /// A plain argument, shown as it is.
    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        let arg = arg.into();
        self.shown.push(shell_word(&arg.to_string_lossy()));
        self.args.push(arg);
        self
    }

    /// `--set-string key=value`, with the value escaped for Helm's parser and shown as `key=***`.
    pub fn set_string(&mut self, key: &str, value: &str) -> &mut Self {
        self.args.push("--set-string".into());
        self.args.push(format!("{key}={}", escape_set_value(value)).into());
        self.shown.push("--set-string".into());
        self.shown.push(shell_word(&format!("{key}={REDACTED}")));
        self
    }

    /// The arguments helm receives.
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// The command as it may be logged: `helm <args>` with set values redacted.
    pub fn redacted(&self) -> String {
        let mut s = String::from("helm");
        for a in &self.shown {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

impl fmt::Display for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Argv({})", self.redacted())
    }
}

fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+*%".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Escapes a `--set-string` value for Helm's strvals parser: `,` would start another key, a leading `{`
/// a list, and `\` escapes the next character.
pub fn escape_set_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '{' | '}') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn values_and_sets(argv: &mut Argv, release: &Release) {
    for file in &release.values {
        argv.arg("--values").arg(file);
    }
    for (key, value) in &release.set {
        argv.set_string(key, value);
    }
}

/// `helm upgrade --install` of a release: values files in their order, then the set-strings (sorted by
/// key), JSON output. `--reset-values` makes each revision exactly chart + these values, whatever the
/// previous one had. No `--wait` and no `--rollback-on-failure`: readiness is the verify step's, rollback
/// the pipeline's.
pub fn upgrade_install_argv(release: &Release) -> Argv {
    let mut argv = Argv::new();
    argv.arg("upgrade").arg("--install").arg(&release.name).arg(&release.chart);
    argv.arg("--namespace").arg(&release.namespace).arg("--reset-values");
    values_and_sets(&mut argv, release);
    argv.arg("--output").arg("json");
    argv
}

/// `helm template` of a release, as `upgrade_install_argv` would install it, for `kube_version` when
/// given (`--kube-version`, Capabilities.KubeVersion).
pub fn template_argv(release: &Release, kube_version: Option<&str>) -> Argv {
    let mut argv = Argv::new();
    argv.arg("template").arg(&release.name).arg(&release.chart);
    argv.arg("--namespace").arg(&release.namespace);
    values_and_sets(&mut argv, release);
    if let Some(v) = kube_version {
        argv.arg("--kube-version").arg(v);
    }
    argv
}

/// What helm is told with `--timeout` for operations that change a release, when draftd kills it after
/// `limit` (`[cluster] helm_timeout`): less, so helm gives up by itself and records the revision
/// `failed`. Killed by draftd instead, it would leave the release `pending-*`, locked against every
/// later upgrade.
pub fn operation_timeout(limit: Duration) -> Duration {
    let margin = (limit / 10).max(Duration::from_secs(5));
    limit.saturating_sub(margin).max(Duration::from_secs(1))
}

/// The release name of the stand in `namespace`: the namespace itself when it fits Helm's 53 characters,
/// else its first 46 characters and `-` + 6 hex characters of its SHA-256 (stable, and distinct for
/// namespaces that share a beginning).
pub fn release_name(namespace: &str) -> String {
    if namespace.len() <= RELEASE_NAME_MAX {
        return namespace.to_owned();
    }
    let hash = hex::encode(&Sha256::digest(namespace.as_bytes())[..3]);
    let keep = RELEASE_NAME_MAX - 1 - hash.len();
    let head: String = namespace.chars().take(keep).collect();
    format!("{}-{hash}", head.trim_end_matches(['-', '.']))
}

/// The revision the release JSON `helm upgrade --install -o json` prints describes, as `helm history`
/// would list it: its `info.last_deployed` is history's `updated`, so no history call is needed to
/// tell this revision from a same-numbered one of another life of the release.
pub fn parse_release_revision(stdout: &str) -> Result<Revision, String> {
    #[derive(Deserialize, Default)]
    struct Info {
        #[serde(default)]
        status: String,
        #[serde(default)]
        description: String,
        #[serde(default)]
        last_deployed: String,
    }
    #[derive(Deserialize)]
    struct ReleaseJson {
        version: u32,
        #[serde(default)]
        info: Option<Info>,
    }
    // Be lenient about a line printed before the JSON (Helm 3 printed "Release … does not exist.
    // Installing it now." to stdout).
    let json = match stdout.trim_start().starts_with('{') {
        true => stdout,
        false => stdout.find("\n{").map_or(stdout, |i| &stdout[i + 1..]),
    };
    let release: ReleaseJson = serde_json::from_str(json).map_err(json_error)?;
    if release.version == 0 {
        return Err("the release JSON has no version".into());
    }
    let info = release.info.unwrap_or_default();
    Ok(Revision {
        revision: release.version,
        status: info.status,
        chart: String::new(),
        app_version: String::new(),
        description: info.description,
        updated: info.last_deployed,
    })
}

/// The revisions in `helm history -o json` output, oldest first.
pub fn parse_history(stdout: &str) -> Result<Vec<Revision>, String> {
    let mut revisions: Vec<Revision> = serde_json::from_str(stdout.trim()).map_err(json_error)?;
    revisions.sort_by_key(|r| r.revision);
    Ok(revisions)
}

/// A serde_json error without the input it quotes (the release JSON carries the values).
fn json_error(e: serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "unexpected JSON shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// What draftd does with Helm. Implemented by [`HelmCli`]; tests may fake it.
pub trait Helm: Send + Sync + 'static {
    /// `helm upgrade --install`; the new revision (its number, status and time).
    fn upgrade_install(&self, release: &Release) -> impl Future<Output = Result<Revision, HelmError>> + Send;
    /// The rendered manifests (multi-document YAML), nothing applied.
    fn template(&self, release: &Release) -> impl Future<Output = Result<String, HelmError>> + Send;
    /// The release's revisions, oldest first; empty when there is no such release.
    fn history(&self, name: &str, namespace: &str) -> impl Future<Output = Result<Vec<Revision>, HelmError>> + Send;
    /// `helm rollback` to `revision` (which makes a new revision).
    fn rollback(
        &self,
        name: &str,
        namespace: &str,
        revision: u32,
    ) -> impl Future<Output = Result<(), HelmError>> + Send;
    /// `helm uninstall`; a release that does not exist counts as uninstalled.
    fn uninstall(&self, name: &str, namespace: &str) -> impl Future<Output = Result<(), HelmError>> + Send;
    /// `helm lint --strict`; its report when clean, else [`HelmError::Failed`] with the report.
    fn lint(&self, chart: &Path, values: &[PathBuf]) -> impl Future<Output = Result<String, HelmError>> + Send;
}

/// The helm binary, run with tokio: killed when its time is up or its future is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelmCli {
    pub path: PathBuf,
    /// One command may take this long; then it is killed and [`HelmError::Timeout`] returned.
    pub timeout: Duration,
    /// `--kubeconfig` for commands that talk to the cluster; else helm's default (`$KUBECONFIG`, ~/.kube).
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-context`; else the kubeconfig's current context.
    pub context: Option<String>,
    /// `--kube-version` for `template` and `lint` (the cluster's version in dry-run); else helm's default.
    pub kube_version: Option<String>,
    /// `--history-max` of upgrades; `None` leaves helm's default (10).
    pub history_max: Option<u32>,
}

impl HelmCli {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

    fn timeout_flag(&self, argv: &mut Argv) {
        argv.arg("--timeout").arg(format!("{}s", operation_timeout(self.timeout).as_secs()));
    }

    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            timeout: Self::DEFAULT_TIMEOUT,
            kubeconfig: None,
            context: None,
            kube_version: None,
            history_max: None,
        }
    }

    /// From `[cluster]`: the binary found by [`HelmCli::locate`], `helm_timeout`, `kubeconfig`, `context`.
    pub fn from_config(cluster: &ClusterConfig, project_root: &Path) -> Result<Self, HelmError> {
        Ok(Self::with_path(Self::locate(cluster.helm_path.as_deref(), project_root)?, cluster))
    }

    /// `[cluster]`'s settings with `path` as the binary, found or not (`draftd plan` only shows commands).
    pub fn with_path(path: impl Into<PathBuf>, cluster: &ClusterConfig) -> Self {
        Self {
            path: path.into(),
            timeout: cluster.helm_timeout,
            kubeconfig: cluster.kubeconfig.clone(),
            context: cluster.context.clone(),
            kube_version: None,
            history_max: Some(cluster.helm_history_max),
        }
    }

    /// The `upgrade --install` command exactly as [`Helm::upgrade_install`] runs it.
    pub fn upgrade_install_command(&self, release: &Release) -> Argv {
        let mut argv = upgrade_install_argv(release);
        if let Some(max) = self.history_max {
            argv.arg("--history-max").arg(max.to_string());
        }
        self.timeout_flag(&mut argv);
        self.cluster_flags(&mut argv);
        argv
    }

    /// The helm binary to run: `config_path` (`[cluster] helm_path`) when set — a bare name is looked up on
    /// `PATH`, a relative path is taken from `project_root` — else `<project_root>/.tools/bin/helm` when
    /// scripts/install-tools.sh put it there, else `helm` on `PATH`. An error names what was tried.
    pub fn locate(config_path: Option<&Path>, project_root: &Path) -> Result<PathBuf, HelmError> {
        if let Some(path) = config_path {
            let bare = path.components().count() == 1 && !path.is_absolute() && !path.starts_with(".");
            let found = if bare { find_on_path(path.as_os_str()) } else { Some(project_root.join(path)) };
            let what = if bare { "is not an executable on PATH" } else { "is not an executable file" };
            return found.filter(|p| is_executable(p)).ok_or_else(|| HelmError::NotFound {
                tried: format!("[cluster] helm_path = {:?} {what}", path.display().to_string()),
            });
        }
        let tools = project_root.join(TOOLS_HELM);
        if is_executable(&tools) {
            return Ok(tools);
        }
        find_on_path("helm".as_ref()).ok_or_else(|| HelmError::NotFound {
            tried: format!("no executable {} and no helm on PATH", tools.display()),
        })
    }

    /// `helm version`, e.g. `v4.1.4`.
    pub async fn version(&self) -> Result<String, HelmError> {
        let mut argv = Argv::new();
        argv.arg("version").arg("--template").arg("{{.Version}}");
        let out = self.run(&argv, &[]).await?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn cluster_flags(&self, argv: &mut Argv) {
        if let Some(k) = &self.kubeconfig {
            argv.arg("--kubeconfig").arg(k);
        }
        if let Some(c) = &self.context {
            argv.arg("--kube-context").arg(c);
        }
    }

    /// Runs helm; the output of a zero exit, else [`HelmError::Failed`] with `secrets` cut out of stderr.
    async fn run(&self, argv: &Argv, secrets: &[&str]) -> Result<Output, HelmError> {
        let output = self.spawn(argv).await?;
        if output.status.success() {
            return Ok(output);
        }
        Err(HelmError::Failed {
            command: argv.redacted(),
            code: output.status.code(),
            stderr: tail(&redact(&String::from_utf8_lossy(&output.stderr), secrets), STDERR_TAIL),
        })
    }

    /// Runs helm and returns whatever it exited with; only failing to run or timing out are errors.
    async fn spawn(&self, argv: &Argv) -> Result<Output, HelmError> {
        let command = argv.redacted();
        let started = Instant::now();
        let child = Command::new(&self.path)
            .args(argv.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    HelmError::NotFound { tried: format!("{}: {e}", self.path.display()) }
                }
                _ => HelmError::Io { command: command.clone(), message: e.to_string() },
            })?;
        // On timeout the future, and with it the child, is dropped: kill_on_drop kills helm.
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(HelmError::Io { command, message: e.to_string() }),
            Err(_) => {
                tracing::warn!(%command, timeout = ?self.timeout, "helm timed out; killed");
                return Err(HelmError::Timeout { command, after: self.timeout });
            }
        };
        tracing::debug!(%command, code = ?output.status.code(), elapsed = ?started.elapsed(), "helm");
        Ok(output)
    }
}

fn set_values(release: &Release) -> Vec<&str> {
    release.set.values().map(String::as_str).collect()
}

fn parse_error(argv: &Argv, message: String) -> HelmError {
    HelmError::Parse { command: argv.redacted(), message }
}

fn is_not_found(err: &HelmError) -> bool {
    matches!(err, HelmError::Failed { stderr, .. } if stderr.contains("release: not found"))
}

impl Helm for HelmCli {
    async fn upgrade_install(&self, release: &Release) -> Result<Revision, HelmError> {
        let argv = self.upgrade_install_command(release);
        let out = self.run(&argv, &set_values(release)).await?;
        parse_release_revision(&String::from_utf8_lossy(&out.stdout)).map_err(|m| parse_error(&argv, m))
    }

    async fn template(&self, release: &Release) -> Result<String, HelmError> {
        let argv = template_argv(release, self.kube_version.as_deref());
        let out = self.run(&argv, &set_values(release)).await?;
        String::from_utf8(out.stdout).map_err(|_| parse_error(&argv, "the manifests are not UTF-8".into()))
    }

    async fn history(&self, name: &str, namespace: &str) -> Result<Vec<Revision>, HelmError> {
        let mut argv = Argv::new();
        argv.arg("history").arg(name).arg("--namespace").arg(namespace).arg("--output").arg("json");
        self.cluster_flags(&mut argv);
        match self.run(&argv, &[]).await {
            Ok(out) => parse_history(&String::from_utf8_lossy(&out.stdout)).map_err(|m| parse_error(&argv, m)),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    async fn rollback(&self, name: &str, namespace: &str, revision: u32) -> Result<(), HelmError> {
        let mut argv = Argv::new();
        argv.arg("rollback").arg(name).arg(revision.to_string()).arg("--namespace").arg(namespace);
        self.timeout_flag(&mut argv);
        self.cluster_flags(&mut argv);
        self.run(&argv, &[]).await.map(drop)
    }

    async fn uninstall(&self, name: &str, namespace: &str) -> Result<(), HelmError> {
        let mut argv = Argv::new();
        argv.arg("uninstall").arg(name).arg("--namespace").arg(namespace).arg("--ignore-not-found");
        self.timeout_flag(&mut argv);
        self.cluster_flags(&mut argv);
        match self.run(&argv, &[]).await {
            Err(e) if !is_not_found(&e) => Err(e),
            _ => Ok(()),
        }
    }

    async fn lint(&self, chart: &Path, values: &[PathBuf]) -> Result<String, HelmError> {
        let mut argv = Argv::new();
        argv.arg("lint").arg("--strict").arg(chart);
        for file in values {
            argv.arg("--values").arg(file);
        }
        if let Some(v) = &self.kube_version {
            argv.arg("--kube-version").arg(v);
        }
        let out = self.spawn(&argv).await?;
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(report);
        }
        // lint prints its findings on stdout and only a summary on stderr: keep both.
        let all = format!("{}\n{}", report.trim_end(), String::from_utf8_lossy(&out.stderr).trim_end());
        Err(HelmError::Failed { command: argv.redacted(), code: out.status.code(), stderr: tail(&all, STDERR_TAIL) })
    }
}

/// `text` with every secret (and its Helm-escaped form) of at least [`REDACT_MIN_LEN`] bytes replaced.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    let mut secrets: Vec<String> = secrets
        .iter()
        .filter(|s| s.len() >= REDACT_MIN_LEN)
        .flat_map(|s| [escape_set_value(s), (*s).to_owned()])
        .collect();
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in &secrets {
        out = out.replace(s.as_str(), REDACTED);
    }
    out
}

/// The last `max` bytes of `text` (on a character boundary), trimmed, marked when cut.
fn tail(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_on_path(name: &std::ffi::OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}
