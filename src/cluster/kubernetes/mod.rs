//! [`Cluster`] through kube-rs: server-side apply with field manager `draftd` for everything draftd
//! owns, so re-running a step converges instead of failing on "already exists".
//!
//! The client, its settings and the apply every part shares are here; each of the trait's jobs is in
//! a file of its own, and [`Cluster`]'s methods below only say which.

/// The last lines of each container of a namespace's pods.
mod logs;
/// The stand's namespace, what isolates it, its expiry, and the namespaces draftd manages.
mod namespace;
/// Probing a stand's Service through the API server proxy.
mod proxy;
/// Waiting for a release to roll out, and diagnosing one that did not.
mod rollout;
/// Running Jobs (migrate, smoke, build) to their end.
mod run;
/// A stand's workloads scaled to zero for its sleep, and back.
mod scale;
/// The stand's Secrets, and pods rolled onto new ones; helm's own record of an unfinished revision.
mod secrets;
/// Deleting the namespace and the stand's builds.
mod teardown;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use secrecy::SecretString;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use proxy::ServiceProxyProber;

use crate::cluster::build::BuildJob;
use crate::cluster::jobs::{JobOutcome, JobRequest};
use crate::cluster::logs::{LogBounds, PodLog};
use crate::cluster::verify::{self, Diagnostics};
use crate::cluster::{
    Cluster, ClusterError, FIELD_MANAGER, ManagedNamespace, NamespaceGone, NamespaceOutcome, StandMeta, resources,
};
use crate::config::ClusterConfig;
use crate::stand::Workload;

#[derive(Clone)]
pub struct Kubernetes {
    client: Client,
    config: ClusterConfig,
    /// How often a wait (for a namespace to go, a rollout to finish) looks again. The other waits
    /// are multiples of it, so tests that poll fast wait little.
    poll: Duration,
    /// Where stand pods reach their database, let out by the namespace's policy.
    database: Option<crate::config::NetworkPeer>,
    /// For the API server proxy probe: one that passes the API server's answers on as they come
    /// (see [`super::client::connect_for_probes`]); the main client when unset.
    probe_client: Option<Client>,
}

/// Retries of an apply refused with 403 right after the RoleBinding that grants draftd its rights
/// in the namespace was created or changed: each API server's authorizer learns of a new binding
/// from its own cache, a moment later. The waits double from an eighth of the poll up to the poll:
/// about 10 s in all at the 2 s poll, then the 403 stands.
const RBAC_RETRIES: u32 = 7;

impl Kubernetes {
    pub fn new(client: Client, config: ClusterConfig) -> Self {
        Self { client, config, poll: Duration::from_secs(2), database: None, probe_client: None }
    }

    /// How long a wait sleeps before its look number `round` (from 0): an eighth of the poll at
    /// first, doubling up to the poll. Most Jobs end and most rollouts finish within a second or two,
    /// which a fixed 2 s poll would round up to 2 or 4; a long wait still costs the API server one
    /// request per poll.
    fn pause(&self, round: u32) -> Duration {
        (self.poll / 8).saturating_mul(2u32.saturating_pow(round.min(16))).min(self.poll)
    }

    /// The client verify's API server proxy probes use.
    pub fn with_probe_client(mut self, client: Client) -> Self {
        self.probe_client = Some(client);
        self
    }

    /// The stand database's `host:port` as pods see it: its namespace or address is let out by each
    /// stand's NetworkPolicy (see [`resources::database_peer`]).
    pub fn with_database_host(mut self, host: &str) -> Self {
        self.database = resources::database_peer(host);
        if self.database.is_none() {
            tracing::warn!(
                host,
                "the stand database is neither an in-cluster Service name nor an IP address: stand pods \
                 reach it only if [cluster] egress_to lists its address range"
            );
        }
        self
    }

    /// Tests poll a mocked API server quickly.
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    fn apply_params() -> PatchParams {
        // Force: draftd's fields are draftd's, even if someone edited them by hand meanwhile.
        PatchParams::apply(FIELD_MANAGER).force()
    }

