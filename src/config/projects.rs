//! `[[projects]]`: the repositories draftd serves, and the one place they are looked up, by name and
//! by (forge, repository). [`Projects`] is the same list with its secrets read and branch globs
//! compiled, as `serve` needs it.

use std::path::PathBuf;
use std::time::Duration;

use globset::{GlobSet, GlobSetBuilder};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

use super::registry::{ImageRepository, ProjectBuild, RegistryConfig};
use super::{Config, ConfigError, checked};
use crate::stand::ProjectName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Github,
    Gitlab,
}

impl ForgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
        }
    }

    /// As people write it.
    pub fn name(self) -> &'static str {
        match self {
            ForgeKind::Github => "GitHub",
            ForgeKind::Gitlab => "GitLab",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForkPolicy {
    /// Fork PRs run code nobody with write access has vetted; never give it a stand with secrets.
    #[default]
    Deny,
    /// Every fork commit gets a stand, with no secrets and no logins.
    Allow,
    /// A fork commit gets a stand once someone with write access approves exactly that commit
    /// (`/draft approve`); every push needs a new approval. Its stand gets its own database and
    /// login, mock integrations only, and never the team's KV secrets.
    Approve,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Names the project's namespaces, databases and labels, so it is a DNS label.
    #[serde(deserialize_with = "project_name")]
    pub name: String,
    pub forge: ForgeKind,
    /// `owner/name` on GitHub, the project path on GitLab; matched case-insensitively.
    #[serde(deserialize_with = "repository")]
    pub repo: String,
    pub webhook_secret_env: Option<String>,
    pub team: Option<String>,
    pub service: Option<String>,
    #[serde(default = "ProjectConfig::chart")]
    pub chart: PathBuf,
    #[serde(default = "ProjectConfig::values")]
    pub values: Vec<PathBuf>,
    pub image: Option<ImageRepository>,
    pub host: Option<String>,
    /// Which source branches get a stand; see [`branch_globs`].
    #[serde(default = "ProjectConfig::branches", deserialize_with = "branches")]
    pub branches: Vec<String>,
    #[serde(default)]
    pub forks: ForkPolicy,
    /// Who may open this project's stands: `forge` (people who can read the repository) is the
    /// default when `[access]` is configured, `public` otherwise.
    pub access: Option<super::AccessMode>,
    /// Draft PRs are work in progress; they get a stand once marked ready for review.
    #[serde(default = "ProjectConfig::skip_draft")]
    pub skip_draft: bool,
    /// A PR carrying this label gets no stand, and adding it tears the stand down.
    #[serde(default = "ProjectConfig::opt_out_label")]
    pub opt_out_label: String,
    /// Name namespaces after the branch without its `feature/` or `bugfix/` prefix.
    #[serde(default)]
    pub strip_branch_prefix: bool,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// `[sleep]` for this project's stands: `sleep = { enabled = false }`, or its own `idle_after`.
    #[serde(default)]
    pub sleep: super::ProjectSleep,
    /// Mount a Kubernetes API token into the stand's pods (its `default` ServiceAccount); off unless
    /// the app itself talks to the API.
    #[serde(default)]
    pub service_account_token: bool,
    /// Caps this project's runs in flight across every replica, within `[stands] max_concurrent_runs`,
    /// so one busy repository cannot hold every slot.
    pub max_concurrent_runs: Option<u32>,
    /// Caps this project's stands that are up (awake, or being brought up), within `[stands]
    /// max_active`; past it, `[stands] on_cap` says what happens.
    pub max_active: Option<std::num::NonZeroU32>,
    /// A seeded database on the `[postgres]` server that each stand's database starts as a copy of
    /// (`CREATE DATABASE … TEMPLATE …`); empty databases otherwise.
    pub template: Option<String>,
    #[serde(default)]
    pub migrate: Vec<String>,
    #[serde(default)]
    pub smoke: Vec<String>,
    /// This project's own registry settings, in place of `[registry]` (another registry, other
    /// credentials, another wait).
    pub registry: Option<RegistryConfig>,
    /// Build the stand's image in the cluster when CI did not push it; off by default.
    pub build: Option<ProjectBuild>,
}

/// The defaults of the keys a project may leave out.
impl ProjectConfig {
    fn chart() -> PathBuf {
        PathBuf::from("charts/stand")
    }
    fn values() -> Vec<PathBuf> {
        vec![PathBuf::from("values/draft.yaml")]
    }
    fn branches() -> Vec<String> {
        vec!["feature/**".into(), "bugfix/**".into()]
    }
    fn skip_draft() -> bool {
        true
    }
    fn opt_out_label() -> String {
        "draft:skip".into()
    }
}

impl ProjectConfig {
    /// The registry settings of this project's image: its own, else `[registry]`; `None` when the
    /// image is not checked.
    pub fn registry<'a>(&'a self, config: &'a Config) -> Option<&'a RegistryConfig> {
        self.registry.as_ref().or(config.registry.as_ref())
    }

    /// Whether this is the project of `repo` on `forge`; repositories match case-insensitively, as
    /// both forges treat them.
    pub fn serves(&self, forge: ForgeKind, repo: &str) -> bool {
        self.forge == forge && self.repo.to_lowercase() == repo.to_lowercase()
    }
}

impl Config {
    /// The project named `name`.
    pub fn project(&self, name: &str) -> Option<&ProjectConfig> {
        self.projects.iter().find(|p| p.name == name)
    }

    /// The project of `repo` on `forge` (at most one: loading refuses two).
    pub fn project_for_repo(&self, forge: ForgeKind, repo: &str) -> Option<&ProjectConfig> {
        self.projects.iter().find(|p| p.serves(forge, repo))
    }
}

fn project_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |name: &String| ProjectName::new(name).map(drop).map_err(|e| e.to_string()))
}

