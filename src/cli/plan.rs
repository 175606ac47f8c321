//! `draftd plan`: what a run would create for a branch, rendered, without touching anything.
//!
//! Everything comes from the configuration and the arguments: no database, cluster, Vault or forge is
//! contacted, and no secret is read (the `*_env` variables may be unset). The only process started is
//! `helm template`, which renders locally.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::Serialize;

use crate::config::{ClusterMode, Config, ProjectConfig, branch_globs};
use crate::helm::{self, Helm, HelmCli};
use crate::pipeline::plan::StandPlan;
use crate::stand::{BranchName, CommitSha, Namespace, ProjectName, StandId};

/// Everything `draftd plan` reports; `--json` prints it as one object.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    #[serde(flatten)]
    pub plan: StandPlan,
    /// The Helm release name (the namespace, cut and hashed past Helm's 53 characters).
    pub release: String,
    /// The name the stand gets instead when another stand already has `namespace`; `None` when
    /// `namespace` is already the hashed form.
    pub namespace_if_taken: Option<String>,
    /// The project's branch globs, and whether the branch matches one of them.
    pub branches: Vec<String>,
    pub branch_matches: bool,
    pub cluster_mode: ClusterMode,
    /// Why the KV path is absent, when it is.
    pub vault_note: Option<String>,
    /// What the image step would do: check the registry (and for how long), build, or nothing.
    pub image_step: ImagePlan,
    pub warnings: Vec<String>,
    /// `helm upgrade --install …` as a run would call it, `--set-string` values shown as `***`.
    pub helm_command: String,
    /// `helm template` output; `None` when helm could not render (see `helm_error`).
    pub manifests: Option<String>,
    pub helm_error: Option<String>,
}

/// The image step as a run would take it.
#[derive(Debug, Clone, Serialize)]
pub struct ImagePlan {
    /// `registry/repository:tag`, when the project names its image.
    pub image: Option<String>,
    /// The registry the step would look in; `None`: the step is skipped (see `note`).
    pub registry: Option<String>,
    /// How long it would wait for CI's image before failing, or before building.
    pub wait_seconds: Option<u64>,
    /// Whether a build would run when the image is not there (`always`: without waiting first).
    pub build: Option<&'static str>,
    /// The build's source and destination, when one would run.
    pub build_detail: Option<serde_json::Value>,
    pub note: String,
}

fn image_plan(config: &Config, project: &ProjectConfig, plan: &StandPlan) -> ImagePlan {
    let settings = project.registry(config);
    let image = project.image.as_ref().and_then(|repo| crate::registry::ImageRef::parse(repo, &plan.image_tag).ok());
    let Some((settings, image)) = settings.zip(image) else {
        let note = if project.image.is_none() {
            "skipped: the project names no image"
        } else {
            "skipped: no [registry] configured, so the image is not checked"
        };
        return ImagePlan {
            image: plan.image.clone(),
            registry: None,
            wait_seconds: None,
            build: None,
            build_detail: None,
            note: note.to_owned(),
        };
    };
    let (wait, build, note) = match &project.build {
        None => (
            settings.wait,
            None,
            format!("waits for {} in the registry; fails the run if it is not there", image.tagged()),
        ),
        Some(b) if b.always => {
            (Duration::ZERO, Some("always"), "builds it in the cluster unless the tag is already there".to_owned())
        }
        Some(b) => (
            b.wait_for_ci.unwrap_or(settings.wait),
            Some("when missing"),
            "waits for CI's image, then builds it in the cluster".to_owned(),
        ),
    };
    let build_detail = project.build.as_ref().map(|b| {
        crate::pipeline::image::build_detail(
            &crate::pipeline::image::BuildRequest {
                image: image.clone(),
                build: b.clone(),
                repo: project.repo.clone(),
                sha: plan.sha.clone(),
            },
            &config.build.cache_tag,
        )
    });
    ImagePlan {
        image: Some(image.tagged()),
        registry: Some(image.registry().to_owned()),
        wait_seconds: Some(wait.as_secs()),
        build,
        build_detail,
        note,
    }
}

/// Validates the arguments and computes the plan, without rendering (`manifests` is `None`).
pub fn build(config: &Config, project: &str, branch: &str, sha: &str) -> anyhow::Result<PlanReport> {
    let project_cfg = find_project(config, project)?;
    let project_name = ProjectName::new(&project_cfg.name).context("project name (validated at load)")?;
    let branch = BranchName::new(branch).map_err(|e| anyhow!("--branch {branch:?}: {e}"))?;
    let sha = CommitSha::new(sha).map_err(|e| anyhow!("--sha: {e}"))?;

    let namespace = Namespace::for_branch(&project_name, &branch, project_cfg.strip_branch_prefix);
    let hashed = Namespace::hashed(&project_name, &branch, project_cfg.strip_branch_prefix);
    let namespace_if_taken = (hashed != namespace).then(|| hashed.to_string());

    let plan = StandPlan::new(config, project_cfg, StandId::new(0), namespace.as_str(), branch.as_str(), sha.as_str());

    let globs = branch_globs(&project_cfg.branches).map_err(|e| anyhow!("projects {project:?} branches: {e}"))?;
    let branch_matches = globs.is_match(branch.as_str());
    let mut warnings = Vec::new();
    if !branch_matches {
        warnings.push(format!(
            "branch {:?} matches none of project {:?}'s branch globs ({}): a webhook for it would be ignored",
            branch.as_str(),
            project_cfg.name,
            project_cfg.branches.join(", ")
        ));
    }
    let vault_note = match (&config.vault, &project_cfg.team, &project_cfg.service) {
        (None, _, _) => Some("no [vault] configured".to_owned()),
        (Some(_), Some(_), Some(_)) => None,
        (Some(_), _, _) => {
            Some(format!("project {:?} does not set both team and service, so it has no KV path", project))
        }
    };

    let image_step = image_plan(config, project_cfg, &plan);
    let argv = helm::HelmCli::with_path("helm", &config.cluster).upgrade_install_command(&plan.release);
    Ok(PlanReport {
        image_step,
        release: plan.release.name.clone(),
        plan,
        namespace_if_taken,
        branches: project_cfg.branches.clone(),
        branch_matches,
        cluster_mode: config.cluster.mode,
        vault_note,
        warnings,
        helm_command: argv.redacted(),
        manifests: None,
        helm_error: None,
    })
}

