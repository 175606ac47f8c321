//! Typed settings: a TOML file (`--config` or `DRAFTD_CONFIG`) with every value overridable by
//! `DRAFTD_…` environment variables (`__` separates levels: `DRAFTD_STANDS__TTL=24h`).
//!
//! Loading validates everything it can without side effects and names the key and the file (or the
//! environment variable) in every error. Secrets are never in the file: the file names the
//! environment variable that holds each one, and [`Projects::resolve`] reads them when `serve` starts.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use globset::{GlobSet, GlobSetBuilder};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::stand::ProjectName;

mod registry;
pub use registry::{BuildConfig, ProjectBuild, RegistryConfig};

/// Top-level keys; environment variables naming anything else (like `DRAFTD_CONFIG` or
/// `DRAFTD_API_TOKEN`, which are not settings) are not read as settings.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "database_url",
    "public_url",
    "api",
    "cluster",
    "stands",
    "reaper",
    "intake",
    "postgres",
    "vault",
    "github",
    "gitlab",
    "registry",
    "build",
    "projects",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    /// A value of the wrong type or shape; `key` is spelt as in its source (TOML path or variable name).
    #[error("config {source_name}: key `{key}`: {message}")]
    Invalid { source_name: String, key: String, message: String },
    #[error("config {source_name}: key `{key}`: environment variable {var} is not set or empty")]
    MissingSecret { source_name: String, key: String, var: String },
}

/// The loaded configuration. Secrets are not here, only the names of the variables holding them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the HTTP listener binds: webhooks, health, and later the API and dashboard.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// draftd's own state. Default: the machine-local Postgres, database `draftd`.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// Base of links in reports.
    #[serde(default = "default_public_url")]
    pub public_url: String,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub stands: StandsConfig,
    #[serde(default)]
    pub reaper: ReaperConfig,
    #[serde(default)]
    pub intake: IntakeConfig,
    pub postgres: Option<PostgresConfig>,
    pub vault: Option<VaultConfig>,
    #[serde(default)]
    pub github: GithubConfig,
    #[serde(default)]
    pub gitlab: GitlabConfig,
    /// The registry of the projects' images: the image step waits for each stand's tag there.
    /// Without it (and without a project's own `registry`) the image is not checked.
    pub registry: Option<RegistryConfig>,
    #[serde(default)]
    pub build: BuildConfig,
    #[serde(default)]
    pub projects: Vec<ProjectConfig>,
    /// Where the file came from, for error messages; not a setting.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_database_url() -> String {
    "postgres://postgres@127.0.0.1:5432/draftd".into()
}
fn default_public_url() -> String {
    "http://127.0.0.1:8080".into()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Variable holding the bearer token for the API and the dashboard's buttons.
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterMode {
    Kubernetes,
    /// Render and record under `dry_run_dir`, apply nothing: the default, so a first run is harmless.
    #[default]
    DryRun,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default)]
    pub mode: ClusterMode,
    /// Where dry-run mode writes each stand's rendered manifests.
    #[serde(default = "default_dry_run_dir")]
    pub dry_run_dir: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// The Helm 4 binary; default: `.tools/bin/helm` when scripts/install-tools.sh put it there, else PATH.
    pub helm_path: Option<PathBuf>,
    /// One helm command may take this long before it is killed and counted a transient failure.
    #[serde(default = "default_helm_timeout", with = "humantime_serde")]
    pub helm_timeout: Duration,
    /// Revisions helm keeps per stand release (`--history-max`); older ones are pruned, and a pruned
    /// revision is no rollback target any more.
    #[serde(default = "default_helm_history_max")]
    pub helm_history_max: u32,
    /// The Pod Security Standard stand namespaces enforce (`baseline` or `restricted`); unset leaves
    /// the cluster's default. draftd's own Jobs meet `restricted`, and so does charts/stand.
    pub pod_security: Option<PodSecurity>,
    /// The ingress controller's namespace, whose pods may open connections to a stand; empty for none
    /// (then list the controller in `ingress_from`).
    #[serde(default = "default_ingress_namespace")]
    pub ingress_namespace: String,
    /// Who else may connect to a stand's pods: an ingress controller in kube-system or on the host
    /// network (by `cidr`), the API server for verify's proxy probe on multi-node clusters.
    #[serde(default)]
    pub ingress_from: Vec<NetworkPeer>,
    /// Where a stand's pods may connect outside their namespace besides cluster DNS, as CIDRs of
    /// hosts outside the cluster (all ports). Everything else is denied.
    #[serde(default)]
    pub egress_cidrs: Vec<String>,
    /// Where else a stand's pods may connect: in-cluster services by namespace (and pod labels), and
    /// external hosts by `cidr`, on the given ports. The stand database of `[postgres] host` is
    /// added by itself when it is an in-cluster Service name or an IP address.
    #[serde(default)]
    pub egress_to: Vec<NetworkPeer>,
    /// Where a stand's pods may send DNS queries (UDP and TCP 53): by default the cluster's kube-dns
    /// pods. NodeLocal DNSCache listens on a link-local address on each node: add its `cidr`
    /// (169.254.20.10/32 by default) beside kube-dns.
    #[serde(default = "default_dns_to")]
    pub dns_to: Vec<NetworkPeer>,
    #[serde(default)]
    pub quota: QuotaConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// draftd's own ServiceAccount as `namespace/name`: the namespace step binds `stand_role` to it
    /// inside each stand namespace (deploy/rbac.yaml). Unset: no RoleBinding, for a draftd that
    /// runs with rights granted otherwise (a developer's kubeconfig).
    pub service_account: Option<String>,
    /// The ClusterRole holding draftd's rights inside a stand namespace.
    #[serde(default = "default_stand_role")]
    pub stand_role: String,
    #[serde(default)]
    pub verify: VerifyConfig,
    /// The migrate and smoke Jobs are killed after this long.
    #[serde(default = "default_job_deadline", with = "humantime_serde")]
    pub job_deadline: Duration,
    /// How long teardown waits for a namespace to be gone before reporting what holds it.
    #[serde(default = "default_teardown_wait", with = "humantime_serde")]
    pub teardown_wait: Duration,
}

