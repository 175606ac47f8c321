//! Kubernetes around the Helm release (DESIGN.md's `cluster/`): the stand's namespace and what
//! isolates it, and later its Secrets, rollout checks, Jobs, diagnostics and teardown.
//!
//! The pipeline sees only the [`Cluster`] trait; [`Kubernetes`] is the kube-rs implementation, and
//! tests drive it through a mocked API server that checks every request.

/// The BuildKit Job that builds a stand's image when CI did not.
pub mod build;
/// Connecting: in-cluster, or a kubeconfig and context.
pub mod client;
/// The folder that stands in for a namespace in dry-run mode.
pub mod dry_run;
/// Whether a rendered release fits the namespace's LimitRange.
pub mod fit;
/// The migrate and smoke Jobs.
pub mod jobs;
/// The real implementation, through kube-rs.
mod kubernetes;
/// The last lines of a stand's containers, for the stand page.
pub mod logs;
/// Namespaces draftd manages that no live stand accounts for.
pub mod orphans;
/// The objects draftd applies, built from config; pure, so they are tested without a cluster.
pub mod resources;
/// Rollout checks, the 5xx gate and diagnostics.
pub mod verify;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use secrecy::SecretString;

use chrono::{DateTime, Utc};

use crate::stand::{Failure, StandId, Workload};

pub use kubernetes::{Kubernetes, ServiceProxyProber};

/// Everything draftd creates carries this label, and draftd never touches what lacks it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "draftd");
pub const STAND_LABEL: &str = "draftd.io/stand";
pub const PROJECT_LABEL: &str = "draftd.io/project";
pub const EXPIRES_ANNOTATION: &str = "draftd.io/expires-at";
/// Server-side apply's field manager: the fields draftd owns are listed under this name.
pub const FIELD_MANAGER: &str = "draftd";

/// Which stand a namespace is for, and what its labels say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandMeta {
    pub namespace: String,
    pub stand_id: StandId,
    /// A DNS label already (config validates project names), so a valid label value.
    pub project: String,
    pub expires_at: DateTime<Utc>,
    /// Whether the stand's pods get a Kubernetes API token.
    pub service_account_token: bool,
}

/// What the namespace step did, for the step's record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NamespaceOutcome {
    /// False when the namespace already existed (a re-run, or a resumed run).
    pub created: bool,
    /// `Kind/name` of each object applied inside it.
    pub applied: Vec<String>,
}

/// What teardown found and did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NamespaceGone {
    /// Deleted now, and gone before the wait ran out.
    Deleted,
    /// Not there to begin with (a repeated teardown, or a stand that never got one).
    Absent,
}

/// A namespace labelled managed-by=draftd, as the orphan scan sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ManagedNamespace {
    pub name: String,
    /// From the `draftd.io/project` label.
    pub project: Option<String>,
    /// From the `draftd.io/stand` label; `None` when it is missing or not a number.
    pub stand_id: Option<StandId>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Already being deleted.
    pub terminating: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "namespace {namespace} exists but is not managed by draftd (it lacks the label app.kubernetes.io/managed-by=draftd): draftd leaves it untouched; rename the branch or remove that namespace"
    )]
    NotManaged { namespace: String },
    /// Left from a teardown still in progress; it will be gone shortly and the step retried.
    #[error("namespace {namespace} is being deleted; the step will try again once it is gone")]
    Terminating { namespace: String },
    #[error("namespace {namespace} belongs to stand {owner}, not to stand {stand}")]
    OtherStand { namespace: String, owner: String, stand: StandId },
    /// Deletion was asked for but has not finished; `blockers` says what holds it (finalizers,
    /// the namespace controller's conditions).
    #[error("namespace {namespace} is still being deleted after {waited:?}: {blockers}")]
    DeletionBlocked { namespace: String, waited: Duration, blockers: String },
    /// The release's workloads did not all roll out in time; each pending one says where it stands.
    #[error("rollout not finished after {waited:?}: {}", pending.iter().map(|p| format!("{} ({})", p.workload, p.status)).collect::<Vec<_>>().join(", "))]
    RolloutTimeout { waited: Duration, pending: Vec<verify::Pending> },
    /// A workload's rollout failed for good (its progress deadline passed).
    #[error("{workload} failed to roll out: {message}")]
    RolloutFailed { workload: String, message: String },
    #[error("job {job} did not finish within {waited:?}")]
    JobTimeout { job: String, waited: Duration },
    /// The Job's pod cannot start for a reason waiting will not cure (its image cannot be pulled,
    /// its container config is refused, the quota or an admission policy refuses the pod, no node
    /// fits it); draftd deleted the Job instead of waiting out its deadline.
    #[error("job {job} cannot start ({reason}), so it was deleted instead of waiting for its deadline: {details}")]
    JobNotStarted { job: String, reason: String, details: String },
    /// The release has no Deployment or StatefulSet draftd can find, so there is nothing whose
    /// rollout verify could check; passing would vouch for a stand nobody looked at.
    #[error(
        "no Deployment or StatefulSet in namespace {namespace} matches the label selector {selector}, so verify cannot check any rollout: label the chart's workloads (metadata.labels) with Helm's standard `app.kubernetes.io/instance: {{{{ .Release.Name }}}}`"
    )]
    NoWorkloads { namespace: String, selector: String },
    #[error(
        "the build namespace {namespace} does not exist: apply deploy/build.yaml (its namespace, quota, network policy and draftd's rights there) or set [build] namespace"
    )]
    BuildNamespaceMissing { namespace: String },
    #[error("no Kubernetes configuration: {0}")]
    Config(String),
    /// Dry-run mode deploys nothing, so there is no pod whose log could be read.
    #[error(
        "pod logs are not available in dry-run mode: nothing is deployed, so no container runs; the stand's rendered manifests are in its dry-run folder"
    )]
    DryRun,
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

