//! GitLab webhook payloads (`X-Gitlab-Event`) to [`Event`]s.

use serde::Deserialize;

use crate::config::Project;
use crate::forge::{self, Event, Gate, PayloadError, PullRequest, Trigger, command_event, parse};

/// Just enough of any payload to find the project it belongs to.
#[derive(Debug, Deserialize)]
pub struct ProjectOnly {
    pub project: Option<ProjectRef>,
}

#[derive(Debug, Deserialize)]
pub struct ProjectRef {
    pub path_with_namespace: String,
}

#[derive(Debug, Deserialize)]
struct MergeRequestEvent {
    object_attributes: MrAttributes,
    #[serde(default)]
    labels: Vec<Label>,
    #[serde(default)]
    changes: Changes,
}

#[derive(Debug, Deserialize)]
struct MrAttributes {
    iid: u64,
    action: Option<String>,
    source_branch: String,
    source_project_id: u64,
    target_project_id: u64,
    last_commit: LastCommit,
    updated_at: String,
    /// `opened`, `closed`, `merged` or `locked`; absent in some older payloads.
    state: Option<String>,
    /// `draft` replaced `work_in_progress` in GitLab 13.x; older instances send only the latter.
    draft: Option<bool>,
    work_in_progress: Option<bool>,
    /// Present on `update` exactly when new commits were pushed.
    oldrev: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LastCommit {
    id: String,
}

#[derive(Debug, Deserialize)]
struct Label {
    title: String,
}

#[derive(Debug, Default, Deserialize)]
struct Changes {
    labels: Option<Change<Vec<Label>>>,
    draft: Option<Change<bool>>,
}

#[derive(Debug, Deserialize)]
struct Change<T> {
    previous: Option<T>,
    current: Option<T>,
}

#[derive(Debug, Deserialize)]
struct NoteEvent {
    object_attributes: NoteAttributes,
    merge_request: Option<NoteMr>,
    user: User,
}

#[derive(Debug, Deserialize)]
struct NoteAttributes {
    note: String,
    noteable_type: String,
    /// `create` or `update` (GitLab 15.x+); older instances send none and mean create.
    action: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NoteMr {
    iid: u64,
    source_branch: String,
    source_project_id: u64,
    target_project_id: u64,
}

#[derive(Debug, Deserialize)]
struct User {
    username: String,
    #[serde(default)]
    id: Option<u64>,
}

/// Normalises one delivery of event `event` (the `X-Gitlab-Event` header) for `project`.
pub fn normalise(event: &str, body: &[u8], project: &Project) -> Result<Event, PayloadError> {
    let gate = Gate { project };
    match event {
        "Merge Request Hook" => merge_request(parse(body)?, &gate),
        "Note Hook" => note(parse(body)?, &gate),
        other => Ok(Event::ignored(format!("event {other:?} is not one draftd acts on"))),
    }
}

fn has_label(labels: &Option<Vec<Label>>, name: &str) -> bool {
    labels.as_ref().is_some_and(|ls| ls.iter().any(|l| l.title == name))
}

fn merge_request(ev: MergeRequestEvent, gate: &Gate) -> Result<Event, PayloadError> {
    let a = &ev.object_attributes;
    let opt_out = gate.project.settings.opt_out_label.as_str();
    let trigger = match a.action.as_deref() {
        Some("open") => Trigger::Opened,
        Some("reopen") => Trigger::Reopened,
        Some("close") => Trigger::Closed,
        Some("merge") => Trigger::Merged,
        Some("update") => {
            let labels = ev.changes.labels.as_ref();
            let had = labels.is_some_and(|c| has_label(&c.previous, opt_out));
            let has = labels.is_some_and(|c| has_label(&c.current, opt_out));
            let ready = ev.changes.draft.as_ref().is_some_and(|c| c.previous == Some(true) && c.current == Some(false));
            if labels.is_some() && !had && has {
                Trigger::OptOut
            } else if labels.is_some() && had && !has {
                Trigger::OptIn
            } else if a.oldrev.is_some() {
                Trigger::Pushed
            } else if ready {
                Trigger::ReadyForReview
            } else {
                return Ok(Event::ignored("merge request update without new commits"));
            }
        }
        Some(other) => return Ok(Event::ignored(format!("merge request action {other:?} needs nothing"))),
        None => return Ok(Event::ignored("merge request event without an action")),
    };
    let branch = forge::branch("object_attributes.source_branch", &a.source_branch)?;
    let sha = forge::sha("object_attributes.last_commit.id", &a.last_commit.id)?;
    let updated_at = forge::parse_time("object_attributes.updated_at", &a.updated_at)?;
    let fork = a.source_project_id != a.target_project_id;
    if let Err(ignored) = gate.admits(&branch, fork) {
        return Ok(ignored);
    }
    let pr = PullRequest { number: a.iid, branch, sha, updated_at, fork };
    if matches!(trigger, Trigger::Closed | Trigger::Merged | Trigger::OptOut) {
        return Ok(Event::Teardown { pr, trigger });
    }
    if let Some(state) = a.state.as_deref().filter(|s| *s != "opened") {
        return Ok(Event::ignored(format!("merge request is {state}")));
    }
    let draft = a.draft.or(a.work_in_progress).unwrap_or(false);
    if let Err(ignored) = gate.may_deploy(draft, ev.labels.iter().map(|l| l.title.as_str())) {
        return Ok(ignored);
    }
    Ok(Event::Deploy { pr, trigger })
}

fn note(ev: NoteEvent, gate: &Gate) -> Result<Event, PayloadError> {
    if ev.object_attributes.noteable_type != "MergeRequest" {
        return Ok(Event::ignored(format!("comment on a {}, not a merge request", ev.object_attributes.noteable_type)));
    }
    if ev.object_attributes.action.as_deref().is_some_and(|a| a != "create") {
        return Ok(Event::ignored("edited comment"));
    }
    let Some(mr) = ev.merge_request else {
        return Err(PayloadError::new("merge_request", "missing for a merge request comment"));
    };
    let branch = forge::branch("merge_request.source_branch", &mr.source_branch)?;
    if forge::command::parse(&ev.object_attributes.note).is_none() {
        return Ok(Event::ignored("comment is not a /draft command"));
    }
    if let Err(ignored) = gate.admits(&branch, mr.source_project_id != mr.target_project_id) {
        return Ok(ignored);
    }
    let repo = &gate.project.settings.repo;
    Ok(command_event(repo, &ev.object_attributes.note, mr.iid, Some(branch), None, &ev.user.username, ev.user.id))
}
