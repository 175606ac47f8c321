//! Which outbox rows a run's state makes: the sticky comment, the `draftd` check of the commit, the
//! environment `draft/<branch>`, and the `draft-tested` label ([`outbound`]); and what a teardown
//! says before anything is removed ([`deactivation`]). Both are pure: a report view in, outbox rows
//! out, in the order they should reach the forge.
//!
//! The pipeline publishes through the two entry points that read what they need from the store and
//! queue the rows in one transaction: a stand's [`StandReport`] and [`queue_deactivation`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::queue::{CheckPayload, CommentPayload, EnvironmentPayload, LabelPayload, Outbound, enqueue};
use super::render::render;
use super::view::{AccessLine, CostLine, ReportView, Status};
use crate::config::{Config, ForgeKind, ProjectConfig};
use crate::forge::client::{CheckReport, CheckState, EnvironmentReport, EnvironmentState, marker};
use crate::stand::{RunId, RunKind, StandId, StepName, StepState, stand_host, stand_url};
use crate::store::StoreError;
use crate::store::outbox::{self, OutboxKind};
use crate::store::stands::{self, StandRef};

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
    // Nothing was run for a fork's commit that waits for approval: only the comment says so.
    if view.status == Status::AwaitingApproval {
        return out;
    }
    // The check follows the stand's commit through deploys, sleeps and wakes: a sleeping stand's
    // check says so and how to wake it (a new check run on GitHub, as a completed one is final).
    if matches!(view.kind, RunKind::Deploy | RunKind::Sleep | RunKind::Wake) {
        let check = match view.status {
            Status::Ready | Status::Sleeping => CheckState::Success,
            // Not answering is a failure of the commit's stand until it answers again: a new check
            // run on GitHub (a completed one is final), a new status on GitLab.
            Status::Failed | Status::Degraded => CheckState::Failure,
            Status::Waiting => CheckState::Queued,
            _ => CheckState::InProgress,
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
    }
    match view.kind {
        RunKind::Deploy => {
            let env = match view.status {
                // The deployment itself succeeded; the check says the stand stopped answering.
                Status::Ready | Status::Degraded => EnvironmentState::Success,
                Status::Failed => EnvironmentState::Failure,
                _ => EnvironmentState::InProgress,
            };
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
        RunKind::Teardown if view.status == Status::Removed => {
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

/// What a teardown says before anything is removed: the forge stops pointing people at the stand
/// (its deployment goes inactive, GitLab's environment stops), and `newest_check`, the stand's newest
/// check (delivered or on its way), ends as cancelled when it is still open: a deploy stopped.
pub fn deactivation(
    forge: ForgeKind,
    repo: &str,
    branch: &str,
    sha: String,
    newest_check: Option<CheckPayload>,
) -> Vec<Outbound> {
    let mut out = vec![Outbound::Environment(EnvironmentPayload {
        forge,
        repo: repo.to_owned(),
        env: EnvironmentReport {
            environment: environment_name(branch),
            branch: branch.to_owned(),
            sha,
            state: EnvironmentState::Inactive,
            url: None,
            log_url: None,
            description: "Draft stand being removed".to_owned(),
        },
    })];
    if let Some(mut check) = newest_check
        && matches!(check.check.state, CheckState::Queued | CheckState::InProgress)
    {
        check.check.state = CheckState::Cancelled;
        check.check.title = "Cancelled: the stand is being removed".to_owned();
        out.push(Outbound::Check(check));
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
        Status::Waiting => format!("Waiting for a place: {}", view.waiting.as_deref().unwrap_or("max_active")),
        Status::AwaitingApproval => "Waiting for a maintainer's approval: /draft approve".to_owned(),
        Status::Sleeping => "Asleep: open its URL, comment /draft wake or push to wake it".to_owned(),
        Status::FallingAsleep => "Going to sleep: idle".to_owned(),
        Status::Waking => "Waking up".to_owned(),
        Status::Degraded => match &view.degraded {
            Some(d) => format!("Degraded: {}", d.reason),
            None => "Degraded: not answering".to_owned(),
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
            if let Some(note) = view.steps.iter().find(|s| s.state == StepState::Running).and_then(|s| s.note.as_ref())
            {
                return format!("Deploying: {note}");
            }
            let done = view.steps.iter().filter(|s| s.state.is_done()).count();
            format!("Deploying: {done} of {} steps done", view.steps.len().max(done))
        }
    }
}

/// Why a stand's report could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the stand row is gone")]
    StandMissing,
    #[error("project {0:?} is not configured")]
    ProjectUnknown(String),
    #[error("the stand has no run to report")]
    NoRun,
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl ReportError {
    /// A stable label, as the report step records it.
    pub fn label(&self) -> &'static str {
        match self {
            ReportError::StandMissing => "stand_missing",
            ReportError::ProjectUnknown(_) => "project_unknown",
            ReportError::NoRun => "no_run",
            ReportError::Store(_) => "database",
        }
    }

    /// May pass if tried again: only the database's failures.
    pub fn is_transient(&self) -> bool {
        matches!(self, ReportError::Store(_))
    }
}

/// One row queued: its kind and its `outbox_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Queued {
    pub kind: OutboxKind,
    pub outbox: i64,
}

/// A stand's report, rendered from its recorded runs, with where it goes: ready to be kept (the
/// dry-run copy of the comment) and queued.
#[derive(Debug, Clone)]
pub struct StandReport {
    pub view: ReportView,
    pub forge: ForgeKind,
    pub repo: String,
    /// The PR/MR, when draftd knows it: without one there is no comment and no label.
    pub number: Option<u64>,
}

impl StandReport {
    /// The report of the stand's newest deploy or teardown run ([`ReportView::from_detail`]). `now`
    /// decides whether the comment carries the expiry warning (`[reaper] warn_before`).
    pub async fn load(
        pool: &PgPool,
        config: &Config,
        stand_id: StandId,
        now: DateTime<Utc>,
    ) -> Result<StandReport, ReportError> {
        let Some(detail) = stands::show(pool, &StandRef::Id(stand_id), 10).await? else {
            return Err(ReportError::StandMissing);
        };
        let Some(project) = config.projects.iter().find(|p| p.name == detail.stand.project) else {
            return Err(ReportError::ProjectUnknown(detail.stand.project.clone()));
        };
        let url = project.host.as_deref().map(|pattern| stand_url(&stand_host(pattern, &detail.stand.namespace)));
        // The mocks the newest rendered deploy listed (both modes record them on the deploy step).
        let mocks = detail
            .runs
            .iter()
            .flat_map(|r| r.steps.iter())
            .find(|st| st.name == StepName::Deploy.as_str() && st.detail.get("mocks").is_some())
            .and_then(|st| serde_json::from_value(st.detail["mocks"].clone()).ok())
            .unwrap_or_default();
        let Some(mut view) = ReportView::from_detail(&detail, url, mocks, Some(&config.public_url)) else {
            return Err(ReportError::NoRun);
        };
        view.expiry_warning =
            view.expires_at.is_some_and(|at| at > now && at - now <= chrono_of(config.reaper.warn_before));
        view.access = view.url.as_ref().map(|_| match config.access_mode(project) {
            crate::config::AccessMode::Forge => AccessLine::Forge { forge: project.forge, repo: project.repo.clone() },
            crate::config::AccessMode::Public => AccessLine::Public,
        });
        let sleeping = detail.stand.state == crate::stand::StandState::Sleeping;
        view.cost = crate::store::usage::priced(pool, stand_id, &config.cost, now)
            .await?
            .map(|p| CostLine { cost: p.cost, sleeping_since: p.last_awake_until.filter(|_| sleeping) });
        Ok(StandReport {
            view,
            forge: project.forge,
            repo: project.repo.clone(),
            number: detail.stand.pr_number.map(|n| n as u64),
        })
    }

    /// The sticky comment's body.
    pub fn body(&self) -> String {
        render(&self.view)
    }

    /// Queues every row the report makes (sticky comment, check, environment, label) in one
    /// transaction, in the order they should reach the forge.
    pub async fn queue(&self, pool: &PgPool, run_id: Option<RunId>) -> Result<Vec<Queued>, StoreError> {
        self.queue_only(pool, run_id, |_| true).await
    }

    /// What a change of the stand's health says (the health watch): the sticky comment and the
    /// check. The deployment and the label stay as the deploy left them.
    pub async fn queue_health(&self, pool: &PgPool) -> Result<Vec<Queued>, StoreError> {
        self.queue_only(pool, None, |o| matches!(o, Outbound::Comment(_) | Outbound::Check(_))).await
    }

    async fn queue_only(
        &self,
        pool: &PgPool,
        run_id: Option<RunId>,
        keep: impl Fn(&Outbound) -> bool,
    ) -> Result<Vec<Queued>, StoreError> {
        let stand_id = self.view.stand_id;
        let mut tx = pool.begin().await?;
        let labelled = match self.number {
            Some(n) => {
                outbox::present(&mut *tx, &tested_label(self.forge, &self.repo, n).coalesce_key(stand_id)).await?
            }
            None => false,
        };
        let target = Target { forge: self.forge, repo: &self.repo, number: self.number, labelled };
        let mut queued = Vec::new();
        for out in outbound(&self.view, &target).into_iter().filter(|o| keep(o)) {
            let id = enqueue(&mut *tx, stand_id, run_id, &out).await?;
            queued.push(Queued { kind: out.kind(), outbox: id });
        }
        tx.commit().await?;
        Ok(queued)
    }
}

/// Queues the report of a stand outside any run: the sticky comment of a fork's commit held for
/// approval, which intake records without a run. A stand gone meanwhile, or whose project left the
/// configuration, has nothing to say.
pub async fn queue_unrun(pool: &PgPool, config: &Config, stand_id: StandId) -> Result<(), StoreError> {
    match StandReport::load(pool, config, stand_id, Utc::now()).await {
        Ok(report) => {
            report.queue(pool, None).await?;
            Ok(())
        }
        Err(ReportError::Store(e)) => Err(e),
        Err(e) => {
            tracing::warn!(stand = stand_id.get(), error = %e, "no report to queue for the stand");
            Ok(())
        }
    }
}

/// The `draft-tested` label added to PR/MR `number`: its key finds whether it is on the PR.
fn tested_label(forge: ForgeKind, repo: &str, number: u64) -> Outbound {
    Outbound::Label(LabelPayload {
        forge,
        repo: repo.to_owned(),
        number,
        label: TESTED_LABEL.to_owned(),
        present: true,
    })
}

fn chrono_of(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Queues what a teardown says before anything is removed ([`deactivation`]) for the stand of
/// `project` at commit `sha`, in one transaction. Returns the kinds queued.
pub async fn queue_deactivation(
    pool: &PgPool,
    project: &ProjectConfig,
    stand_id: StandId,
    run_id: RunId,
    branch: &str,
    sha: String,
) -> Result<Vec<OutboxKind>, StoreError> {
    // The newest check of the stand, delivered or on its way: still open means a deploy stopped.
    let check = outbox::newest_payload(pool, stand_id, OutboxKind::Check).await?;
    let check = check.and_then(|c| serde_json::from_value::<CheckPayload>(c).ok());
    let out = deactivation(project.forge, &project.repo, branch, sha, check);
    let mut tx = pool.begin().await?;
    let mut queued = Vec::new();
    for o in &out {
        enqueue(&mut *tx, stand_id, Some(run_id), o).await?;
        queued.push(o.kind());
    }
    tx.commit().await?;
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reporter::view::StepLine;
    use crate::stand::Trigger;

    fn view(status: Status, steps: &[(&str, StepState)]) -> ReportView {
        ReportView {
            stand_id: crate::stand::StandId::new(3),
            project: "shop".into(),
            branch: "feature/login".into(),
            namespace: "draft-feature-login".into(),
            url: Some("https://login.draft.example.com".into()),
            sha: Some("a".repeat(40)),
            head_sha: Some("a".repeat(40)),
            run_number: 2,
            kind: RunKind::Deploy,
            trigger: Trigger::Pushed,
            requested_by: None,
            stand_link: None,
            run_link: None,
            status,
            steps: steps
                .iter()
                .map(|(n, s)| StepLine { name: (*n).into(), state: *s, duration_ms: Some(5), note: None })
                .collect(),
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

    fn kinds(out: &[Outbound]) -> Vec<&'static str> {
        out.iter().map(|o| o.kind().as_str()).collect()
    }

    #[test]
    fn smoke_passing_at_the_head_labels_the_pr() {
        let target = Target { forge: ForgeKind::Github, repo: "acme/shop", number: Some(7), labelled: false };
        let ready = view(Status::Ready, &[("deploy", StepState::Succeeded), ("smoke", StepState::Succeeded)]);
        let out = outbound(&ready, &target);
        assert_eq!(kinds(&out), ["comment", "check", "environment", "label"]);
        assert!(matches!(&out[3], Outbound::Label(l) if l.present && l.label == TESTED_LABEL));

        let mut behind = ready.clone();
        behind.head_sha = Some("b".repeat(40));
        assert_eq!(kinds(&outbound(&behind, &target)), ["comment", "check", "environment"], "not the head commit");
        let skipped = view(Status::Ready, &[("deploy", StepState::Succeeded), ("smoke", StepState::Skipped)]);
        assert_eq!(kinds(&outbound(&skipped, &target)), ["comment", "check", "environment"], "smoke never ran");
    }

    #[test]
    fn a_sleep_and_a_wake_move_the_check_and_a_waiting_deploy_is_queued() {
        let target = Target { forge: ForgeKind::Github, repo: "acme/shop", number: Some(7), labelled: false };
        let check = |kind, status| {
            let out = outbound(&ReportView { kind, ..view(status, &[]) }, &target);
            assert_eq!(kinds(&out), ["comment", "check"], "{kind:?} {status:?}: the deployment stays as it was");
            match &out[1] {
                Outbound::Check(c) => (c.check.state, c.check.title.clone()),
                _ => unreachable!(),
            }
        };
        assert_eq!(
            check(RunKind::Sleep, Status::Sleeping),
            (CheckState::Success, "Asleep: open its URL, comment /draft wake or push to wake it".into())
        );
        assert_eq!(check(RunKind::Wake, Status::Waking), (CheckState::InProgress, "Waking up".into()));
        let waiting = ReportView { waiting: Some("2 of 2 stands are up".into()), ..view(Status::Waiting, &[]) };
        let out = outbound(&waiting, &target);
        assert!(matches!(&out[1], Outbound::Check(c) if c.check.state == CheckState::Queued
            && c.check.title == "Waiting for a place: 2 of 2 stands are up"));
    }

    #[test]
    fn a_degraded_stand_fails_its_check_and_keeps_its_deployment_and_label() {
        let target = Target { forge: ForgeKind::Github, repo: "acme/shop", number: Some(7), labelled: true };
        let mut degraded = view(Status::Degraded, &[("verify", StepState::Succeeded)]);
        degraded.degraded = Some(crate::reporter::Degraded { since: None, reason: "probe of x answered 502".into() });
        let out = outbound(&degraded, &target);
        assert_eq!(kinds(&out), ["comment", "check", "environment"], "the label stays on");
        assert!(matches!(&out[1], Outbound::Check(c) if c.check.state == CheckState::Failure
            && c.check.title == "Degraded: probe of x answered 502"));
        assert!(matches!(&out[2], Outbound::Environment(e) if e.env.state == EnvironmentState::Success));
        let ready = outbound(&view(Status::Ready, &[("verify", StepState::Succeeded)]), &target);
        assert!(matches!(&ready[1], Outbound::Check(c) if c.check.state == CheckState::Success));
    }

    #[test]
    fn a_failure_removes_the_label_only_when_it_was_added() {
        let failed = view(Status::Failed, &[("deploy", StepState::Failed)]);
        let target = Target { forge: ForgeKind::Gitlab, repo: "acme/shop", number: Some(7), labelled: false };
        assert_eq!(kinds(&outbound(&failed, &target)), ["comment", "check", "environment"]);
        let out = outbound(&failed, &Target { labelled: true, ..target });
        assert!(matches!(out.last(), Some(Outbound::Label(l)) if !l.present));
        assert!(matches!(&out[1], Outbound::Check(c) if c.check.state == CheckState::Failure
            && c.check.title == "Failed at deploy"));
    }

    #[test]
    fn teardown_marks_the_environment_inactive_and_nothing_else() {
        let mut removed = view(Status::Removed, &[("teardown", StepState::Succeeded)]);
        removed.kind = RunKind::Teardown;
        let target = Target { forge: ForgeKind::Github, repo: "acme/shop", number: Some(7), labelled: true };
        let out = outbound(&removed, &target);
        assert_eq!(kinds(&out), ["comment", "environment"]);
        assert!(matches!(&out[1], Outbound::Environment(e) if e.env.state == EnvironmentState::Inactive
            && e.env.environment == "draft/feature/login"));
    }

    #[test]
    fn deactivation_stops_the_environment_and_cancels_only_an_open_check() {
        let check = |state| CheckPayload {
            forge: ForgeKind::Github,
            repo: "acme/shop".into(),
            check: CheckReport {
                sha: "a".repeat(40),
                state,
                title: "Deploying".into(),
                summary: String::new(),
                details_url: None,
                branch: None,
            },
        };
        let sha = "a".repeat(40);
        let out = deactivation(ForgeKind::Github, "acme/shop", "feature/login", sha.clone(), None);
        assert_eq!(kinds(&out), ["environment"]);
        assert!(matches!(&out[0], Outbound::Environment(e) if e.env.state == EnvironmentState::Inactive
            && e.env.environment == "draft/feature/login" && e.env.description == "Draft stand being removed"));
        let open = deactivation(
            ForgeKind::Github,
            "acme/shop",
            "feature/login",
            sha.clone(),
            Some(check(CheckState::InProgress)),
        );
        assert!(matches!(&open[1], Outbound::Check(c) if c.check.state == CheckState::Cancelled
            && c.check.title == "Cancelled: the stand is being removed"));
        let done = deactivation(ForgeKind::Github, "acme/shop", "feature/login", sha, Some(check(CheckState::Success)));
        assert_eq!(kinds(&done), ["environment"], "a finished check is final");
    }
}
