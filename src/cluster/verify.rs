//! The verify step's parts: wait for the release's workloads to roll out, then probe the stand N
//! times over a window (any 5xx or timeout fails), and on failure say why in terms a developer
//! acts on: pods not ready and their containers' reasons, log tails, Warning events.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One workload that has not finished rolling out, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// `Deployment/name` or `StatefulSet/name`.
    pub workload: String,
    pub status: String,
}

/// What verify found wrong with the stand's pods, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diagnostics {
    pub pods: Vec<PodProblem>,
    /// Warning events of the namespace, newest last: `Kind/name: Reason: message`.
    pub events: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodProblem {
    pub pod: String,
    pub phase: String,
    pub containers: Vec<ContainerProblem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerProblem {
    pub container: String,
    /// CrashLoopBackOff, ImagePullBackOff, OOMKilled, Error, …
    pub reason: String,
    pub message: Option<String>,
    pub restarts: i32,
    /// The last lines of its log (of the previous instance when it restarted), when it ran at all.
    pub log_tail: Option<String>,
}

/// Lines of log kept per failing container: enough for a stack trace, small enough for a comment.
pub const LOG_TAIL_LINES: i64 = 50;
/// Warning events kept, newest.
pub const MAX_EVENTS: usize = 20;

/// What one probe of the stand saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The app's own answer.
    Status(u16),
    /// No answer within the probe's timeout.
    Timeout,
    /// Refused or reset: nothing is listening yet, or it crashed.
    Unreachable,
    /// Something between draftd and the app answered in the app's place (the API server proxy:
    /// no such Service, no right to proxy, no ready endpoint, the pod not reachable), so the app
    /// was never asked; says who refused, what they said and what to do about it.
    Refused(String),
}

impl ProbeResult {
    /// How this answer fails the gate, or `None` when it passes. The app's 4xx passes: an app may
    /// answer 401 or 404 on `/` and still be healthy; an answer the app never gave
    /// ([`ProbeResult::Refused`]) fails, whatever its code.
    pub fn failure(&self, timeout: Duration) -> Option<String> {
        match self {
            ProbeResult::Status(code) if *code < 500 => None,
            ProbeResult::Status(code) => Some(format!("answered {code}")),
            ProbeResult::Timeout => Some(format!("did not answer within {timeout:?}")),
            ProbeResult::Unreachable => Some("could not connect".to_owned()),
            ProbeResult::Refused(reason) => Some(format!("did not reach the app: {reason}")),
        }
    }

    /// A stable label for metrics: `answered` (below 500), `5xx`, `timeout`, `unreachable`, `refused`.
    pub fn label(&self) -> &'static str {
        match self {
            ProbeResult::Status(code) if *code < 500 => "answered",
            ProbeResult::Status(_) => "5xx",
            ProbeResult::Timeout => "timeout",
            ProbeResult::Unreachable => "unreachable",
            ProbeResult::Refused(_) => "refused",
        }
    }
}

/// One way to reach the stand: its Ingress URL, or its Service through the API server proxy.
pub trait Prober: Send + Sync {
    fn probe(&self, timeout: Duration) -> impl Future<Output = ProbeResult> + Send;
    /// What is probed, for the report.
    fn target(&self) -> String;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateReport {
    pub target: String,
    pub probes: u32,
    /// Status counts, e.g. `{"200": 5}`.
    pub statuses: std::collections::BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("probe {attempt} of {probes} to {target} {outcome} (after {elapsed:?})")]
pub struct GateFailure {
    pub target: String,
    pub attempt: u32,
    pub probes: u32,
    pub outcome: String,
    pub elapsed: Duration,
}

/// Probes `probes` times spread evenly over `window`; the first answer that fails
/// ([`ProbeResult::failure`]: a 5xx, a timeout, a refusal) fails the gate.
pub async fn gate<P: Prober>(
    prober: &P,
    probes: u32,
    window: Duration,
    timeout: Duration,
) -> Result<GateReport, GateFailure> {
    let probes = probes.max(1);
    let spacing = if probes > 1 { window / (probes - 1) } else { Duration::ZERO };
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::new();
    for attempt in 1..=probes {
        let due = started + spacing * (attempt - 1);
        tokio::time::sleep_until(due.into()).await;
        let result = prober.probe(timeout).await;
        let Some(outcome) = result.failure(timeout) else {
            if let ProbeResult::Status(code) = result {
                *statuses.entry(code.to_string()).or_insert(0) += 1;
            }
            continue;
        };
        return Err(GateFailure { target: prober.target(), attempt, probes, outcome, elapsed: started.elapsed() });
    }
    Ok(GateReport { target: prober.target(), probes, statuses })
}

/// Probes a URL (the stand's Ingress) with GET.
pub struct UrlProber {
    client: reqwest::Client,
    url: String,
    /// The Host header, when the URL names the ingress controller's address instead of the stand.
    host: Option<String>,
    /// A private stand's access token (`X-Draftd-Access`): without it the sign-in redirect would
    /// answer for the app.
    access: Option<secrecy::SecretString>,
}

impl UrlProber {
    pub fn new(url: impl Into<String>) -> Self {
        // Redirects are answers too (a login page): a 3xx passes the gate as it is.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client without custom TLS settings builds");
        Self { client, url: url.into(), host: None, access: None }
    }

