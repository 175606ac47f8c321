//! The real step runner of `[cluster] mode = "dry-run"`: every step records what it would do under
//! `<dry_run_dir>/<namespace>/` (rendered manifests, one JSON record per step, the report), applies
//! nothing, and says so. Steps whose system is not configured are `skipped` with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::image::{ImageStep, NoBuilder, Registries, pull_login};
use super::lifecycle;
use super::plan::StandPlan;
use super::step::{RunContext, StepError, StepName, StepOutcome, StepRunner};
use crate::cluster::dry_run;
use crate::config::{Config, ProjectConfig};
use crate::credentials::{CredentialError, StandCredentials, redacted, stand_db};
use crate::helm::Helm;

pub struct DryRunSteps<H> {
    pool: PgPool,
    config: Arc<Config>,
    helm: Arc<H>,
    credentials: Option<Arc<StandCredentials>>,
    registries: Option<Arc<Registries>>,
}

impl<H: Helm> DryRunSteps<H> {
    pub fn new(pool: PgPool, config: Arc<Config>, helm: Arc<H>) -> Self {
        Self { pool, config, helm, credentials: None, registries: None }
    }

    /// The registries the image step looks in (real in both modes).
    pub fn with_registries(mut self, registries: Option<Arc<Registries>>) -> Self {
        self.registries = registries;
        self
    }

    /// The stand databases and credentials of `[postgres]` and `[vault]` (real in both modes).
    pub fn with_credentials(mut self, credentials: Option<Arc<StandCredentials>>) -> Self {
        self.credentials = credentials;
        self
    }

    fn folder(&self, run: &RunContext) -> PathBuf {
        self.config.cluster.dry_run_dir.join(&run.namespace)
    }

    fn plan(&self, run: &RunContext, project: &ProjectConfig) -> StandPlan {
        StandPlan::new(
            &self.config,
            project,
            run.stand_id,
            &run.namespace,
            &run.branch,
            run.sha.as_deref().unwrap_or(""),
        )
    }

