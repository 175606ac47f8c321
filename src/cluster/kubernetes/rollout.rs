//! Whether a release rolled out: every Deployment and StatefulSet of the Helm release waited for
//! until done, failed or out of time; and for one that did not, what its pods say (container
//! states, log tails of failing containers) with the namespace's Warning events.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, LogParams};

use super::Kubernetes;
use crate::cluster::ClusterError;
use crate::cluster::verify::{self, Diagnostics, LogSource, RolloutState};

impl Kubernetes {
    /// [`crate::cluster::Cluster::wait_rollout`].
    pub(super) async fn wait_for_rollout(
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

    /// [`crate::cluster::Cluster::diagnose`].
    pub(super) async fn diagnose_pods(&self, namespace: &str) -> Result<Diagnostics, ClusterError> {
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
}
