//! GitHub webhook payloads (`X-GitHub-Event`) to [`Event`]s.
//!
//! Only the fields draftd reads are typed; everything else in GitHub's large payloads is skipped.

use serde::Deserialize;

use super::{CHECK_NAME, Event, Gate, PayloadError, PullRequest, RERUN_ACTION, Trigger, command_event, parse};
use crate::config::Project;

/// Just enough of any payload to find the project it belongs to.
#[derive(Debug, Deserialize)]
pub struct RepositoryOnly {
    pub repository: Option<Repo>,
}

#[derive(Debug, Deserialize)]
pub struct Repo {
    pub full_name: String,
}

#[derive(Debug, Deserialize)]
struct PullRequestEvent {
    action: String,
    pull_request: Pr,
    label: Option<Label>,
}

#[derive(Debug, Deserialize)]
struct Pr {
    number: u64,
    /// `open` or `closed`.
    state: String,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    merged: Option<bool>,
    updated_at: String,
    head: Ref,
    base: Ref,
    #[serde(default)]
    labels: Vec<Label>,
}

#[derive(Debug, Deserialize)]
struct Ref {
    #[serde(rename = "ref")]
    ref_: String,
    sha: String,
    /// Null when the fork was deleted.
    repo: Option<Repo>,
}

#[derive(Debug, Deserialize)]
struct Label {
    name: String,
}

#[derive(Debug, Deserialize)]
struct IssueCommentEvent {
    action: String,
    issue: Issue,
    comment: Comment,
}

#[derive(Debug, Deserialize)]
struct Issue {
    number: u64,
    /// Present only when the issue is a pull request.
    pull_request: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Comment {
    body: String,
    user: User,
}

#[derive(Debug, Deserialize)]
struct User {
    login: String,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CheckRunEvent {
    action: String,
    check_run: CheckRun,
    requested_action: Option<RequestedAction>,
    sender: User,
}

#[derive(Debug, Deserialize)]
struct CheckRun {
    name: String,
    head_sha: String,
    #[serde(default)]
    pull_requests: Vec<CheckRunPr>,
}

#[derive(Debug, Deserialize)]
struct CheckRunPr {
    number: u64,
    head: RefById,
    base: BaseById,
}

#[derive(Debug, Deserialize)]
struct RefById {
    #[serde(rename = "ref")]
    ref_: String,
    repo: RepoId,
}

#[derive(Debug, Deserialize)]
struct BaseById {
    repo: RepoId,
}

#[derive(Debug, Deserialize)]
struct RepoId {
    id: u64,
}

#[derive(Debug, Deserialize)]
struct RequestedAction {
    identifier: String,
}

/// Normalises one delivery of event `event` (the `X-GitHub-Event` header) for `project`.
pub fn normalise(event: &str, body: &[u8], project: &Project) -> Result<Event, PayloadError> {
    let gate = Gate { project };
    match event {
        "pull_request" => pull_request(parse(body)?, &gate),
        "issue_comment" => issue_comment(parse(body)?),
        "check_run" => check_run(parse(body)?, &gate),
        other => Ok(Event::ignored(format!("event {other:?} is not one draftd acts on"))),
    }
}

fn pull_request(ev: PullRequestEvent, gate: &Gate) -> Result<Event, PayloadError> {
    let opt_out = gate.project.settings.opt_out_label.as_str();
    let label_is_opt_out = ev.label.as_ref().is_some_and(|l| l.name == opt_out);
    let trigger = match ev.action.as_str() {
        "opened" => Trigger::Opened,
        "synchronize" => Trigger::Pushed,
        "reopened" => Trigger::Reopened,
        "ready_for_review" => Trigger::ReadyForReview,
        "closed" if ev.pull_request.merged == Some(true) => Trigger::Merged,
        "closed" => Trigger::Closed,
        "labeled" if label_is_opt_out => Trigger::OptOut,
        "unlabeled" if label_is_opt_out => Trigger::OptIn,
        other => return Ok(Event::ignored(format!("pull_request action {other:?} needs nothing"))),
    };
    let pr = &ev.pull_request;
    let branch = super::branch("pull_request.head.ref", &pr.head.ref_)?;
    let sha = super::sha("pull_request.head.sha", &pr.head.sha)?;
    let updated_at = super::parse_time("pull_request.updated_at", &pr.updated_at)?;
    let fork = match (&pr.head.repo, &pr.base.repo) {
        (Some(h), Some(b)) => !h.full_name.eq_ignore_ascii_case(&b.full_name),
        _ => true,
    };
    if let Err(ignored) = gate.admits(&branch, fork) {
        return Ok(ignored);
    }
    let pr_ref = PullRequest { number: pr.number, branch, sha, updated_at, fork };
    if matches!(trigger, Trigger::Closed | Trigger::Merged | Trigger::OptOut) {
        return Ok(Event::Teardown { pr: pr_ref, trigger });
    }
    // Label changes and late events can arrive for a closed PR; only an open one gets a stand.
    if pr.state != "open" {
        return Ok(Event::ignored(format!("pull request is {}", pr.state)));
    }
    let labels = pr.labels.iter().map(|l| l.name.as_str());
    if let Err(ignored) = gate.may_deploy(pr.draft, labels) {
        return Ok(ignored);
    }
    Ok(Event::Deploy { pr: pr_ref, trigger })
}

fn issue_comment(ev: IssueCommentEvent) -> Result<Event, PayloadError> {
    if ev.action != "created" {
        return Ok(Event::ignored(format!("issue_comment action {:?} needs nothing", ev.action)));
    }
    if ev.issue.pull_request.is_none() {
        return Ok(Event::ignored("comment on an issue, not a pull request"));
    }
    Ok(command_event(&ev.comment.body, ev.issue.number, None, None, &ev.comment.user.login, ev.comment.user.id))
}

fn check_run(ev: CheckRunEvent, gate: &Gate) -> Result<Event, PayloadError> {
    match (ev.action.as_str(), &ev.requested_action) {
        ("rerequested", _) => {}
        ("requested_action", Some(a)) if a.identifier == RERUN_ACTION => {}
        ("requested_action", _) => return Ok(Event::ignored("requested action is not draftd's re-run")),
        (other, _) => return Ok(Event::ignored(format!("check_run action {other:?} needs nothing"))),
    }
    if ev.check_run.name != CHECK_NAME {
        return Ok(Event::ignored(format!("check run {:?} is not draftd's", ev.check_run.name)));
    }
    let Some(pr) = ev.check_run.pull_requests.first() else {
        return Ok(Event::ignored("check run belongs to no pull request"));
    };
    let branch = super::branch("check_run.pull_requests[0].head.ref", &pr.head.ref_)?;
    let sha = super::sha("check_run.head_sha", &ev.check_run.head_sha)?;
    if let Err(ignored) = gate.admits(&branch, pr.head.repo.id != pr.base.repo.id) {
        return Ok(ignored);
    }
    Ok(Event::Command {
        pr_number: pr.number,
        branch: Some(branch),
        sha: Some(sha),
        command: super::Command::Rerun,
        author: ev.sender.login,
        author_id: ev.sender.id,
    })
}
