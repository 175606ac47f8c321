//! The migrate and smoke steps' Jobs: run the project's command once in the stand's namespace,
//! with the stand's image and credentials, and bring back its exit status and the end of its log.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerStatus, EnvFromSource, EnvVar, Event, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, SecretEnvSource, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::Serialize;

use super::StandMeta;
use super::resources::labels;

/// Lines of a Job's log kept for the report.
pub const JOB_LOG_LINES: i64 = 100;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    /// `migrate` or `smoke`: with the run number, names the Job (`smoke-r3`), so a resumed run
    /// finds the Job its earlier attempt started instead of starting another.
    pub purpose: String,
    pub run_number: i32,
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Secrets whose keys become environment variables (the stand's short-lived credentials).
    pub secrets: Vec<String>,
    /// Killed after this long (`activeDeadlineSeconds`).
    pub deadline: Duration,
    /// Removed this long after draftd has read how it ended (`ttlSecondsAfterFinished`, set
    /// then, not at creation: a run resumed later must still find the Job it started), logs included.
    pub keep_for: Duration,
}

impl JobRequest {
    pub fn name(&self) -> String {
        format!("{}-r{}", self.purpose, self.run_number)
    }
}

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobOutcome {
    pub job: String,
    pub succeeded: bool,
    /// `Complete`, or the Job's failure reason (`BackoffLimitExceeded`, `DeadlineExceeded`). When
    /// the Job ran out of time, what its pod was doing then follows, so the report says why:
    /// `DeadlineExceeded: pod smoke-r3-x7k2p (Running): smoke running since …`.
    pub reason: String,
    pub exit_code: Option<i32>,
    /// The end of its log (bounded), for the report.
    pub log_tail: Option<String>,
    /// How long it ran as Kubernetes counts it (`status.startTime` to its end), when known: what
    /// of the step's time was the command's own, and what was draftd's and the cluster's.
    pub ran_for: Option<Duration>,
}

/// From the Job's `status.startTime` to `completionTime` (set on success) or the time of its
/// Failed condition.
pub fn ran_for(job: &Job) -> Option<Duration> {
    let status = job.status.as_ref()?;
    let start = status.start_time.as_ref()?.0;
    let end = status.completion_time.as_ref().map(|t| t.0).or_else(|| {
        let failed = status.conditions.iter().flatten().find(|c| c.type_ == "Failed" && c.status == "True")?;
        failed.last_transition_time.as_ref().map(|t| t.0)
    })?;
    Duration::try_from(end.duration_since(start)).ok()
}

/// The label the Job controller puts on its pods, with the Job's UID (Kubernetes ≥ 1.27): unlike
/// `job-name`, it cannot match the pods of an earlier Job of the same name, or a hand-made pod.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

/// The `ttlSecondsAfterFinished` value for `keep_for`.
pub fn ttl_seconds(keep_for: Duration) -> i32 {
    keep_for.as_secs().min(i32::MAX as u64) as i32
}

fn runtime_default_seccomp() -> Option<SeccompProfile> {
    Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None })
}

