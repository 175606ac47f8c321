//! What a run's state says on the forge besides the sticky comment: the `draftd` check of the
//! commit, the environment `draft/<branch>`, and the `draft-tested` label. Pure: a report view in,
//! outbox rows out.

use super::client::{CheckReport, CheckState, EnvironmentReport, EnvironmentState, marker};
use super::report::{ReportView, Status, render};
use crate::config::ForgeKind;
use crate::reporter::{CheckPayload, CommentPayload, EnvironmentPayload, LabelPayload, Outbound};

/// The label a PR gets once its stand passed smoke at the PR's head commit.
pub const TESTED_LABEL: &str = "draft-tested";

/// Where a stand reports.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub forge: ForgeKind,
    pub repo: &'a str,
    /// The PR/MR, when draftd knows it.
    pub number: Option<u64>,
    /// The label was added (or is about to be) and not removed since.
    pub labelled: bool,
}

/// The environment a stand is listed as.
pub fn environment_name(branch: &str) -> String {
    format!("draft/{branch}")
}

/// Every report `view` makes, in the order they should reach the forge.
pub fn outbound(view: &ReportView, target: &Target<'_>) -> Vec<Outbound> {
    let mut out = Vec::new();
    let (forge, repo) = (target.forge, target.repo.to_owned());
    let body = render(view);
    if let Some(number) = target.number {
        out.push(Outbound::Comment(CommentPayload {
            forge,
            repo: repo.clone(),
            number,
            marker: marker(view.stand_id),
            body: body.clone(),
        }));
    }
    let Some(sha) = view.sha.clone() else { return out };
    match view.kind.as_str() {
        "deploy" => {
            let (check, env) = match view.status {
                Status::Ready => (CheckState::Success, EnvironmentState::Success),
                Status::Failed => (CheckState::Failure, EnvironmentState::Failure),
                _ => (CheckState::InProgress, EnvironmentState::InProgress),
            };
            // The check's summary is the comment without its marker line.
            let summary = body.split_once('\n').map(|(_, rest)| rest).unwrap_or(&body).to_owned();
            out.push(Outbound::Check(CheckPayload {
                forge,
                repo: repo.clone(),
                check: CheckReport {
                    sha: sha.clone(),
                    state: check,
                    title: title(view),
                    summary,
                    details_url: view.run_link.clone().or_else(|| view.stand_link.clone()),
                    branch: Some(view.branch.clone()),
                },
            }));
            out.push(Outbound::Environment(EnvironmentPayload {
                forge,
                repo: repo.clone(),
                env: EnvironmentReport {
                    environment: environment_name(&view.branch),
                    branch: view.branch.clone(),
                    sha: sha.clone(),
                    state: env,
                    url: view.url.clone(),
                    log_url: view.run_link.clone(),
                    description: title(view),
                },
            }));
            if let Some(number) = target.number {
                let at_head = view.head_sha.as_deref() == Some(sha.as_str());
                let label = |present| {
                    Outbound::Label(LabelPayload {
                        forge,
                        repo: repo.clone(),
                        number,
                        label: TESTED_LABEL.to_owned(),
                        present,
                    })
                };
                if view.status == Status::Ready && view.smoke_passed() && at_head {
                    out.push(label(true));
                } else if view.status == Status::Failed && target.labelled {
                    out.push(label(false));
                }
            }
        }
        "teardown" if view.status == Status::Removed => {
            out.push(Outbound::Environment(EnvironmentPayload {
                forge,
                repo,
                env: EnvironmentReport {
                    environment: environment_name(&view.branch),
                    branch: view.branch.clone(),
                    sha,
                    state: EnvironmentState::Inactive,
                    url: None,
                    log_url: view.run_link.clone(),
                    description: "Draft stand removed".to_owned(),
                },
            }));
        }
        _ => {}
    }
    out
}

