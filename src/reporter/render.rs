//! The sticky comment's body: Markdown rendered from a [`ReportView`].
//!
//! Pure and deterministic (no clock, no environment), so a snapshot test pins the exact text. The
//! first line is the hidden marker by which the comment is found again ([`marker`]).

use std::fmt::Write as _;

use super::view::{AccessLine, CostLine, ReportView, Status};
use crate::forge::client::marker;
use crate::stand::{StepState, Trigger};

/// GitHub caps comments at 65,536 characters (GitLab notes at 1,000,000): a body stays below this,
/// whatever the diagnostics. Only the diagnostics are ever cut to fit; the status never is.
pub const MAX_BODY_CHARS: usize = 60_000;
/// Diagnostics (pod states, log lines) beyond this are cut in the middle: the head says what failed,
/// the tail holds the last log lines.
const MAX_DIAGNOSTICS_CHARS: usize = 20_000;
const MAX_NOTE_CHARS: usize = 200;
/// Mocks listed by name; more are counted.
const MAX_MOCKS: usize = 20;

/// How a run came about, for people: `push`, `/draft rerun by @alice`.
pub fn trigger_text(trigger: Trigger, requested_by: Option<&str>) -> String {
    let what = match trigger {
        Trigger::Opened => "PR opened",
        Trigger::Pushed => "push",
        Trigger::Reopened => "PR reopened",
        Trigger::ReadyForReview => "ready for review",
        Trigger::OptIn => "opt-out label removed",
        Trigger::Closed => "PR closed",
        Trigger::Merged => "PR merged",
        Trigger::OptOut => "opt-out label added",
        Trigger::Command => "`/draft` command",
        Trigger::CheckRun => "Re-run button",
        Trigger::Api => "API",
        Trigger::Cli => "CLI",
        Trigger::Dashboard => "dashboard button",
        Trigger::Expired => "expired: no new deploy within its time to live",
        Trigger::Retry => "an earlier teardown failed; tried again",
        Trigger::Idle => "no activity for a while",
        Trigger::Visit => "a request to its URL",
        Trigger::Cap => "made room for another stand (max_active)",
        Trigger::Resync => "found by resync (a webhook was missed)",
    };
    match requested_by {
        Some(who) if matches!(trigger, Trigger::Command | Trigger::CheckRun) => format!("{what} by @{who}"),
        Some(who) => format!("{what} ({who})"),
        None => what.to_owned(),
    }
}

/// `≈ 0.42 USD so far · 0.02/h awake · sleeping since 2026-12-07 10:00 UTC`: an estimate from the
/// requests and `[cost]`'s prices, not a bill.
pub fn cost_text(line: &CostLine) -> String {
    let c = &line.cost;
    let mut text = format!("≈ {:.2} {} so far", c.total, c.currency);
    if c.per_hour_awake > 0.0 {
        let _ = write!(text, " · {:.2}/h awake", c.per_hour_awake);
    }
    if let Some(since) = line.sleeping_since {
        let _ = write!(text, " · sleeping since {}", since.format("%Y-%m-%d %H:%M UTC"));
    }
    text
}