    /// Server-side applies a namespaced object; returns `Kind/name` for the step's record.
    async fn apply<K>(&self, namespace: &str, object: &K) -> Result<String, ClusterError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let name = object.name_any();
        api.patch(&name, &Self::apply_params(), &Patch::Apply(object)).await?;
        Ok(format!("{}/{name}", K::kind(&())))
    }

    /// [`Self::apply`], retrying a 403 for a while when `binding_new` says draftd's RoleBinding
    /// in the namespace was just created or changed (see [`RBAC_RETRIES`]).
    async fn apply_bound<K>(&self, namespace: &str, object: &K, binding_new: bool) -> Result<String, ClusterError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
    {
        let mut retries = 0;
        loop {
            match self.apply(namespace, object).await {
                Err(ClusterError::Api(kube::Error::Api(status)))
                    if binding_new && status.code == 403 && retries < RBAC_RETRIES =>
                {
                    retries += 1;
                    let wait = (self.poll / 8 * 2u32.pow(retries - 1)).min(self.poll);
                    tracing::debug!(namespace, object = %object.name_any(), ?wait, message = %status.message,
                        "forbidden right after the RoleBinding changed; trying again");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }
}

impl Cluster for Kubernetes {
    async fn ensure_namespace(&self, stand: &StandMeta) -> Result<NamespaceOutcome, ClusterError> {
        self.ensure_stand_namespace(stand).await
    }

    async fn delete_namespace(&self, namespace: &str, wait: Duration) -> Result<NamespaceGone, ClusterError> {
        self.delete_stand_namespace(namespace, wait).await
    }

    async fn apply_secret(
        &self,
        stand: &StandMeta,
        name: &str,
        data: &BTreeMap<String, SecretString>,
    ) -> Result<String, ClusterError> {
        self.apply_stand_secret(stand, name, data).await
    }

    async fn apply_pull_secret(&self, stand: &StandMeta, dockerconfigjson: &SecretString) -> Result<(), ClusterError> {
        self.apply_stand_pull_secret(stand, dockerconfigjson).await
    }

    async fn roll_on_secrets(
        &self,
        namespace: &str,
        release: &str,
        checksum: &str,
    ) -> Result<Vec<String>, ClusterError> {
        self.roll_deployments_on_secrets(namespace, release, checksum).await
    }

    async fn wait_rollout(
        &self,
        namespace: &str,
        release: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, ClusterError> {
        self.wait_for_rollout(namespace, release, timeout).await
    }

    async fn diagnose(&self, namespace: &str) -> Result<Diagnostics, ClusterError> {
        self.diagnose_pods(namespace).await
    }

    async fn run_job(&self, stand: &StandMeta, request: &JobRequest) -> Result<JobOutcome, ClusterError> {
        self.run_stand_job(stand, request).await
    }

    async fn delete_builds(&self, build_namespace: &str, stand: &StandMeta) -> Result<Vec<String>, ClusterError> {
        self.delete_build_jobs(build_namespace, stand).await
    }

    async fn run_build(&self, stand: &StandMeta, build: &BuildJob) -> Result<JobOutcome, ClusterError> {
        self.run_build_job(stand, build).await
    }

    fn service_prober(&self, namespace: &str, service: &str, port: &str, path: &str) -> impl verify::Prober + 'static {
        let client = self.probe_client.as_ref().unwrap_or(&self.client).clone();
        ServiceProxyProber::new(client, namespace, service, port, path)
    }

    async fn discard_pending_revision(
        &self,
        namespace: &str,
        release: &str,
        revision: u32,
    ) -> Result<bool, ClusterError> {
        self.discard_pending_helm_record(namespace, release, revision).await
    }

    async fn workloads(&self, namespace: &str, release: &str) -> Result<Vec<Workload>, ClusterError> {
        self.release_workloads(namespace, release).await
    }

    async fn scale(&self, namespace: &str, workload: &Workload, replicas: i32) -> Result<bool, ClusterError> {
        self.scale_workload(namespace, workload, replicas).await
    }

    async fn claimed_storage(&self, namespace: &str) -> Result<i64, ClusterError> {
        self.namespace_claims(namespace).await
    }

    async fn pod_logs(&self, namespace: &str, bounds: LogBounds) -> Result<Vec<PodLog>, ClusterError> {
        self.read_pod_logs(namespace, bounds).await
    }

    async fn managed_namespaces(&self) -> Result<Vec<ManagedNamespace>, ClusterError> {
        self.list_managed_namespaces().await
    }

    async fn annotate_expiry(&self, namespace: &str, expires_at: DateTime<Utc>) -> Result<bool, ClusterError> {
        self.annotate_namespace_expiry(namespace, expires_at).await
    }
}