/// How the verify step decides a stand is healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// Every Deployment and StatefulSet of the release must have rolled out within this.
    #[serde(default = "default_rollout_timeout", with = "humantime_serde")]
    pub rollout_timeout: Duration,
    /// The app's path probed after the rollout (the chart's readiness path).
    #[serde(default = "default_probe_path")]
    pub probe_path: String,
    /// Probes spread over `probe_window`: a stand that answers once and then crashes is caught.
    #[serde(default = "default_probes")]
    pub probes: u32,
    #[serde(default = "default_probe_window", with = "humantime_serde")]
    pub probe_window: Duration,
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// `host:port` of the ingress controller: stands with a host are probed there in plain HTTP with
    /// their host as the Host header, instead of at their public URL (before DNS or a certificate
    /// exist, or where draftd cannot resolve stand hosts). E.g.
    /// `ingress-nginx-controller.ingress-nginx.svc:80`.
    pub ingress_address: Option<String>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            rollout_timeout: default_rollout_timeout(),
            probe_path: default_probe_path(),
            probes: default_probes(),
            probe_window: default_probe_window(),
            probe_timeout: default_probe_timeout(),
            ingress_address: None,
        }
    }
}

fn default_rollout_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_probe_path() -> String {
    "/health/ready".into()
}
fn default_probes() -> u32 {
    5
}
fn default_probe_window() -> Duration {
    Duration::from_secs(20)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_job_deadline() -> Duration {
    Duration::from_secs(600)
}
fn default_teardown_wait() -> Duration {
    Duration::from_secs(300)
}

fn default_stand_role() -> String {
    "draftd-stand".into()
}

/// The ResourceQuota of each stand namespace: one stand is a preview, not a production copy, and a
/// runaway stand must not starve the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Sum of CPU requests: the app, three mocks and a job at their defaults fit with room to spare.
    #[serde(default = "default_quota_requests_cpu")]
    pub requests_cpu: String,
    #[serde(default = "default_quota_requests_memory")]
    pub requests_memory: String,
    #[serde(default = "default_quota_limits_cpu")]
    pub limits_cpu: String,
    #[serde(default = "default_quota_limits_memory")]
    pub limits_memory: String,
    /// Pods, counting rollouts' surge and the migrate and smoke Jobs.
    #[serde(default = "default_quota_pods")]
    pub pods: u32,
    #[serde(default = "default_quota_pvcs")]
    pub persistent_volume_claims: u32,
    #[serde(default = "default_quota_storage")]
    pub requests_storage: String,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            requests_cpu: default_quota_requests_cpu(),
            requests_memory: default_quota_requests_memory(),
            limits_cpu: default_quota_limits_cpu(),
            limits_memory: default_quota_limits_memory(),
            pods: default_quota_pods(),
            persistent_volume_claims: default_quota_pvcs(),
            requests_storage: default_quota_storage(),
        }
    }
}

fn default_quota_requests_cpu() -> String {
    "2".into()
}
fn default_quota_requests_memory() -> String {
    "4Gi".into()
}
fn default_quota_limits_cpu() -> String {
    "4".into()
}
fn default_quota_limits_memory() -> String {
    "8Gi".into()
}
fn default_quota_pods() -> u32 {
    20
}
fn default_quota_pvcs() -> u32 {
    5
}
fn default_quota_storage() -> String {
    "10Gi".into()
}

/// The LimitRange of each stand namespace: what a container gets when its chart sets nothing (so the
/// quota can be enforced at all), and the most one container may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_limit_request_cpu")]
    pub default_request_cpu: String,
    #[serde(default = "default_limit_request_memory")]
    pub default_request_memory: String,
    #[serde(default = "default_limit_cpu")]
    pub default_cpu: String,
    #[serde(default = "default_limit_memory")]
    pub default_memory: String,
    #[serde(default = "default_limit_max_cpu")]
    pub max_cpu: String,
    #[serde(default = "default_limit_max_memory")]
    pub max_memory: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            default_request_cpu: default_limit_request_cpu(),
            default_request_memory: default_limit_request_memory(),
            default_cpu: default_limit_cpu(),
            default_memory: default_limit_memory(),
            max_cpu: default_limit_max_cpu(),
            max_memory: default_limit_max_memory(),
        }
    }
}

fn default_limit_request_cpu() -> String {
    "50m".into()
}
fn default_limit_request_memory() -> String {
    "64Mi".into()
}
fn default_limit_cpu() -> String {
    "500m".into()
}
fn default_limit_memory() -> String {
    "512Mi".into()
}
fn default_limit_max_cpu() -> String {
    "2".into()
}
fn default_limit_max_memory() -> String {
    "2Gi".into()
}

/// A plain Kubernetes quantity: a decimal number with an optional SI or binary suffix.
fn is_quantity(s: &str) -> bool {
    let number = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[number.len()..];
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
        && ["", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].contains(&suffix)
}

/// A peer names a namespace or an address range, never both or neither; labels and ports are valid.
fn check_peer(peer: &NetworkPeer) -> Result<(), String> {
    match (&peer.namespace, &peer.cidr) {
        (Some(ns), None) if crate::stand::is_dns_label(ns) => {}
        (Some(ns), None) => return Err(format!("namespace {ns:?} is not a namespace name")),
        (None, Some(cidr)) if !is_cidr(cidr) => return Err(format!("{cidr:?} is not a CIDR")),
        (None, Some(_)) if !peer.pods.is_empty() => {
            return Err("`pods` selects pods within a `namespace`; a `cidr` takes no pod labels".into());
        }
        (None, Some(_)) => {}
        _ => return Err("set exactly one of `namespace` (with optional `pods` labels) or `cidr`".into()),
    }
    if let Some((k, v)) = peer.pods.iter().find(|(k, v)| k.is_empty() || k.len() > 317 || v.len() > 63) {
        return Err(format!("{k:?} = {v:?} is not a label selector"));
    }
    if peer.ports.contains(&0) {
        return Err("ports run from 1 to 65535".into());
    }
    Ok(())
}

/// `address/prefix`, IPv4 or IPv6, as a NetworkPolicy's ipBlock takes it.
fn is_cidr(s: &str) -> bool {
    let Some((addr, prefix)) = s.split_once('/') else { return false };
    let Ok(prefix) = prefix.parse::<u8>() else { return false };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

fn default_ingress_namespace() -> String {
    "ingress-nginx".into()
}

/// A level of the Pod Security Standards, as the `pod-security.kubernetes.io/*` labels take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurity {
    Privileged,
    Baseline,
    Restricted,
}

