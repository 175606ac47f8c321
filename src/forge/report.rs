//! The sticky comment's body: Markdown rendered from a stand, its newest run and that run's steps.
//!
//! Pure and deterministic (no clock, no environment), so a snapshot test pins the exact text. The
//! first line is the hidden marker by which the comment is found again ([`super::client::marker`]).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::client::marker;
use crate::pipeline::plan;
use crate::store::stands::{RunSummary, StandDetail};

/// GitHub caps comments at 65,536 characters (GitLab notes at 1,000,000): a body stays below this,
/// whatever the diagnostics. Only the diagnostics are ever cut to fit; the status never is.
pub const MAX_BODY_CHARS: usize = 60_000;
/// Diagnostics (pod states, log lines) beyond this are cut in the middle: the head says what failed,
/// the tail holds the last log lines.
const MAX_DIAGNOSTICS_CHARS: usize = 20_000;
const MAX_NOTE_CHARS: usize = 200;
/// Mocks listed by name; more are counted.
const MAX_MOCKS: usize = 20;

/// The headline of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ready,
    Failed,
    Deploying,
    Removing,
    Removed,
}

impl Status {
    pub fn headline(self) -> &'static str {
        match self {
            Status::Ready => "✅ Draft stand ready",
            Status::Failed => "❌ Draft stand failed",
            Status::Deploying => "⏳ Draft stand deploying",
            Status::Removing => "🧹 Draft stand being removed",
            Status::Removed => "🧹 Draft stand removed",
        }
    }

    /// From a run's kind and state and its steps as recorded. The report step runs inside its run
    /// (still `running`), so a run whose planned steps are all done counts as finished.
    pub fn of_run(kind: &str, run_state: &str, steps: &[StepLine]) -> Status {
        let teardown = kind == "teardown";
        let failed = run_state == "failed" || run_state == "rejected" || steps.iter().any(|s| s.state == "failed");
        let done =
            |name: &str| steps.iter().any(|s| s.name == name && (s.state == "succeeded" || s.state == "skipped"));
        let complete = run_state == "succeeded"
            || (run_state == "running" && plan(kind).iter().flat_map(|g| g.iter()).all(|s| done(s.as_str())));
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
    /// A `steps.state`: pending, running, succeeded, failed, skipped, cancelled.
    pub state: String,
    pub duration_ms: Option<i64>,
    /// Why it was skipped, or how it failed (one line).
    pub note: Option<String>,
}

/// Everything a report shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportView {
    pub stand_id: i64,
    pub project: String,
    pub branch: String,
    pub namespace: String,
    /// The stand's address, once it has one.
    pub url: Option<String>,
    pub sha: Option<String>,
    /// The newest commit of the PR, as draftd last heard.
    pub head_sha: Option<String>,
    pub run_number: i32,
    /// `deploy`, `teardown` or `extend`.
    pub kind: String,
    /// A `runs.trigger` (`pushed`, `command`, …) and who asked, for manual runs.
    pub trigger: String,
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
}

