//! What a report shows: a [`ReportView`] of a stand's newest run, built from the store's rows, and
//! the run's [`Status`]. Pure and deterministic (no clock, no environment); [`super::render()`] turns a
//! view into the comment's Markdown.

use chrono::{DateTime, Utc};

use crate::stand::{Health, RunKind, RunState, StandId, StandState, StepName, StepState, Trigger};
use crate::store::stands::StandDetail;

/// The headline of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ready,
    Failed,
    Deploying,
    Removing,
    Removed,
    /// A sleep is under way.
    FallingAsleep,
    /// Scaled to zero; a request to its URL, `/draft wake` or a push wakes it.
    Sleeping,
    /// A wake is under way.
    Waking,
    /// Past `max_active`: its deploy or wake waits for a place.
    Waiting,
    /// Deployed and verified, but the health watch found it not answering since (`[watch]`).
    Degraded,
    /// A fork's first commit waits for a maintainer's approval: nothing was run yet.
    AwaitingApproval,
}

impl Status {
    pub fn headline(self) -> &'static str {
        match self {
            Status::Ready => "✅ Draft stand ready",
            Status::Failed => "❌ Draft stand failed",
            Status::Deploying => "⏳ Draft stand deploying",
            Status::Removing => "🧹 Draft stand being removed",
            Status::Removed => "🧹 Draft stand removed",
            Status::FallingAsleep => "💤 Draft stand going to sleep",
            Status::Sleeping => "💤 Draft stand sleeping",
            Status::Waking => "⏰ Draft stand waking up",
            Status::Waiting => "⏸️ Draft stand waiting for a place",
            Status::Degraded => "⚠️ Draft stand degraded",
            Status::AwaitingApproval => "🔒 Draft stand waiting for approval",
        }
    }

    /// From a run's kind and state and its steps as recorded. The report step runs inside its run
    /// (still `running`), so a run whose planned steps are all done counts as finished.
    pub fn of_run(kind: RunKind, run_state: RunState, steps: &[StepLine]) -> Status {
        let teardown = kind.tears_down();
        let failed = run_state.is_failure() || steps.iter().any(|s| s.state == StepState::Failed);
        let done = |name: &str| steps.iter().any(|s| s.name == name && s.state.is_done());
        let complete = run_state == RunState::Succeeded
            || (run_state == RunState::Running && kind.plan().iter().flat_map(|g| g.iter()).all(|s| done(s.as_str())));
        match (kind, failed, complete) {
            (RunKind::Sleep, false, true) => return Status::Sleeping,
            (RunKind::Sleep, false, false) => return Status::FallingAsleep,
            (RunKind::Wake, false, false) => return Status::Waking,
            _ => {}
        }
        match (failed, complete, teardown) {
            (true, _, _) => Status::Failed,
            (false, true, true) => Status::Removed,
            (false, true, false) => Status::Ready,
            (false, false, true) => Status::Removing,
            (false, false, false) => Status::Deploying,
        }
    }
}

/// One row of the steps table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepLine {
    pub name: String,
    pub state: StepState,
    pub duration_ms: Option<i64>,
    /// Why it was skipped, or how it failed (one line).
    pub note: Option<String>,
}

/// What the stand has cost, for the comment's Cost row.
#[derive(Debug, Clone, PartialEq)]
pub struct CostLine {
    pub cost: crate::stand::Cost,
    /// Asleep since then (its last awake stretch ended).
    pub sleeping_since: Option<DateTime<Utc>>,
}

/// Everything a report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportView {
    pub stand_id: StandId,
    pub project: String,
    pub branch: String,
    pub namespace: String,
    /// The stand's address, once it has one.
    pub url: Option<String>,
    pub sha: Option<String>,
    /// The newest commit of the PR, as draftd last heard.
    pub head_sha: Option<String>,
    pub run_number: i32,
    pub kind: RunKind,
    /// Why the run was queued, and who asked, for manual runs.
    pub trigger: Trigger,
    pub requested_by: Option<String>,
    /// The stand's and the run's pages on draftd's dashboard (`public_url`).
    pub stand_link: Option<String>,
    pub run_link: Option<String>,
    pub status: Status,
    pub steps: Vec<StepLine>,
    /// Integrations replaced by mocks in this stand.
    pub mocks: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The stand expires soon (`[reaper] warn_before`): the comment says so at the top.
    pub expiry_warning: bool,
    /// Who moved the expiry last, when an extend came after the run shown.
    pub extended_by: Option<String>,
    /// The failure, in full (cut to a few thousand characters when rendered).
    pub error: Option<String>,
    /// What it has cost so far, once it was awake in kubernetes mode.
    pub cost: Option<CostLine>,
    /// Why its deploy or wake waits for a place (`max_active`), while it does.
    pub waiting: Option<String>,
    /// Who may open its URL; `None` when it has none.
    pub access: Option<AccessLine>,
    /// While the health watch finds it not answering: since when and how (its diagnostics are in
    /// `error`).
    pub degraded: Option<Degraded>,
    /// A fork's commit waiting for a maintainer's approval (`forks = "approve"`), while one does.
    pub awaiting_approval: Option<String>,
}

