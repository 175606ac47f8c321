//! Running Jobs to their end: the stand's migrate and smoke Jobs and the BuildKit build, each found
//! again when an earlier attempt of the run started it. A Job whose pod cannot start for a reason
//! waiting will not cure is deleted early; a finished one is kept a while for its log, then its TTL
//! removes it.

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};

use super::Kubernetes;
use crate::cluster::build::{self, BuildJob};
use crate::cluster::jobs::{self, JobOutcome, JobRequest};
use crate::cluster::{ClusterError, FIELD_MANAGER, StandMeta};

/// How long a Job's image pull may keep failing, in polls (30 s at the 2 s poll): a registry
/// hiccup passes in that time, a missing image or a refused login does not.
const PULL_GRACE_POLLS: u32 = 15;
/// How long a Job's pod may stay unschedulable or uncreated for want of quota, in polls (3 min at
/// the 2 s poll): enough for a cluster autoscaler to add a node, or a rollout's surge pods to go
/// and free the quota; far less than the Job's deadline.
const CAPACITY_GRACE_POLLS: u32 = 90;

impl Kubernetes {
    /// [`crate::cluster::Cluster::run_job`].
    pub(super) async fn run_stand_job(
        &self,
        stand: &StandMeta,
        request: &JobRequest,
    ) -> Result<JobOutcome, ClusterError> {
        let job = jobs::job(stand, request);
        self.run_job_object(&stand.namespace, &job, &request.purpose, request.deadline, request.keep_for).await
    }

    /// [`crate::cluster::Cluster::run_build`].
    pub(super) async fn run_build_job(&self, stand: &StandMeta, build: &BuildJob) -> Result<JobOutcome, ClusterError> {
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

    /// Runs `job` (its container `container`) in `ns` to its end, or finds the one an earlier
    /// attempt started: what [`crate::cluster::Cluster::run_job`] and [`crate::cluster::Cluster::run_build`] share.
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