impl ReportView {
    /// A view of `detail`'s newest deploy or teardown run (`stands::show` lists runs newest first):
    /// an extend changes the expiry shown, not what the stand is. The `report` step itself is left
    /// out of the table: it is the one rendering. `None` when the stand has no run. `public_url` is
    /// draftd's own address, for links to the stand's pages.
    pub fn from_detail(
        detail: &StandDetail,
        url: Option<String>,
        mocks: Vec<String>,
        public_url: Option<&str>,
    ) -> Option<ReportView> {
        let newest =
            |extend: bool| detail.runs.iter().filter(|r| (r.kind == "extend") == extend).max_by_key(|r| r.number);
        let run: &RunSummary = newest(false).or_else(|| newest(true))?;
        let extended_by = newest(true)
            .filter(|e| e.number > run.number && (e.state == "succeeded" || e.state == "running"))
            .map(|e| e.requested_by.clone().unwrap_or_else(|| e.trigger.clone()));
        let steps: Vec<StepLine> = run
            .steps
            .iter()
            .filter(|s| s.name != "report")
            .map(|s| StepLine {
                name: s.name.clone(),
                state: s.state.clone(),
                duration_ms: match (s.started_at, s.finished_at) {
                    (Some(a), Some(b)) => Some((b - a).num_milliseconds().max(0)),
                    _ => None,
                },
                note: step_note(&s.state, &s.detail, s.error.as_ref()),
            })
            .collect();
        let status = Status::of_run(&run.kind, &run.state, &steps);
        let error = run
            .steps
            .iter()
            .filter(|s| s.state == "failed" && s.name != "rollback")
            .chain(run.steps.iter().filter(|s| s.state == "failed"))
            .find_map(|s| s.error.as_ref().map(|e| format!("{}: {}", s.name, error_text(e))));
        let base = public_url.map(|u| u.trim_end_matches('/')).filter(|u| !u.is_empty());
        let stand_link = base.map(|b| format!("{b}/stands/{}", detail.stand.stand_id));
        Some(ReportView {
            stand_id: detail.stand.stand_id,
            project: detail.stand.project.clone(),
            branch: detail.stand.branch.clone(),
            namespace: detail.stand.namespace.clone(),
            url,
            sha: run.sha.clone().or_else(|| detail.stand.head_sha.clone()),
            head_sha: detail.stand.head_sha.clone(),
            run_number: run.number,
            kind: run.kind.clone(),
            trigger: run.trigger.clone(),
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

fn step_note(state: &str, detail: &serde_json::Value, error: Option<&serde_json::Value>) -> Option<String> {
    match state {
        "skipped" => detail.get("skipped").and_then(|r| r.as_str()).map(str::to_owned),
        // A step that succeeded without doing everything it would (dry-run mode) says so.
        "succeeded" => detail.get("note").and_then(|r| r.as_str()).map(str::to_owned),
        // What a running step waits for (the image step: the tag in the registry, or its build).
        "running" => {
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
        "failed" => error.map(|e| match e.get("label").and_then(|l| l.as_str()) {
            Some(label) => label.to_owned(),
            None => error_text(e),
        }),
        _ => None,
    }
}

impl ReportView {
    /// Smoke ran in this run and passed.
    pub fn smoke_passed(&self) -> bool {
        self.steps.iter().any(|s| s.name == "smoke" && s.state == "succeeded")
    }

    /// The first failed step, for one-line summaries.
    pub fn failed_step(&self) -> Option<&StepLine> {
        self.steps
            .iter()
            .find(|s| s.state == "failed" && s.name != "rollback")
            .or_else(|| self.steps.iter().find(|s| s.state == "failed"))
    }
}

/// How a run came about, for people: `push`, `/draft rerun by @alice`.
pub fn trigger_text(trigger: &str, requested_by: Option<&str>) -> String {
    let what = match trigger {
        "opened" => "PR opened",
        "pushed" => "push",
        "reopened" => "PR reopened",
        "ready_for_review" => "ready for review",
        "opt_in" => "opt-out label removed",
        "closed" => "PR closed",
        "merged" => "PR merged",
        "opt_out" => "opt-out label added",
        "command" => "`/draft` command",
        "check_run" => "Re-run button",
        "api" => "API",
        "cli" => "CLI",
        "dashboard" => "dashboard button",
        "expired" => "expired: no new deploy within its time to live",
        "retry" => "an earlier teardown failed; tried again",
        "resync" => "found by resync (a webhook was missed)",
        other => other,
    };
    match requested_by {
        Some(who) if trigger == "command" || trigger == "check_run" => format!("{what} by @{who}"),
        Some(who) => format!("{what} ({who})"),
        None => what.to_owned(),
    }
}

/// The comment body for `view`: marker, headline, URL, commit, trigger, steps, mocks, expiry with
/// how to extend it, links, and for a failure the diagnostics — at most [`MAX_BODY_CHARS`].
pub fn render(view: &ReportView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", marker(view.stand_id));
    let _ = writeln!(out, "### {}", view.status.headline());
    out.push('\n');
    let live = matches!(view.status, Status::Ready | Status::Failed | Status::Deploying);
    if let Some(at) = view.expires_at.filter(|_| view.expiry_warning && live) {
        let _ = writeln!(
            out,
            "> ⚠️ **This stand will be removed at {}** unless it is extended: comment `/draft extend 24h`, or push a new commit.\n",
            at.format("%Y-%m-%d %H:%M UTC")
        );
    }
    match (&view.url, view.status) {
        (_, Status::Removed) => {}
        (Some(url), _) if is_plain_url(url) => {
            let _ = writeln!(out, "**[{url}]({url})**\n");
        }
        (Some(url), _) => {
            let _ = writeln!(out, "**{}**\n", code(url));
        }
        (None, _) => {}
    }
    let mut facts: Vec<(&str, String)> = vec![
        ("Stand", format!("{} / {} in {}", code(&view.project), code(&view.branch), code(&view.namespace))),
        (
            "Commit",
            match &view.sha {
                Some(sha) => format!("{} (run #{})", code(short_sha(sha)), view.run_number),
                None => format!("run #{}", view.run_number),
            },
        ),
    ];
    // A teardown's trigger is why the stand went.
    let label = if view.kind == "teardown" { "Why" } else { "Trigger" };
    facts.push((label, trigger_text(&view.trigger, view.requested_by.as_deref())));
    if view.status != Status::Removed {
        let mut mocks = if view.mocks.is_empty() {
            "none".to_owned()
        } else {
            view.mocks.iter().take(MAX_MOCKS).map(|m| code(m)).collect::<Vec<_>>().join(", ")
        };
        if view.mocks.len() > MAX_MOCKS {
            let _ = write!(mocks, " and {} more", view.mocks.len() - MAX_MOCKS);
        }
        facts.push(("Mocks", mocks));
        if let Some(at) = view.expires_at {
            let by = match &view.extended_by {
                Some(who) => format!(" (extended by {who})"),
                None => String::new(),
            };
            facts.push((
                "Expires",
                format!("{}{by} · comment `/draft extend 24h` to keep it longer", at.format("%Y-%m-%d %H:%M UTC")),
            ));
        }
    }
    let links: Vec<String> = [("Dashboard", &view.stand_link), ("Logs", &view.run_link)]
        .into_iter()
        .filter_map(|(name, link)| link.as_ref().filter(|l| is_plain_url(l)).map(|l| format!("[{name}]({l})")))
        .collect();
    if !links.is_empty() {
        facts.push(("Links", links.join(" · ")));
    }
    out.push_str("| | |\n| --- | --- |\n");
    for (k, v) in facts {
        let _ = writeln!(out, "| {k} | {} |", cell(&v));
    }
    if !view.steps.is_empty() {
        out.push_str("\n| Step | Outcome | Duration |\n| --- | --- | --- |\n");
        for s in &view.steps {
            let mut outcome = format!("{} {}", step_icon(&s.state), s.state);
            if let Some(note) = &s.note {
                let _ = write!(outcome, ": {}", one_line(note, MAX_NOTE_CHARS));
            }
            let duration = s.duration_ms.map(duration).unwrap_or_else(|| "—".to_owned());
            let _ = writeln!(out, "| {} | {} | {} |", cell(&s.name), cell(&outcome), duration);
        }
    }
    if view.status == Status::Failed {
        const RERUN: &str = "\nComment `/draft rerun` to try again.\n";
        if let Some(error) = &view.error {
            // What is left of the budget after everything else, with room for the fences.
            let room = MAX_BODY_CHARS.saturating_sub(out.chars().count() + RERUN.len() + 64).min(MAX_DIAGNOSTICS_CHARS);
            let text = cut_middle(error.trim(), room);
            let fence = "`".repeat(longest_run(&text, '`').max(2) + 1);
            let _ = write!(out, "\n**Diagnostics**\n\n{fence}text\n{text}\n{fence}\n");
        }
        out.push_str(RERUN);
    }
    out
}

/// `text` in at most `max` characters: its head and its tail, with what was cut in between said.
fn cut_middle(text: &str, max: usize) -> String {
    let total = text.chars().count();
    if total <= max {
        return text.to_owned();
    }
    let note = format!("\n… {} characters cut …\n", total - max);
    let keep = max.saturating_sub(note.chars().count());
    let head: String = text.chars().take(keep / 3).collect();
    let tail: String = text.chars().skip(total - (keep - keep / 3)).collect();
    format!("{head}{note}{tail}")
}

fn step_icon(state: &str) -> &'static str {
    match state {
        "succeeded" => "✅",
        "failed" => "❌",
        "skipped" => "⏭️",
        "running" => "⏳",
        "cancelled" => "⛔",
        _ => "▫️",
    }
}

/// 850 ms, 12.3 s, 2 m 05 s, 1 h 02 m.
fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} m {:02} s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{} h {:02} m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

fn short_sha(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

fn is_plain_url(url: &str) -> bool {
    (url.starts_with("https://") || url.starts_with("http://"))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control() || "<>()[]\"`|".contains(c))
}

/// Inline code that survives any backticks inside.
fn code(text: &str) -> String {
    let text = one_line(text, usize::MAX);
    let fence = "`".repeat(longest_run(&text, '`') + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') { " " } else { "" };
    format!("{fence}{pad}{text}{pad}{fence}")
}

/// A table cell: one line, pipes escaped (GitHub and GitLab split cells on `|` even inside code).
fn cell(text: &str) -> String {
    one_line(text, usize::MAX).replace('|', "\\|")
}

fn one_line(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    cut(&joined, max)
}

fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

fn longest_run(text: &str, c: char) -> usize {
    let (mut best, mut run) = (0, 0);
    for ch in text.chars() {
        run = if ch == c { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn line(name: &str, state: &str, ms: Option<i64>, note: Option<&str>) -> StepLine {
        StepLine { name: name.into(), state: state.into(), duration_ms: ms, note: note.map(Into::into) }
    }

    /// A view with nothing in it but its status.
    fn bare(status: Status) -> ReportView {
        ReportView {
            stand_id: 1,
            project: "p".into(),
            branch: "b".into(),
            namespace: "draft-b".into(),
            url: None,
            sha: None,
            head_sha: None,
            run_number: 1,
            kind: "deploy".into(),
            trigger: "pushed".into(),
            requested_by: None,
            stand_link: None,
            run_link: None,
            status,
            steps: vec![],
            mocks: vec![],
            expires_at: None,
            expiry_warning: false,
            extended_by: None,
            error: None,
        }
    }

    #[test]
    fn status_of_a_running_report_step() {
        let all_done: Vec<StepLine> =
            ["namespace", "database", "secrets", "image", "deploy", "migrate", "verify", "smoke"]
                .iter()
                .map(|n| line(n, "succeeded", Some(1), None))
                .collect();
        assert_eq!(Status::of_run("deploy", "running", &all_done), Status::Ready);
        assert_eq!(Status::of_run("deploy", "running", &all_done[..3]), Status::Deploying);
        let mut failed = all_done.clone();
        failed[4].state = "failed".into();
        assert_eq!(Status::of_run("deploy", "running", &failed), Status::Failed);
        let torn_down: Vec<StepLine> = ["cancel", "deactivate", "revoke", "uninstall", "drop"]
            .iter()
            .map(|n| line(n, if *n == "revoke" { "skipped" } else { "succeeded" }, None, None))
            .collect();
        assert_eq!(Status::of_run("teardown", "running", &torn_down), Status::Removed);
        assert_eq!(Status::of_run("teardown", "running", &torn_down[..4]), Status::Removing);
        assert_eq!(Status::of_run("teardown", "queued", &[]), Status::Removing);
        assert_eq!(Status::of_run("deploy", "queued", &[]), Status::Deploying);
    }

    #[test]
    fn diagnostics_are_cut_in_the_middle_and_the_body_stays_under_the_limit() {
        let mut view = bare(Status::Failed);
        view.steps = vec![line("verify", "failed", Some(1), Some("rollout_timeout"))];
        view.mocks = (0..500).map(|i| format!("mock{i}")).collect();
        let log: String = (0..20_000).map(|i| format!("log line {i}\n")).collect();
        view.error = Some(format!("verify: FIRST LINE\n{log}LAST LINE"));
        let body = render(&view);
        assert!(body.chars().count() <= MAX_BODY_CHARS, "{}", body.len());
        assert!(body.starts_with("<!-- draftd:stand:1 -->\n### ❌ Draft stand failed\n"));
        assert!(body.contains("FIRST LINE") && body.contains("LAST LINE") && body.contains("characters cut"));
        assert!(body.contains("and 480 more"));
        assert!(body.ends_with("Comment `/draft rerun` to try again.\n"));
    }

    #[test]
    fn durations() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(125_000), "2 m 05 s");
        assert_eq!(duration(3_720_000), "1 h 02 m");
    }

    #[test]
    fn hostile_text_stays_in_its_cell() {
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
        assert!(!is_plain_url("https://x.example.com/a)b"));
        assert!(is_plain_url("https://feature-login.draft.example.com"));
        assert_eq!(cut("ééé", 2), "éé…");
    }

    #[test]
    fn expiry_is_shown_in_utc() {
        let mut view = bare(Status::Deploying);
        view.expires_at = Some(Utc.with_ymd_and_hms(2026, 11, 27, 14, 5, 9).unwrap());
        let body = render(&view);
        assert!(body.starts_with("<!-- draftd:stand:1 -->\n### ⏳ Draft stand deploying\n"), "{body}");
        assert!(
            body.contains("| Expires | 2026-11-27 14:05 UTC · comment `/draft extend 24h` to keep it longer |"),
            "{body}"
        );
    }
}
