//! The stand's Secrets: its database login and app values, its image pull Secret (named on the
//! namespace's `default` ServiceAccount), and the Deployments rolled when the values change. Also
//! helm's own record of a revision it never finished, a Secret too, deleted when a rollback cannot
//! clear it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use secrecy::SecretString;

use super::Kubernetes;
use crate::cluster::{ClusterError, StandMeta, resources};

/// The field manager of the `default` ServiceAccount's pull Secrets (see
/// [`resources::service_account_pull_secrets`]).
const PULL_SECRETS_FIELD_MANAGER: &str = "draftd-registry";

impl Kubernetes {
    /// [`crate::cluster::Cluster::apply_secret`].
    pub(super) async fn apply_stand_secret(
        &self,
        stand: &StandMeta,
        name: &str,
        data: &BTreeMap<String, SecretString>,
    ) -> Result<String, ClusterError> {
        self.apply(&stand.namespace, &resources::secret(stand, name, data)).await?;
        Ok(resources::secrets_checksum(data))
    }

    /// [`crate::cluster::Cluster::apply_pull_secret`].
    pub(super) async fn apply_stand_pull_secret(
        &self,
        stand: &StandMeta,
        dockerconfigjson: &SecretString,
    ) -> Result<(), ClusterError> {
        self.apply(&stand.namespace, &resources::pull_secret(stand, dockerconfigjson)).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &stand.namespace);
        let params = PatchParams::apply(PULL_SECRETS_FIELD_MANAGER).force();
        let account = resources::service_account_pull_secrets(stand);
        accounts.patch(resources::SERVICE_ACCOUNT_NAME, &params, &Patch::Apply(&account)).await?;
        Ok(())
    }

    /// [`crate::cluster::Cluster::roll_on_secrets`].
    pub(super) async fn roll_deployments_on_secrets(
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

    /// [`crate::cluster::Cluster::discard_pending_revision`].
    pub(super) async fn discard_pending_helm_record(
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
}
