//! The stand page's logs: each pod of the namespace, each container's last lines through the
//! pods/log subresource, bounded by `tailLines` and `limitBytes`, read now and kept nowhere.

use futures_util::io::AsyncReadExt;
use futures_util::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, LogParams};

use super::Kubernetes;
use crate::cluster::ClusterError;
use crate::cluster::logs::{self, ContainerLog, LogBounds, LogSource, LogText, PodLog};

/// Reads at once: a page of many pods loads in a few round trips, without a burst at the API server.
const CONCURRENT_READS: usize = 4;

impl Kubernetes {
    /// [`crate::cluster::Cluster::pod_logs`].
    pub(super) async fn read_pod_logs(&self, namespace: &str, bounds: LogBounds) -> Result<Vec<PodLog>, ClusterError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let mut listed = pods.list(&ListParams::default()).await?.items;
        // Newest first: the pods of the current rollout and the last Jobs are the ones looked for.
        listed
            .sort_by(|a, b| b.creation_timestamp().cmp(&a.creation_timestamp()).then(a.name_any().cmp(&b.name_any())));
        // Collected first: a lazy map's closure would make this future's type depend on lifetimes the
        // trait's `Send` bound cannot name.
        let reads: Vec<_> = listed.iter().take(logs::MAX_PODS).map(|pod| self.pod_log(&pods, pod, bounds)).collect();
        let mut read: Vec<PodLog> = stream::iter(reads).buffered(CONCURRENT_READS).collect().await;
        // The rest by name only, so the page says they exist.
        read.extend(listed.iter().skip(logs::MAX_PODS).map(|pod| PodLog {
            pod: pod.name_any(),
            phase: phase(pod),
            containers: Vec::new(),
        }));
        Ok(read)
    }

    async fn pod_log(&self, pods: &Api<Pod>, pod: &Pod, bounds: LogBounds) -> PodLog {
        let (name, phase) = (pod.name_any(), phase(pod));
        let mut containers = Vec::new();
        for (container, init, status) in logs::containers(pod) {
            let log = match logs::source(status, &phase) {
                LogSource::None(reason) => LogText::NotStarted { reason },
                source => read(pods, &name, &container, source == LogSource::Previous, bounds).await,
            };
            containers.push(ContainerLog { container, init, log });
        }
        PodLog { pod: name, phase, containers }
    }
}

fn phase(pod: &Pod) -> String {
    pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".to_owned())
}

/// One container's log. Read as bytes: `limitBytes` may end it inside a character, which a text
/// read would refuse as invalid UTF-8.
async fn read(pods: &Api<Pod>, pod: &str, container: &str, previous: bool, bounds: LogBounds) -> LogText {
    let params = LogParams {
        container: Some(container.to_owned()),
        previous,
        tail_lines: Some(i64::from(bounds.lines)),
        limit_bytes: Some(i64::from(bounds.bytes)),
        ..LogParams::default()
    };
    let limit = bounds.bytes as usize;
    let mut bytes = Vec::new();
    let result = match pods.log_stream(pod, &params).await {
        // The API server honours limitBytes; `take` keeps a server that does not from filling memory.
        Ok(body) => {
            let mut body = std::pin::pin!(body.take(limit as u64));
            body.read_to_end(&mut bytes).await.map_err(|e| e.to_string())
        }
        Err(kube::Error::Api(status)) => Err(status.message),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(_) => logs::text_of(&bytes, limit, previous),
        Err(message) => {
            tracing::debug!(pod, container, %message, "container log not readable");
            LogText::Unreadable { message }
        }
    }
}
