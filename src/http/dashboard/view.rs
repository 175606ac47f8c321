//! What the pages show: the templates, and the stand and run records turned into display values.
//!
//! Everything is formatted here, in Rust, so the templates only place text; minijinja escapes every
//! value for HTML, whatever a branch name or a log line contains.

use std::sync::LazyLock;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::Value;

use crate::reporter::{Status, StepLine};
use crate::stand::{Health, RunId, RunKind, RunState, StandId, StandState, StepState, Trigger};
use crate::store::stands::{RunSummary, StandDetail, StandSummary, StepSummary};

/// Diagnostics beyond this are cut: the kube runner bounds them already; this guards the page.
const MAX_PRE_BYTES: usize = 64 * 1024;

const TEMPLATES: [(&str, &str); 8] = [
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("login.html", include_str!("templates/login.html")),
    ("stands.html", include_str!("templates/stands.html")),
    ("stand.html", include_str!("templates/stand.html")),
    ("run.html", include_str!("templates/run.html")),
    ("logs.html", include_str!("templates/logs.html")),
    ("error.html", include_str!("templates/error.html")),
];

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    // A misspelt variable fails the render (and the tests) instead of printing nothing.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    for (name, source) in TEMPLATES {
        env.add_template(name, source).unwrap_or_else(|e| panic!("dashboard template {name}: {e}"));
    }
    env
});

/// Renders template `name` with `context` as a page with `status`.
pub fn render(status: StatusCode, name: &str, context: impl Serialize) -> Response {
    match ENV.get_template(name).and_then(|t| t.render(context)) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %e, "dashboard page could not be rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, Html(FALLBACK_ERROR)).into_response()
        }
    }
}

/// The body of an error page; a fixed page if even that cannot be rendered.
pub fn error_html(status: StatusCode, code: &str, message: &str) -> String {
    let context = minijinja::context! {
        current => "",
        csrf => Option::<String>::None,
        status => status.as_u16(),
        reason => status.canonical_reason().unwrap_or("Error"),
        code,
        message,
        login => status == StatusCode::UNAUTHORIZED,
    };
    ENV.get_template("error.html").and_then(|t| t.render(context)).unwrap_or_else(|e| {
        tracing::error!(error = %e, "dashboard error page could not be rendered");
        FALLBACK_ERROR.to_owned()
    })
}

const FALLBACK_ERROR: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error · draftd</title>\
    </head><body><main><h1>Error</h1><p>The page could not be shown. <a href=\"/stands\">Stands</a></p></main></body></html>";

/// A point in time: machine-readable for `<time datetime>`, and for people.
#[derive(Debug, Clone, Serialize)]
pub struct When {
    pub iso: String,
    pub text: String,
}

impl When {
    pub fn of(at: DateTime<Utc>) -> When {
        When { iso: at.to_rfc3339_opts(SecondsFormat::Secs, true), text: at.format("%Y-%m-%d %H:%M UTC").to_string() }
    }
}

/// An expiry with how long is left.
#[derive(Debug, Clone, Serialize)]
pub struct Expiry {
    pub at: When,
    /// `in 47h 12m`, or `expired`.
    pub countdown: String,
}

impl Expiry {
    pub fn of(at: DateTime<Utc>, now: DateTime<Utc>) -> Expiry {
        Expiry { at: When::of(at), countdown: countdown(at, now) }
    }
}

pub fn countdown(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let left = (at - now).num_seconds();
    if left <= 0 {
        return "expired".to_owned();
    }
    let (hours, minutes) = (left / 3600, (left % 3600) / 60);
    match (hours, minutes) {
        (0, 0) => "in under a minute".to_owned(),
        (0, m) => format!("in {m}m"),
        (h, m) => format!("in {h}h {m}m"),
    }
}

/// 850 ms, 12.3 s, 2 m 05 s, 1 h 02 m: as the sticky comment writes them.
pub fn duration(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Option<String> {
    let ms = (to? - from?).num_milliseconds().max(0);
    Some(if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} m {:02} s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{} h {:02} m", ms / 3_600_000, (ms / 60_000) % 60)
    })
}

/// One row of the stand list.
#[derive(Debug, Clone, Serialize)]
pub struct StandRow {
    pub id: StandId,
    pub project: String,
    pub branch: String,
    pub state: StandState,
    pub reason: Option<String>,
    pub url: Option<String>,
    /// Only an active stand's URL is a link; a removed one points nowhere.
    pub live: bool,
    pub expires: Option<Expiry>,
    /// `#3 deploy: succeeded`.
    pub last_run: Option<String>,
    /// Awake, but the health watch found it not answering: shown beside its state.
    pub degraded: bool,
}