    /// Sends a private stand's access token, so the app answers rather than the sign-in redirect.
    pub fn with_access(mut self, token: Option<secrecy::SecretString>) -> Self {
        self.access = token;
        self
    }

    /// Through the ingress controller at `address` (`host:port`), in plain HTTP with the stand's
    /// `host` as the Host header: what the controller routes on, before the stand's DNS name or
    /// certificate exist, or where draftd cannot resolve it.
    pub fn through(address: &str, host: &str, path: &str) -> Self {
        let mut prober = Self::new(format!("http://{address}{path}"));
        prober.host = Some(host.to_owned());
        prober
    }
}

impl Prober for UrlProber {
    async fn probe(&self, timeout: Duration) -> ProbeResult {
        let mut request = self.client.get(&self.url).timeout(timeout);
        if let Some(host) = &self.host {
            request = request.header(reqwest::header::HOST, host);
        }
        if let Some(token) = &self.access {
            request = request.header("x-draftd-access", secrecy::ExposeSecret::expose_secret(token));
        }
        match request.send().await {
            Ok(response) => ProbeResult::Status(response.status().as_u16()),
            Err(e) if e.is_timeout() => ProbeResult::Timeout,
            Err(_) => ProbeResult::Unreachable,
        }
    }

    fn target(&self) -> String {
        match &self.host {
            Some(host) => format!("{} (Host: {host})", self.url),
            None => self.url.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Rollout state, read from the objects' status (what `kubectl rollout status` checks).

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// How a workload's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    Done,
    Progressing(String),
    /// It will not finish by waiting longer (the Deployment's progress deadline passed).
    Failed(String),
}

pub fn deployment_state(d: &Deployment) -> RolloutState {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = &d.status else { return RolloutState::Progressing("no status yet".into()) };
    // The generation first: until the controller has seen the new spec, the conditions are those
    // of the previous revision, and right after `helm upgrade` an old ProgressDeadlineExceeded
    // would fail the new rollout before it started.
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return RolloutState::Progressing("waiting for the controller to see the new spec".into());
    }
    if let Some(c) = status.conditions.iter().flatten().find(|c| c.type_ == "Progressing")
        && c.status == "False"
        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return RolloutState::Failed(c.message.clone().unwrap_or_else(|| "progress deadline exceeded".into()));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < want {
        RolloutState::Progressing(format!("{updated} of {want} replicas updated"))
    } else if total > updated {
        RolloutState::Progressing(format!("{} old replicas pending termination", total - updated))
    } else if available < want {
        RolloutState::Progressing(format!("{available} of {want} updated replicas available"))
    } else {
        RolloutState::Done
    }
}

/// As kubectl's StatefulSetStatusViewer, plus OnDelete: the spec observed, then by update strategy.
pub fn statefulset_state(s: &StatefulSet) -> RolloutState {
    let spec = s.spec.as_ref();
    let want = spec.and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = &s.status else { return RolloutState::Progressing("no status yet".into()) };
    let observed = status.observed_generation.unwrap_or(0);
    if observed == 0 || observed < s.metadata.generation.unwrap_or(0) {
        return RolloutState::Progressing("waiting for the controller to see the new spec".into());
    }
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let strategy = spec.and_then(|s| s.update_strategy.as_ref());
    if strategy.and_then(|u| u.type_.as_deref()) == Some("OnDelete") {
        // The controller replaces a pod only when someone deletes it: no pod is ever "updated" by
        // waiting, so the rollout is as done as it gets once the wanted pods are ready.
        return if ready < want {
            RolloutState::Progressing(format!("{ready} of {want} pods ready"))
        } else {
            RolloutState::Done
        };
    }
    // With a partition, only the pods with an ordinal at or above it are updated; the rest stay
    // on the old revision on purpose, so the revisions never match.
    let partition = strategy.and_then(|u| u.rolling_update.as_ref()).and_then(|r| r.partition).unwrap_or(0);
    let partition = partition.clamp(0, want.max(0));
    let to_update = want - partition;
    if updated < to_update {
        let of = if partition > 0 { format!(" (partition {partition})") } else { String::new() };
        RolloutState::Progressing(format!("{updated} of {to_update} pods updated{of}"))
    } else if ready < want {
        RolloutState::Progressing(format!("{ready} of {want} pods ready"))
    } else if partition == 0 && status.update_revision.is_some() && status.current_revision != status.update_revision {
        RolloutState::Progressing("revision update in progress".into())
    } else {
        RolloutState::Done
    }
}

// ---------------------------------------------------------------------------------------------------
// Diagnostics of pods, read from their status.

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the pod needs explaining: not ready, and not a Job pod that finished.
pub fn needs_diagnosis(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
    phase != "Succeeded" && !is_ready(pod)
}

/// Which log to fetch for a container that is in trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// The running (or just terminated) instance.
    Current,
    /// The instance before the last restart: a crash loop's current one has usually not logged yet.
    Previous,
    /// It never started (image pull, config error): there is no log.
    None,
}

/// A container's trouble and where its log is, or `None` when it is fine.
pub fn container_problem(c: &ContainerStatus) -> Option<(ContainerProblem, LogSource)> {
    let state = c.state.as_ref();
    let waiting = state.and_then(|s| s.waiting.as_ref());
    let terminated = state.and_then(|s| s.terminated.as_ref());
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let (reason, message, source) = if let Some(w) = waiting {
        let reason = w.reason.clone().unwrap_or_else(|| "Waiting".into());
        // A crash loop's reason is the loop; why it crashed is the last termination's reason.
        let reason = match (reason.as_str(), last.and_then(|t| t.reason.as_deref())) {
            ("CrashLoopBackOff", Some(why)) => format!("CrashLoopBackOff ({why})"),
            _ => reason,
        };
        let source = if last.is_some() { LogSource::Previous } else { LogSource::None };
        (reason, w.message.clone(), source)
    } else if let Some(t) = terminated {
        if t.exit_code == 0 {
            return None;
        }
        let reason = t.reason.clone().unwrap_or_else(|| format!("exit code {}", t.exit_code));
        (reason, t.message.clone(), LogSource::Current)
    } else if !c.ready {
        let reason = match last.and_then(|t| t.reason.as_deref()) {
            Some(why) => format!("not ready, restarted after {why}"),
            None => "not ready".to_owned(),
        };
        (reason, None, LogSource::Current)
    } else {
        return None;
    };
    let problem =
        ContainerProblem { container: c.name.clone(), reason, message, restarts: c.restart_count, log_tail: None };
    Some((problem, source))
}

impl Diagnostics {
    /// Plain text for a step error and the report, cut at `max` characters: each pod's containers
    /// with their reasons and the last `lines` log lines, then the Warning events.
    pub fn summary(&self, lines: usize, max: usize) -> String {
        let mut out = String::new();
        for pod in &self.pods {
            out.push_str(&format!("pod {} ({}):\n", pod.pod, pod.phase));
            for c in &pod.containers {
                out.push_str(&format!("  {}: {}", c.container, c.reason));
                if c.restarts > 0 {
                    out.push_str(&format!(", {} restarts", c.restarts));
                }
                if let Some(m) = &c.message {
                    out.push_str(&format!(" ({})", m.trim()));
                }
                out.push('\n');
                if let Some(log) = &c.log_tail {
                    let all: Vec<&str> = log.lines().collect();
                    for line in &all[all.len().saturating_sub(lines)..] {
                        out.push_str(&format!("    | {line}\n"));
                    }
                }
            }
        }
        if !self.events.is_empty() {
            out.push_str("warning events:\n");
            for e in &self.events {
                out.push_str(&format!("  {e}\n"));
            }
        }
        crate::text::cut(&mut out, max, "\n…");
        out
    }
}
