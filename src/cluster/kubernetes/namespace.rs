//! The stand's namespace and what isolates it: the namespace itself, the RoleBinding that gives
//! draftd its rights inside, the quota, limit range, network policies and ServiceAccount; its expiry
//! annotation after an extend; and the list of every namespace draftd manages, for the orphan scan.
//! A namespace without draftd's label, or another stand's, is never applied over.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use super::Kubernetes;
use crate::cluster::{
    ClusterError, EXPIRES_ANNOTATION, MANAGED_BY, ManagedNamespace, NamespaceOutcome, PROJECT_LABEL, STAND_LABEL,
    StandMeta, expiry_annotation, resources,
};

impl Kubernetes {
    /// [`crate::cluster::Cluster::ensure_namespace`].
    pub(super) async fn ensure_stand_namespace(&self, stand: &StandMeta) -> Result<NamespaceOutcome, ClusterError> {
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

    /// [`crate::cluster::Cluster::managed_namespaces`].
    pub(super) async fn list_managed_namespaces(&self) -> Result<Vec<ManagedNamespace>, ClusterError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let list = namespaces.list(&ListParams::default().labels(&selector)).await?;
        Ok(list
            .items
            .into_iter()
            .map(|ns| ManagedNamespace {
                stand_id: ns.labels().get(STAND_LABEL).and_then(|v| v.parse().ok()),
                project: ns.labels().get(PROJECT_LABEL).cloned(),
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

    /// [`crate::cluster::Cluster::annotate_expiry`].
    pub(super) async fn annotate_namespace_expiry(
        &self,
        namespace: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, ClusterError> {
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
            "metadata": { "annotations": { EXPIRES_ANNOTATION: expiry_annotation(expires_at) } }
        });
        match namespaces.patch(namespace, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether the namespace carries draftd's label: draftd touches nothing without it.
pub(super) fn is_managed(namespace: &Namespace) -> bool {
    namespace.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
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