impl StandRow {
    pub fn of(s: &StandSummary, url: Option<String>, now: DateTime<Utc>) -> StandRow {
        let last_run = s.last_run.map(|n| {
            format!(
                "#{n} {}: {}",
                s.last_run_kind.map_or("run", RunKind::as_str),
                s.last_run_state.map_or("unknown", RunState::as_str)
            )
        });
        StandRow {
            id: s.stand_id,
            project: s.project.clone(),
            branch: s.branch.clone(),
            state: s.state,
            reason: s.state_reason.clone(),
            live: s.state == StandState::Active && url.is_some(),
            url,
            expires: s.expires_at.map(|at| Expiry::of(at, now)),
            last_run,
            degraded: s.state == StandState::Active && s.health == Health::Degraded,
        }
    }
}

/// A stand's page: its summary and its runs, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct StandView {
    #[serde(flatten)]
    pub row: StandRow,
    pub namespace: String,
    pub pr_number: Option<i64>,
    pub head_sha: Option<String>,
    pub created: When,
    pub updated: When,
    /// As the sticky comment's headline says it, from the newest deploy or teardown.
    pub status: Option<&'static str>,
    /// Deploys, extends and teardowns are only accepted while it is live (awake or asleep).
    pub active: bool,
    /// Scaled to zero: the page offers Wake.
    pub sleeping: bool,
    /// Why its deploy or wake waits for a place (`max_active`), while it does.
    pub waiting: Option<String>,
    /// What it has cost so far, as the comment says it; set by the handler, which reads the usage.
    pub cost: Option<String>,
    /// While degraded: how its probe failed, since when, and its pods then.
    pub health: Option<Output>,
    pub runs: Vec<RunView>,
}

impl StandView {
    pub fn of(detail: &StandDetail, url: Option<String>, now: DateTime<Utc>) -> StandView {
        let s = &detail.stand;
        let status = detail.runs.iter().filter(|r| r.kind != RunKind::Extend).max_by_key(|r| r.number).map(|r| {
            let status = Status::of_run(r.kind, r.state, &step_lines(&r.steps));
            let degraded = status == Status::Ready && s.state == StandState::Active && s.health == Health::Degraded;
            let headline = if degraded { Status::Degraded } else { status }.headline();
            // The comment's icon is decoration; the words carry the status.
            headline.split_once(' ').map_or(headline, |(_, words)| words)
        });
        StandView {
            row: StandRow::of(s, url, now),
            namespace: s.namespace.clone(),
            pr_number: s.pr_number,
            head_sha: s.head_sha.clone(),
            created: When::of(s.created_at),
            updated: When::of(s.updated_at),
            status,
            active: s.state.is_live(),
            sleeping: s.state == StandState::Sleeping,
            waiting: s.waiting_reason.clone(),
            cost: None,
            health: health_output(s),
            runs: detail.runs.iter().map(|r| RunView::of(s.stand_id, r)).collect(),
        }
    }
}

/// An awake, degraded stand's finding: `step` says since when, `text` how its probe failed and what
/// its pods looked like then.
fn health_output(s: &StandSummary) -> Option<Output> {
    if s.state != StandState::Active || s.health != Health::Degraded {
        return None;
    }
    let since = s.health_since.map(|t| format!("since {}", t.to_rfc3339_opts(SecondsFormat::Secs, true)));
    let mut text = s.health_reason.clone().unwrap_or_else(|| "its probe failed".to_owned());
    if let Some(d) = s.health_diagnostics.as_deref().filter(|d| !d.trim().is_empty()) {
        text = format!("{text}\n{d}");
    }
    Some(Output::of(&since.unwrap_or_default(), &text))
}

/// One run with its steps, what failed and the jobs' output.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub id: RunId,
    pub stand_id: StandId,
    pub number: i32,
    pub kind: RunKind,
    pub trigger: Trigger,
    pub requested_by: Option<String>,
    pub state: RunState,
    pub sha: Option<String>,
    pub attempt: i32,
    pub queued: When,
    pub started: Option<When>,
    pub finished: Option<When>,
    pub duration: Option<String>,
    pub steps: Vec<StepView>,
    /// The full error of each failed step: pod states, events, log lines.
    pub diagnostics: Vec<Output>,
    /// The last lines of the Jobs the run started (smoke, migrate).
    pub logs: Vec<Output>,
}

