//! [`Cluster`] through kube-rs: server-side apply with field manager `draftd` for everything draftd
//! owns, so re-running a step converges instead of failing on "already exists".

use std::fmt::Debug;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::resources;
use super::{
    Cluster, ClusterError, EXPIRES_ANNOTATION, FIELD_MANAGER, MANAGED_BY, ManagedNamespace, NamespaceGone,
    NamespaceOutcome, STAND_LABEL, StandMeta,
};
use crate::config::ClusterConfig;

#[derive(Clone)]
pub struct Kubernetes {
    client: Client,
    config: ClusterConfig,
    /// How often a wait (for a namespace to go, a rollout to finish) looks again.
    poll: Duration,
}

impl Kubernetes {
    pub fn new(client: Client, config: ClusterConfig) -> Self {
        Self { client, config, poll: Duration::from_secs(2) }
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
        namespaces.patch(&stand.namespace, &Self::apply_params(), &Patch::Apply(resources::namespace(stand))).await?;
        let ns = stand.namespace.as_str();
        let mut applied = Vec::new();
        // First: under deploy/rbac.yaml, draftd's rights inside the namespace come from this binding.
        if let Some(sa) = &self.config.service_account {
            applied.push(self.apply(ns, &resources::role_binding(stand, sa, &self.config.stand_role)).await?);
        }
        applied.extend([
            self.apply(ns, &resources::resource_quota(stand, &self.config.quota)).await?,
            self.apply(ns, &resources::limit_range(stand, &self.config.limits)).await?,
            self.apply(ns, &resources::deny_all_policy(stand)).await?,
            self.apply(ns, &resources::allow_policy(stand, &self.config)).await?,
            self.apply(ns, &resources::service_account(stand)).await?,
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
            match namespaces.delete(namespace, &DeleteParams::foreground()).await {
                Ok(_) => {}
                // Gone between the read and the delete: what teardown wanted.
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(NamespaceGone::Deleted),
                Err(e) => return Err(e.into()),
            }
        }
        let started = Instant::now();
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
            tokio::time::sleep(self.poll.min(wait.saturating_sub(started.elapsed()))).await;
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
}
