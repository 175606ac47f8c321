//! [`Cluster`] through kube-rs: server-side apply with field manager `draftd` for everything draftd
//! owns, so re-running a step converges instead of failing on "already exists".

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use secrecy::SecretString;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::build::{self, BuildJob};
use super::jobs::{self, JobOutcome, JobRequest};
use super::resources;
use super::verify::{self, Diagnostics, LogSource, RolloutState};
use super::{
    Cluster, ClusterError, EXPIRES_ANNOTATION, FIELD_MANAGER, MANAGED_BY, ManagedNamespace, NamespaceGone,
    NamespaceOutcome, STAND_LABEL, StandMeta,
};
use crate::config::ClusterConfig;

/// The field manager of the `default` ServiceAccount's pull Secrets (see
/// [`resources::service_account_pull_secrets`]).
const PULL_SECRETS_FIELD_MANAGER: &str = "draftd-registry";

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
/// How long a Job's image pull may keep failing, in polls (30 s at the 2 s poll): a registry
/// hiccup passes in that time, a missing image or a refused login does not.
const PULL_GRACE_POLLS: u32 = 15;
/// How long a Job's pod may stay unschedulable or uncreated for want of quota, in polls (3 min at
/// the 2 s poll): enough for a cluster autoscaler to add a node, or a rollout's surge pods to go
/// and free the quota; far less than the Job's deadline.
const CAPACITY_GRACE_POLLS: u32 = 90;

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

    /// Runs `job` (its container `container`) in `ns` to its end, or finds the one an earlier
    /// attempt started: what [`Cluster::run_job`] and [`Cluster::run_build`] share.
    async fn run_job_object(
        &self,
        ns: &str,
        job: &Job,
        container: &str,
        deadline: Duration,
        keep_for: Duration,
    ) -> Result<JobOutcome, ClusterError> {
        let name = job.name_any();
        let api: Api<Job> = Api::namespaced(self.client.clone(), ns);
        // An earlier attempt of this run may have started it: its result is picked up instead of
        // running the command twice. (It carries no TTL until draftd has read how it ended, so
        // it is still there however late the run resumes.)
        let mut current = match api.get_opt(&name).await? {
            Some(job) => job,
            None => api.patch(&name, &Self::apply_params(), &Patch::Apply(job)).await?,
        };
        // Every lookup of pods is by this UID: a Job of the same name from before, or a pod
        // someone labelled by hand, is not this Job's.
        let uid = current.uid().unwrap_or_default();
        // The Job's own deadline ends it; the extra minute covers scheduling and status updates.
        let wait = deadline + Duration::from_secs(60);
        let started = Instant::now();
        let mut round = 0;
        let mut watch = jobs::StartWatch::new(self.poll * PULL_GRACE_POLLS, self.poll * CAPACITY_GRACE_POLLS);
        // What the pod was doing at the last look: the Job controller deletes the pod of a Job
        // past its deadline, so at the end it may be gone.
        let mut last_seen: Option<String> = None;
        let (succeeded, reason) = loop {
            if let Some(end) = jobs::finished(&current) {
                break end;
            }
            let pods = self.job_pods(ns, &uid).await?;
            let events = if pods.is_empty() { self.job_events(ns, &uid).await? } else { Vec::new() };
            if let Some(stuck) = watch.check(&pods, &events, Instant::now()) {
                // It would only wait out its deadline: delete it (its pods with it) and say why.
                self.delete_job(ns, &name).await?;
                return Err(ClusterError::JobNotStarted { job: name, reason: stuck.reason, details: stuck.details });
            }
            last_seen = jobs::newest_pod(pods).map(|p| jobs::describe_pod(&p)).or(last_seen);
            if started.elapsed() >= wait {
                return Err(ClusterError::JobTimeout { job: name, waited: wait });
            }
            round += 1;
            tokio::time::sleep(self.pause(round - 1).min(wait.saturating_sub(started.elapsed()))).await;
            current = api.get(&name).await?;
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = jobs::newest_pod(self.job_pods(ns, &uid).await?);
        let mut reason = reason;
        if reason == "DeadlineExceeded" {
            let state = match (&pod, last_seen) {
                (Some(pod), _) => jobs::describe_pod(pod),
                (None, Some(seen)) => seen,
                (None, None) => {
                    let events = jobs::describe_events(&self.job_events(ns, &uid).await?);
                    if events.is_empty() {
                        "no pod was created".to_owned()
                    } else {
                        format!("no pod was created: {}", events.join("; "))
                    }
                }
            };
            reason = format!("{reason}: {state}");
        }
        let (exit_code, log_tail) = match pod {
            Some(pod) if jobs::has_run(&pod, container) => {
                let params = LogParams {
                    container: Some(container.to_owned()),
                    tail_lines: Some(jobs::JOB_LOG_LINES),
                    ..LogParams::default()
                };
                let log = match pods.logs(&pod.name_any(), &params).await {
                    Ok(log) => log,
                    Err(e) => format!("(log unavailable: {e})"),
                };
                (jobs::exit_code(&pod, container), Some(log))
            }
            // Its container never ran (deadline exceeded before it started), or the pod was
            // already collected: no log to read.
            _ => (None, None),
        };
        // Now that its end and log are read, the Job may go after `keep_for`. A merge patch of
        // the one mutable field; failing it only leaves the Job until teardown.
        let ttl = serde_json::json!({ "spec": { "ttlSecondsAfterFinished": jobs::ttl_seconds(keep_for) } });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        match api.patch(&name, &params, &Patch::Merge(&ttl)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => tracing::warn!(job = %name, namespace = ns, error = %e, "could not set the finished Job's TTL"),
        }
        Ok(JobOutcome { job: name, succeeded, reason, exit_code, log_tail, ran_for: jobs::ran_for(&current) })
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

    /// Binds `[cluster] stand_role` to draftd's ServiceAccount in the namespace. Returns the
    /// record and whether the binding is new or changed (so the authorizer may not know it yet).
    async fn bind_stand_role(&self, stand: &StandMeta, service_account: &str) -> Result<(String, bool), ClusterError> {
        let wanted = resources::role_binding(stand, service_account, &self.config.stand_role);
        let api: Api<RoleBinding> = Api::namespaced(self.client.clone(), &stand.namespace);
        let mut existing = api.get_opt(resources::ROLE_BINDING_NAME).await?;
        if let Some(current) = &existing
            && current.role_ref != wanted.role_ref
        {
            // Kubernetes refuses to change a binding's roleRef (422 "cannot change roleRef"), so
            // after `stand_role` changed the binding is replaced: deleted, then created anew.
            tracing::info!(namespace = %stand.namespace, from = %current.role_ref.name, to = %wanted.role_ref.name,
                "the stand role changed; replacing the RoleBinding");
            match api.delete(resources::ROLE_BINDING_NAME, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            existing = None;
        }
        let applied = api.patch(resources::ROLE_BINDING_NAME, &Self::apply_params(), &Patch::Apply(&wanted)).await?;
        // An apply that changed nothing leaves the resourceVersion as it was.
        let changed = existing.is_none_or(|e| e.metadata.resource_version != applied.metadata.resource_version);
        Ok((format!("RoleBinding/{}", resources::ROLE_BINDING_NAME), changed))
    }

    /// The pods of the Job with this UID, by the label its controller sets and the owner reference.
    async fn job_pods(&self, namespace: &str, job_uid: &str) -> Result<Vec<Pod>, ClusterError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!("{}={job_uid}", jobs::CONTROLLER_UID_LABEL);
        let listed = pods.list(&ListParams::default().labels(&selector)).await?.items;
        Ok(listed.into_iter().filter(|p| jobs::owned_by(p, job_uid)).collect())
    }

    /// The events about the Job with this UID (the Job controller's FailedCreate, say).
    async fn job_events(&self, namespace: &str, job_uid: &str) -> Result<Vec<Event>, ClusterError> {
        if job_uid.is_empty() {
            // Every Job the API server returns has a UID; without one, the selector would match
            // the events of objects that have none rather than this Job's.
            return Ok(Vec::new());
        }
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let fields = format!("involvedObject.uid={job_uid}");
        Ok(events.list(&ListParams::default().fields(&fields)).await?.items)
    }

    /// Deletes a Job and, by background propagation, its pods.
    async fn delete_job(&self, namespace: &str, name: &str) -> Result<(), ClusterError> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn is_managed(namespace: &Namespace) -> bool {
    namespace.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
}

/// What keeps a terminating namespace: its finalizers and the namespace controller's conditions
/// (content it could not delete, finalizers of objects inside).
fn blockers(namespace: &Namespace) -> String {
    let mut found = Vec::new();
    if let Some(finalizers) = namespace.spec.as_ref().and_then(|s| s.finalizers.as_ref()).filter(|f| !f.is_empty()) {
        found.push(format!("namespace finalizers {}", finalizers.join(", ")));
    }
    if !namespace.finalizers().is_empty() {
        found.push(format!("metadata finalizers {}", namespace.finalizers().join(", ")));
    }
    for condition in namespace.status.as_ref().and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
        if condition.status == "True" {
            found.push(format!("{}: {}", condition.type_, condition.message.as_deref().unwrap_or("")));
        }
    }
    if found.is_empty() { "nothing reported yet".to_owned() } else { found.join("; ") }
}

/// Whether an existing namespace may be applied over: only draftd's, and only this stand's.
fn check_owner(existing: &Namespace, stand: &StandMeta) -> Result<(), ClusterError> {
    if !is_managed(existing) {
        return Err(ClusterError::NotManaged { namespace: stand.namespace.clone() });
    }
    let labels = existing.labels();
    match labels.get(STAND_LABEL) {
        Some(owner) if *owner == stand.stand_id.to_string() => Ok(()),
        owner => Err(ClusterError::OtherStand {
            namespace: stand.namespace.clone(),
            owner: owner.cloned().unwrap_or_else(|| "(none)".into()),
            stand: stand.stand_id,
        }),
    }
}

impl Cluster for Kubernetes {
    async fn ensure_namespace(&self, stand: &StandMeta) -> Result<NamespaceOutcome, ClusterError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let existing = namespaces.get_opt(&stand.namespace).await?;
        if let Some(existing) = &existing {
            check_owner(existing, stand)?;
            if existing.metadata.deletion_timestamp.is_some() {
                return Err(ClusterError::Terminating { namespace: stand.namespace.clone() });
            }
        }
        namespaces
            .patch(
                &stand.namespace,
                &Self::apply_params(),
                &Patch::Apply(resources::namespace(stand, self.config.pod_security)),
            )
            .await?;
        let ns = stand.namespace.as_str();
        let mut applied = Vec::new();
        // First: under deploy/rbac.yaml, draftd's rights inside the namespace come from this binding.
        let mut binding_new = false;
        if let Some(sa) = &self.config.service_account {
            let (record, changed) = self.bind_stand_role(stand, sa).await?;
            applied.push(record);
            binding_new = changed;
        }
        applied.extend([
            self.apply_bound(ns, &resources::resource_quota(stand, &self.config.quota), binding_new).await?,
            self.apply_bound(ns, &resources::limit_range(stand, &self.config.limits), binding_new).await?,
            self.apply_bound(ns, &resources::deny_all_policy(stand), binding_new).await?,
            self.apply_bound(ns, &resources::allow_policy(stand, &self.config, self.database.as_ref()), binding_new)
                .await?,
            self.apply_bound(ns, &resources::service_account(stand), binding_new).await?,
        ]);
        Ok(NamespaceOutcome { created: existing.is_none(), applied })
    }

    async fn delete_namespace(&self, namespace: &str, wait: Duration) -> Result<NamespaceGone, ClusterError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let Some(existing) = namespaces.get_opt(namespace).await? else {
            return Ok(NamespaceGone::Absent);
        };
        if !is_managed(&existing) {
            return Err(ClusterError::NotManaged { namespace: namespace.to_owned() });
        }
        if existing.metadata.deletion_timestamp.is_none() {
            // Background: the namespace controller deletes the content anyway, and foreground
            // would add the foregroundDeletion finalizer, which can leave the namespace stuck
            // (kubernetes/kubernetes#111251).
            match namespaces.delete(namespace, &DeleteParams::background()).await {
                Ok(_) => {}
                // Gone between the read and the delete: what teardown wanted.
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(NamespaceGone::Deleted),
                Err(e) => return Err(e.into()),
            }
        }
        let started = Instant::now();
        let mut round = 0;
        loop {
            let Some(current) = namespaces.get_opt(namespace).await? else {
                return Ok(NamespaceGone::Deleted);
            };
            if started.elapsed() >= wait {
                return Err(ClusterError::DeletionBlocked {
                    namespace: namespace.to_owned(),
                    waited: wait,
                    blockers: blockers(&current),
                });
            }
            round += 1;
            tokio::time::sleep(self.pause(round - 1).min(wait.saturating_sub(started.elapsed()))).await;
        }
    }

    async fn apply_secret(
        &self,
        stand: &StandMeta,
        name: &str,
        data: &BTreeMap<String, SecretString>,
    ) -> Result<String, ClusterError> {
        self.apply(&stand.namespace, &resources::secret(stand, name, data)).await?;
        Ok(resources::secrets_checksum(data))
    }

    async fn apply_pull_secret(&self, stand: &StandMeta, dockerconfigjson: &SecretString) -> Result<(), ClusterError> {
        self.apply(&stand.namespace, &resources::pull_secret(stand, dockerconfigjson)).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &stand.namespace);
        let params = PatchParams::apply(PULL_SECRETS_FIELD_MANAGER).force();
        let account = resources::service_account_pull_secrets(stand);
        accounts.patch(resources::SERVICE_ACCOUNT_NAME, &params, &Patch::Apply(&account)).await?;
        Ok(())
    }

    async fn roll_on_secrets(
        &self,
        namespace: &str,
        release: &str,
        checksum: &str,
    ) -> Result<Vec<String>, ClusterError> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!("app.kubernetes.io/instance={release}");
        let mut rolled = Vec::new();
        for d in deployments.list(&ListParams::default().labels(&selector)).await?.items {
            let current = d
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(resources::SECRETS_CHECKSUM_ANNOTATION));
            if current.map(String::as_str) == Some(checksum) {
                continue;
            }
            // A merge patch, as `kubectl rollout restart` does: it leaves every field Helm owns alone.
            let patch = serde_json::json!({ "spec": { "template": { "metadata": { "annotations": {
                resources::SECRETS_CHECKSUM_ANNOTATION: checksum
            } } } } });
            deployments.patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            rolled.push(format!("Deployment/{}", d.name_any()));
        }
        Ok(rolled)
    }

    async fn wait_rollout(
        &self,
        namespace: &str,
        release: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, ClusterError> {
        let selector = format!("app.kubernetes.io/instance={release}");
        let params = ListParams::default().labels(&selector);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let statefulsets: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        let started = Instant::now();
        let mut round = 0;
        loop {
            let mut states = Vec::new();
            for d in deployments.list(&params).await?.items {
                states.push((format!("Deployment/{}", d.name_any()), verify::deployment_state(&d)));
            }
            for s in statefulsets.list(&params).await?.items {
                states.push((format!("StatefulSet/{}", s.name_any()), verify::statefulset_state(&s)));
            }
            // Helm has created the release's objects by the time verify runs: none now means the
            // chart's workloads lack the label, and nothing would be checked.
            if states.is_empty() {
                return Err(ClusterError::NoWorkloads { namespace: namespace.to_owned(), selector });
            }
            let mut pending = Vec::new();
            for (workload, state) in &states {
                match state {
                    RolloutState::Done => {}
                    RolloutState::Failed(message) => {
                        return Err(ClusterError::RolloutFailed {
                            workload: workload.clone(),
                            message: message.clone(),
                        });
                    }
                    RolloutState::Progressing(status) => {
                        pending.push(verify::Pending { workload: workload.clone(), status: status.clone() })
                    }
                }
            }
            if pending.is_empty() {
                return Ok(states.into_iter().map(|(w, _)| w).collect());
            }
            if started.elapsed() >= timeout {
                return Err(ClusterError::RolloutTimeout { waited: timeout, pending });
            }
            round += 1;
            tokio::time::sleep(self.pause(round - 1).min(timeout.saturating_sub(started.elapsed()))).await;
        }
    }

    async fn diagnose(&self, namespace: &str) -> Result<Diagnostics, ClusterError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let mut problems = Vec::new();
        for pod in pods.list(&ListParams::default()).await?.items.iter().filter(|p| verify::needs_diagnosis(p)) {
            let name = pod.name_any();
            let status = pod.status.as_ref();
            let phase = status.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".into());
            let mut containers = Vec::new();
            let statuses: Vec<_> = status
                .map(|s| {
                    let init = s.init_container_statuses.iter().flatten();
                    init.chain(s.container_statuses.iter().flatten()).cloned().collect()
                })
                .unwrap_or_default();
            for c in &statuses {
                let Some((mut problem, source)) = verify::container_problem(c) else { continue };
                if source != LogSource::None {
                    let params = LogParams {
                        container: Some(c.name.clone()),
                        previous: source == LogSource::Previous,
                        tail_lines: Some(verify::LOG_TAIL_LINES),
                        ..LogParams::default()
                    };
                    // A log that cannot be read (rotated away, node gone) leaves the rest of the
                    // diagnosis standing.
                    problem.log_tail = match pods.logs(&name, &params).await {
                        Ok(log) => Some(log),
                        Err(e) => Some(format!("(log unavailable: {e})")),
                    };
                }
                containers.push(problem);
            }
            if containers.is_empty() {
                // Not ready for a reason no container states, e.g. unschedulable.
                let condition = status
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.status != "True" && c.reason.is_some()));
                if let Some(c) = condition {
                    containers.push(verify::ContainerProblem {
                        container: "(pod)".into(),
                        reason: c.reason.clone().unwrap_or_default(),
                        message: c.message.clone(),
                        restarts: 0,
                        log_tail: None,
                    });
                }
            }
            problems.push(verify::PodProblem { pod: name, phase, containers });
        }
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let mut warnings = events.list(&ListParams::default().fields("type=Warning")).await?.items;
        warnings.sort_by_key(|e| {
            e.last_timestamp.as_ref().map(|t| t.0).or(e.event_time.as_ref().map(|t| t.0)).or(e
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0))
        });
        let start = warnings.len().saturating_sub(verify::MAX_EVENTS);
        let events = warnings[start..]
            .iter()
            .map(|e| {
                format!(
                    "{}/{}: {}: {}",
                    e.involved_object.kind.as_deref().unwrap_or("?"),
                    e.involved_object.name.as_deref().unwrap_or("?"),
                    e.reason.as_deref().unwrap_or(""),
                    e.message.as_deref().unwrap_or("").trim()
                )
            })
            .collect();
        Ok(Diagnostics { pods: problems, events })
    }

    async fn run_job(&self, stand: &StandMeta, request: &JobRequest) -> Result<JobOutcome, ClusterError> {
        let job = jobs::job(stand, request);
        self.run_job_object(&stand.namespace, &job, &request.purpose, request.deadline, request.keep_for).await
    }

    async fn delete_builds(&self, build_namespace: &str, stand: &StandMeta) -> Result<Vec<String>, ClusterError> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), build_namespace);
        let selector =
            format!("{STAND_LABEL}={},draftd.io/project={},draftd.io/job=build", stand.stand_id, stand.project);
        let found = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut deleted = Vec::new();
        for job in found {
            let name = job.name_any();
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => deleted.push(format!("{build_namespace}/{name}")),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(deleted)
    }

    async fn run_build(&self, stand: &StandMeta, build: &BuildJob) -> Result<JobOutcome, ClusterError> {
        let ns = build.namespace.as_str();
        let job = build::job(stand, build);
        let jobs_api: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let name = job.name_any();
        // The Job first, then its Secret owned by it, so the two go together (Kubernetes' garbage
        // collector removes the Secret once the Job's TTL removes the Job). The pod waits for the
        // Secret's volume meanwhile.
        let existing = jobs_api.get_opt(&name).await?;
        let created = match existing {
            Some(job) => job,
            None => match jobs_api.patch(&name, &Self::apply_params(), &Patch::Apply(&job)).await {
                Ok(job) => job,
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    return Err(ClusterError::BuildNamespaceMissing { namespace: ns.to_owned() });
                }
                Err(e) => return Err(e.into()),
            },
        };
        if jobs::finished(&created).is_none() {
            let secret = build::secret(stand, build, &created);
            self.apply(ns, &secret).await?;
        }
        self.run_job_object(ns, &job, build::CONTAINER, build.deadline, build.keep_for).await
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
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        // Helm 4's default storage: one Secret per revision, labelled owner=helm, name, version, status.
        let name = format!("sh.helm.release.v1.{release}.v{revision}");
        let Some(record) = secrets.get_opt(&name).await? else { return Ok(false) };
        let labels = record.labels();
        let unfinished = labels.get("status").is_some_and(|s| s.starts_with("pending-"));
        if labels.get("owner").map(String::as_str) != Some("helm") || !unfinished {
            return Ok(false);
        }
        match secrets.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn managed_namespaces(&self) -> Result<Vec<ManagedNamespace>, ClusterError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let list = namespaces.list(&ListParams::default().labels(&selector)).await?;
        Ok(list
            .items
            .into_iter()
            .map(|ns| ManagedNamespace {
                stand_id: ns.labels().get(STAND_LABEL).and_then(|v| v.parse().ok()),
                project: ns.labels().get(super::PROJECT_LABEL).cloned(),
                expires_at: ns
                    .annotations()
                    .get(EXPIRES_ANNOTATION)
                    .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                    .map(|t| t.with_timezone(&Utc)),
                terminating: ns.metadata.deletion_timestamp.is_some(),
                name: ns.name_any(),
            })
            .collect())
    }

    async fn annotate_expiry(&self, namespace: &str, expires_at: DateTime<Utc>) -> Result<bool, ClusterError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let Some(existing) = namespaces.get_opt(namespace).await? else {
            return Ok(false);
        };
        if !is_managed(&existing) {
            return Err(ClusterError::NotManaged { namespace: namespace.to_owned() });
        }
        if existing.metadata.deletion_timestamp.is_some() {
            return Ok(false);
        }
        // A merge patch of the one annotation: applying a partial Namespace would drop the labels
        // draftd's earlier applies own.
        let patch = serde_json::json!({
            "metadata": { "annotations": { EXPIRES_ANNOTATION: super::expiry_annotation(expires_at) } }
        });
        match namespaces.patch(namespace, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Probes the stand's Service through the API server proxy, for stands without an Ingress URL:
/// needs no route into the cluster, only draftd's credentials (`services/proxy` get).
///
/// The proxy passes the app's answers through verbatim, but answers in its place when it cannot
/// ask the app: no such Service (404), no right to proxy (403), no ready endpoint (503), the pod
/// not reachable (502/503, "error trying to reach service"). Those come as the API server's own
/// `Status` objects, and are told apart from the app's answers ([`verify::ProbeResult::Refused`]).
pub struct ServiceProxyProber {
    client: Client,
    namespace: String,
    service: String,
    port: String,
    path: String,
}

/// The most of an error answer read to tell whether it is the API server's: a Status is small.
const MAX_STATUS_BYTES: usize = 64 * 1024;

impl ServiceProxyProber {
    /// `port` is the Service port's number or name (`http`); `path` the app's, e.g. `/health/ready`.
    pub fn new(client: Client, namespace: &str, service: &str, port: &str, path: &str) -> Self {
        let path = format!("/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy{path}");
        Self { client, namespace: namespace.to_owned(), service: service.to_owned(), port: port.to_owned(), path }
    }

    /// `Some(why)` when an answer is the API server's own error rather than the app's: a JSON
    /// `Status` of `apiVersion: v1` with an error code.
    fn refusal(&self, code: u16, content_type: Option<&str>, body: &[u8]) -> Option<String> {
        if code < 400 || !content_type.is_some_and(|t| t.trim_start().starts_with("application/json")) {
            return None;
        }
        let status: serde_json::Value = serde_json::from_slice(body).ok()?;
        if status["kind"] != "Status" || status["apiVersion"] != "v1" {
            return None;
        }
        let reason = status["reason"].as_str().unwrap_or("");
        let message = status["message"].as_str().unwrap_or("").trim();
        let (service, ns, port) = (&self.service, &self.namespace, &self.port);
        let said = match (reason, message) {
            ("", "") => format!("the API server answered {code} in the app's place"),
            (reason, "") | ("", reason) => format!("the API server answered {code} in the app's place ({reason})"),
            (reason, message) => format!("the API server answered {code} {reason} in the app's place: {message}"),
        };
        let lower = message.to_lowercase();
        let hint = if code == 404 {
            format!(
                "there is no Service {service} in namespace {ns}; verify probes the Service named after the release, \
                 on its port `{port}`: name the chart's Service so, or set the project's `host` to probe its URL"
            )
        } else if code == 403 {
            format!(
                "draftd may not proxy to Services in {ns}: it needs `get` on `services/proxy` there (deploy/rbac.yaml's \
                 draftd-stand role, bound by [cluster] service_account and stand_role)"
            )
        } else if lower.contains("no endpoints available") {
            format!(
                "no ready pod backs Service {service} on port `{port}` (none is ready, or the Service has no such port)"
            )
        } else if code == 502
            || lower.contains("error trying to reach service")
            || lower.contains("dial tcp")
            || lower.contains("while dialing")
        {
            format!(
                "the API server could not reach the pod behind Service {service}: the NetworkPolicy {} blocks the API \
                 server unless its addresses are allowed in ([[cluster.ingress_from]] with cidr = \"<API server address>/32\"), \
                 or the project sets a `host` so verify probes the stand's URL instead",
                resources::DENY_ALL_NAME
            )
        } else {
            String::new()
        };
        let target = format!("Service {service}:{port} in {ns}");
        Some(if hint.is_empty() { format!("{target}: {said}") } else { format!("{target}: {said}; {hint}") })
    }
}

impl verify::Prober for ServiceProxyProber {
    async fn probe(&self, timeout: Duration) -> verify::ProbeResult {
        use http_body_util::BodyExt;
        let request = match axum::http::Request::get(&self.path).body(Vec::new()) {
            Ok(request) => request,
            Err(e) => return verify::ProbeResult::Refused(format!("{} is not a valid request path: {e}", self.path)),
        };
        let answer = async {
            let response = self.client.send(request.map(kube::client::Body::from)).await?;
            let code = response.status().as_u16();
            let content_type = response
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if code < 400 {
                return Ok(verify::ProbeResult::Status(code));
            }
            // Only error answers are read, and only so far: a body too long to be a Status, or
            // one that breaks off, is the app's.
            let body = match http_body_util::Limited::new(response.into_body(), MAX_STATUS_BYTES).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return Ok(verify::ProbeResult::Status(code)),
            };
            Ok::<_, kube::Error>(match self.refusal(code, content_type.as_deref(), &body) {
                Some(why) => verify::ProbeResult::Refused(why),
                None => verify::ProbeResult::Status(code),
            })
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => verify::ProbeResult::Unreachable,
            Err(_) => verify::ProbeResult::Timeout,
        }
    }

    fn target(&self) -> String {
        format!("the API server proxy {}", self.path)
    }
}