/// The Job, without `ttlSecondsAfterFinished`: draftd sets it once it has read the outcome
/// (see [`JobRequest::keep_for`]).
pub fn job(stand: &StandMeta, request: &JobRequest) -> Job {
    let mut job_labels = labels(stand);
    job_labels.insert("draftd.io/job".into(), request.purpose.clone());
    let env = request.env.iter().map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), ..EnvVar::default() });
    let env_from = request.secrets.iter().map(|s| EnvFromSource {
        secret_ref: Some(SecretEnvSource { name: s.clone(), optional: Some(false) }),
        ..EnvFromSource::default()
    });
    Job {
        metadata: ObjectMeta {
            name: Some(request.name()),
            namespace: Some(stand.namespace.clone()),
            labels: Some(job_labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            // Once: a failed migration or smoke test is reported, not retried behind the user's back.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(request.deadline.as_secs().max(1) as i64),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(job_labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    // Pod Security "restricted", so the Job runs in namespaces that enforce it. No
                    // runAsUser: the image decides who it runs as; an image that runs as root is
                    // refused by the kubelet (CreateContainerConfigError), which run_job reports.
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: runtime_default_seccomp(),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![Container {
                        name: request.purpose.clone(),
                        image: Some(request.image.clone()),
                        command: Some(request.command.clone()),
                        env: Some(env.collect()),
                        env_from: Some(env_from.collect()),
                        security_context: Some(SecurityContext {
                            allow_privilege_escalation: Some(false),
                            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
                            run_as_non_root: Some(true),
                            seccomp_profile: runtime_default_seccomp(),
                            ..SecurityContext::default()
                        }),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// `Some(outcome without log)` once the Job has finished, from its conditions.
pub fn finished(job: &Job) -> Option<(bool, String)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().filter(|c| c.status == "True").find_map(|c| match c.type_.as_str() {
        "Complete" => Some((true, "Complete".to_owned())),
        "Failed" => Some((false, c.reason.clone().unwrap_or_else(|| "Failed".into()))),
        _ => None,
    })
}

/// The exit code of the Job's container, from its (only) pod.
pub fn exit_code(pod: &Pod, container: &str) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

/// Whether the pod belongs to the Job with this UID (its controlling owner reference).
pub fn owned_by(pod: &Pod, job_uid: &str) -> bool {
    pod.owner_references().iter().any(|o| o.uid == job_uid && o.kind == "Job")
}

/// The Job's newest pod: with `backoffLimit: 0` there is one, unless it was replaced after an
/// eviction.
pub fn newest_pod(pods: Vec<Pod>) -> Option<Pod> {
    pods.into_iter().max_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp))
}

/// Whether the container ever ran, so that it has a log to read.
pub fn has_run(pod: &Pod, container: &str) -> bool {
    let Some(c) = statuses(pod).into_iter().find(|c| c.name == container) else { return false };
    let state = c.state.as_ref();
    state.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        || c.last_state.as_ref().is_some_and(|s| s.terminated.is_some())
}

fn statuses(pod: &Pod) -> Vec<&ContainerStatus> {
    let Some(status) = pod.status.as_ref() else { return Vec::new() };
    status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten()).collect()
}

/// The pod's scheduling condition when the scheduler could not place it.
fn unschedulable(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let c = conditions.iter().find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    (c.reason.as_deref() == Some("Unschedulable")).then(|| c.message.clone().unwrap_or_default())
}

/// What a Job's pod was doing, in one line for the report: phase, scheduling, each container.
pub fn describe_pod(pod: &Pod) -> String {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    let mut parts = Vec::new();
    if let Some(message) = unschedulable(pod) {
        parts.push(format!("Unschedulable ({})", message.trim()));
    }
    for c in statuses(pod) {
        let state = c.state.as_ref();
        let text = if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("Waiting");
            match w.message.as_deref() {
                Some(m) => format!("{}: {reason} ({})", c.name, m.trim()),
                None => format!("{}: {reason}", c.name),
            }
        } else if let Some(r) = state.and_then(|s| s.running.as_ref()) {
            match &r.started_at {
                Some(at) => format!("{} running since {}", c.name, at.0),
                None => format!("{} running", c.name),
            }
        } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            let reason = t.reason.as_deref().unwrap_or("Terminated");
            format!("{}: {reason}, exit code {}", c.name, t.exit_code)
        } else {
            format!("{}: no state yet", c.name)
        };
        parts.push(text);
    }
    if parts.is_empty() {
        format!("pod {} ({phase})", pod.name_any())
    } else {
        format!("pod {} ({phase}): {}", pod.name_any(), parts.join("; "))
    }
}

/// The Warning events of a Job, `Reason: message`, for the report.
pub fn describe_events(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| format!("{}: {}", e.reason.as_deref().unwrap_or(""), e.message.as_deref().unwrap_or("").trim()))
        .collect()
}

/// Why a Job's pod will not start however long draftd waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// The Kubernetes reason: `ImagePullBackOff`, `CreateContainerConfigError`, `FailedCreate`, …
    pub reason: String,
    /// Which pod or event, and what it says.
    pub details: String,
}

/// How soon a kind of trouble counts as permanent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Patience {
    /// Nothing will change it: the image name is invalid, the container config refused, an
    /// admission policy forbids the pod.
    None,
    /// A pull may fail for a moment (a registry hiccup); one that keeps failing will not pass.
    Short,
    /// It depends on other pods and nodes: a cluster autoscaler adding a node, a rollout's surge
    /// pods going away and freeing the namespace's quota.
    Long,
}

/// Watches a Job's pods and events while it runs and tells, from what it saw over time, when
/// the Job will not start. Pure: the caller lists pods and events and passes the clock.
#[derive(Debug)]
pub struct StartWatch {
    short: Duration,
    long: Duration,
    /// When each trouble (`pod/kind`) was first seen in an unbroken series of observations.
    first_seen: HashMap<String, Instant>,
}