impl Failure for ClusterError {
    /// Worth retrying: the API server was unreachable, overloaded or in a conflict that a new
    /// attempt resolves. A refusal (forbidden, invalid) will not pass by retrying.
    fn is_transient(&self) -> bool {
        match self {
            ClusterError::Api(kube::Error::Api(status)) => {
                status.code == 409 || status.code == 429 || status.code >= 500 || quota_status_unknown(status)
            }
            ClusterError::Api(kube::Error::HyperError(_) | kube::Error::Service(_)) => true,
            ClusterError::Terminating { .. } | ClusterError::DeletionBlocked { .. } => true,
            _ => false,
        }
    }

    /// A stable label for step errors and metrics.
    fn label(&self) -> &'static str {
        match self {
            ClusterError::NotManaged { .. } => "namespace_not_managed",
            ClusterError::OtherStand { .. } => "namespace_of_other_stand",
            ClusterError::Terminating { .. } => "namespace_terminating",
            ClusterError::DeletionBlocked { .. } => "namespace_deletion_blocked",
            ClusterError::RolloutTimeout { .. } => "rollout_timeout",
            ClusterError::RolloutFailed { .. } => "rollout_failed",
            ClusterError::JobTimeout { .. } => "job_timeout",
            ClusterError::JobNotStarted { .. } => "job_not_started",
            ClusterError::NoWorkloads { .. } => "rollout_no_workloads",
            ClusterError::BuildNamespaceMissing { .. } => "build_namespace_missing",
            ClusterError::Config(_) => "kubernetes_config",
            ClusterError::DryRun => "dry_run",
            ClusterError::Api(kube::Error::Api(status)) if quota_status_unknown(status) => "kubernetes_quota_pending",
            ClusterError::Api(kube::Error::Api(status)) if status.code == 403 => "kubernetes_forbidden",
            ClusterError::Api(_) => "kubernetes_api",
        }
    }
}

/// A 403 that is not a refusal: the quota admission plugin refuses objects a ResourceQuota counts
/// until the quota controller has computed that quota's first status ("status unknown for quota:
/// draftd-quota"), which on a new namespace takes a moment. The same request passes shortly after.
fn quota_status_unknown(status: &kube::core::Status) -> bool {
    status.code == 403 && status.message.contains("status unknown for quota")
}