/// The comment body for `view`: marker, headline, URL, commit, trigger, steps, mocks, expiry with
/// how to extend it, links, and for a failure the diagnostics — at most [`MAX_BODY_CHARS`].
pub fn render(view: &ReportView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", marker(view.stand_id));
    let _ = writeln!(out, "### {}", view.status.headline());
    out.push('\n');
    let live = matches!(
        view.status,
        Status::Ready
            | Status::Failed
            | Status::Deploying
            | Status::Sleeping
            | Status::FallingAsleep
            | Status::Waking
            | Status::Waiting
            | Status::Degraded
    );
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
    if let Some(reason) = view.waiting.as_deref().filter(|_| view.status == Status::Waiting) {
        let _ = writeln!(
            out,
            "> ⏸️ Past the cap on stands up at once: {reason}. It is built as soon as a place frees (another \
             stand goes to sleep or is removed).\n"
        );
    }
    if let Some(d) = view.degraded.as_ref().filter(|_| view.status == Status::Degraded) {
        let since = d.since.map(|t| format!(" since {}", t.format("%Y-%m-%d %H:%M UTC"))).unwrap_or_default();
        let _ = writeln!(
            out,
            "> ⚠️ Deployed and verified, but not answering{since}: {}. draftd keeps probing it and marks it ready \
             again as soon as it answers; the diagnostics below are from when it stopped.\n",
            one_line(&d.reason, MAX_NOTE_CHARS)
        );
    }
    approval_block(view, &mut out);
    if view.status == Status::AwaitingApproval {
        let _ = write!(
            out,
            "| | |\n| --- | --- |\n| Stand | {} |\n",
            cell(&format!("{} / {} in {}", code(&view.project), code(&view.branch), code(&view.namespace)))
        );
        return out;
    }
    if view.status == Status::Sleeping {
        out.push_str(
            "> 💤 Idle, so its workloads are scaled to zero; its namespace, database and data are kept. Open its URL \
             (the first request wakes it), comment `/draft wake`, or push a commit to wake it.\n\n",
        );
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
    let label = if view.kind.tears_down() { "Why" } else { "Trigger" };
    facts.push((label, trigger_text(view.trigger, view.requested_by.as_deref())));
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
        if let Some(access) = &view.access {
            facts.push(("Access", access_text(access)));
        }
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
    if let Some(line) = &view.cost {
        facts.push(("Cost", cost_text(line)));
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
            let mut outcome = format!("{} {}", step_icon(s.state), s.state);
            if let Some(note) = &s.note {
                let _ = write!(outcome, ": {}", one_line(note, MAX_NOTE_CHARS));
            }
            let duration = s.duration_ms.map(duration).unwrap_or_else(|| "—".to_owned());
            let _ = writeln!(out, "| {} | {} | {} |", cell(&s.name), cell(&outcome), duration);
        }
    }
    if matches!(view.status, Status::Failed | Status::Degraded) {
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

/// Who may open the URL, and how a person gets in.
fn access_text(access: &AccessLine) -> String {
    match access {
        AccessLine::Public => "public: anyone with the URL".to_owned(),
        AccessLine::Forge { forge, repo } => {
            let name = forge.name();
            format!(
                "🔒 people who can read {} on {name} (sign in with {name}); programs send the stand's access token in `X-Draftd-Access`",
                code(repo)
            )
        }
    }
}

/// What a fork's commit waiting for approval needs: who may approve it, and how.
fn approval_block(view: &ReportView, out: &mut String) {
    let Some(waiting) = view.awaiting_approval.as_deref() else { return };
    if matches!(view.status, Status::Removing | Status::Removed) {
        return;
    }
    let short = short_sha(waiting);
    let _ = writeln!(
        out,
        "> 🔒 Commit {} comes from a fork: nothing of it runs until a maintainer (someone with write access to \
         the repository) reviews it. A maintainer can approve commit {} with `/draft approve` (or \
         `/draft approve {short}`, which approves nothing else should a push come first). Its stand gets its \
         own database and mock integrations only, never the team's secrets; every new push needs a new approval.",
        code(short),
        code(short),
    );
    match view.sha.as_deref() {
        Some(running) if view.status != Status::AwaitingApproval && running != waiting => {
            let _ = writeln!(
                out,
                ">\n> Until then the stand keeps running commit {}, approved before.",
                code(short_sha(running))
            );
        }
        _ => {}
    }
    out.push('\n');
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

fn step_icon(state: StepState) -> &'static str {
    match state {
        StepState::Succeeded => "✅",
        StepState::Failed => "❌",
        StepState::Skipped => "⏭️",
        StepState::Running => "⏳",
        StepState::Cancelled => "⛔",
        StepState::Pending => "▫️",
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
    use crate::reporter::view::StepLine;
    use crate::stand::RunKind;
    use chrono::{TimeZone, Utc};

    fn line(name: &str, state: StepState, ms: Option<i64>, note: Option<&str>) -> StepLine {
        StepLine { name: name.into(), state, duration_ms: ms, note: note.map(Into::into) }
    }

    /// A view with nothing in it but its status.
    fn bare(status: Status) -> ReportView {
        ReportView {
            stand_id: crate::stand::StandId::new(1),
            project: "p".into(),
            branch: "b".into(),
            namespace: "draft-b".into(),
            url: None,
            sha: None,
            head_sha: None,
            run_number: 1,
            kind: RunKind::Deploy,
            trigger: Trigger::Pushed,
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
            cost: None,
            waiting: None,
            access: None,
            degraded: None,
            awaiting_approval: None,
        }
    }

    #[test]
    fn a_fork_commit_waiting_for_approval_says_who_may_approve_it_and_how() {
        let waiting = "abc1234".to_owned() + &"0".repeat(33);
        let first = ReportView {
            sha: Some(waiting.clone()),
            awaiting_approval: Some(waiting.clone()),
            ..bare(Status::AwaitingApproval)
        };
        let body = render(&first);
        assert!(body.starts_with("<!-- draftd:stand:1 -->\n### 🔒 Draft stand waiting for approval"), "{body}");
        assert!(body.contains("A maintainer can approve commit `abc1234` with `/draft approve`"), "{body}");
        assert!(body.contains("`/draft approve abc1234`"), "{body}");
        assert!(!body.contains("run #"), "nothing ran: {body}");
        assert!(!body.contains("keeps running"), "{body}");

        let running = ReportView {
            sha: Some("def5678".to_owned() + &"0".repeat(33)),
            awaiting_approval: Some(waiting),
            ..bare(Status::Ready)
        };
        let body = render(&running);
        assert!(body.contains("### ✅ Draft stand ready"), "{body}");
        assert!(body.contains("approve commit `abc1234`"), "{body}");
        assert!(body.contains("keeps running commit `def5678`"), "{body}");
    }

    #[test]
    fn diagnostics_are_cut_in_the_middle_and_the_body_stays_under_the_limit() {
        let mut view = bare(Status::Failed);
        view.steps = vec![line("verify", StepState::Failed, Some(1), Some("rollout_timeout"))];
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
    fn a_degraded_stand_says_since_when_how_its_probe_failed_and_its_pods() {
        let mut view = bare(Status::Degraded);
        view.url = Some("https://draft-b.example.com".into());
        view.degraded = Some(crate::reporter::Degraded {
            since: Some(Utc.with_ymd_and_hms(2026, 12, 8, 9, 30, 0).unwrap()),
            reason: "probe of https://draft-b.example.com/health/ready answered 500".into(),
        });
        view.error = Some("probe of … answered 500\npod app-1 (Running):\n  app: not ready".into());
        let body = render(&view);
        assert!(body.starts_with("<!-- draftd:stand:1 -->\n### ⚠️ Draft stand degraded\n"), "{body}");
        assert!(body.contains("not answering since 2026-12-08 09:30 UTC: probe of https://draft-b.example.com/health/ready answered 500"), "{body}");
        assert!(body.contains("**Diagnostics**") && body.contains("app: not ready"), "{body}");
        assert!(
            body.contains("**[https://draft-b.example.com](https://draft-b.example.com)**"),
            "the URL stays: {body}"
        );
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

    #[test]
    fn the_cost_row_says_the_estimate_the_hourly_price_and_since_when_it_sleeps() {
        let cost = |per_hour_awake| crate::stand::Cost {
            total: 0.4249,
            per_hour_awake,
            awake_hours: 9.0,
            currency: "EUR".into(),
        };
        let awake = CostLine { cost: cost(0.0213), sleeping_since: None };
        assert_eq!(cost_text(&awake), "≈ 0.42 EUR so far · 0.02/h awake");
        let since = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let asleep = CostLine { cost: cost(0.0), sleeping_since: Some(since) };
        assert_eq!(cost_text(&asleep), "≈ 0.42 EUR so far · sleeping since 2027-01-15 08:00 UTC");
    }
}