    async fn step(&self, step: StepName, run: &RunContext, project: &ProjectConfig) -> Result<StepOutcome, StepError> {
        let plan = self.plan(run, project);
        let dir = self.folder(run);
        Ok(match step {
            StepName::Namespace => {
                let manifest = format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    app.kubernetes.io/managed-by: draftd\n    draftd.io/stand: \"{id}\"\n    draftd.io/project: {project}\n",
                    ns = run.namespace,
                    id = run.stand_id,
                    project = project.name,
                );
                let path = write(&dir.join("namespace.yaml"), &manifest).await?;
                StepOutcome::done(
                    json!({ "dry_run": true, "rendered": path, "note": "dry-run: rendered, not applied" }),
                )
            }
            StepName::Database => return database_step(self.credentials.as_deref(), run, project).await,
            StepName::Secrets => {
                let gathered = match gather_secrets(&self.pool, self.credentials.as_deref(), run, project).await? {
                    Ok(gathered) => gathered,
                    Err(reason) => return Ok(StepOutcome::skipped(reason)),
                };
                // Keys only: secret values never reach the dry-run folder.
                let manifest: Vec<Value> = gathered
                    .secrets
                    .iter()
                    .map(|(name, data)| json!({ "kind": "Secret", "name": name, "keys": redacted(data), "values": "redacted" }))
                    .collect();
                let path =
                    write(&dir.join("secrets.json"), &serde_json::to_string_pretty(&manifest).expect("json")).await?;
                gathered.delivered(self.credentials.as_deref(), run).await?;
                let mut detail = gathered.detail;
                detail["rendered"] = json!(path);
                detail["note"] =
                    json!("dry-run: credentials issued for real, Secrets rendered with redacted values, not applied");
                StepOutcome::done(detail)
            }
            StepName::Image => {
                let step = ImageStep {
                    pool: &self.pool,
                    config: &self.config,
                    registries: self.registries.as_deref(),
                    builder: None::<&NoBuilder>,
                };
                let mut outcome = step.run(run, project, &plan).await?;
                if outcome.detail.get("digest").is_some()
                    && let Some((image, _)) = pull_login(self.registries.as_deref(), &self.config, project, &plan)?
                {
                    outcome.detail["pull_secret"] = json!({
                        "name": crate::cluster::resources::PULL_SECRET_NAME,
                        "type": "kubernetes.io/dockerconfigjson",
                        "registry": image.registry(),
                        "values": "redacted",
                        "note": "dry-run: not applied",
                    });
                }
                outcome
            }
            StepName::Deploy => {
                let plan = super::image::pinned(&self.pool, run, plan).await?;
                let manifests = self.helm.template(&plan.release).await?;
                let path = write(&dir.join("manifests.yaml"), &manifests).await?;
                StepOutcome::done(json!({
                    "dry_run": true,
                    "release": plan.release.name,
                    "image_tag": plan.image_tag,
                    "image": plan.image,
                    "rendered": path,
                    "mocks": mocks_in(&manifests),
                    "note": "dry-run: helm template, nothing installed",
                }))
            }
            StepName::Migrate if project.migrate.is_empty() => {
                StepOutcome::skipped("the project has no migrate command")
            }
            StepName::Migrate => {
                StepOutcome::done(json!({ "dry_run": true, "would_run": project.migrate, "note": "dry-run: not run" }))
            }
            StepName::Verify => StepOutcome::done(
                json!({ "dry_run": true, "note": "dry-run: no cluster, rollout and 5xx probes not checked" }),
            ),
            StepName::Smoke if project.smoke.is_empty() => StepOutcome::skipped("the project has no smoke command"),
            StepName::Smoke => StepOutcome::done(
                json!({ "dry_run": true, "would_run": project.smoke, "note": "dry-run: no cluster, not run" }),
            ),
            StepName::Rollback => StepOutcome::done(json!({ "dry_run": true, "note": "dry-run: nothing was applied" })),
            StepName::Cancel => lifecycle::cancel(&self.pool, run).await?,
            StepName::Deactivate => lifecycle::deactivate(&self.pool, &self.config, run).await?,
            StepName::Revoke => lifecycle::revoke(self.credentials.as_deref(), run).await?,
            // The stand's folder stands for its namespace: removed whole, like the namespace would be.
            StepName::Uninstall => {
                let existed = dry_run::remove_folder(&dir)
                    .await
                    .map_err(|e| StepError::transient("io", format!("removing {}: {e}", dir.display())))?;
                StepOutcome::done(json!({ "dry_run": true, "removed": dir, "existed": existed }))
            }
            StepName::Drop => lifecycle::drop(&self.pool, self.credentials.as_deref(), run).await?,
            StepName::Extend => lifecycle::extend(&self.pool, &self.config, run).await?.0,
            StepName::Teardown => return Err(retired()),
            StepName::Report => self.report(run, &dir).await?,
        })
    }

    /// The report, with a copy in the stand's folder.
    async fn report(&self, run: &RunContext, dir: &Path) -> Result<StepOutcome, StepError> {
        // A copy beside the manifests, but never a folder recreated after a teardown removed it.
        let copy = dir.exists().then(|| dir.join("report.md"));
        lifecycle::queue_report(&self.pool, &self.config, run.stand_id, Some(run.run_id), Utc::now(), copy.as_deref())
            .await
    }
}

/// The single `teardown` step of runs recorded before teardown had steps of its own; never planned now.
pub(super) fn retired() -> StepError {
    StepError::permanent("retired_step", "the single teardown step was replaced by cancel … drop")
}

/// The run's project; a run of a project removed from the config since it was queued fails for good.
pub(super) fn project_of<'a>(config: &'a Config, run: &RunContext) -> Result<&'a ProjectConfig, StepError> {
    config
        .projects
        .iter()
        .find(|p| p.name == run.project)
        .ok_or_else(|| StepError::permanent("project_unknown", format!("project {:?} is not configured", run.project)))
}

impl From<CredentialError> for StepError {
    fn from(e: CredentialError) -> Self {
        if e.is_transient() {
            StepError::transient(e.label(), e.to_string())
        } else {
            StepError::permanent(e.label(), e.to_string())
        }
    }
}

pub(super) const NO_SECRETS: &str =
    "no [postgres] or [vault] KV path (project team and service) configured: the stand gets no credentials";