/// The cluster as the pipeline's steps use it.
pub trait Cluster: Send + Sync + 'static {
    /// Creates or updates the stand's namespace with its labels, quota, limit range, network
    /// policies and service account; refuses a namespace draftd does not manage.
    fn ensure_namespace(
        &self,
        stand: &StandMeta,
    ) -> impl Future<Output = Result<NamespaceOutcome, ClusterError>> + Send;

    /// Deletes a namespace draftd manages and waits up to `wait` for it to be gone; the namespace
    /// controller deletes everything inside (Secrets, volume claims, …) before the namespace goes.
    /// Background propagation: foreground would add the `foregroundDeletion` finalizer, which can
    /// leave a namespace stuck terminating (kubernetes/kubernetes#111251). Refuses a namespace
    /// without draftd's label.
    fn delete_namespace(
        &self,
        namespace: &str,
        wait: Duration,
    ) -> impl Future<Output = Result<NamespaceGone, ClusterError>> + Send;

    /// Creates or updates the Secret `name` in the stand's namespace; returns the checksum of its
    /// values (see [`resources::secrets_checksum`]). Values are never logged.
    fn apply_secret(
        &self,
        stand: &StandMeta,
        name: &str,
        data: &BTreeMap<String, SecretString>,
    ) -> impl Future<Output = Result<String, ClusterError>> + Send;

    /// Puts the image pull Secret in the stand's namespace and names it on the namespace's `default`
    /// ServiceAccount, which every pod of the stand (the app's, its Jobs') runs as unless its
    /// chart says otherwise.
    fn apply_pull_secret(
        &self,
        stand: &StandMeta,
        dockerconfigjson: &SecretString,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Sets the secrets checksum on the pod template of each Deployment of the release whose
    /// checksum differs, which rolls it; returns the Deployments rolled.
    fn roll_on_secrets(
        &self,
        namespace: &str,
        release: &str,
        checksum: &str,
    ) -> impl Future<Output = Result<Vec<String>, ClusterError>> + Send;

    /// Waits until every Deployment and StatefulSet of the Helm release has rolled out (the new
    /// spec observed, all replicas updated and available, no old ones left), at most `timeout`.
    /// Returns the workloads, as `Kind/name`. A release without any (none carries the label
    /// `app.kubernetes.io/instance=<release>`) is an error, not a success.
    fn wait_rollout(
        &self,
        namespace: &str,
        release: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<String>, ClusterError>> + Send;

    /// Pods that are not ready and why, with log tails of failing containers, and Warning events.
    fn diagnose(&self, namespace: &str) -> impl Future<Output = Result<verify::Diagnostics, ClusterError>> + Send;

    /// Runs a Job to its end (or finds the one an earlier attempt of the run started) and returns
    /// how it ended, with the end of its log. Waits at most the request's deadline plus a minute;
    /// a Job whose pod cannot start is deleted early ([`ClusterError::JobNotStarted`]). The Job
    /// is kept `keep_for` after draftd has read how it ended.
    fn run_job(
        &self,
        stand: &StandMeta,
        request: &jobs::JobRequest,
    ) -> impl Future<Output = Result<jobs::JobOutcome, ClusterError>> + Send;

    /// Runs a BuildKit Job that builds the stand's image and pushes it (see [`build`]) in the build
    /// namespace, or finds the one an earlier attempt started; returns how it ended, like
    /// [`Cluster::run_job`].
    fn run_build(
        &self,
        stand: &StandMeta,
        build: &build::BuildJob,
    ) -> impl Future<Output = Result<jobs::JobOutcome, ClusterError>> + Send;

    /// Deletes the stand's build Jobs still in the build namespace (their pods and Secrets go with
    /// them): a teardown leaves no build of the stand running. Returns the Jobs deleted; a build
    /// namespace that does not exist has none.
    fn delete_builds(
        &self,
        build_namespace: &str,
        stand: &StandMeta,
    ) -> impl Future<Output = Result<Vec<String>, ClusterError>> + Send;

    /// Probes a Service of the stand through the API server proxy (for stands without a URL).
    fn service_prober(&self, namespace: &str, service: &str, port: &str, path: &str) -> impl verify::Prober + 'static;

    /// Deletes helm's own record (its storage Secret) of `revision` of `release`, only while that
    /// revision is unfinished (`pending-*`): what is left to do when `helm rollback` cannot clear an
    /// operation helm never finished. False when there was no such record.
    fn discard_pending_revision(
        &self,
        namespace: &str,
        release: &str,
        revision: u32,
    ) -> impl Future<Output = Result<bool, ClusterError>> + Send;

    /// The Deployments and StatefulSets of the Helm release, with the replicas each asks for now.
    fn workloads(
        &self,
        namespace: &str,
        release: &str,
    ) -> impl Future<Output = Result<Vec<Workload>, ClusterError>> + Send;

    /// Sets a workload's replicas through its scale subresource: only the count changes, never the
    /// spec helm applied. False when the workload is not there.
    fn scale(
        &self,
        namespace: &str,
        workload: &Workload,
        replicas: i32,
    ) -> impl Future<Output = Result<bool, ClusterError>> + Send;

    /// What the namespace's volume claims request, in bytes.
    fn claimed_storage(&self, namespace: &str) -> impl Future<Output = Result<i64, ClusterError>> + Send;

    /// The namespace's pods (newest first, at most [`logs::MAX_PODS`] of them read) with the last
    /// lines of each container's log within `bounds`, or why a container has none. Read now, every
    /// time: nothing is cached, and nothing of the logs is written to draftd's own log. A namespace
    /// that does not exist has no pods.
    fn pod_logs(
        &self,
        namespace: &str,
        bounds: logs::LogBounds,
    ) -> impl Future<Output = Result<Vec<logs::PodLog>, ClusterError>> + Send;

    /// Every namespace labelled managed-by=draftd.
    fn managed_namespaces(&self) -> impl Future<Output = Result<Vec<ManagedNamespace>, ClusterError>> + Send;

    /// Sets the `draftd.io/expires-at` annotation of a namespace draftd manages (after an extend).
    /// False when the namespace is not there (never deployed, or already being deleted).
    fn annotate_expiry(
        &self,
        namespace: &str,
        expires_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, ClusterError>> + Send;
}

/// The annotation's value: RFC 3339 in whole seconds, UTC.
pub fn expiry_annotation(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
