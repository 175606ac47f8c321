//! The image step, the same in both modes (DESIGN.md): waits until the stand's tag
//! `draft-<branch>-<sha7>` is in the registry, builds it in the cluster when CI did not and the
//! project says so, and records the digest the deploy then pins. No stand is deployed with an image
//! that is not there: a missing image fails the run before `deploy`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::lifecycle;
use super::plan::StandPlan;
use super::step::{RunContext, StepError, StepName, StepOutcome};
use crate::config::{Config, ProjectBuild, ProjectConfig, RegistryConfig};
use crate::registry::{ImageRef, Lookup, Manifest, OciRegistry, Registry, RegistryError};
use crate::stand::Failure;
use crate::store::runs;

/// After a build reports success, the image is looked for this long (a registry behind a CDN or
/// with replicas can take a moment to show a fresh tag) before the run fails.
const AFTER_BUILD: Duration = Duration::from_secs(60);

/// One registry client per project that has registry settings (its own or `[registry]`).
pub struct Registries<R = OciRegistry> {
    by_project: HashMap<String, Arc<R>>,
}

impl Registries<OciRegistry> {
    pub fn from_config(config: &Config) -> Result<Self, RegistryError> {
        let mut by_project = HashMap::new();
        for p in &config.projects {
            if let Some(settings) = p.registry(config) {
                by_project.insert(p.name.clone(), Arc::new(OciRegistry::new(settings)?));
            }
        }
        Ok(Registries { by_project })
    }
}

impl<R> Registries<R> {
    pub fn new(by_project: HashMap<String, Arc<R>>) -> Self {
        Registries { by_project }
    }

    pub fn for_project(&self, project: &str) -> Option<&Arc<R>> {
        self.by_project.get(project)
    }
}

/// What a build is asked to make.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub image: ImageRef,
    pub build: ProjectBuild,
    /// The repository and commit to build.
    pub repo: String,
    pub sha: String,
}

/// How a build ended.
#[derive(Debug, Clone)]
pub struct Built {
    pub job: String,
    pub succeeded: bool,
    pub reason: String,
    pub ran_seconds: Option<f64>,
    pub log_tail: Option<String>,
}

/// Builds an image and waits for the build to end (kubernetes mode: a BuildKit Job).
pub trait Builder: Send + Sync {
    fn build(&self, run: &RunContext, request: &BuildRequest) -> impl Future<Output = Result<Built, StepError>> + Send;
}

/// No builder: dry-run mode records what would be built.
pub struct NoBuilder;

impl Builder for NoBuilder {
    async fn build(&self, _: &RunContext, _: &BuildRequest) -> Result<Built, StepError> {
        Err(StepError::permanent("no_builder", "this mode builds nothing"))
    }
}

/// What the image step needs to know.
pub struct ImageStep<'a, R, B> {
    pub pool: &'a PgPool,
    pub config: &'a Config,
    pub registries: Option<&'a Registries<R>>,
    /// `None` in dry-run mode: a build that would run is recorded, not run.
    pub builder: Option<&'a B>,
}

/// How a wait ended.
enum Waited {
    Found(Manifest),
    Missing { last_error: Option<RegistryError> },
}

struct Wait<'a> {
    looks: u32,
    started: Instant,
    settings: &'a RegistryConfig,
}