impl PodSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurity::Privileged => "privileged",
            PodSecurity::Baseline => "baseline",
            PodSecurity::Restricted => "restricted",
        }
    }
}

fn default_dns_to() -> Vec<NetworkPeer> {
    vec![NetworkPeer {
        namespace: Some("kube-system".into()),
        pods: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
        ..NetworkPeer::default()
    }]
}

/// One peer of a stand's NetworkPolicies: a namespace (all its pods, or those with `pods` labels),
/// or an address range outside the pod network (`cidr`: host-network pods, nodes, the API server,
/// hosts outside the cluster). Service addresses are translated to pod addresses before policies
/// apply, so an in-cluster Service is named by its namespace and pods, never by a `cidr`, and
/// `ports` are the pods' ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPeer {
    pub namespace: Option<String>,
    #[serde(default)]
    pub pods: BTreeMap<String, String>,
    pub cidr: Option<String>,
    /// TCP ports; empty for all.
    #[serde(default)]
    pub ports: Vec<u16>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            mode: ClusterMode::default(),
            dry_run_dir: default_dry_run_dir(),
            kubeconfig: None,
            context: None,
            helm_path: None,
            helm_timeout: default_helm_timeout(),
            helm_history_max: default_helm_history_max(),
            pod_security: None,
            ingress_namespace: default_ingress_namespace(),
            ingress_from: Vec::new(),
            egress_cidrs: Vec::new(),
            egress_to: Vec::new(),
            dns_to: default_dns_to(),
            quota: QuotaConfig::default(),
            limits: LimitsConfig::default(),
            service_account: None,
            stand_role: default_stand_role(),
            verify: VerifyConfig::default(),
            job_deadline: default_job_deadline(),
            teardown_wait: default_teardown_wait(),
        }
    }
}

fn default_helm_history_max() -> u32 {
    10
}

fn default_helm_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_dry_run_dir() -> PathBuf {
    PathBuf::from("stands")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandsConfig {
    /// A stand lives this long after its last deploy started; 48h covers a weekend-free review cycle.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Upper bound on runs in flight across all projects and replicas, to protect the cluster and the forge API.
    #[serde(default = "default_max_concurrent_runs")]
    pub max_concurrent_runs: u32,
    /// Runs one draftd process drives at once.
    #[serde(default = "default_workers")]
    pub workers: u32,
    /// A run whose process stopped renewing its lease for this long is resumed by another worker;
    /// long enough to ride out a slow database, short enough that a crash costs little.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// How much `extend` adds when it is not told (`/draft extend`, `stands extend` without `--by`).
    #[serde(default = "default_extend_by", with = "humantime_serde")]
    pub extend_by: Duration,
    /// `extend` never moves a stand's expiry further than this from now: a forgotten stand still goes.
    #[serde(default = "default_max_expiry", with = "humantime_serde")]
    pub max_expiry: Duration,
}

fn default_extend_by() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_max_expiry() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// The sweep that removes what should be gone (DESIGN.md's reaper): expired stands, stands whose
/// PR was closed while a webhook was lost, and orphans. `serve` runs it on `schedule`; `draftd reap`
/// runs one sweep, for a Kubernetes CronJob.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaperConfig {
    /// Whether `serve` sweeps by itself; off when a CronJob runs `draftd reap` instead (both may
    /// run: an advisory lock lets one sweep at a time).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Cron expression with seconds (the `cron` crate's: sec min hour day-of-month month day-of-week).
    #[serde(default = "default_reaper_schedule")]
    pub schedule: String,
    /// The sticky comment warns this long before a stand expires.
    #[serde(default = "default_warn_before", with = "humantime_serde")]
    pub warn_before: Duration,
    /// Compare open PRs/MRs on the forge with the stands (missed webhooks).
    #[serde(default = "default_true")]
    pub resync: bool,
    /// Look for namespaces, folders, databases, roles and Vault roles that no live stand owns.
    #[serde(default = "default_true")]
    pub orphans: bool,
    /// PRs/MRs looked up one by one per project and sweep, to confirm they were closed; bounds the
    /// forge calls a sweep makes when the list of open ones comes back short.
    #[serde(default = "default_max_lookups")]
    pub max_lookups: u32,
}

fn default_reaper_schedule() -> String {
    "0 */10 * * * *".into()
}

fn default_warn_before() -> Duration {
    Duration::from_secs(4 * 3600)
}

fn default_max_lookups() -> u32 {
    50
}

impl Default for ReaperConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            schedule: default_reaper_schedule(),
            warn_before: default_warn_before(),
            resync: true,
            orphans: true,
            max_lookups: default_max_lookups(),
        }
    }
}

impl ReaperConfig {
    /// The parsed schedule; [`Config`] validation has checked it parses.
    pub fn cron(&self) -> Result<cron::Schedule, String> {
        use std::str::FromStr;
        cron::Schedule::from_str(&self.schedule).map_err(|e| e.to_string())
    }
}

fn default_lease() -> Duration {
    Duration::from_secs(30)
}

impl Default for StandsConfig {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            max_concurrent_runs: default_max_concurrent_runs(),
            workers: default_workers(),
            lease: default_lease(),
            extend_by: default_extend_by(),
            max_expiry: default_max_expiry(),
        }
    }
}

fn default_workers() -> u32 {
    4
}

