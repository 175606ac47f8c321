//! [`Cluster`] through kube-rs: server-side apply with field manager `draftd` for everything draftd
//! owns, so re-running a step converges instead of failing on "already exists".

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::resources;
use super::{Cluster, ClusterError, FIELD_MANAGER, MANAGED_BY, NamespaceOutcome, STAND_LABEL, StandMeta};
use crate::config::ClusterConfig;

#[derive(Clone)]
pub struct Kubernetes {
    client: Client,
    config: ClusterConfig,
}

impl Kubernetes {
    pub fn new(client: Client, config: ClusterConfig) -> Self {
        Self { client, config }
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

/// Whether an existing namespace may be applied over: only draftd's, and only this stand's.
fn check_owner(existing: &Namespace, stand: &StandMeta) -> Result<(), ClusterError> {
    let labels = existing.labels();
    if labels.get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1) {
        return Err(ClusterError::NotManaged { namespace: stand.namespace.clone() });
    }
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
        let applied = vec![
            self.apply(ns, &resources::resource_quota(stand, &self.config.quota)).await?,
            self.apply(ns, &resources::limit_range(stand, &self.config.limits)).await?,
            self.apply(ns, &resources::deny_all_policy(stand)).await?,
            self.apply(ns, &resources::allow_policy(stand, &self.config)).await?,
            self.apply(ns, &resources::service_account(stand)).await?,
        ];
        Ok(NamespaceOutcome { created: existing.is_none(), applied })
    }
}