impl<R: Registry, B: Builder> ImageStep<'_, R, B> {
    pub async fn run(
        &self,
        run: &RunContext,
        project: &ProjectConfig,
        plan: &StandPlan,
    ) -> Result<StepOutcome, StepError> {
        let Some(settings) = project.registry(self.config) else {
            return Ok(StepOutcome::skipped("no [registry] configured: the image is not checked"));
        };
        let Some(repository) = &project.image else {
            return Ok(StepOutcome::skipped("the project names no image: nothing to check"));
        };
        let registry = self.registries.and_then(|r| r.for_project(&project.name)).ok_or_else(|| {
            StepError::permanent("registry_unconfigured", format!("no registry client for project {}", project.name))
        })?;
        let image = ImageRef::parse(repository, &plan.image_tag)?;
        let mut wait = Wait { looks: 0, started: Instant::now(), settings };
        let first = match &project.build {
            // One look: a rerun of a commit already built needs no second build.
            Some(b) if b.always => Duration::ZERO,
            Some(b) => b.wait_for_ci.unwrap_or(settings.wait),
            None => settings.wait,
        };
        let since = self.waiting_since(run).await?;
        let waited = self.wait(run, registry.as_ref(), &image, &mut wait, first, since, true).await?;
        let last_error = match waited {
            Waited::Found(manifest) => return Ok(found(&image, &manifest, &wait, None)),
            Waited::Missing { last_error } => last_error,
        };
        let Some(build) = &project.build else {
            return Err(missing(&image, settings.wait, last_error));
        };
        let request = BuildRequest {
            image: image.clone(),
            build: build.clone(),
            repo: project.repo.clone(),
            sha: run.sha.clone().unwrap_or_default(),
        };
        let Some(builder) = self.builder else {
            return Ok(StepOutcome::done(json!({
                "dry_run": true,
                "image": image.tagged(),
                "registry": image.registry(),
                "present": false,
                "would_build": build_detail(&request, &self.config.build.cache_tag),
                "note": format!("dry-run: {} is not in the registry; kubernetes mode would build it", image.tagged()),
            })));
        };
        self.progress(run, json!({ "building": image.tagged(), "registry": image.registry() })).await;
        let built = builder.build(run, &request).await?;
        if !built.succeeded {
            let tail = built.log_tail.as_deref().map(|l| format!("\n{l}")).unwrap_or_default();
            return Err(StepError::permanent(
                "build_failed",
                format!(
                    "building {} failed (job {}: {}); nothing was deployed{tail}",
                    image.tagged(),
                    built.job,
                    built.reason
                ),
            ));
        }
        match self.wait(run, registry.as_ref(), &image, &mut wait, AFTER_BUILD, None, false).await? {
            Waited::Found(manifest) => Ok(found(&image, &manifest, &wait, Some(&built))),
            Waited::Missing { last_error } => Err(StepError::permanent(
                "image_missing",
                format!(
                    "the build (job {}) ended well but {} is not in registry {}{}; nothing was deployed",
                    built.job,
                    image.tagged(),
                    image.registry(),
                    last_error.map(|e| format!(" (last look: {e})")).unwrap_or_default()
                ),
            )),
        }
    }

    /// Looks until the image is there or `limit` has passed since `since` (a resumed run goes on
    /// with the wait it had, rather than starting a new one), pausing `poll`, doubled after each
    /// miss up to `poll_max`, with jitter. With `announce`, the first miss is told to the PR
    /// ("waiting for image"); a look after a build has already said "building".
    #[allow(clippy::too_many_arguments)]
    async fn wait(
        &self,
        run: &RunContext,
        registry: &R,
        image: &ImageRef,
        wait: &mut Wait<'_>,
        limit: Duration,
        since: Option<DateTime<Utc>>,
        announce: bool,
    ) -> Result<Waited, StepError> {
        let already = since.and_then(|s| (Utc::now() - s).to_std().ok()).unwrap_or_default();
        let began = Instant::now();
        let deadline = began + limit.saturating_sub(already);
        let mut pause = wait.settings.poll;
        let mut announced = false;
        let mut last_error: Option<RegistryError>;
        loop {
            wait.looks += 1;
            match registry.lookup(image).await {
                Ok(Lookup::Found(manifest)) => return Ok(Waited::Found(manifest)),
                Ok(Lookup::Absent) => last_error = None,
                Err(e) if e.is_transient() => {
                    tracing::info!(image = %image, error = %e, "registry look failed; looking again");
                    last_error = Some(e);
                }
                Err(e) => return Err(StepError::permanent(e.label(), format!("{e}; nothing was deployed"))),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Waited::Missing { last_error });
            }
            if announce && !announced {
                announced = true;
                let since = since.unwrap_or_else(Utc::now);
                let detail = json!({
                    "waiting_for": image.tagged(),
                    "registry": image.registry(),
                    "since": since,
                    "wait_seconds": limit.as_secs(),
                });
                self.progress(run, detail).await;
            }
            let jittered = pause.mul_f64(0.8 + fastrand::f64() * 0.4);
            tokio::time::sleep(jittered.min(deadline - now)).await;
            pause = (pause * 2).min(wait.settings.poll_max);
        }
    }

    /// When this run's image step first started waiting, if an earlier attempt recorded it.
    async fn waiting_since(&self, run: &RunContext) -> Result<Option<DateTime<Utc>>, StepError> {
        let since = runs::waiting_since(self.pool, run.run_id, StepName::Image)
            .await
            .map_err(|e| StepError::transient("database", e.to_string()))?;
        Ok(since.and_then(|s| DateTime::parse_from_rfc3339(&s).ok()).map(|t| t.with_timezone(&Utc)))
    }

    /// Records what the running step is waiting for and tells the PR. Best effort: the wait goes
    /// on if either fails.
    async fn progress(&self, run: &RunContext, detail: Value) {
        if let Err(e) = runs::record_waiting(self.pool, run.run_id, StepName::Image, &detail).await {
            tracing::warn!(error = %e, "could not record the image step's progress");
            return;
        }
        let queued =
            lifecycle::queue_report(self.pool, self.config, run.stand_id, Some(run.run_id), Utc::now(), None).await;
        if let Err(e) = queued {
            tracing::warn!(error = %e, "could not queue the report of a waiting run");
        }
    }
}

