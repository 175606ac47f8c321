//! A stand's workloads to sleep and back: their replicas read, and set through the scale
//! subresource (what `kubectl scale` does), so nothing but the count changes and the next
//! `helm upgrade` finds the spec it applied.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use super::Kubernetes;
use crate::cluster::{ClusterError, FIELD_MANAGER};
use crate::stand::{Workload, WorkloadKind};

impl Kubernetes {
    /// [`crate::cluster::Cluster::workloads`].
    pub(super) async fn release_workloads(
        &self,
        namespace: &str,
        release: &str,
    ) -> Result<Vec<Workload>, ClusterError> {
        let params = ListParams::default().labels(&format!("app.kubernetes.io/instance={release}"));
        let mut found = Vec::new();
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        for d in deployments.list(&params).await?.items {
            // A Deployment without `replicas` runs one (the API server's default).
            let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            found.push(Workload { kind: WorkloadKind::Deployment, name: d.name_any(), replicas });
        }
        let statefulsets: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        for s in statefulsets.list(&params).await?.items {
            let replicas = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            found.push(Workload { kind: WorkloadKind::StatefulSet, name: s.name_any(), replicas });
        }
        Ok(found)
    }

    /// [`crate::cluster::Cluster::scale`]. A workload that is gone (deleted by hand, or by a
    /// chart change since the sleep) is nothing to scale: false.
    pub(super) async fn scale_workload(
        &self,
        namespace: &str,
        workload: &Workload,
        replicas: i32,
    ) -> Result<bool, ClusterError> {
        let patch = Patch::Merge(json!({ "spec": { "replicas": replicas } }));
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        let result = match workload.kind {
            WorkloadKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
                api.patch_scale(&workload.name, &params, &patch).await.map(drop)
            }
            WorkloadKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
                api.patch_scale(&workload.name, &params, &patch).await.map(drop)
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
