//! GitHub webhook payloads (`X-GitHub-Event`) to [`Event`]s.
//!
//! Only the fields draftd reads are typed; everything else in GitHub's large payloads is skipped.

use serde::Deserialize;

use crate::config::Project;
use crate::forge::{
    self, CHECK_NAME, Event, Gate, PayloadError, PullRequest, RERUN_ACTION, Trigger, command_event, parse,
};

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
    /// Empty for a fork's pull request (GitHub lists only PRs whose head is in the repository).
    #[serde(default)]
    pull_requests: Vec<CheckRunPr>,
    /// Its suite names the branch when `pull_requests` is empty.
    #[serde(default)]
    check_suite: Option<SuiteBranch>,
}

#[derive(Debug, Deserialize)]
struct SuiteBranch {
    /// `null` for a suite of a commit no branch points at any more.
    #[serde(default)]
    head_branch: Option<String>,
}

/// "Re-run all checks" and "Re-run failed checks" on a pull request: GitHub asks each app for its
/// whole check suite again (`check_suite` `rerequested`), not for one check run.
#[derive(Debug, Deserialize)]
struct CheckSuiteEvent {
    action: String,
    check_suite: CheckSuite,
    sender: User,
}

#[derive(Debug, Deserialize)]
struct CheckSuite {
    #[serde(default)]
    head_branch: Option<String>,
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
        "issue_comment" => issue_comment(parse(body)?, &gate),
        "check_run" => check_run(parse(body)?, &gate),
        "check_suite" => check_suite(parse(body)?, &gate),
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
    let branch = forge::branch("pull_request.head.ref", &pr.head.ref_)?;
    let sha = forge::sha("pull_request.head.sha", &pr.head.sha)?;
    let updated_at = forge::parse_time("pull_request.updated_at", &pr.updated_at)?;
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

fn issue_comment(ev: IssueCommentEvent, gate: &Gate) -> Result<Event, PayloadError> {
    if ev.action != "created" {
        return Ok(Event::ignored(format!("issue_comment action {:?} needs nothing", ev.action)));
    }
    if ev.issue.pull_request.is_none() {
        return Ok(Event::ignored("comment on an issue, not a pull request"));
    }
    let repo = &gate.project.settings.repo;
    Ok(command_event(repo, &ev.comment.body, ev.issue.number, None, None, &ev.comment.user.login, ev.comment.user.id))
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
    let suite_branch = ev.check_run.check_suite.and_then(|s| s.head_branch);
    let asked = Rerun {
        field: "check_run",
        sha: &ev.check_run.head_sha,
        pull_requests: &ev.check_run.pull_requests,
        head_branch: suite_branch.as_deref(),
    };
    asked.event(gate, ev.sender)
}

fn check_suite(ev: CheckSuiteEvent, gate: &Gate) -> Result<Event, PayloadError> {
    if ev.action != "rerequested" {
        // `requested` comes with every push; the `pull_request` event already deployed it.
        return Ok(Event::ignored(format!("check_suite action {:?} needs nothing", ev.action)));
    }
    let asked = Rerun {
        field: "check_suite",
        sha: &ev.check_suite.head_sha,
        pull_requests: &ev.check_suite.pull_requests,
        head_branch: ev.check_suite.head_branch.as_deref(),
    };
    asked.event(gate, ev.sender)
}

/// A re-run asked for on a check run or its suite.
struct Rerun<'a> {
    /// `check_run` or `check_suite`, to name a bad field.
    field: &'static str,
    sha: &'a str,
    pull_requests: &'a [CheckRunPr],
    /// The suite's branch, all there is when `pull_requests` is empty (a fork's pull request).
    head_branch: Option<&'a str>,
}

impl Rerun<'_> {
    fn event(self, gate: &Gate, sender: User) -> Result<Event, PayloadError> {
        let sha = forge::sha(&format!("{}.head_sha", self.field), self.sha)?;
        let (pr_number, branch, fork) = match self.pull_requests.first() {
            Some(pr) => {
                let field = format!("{}.pull_requests[0].head.ref", self.field);
                (Some(pr.number), Some(forge::branch(&field, &pr.head.ref_)?), pr.head.repo.id != pr.base.repo.id)
            }
            // The stand is found by its head commit; the suite's branch only breaks a tie.
            None => {
                let branch = self.head_branch.and_then(|b| forge::branch("check_suite.head_branch", b).ok());
                (None, branch, false)
            }
        };
        if let Some(b) = &branch
            && let Err(ignored) = gate.admits(b, fork)
        {
            return Ok(ignored);
        }
        Ok(Event::Command {
            pr_number,
            branch,
            sha: Some(sha),
            answer_in: Some(gate.project.settings.repo.clone()),
            command: forge::Command::Rerun,
            author: sender.login,
            author_id: sender.id,
        })
    }
}