fn found(image: &ImageRef, manifest: &Manifest, wait: &Wait<'_>, built: Option<&Built>) -> StepOutcome {
    let mut detail = json!({
        "image": image.tagged(),
        "registry": image.registry(),
        "digest": manifest.digest,
        "pinned": image.pinned(&manifest.digest),
        "media_type": manifest.media_type,
        "index": manifest.is_index(),
        "looks": wait.looks,
        "waited_seconds": wait.started.elapsed().as_secs_f64(),
    });
    if let Some(b) = built {
        detail["built"] = json!({ "job": b.job, "ran_seconds": b.ran_seconds, "log_tail": b.log_tail });
    }
    StepOutcome::done(detail)
}

fn missing(image: &ImageRef, wait: Duration, last_error: Option<RegistryError>) -> StepError {
    let (label, why) = match last_error {
        Some(e) => ("registry_unreachable", format!(" (the registry's last answer: {e})")),
        None => ("image_missing", String::new()),
    };
    StepError::permanent(
        label,
        format!(
            "image {} was not in registry {} after waiting {}{why}; nothing was deployed. Push it from CI, or set \
             the project's build to have draftd build it",
            image.tagged(),
            image.registry(),
            humantime::format_duration(wait),
        ),
    )
}

/// What a build would make and from where, for the record and `draftd plan`.
pub fn build_detail(request: &BuildRequest, cache_tag: &str) -> Value {
    json!({
        "repo": request.repo,
        "sha": request.sha,
        "context": request.build.context,
        "dockerfile": request.build.dockerfile,
        "push": request.image.tagged(),
        "cache": format!("{}/{}:{cache_tag}", request.image.registry(), request.image.repository()),
    })
}

/// The stand's pull Secret (`.dockerconfigjson`) when its registry needs a login and the settings
/// hand it on (`pull_secret`), with the image it is for.
pub(super) fn pull_login(
    registries: Option<&Registries>,
    config: &Config,
    project: &ProjectConfig,
    plan: &StandPlan,
) -> Result<Option<(ImageRef, secrecy::SecretString)>, StepError> {
    let (Some(settings), Some(repository)) = (project.registry(config), &project.image) else { return Ok(None) };
    let Some(registry) = registries.and_then(|r| r.for_project(&project.name)) else { return Ok(None) };
    if !settings.pull_secret {
        return Ok(None);
    }
    let image = ImageRef::parse(repository, &plan.image_tag)?;
    Ok(registry.login_json(&image)?.map(|json| (image, json)))
}

/// The plan of a run whose image step found the image: the deploy and its Jobs run `image@digest`.
pub(super) async fn pinned(pool: &PgPool, run: &RunContext, mut plan: StandPlan) -> Result<StandPlan, StepError> {
    let digest =
        runs::pinned_digest(pool, run.run_id).await.map_err(|e| StepError::transient("database", e.to_string()))?;
    if let Some(digest) = digest {
        plan.pin(&digest);
    }
    Ok(plan)
}
