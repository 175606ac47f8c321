//! What the dry-run and Kubernetes steps share: the run's project, the stand's database and secrets,
//! writing files, and reading the mocks a chart rendered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::config::{AccessMode, Config, ForkPolicy, ProjectConfig};
use crate::credentials::access::{ACCESS_SECRET, AccessKey, TOKEN_KEY};
use crate::credentials::{StandCredentials, redacted, stand_db};
use crate::pipeline::plan::StandPlan;
use crate::pipeline::step::{RunContext, StepError, StepName, StepOutcome};
use crate::stand::{Provenance, short_sha};
use crate::store::approvals;

/// The single `teardown` step of runs recorded before teardown had steps of its own; never planned now.
pub(crate) fn retired() -> StepError {
    StepError::permanent("retired_step", "the single teardown step was replaced by cancel … drop")
}

/// The run's project; a run of a project removed from the config since it was queued fails for good.
pub(crate) fn project_of<'a>(config: &'a Config, run: &RunContext) -> Result<&'a ProjectConfig, StepError> {
    config
        .project(&run.project)
        .ok_or_else(|| StepError::permanent("project_unknown", format!("project {:?} is not configured", run.project)))
}

pub(crate) const NO_SECRETS: &str =
    "no [postgres] or [vault] KV path (project team and service) configured: the stand gets no credentials";

/// The database step, real in both modes when `[postgres]` is configured.
pub(crate) async fn database_step(
    credentials: Option<&StandCredentials>,
    run: &RunContext,
    project: &ProjectConfig,
) -> Result<StepOutcome, StepError> {
    match credentials {
        Some(c) if c.has_databases() => {
            let db = stand_db(&run.namespace, project.template.clone());
            Ok(StepOutcome::done(c.ensure_database(&db).await?))
        }
        _ => Ok(StepOutcome::skipped("no [postgres] configured: the stand gets no database")),
    }
}

/// The Secrets a stand gets: its access token, its KV values, and a new login for its database.
pub(crate) struct Gathered {
    pub secrets: Vec<(&'static str, BTreeMap<String, SecretString>)>,
    /// What the step records: names, paths, keys, the login's user and expiry; never a value.
    pub detail: Value,
    credential: Option<i64>,
    /// This run's access token is among the Secrets: once delivered, only it lets programs in.
    access_token: bool,
}

impl Gathered {
    /// Once the Secrets are in place, the stand's earlier logins are replaced: the keeper revokes
    /// them after a grace period, so pods still rolling keep working meanwhile.
    pub async fn delivered(
        &self,
        pool: &PgPool,
        credentials: Option<&StandCredentials>,
        run: &RunContext,
    ) -> Result<(), StepError> {
        if let (Some(c), Some(id)) = (credentials, self.credential) {
            c.supersede_app(run.stand_id, id).await?;
        }
        if self.access_token {
            // The earlier run's token stops working here, not before: its Secret held it until now.
            crate::store::access::set_token_run(pool, run.stand_id, run.run_id)
                .await
                .map_err(|e| StepError::transient("database", e.to_string()))?;
        }
        Ok(())
    }
}

/// Why a fork's stand gets nothing from the secrets step, nor a login for its migrations.
pub(crate) const FORK_NO_SECRETS: &str =
    "pull request from a fork: the stand gets no secrets and no logins (its code is not the project's)";

/// Why an approved fork's stand gets a login but nothing from the project's KV path.
pub(crate) const APPROVED_FORK_NO_KV: &str = "approved commit from a fork: the stand gets its own database login, mock integrations and none of the team's KV secrets";

fn db(e: impl std::fmt::Display) -> StepError {
    StepError::transient("database", e.to_string())
}

/// Whose code the run's stand runs, under the project's `forks` policy.
pub(crate) async fn provenance(
    pool: &PgPool,
    run: &RunContext,
    project: &ProjectConfig,
) -> Result<Provenance, StepError> {
    approvals::provenance(pool, run.stand_id, project.forks).await.map_err(db)
}

/// Under `forks = "approve"`, a deploy of a fork's stand runs only a commit someone approved.
/// Intake and `/draft rerun` never queue anything else; this holds should anything ever do.
pub(crate) async fn approved_or_refused(
    pool: &PgPool,
    run: &RunContext,
    project: &ProjectConfig,
) -> Result<(), StepError> {
    if project.forks != ForkPolicy::Approve || !run.kind.deploys() {
        return Ok(());
    }
    let sha = run.sha.as_deref().unwrap_or_default();
    if provenance(pool, run, project).await? == Provenance::Own
        || approvals::approved(pool, run.stand_id, sha).await.map_err(db)?
    {
        return Ok(());
    }
    Err(StepError::permanent(
        "not_approved",
        format!(
            "commit {} is from a fork and nobody approved it: comment `/draft approve {}`",
            short_sha(sha),
            short_sha(sha)
        ),
    ))
}

/// The plan a step of `run` acts on, after the check every step but report and rollback makes (an
/// unapproved fork commit is refused). An approved fork's deploy gets mocks only, and its URL is
/// behind forge sign-in whatever the project's `access`.
pub(crate) async fn step_plan(
    pool: &PgPool,
    config: &Config,
    step: StepName,
    run: &RunContext,
    project: &ProjectConfig,
) -> Result<StandPlan, StepError> {
    if !matches!(step, StepName::Report | StepName::Rollback) {
        approved_or_refused(pool, run, project).await?;
    }
    let sha = run.sha.as_deref().unwrap_or("");
    let mut plan = StandPlan::new(config, project, run.stand_id, &run.namespace, &run.branch, sha);
    if step == StepName::Deploy && provenance(pool, run, project).await?.mocks_only() {
        plan.release.set.insert(MOCKS_ONLY.to_owned(), "true".to_owned());
        plan.make_private(config);
    }
    Ok(plan)
}

/// Whether the stand's URL is private (its project's `access`, or an approved fork's stand), when
/// draftd holds the key.
fn private_stand<'k>(
    config: &Config,
    project: &ProjectConfig,
    provenance: Provenance,
    key: Option<&'k AccessKey>,
) -> Option<&'k AccessKey> {
    key.filter(|_| provenance.private() || config.access_mode(project) == AccessMode::Forge)
}

