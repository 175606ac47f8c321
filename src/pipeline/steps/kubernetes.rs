//! The step runner of `[cluster] mode = "kubernetes"`: the stand's namespace, Jobs, rollout checks
//! and teardown through [`Cluster`], the release through [`Helm`], the report as in dry-run mode.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;

use super::shared::{
    FORK_NO_SECRETS, access_key, database_step, gather_secrets, mocks_in, project_of, provenance, retired, step_plan,
};
use crate::cluster::build::{BuildJob, GitAuth};
use crate::cluster::jobs::JobRequest;
use crate::cluster::verify::{self, UrlProber};
use crate::cluster::{Cluster, StandMeta};
use crate::config::{Config, ForgeKind, ProjectConfig};
use crate::credentials::access::AccessKey;
use crate::credentials::{StandCredentials, stand_db};
use crate::forge::client::AnyForge;
use crate::helm::Helm;
use crate::pipeline::image::{BuildRequest, Builder, Built, ImageStep, Registries, pull_login};
use crate::pipeline::lifecycle;
use crate::pipeline::plan::StandPlan;
use crate::pipeline::step::{RunContext, StepError, StepName, StepOutcome, StepRunner};
use crate::registry::Registry as _;
use crate::stand::Failure;
use crate::store::{runs, stands};

/// Finished Jobs stay this long for `kubectl logs`, then Kubernetes removes them.
const JOB_KEEP: Duration = Duration::from_secs(3600);
/// Log lines of a failed Job or container quoted in the step's error (the report shows it).
const QUOTED_LINES: usize = 20;
/// A step error is shown in the PR comment: keep it readable.
const MAX_ERROR_CHARS: usize = 4000;

pub struct KubernetesSteps<H, C> {
    pool: PgPool,
    config: Arc<Config>,
    helm: Arc<H>,
    cluster: Arc<C>,
    credentials: Option<Arc<StandCredentials>>,
    registries: Option<Arc<Registries>>,
    /// The forges, for the read-only token a build fetches the repository with.
    forges: Arc<Vec<AnyForge>>,
    /// `[access]`'s key: private stands get an access token per run.
    access: Option<AccessKey>,
}

