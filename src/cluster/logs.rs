//! The last lines of each container of a stand's pods, for the stand page: what to read for a
//! container given its status, how much, and the text made fit for a page.
//!
//! Logs are the app's own output and may hold anything it printed, secrets included: they are read
//! on request, shown to whoever may see the dashboard, and never cached nor written to draftd's
//! own logs.

use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde::Serialize;

use super::{Cluster, ClusterError};

/// How much of each container's log one read returns: the API server's `tailLines` and
/// `limitBytes` of the pods/log subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    pub lines: u32,
    pub bytes: u32,
}

impl LogBounds {
    /// What the stand page asks for unless told otherwise: a screenful or two per container.
    pub const DEFAULT: LogBounds = LogBounds { lines: 100, bytes: 64 * 1024 };
    /// The most lines a page may ask for per container.
    pub const MAX_LINES: u32 = 1000;
    /// 256 KiB: a thousand long lines, still a page a browser shows at once.
    pub const MAX_BYTES: u32 = 256 * 1024;

    /// `lines` (clamped to 1..=[`Self::MAX_LINES`]); up to the default's lines its bytes, beyond
    /// them [`Self::MAX_BYTES`].
    pub fn lines(lines: u32) -> LogBounds {
        let lines = lines.clamp(1, Self::MAX_LINES);
        let bytes = if lines <= Self::DEFAULT.lines { Self::DEFAULT.bytes } else { Self::MAX_BYTES };
        LogBounds { lines, bytes }
    }
}

/// Pods beyond this many are listed by name only: a namespace of hundreds of Job pods would make
/// one page load hundreds of reads.
pub const MAX_PODS: usize = 30;

/// One pod of the namespace with its containers' logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodLog {
    pub pod: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: String,
    pub containers: Vec<ContainerLog>,
}

/// One container's log, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerLog {
    pub container: String,
    /// An init container (they run, and log, before the others start).
    pub init: bool,
    pub log: LogText,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogText {
    /// The last lines, oldest first. `previous`: of the instance before the last restart, because
    /// the current one has not started (a crash loop). `cut`: the lines asked for were more than the
    /// byte bound, so the newest of them are missing.
    Lines { text: String, previous: bool, cut: bool },
    /// The container ran but has written nothing yet.
    Empty,
    /// The container has not started, and no earlier instance ran: `reason` says why
    /// (`ContainerCreating`, `ImagePullBackOff`, the pod not scheduled yet…).
    NotStarted { reason: String },
    /// The API server (or the node behind it) would not give the log; its message.
    Unreadable { message: String },
}

/// Which log of a container there is to read, from its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSource {
    Current,
    /// The instance before the last restart.
    Previous,
    /// Nothing has run: why.
    None(String),
}

/// What to read for container `name`, given the pod's statuses (`None` before the kubelet has
/// reported any, e.g. the pod is not scheduled yet).
pub fn source(status: Option<&ContainerStatus>, pod_phase: &str) -> LogSource {
    let Some(status) = status else {
        let why = if pod_phase == "Pending" { "the pod is not running yet" } else { "no status reported yet" };
        return LogSource::None(why.to_owned());
    };
    let state = status.state.as_ref();
    if state.is_some_and(|s| s.running.is_some() || s.terminated.is_some()) {
        return LogSource::Current;
    }
    if status.last_state.as_ref().is_some_and(|s| s.terminated.is_some()) {
        return LogSource::Previous;
    }
    let reason = state.and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.clone());
    LogSource::None(reason.unwrap_or_else(|| "waiting to start".to_owned()))
}

/// The pod's containers, init containers first, each with the status the kubelet reported for it.
pub(crate) fn containers(pod: &Pod) -> Vec<(String, bool, Option<&ContainerStatus>)> {
    let status = pod.status.as_ref();
    fn find<'p>(list: Option<&'p Vec<ContainerStatus>>, name: &str) -> Option<&'p ContainerStatus> {
        list.and_then(|l| l.iter().find(|c| c.name == name))
    }
    let spec = pod.spec.as_ref();
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| (c.name.clone(), true, find(status.and_then(|s| s.init_container_statuses.as_ref()), &c.name)));
    let main = spec
        .map(|s| s.containers.iter())
        .into_iter()
        .flatten()
        .map(|c| (c.name.clone(), false, find(status.and_then(|s| s.container_statuses.as_ref()), &c.name)));
    init.chain(main).collect()
}