/// The database step, real in both modes when `[postgres]` is configured.
pub(super) async fn database_step(
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

/// The Secrets a stand's app gets: its KV values, and a new login for its database.
pub(super) struct Gathered {
    pub secrets: Vec<(&'static str, BTreeMap<String, SecretString>)>,
    /// What the step records: names, paths, keys, the login's user and expiry; never a value.
    pub detail: Value,
    credential: Option<i64>,
}

impl Gathered {
    /// Once the Secrets are in place, the stand's earlier logins are replaced: the keeper revokes
    /// them after a grace period, so pods still rolling keep working meanwhile.
    pub async fn delivered(&self, credentials: Option<&StandCredentials>, run: &RunContext) -> Result<(), StepError> {
        if let (Some(c), Some(id)) = (credentials, self.credential) {
            c.supersede_app(run.stand_id, id).await?;
        }
        Ok(())
    }
}

/// Why a fork's stand gets nothing from the secrets step, nor a login for its migrations.
pub(super) const FORK_NO_SECRETS: &str =
    "pull request from a fork: the stand gets no secrets and no logins (its code is not the project's)";

/// Whether the stand was built from a fork's pull request (`forks = "allow"`).
pub(super) async fn is_fork(pool: &PgPool, stand_id: i64) -> Result<bool, StepError> {
    sqlx::query_scalar("select fork from stands where stand_id = $1")
        .bind(stand_id)
        .fetch_one(pool)
        .await
        .map_err(|e| StepError::transient("database", e.to_string()))
}

/// The secrets step's values, or why there are none (a fork's stand; nothing configured).
pub(super) async fn gather_secrets(
    pool: &PgPool,
    credentials: Option<&StandCredentials>,
    run: &RunContext,
    project: &ProjectConfig,
) -> Result<Result<Gathered, &'static str>, StepError> {
    if is_fork(pool, run.stand_id).await? {
        return Ok(Err(FORK_NO_SECRETS));
    }
    let Some(c) = credentials else { return Ok(Err(NO_SECRETS)) };
    let mut gathered = Gathered { secrets: Vec::new(), detail: json!({}), credential: None };
    if let (Some(team), Some(service)) = (&project.team, &project.service)
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
    Ok(if gathered.secrets.is_empty() { Err(NO_SECRETS) } else { Ok(gathered) })
}

impl<H: Helm> StepRunner for DryRunSteps<H> {
    async fn started(&self, run: &RunContext) {
        if let Err(e) = self.report(run, &self.folder(run)).await {
            tracing::warn!(error = %e, "could not queue the report of a started run");
        }
    }

    async fn run(&self, step: StepName, run: &RunContext) -> Result<StepOutcome, StepError> {
        let project = project_of(&self.config, run)?;
        let dir = self.folder(run);
        if run.kind == "deploy" {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| StepError::transient("io", format!("creating {}: {e}", dir.display())))?;
        }
        let outcome = self.step(step, run, project).await?;
        // The step's record beside the manifests, as DESIGN.md's dry-run mode asks; never recreating
        // the folder a teardown removed.
        if dir.exists() {
            let record =
                json!({ "run": run.number, "step": step, "skipped": outcome.skipped, "detail": outcome.detail });
            let name = format!("steps/{:04}-{}.json", run.number, step.as_str());
            write(&dir.join(name), &serde_json::to_string_pretty(&record).expect("json")).await?;
            // One line per execution, never rewritten: what shows that a resumed run did not do a
            // step twice (a step's row counts attempts started, not executions).
            let line = json!({ "run": run.number, "step": step, "at": chrono::Utc::now(), "pid": std::process::id() });
            append(&dir.join("executions.jsonl"), &format!("{line}\n")).await?;
        }
        Ok(outcome)
    }
}

pub(super) async fn write(path: &Path, text: &str) -> Result<PathBuf, StepError> {
    let io = |e: std::io::Error| StepError::transient("io", format!("writing {}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    tokio::fs::write(path, text).await.map_err(io)?;
    Ok(path.to_path_buf())
}

async fn append(path: &Path, line: &str) -> Result<(), StepError> {
    use tokio::io::AsyncWriteExt;
    let io = |e: std::io::Error| StepError::transient("io", format!("appending to {}: {e}", path.display()));
    let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await.map_err(io)?;
    file.write_all(line.as_bytes()).await.map_err(io)
}

/// The chart names each mock's Service `<release>-mock-<name>`.
pub(super) fn mocks_in(manifests: &str) -> Vec<String> {
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