fn default_ttl() -> Duration {
    Duration::from_secs(48 * 3600)
}
fn default_max_concurrent_runs() -> u32 {
    8
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeConfig {
    /// GitHub caps webhook payloads at 25 MiB; anything larger is not from a forge.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Connections to draftd's own database; intake holds one only for its single transaction.
    #[serde(default = "default_db_pool_size")]
    pub db_pool_size: u32,
    /// Connections the kernel completes and holds for draftd while it cannot accept them (a pod
    /// throttled or paused for a second): beyond it, connecting clients' SYNs are dropped and
    /// retried 1, 3, 7 s later, past a forge's delivery timeout, and GitHub does not redeliver by
    /// itself. Linux caps it at `net.core.somaxconn` (4096 since kernel 5.4, 128 before; `serve`
    /// warns when it is lower than this value).
    #[serde(default = "default_listen_backlog")]
    pub listen_backlog: u32,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body_bytes(),
            db_pool_size: default_db_pool_size(),
            listen_backlog: default_listen_backlog(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    25 * 1024 * 1024
}
fn default_db_pool_size() -> u32 {
    32
}
/// Twice a burst of 500 deliveries (a busy forge after a pause), well inside the default somaxconn.
fn default_listen_backlog() -> u32 {
    1024
}

/// The server hosting per-stand databases (used from the databases issue on).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Environment variable holding the admin URL (a role with CREATEDB and CREATEROLE).
    pub admin_url_env: String,
    /// `host:port` at which stands (and Vault) reach this server, when it differs from the admin
    /// URL's (draftd often reaches it through a tunnel or a loopback address the pods cannot use).
    pub host: Option<String>,
    /// Without `[vault]`: how long each login draftd issues lives (`VALID UNTIL`); draftd issues a
    /// new one before it ends. At most 1h.
    #[serde(default = "default_credential_ttl", with = "humantime_serde")]
    pub credential_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VaultAuth {
    Token,
    Approle,
    Kubernetes,
}

/// Vault or OpenBao (used from the databases issue on).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    pub address: String,
    pub auth: VaultAuth,
    /// `auth = "token"`: the environment variable, or the file, holding the token.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// `auth = "approle"`: the role id, and the environment variable or file holding the secret id.
    pub role_id: Option<String>,
    pub secret_id_env: Option<String>,
    pub secret_id_file: Option<PathBuf>,
    /// `auth = "kubernetes"`: the Vault role bound to draftd's ServiceAccount.
    pub kubernetes_role: Option<String>,
    #[serde(default = "default_jwt_file")]
    pub jwt_file: PathBuf,
    /// Where the auth method is mounted; default `approle` or `kubernetes` after `auth`.
    pub auth_mount: Option<String>,
    #[serde(default = "default_kv_mount")]
    pub kv_mount: String,
    /// The database secrets engine's mount, and the name of the connection draftd configures there
    /// for the server of `[postgres]`.
    #[serde(default = "default_database_mount")]
    pub database_mount: String,
    #[serde(default = "default_database_connection")]
    pub database_connection: String,
    /// Every credential a stand receives expires within this (the role's max TTL); the seed plan
    /// caps it at one hour. Before it ends draftd issues a new one and updates the Secret.
    #[serde(default = "default_credential_ttl", with = "humantime_serde")]
    pub credential_ttl: Duration,
    /// A lease's TTL when issued and the increment of each renewal, within `credential_ttl`: a
    /// credential draftd stops renewing (a stand it lost track of) dies this soon.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
}

fn default_kv_mount() -> String {
    "draft".into()
}
fn default_database_mount() -> String {
    "database".into()
}
fn default_database_connection() -> String {
    "draftd".into()
}
fn default_jwt_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(20 * 60)
}
fn default_credential_ttl() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    #[serde(default = "default_github_api")]
    pub api_url: String,
    pub token_env: Option<String>,
    pub app_id: Option<u64>,
    pub private_key_file: Option<PathBuf>,
    /// The App's installation; when unset it is looked up per repository owner.
    pub installation_id: Option<u64>,
    /// One secret for every GitHub project (a GitHub App's webhook); projects may still set their own.
    pub webhook_secret_env: Option<String>,
    /// GitHub's best practices, per installation (or token): at least this between writes...
    #[serde(default = "default_write_gap", with = "humantime_serde")]
    pub write_gap: Duration,
    /// ...and at most this many content-creating requests a minute and an hour (its secondary limits).
    #[serde(default = "default_creates_per_minute")]
    pub creates_per_minute: usize,
    #[serde(default = "default_creates_per_hour")]
    pub creates_per_hour: usize,
}

// GitHub's "Best practices for using the REST API" and its secondary rate limits.
fn default_write_gap() -> Duration {
    Duration::from_secs(1)
}
fn default_creates_per_minute() -> usize {
    80
}
fn default_creates_per_hour() -> usize {
    500
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            api_url: default_github_api(),
            token_env: None,
            app_id: None,
            private_key_file: None,
            installation_id: None,
            webhook_secret_env: None,
            write_gap: default_write_gap(),
            creates_per_minute: default_creates_per_minute(),
            creates_per_hour: default_creates_per_hour(),
        }
    }
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitlabConfig {
    #[serde(default = "default_gitlab_url")]
    pub url: String,
    pub token_env: Option<String>,
    /// One token for every GitLab project (a group webhook); projects may still set their own.
    pub webhook_secret_env: Option<String>,
}

impl Default for GitlabConfig {
    fn default() -> Self {
        Self { url: default_gitlab_url(), token_env: None, webhook_secret_env: None }
    }
}

fn default_gitlab_url() -> String {
    "https://gitlab.com".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Github,
    Gitlab,
}

impl ForgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForkPolicy {
    /// Fork PRs run code nobody with write access has vetted; never give it a stand with secrets.
    #[default]
    Deny,
    Allow,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    pub name: String,
    pub forge: ForgeKind,
    /// `owner/name` on GitHub, the project path on GitLab; matched case-insensitively.
    pub repo: String,
    pub webhook_secret_env: Option<String>,
    pub team: Option<String>,
    pub service: Option<String>,
    #[serde(default = "default_chart")]
    pub chart: PathBuf,
    #[serde(default = "default_values")]
    pub values: Vec<PathBuf>,
    pub image: Option<String>,
    pub host: Option<String>,
    #[serde(default = "default_branches")]
    pub branches: Vec<String>,
    #[serde(default)]
    pub forks: ForkPolicy,
    /// Draft PRs are work in progress; they get a stand once marked ready for review.
    #[serde(default = "default_true")]
    pub skip_draft: bool,
    /// A PR carrying this label gets no stand, and adding it tears the stand down.
    #[serde(default = "default_opt_out_label")]
    pub opt_out_label: String,
    /// Name namespaces after the branch without its `feature/` or `bugfix/` prefix.
    #[serde(default)]
    pub strip_branch_prefix: bool,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Mount a Kubernetes API token into the stand's pods (its `default` ServiceAccount); off unless
    /// the app itself talks to the API.
    #[serde(default)]
    pub service_account_token: bool,
    /// Caps this project's runs in flight across every replica, within `[stands] max_concurrent_runs`,
    /// so one busy repository cannot hold every slot.
    pub max_concurrent_runs: Option<u32>,
    /// A seeded database on the `[postgres]` server that each stand's database starts as a copy of
    /// (`CREATE DATABASE … TEMPLATE …`); empty databases otherwise.
    pub template: Option<String>,
    #[serde(default)]
    pub migrate: Vec<String>,
    #[serde(default)]
    pub smoke: Vec<String>,
    /// This project's own registry settings, in place of `[registry]` (another registry, other
    /// credentials, another wait).
    pub registry: Option<RegistryConfig>,
    /// Build the stand's image in the cluster when CI did not push it; off by default.
    pub build: Option<ProjectBuild>,
}