/// The key `run`'s stand gets an access token with, when its URL is private.
pub(crate) async fn access_key<'k>(
    pool: &PgPool,
    config: &Config,
    key: Option<&'k AccessKey>,
    run: &RunContext,
    project: &ProjectConfig,
) -> Result<Option<&'k AccessKey>, StepError> {
    if key.is_none() {
        return Ok(None);
    }
    Ok(private_stand(config, project, provenance(pool, run, project).await?, key))
}

/// The secrets step's values, or why there are none (a fork's stand; nothing configured).
pub(crate) async fn gather_secrets(
    pool: &PgPool,
    credentials: Option<&StandCredentials>,
    (config, key): (&Config, Option<&AccessKey>),
    run: &RunContext,
    project: &ProjectConfig,
) -> Result<Result<Gathered, &'static str>, StepError> {
    let provenance = provenance(pool, run, project).await?;
    let mut gathered = Gathered { secrets: Vec::new(), detail: json!({}), credential: None, access_token: false };
    if let Some(key) = private_stand(config, project, provenance, key) {
        let token = key.token(run.stand_id, run.run_id);
        gathered.detail[ACCESS_SECRET] = json!({ "keys": [TOKEN_KEY], "run": run.run_id });
        gathered.secrets.push((ACCESS_SECRET, BTreeMap::from([(TOKEN_KEY.to_owned(), token.0)])));
        gathered.access_token = true;
    }
    let none = |gathered: Gathered, why: &'static str| {
        if gathered.secrets.is_empty() {
            return Err(why);
        }
        let mut gathered = gathered;
        gathered.detail["credentials"] = json!(why);
        Ok(gathered)
    };
    if !provenance.gets_logins() {
        return Ok(none(gathered, FORK_NO_SECRETS));
    }
    let Some(c) = credentials else { return Ok(none(gathered, NO_SECRETS)) };
    if !provenance.gets_kv_secrets() {
        // Not even read: the fork's code was reviewed, not trusted with the team's secrets.
        gathered.detail["kv"] = json!(APPROVED_FORK_NO_KV);
    } else if let (Some(team), Some(service)) = (&project.team, &project.service)
        && let Some(kv) = c.read_kv(team, service).await?
    {
        gathered.detail[crate::credentials::APP_SECRET] =
            json!({ "kv_path": format!("{team}/{service}"), "keys": redacted(&kv) });
        gathered.secrets.push((crate::credentials::APP_SECRET, kv));
    }
    if c.has_databases() {
        let db = stand_db(&run.namespace, None);
        let issued = c.issue(run.stand_id, Some(run.run_id), "app", &db).await?;
        let data = c.secret_data(&db, &issued)?;
        gathered.detail[crate::credentials::DATABASE_SECRET] = json!({
            "username": issued.username,
            "source": issued.source,
            "expires_at": issued.expires_at,
            "keys": redacted(&data),
        });
        gathered.credential = Some(issued.credential_id);
        gathered.secrets.push((crate::credentials::DATABASE_SECRET, data));
    }
    Ok(match (gathered.secrets.is_empty(), provenance) {
        (true, Provenance::ApprovedFork) => Err(APPROVED_FORK_NO_KV),
        (true, _) => Err(NO_SECRETS),
        (false, _) => Ok(gathered),
    })
}

pub(crate) async fn write(path: &Path, text: &str) -> Result<PathBuf, StepError> {
    let io = |e: std::io::Error| StepError::transient("io", format!("writing {}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    tokio::fs::write(path, text).await.map_err(io)?;
    Ok(path.to_path_buf())
}

/// The chart value that renders every mock whatever the project's values enable
/// (charts/stand/values.yaml): an approved fork's stand talks to no real integration.
pub(crate) const MOCKS_ONLY: &str = "mocksOnly";

/// The chart names each mock's Service `<release>-mock-<name>`.
pub(crate) fn mocks_in(manifests: &str) -> Vec<String> {
    let mut mocks: Vec<String> = manifests
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name: "))
        .filter_map(|n| n.trim_matches('"').rsplit_once("-mock-").map(|(_, m)| m.to_string()))
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        .collect();
    mocks.sort();
    mocks.dedup();
    mocks
}