/// One line for the check's title and the deployment's description.
fn title(view: &ReportView) -> String {
    match view.status {
        Status::Ready => match &view.url {
            Some(url) => format!("Ready at {url}"),
            None => "Ready".to_owned(),
        },
        Status::Failed => match view.failed_step() {
            Some(step) => match &step.note {
                Some(note) => format!("Failed at {}: {note}", step.name),
                None => format!("Failed at {}", step.name),
            },
            None => "Failed".to_owned(),
        },
        _ => {
            // A step that waits says what for: "waiting for image registry/app:draft-x-abc1234".
            if let Some(note) = view.steps.iter().find(|s| s.state == "running").and_then(|s| s.note.as_ref()) {
                return format!("Deploying: {note}");
            }
            let done = view.steps.iter().filter(|s| s.state == "succeeded" || s.state == "skipped").count();
            format!("Deploying: {done} of {} steps done", view.steps.len().max(done))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::report::StepLine;

    fn view(status: Status, steps: &[(&str, &str)]) -> ReportView {
        ReportView {
            stand_id: 3,
            project: "shop".into(),
            branch: "feature/login".into(),
            namespace: "draft-feature-login".into(),
            url: Some("https://login.draft.example.com".into()),
            sha: Some("a".repeat(40)),
            head_sha: Some("a".repeat(40)),
            run_number: 2,
            kind: "deploy".into(),
            trigger: "pushed".into(),
            requested_by: None,
            stand_link: None,
            run_link: None,
            status,
            steps: steps
                .iter()
                .map(|(n, s)| StepLine { name: (*n).into(), state: (*s).into(), duration_ms: Some(5), note: None })
                .collect(),
            mocks: vec![],
            expires_at: None,
            expiry_warning: false,
            extended_by: None,
            error: None,
        }
    }

    fn kinds(out: &[Outbound]) -> Vec<&'static str> {
        out.iter().map(Outbound::kind).collect()
    }

    #[test]
    fn smoke_passing_at_the_head_labels_the_pr() {
        let target = Target { forge: ForgeKind::Github, repo: "acme/shop", number: Some(7), labelled: false };
        let ready = view(Status::Ready, &[("deploy", "succeeded"), ("smoke", "succeeded")]);
        let out = outbound(&ready, &target);
        assert_eq!(kinds(&out), ["comment", "check", "environment", "label"]);
        assert!(matches!(&out[3], Outbound::Label(l) if l.present && l.label == TESTED_LABEL));

        let mut behind = ready.clone();
        behind.head_sha = Some("b".repeat(40));
        assert_eq!(kinds(&outbound(&behind, &target)), ["comment", "check", "environment"], "not the head commit");
        let skipped = view(Status::Ready, &[("deploy", "succeeded"), ("smoke", "skipped")]);
        assert_eq!(kinds(&outbound(&skipped, &target)), ["comment", "check", "environment"], "smoke never ran");
    }

    #[test]
    fn a_failure_removes_the_label_only_when_it_was_added() {
        let failed = view(Status::Failed, &[("deploy", "failed")]);
        let target = Target { forge: ForgeKind::Gitlab, repo: "acme/shop", number: Some(7), labelled: false };
        assert_eq!(kinds(&outbound(&failed, &target)), ["comment", "check", "environment"]);
        let out = outbound(&failed, &Target { labelled: true, ..target });
        assert!(matches!(out.last(), Some(Outbound::Label(l)) if !l.present));
        assert!(matches!(&out[1], Outbound::Check(c) if c.check.state == CheckState::Failure
            && c.check.title == "Failed at deploy"));
    }

    #[test]
    fn teardown_marks_the_environment_inactive_and_nothing_else() {
        let mut removed = view(Status::Removed, &[("teardown", "succeeded")]);
        removed.kind = "teardown".into();
        let target = Target { forge: ForgeKind::Github, repo: "acme/shop", number: Some(7), labelled: true };
        let out = outbound(&removed, &target);
        assert_eq!(kinds(&out), ["comment", "environment"]);
        assert!(matches!(&out[1], Outbound::Environment(e) if e.env.state == EnvironmentState::Inactive
            && e.env.environment == "draft/feature/login"));
    }
}
