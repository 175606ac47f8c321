//! Teardown in the cluster: the stand's namespace deleted (the namespace controller deletes what is
//! inside) and waited for, saying what holds it when it does not go; and the stand's builds still
//! in the build namespace.

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};

use super::Kubernetes;
use super::namespace::is_managed;
use crate::cluster::{ClusterError, NamespaceGone, STAND_LABEL, StandMeta};

impl Kubernetes {
    /// [`crate::cluster::Cluster::delete_namespace`].
    pub(super) async fn delete_stand_namespace(
        &self,
        namespace: &str,
        wait: Duration,
    ) -> Result<NamespaceGone, ClusterError> {
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

    /// [`crate::cluster::Cluster::delete_builds`].
    pub(super) async fn delete_build_jobs(
        &self,
        build_namespace: &str,
        stand: &StandMeta,
    ) -> Result<Vec<String>, ClusterError> {
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