impl ProjectConfig {
    /// The registry settings of this project's image: its own, else `[registry]`; `None` when the
    /// image is not checked.
    pub fn registry<'a>(&'a self, config: &'a Config) -> Option<&'a RegistryConfig> {
        self.registry.as_ref().or(config.registry.as_ref())
    }
}

fn default_chart() -> PathBuf {
    PathBuf::from("charts/stand")
}
fn default_values() -> Vec<PathBuf> {
    vec![PathBuf::from("values/draft.yaml")]
}
fn default_branches() -> Vec<String> {
    vec!["feature/**".into(), "bugfix/**".into()]
}
fn default_true() -> bool {
    true
}
fn default_opt_out_label() -> String {
    "draft:skip".into()
}

impl Config {
    /// Loads `path` (when given) under `DRAFTD_*` overrides, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::defaults()));
        if let Some(path) = path {
            // Toml::file ignores a missing file; a typo in --config must not silently mean "defaults".
            std::fs::metadata(path)
                .map_err(|e| ConfigError::Unreadable { path: path.to_owned(), reason: e.to_string() })?;
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(
            Env::prefixed("DRAFTD_")
                .filter(|key| {
                    let top = key.as_str().split("__").next().unwrap_or_default();
                    TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
                })
                .split("__"),
        );
        let mut config: Config = figment.extract().map_err(|e| from_figment(e, path))?;
        config.source = path.map(Path::to_owned);
        config.validate()?;
        Ok(config)
    }