fn repository<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |repo: &String| {
        if repo.trim().is_empty() || !repo.contains('/') {
            Err("must be the repository path, like owner/name".to_owned())
        } else {
            Ok(())
        }
    })
}

fn branches<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    checked(d, |globs: &Vec<String>| {
        if globs.is_empty() {
            return Err("must list at least one glob".to_owned());
        }
        branch_globs(globs).map(drop)
    })
}

/// Compiles branch globs: `*` stays within one path segment, `**` crosses them.
pub fn branch_globs(globs: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for g in globs {
        let glob = globset::GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("invalid glob {g:?}: {e}"))?;
        set.add(glob);
    }
    set.build().map_err(|e| e.to_string())
}

/// A project with its branch filter compiled, ready for intake.
#[derive(Debug, Clone)]
pub struct Project {
    pub name: ProjectName,
    pub settings: ProjectConfig,
    pub branches: GlobSet,
    /// The secret webhooks of this project are verified with.
    pub webhook_secret: SecretString,
}

/// The configured projects with their secrets read, plus the forge-wide webhook secrets and the API
/// token: every secret `serve` needs, read once at start.
#[derive(Debug, Clone, Default)]
pub struct Projects {
    pub projects: Vec<Project>,
    pub github_secret: Option<SecretString>,
    pub gitlab_secret: Option<SecretString>,
    /// Without `[api] token_env` the API answers every request with 401.
    pub api_token: Option<SecretString>,
    /// `[access]`'s key and OAuth client secrets, when it is configured.
    pub access: Option<super::AccessSecrets>,
}

impl Projects {
    /// Reads every webhook secret from the environment, so a missing one stops `serve` at start rather
    /// than turning every delivery into a 401 later.
    pub fn resolve(config: &Config) -> Result<Projects, ConfigError> {
        Self::resolve_with(config, |var| std::env::var(var).ok())
    }