impl RunView {
    pub fn of(stand_id: StandId, r: &RunSummary) -> RunView {
        RunView {
            id: r.run_id,
            stand_id,
            number: r.number,
            kind: r.kind,
            trigger: r.trigger,
            requested_by: r.requested_by.clone(),
            state: r.state,
            sha: r.sha.clone(),
            attempt: r.attempt,
            queued: When::of(r.queued_at),
            started: r.started_at.map(When::of),
            finished: r.finished_at.map(When::of),
            duration: duration(r.started_at, r.finished_at),
            steps: r.steps.iter().map(StepView::of).collect(),
            diagnostics: r
                .steps
                .iter()
                .filter(|s| s.state == StepState::Failed)
                .filter_map(|s| s.error.as_ref().map(|e| Output::of(&s.name, &error_message(e))))
                .collect(),
            logs: r
                .steps
                .iter()
                .filter_map(|s| s.detail.get("log_tail").and_then(Value::as_str).map(|l| Output::of(&s.name, l)))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub name: String,
    pub state: StepState,
    pub attempt: i32,
    pub duration: Option<String>,
    /// Why it was skipped, what a dry run left out, or the failure's label.
    pub note: Option<String>,
    /// The failure's first line; the whole of it is under diagnostics.
    pub error: Option<String>,
}

impl StepView {
    fn of(s: &StepSummary) -> StepView {
        let text = |key: &str| s.detail.get(key).and_then(Value::as_str).map(str::to_owned);
        let note = match s.state {
            StepState::Skipped => text("skipped"),
            StepState::Succeeded => text("note"),
            StepState::Failed => {
                s.error.as_ref().and_then(|e| e.get("label")).and_then(Value::as_str).map(str::to_owned)
            }
            StepState::Pending | StepState::Running | StepState::Cancelled => None,
        };
        StepView {
            name: s.name.clone(),
            state: s.state,
            attempt: s.attempt,
            duration: duration(s.started_at, s.finished_at),
            note,
            error: s.error.as_ref().map(|e| error_message(e).lines().next().unwrap_or_default().to_owned()),
        }
    }
}

/// Text for a `<pre>`, under the step it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Output {
    pub step: String,
    pub text: String,
}

impl Output {
    fn of(step: &str, text: &str) -> Output {
        let mut text = text.trim_end().to_owned();
        crate::text::cut(&mut text, MAX_PRE_BYTES, "\n… cut");
        Output { step: step.to_owned(), text }
    }
}

/// A step error is recorded as `{kind, label, message}`; anything else is shown as JSON.
fn error_message(e: &Value) -> String {
    match e.get("message").and_then(Value::as_str) {
        Some(m) => m.to_owned(),
        None => e.as_str().map(str::to_owned).unwrap_or_else(|| e.to_string()),
    }
}

fn step_lines(steps: &[StepSummary]) -> Vec<StepLine> {
    steps.iter().map(|s| StepLine { name: s.name.clone(), state: s.state, duration_ms: None, note: None }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn countdowns() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let later = |s: i64| now + chrono::Duration::seconds(s);
        assert_eq!(countdown(later(47 * 3600 + 12 * 60 + 30), now), "in 47h 12m");
        assert_eq!(countdown(later(5 * 60), now), "in 5m");
        assert_eq!(countdown(later(30), now), "in under a minute");
        assert_eq!(countdown(later(0), now), "expired");
        assert_eq!(countdown(later(-10), now), "expired");
    }

    #[test]
    fn durations_and_times() {
        let t = Utc.with_ymd_and_hms(2026, 11, 27, 14, 5, 9).unwrap();
        let after = |ms: i64| Some(t + chrono::Duration::milliseconds(ms));
        assert_eq!(duration(Some(t), after(850)).as_deref(), Some("850 ms"));
        assert_eq!(duration(Some(t), after(125_000)).as_deref(), Some("2 m 05 s"));
        assert_eq!(duration(Some(t), None), None);
        let when = When::of(t);
        assert_eq!((when.iso.as_str(), when.text.as_str()), ("2026-11-27T14:05:09Z", "2026-11-27 14:05 UTC"));
    }

    #[test]
    fn every_template_compiles() {
        for (name, _) in TEMPLATES {
            ENV.get_template(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let page = error_html(StatusCode::CONFLICT, "stand_not_active", "stand is <removed>");
        assert!(page.contains("stand is &lt;removed&gt;"), "{page}");
        assert!(page.contains("409"), "{page}");
    }
}