    /// Parses settings from TOML text alone (no file, no environment): for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::defaults()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| from_figment(e, None))?;
        config.validate()?;
        Ok(config)
    }

    fn defaults() -> Config {
        Config {
            listen: default_listen(),
            database_url: default_database_url(),
            public_url: default_public_url(),
            api: ApiConfig::default(),
            cluster: ClusterConfig::default(),
            stands: StandsConfig::default(),
            reaper: ReaperConfig::default(),
            intake: IntakeConfig::default(),
            postgres: None,
            vault: None,
            github: GithubConfig::default(),
            gitlab: GitlabConfig::default(),
            registry: None,
            build: BuildConfig::default(),
            projects: Vec::new(),
            source: None,
        }
    }

    fn source_name(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => "(defaults and environment)".into(),
        }
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { source_name: self.source_name(), key: key.into(), message: message.into() }
    }

    /// Values that would otherwise be refused by the API server in the middle of a run.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if !c.ingress_namespace.is_empty() && !crate::stand::is_dns_label(&c.ingress_namespace) {
            return Err(self.invalid("cluster.ingress_namespace", "must be a namespace name (a DNS label), or empty"));
        }
        for (i, cidr) in c.egress_cidrs.iter().enumerate() {
            if !is_cidr(cidr) {
                return Err(self.invalid(format!("cluster.egress_cidrs[{i}]"), format!("{cidr:?} is not a CIDR")));
            }
        }
        for (key, peers) in [("ingress_from", &c.ingress_from), ("egress_to", &c.egress_to), ("dns_to", &c.dns_to)] {
            for (i, peer) in peers.iter().enumerate() {
                check_peer(peer).map_err(|m| self.invalid(format!("cluster.{key}[{i}]"), m))?;
            }
        }
        if !c.verify.probe_path.starts_with('/') {
            return Err(self.invalid(
                "cluster.verify.probe_path",
                format!("{:?} must start with `/` (it is appended to the stand's URL)", c.verify.probe_path),
            ));
        }
        if let Some(sa) = &c.service_account {
            let valid = sa.split_once('/').is_some_and(|(ns, name)| {
                crate::stand::is_dns_label(ns) && !name.is_empty() && name.len() <= 253 && !name.contains('/')
            });
            if !valid {
                return Err(self.invalid("cluster.service_account", format!("{sa:?} is not namespace/name")));
            }
        }
        let q = &c.quota;
        let l = &c.limits;
        let quantities = [
            ("cluster.quota.requests_cpu", &q.requests_cpu),
            ("cluster.quota.requests_memory", &q.requests_memory),
            ("cluster.quota.limits_cpu", &q.limits_cpu),
            ("cluster.quota.limits_memory", &q.limits_memory),
            ("cluster.quota.requests_storage", &q.requests_storage),
            ("cluster.limits.default_request_cpu", &l.default_request_cpu),
            ("cluster.limits.default_request_memory", &l.default_request_memory),
            ("cluster.limits.default_cpu", &l.default_cpu),
            ("cluster.limits.default_memory", &l.default_memory),
            ("cluster.limits.max_cpu", &l.max_cpu),
            ("cluster.limits.max_memory", &l.max_memory),
        ];
        for (key, value) in quantities {
            if !is_quantity(value) {
                return Err(self.invalid(key, format!("{value:?} is not a Kubernetes quantity such as 500m, 2 or 4Gi")));
            }
        }
        Ok(())
    }

    fn validate_vault(&self, vault: &VaultConfig) -> Result<(), ConfigError> {
        if vault.credential_ttl < Duration::from_secs(1) || vault.credential_ttl > Duration::from_secs(3600) {
            return Err(self.invalid("vault.credential_ttl", "must be at least 1s and at most 1h"));
        }
        if vault.lease_ttl < Duration::from_secs(1) || vault.lease_ttl > vault.credential_ttl {
            return Err(self.invalid("vault.lease_ttl", "must be at least 1s and at most vault.credential_ttl"));
        }
        if !vault.address.contains("://") {
            return Err(self.invalid("vault.address", "must be a URL with a scheme"));
        }
        let needed: &[(&str, bool)] = match vault.auth {
            VaultAuth::Token => &[("vault.token_env", vault.token_env.is_some() || vault.token_file.is_some())],
            VaultAuth::Approle => &[
                ("vault.role_id", vault.role_id.is_some()),
                ("vault.secret_id_env", vault.secret_id_env.is_some() || vault.secret_id_file.is_some()),
            ],
            VaultAuth::Kubernetes => &[("vault.kubernetes_role", vault.kubernetes_role.is_some())],
        };
        for (key, present) in needed {
            if !present {
                let or_file = if key.ends_with("_env") { " (or the matching _file)" } else { "" };
                return Err(self.invalid(*key, format!("is required{or_file} with auth = {:?}", vault.auth)));
            }
        }
        for (key, value) in [
            ("vault.kv_mount", &vault.kv_mount),
            ("vault.database_mount", &vault.database_mount),
            ("vault.database_connection", &vault.database_connection),
        ] {
            if value.is_empty() || value.starts_with('/') || value.ends_with('/') {
                return Err(self.invalid(key, "must be a path without leading or trailing /"));
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_cluster()?;
        if self.stands.ttl.is_zero() {
            return Err(self.invalid("stands.ttl", "must be longer than zero"));
        }
        if self.stands.extend_by.is_zero() {
            return Err(self.invalid("stands.extend_by", "must be longer than zero"));
        }
        if self.stands.max_expiry < self.stands.extend_by {
            return Err(self.invalid("stands.max_expiry", "must be at least stands.extend_by"));
        }
        if let Err(e) = self.reaper.cron() {
            return Err(self.invalid(
                "reaper.schedule",
                format!(
                    "{:?} is not a cron expression with seconds, like \"0 */10 * * * *\": {e}",
                    self.reaper.schedule
                ),
            ));
        }
        if self.stands.lease < Duration::from_secs(1) {
            return Err(self.invalid("stands.lease", "must be at least 1s"));
        }
        if self.stands.max_concurrent_runs == 0 {
            return Err(self.invalid("stands.max_concurrent_runs", "must be at least 1"));
        }
        if self.intake.db_pool_size == 0 {
            return Err(self.invalid("intake.db_pool_size", "must be at least 1"));
        }
        if self.intake.listen_backlog == 0 {
            return Err(self.invalid("intake.listen_backlog", "must be at least 1"));
        }
        if let Some(vault) = &self.vault {
            self.validate_vault(vault)?;
        }
        if let Some((key, message)) = self.registry.as_ref().and_then(|r| r.problem()) {
            return Err(self.invalid(format!("registry.{key}"), message));
        }
        if !crate::stand::is_dns_label(&self.build.namespace) {
            return Err(self.invalid("build.namespace", "must be a namespace name (a DNS label)"));
        }
        match (self.github.app_id, &self.github.private_key_file) {
            (Some(_), None) => return Err(self.invalid("github.private_key_file", "is needed with github.app_id")),
            (None, Some(_)) => return Err(self.invalid("github.app_id", "is needed with github.private_key_file")),
            _ => {}
        }
        if self.github.installation_id.is_some() && self.github.app_id.is_none() {
            return Err(self.invalid("github.installation_id", "only applies to a GitHub App (github.app_id)"));
        }
        if let Some(pg) = &self.postgres
            && (pg.credential_ttl < Duration::from_secs(1) || pg.credential_ttl > Duration::from_secs(3600))
        {
            return Err(self.invalid("postgres.credential_ttl", "must be at least 1s and at most 1h"));
        }
        for (key, url) in [
            ("database_url", &self.database_url),
            ("public_url", &self.public_url),
            ("github.api_url", &self.github.api_url),
            ("gitlab.url", &self.gitlab.url),
        ] {
            if !url.contains("://") {
                return Err(self.invalid(key, "must be a URL with a scheme"));
            }
        }
        let mut names = HashMap::new();
        let mut repos = HashMap::new();
        for (i, p) in self.projects.iter().enumerate() {
            let key = |field: &str| format!("projects[{i}].{field}");
            ProjectName::new(&p.name).map_err(|e| self.invalid(key("name"), e.to_string()))?;
            if let Some(prev) = names.insert(p.name.clone(), i) {
                return Err(self.invalid(key("name"), format!("{:?} is also the name of projects[{prev}]", p.name)));
            }
            if p.repo.trim().is_empty() || !p.repo.contains('/') {
                return Err(self.invalid(key("repo"), "must be the repository path, like owner/name"));
            }
            if let Some(prev) = repos.insert((p.forge, p.repo.to_lowercase()), i) {
                return Err(self.invalid(key("repo"), format!("{:?} is also configured in projects[{prev}]", p.repo)));
            }
            if p.branches.is_empty() {
                return Err(self.invalid(key("branches"), "must list at least one glob"));
            }
            branch_globs(&p.branches).map_err(|e| self.invalid(key("branches"), e))?;
            if p.ttl.is_some_and(|t| t.is_zero()) {
                return Err(self.invalid(key("ttl"), "must be longer than zero"));
            }
            if p.max_concurrent_runs == Some(0) {
                return Err(self.invalid(key("max_concurrent_runs"), "must be at least 1 (leave it out for no limit)"));
            }
            let app_wide = match p.forge {
                ForgeKind::Github => &self.github.webhook_secret_env,
                ForgeKind::Gitlab => &self.gitlab.webhook_secret_env,
            };
            if p.webhook_secret_env.is_none() && app_wide.is_none() {
                return Err(self.invalid(
                    key("webhook_secret_env"),
                    format!("is required unless [{}] webhook_secret_env is set", p.forge.as_str()),
                ));
            }
            if let Some((k, message)) = p.registry.as_ref().and_then(|r| r.problem()) {
                return Err(self.invalid(key(&format!("registry.{k}")), message));
            }
            if let Some(image) = &p.image
                && let Err(e) = crate::registry::ImageRef::parse(image, "latest")
            {
                return Err(self.invalid(key("image"), e.to_string()));
            }
            if let Some(build) = &p.build {
                if p.image.is_none() || p.registry(self).is_none() {
                    return Err(self.invalid(
                        key("build"),
                        "needs the project's image and a registry ([registry] or the project's own) to push to",
                    ));
                }
                for (k, path) in [("context", &build.context), ("dockerfile", &build.dockerfile)] {
                    if path.starts_with('/') || path.split('/').any(|part| part == "..") || path.contains(['#', ':']) {
                        return Err(self.invalid(
                            key(&format!("build.{k}")),
                            format!("{path:?} must be a relative path inside the repository"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Compiles branch globs: `*` stays within one path segment, `**` crosses them.
pub fn branch_globs(globs: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for g in globs {
        let glob = globset::GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("invalid glob {g:?}: {e}"))?;
        set.add(glob);
    }
    set.build().map_err(|e| e.to_string())
}

fn from_figment(err: figment::Error, path: Option<&Path>) -> ConfigError {
    let dotted = err.path.join(".");
    let (source_name, key) = match &err.metadata {
        // Environment values are named by the variable the user set, files by the file.
        Some(md) if md.source.is_none() && md.name.contains("environment") => {
            let var = format!("DRAFTD_{}", err.path.join("__").to_uppercase());
            ("environment".to_string(), var)
        }
        Some(md) => match &md.source {
            Some(figment::Source::File(f)) => (f.display().to_string(), dotted),
            _ => (path.map(|p| p.display().to_string()).unwrap_or_else(|| md.name.to_string()), dotted),
        },
        None => (path.map(|p| p.display().to_string()).unwrap_or_default(), dotted),
    };
    let key = if key.is_empty() { "(top level)".into() } else { key };
    ConfigError::Invalid { source_name, key, message: err.kind.to_string() }
}

/// A project with its branch filter compiled, ready for intake.
#[derive(Debug, Clone)]
pub struct Project {
    pub name: ProjectName,
    pub settings: ProjectConfig,
    pub branches: GlobSet,
    /// The secret webhooks of this project are verified with.
    pub webhook_secret: SecretString,
}

/// The configured projects with their secrets read, plus the forge-wide webhook secrets and the API
/// token: every secret `serve` needs, read once at start.
#[derive(Debug, Clone, Default)]
pub struct Projects {
    pub projects: Vec<Project>,
    pub github_secret: Option<SecretString>,
    pub gitlab_secret: Option<SecretString>,
    /// Without `[api] token_env` the API answers every request with 401.
    pub api_token: Option<SecretString>,
}

impl Projects {
    /// Reads every webhook secret from the environment, so a missing one stops `serve` at start rather
    /// than turning every delivery into a 401 later.
    pub fn resolve(config: &Config) -> Result<Projects, ConfigError> {
        Self::resolve_with(config, |var| std::env::var(var).ok())
    }

    /// As [`Projects::resolve`], with `lookup` standing in for the environment.
    pub fn resolve_with(config: &Config, lookup: impl Fn(&str) -> Option<String>) -> Result<Projects, ConfigError> {
        let read =
            |key: String, var: &str| {
                lookup(var).filter(|v| !v.is_empty()).map(SecretString::from).ok_or_else(|| {
                    ConfigError::MissingSecret { source_name: config.source_name(), key, var: var.to_owned() }
                })
            };
        let github_secret = config
            .github
            .webhook_secret_env
            .as_deref()
            .map(|v| read("github.webhook_secret_env".into(), v))
            .transpose()?;
        let gitlab_secret = config
            .gitlab
            .webhook_secret_env
            .as_deref()
            .map(|v| read("gitlab.webhook_secret_env".into(), v))
            .transpose()?;
        let api_token = config.api.token_env.as_deref().map(|v| read("api.token_env".into(), v)).transpose()?;
        let mut projects = Vec::with_capacity(config.projects.len());
        for (i, p) in config.projects.iter().enumerate() {
            let forge_wide = match p.forge {
                ForgeKind::Github => &github_secret,
                ForgeKind::Gitlab => &gitlab_secret,
            };
            let webhook_secret = match (&p.webhook_secret_env, forge_wide) {
                (Some(var), _) => read(format!("projects[{i}].webhook_secret_env"), var)?,
                (None, Some(secret)) => secret.clone(),
                (None, None) => unreachable!("validated at load: a project without a secret"),
            };
            projects.push(Project {
                name: ProjectName::new(&p.name).expect("validated at load"),
                branches: branch_globs(&p.branches).expect("validated at load"),
                settings: p.clone(),
                webhook_secret,
            });
        }
        Ok(Projects { projects, github_secret, gitlab_secret, api_token })
    }
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    const EXAMPLE: &str = r#"
listen = "127.0.0.1:9999"
[stands]
ttl = "24h"
[[projects]]
name = "shop"
forge = "github"
repo = "Acme/Shop"
webhook_secret_env = "SHOP_SECRET"
"#;

    fn load(jail: &Jail) -> Result<Config, ConfigError> {
        Config::load(Some(&jail.directory().join("draftd.toml")))
    }

    #[test]
    fn file_values_and_defaults_combine() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", EXAMPLE)?;
            let c = load(jail).unwrap();
            assert_eq!(c.listen.port(), 9999);
            assert_eq!(c.stands.ttl, Duration::from_secs(24 * 3600));
            assert_eq!(c.cluster.mode, ClusterMode::DryRun);
            assert_eq!(c.projects[0].branches, vec!["feature/**", "bugfix/**"]);
            assert!(c.projects[0].skip_draft);
            assert_eq!(c.projects[0].opt_out_label, "draft:skip");
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_nested_keys_and_ignores_non_settings() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", EXAMPLE)?;
            jail.set_env("DRAFTD_STANDS__TTL", "2h");
            jail.set_env("DRAFTD_CLUSTER__MODE", "kubernetes");
            jail.set_env("DRAFTD_CONFIG", "/elsewhere.toml");
            jail.set_env("DRAFTD_API_TOKEN", "not-a-setting");
            let c = load(jail).unwrap();
            assert_eq!(c.stands.ttl, Duration::from_secs(7200));
            assert_eq!(c.cluster.mode, ClusterMode::Kubernetes);
            Ok(())
        });
    }

    #[test]
    fn bad_duration_names_key_and_file() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", "[stands]\nttl = \"two days\"\n")?;
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("stands.ttl"), "{err}");
            assert!(err.contains("draftd.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_environment_value_names_the_variable() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", EXAMPLE)?;
            jail.set_env("DRAFTD_STANDS__MAX_CONCURRENT_RUNS", "many");
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("DRAFTD_STANDS__MAX_CONCURRENT_RUNS"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_listen_backlog_defaults_above_tokios_and_zero_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", EXAMPLE)?;
            assert_eq!(load(jail).unwrap().intake.listen_backlog, 1024);
            jail.set_env("DRAFTD_INTAKE__LISTEN_BACKLOG", "4096");
            assert_eq!(load(jail).unwrap().intake.listen_backlog, 4096);
            jail.set_env("DRAFTD_INTAKE__LISTEN_BACKLOG", "0");
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("intake.listen_backlog"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn project_run_limits_are_read_and_zero_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", EXAMPLE)?;
            assert_eq!(load(jail).unwrap().projects[0].max_concurrent_runs, None);
            jail.create_file("draftd.toml", &format!("{EXAMPLE}max_concurrent_runs = 4\n"))?;
            assert_eq!(load(jail).unwrap().projects[0].max_concurrent_runs, Some(4));
            jail.create_file("draftd.toml", &format!("{EXAMPLE}max_concurrent_runs = 0\n"))?;
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("projects[0].max_concurrent_runs"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn cluster_isolation_settings_are_checked_at_start() {
        let cases = [
            ("[cluster.quota]\nrequests_memory = \"4 gigs\"\n", "cluster.quota.requests_memory"),
            ("[cluster.limits]\nmax_cpu = \"2.\"\n", "cluster.limits.max_cpu"),
            ("[cluster]\negress_cidrs = [\"10.0.0.0/8\", \"10.0.0.1\"]\n", "cluster.egress_cidrs[1]"),
            ("[cluster]\negress_cidrs = [\"10.0.0.0/33\"]\n", "cluster.egress_cidrs[0]"),
            ("[cluster]\ningress_namespace = \"Ingress_NGINX\"\n", "cluster.ingress_namespace"),
            ("[cluster]\nservice_account = \"draftd\"\n", "cluster.service_account"),
            ("[[cluster.egress_to]]\nnamespace = \"db\"\ncidr = \"10.0.0.0/8\"\n", "cluster.egress_to[0]"),
            ("[[cluster.egress_to]]\nports = [5432]\n", "cluster.egress_to[0]"),
            ("[[cluster.ingress_from]]\ncidr = \"10.0.0.0/8\"\npods = { app = \"x\" }\n", "cluster.ingress_from[0]"),
            ("[[cluster.dns_to]]\ncidr = \"169.254.20.10\"\n", "cluster.dns_to[0]"),
            ("[[cluster.egress_to]]\nnamespace = \"DB\"\n", "cluster.egress_to[0]"),
            ("[cluster.verify]\nprobe_path = \"health\"\n", "cluster.verify.probe_path"),
        ];
        for (text, key) in cases {
            Jail::expect_with(|jail| {
                jail.create_file("draftd.toml", text)?;
                let err = load(jail).unwrap_err().to_string();
                assert!(err.contains(key), "{text}: {err}");
                Ok(())
            });
        }
        Jail::expect_with(|jail| {
            let text =
                "[cluster]\negress_cidrs = [\"10.0.0.0/8\", \"fd00::/64\"]\n[cluster.quota]\nrequests_cpu = \"1.5\"\n";
            jail.create_file("draftd.toml", text)?;
            let c = load(jail).unwrap();
            assert_eq!(c.cluster.egress_cidrs.len(), 2);
            assert_eq!(c.cluster.quota.requests_cpu, "1.5");
            assert_eq!(c.cluster.quota.requests_memory, "4Gi", "unset keys keep their defaults");
            Ok(())
        });
        Jail::expect_with(|jail| {
            let text = "[cluster]\ningress_namespace = \"\"\n[[cluster.egress_to]]\nnamespace = \"db\"\npods = { app = \"pg\" }\nports = [5432]\n[[cluster.dns_to]]\ncidr = \"169.254.20.10/32\"\n";
            jail.create_file("draftd.toml", text)?;
            let c = load(jail).unwrap();
            assert_eq!(c.cluster.egress_to[0].pods["app"], "pg");
            assert_eq!(c.cluster.dns_to.len(), 1, "dns_to replaces the kube-dns default");
            assert_eq!(ClusterConfig::default().dns_to[0].namespace.as_deref(), Some("kube-system"));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors_not_silence() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", "[stands]\nttll = \"2h\"\n")?;
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("ttll"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/draftd.toml"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/draftd.toml"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_project_key() {
        Jail::expect_with(|jail| {
            let bad_glob = EXAMPLE.replace("webhook_secret_env", "branches = [\"feature/[\"]\nwebhook_secret_env");
            jail.create_file("draftd.toml", &bad_glob)?;
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("projects[0].branches") && err.contains("draftd.toml"), "{err}");

            jail.create_file("draftd.toml", &EXAMPLE.replace("\"shop\"", "\"Shop Co\""))?;
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("projects[0].name"), "{err}");

            jail.create_file("draftd.toml", &EXAMPLE.replace("webhook_secret_env = \"SHOP_SECRET\"", ""))?;
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("projects[0].webhook_secret_env"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_secret_variable_is_named_and_secret_never_printed() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", EXAMPLE)?;
            let c = load(jail).unwrap();
            let err = Projects::resolve(&c).unwrap_err().to_string();
            assert!(err.contains("SHOP_SECRET") && err.contains("projects[0].webhook_secret_env"), "{err}");

            jail.set_env("SHOP_SECRET", "hunter2-very-secret");
            let projects = Projects::resolve(&c).unwrap();
            let printed = format!("{:?}", projects.projects);
            assert!(!printed.contains("hunter2"), "{printed}");
            Ok(())
        });
    }

    #[test]
    fn branch_globs_keep_single_star_within_a_segment() {
        let set = branch_globs(&["feature/*".into(), "bugfix/**".into()]).unwrap();
        assert!(set.is_match("feature/x"));
        assert!(!set.is_match("feature/x/y"));
        assert!(set.is_match("bugfix/a/b/c"));
        assert!(!set.is_match("main"));
    }
}