    /// As [`Projects::resolve`], with `lookup` standing in for the environment.
    pub fn resolve_with(config: &Config, lookup: impl Fn(&str) -> Option<String>) -> Result<Projects, ConfigError> {
        let read =
            |key: String, var: &str| {
                lookup(var).filter(|v| !v.is_empty()).map(SecretString::from).ok_or_else(|| {
                    ConfigError::MissingSecret { source_name: config.source_name(), key, var: var.to_owned() }
                })
            };
        let github_secret = config
            .github
            .webhook_secret_env
            .as_deref()
            .map(|v| read("github.webhook_secret_env".into(), v))
            .transpose()?;
        let gitlab_secret = config
            .gitlab
            .webhook_secret_env
            .as_deref()
            .map(|v| read("gitlab.webhook_secret_env".into(), v))
            .transpose()?;
        let api_token = config.api.token_env.as_deref().map(|v| read("api.token_env".into(), v)).transpose()?;
        let mut projects = Vec::with_capacity(config.projects.len());
        for (i, p) in config.projects.iter().enumerate() {
            let forge_wide = match p.forge {
                ForgeKind::Github => &github_secret,
                ForgeKind::Gitlab => &gitlab_secret,
            };
            let webhook_secret = match (&p.webhook_secret_env, forge_wide) {
                (Some(var), _) => read(format!("projects[{i}].webhook_secret_env"), var)?,
                (None, Some(secret)) => secret.clone(),
                (None, None) => unreachable!("validated at load: a project without a secret"),
            };
            projects.push(Project {
                name: ProjectName::new(&p.name).expect("parsed at load"),
                branches: branch_globs(&p.branches).expect("parsed at load"),
                settings: p.clone(),
                webhook_secret,
            });
        }
        let access = super::AccessSecrets::resolve(config, &lookup)?;
        Ok(Projects { projects, github_secret, gitlab_secret, api_token, access })
    }

    /// The project named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Project> {
        self.projects.iter().find(|p| p.settings.name == name)
    }

    /// The project of `repo` on `forge`.
    pub fn by_repo(&self, forge: ForgeKind, repo: &str) -> Option<&Project> {
        self.projects.iter().find(|p| p.settings.serves(forge, repo))
    }
}

/// Duplicate names or repositories, which a list cannot refuse element by element.
pub(super) fn check_unique(config: &Config) -> Result<(), ConfigError> {
    let mut names = std::collections::HashMap::new();
    let mut repos = std::collections::HashMap::new();
    for (i, p) in config.projects.iter().enumerate() {
        if let Some(prev) = names.insert(p.name.clone(), i) {
            let message = format!("{:?} is also the name of projects[{prev}]", p.name);
            return Err(config.invalid(format!("projects[{i}].name"), message));
        }
        if let Some(prev) = repos.insert((p.forge, p.repo.to_lowercase()), i) {
            let message = format!("{:?} is also configured in projects[{prev}]", p.repo);
            return Err(config.invalid(format!("projects[{i}].repo"), message));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "[[projects]]\nname = \"shop\"\nforge = \"github\"\nrepo = \"Acme/Shop\"\nwebhook_secret_env = \"S\"\n\
                       [[projects]]\nname = \"blog\"\nforge = \"gitlab\"\nrepo = \"acme/blog\"\nwebhook_secret_env = \"B\"\n";

    #[test]
    fn projects_are_found_by_name_and_by_repository_in_any_case() {
        let config = Config::from_toml(TWO).unwrap();
        assert_eq!(config.project("blog").map(|p| p.repo.as_str()), Some("acme/blog"));
        assert!(config.project("Blog").is_none(), "names are exact");
        assert_eq!(config.project_for_repo(ForgeKind::Github, "acme/shop").map(|p| p.name.as_str()), Some("shop"));
        assert!(config.project_for_repo(ForgeKind::Gitlab, "acme/shop").is_none(), "the forge counts");
        let projects = Projects::resolve_with(&config, |_| Some("x".into())).unwrap();
        assert_eq!(projects.by_repo(ForgeKind::Gitlab, "ACME/BLOG").map(|p| p.name.as_str()), Some("blog"));
        assert_eq!(projects.by_name("shop").map(|p| p.settings.repo.as_str()), Some("Acme/Shop"));
    }

    #[test]
    fn two_projects_of_one_name_or_repository_are_refused() {
        let err = Config::from_toml(&TWO.replace("\"blog\"", "\"shop\"")).unwrap_err().to_string();
        assert!(err.contains("projects[1].name") && err.contains("also the name of projects[0]"), "{err}");
        let same_repo = TWO.replace("\"gitlab\"", "\"github\"").replace("acme/blog", "ACME/shop");
        let err = Config::from_toml(&same_repo).unwrap_err().to_string();
        assert!(err.contains("projects[1].repo") && err.contains("also configured in projects[0]"), "{err}");
    }
}