/// A read's bytes as page text: invalid UTF-8 (a read cut mid-character, binary output) replaced,
/// terminal colour and cursor sequences removed, other control characters but tab shown as `�`.
/// When the read filled `limit`, the partial last line goes and `cut` is set.
pub fn text_of(bytes: &[u8], limit: usize, previous: bool) -> LogText {
    if bytes.is_empty() {
        return LogText::Empty;
    }
    let cut = bytes.len() >= limit;
    let kept = match (cut, bytes.iter().rposition(|b| *b == b'\n')) {
        (true, Some(end)) => &bytes[..=end],
        _ => bytes,
    };
    LogText::Lines { text: clean(&String::from_utf8_lossy(kept)), previous, cut }
}

fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // CSI (`ESC [ … final`): colours, cursor moves; the final byte is in @..~.
            '\u{1b}' if chars.peek() == Some(&'[') => {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            '\n' | '\t' => out.push(c),
            '\r' => {}
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// What a [`LogReader`] answers.
pub type LogsFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<PodLog>, ClusterError>> + Send + 'a>>;

/// [`Cluster::pod_logs`] without the cluster's type, so the HTTP state can hold any of them (and
/// the dry-run stand-in, which is no cluster).
pub trait LogReader: Send + Sync + 'static {
    fn pod_logs<'a>(&'a self, namespace: &'a str, bounds: LogBounds) -> LogsFuture<'a>;
}

impl<C: Cluster> LogReader for C {
    fn pod_logs<'a>(&'a self, namespace: &'a str, bounds: LogBounds) -> LogsFuture<'a> {
        Box::pin(Cluster::pod_logs(self, namespace, bounds))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    };

    use super::*;

    fn status(state: ContainerState, last: Option<ContainerState>) -> ContainerStatus {
        ContainerStatus { name: "app".into(), state: Some(state), last_state: last, ..ContainerStatus::default() }
    }

    fn waiting(reason: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message: None }),
            ..ContainerState::default()
        }
    }

    fn terminated() -> ContainerState {
        ContainerState { terminated: Some(ContainerStateTerminated::default()), ..ContainerState::default() }
    }

    #[test]
    fn a_running_or_finished_container_has_a_current_log() {
        let running = ContainerState { running: Some(ContainerStateRunning::default()), ..ContainerState::default() };
        assert_eq!(source(Some(&status(running, None)), "Running"), LogSource::Current);
        assert_eq!(source(Some(&status(terminated(), None)), "Succeeded"), LogSource::Current);
    }

    #[test]
    fn a_crash_loop_shows_the_instance_before_the_restart() {
        let s = status(waiting("CrashLoopBackOff"), Some(terminated()));
        assert_eq!(source(Some(&s), "Running"), LogSource::Previous);
    }

    #[test]
    fn a_container_that_never_ran_says_why() {
        let s = status(waiting("ImagePullBackOff"), None);
        assert_eq!(source(Some(&s), "Pending"), LogSource::None("ImagePullBackOff".into()));
        assert_eq!(source(None, "Pending"), LogSource::None("the pod is not running yet".into()));
    }

    #[test]
    fn text_loses_terminal_codes_and_control_characters_but_keeps_lines() {
        let LogText::Lines { text, cut, .. } = text_of(b"\x1b[31mred\x1b[0m\tok\r\nbell\x07\n", 1000, false) else {
            panic!()
        };
        assert_eq!(text, "red\tok\nbell\u{fffd}\n");
        assert!(!cut);
        assert_eq!(text_of(b"", 10, false), LogText::Empty);
    }

    #[test]
    fn a_read_that_filled_its_bound_drops_its_partial_line_and_says_so() {
        let LogText::Lines { text, cut, .. } = text_of(b"one\ntwo\nthr", 11, false) else { panic!() };
        assert_eq!((text.as_str(), cut), ("one\ntwo\n", true));
        // Cut inside a character: replaced, not an error.
        let LogText::Lines { text, .. } = text_of("é".as_bytes().get(..1).unwrap(), 100, false) else { panic!() };
        assert_eq!(text, "\u{fffd}");
    }

    #[test]
    fn bounds_follow_the_lines_asked_for_within_limits() {
        assert_eq!(LogBounds::lines(0).lines, 1);
        assert_eq!(LogBounds::lines(100), LogBounds::DEFAULT);
        assert_eq!(LogBounds::lines(20).bytes, LogBounds::DEFAULT.bytes);
        assert_eq!(LogBounds::lines(101).bytes, LogBounds::MAX_BYTES);
        assert_eq!(LogBounds::lines(5000), LogBounds { lines: 1000, bytes: LogBounds::MAX_BYTES });
    }
}
