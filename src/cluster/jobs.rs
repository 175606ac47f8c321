//! The migrate and smoke steps' Jobs: run the project's command once in the stand's namespace,
//! with the stand's image and credentials, and bring back its exit status and the end of its log.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar, Pod, PodSpec, PodTemplateSpec, SecretEnvSource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
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
    /// Removed this long after it finished (`ttlSecondsAfterFinished`), logs included.
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
    /// `Complete`, or the Job's failure reason (`BackoffLimitExceeded`, `DeadlineExceeded`).
    pub reason: String,
    pub exit_code: Option<i32>,
    /// The end of its log (bounded), for the report.
    pub log_tail: Option<String>,
}

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
            ttl_seconds_after_finished: Some(request.keep_for.as_secs().min(i32::MAX as u64) as i32),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(job_labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    containers: vec![Container {
                        name: request.purpose.clone(),
                        image: Some(request.image.clone()),
                        command: Some(request.command.clone()),
                        env: Some(env.collect()),
                        env_from: Some(env_from.collect()),
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
