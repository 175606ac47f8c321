//! The real step runner of `[cluster] mode = "dry-run"`: every step records what it would do under
//! `<dry_run_dir>/<namespace>/` (rendered manifests, one JSON record per step, the report), applies
//! nothing, and says so. Steps whose system is not configured are `skipped` with the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::shared::{database_step, gather_secrets, mocks_in, project_of, retired, step_plan, write};
use crate::cluster::dry_run;
use crate::config::{Config, ProjectConfig};
use crate::credentials::access::AccessKey;
use crate::credentials::{StandCredentials, redacted};
use crate::helm::Helm;
use crate::pipeline::image::{ImageStep, NoBuilder, Registries, pull_login};
use crate::pipeline::lifecycle;
use crate::pipeline::step::{RunContext, StepError, StepName, StepOutcome, StepRunner};

pub struct DryRunSteps<H> {
    pool: PgPool,
    config: Arc<Config>,
    helm: Arc<H>,
    credentials: Option<Arc<StandCredentials>>,
    registries: Option<Arc<Registries>>,
    /// `[access]`'s key: private stands get an access token per run.
    access: Option<AccessKey>,
}

impl<H: Helm> DryRunSteps<H> {
    pub fn new(pool: PgPool, config: Arc<Config>, helm: Arc<H>) -> Self {
        Self { pool, config, helm, credentials: None, registries: None, access: None }
    }

    /// The registries the image step looks in (real in both modes).
    pub fn with_registries(mut self, registries: Option<Arc<Registries>>) -> Self {
        self.registries = registries;
        self
    }

    /// The key private stands' access tokens are made with (`[access]`).
    pub fn with_access(mut self, key: Option<AccessKey>) -> Self {
        self.access = key;
        self
    }

    /// The stand databases and credentials of `[postgres]` and `[vault]` (real in both modes).
    pub fn with_credentials(mut self, credentials: Option<Arc<StandCredentials>>) -> Self {
        self.credentials = credentials;
        self
    }

    fn folder(&self, run: &RunContext) -> PathBuf {
        self.config.cluster.dry_run_dir.join(run.namespace.as_str())
    }

    async fn step(&self, step: StepName, run: &RunContext, project: &ProjectConfig) -> Result<StepOutcome, StepError> {
        let plan = step_plan(&self.pool, &self.config, step, run, project).await?;
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
                let gathered = match gather_secrets(
                    &self.pool,
                    self.credentials.as_deref(),
                    (&*self.config, self.access.as_ref()),
                    run,
                    project,
                )
                .await?
                {
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
                gathered.delivered(&self.pool, self.credentials.as_deref(), run).await?;
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
                let plan = crate::pipeline::image::pinned(&self.pool, run, plan).await?;
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
            StepName::Sleep => {
                return super::sleep::sleep_dry_run(&self.pool, self.credentials.as_deref(), run, &dir).await;
            }
            StepName::Wake => return super::sleep::wake_dry_run(&self.pool, run, &dir).await,
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

impl<H: Helm> StepRunner for DryRunSteps<H> {
    async fn started(&self, run: &RunContext) {
        if let Err(e) = self.report(run, &self.folder(run)).await {
            tracing::warn!(error = %e, "could not queue the report of a started run");
        }
    }

    async fn run(&self, step: StepName, run: &RunContext) -> Result<StepOutcome, StepError> {
        let project = project_of(&self.config, run)?;
        let dir = self.folder(run);
        if run.kind.deploys() {
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

async fn append(path: &Path, line: &str) -> Result<(), StepError> {
    use tokio::io::AsyncWriteExt;
    let io = |e: std::io::Error| StepError::transient("io", format!("appending to {}: {e}", path.display()));
    let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await.map_err(io)?;
    file.write_all(line.as_bytes()).await.map_err(io)
}