fn db(e: sqlx::Error) -> StepError {
    StepError::transient("database", e.to_string())
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl<H: Helm, C: Cluster> KubernetesSteps<H, C> {
    pub fn new(pool: PgPool, config: Arc<Config>, helm: Arc<H>, cluster: Arc<C>) -> Self {
        Self {
            pool,
            config,
            helm,
            cluster,
            credentials: None,
            registries: None,
            forges: Arc::new(Vec::new()),
            access: None,
        }
    }

    /// The registries the image step looks in.
    pub fn with_registries(mut self, registries: Option<Arc<Registries>>) -> Self {
        self.registries = registries;
        self
    }

    /// The forge clients; a build of a private repository needs its forge's read-only token.
    pub fn with_forges(mut self, forges: Arc<Vec<AnyForge>>) -> Self {
        self.forges = forges;
        self
    }

    /// Where BuildKit fetches the repository from: the forge's web host over HTTPS.
    fn git_url(&self, project: &ProjectConfig) -> String {
        match project.forge {
            ForgeKind::Github => {
                let api = self.config.github.api_url.trim_end_matches('/');
                // github.com's API lives on api.github.com; GitHub Enterprise's under /api/v3.
                let web = if api == "https://api.github.com" {
                    "https://github.com".to_owned()
                } else {
                    api.trim_end_matches("/api/v3").to_owned()
                };
                format!("{web}/{}.git", project.repo)
            }
            ForgeKind::Gitlab => format!("{}/{}.git", self.config.gitlab.url.trim_end_matches('/'), project.repo),
        }
    }

    /// A token that can only read the project's repository and expires within the hour: a GitHub
    /// App installation token narrowed to the repository's contents, or a GitLab deploy token with
    /// `read_repository` (whose id is returned, to revoke it once the build is over).
    async fn read_only_token(
        &self,
        run: &RunContext,
        project: &ProjectConfig,
    ) -> Result<(GitAuth, Option<u64>), StepError> {
        let unsupported = || {
            StepError::permanent(
                "build_no_token",
                format!(
                    "building {} needs a token that can only read the repository and expires within the hour: \
                     configure draftd as a GitHub App ([github] app_id) or give its GitLab token the Maintainer \
                     role (for a deploy token), or set the project's build.public = true for a public repository",
                    project.repo,
                ),
            )
        };
        let forge_error = |e: crate::forge::client::ForgeError| {
            if e.is_transient() {
                StepError::transient("forge_token", e.to_string())
            } else {
                StepError::permanent("forge_token", e.to_string())
            }
        };
        for forge in self.forges.iter() {
            match (forge, project.forge) {
                (AnyForge::Github(github), ForgeKind::Github) => {
                    return match github.read_only_token(&project.repo).await.map_err(forge_error)? {
                        Some((token, _expires)) => Ok((GitAuth::Token(token), None)),
                        None => Err(unsupported()),
                    };
                }
                (AnyForge::Gitlab(gitlab), ForgeKind::Gitlab) => {
                    let name = format!("draftd-build-{}-{}", run.stand_id, run.number);
                    let (id, user, token, _expires) =
                        gitlab.read_only_token(&project.repo, &name).await.map_err(forge_error)?;
                    use base64::Engine as _;
                    use secrecy::ExposeSecret as _;
                    let basic =
                        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", token.expose_secret()));
                    return Ok((GitAuth::Header(secrecy::SecretString::from(format!("basic {basic}"))), Some(id)));
                }
                _ => {}
            }
        }
        Err(unsupported())
    }

    /// The key private stands' access tokens are made with (`[access]`).
    pub fn with_access(mut self, key: Option<AccessKey>) -> Self {
        self.access = key;
        self
    }

    /// The stand databases and credentials of `[postgres]` and `[vault]`.
    pub fn with_credentials(mut self, credentials: Option<Arc<StandCredentials>>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Where the migrate and smoke Jobs reach the app: its Service inside the namespace (the chart's
    /// Service is named after the release, port 80). Never the public URL: the namespace's own egress
    /// policy keeps pods from the ingress controller, and the public host may have no certificate yet.
    fn service_url(plan: &StandPlan) -> String {
        format!("http://{}.{}.svc", plan.release.name, plan.release.namespace)
    }

    async fn stand_meta(&self, run: &RunContext, project: &ProjectConfig) -> Result<StandMeta, StepError> {
        let expires = stands::expires_at(&self.pool, run.stand_id).await.map_err(db)?;
        let ttl = project.ttl.unwrap_or(self.config.stands.ttl);
        Ok(StandMeta {
            namespace: run.namespace.to_string(),
            stand_id: run.stand_id,
            project: project.name.clone(),
            expires_at: expires.unwrap_or_else(|| Utc::now() + ttl),
            service_account_token: project.service_account_token,
        })
    }

    /// The `detail` of a step of this run, when it recorded one.
    async fn detail_of(&self, run: &RunContext, step: StepName) -> Result<serde_json::Value, StepError> {
        let detail = runs::step_detail(&self.pool, run.run_id, step).await.map_err(db)?;
        Ok(detail.unwrap_or_else(|| json!({})))
    }

    async fn job(
        &self,
        run: &RunContext,
        project: &ProjectConfig,
        plan: &StandPlan,
        purpose: &str,
        command: &[String],
    ) -> Result<StepOutcome, StepError> {
        let Some(image) = plan.image.clone() else {
            return Err(StepError::permanent(
                "no_image",
                format!("project {} sets no image, so its {purpose} command has nothing to run in", project.name),
            ));
        };
        let mut request = JobRequest {
            purpose: purpose.to_owned(),
            run_number: run.number,
            image,
            command: command.to_vec(),
            env: BTreeMap::from([("STAND_URL".to_owned(), Self::service_url(plan))]),
            secrets: Vec::new(),
            deadline: self.config.cluster.job_deadline,
            keep_for: JOB_KEEP,
        };
        if let Some(url) = &plan.url {
            // As the chart's own smoke Job has it: for checks of what users see (links, redirects).
            request.env.insert("PUBLIC_URL".to_owned(), url.clone());
        }
        let stand = self.stand_meta(run, project).await?;
        // A private stand's URL lets its Jobs in with the run's access token (`X-Draftd-Access`).
        if access_key(&self.pool, &self.config, self.access.as_ref(), run, project).await?.is_some() {
            request.secrets.push(crate::credentials::access::ACCESS_SECRET.to_owned());
        }
        // Migrations get a login of their own, never the admin URL, revoked as soon as the Job ends.
        let own_login = match &self.credentials {
            Some(c) if purpose == "migrate" && c.has_databases() => {
                let db = stand_db(&run.namespace, None);
                let issued = c.issue(run.stand_id, Some(run.run_id), "migrate", &db).await?;
                let secret = format!("{}-database", request.name());
                let applied = match c.secret_data(&db, &issued) {
                    Ok(data) => self.cluster.apply_secret(&stand, &secret, &data).await.map_err(StepError::from),
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = applied {
                    c.revoke(issued.credential_id).await.ok();
                    return Err(e);
                }
                request.secrets.push(secret);
                Some((c.clone(), issued.credential_id))
            }
            _ => None,
        };
        let outcome = self.cluster.run_job(&stand, &request).await;
        // Revoked once the Job is known to be over. A transient error (the API server unreachable
        // mid-wait) says nothing of the Job, which may still be migrating with this login: the
        // retried step waits for that same Job, and the keeper revokes the login at its end anyway.
        let over = outcome.as_ref().map_or_else(|e| !e.is_transient(), |_| true);
        if let Some((c, id)) = own_login.filter(|_| over)
            && let Err(e) = c.revoke(id).await
        {
            // The keeper revokes it at its expiry if this fails.
            tracing::warn!(credential = id, error = %e, "could not revoke the migrate login");
        }
        let outcome = outcome?;
        if outcome.succeeded {
            return Ok(StepOutcome::done(json!({
                "job": outcome.job,
                "ran_seconds": outcome.ran_for.map(|d| d.as_secs_f64()),
                "exit_code": outcome.exit_code,
                "log_tail": outcome.log_tail.as_deref().map(|l| last_lines(l, QUOTED_LINES)),
            })));
        }
        let exit = outcome.exit_code.map(|c| format!(", exit code {c}")).unwrap_or_default();
        let tail =
            outcome.log_tail.as_deref().map(|l| format!("\n{}", last_lines(l, QUOTED_LINES))).unwrap_or_default();
        Err(StepError::permanent(
            &format!("{purpose}_failed"),
            format!("job {} failed ({}{exit}){tail}", outcome.job, outcome.reason),
        ))
    }

    /// Rollout, then the 5xx gate; on failure the error carries the diagnostics.
    async fn verify(&self, run: &RunContext, plan: &StandPlan) -> Result<StepOutcome, StepError> {
        let v = &self.config.cluster.verify;
        let ns = run.namespace.as_str();
        let release = plan.release.name.as_str();
        let checked = match self.cluster.wait_rollout(ns, release, v.rollout_timeout).await {
            Err(e) => Err(StepError::from(e)),
            Ok(workloads) => {
                // A private stand lets the probe in with this run's access token.
                let token = plan.release.set.contains_key("access.authUrl").then_some(self.access.as_ref()).flatten();
                let token = token.map(|key| key.token(run.stand_id, run.run_id).0);
                let gate = match (&plan.url, &plan.host, &v.ingress_address) {
                    (Some(_), Some(host), Some(address)) => {
                        let prober = UrlProber::through(address, host, &v.probe_path).with_access(token);
                        verify::gate(&prober, v.probes, v.probe_window, v.probe_timeout).await
                    }
                    (Some(url), _, _) => {
                        let prober =
                            UrlProber::new(format!("{}{}", url.trim_end_matches('/'), v.probe_path)).with_access(token);
                        verify::gate(&prober, v.probes, v.probe_window, v.probe_timeout).await
                    }
                    (None, _, _) => {
                        let prober = self.cluster.service_prober(ns, release, "http", &v.probe_path);
                        verify::gate(&prober, v.probes, v.probe_window, v.probe_timeout).await
                    }
                };
                gate.map(|report| (workloads, report)).map_err(|e| StepError::permanent("probe_failed", e.to_string()))
            }
        };
        match checked {
            Ok((workloads, probes)) => {
                // The revision that passed: what a later failed deploy rolls back to.
                let deploy = self.detail_of(run, StepName::Deploy).await?;
                Ok(StepOutcome::done(json!({
                    "revision": deploy["revision"],
                    "updated": deploy["updated"],
                    "workloads": workloads,
                    "probes": probes,
                })))
            }
            Err(mut e) => {
                match self.cluster.diagnose(ns).await {
                    Ok(d) => {
                        let summary = d.summary(QUOTED_LINES, MAX_ERROR_CHARS);
                        if !summary.is_empty() {
                            e.message = format!("{}\n{summary}", e.message);
                        }
                    }
                    Err(d) => e.message = format!("{}\n(diagnostics unavailable: {d})", e.message),
                }
                Err(e)
            }
        }
    }

    /// Revisions that passed verify in earlier runs of the stand, newest first, as `(revision, updated)`.
    /// This run's is left out, so a smoke test that fails after verify passed never rolls back to the
    /// revision it just failed.
    async fn verified_revisions(&self, run: &RunContext) -> Result<Vec<(u32, String)>, StepError> {
        let rows = runs::verified_revisions(&self.pool, run.stand_id, run.run_id).await.map_err(db)?;
        Ok(rows.into_iter().filter_map(|(r, u)| u32::try_from(r).ok().map(|r| (r, u))).collect())
    }

    /// DESIGN.md's rollback target: the newest revision of the live release, as `helm history` shows
    /// it now, that passed verify in an earlier run. A revision pruned by `--history-max`, or one of
    /// an earlier life of the release (numbers restart after an uninstall), is no target. Without
    /// one the release is uninstalled.
    async fn rollback(&self, run: &RunContext, plan: &StandPlan) -> Result<StepOutcome, StepError> {
        let (name, ns) = (&plan.release.name, &run.namespace);
        let verified = self.verified_revisions(run).await?;
        let history = self.helm.history(name, ns).await?;
        let target = verified
            .iter()
            .find_map(|(revision, updated)| history.iter().find(|r| r.is_complete() && r.is(*revision, updated)));
        let Some(target) = target else {
            self.helm.uninstall(name, ns).await?;
            let reason = if history.is_empty() {
                "the release has no revisions"
            } else {
                "no revision of the live release passed verify in an earlier run"
            };
            return Ok(StepOutcome::done(json!({ "uninstalled": true, "reason": reason })));
        };
        if history.last().is_some_and(|last| last.revision == target.revision && last.is_deployed()) {
            // Nothing was applied since (the deploy failed before helm made a revision).
            return Ok(StepOutcome::done(json!({
                "rolled_back_to": target.revision,
                "already_deployed": true,
                "revision": target.revision,
                "updated": target.updated,
            })));
        }
        self.helm.rollback(name, ns, target.revision).await?;
        let now = self.helm.history(name, ns).await?;
        let made = now.last().filter(|r| r.is_deployed());
        Ok(StepOutcome::done(json!({
            "rolled_back_to": target.revision,
            "revision": made.map(|r| r.revision),
            "updated": made.map(|r| r.updated.clone()),
        })))
    }

    /// Clears an operation on the release that never finished (helm killed, or draftd with it), which
    /// would refuse every later upgrade with "another operation is in progress": back to the last
    /// complete revision, or uninstalled when there was none. No helm of this stand can still be at
    /// work: draftd's helm runs in draftd's own process group and container and dies with it, its own
    /// `--timeout` ends it before draftd's, and the run's lease means the worker that started it is gone.
    async fn recover_pending(&self, plan: &StandPlan) -> Result<Option<serde_json::Value>, StepError> {
        let (name, ns) = (&plan.release.name, &plan.release.namespace);
        let history = self.helm.history(name, ns).await?;
        let Some(pending) = history.last().filter(|r| r.is_pending()) else { return Ok(None) };
        let found = format!("revision {} was left {}", pending.revision, pending.status);
        let Some(good) = history.iter().rev().find(|r| r.is_complete()) else {
            self.helm.uninstall(name, ns).await?;
            return Ok(Some(json!({ "found": found, "uninstalled": true })));
        };
        match self.helm.rollback(name, ns, good.revision).await {
            Ok(()) => Ok(Some(json!({ "found": found, "rolled_back_to": good.revision }))),
            // A half-applied operation can leave the cluster where helm's rollback cannot follow
            // ("original object … not found"). Without the unfinished revision's record the release
            // is back at its last complete revision, and the upgrade that follows reconciles the
            // objects (creating what is missing, adopting what the killed operation created).
            Err(e) => {
                tracing::warn!(release = %name, error = %e, "rollback of an unfinished operation failed; discarding its record");
                self.cluster.discard_pending_revision(ns, name, pending.revision).await?;
                Ok(Some(json!({ "found": found, "rollback_failed": e.to_string(), "discarded": pending.revision })))
            }
        }
    }

    /// The stand's Secrets from its logins and KV values; a release already running rolls onto them.
    async fn secrets_step(
        &self,
        run: &RunContext,
        project: &ProjectConfig,
        plan: &StandPlan,
    ) -> Result<StepOutcome, StepError> {
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
        let stand = self.stand_meta(run, project).await?;
        let mut all = BTreeMap::new();
        for (name, data) in &gathered.secrets {
            self.cluster.apply_secret(&stand, name, data).await?;
            all.extend(data.iter().map(|(k, v)| (format!("{name}/{k}"), v.clone())));
        }
        // A release already running rolls onto the new values; a first deploy reads them anyway.
        let checksum = crate::cluster::resources::secrets_checksum(&all);
        let rolled = self.cluster.roll_on_secrets(&run.namespace, &plan.release.name, &checksum).await?;
        gathered.delivered(&self.pool, self.credentials.as_deref(), run).await?;
        let mut detail = gathered.detail;
        detail["rolled"] = json!(rolled);
        Ok(StepOutcome::done(detail))
    }

    /// The image in the registry (or built), and the pull Secret its registry login needs.
    async fn image_step(
        &self,
        run: &RunContext,
        project: &ProjectConfig,
        plan: &StandPlan,
    ) -> Result<StepOutcome, StepError> {
        let step = ImageStep {
            pool: &self.pool,
            config: &self.config,
            registries: self.registries.as_deref(),
            builder: Some(self),
        };
        let mut outcome = step.run(run, project, plan).await?;
        if outcome.detail.get("digest").is_some()
            && let Some((image, json)) = pull_login(self.registries.as_deref(), &self.config, project, plan)?
        {
            let stand = self.stand_meta(run, project).await?;
            self.cluster.apply_pull_secret(&stand, &json).await?;
            outcome.detail["pull_secret"] = json!({
                "name": crate::cluster::resources::PULL_SECRET_NAME,
                "registry": image.registry(),
                "service_account": crate::cluster::resources::SERVICE_ACCOUNT_NAME,
            });
        }
        Ok(outcome)
    }

    /// helm upgrade --install of the stand's release, once the rendered chart fits the namespace's limits.
    async fn deploy_step(&self, run: &RunContext, plan: &StandPlan) -> Result<StepOutcome, StepError> {
        // Rendering first checks the chart and values before anything changes in the cluster,
        // and names the mocks for the report.
        let manifests = self.helm.template(&plan.release).await?;
        let misfits = crate::cluster::fit::misfits(&manifests, &self.config.cluster.limits);
        if !misfits.is_empty() {
            let lines: Vec<String> = misfits.iter().map(|m| format!("- {m}")).collect();
            return Err(StepError::permanent(
                "limits_refused",
                format!(
                    "the namespace's LimitRange ([cluster.limits]) would refuse these pods, so nothing was \
                     deployed:\n{}",
                    lines.join("\n")
                ),
            ));
        }
        let mocks = mocks_in(&manifests);
        let recovered = self.recover_pending(plan).await?;
        let made = self.helm.upgrade_install(&plan.release).await?;
        // When helm made it: with the number, what tells this revision from one of the same
        // number after the release is uninstalled and installed again (see `rollback`).
        let mut detail = json!({
            "release": plan.release.name,
            "revision": made.revision,
            "updated": made.updated,
            "image_tag": plan.image_tag,
            "image": plan.image,
            "mocks": mocks,
        });
        if let Some(recovered) = recovered {
            detail["recovered"] = recovered;
        }
        // A push to a sleeping stand deploys and wakes it: helm leaves the replicas the
        // sleep set, so they go back to the record before verify waits for the rollout.
        let woken = super::sleep::wake(&self.pool, &*self.cluster, run).await?;
        if woken.detail["scaled"].as_array().is_some_and(|s| !s.is_empty()) {
            detail["woken"] = woken.detail;
        }
        Ok(StepOutcome::done(detail))
    }

    /// The release, then the namespace and what is left in it, and any build still running for the stand.
    async fn uninstall_step(
        &self,
        run: &RunContext,
        project: &ProjectConfig,
        plan: &StandPlan,
    ) -> Result<StepOutcome, StepError> {
        // The release first, so Helm's hooks and its record go the way Helm knows; then the
        // namespace with everything left in it (Secrets, volume claims), waited for until gone.
        self.helm.uninstall(&plan.release.name, &run.namespace).await?;
        crate::store::usage::stopped(&self.pool, run.stand_id).await?;
        let gone = self.cluster.delete_namespace(&run.namespace, self.config.cluster.teardown_wait).await?;
        let mut detail = json!({ "release": plan.release.name, "namespace": gone });
        // A build still running for the stand (its run gave way, or the PR closed mid-build).
        if project.build.is_some() {
            let stand = self.stand_meta(run, project).await?;
            let builds = self.cluster.delete_builds(&self.config.build.namespace, &stand).await?;
            detail["builds_deleted"] = json!(builds);
        }
        Ok(StepOutcome::done(detail))
    }

    async fn step(&self, step: StepName, run: &RunContext, project: &ProjectConfig) -> Result<StepOutcome, StepError> {
        let plan = step_plan(&self.pool, &self.config, step, run, project).await?;
        // What runs from deploy on is the image the image step found, by digest.
        let plan = if matches!(step, StepName::Deploy | StepName::Migrate | StepName::Smoke) {
            crate::pipeline::image::pinned(&self.pool, run, plan).await?
        } else {
            plan
        };
        match step {
            StepName::Namespace => {
                let stand = self.stand_meta(run, project).await?;
                let outcome = self.cluster.ensure_namespace(&stand).await?;
                Ok(StepOutcome::done(json!(outcome)))
            }
            StepName::Database => database_step(self.credentials.as_deref(), run, project).await,
            StepName::Secrets => self.secrets_step(run, project, &plan).await,
            StepName::Image => self.image_step(run, project, &plan).await,
            StepName::Deploy => self.deploy_step(run, &plan).await,
            StepName::Migrate if project.migrate.is_empty() => {
                Ok(StepOutcome::skipped("the project has no migrate command"))
            }
            // Migrations need a login of their own, and a fork's stand gets none.
            StepName::Migrate if !provenance(&self.pool, run, project).await?.gets_logins() => {
                Ok(StepOutcome::skipped(FORK_NO_SECRETS))
            }
            StepName::Migrate => self.job(run, project, &plan, "migrate", &project.migrate).await,
            StepName::Verify => {
                let mut outcome = self.verify(run, &plan).await?;
                outcome.detail["usage"] =
                    super::sleep::record_awake(&self.pool, &*self.cluster, run, &plan.release.name).await?;
                // Verified: healthy, and the health watch probes it from its next slot on.
                crate::store::health::verified(&self.pool, run.stand_id, Utc::now(), self.config.watch.interval)
                    .await?;
                Ok(outcome)
            }
            StepName::Smoke if project.smoke.is_empty() => Ok(StepOutcome::skipped("the project has no smoke command")),
            StepName::Smoke => self.job(run, project, &plan, "smoke", &project.smoke).await,
            StepName::Rollback => self.rollback(run, &plan).await,
            StepName::Cancel => lifecycle::cancel(&self.pool, run).await,
            StepName::Deactivate => lifecycle::deactivate(&self.pool, &self.config, run).await,
            StepName::Revoke => lifecycle::revoke(self.credentials.as_deref(), run).await,
            StepName::Uninstall => self.uninstall_step(run, project, &plan).await,
            StepName::Drop => lifecycle::drop(&self.pool, self.credentials.as_deref(), run).await,
            StepName::Extend => {
                let (mut outcome, at) = lifecycle::extend(&self.pool, &self.config, run).await?;
                let annotated = self.cluster.annotate_expiry(&run.namespace, at).await?;
                outcome.detail["namespace_annotated"] = json!(annotated);
                Ok(outcome)
            }
            StepName::Sleep => {
                super::sleep::sleep(&self.pool, &*self.cluster, self.credentials.as_deref(), run, &plan.release.name)
                    .await
            }
            StepName::Wake => super::sleep::wake(&self.pool, &*self.cluster, run).await,
            StepName::Teardown => Err(retired()),
            StepName::Report => {
                lifecycle::queue_report(&self.pool, &self.config, run.stand_id, Some(run.run_id), Utc::now(), None)
                    .await
            }
        }
    }
}

impl<H: Helm, C: Cluster> Builder for KubernetesSteps<H, C> {
    async fn build(&self, run: &RunContext, request: &BuildRequest) -> Result<Built, StepError> {
        let project = project_of(&self.config, run)?;
        let stand = self.stand_meta(run, project).await?;
        let settings = project.registry(&self.config);
        let registry = self.registries.as_deref().and_then(|r| r.for_project(&project.name));
        let registry_auth = match registry {
            Some(r) => r.login_json(&request.image)?,
            None => None,
        };
        let (git_auth, deploy_token) = if request.build.public {
            (None, None)
        } else {
            let (auth, id) = self.read_only_token(run, project).await?;
            (Some(auth), id)
        };
        let b = &self.config.build;
        let job = BuildJob {
            namespace: b.namespace.clone(),
            name: BuildJob::name_for(&run.namespace, &request.sha),
            buildkit_image: b.buildkit_image.clone(),
            git_url: self.git_url(project),
            sha: request.sha.clone(),
            context: request.build.context.clone(),
            dockerfile: request.build.dockerfile.clone(),
            build_args: request.build.args.clone(),
            target: request.build.target.clone(),
            git_auth,
            push: request.image.tagged(),
            cache: format!("{}/{}:{}", request.image.registry(), request.image.repository(), b.cache_tag),
            insecure_registry: settings.is_some_and(|s| s.insecure),
            registry_auth,
            cpu: b.cpu.clone(),
            memory: b.memory.clone(),
            deadline: b.deadline,
            keep_for: b.keep_for,
        };
        let outcome = self.cluster.run_build(&stand, &job).await;
        // A GitLab deploy token goes as soon as the build is known to be over (it expires within
        // the hour anyway); a transient error says nothing of the build, which may still be fetching.
        let over = outcome.as_ref().map_or_else(|e| !e.is_transient(), |_| true);
        if let (Some(id), true) = (deploy_token, over)
            && let Some(AnyForge::Gitlab(gitlab)) = self.forges.iter().find(|f| matches!(f, AnyForge::Gitlab(_)))
            && let Err(e) = gitlab.revoke_deploy_token(&project.repo, id).await
        {
            tracing::warn!(deploy_token = id, error = %e, "could not revoke the build's deploy token; it expires within the hour");
        }
        let outcome = outcome?;
        Ok(Built {
            job: format!("{}/{}", job.namespace, outcome.job),
            succeeded: outcome.succeeded,
            reason: outcome.reason,
            ran_seconds: outcome.ran_for.map(|d| d.as_secs_f64()),
            log_tail: outcome.log_tail.as_deref().map(|l| last_lines(l, QUOTED_LINES)),
        })
    }
}

impl<H: Helm, C: Cluster> StepRunner for KubernetesSteps<H, C> {
    async fn started(&self, run: &RunContext) {
        // Best effort, as the trait asks: a report that cannot be queued must not stop the run.
        let queued =
            lifecycle::queue_report(&self.pool, &self.config, run.stand_id, Some(run.run_id), Utc::now(), None).await;
        if let Err(e) = queued {
            tracing::warn!(error = %e, "could not queue the report of a started run");
        }
    }

    async fn run(&self, step: StepName, run: &RunContext) -> Result<StepOutcome, StepError> {
        self.step(step, run, project_of(&self.config, run)?).await
    }
}