/// Who may open a stand's URL, as the comment says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLine {
    /// Anyone who has the URL.
    Public,
    /// People who can read `repo` on `forge`, signed in there.
    Forge { forge: crate::config::ForgeKind, repo: String },
}

/// How a ready stand stopped answering, as the health watch found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    pub since: Option<DateTime<Utc>>,
    /// The probe's outcome, one line.
    pub reason: String,
}

impl Degraded {
    /// The stand's health watch finding, when `status` (its newest run's) is `Ready` and the stand is
    /// awake and degraded; with the full text for the diagnostics.
    fn of(stand: &crate::store::stands::StandSummary, status: Status) -> Option<(Degraded, String)> {
        if status != Status::Ready || stand.state != StandState::Active || stand.health != Health::Degraded {
            return None;
        }
        let reason = stand.health_reason.clone().unwrap_or_else(|| "its probe failed".to_owned());
        let text = match &stand.health_diagnostics {
            Some(d) if !d.trim().is_empty() => format!("{reason}\n{d}"),
            _ => reason.clone(),
        };
        Some((Degraded { since: stand.health_since, reason }, text))
    }
}

impl ReportView {
    /// A view of `detail`'s newest deploy or teardown run (`stands::show` lists runs newest first):
    /// an extend changes the expiry shown, not what the stand is. The `report` step itself is left
    /// out of the table: it is the one rendering. `None` when the stand has no run and no commit
    /// waiting for approval. `public_url` is draftd's own address, for links to the stand's pages.
    pub fn from_detail(
        detail: &StandDetail,
        url: Option<String>,
        mocks: Vec<String>,
        public_url: Option<&str>,
    ) -> Option<ReportView> {
        let newest = |extend: bool| {
            detail.runs.iter().filter(|r| (r.kind == RunKind::Extend) == extend).max_by_key(|r| r.number)
        };
        let base = public_url.map(|u| u.trim_end_matches('/')).filter(|u| !u.is_empty());
        let stand_link = base.map(|b| format!("{b}/stands/{}", detail.stand.stand_id));
        let Some(run) = newest(false).or_else(|| newest(true)) else {
            return Self::awaiting_approval(detail, stand_link);
        };
        let extended_by = newest(true)
            .filter(|e| e.number > run.number && matches!(e.state, RunState::Succeeded | RunState::Running))
            .map(|e| e.requested_by.clone().unwrap_or_else(|| e.trigger.as_str().to_owned()));
        let steps: Vec<StepLine> = run
            .steps
            .iter()
            .filter(|s| s.name != "report")
            .map(|s| StepLine {
                name: s.name.clone(),
                state: s.state,
                duration_ms: match (s.started_at, s.finished_at) {
                    (Some(a), Some(b)) => Some((b - a).num_milliseconds().max(0)),
                    _ => None,
                },
                note: step_note(s.state, &s.detail, s.error.as_ref()),
            })
            .collect();
        // A run put back in the queue for a place says so, not that it deploys.
        let waiting =
            detail.stand.waiting_reason.clone().filter(|_| run.kind.needs_place() && run.state == RunState::Queued);
        let status = if waiting.is_some() { Status::Waiting } else { Status::of_run(run.kind, run.state, &steps) };
        let degraded = Degraded::of(&detail.stand, status);
        let status = if degraded.is_some() { Status::Degraded } else { status };
        let error = run
            .steps
            .iter()
            .filter(|s| s.state == StepState::Failed && s.name != "rollback")
            .chain(run.steps.iter().filter(|s| s.state == StepState::Failed))
            .find_map(|s| s.error.as_ref().map(|e| format!("{}: {}", s.name, error_text(e))))
            .or_else(|| degraded.as_ref().map(|(_, text)| text.clone()));
        Some(ReportView {
            stand_id: detail.stand.stand_id,
            project: detail.stand.project.clone(),
            branch: detail.stand.branch.clone(),
            namespace: detail.stand.namespace.clone(),
            url,
            sha: run.sha.clone().or_else(|| detail.stand.head_sha.clone()),
            head_sha: detail.stand.head_sha.clone(),
            run_number: run.number,
            kind: run.kind,
            trigger: run.trigger,
            requested_by: run.requested_by.clone(),
            run_link: stand_link.as_ref().map(|l| format!("{l}/runs/{}", run.number)),
            stand_link,
            status,
            steps,
            mocks,
            expires_at: detail.stand.expires_at,
            expiry_warning: false,
            extended_by,
            error,
            cost: None,
            waiting,
            access: None,
            degraded: degraded.map(|(d, _)| d),
            awaiting_approval: detail.stand.awaiting_approval.clone(),
        })
    }