impl StartWatch {
    /// `short`: how long image pulls may fail; `long`: how long a pod may stay unschedulable or
    /// uncreated for want of quota.
    pub fn new(short: Duration, long: Duration) -> Self {
        Self { short, long, first_seen: HashMap::new() }
    }

    /// One observation: the Job's pods and, while it has none, its events. `Some` when the Job
    /// should be given up.
    pub fn check(&mut self, pods: &[Pod], events: &[Event], now: Instant) -> Option<Stuck> {
        let mut seen: Vec<(String, Patience, Stuck)> = Vec::new();
        for pod in pods {
            let name = pod.name_any();
            if let Some(message) = unschedulable(pod) {
                let details = format!("pod {name} cannot be scheduled: {}", message.trim());
                seen.push((
                    format!("{name}/schedule"),
                    Patience::Long,
                    Stuck { reason: "Unschedulable".into(), details },
                ));
            }
            for c in statuses(pod) {
                let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else { continue };
                let reason = waiting.reason.clone().unwrap_or_default();
                let patience = match reason.as_str() {
                    "InvalidImageName" | "CreateContainerConfigError" | "ErrImageNeverPull" => Patience::None,
                    "ErrImagePull" | "ImagePullBackOff" => Patience::Short,
                    _ => continue,
                };
                let message = waiting.message.as_deref().unwrap_or("").trim();
                let details = format!("pod {name}, container {}: {reason}: {message}", c.name);
                // ErrImagePull and ImagePullBackOff alternate while a pull keeps failing: one trouble.
                let kind = if patience == Patience::Short { "pull".to_owned() } else { reason.clone() };
                seen.push((format!("{name}/{}/{kind}", c.name), patience, Stuck { reason, details }));
            }
        }
        // The Job controller reports a pod it could not create as a FailedCreate event on the
        // Job; it matters only while there is no pod (afterwards it is history).
        if pods.is_empty() {
            for e in events.iter().filter(|e| e.reason.as_deref() == Some("FailedCreate")) {
                let message = e.message.as_deref().unwrap_or("").trim();
                let patience = if message.contains("status unknown for quota") {
                    // The quota controller has not computed a new quota's status yet: passes by itself.
                    continue;
                } else if message.contains("exceeded quota") {
                    Patience::Long
                } else if message.contains("forbidden") {
                    Patience::None
                } else {
                    continue;
                };
                let details = format!("the Job controller could not create its pod: {message}");
                let key = if patience == Patience::Long { "create/quota" } else { "create/forbidden" };
                seen.push((key.to_owned(), patience, Stuck { reason: "FailedCreate".into(), details }));
            }
        }
        // A trouble that went away starts its clock afresh if it comes back.
        self.first_seen.retain(|key, _| seen.iter().any(|(k, _, _)| k == key));
        let mut found = None;
        for (key, patience, stuck) in seen {
            let first = *self.first_seen.entry(key).or_insert(now);
            let grace = match patience {
                Patience::None => Duration::ZERO,
                Patience::Short => self.short,
                Patience::Long => self.long,
            };
            if found.is_none() && now.duration_since(first) >= grace {
                found = Some(stuck);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({ "metadata": { "name": "smoke-r3-x7k2p" }, "status": status })).unwrap()
    }

    fn waiting(reason: &str, message: &str) -> Pod {
        pod(json!({ "phase": "Pending", "containerStatuses": [{ "name": "smoke", "ready": false, "restartCount": 0,
            "image": "app:1", "imageID": "", "state": { "waiting": { "reason": reason, "message": message } } }] }))
    }

    fn event(reason: &str, message: &str) -> Event {
        serde_json::from_value(
            json!({ "metadata": { "name": "smoke-r3.1" }, "involvedObject": { "kind": "Job", "name": "smoke-r3" },
            "type": "Warning", "reason": reason, "message": message }),
        )
        .unwrap()
    }

    fn watch() -> StartWatch {
        StartWatch::new(Duration::from_secs(30), Duration::from_secs(180))
    }

    #[test]
    fn a_refused_container_config_or_invalid_image_name_gives_up_at_once() {
        let t = Instant::now();
        for reason in ["CreateContainerConfigError", "InvalidImageName"] {
            let stuck =
                watch().check(&[waiting(reason, "container has runAsNonRoot and image will run as root")], &[], t);
            let stuck = stuck.unwrap();
            assert_eq!(stuck.reason, reason);
            assert!(stuck.details.contains("smoke-r3-x7k2p") && stuck.details.contains("runAsNonRoot"), "{stuck:?}");
        }
    }

    #[test]
    fn a_failing_image_pull_is_given_its_grace_and_a_pull_that_recovers_starts_it_afresh() {
        let t = Instant::now();
        let mut w = watch();
        let pulling = waiting("ErrImagePull", "manifest unknown");
        assert_eq!(w.check(std::slice::from_ref(&pulling), &[], t), None);
        let backoff = waiting("ImagePullBackOff", "Back-off pulling image \"app:draft-x\"");
        assert_eq!(
            w.check(std::slice::from_ref(&backoff), &[], t + Duration::from_secs(20)),
            None,
            "still within the grace"
        );
        let stuck = w.check(std::slice::from_ref(&backoff), &[], t + Duration::from_secs(31)).unwrap();
        assert_eq!(stuck.reason, "ImagePullBackOff");
        assert!(stuck.details.contains("app:draft-x"), "{stuck:?}");

        let mut w = watch();
        assert_eq!(w.check(std::slice::from_ref(&pulling), &[], t), None);
        let running = pod(json!({ "phase": "Running", "containerStatuses": [{ "name": "smoke", "ready": true,
            "restartCount": 0, "image": "app:1", "imageID": "", "state": { "running": {} } }] }));
        assert_eq!(w.check(&[running], &[], t + Duration::from_secs(20)), None);
        assert_eq!(w.check(&[pulling], &[], t + Duration::from_secs(40)), None, "the clock restarted");
    }

    #[test]
    fn an_unschedulable_pod_waits_the_long_grace() {
        let t = Instant::now();
        let mut w = watch();
        let pending = pod(json!({ "phase": "Pending", "conditions": [{ "type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient memory." }] }));
        assert_eq!(w.check(std::slice::from_ref(&pending), &[], t), None);
        assert_eq!(w.check(std::slice::from_ref(&pending), &[], t + Duration::from_secs(60)), None);
        let stuck = w.check(&[pending], &[], t + Duration::from_secs(180)).unwrap();
        assert_eq!(stuck.reason, "Unschedulable");
        assert!(stuck.details.contains("Insufficient memory"), "{stuck:?}");
    }

    #[test]
    fn failed_creates_forbidden_at_once_exceeded_quota_after_the_long_grace_unknown_quota_never() {
        let t = Instant::now();
        let forbidden = event(
            "FailedCreate",
            "Error creating: pods \"smoke-r3-x7k2p\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true",
        );
        let stuck = watch().check(&[], std::slice::from_ref(&forbidden), t).unwrap();
        assert_eq!(stuck.reason, "FailedCreate");
        assert!(stuck.details.contains("violates PodSecurity"), "{stuck:?}");

        let quota = event(
            "FailedCreate",
            "Error creating: pods \"smoke-r3-x7k2p\" is forbidden: exceeded quota: draftd-quota, requested: requests.memory=512Mi, used: requests.memory=4Gi, limited: requests.memory=4Gi",
        );
        let mut w = watch();
        assert_eq!(w.check(&[], std::slice::from_ref(&quota), t), None, "surge pods of a rollout may free the quota");
        let stuck = w.check(&[], std::slice::from_ref(&quota), t + Duration::from_secs(180)).unwrap();
        assert!(stuck.details.contains("exceeded quota"), "{stuck:?}");

        let unknown = event(
            "FailedCreate",
            "Error creating: pods \"smoke-r3-x7k2p\" is forbidden: status unknown for quota: draftd-quota, resources: requests.memory",
        );
        let mut w = watch();
        assert_eq!(w.check(&[], std::slice::from_ref(&unknown), t), None);
        assert_eq!(w.check(&[], &[unknown], t + Duration::from_secs(600)), None, "the quota controller catches up");

        let running = pod(json!({ "phase": "Running" }));
        assert_eq!(watch().check(&[running], &[forbidden], t), None, "once a pod exists, old events are history");
    }

    #[test]
    fn a_pod_is_described_by_phase_scheduling_and_containers() {
        let p = waiting("ImagePullBackOff", "Back-off pulling image \"app:draft-x\"");
        assert_eq!(
            describe_pod(&p),
            "pod smoke-r3-x7k2p (Pending): smoke: ImagePullBackOff (Back-off pulling image \"app:draft-x\")"
        );
        let running = pod(json!({ "phase": "Running", "containerStatuses": [{ "name": "smoke", "ready": true,
            "restartCount": 0, "image": "app:1", "imageID": "",
            "state": { "running": { "startedAt": "2026-11-25T10:00:00Z" } } }] }));
        assert_eq!(describe_pod(&running), "pod smoke-r3-x7k2p (Running): smoke running since 2026-11-25T10:00:00Z");
    }
}
