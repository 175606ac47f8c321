//! A stand's workloads to sleep and back: their replicas read, and set through the scale
//! subresource (what `kubectl scale` does), so nothing but the count changes and the next
//! `helm upgrade` finds the spec it applied.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodSpec};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use super::Kubernetes;
use crate::cluster::fit::quantity;
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
            let (cpu_millis, memory_bytes) = pod_requests(d.spec.as_ref().and_then(|s| s.template.spec.as_ref()));
            found.push(Workload {
                kind: WorkloadKind::Deployment,
                name: d.name_any(),
                replicas,
                cpu_millis,
                memory_bytes,
            });
        }
        let statefulsets: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        for s in statefulsets.list(&params).await?.items {
            let replicas = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let (cpu_millis, memory_bytes) = pod_requests(s.spec.as_ref().and_then(|s| s.template.spec.as_ref()));
            found.push(Workload {
                kind: WorkloadKind::StatefulSet,
                name: s.name_any(),
                replicas,
                cpu_millis,
                memory_bytes,
            });
        }
        Ok(found)
    }

    /// [`crate::cluster::Cluster::claimed_storage`].
    pub(super) async fn namespace_claims(&self, namespace: &str) -> Result<i64, ClusterError> {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let mut bytes = 0.0;
        for claim in claims.list(&ListParams::default()).await?.items {
            let requested =
                claim.spec.and_then(|s| s.resources).and_then(|r| r.requests).and_then(|mut r| r.remove("storage"));
            bytes += requested.and_then(|q| quantity(&q.0)).unwrap_or(0.0);
        }
        Ok(bytes as i64)
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

/// What one pod of `spec` requests, `(cpu millicores, memory bytes)`: its containers' requests
/// summed (init containers run before them, not beside them).
fn pod_requests(spec: Option<&PodSpec>) -> (i64, i64) {
    let Some(spec) = spec else { return (0, 0) };
    let mut cpu = 0.0;
    let mut memory = 0.0;
    for container in &spec.containers {
        let Some(requests) = container.resources.as_ref().and_then(|r| r.requests.as_ref()) else { continue };
        cpu += requests.get("cpu").and_then(|q| quantity(&q.0)).unwrap_or(0.0);
        memory += requests.get("memory").and_then(|q| quantity(&q.0)).unwrap_or(0.0);
    }
    ((cpu * 1000.0).round() as i64, memory.round() as i64)
}