    /// A fork's stand that never ran: its first commit waits for approval.
    fn awaiting_approval(detail: &StandDetail, stand_link: Option<String>) -> Option<ReportView> {
        let sha = detail.stand.awaiting_approval.clone()?;
        Some(ReportView {
            stand_id: detail.stand.stand_id,
            project: detail.stand.project.clone(),
            branch: detail.stand.branch.clone(),
            namespace: detail.stand.namespace.clone(),
            url: None,
            sha: Some(sha.clone()),
            head_sha: detail.stand.head_sha.clone(),
            run_number: 0,
            kind: RunKind::Deploy,
            trigger: Trigger::Opened,
            requested_by: None,
            stand_link,
            run_link: None,
            status: Status::AwaitingApproval,
            steps: Vec::new(),
            mocks: Vec::new(),
            expires_at: None,
            expiry_warning: false,
            extended_by: None,
            error: None,
            cost: None,
            waiting: None,
            access: None,
            degraded: None,
            awaiting_approval: Some(sha),
        })
    }
}

/// A `StepError` is recorded as `{kind, label, message}`; anything else is shown as JSON.
fn error_text(e: &serde_json::Value) -> String {
    match e.get("message").and_then(|m| m.as_str()) {
        Some(m) => m.to_owned(),
        None => e.as_str().map(str::to_owned).unwrap_or_else(|| e.to_string()),
    }
}

fn step_note(state: StepState, detail: &serde_json::Value, error: Option<&serde_json::Value>) -> Option<String> {
    match state {
        StepState::Skipped => detail.get("skipped").and_then(|r| r.as_str()).map(str::to_owned),
        // A step that succeeded without doing everything it would (dry-run mode) says so.
        StepState::Succeeded => detail.get("note").and_then(|r| r.as_str()).map(str::to_owned),
        // What a running step waits for (the image step: the tag in the registry, or its build).
        StepState::Running => {
            let text = |key: &str| detail.get(key).and_then(|v| v.as_str());
            match (text("waiting_for"), text("building")) {
                (Some(image), _) => Some(match detail.get("wait_seconds").and_then(|w| w.as_u64()) {
                    Some(secs) => format!(
                        "waiting for image {image} (up to {})",
                        humantime::format_duration(std::time::Duration::from_secs(secs))
                    ),
                    None => format!("waiting for image {image}"),
                }),
                (None, Some(image)) => Some(format!("building image {image} in the cluster")),
                _ => None,
            }
        }
        StepState::Failed => error.map(|e| match e.get("label").and_then(|l| l.as_str()) {
            Some(label) => label.to_owned(),
            None => error_text(e),
        }),
        StepState::Pending | StepState::Cancelled => None,
    }
}

impl ReportView {
    /// Smoke ran in this run and passed.
    pub fn smoke_passed(&self) -> bool {
        self.steps.iter().any(|s| s.name == StepName::Smoke.as_str() && s.state == StepState::Succeeded)
    }

    /// The first failed step, for one-line summaries.
    pub fn failed_step(&self) -> Option<&StepLine> {
        self.steps
            .iter()
            .find(|s| s.state == StepState::Failed && s.name != "rollback")
            .or_else(|| self.steps.iter().find(|s| s.state == StepState::Failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, state: StepState, ms: Option<i64>, note: Option<&str>) -> StepLine {
        StepLine { name: name.into(), state, duration_ms: ms, note: note.map(Into::into) }
    }

    #[test]
    fn status_of_a_running_report_step() {
        let all_done: Vec<StepLine> =
            ["namespace", "database", "secrets", "image", "deploy", "migrate", "verify", "smoke"]
                .iter()
                .map(|n| line(n, StepState::Succeeded, Some(1), None))
                .collect();
        assert_eq!(Status::of_run(RunKind::Deploy, RunState::Running, &all_done), Status::Ready);
        assert_eq!(Status::of_run(RunKind::Deploy, RunState::Running, &all_done[..3]), Status::Deploying);
        let mut failed = all_done.clone();
        failed[4].state = StepState::Failed;
        assert_eq!(Status::of_run(RunKind::Deploy, RunState::Running, &failed), Status::Failed);
        let torn_down: Vec<StepLine> = ["cancel", "deactivate", "revoke", "uninstall", "drop"]
            .iter()
            .map(|n| line(n, if *n == "revoke" { StepState::Skipped } else { StepState::Succeeded }, None, None))
            .collect();
        assert_eq!(Status::of_run(RunKind::Teardown, RunState::Running, &torn_down), Status::Removed);
        assert_eq!(Status::of_run(RunKind::Teardown, RunState::Running, &torn_down[..4]), Status::Removing);
        assert_eq!(Status::of_run(RunKind::Teardown, RunState::Queued, &[]), Status::Removing);
        assert_eq!(Status::of_run(RunKind::Deploy, RunState::Queued, &[]), Status::Deploying);
    }
}