/// `draftd plan --project P --branch B --sha S [--json]`: prints the plan and the rendered manifests.
/// Fails (after printing everything else) when helm cannot render.
pub async fn plan(config: Config, project: &str, branch: &str, sha: &str, json: bool) -> anyhow::Result<()> {
    let mut report = build(&config, project, branch, sha)?;
    let root = std::env::current_dir().context("cannot read the current directory")?;
    let rendered = render(&config, &root, &report).await;
    match rendered {
        Ok(manifests) => report.manifests = Some(manifests),
        Err(e) => report.helm_error = Some(e.to_string()),
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_text(&mut out, &report)?;
    }
    out.flush()?;
    match report.helm_error {
        Some(e) => Err(anyhow!("helm template could not render the manifests: {e}")),
        None => Ok(()),
    }
}

async fn render(config: &Config, root: &Path, report: &PlanReport) -> Result<String, helm::HelmError> {
    HelmCli::from_config(&config.cluster, root)?.template(&report.plan.release).await
}

fn find_project<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a ProjectConfig> {
    if let Some(p) = config.project(name) {
        return Ok(p);
    }
    let source = config.source.as_ref().map_or_else(|| "the configuration".to_owned(), |p| p.display().to_string());
    if config.projects.is_empty() {
        return Err(anyhow!("unknown project {name:?}: no projects are configured in {source}"));
    }
    let names: Vec<&str> = config.projects.iter().map(|p| p.name.as_str()).collect();
    Err(anyhow!("unknown project {name:?}; projects configured in {source}: {}", names.join(", ")))
}

/// The human-readable form.
pub fn write_text(out: &mut impl Write, r: &PlanReport) -> std::io::Result<()> {
    let p = &r.plan;
    writeln!(out, "plan for project {}, branch {} at {}", p.project, p.branch, p.sha)?;
    writeln!(out, "(computed from configuration only: nothing was created and nothing was contacted)")?;
    writeln!(out)?;
    writeln!(out, "namespace:      {}", p.namespace)?;
    if let Some(h) = &r.namespace_if_taken {
        writeln!(out, "                (the stand gets {h} instead if another stand already has that name)")?;
    }
    writeln!(out, "helm release:   {}", r.release)?;
    match &p.image {
        Some(image) => writeln!(out, "image:          {image}")?,
        None => writeln!(out, "image tag:      {} (the project sets no image repository)", p.image_tag)?,
    }
    let i = &r.image_step;
    match (&i.registry, i.wait_seconds) {
        (Some(registry), Some(wait)) => writeln!(
            out,
            "image step:     {} (registry {registry}, up to {}; the deploy pins the digest found)",
            i.note,
            humantime::format_duration(Duration::from_secs(wait))
        )?,
        _ => writeln!(out, "image step:     {}", i.note)?,
    }
    if let Some(b) = &i.build_detail {
        writeln!(
            out,
            "image build:    {} ({} at {}, context {}, {}; cache {})",
            i.build.unwrap_or_default(),
            b["repo"].as_str().unwrap_or_default(),
            b["sha"].as_str().unwrap_or_default(),
            b["context"].as_str().unwrap_or_default(),
            b["dockerfile"].as_str().unwrap_or_default(),
            b["cache"].as_str().unwrap_or_default()
        )?;
    }
    match (&p.host, &p.url) {
        (Some(host), Some(url)) => writeln!(out, "host:           {host}\nurl:            {url}")?,
        _ => writeln!(out, "host:           none (the project sets no host, so no Ingress)")?,
    }
    writeln!(out, "database:       {}", p.database)?;
    writeln!(out, "database role:  {}", p.role)?;
    match (&p.vault_kv_path, &r.vault_note) {
        (Some(path), _) => writeln!(out, "vault kv path:  {path}")?,
        (None, Some(note)) => writeln!(out, "vault kv path:  none ({note})")?,
        (None, None) => writeln!(out, "vault kv path:  none")?,
    }
    let verdict = if r.branch_matches { "matches" } else { "NO MATCH: a webhook for this branch would be ignored" };
    writeln!(out, "branch globs:   {} ({verdict})", r.branches.join(", "))?;
    let mode = match r.cluster_mode {
        ClusterMode::Kubernetes => "kubernetes",
        ClusterMode::DryRun => "dry-run (a run renders the manifests and applies nothing)",
    };
    writeln!(out, "cluster mode:   {mode}")?;
    writeln!(out)?;
    writeln!(
        out,
        "helm command (--set-string values shown as {}; stand.id is 0 until the stand exists):",
        helm::REDACTED
    )?;
    writeln!(out, "  {}", r.helm_command)?;
    writeln!(out)?;
    match (&r.manifests, &r.helm_error) {
        (Some(m), _) => {
            writeln!(out, "manifests (helm template):")?;
            write!(out, "{m}")?;
            if !m.ends_with('\n') {
                writeln!(out)?;
            }
        }
        (None, Some(e)) => writeln!(out, "manifests: not rendered ({e})")?,
        (None, None) => writeln!(out, "manifests: not rendered")?,
    }
    Ok(())
}
