//! `[registry]` (and a project's own `registry` table), `[build]` and a project's `build`: how the
//! image step reaches the registry of a project's `image`, and how draftd builds an image CI did not.
//! A project's `image` itself is parsed here into an [`ImageRepository`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use oci_client::Reference;
use serde::{Deserialize, Deserializer, Serialize};

use super::checked;

/// How draftd reaches the registry named by a project's `image`. The registry host and repository
/// come from `image` itself (`registry.example.com/acme/shop`); this says how to talk to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// How long the image step waits for `draft-<branch>-<sha7>` to appear before the run fails.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// The first pause between two looks at the registry; doubled after each miss up to `poll_max`.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_max: Duration,
    /// Basic credentials: the user, with the password from `password_env` or `password_file`. Sent
    /// to the registry itself, or to its token service when it answers with a Bearer challenge (the
    /// distribution spec's token flow, as Docker Hub, GHCR, GitLab, Harbor and Quay use it).
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// A Docker `config.json`, as a `kubernetes.io/dockerconfigjson` Secret holds it (mount one):
    /// the entry for the image's registry is used. Read at each login, so a rotated file (ECR's
    /// 12-hour tokens) is picked up without a restart.
    pub docker_config: Option<PathBuf>,
    /// Plain HTTP instead of HTTPS: only for registries on loopback or inside the cluster.
    pub insecure: bool,
    /// PEM certificates trusted besides the system's, for a registry with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Give each stand's namespace an image pull Secret with these credentials (for the image's
    /// registry only), used by its default ServiceAccount. Only when there are credentials.
    pub pull_secret: bool,
    /// Bound on one request to the registry or its token service.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(15 * 60),
            poll: Duration::from_secs(2),
            poll_max: Duration::from_secs(15),
            username: None,
            password_env: None,
            password_file: None,
            docker_config: None,
            insecure: false,
            ca_file: None,
            pull_secret: true,
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl RegistryConfig {
    pub fn has_credentials(&self) -> bool {
        self.username.is_some() || self.docker_config.is_some()
    }

    /// What is wrong with it, as `(key, message)`; keys are relative to the table.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.wait.is_zero() {
            return Some(("wait", "must be longer than zero".into()));
        }
        if self.poll.is_zero() || self.poll_max < self.poll {
            return Some(("poll", "must be longer than zero and at most poll_max".into()));
        }
        if self.request_timeout.is_zero() {
            return Some(("request_timeout", "must be longer than zero".into()));
        }
        match (&self.username, self.password_env.is_some() || self.password_file.is_some()) {
            (Some(_), false) => return Some(("password_env", "is needed with username (or password_file)".into())),
            (None, true) => return Some(("username", "is needed with password_env or password_file".into())),
            _ => {}
        }
        if self.username.is_some() && self.docker_config.is_some() {
            return Some(("docker_config", "cannot be combined with username: pick one kind of credentials".into()));
        }
        None
    }
}

/// A project's `build = { context = ".", dockerfile = "Dockerfile" }`: draftd builds the stand's
/// image with BuildKit in the cluster when CI did not push it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectBuild {
    /// The build context: a folder of the repository at the commit.
    #[serde(deserialize_with = "repository_path")]
    pub context: String,
    /// The Dockerfile, relative to the context.
    #[serde(deserialize_with = "repository_path")]
    pub dockerfile: String,
    /// Build at once, without first waiting for CI's image.
    pub always: bool,
    /// How long the image step waits for CI's image before building; default `[registry] wait`
    /// when `always` is off. Short values suit repositories whose CI never pushes draft images.
    #[serde(with = "humantime_serde")]
    pub wait_for_ci: Option<Duration>,
    /// `--opt build-arg:K=V` for the Dockerfile frontend. Never secrets: they are visible in the Job.
    pub args: std::collections::BTreeMap<String, String>,
    /// Dockerfile build target stage.
    pub target: Option<String>,
    /// The repository is public: BuildKit fetches it without a token. Otherwise draftd gives the
    /// build a token that can only read this repository and expires within the hour, which needs
    /// a GitHub App (`[github] app_id`).
    pub public: bool,
}

impl Default for ProjectBuild {
    fn default() -> Self {
        Self {
            context: ".".into(),
            dockerfile: "Dockerfile".into(),
            always: false,
            wait_for_ci: None,
            args: Default::default(),
            target: None,
            public: false,
        }
    }
}

/// BuildKit is given the repository at the commit, and nothing outside it.
fn repository_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |path: &String| {
        if path.starts_with('/') || path.split('/').any(|part| part == "..") || path.contains(['#', ':']) {
            Err(format!("{path:?} must be a relative path inside the repository"))
        } else {
            Ok(())
        }
    })
}

/// `[build]`: where and how draftd's BuildKit Jobs run. The namespace itself, its quota (how many
/// builds at once) and its network policy are deployed with draftd (deploy/build.yaml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildConfig {
    /// The namespace of every build Job, with its own quota and network policy; never a stand's.
    #[serde(deserialize_with = "namespace")]
    pub namespace: String,
    /// Rootless BuildKit; pinned, as everything that runs code of pull requests should be.
    pub buildkit_image: String,
    /// A build that has not pushed within this fails the run.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// The tag of the project's repository that holds the build cache (`--export-cache` /
    /// `--import-cache type=registry`).
    pub cache_tag: String,
    /// Requests and limits of one build pod.
    pub cpu: String,
    pub memory: String,
    /// Finished build Jobs (and their logs) are kept this long.
    #[serde(with = "humantime_serde")]
    pub keep_for: Duration,
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            namespace: "draftd-build".into(),
            buildkit_image: "moby/buildkit:v0.25.2-rootless".into(),
            deadline: Duration::from_secs(30 * 60),
            cache_tag: "draft-buildcache".into(),
            cpu: "1".into(),
            memory: "2Gi".into(),
            keep_for: Duration::from_secs(3600),
        }
    }
}

fn namespace<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |ns: &String| {
        crate::stand::is_dns_label(ns).then_some(()).ok_or_else(|| "must be a namespace name (a DNS label)".to_owned())
    })
}

/// A project's `image`: an image repository (`registry.example.com/acme/shop`, `ghcr.io/acme/shop`,
/// or Docker Hub's `acme/shop`) without tag or digest, which draftd tags per stand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRepository(String);

/// Why a text is not an [`ImageRepository`], or cannot carry a tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{image:?} is not an image repository: {reason}")]
pub struct BadImage {
    pub image: String,
    pub reason: String,
}

impl ImageRepository {
    pub fn parse(image: &str) -> Result<ImageRepository, BadImage> {
        let repository = ImageRepository(image.to_owned());
        repository.tagged("latest")?;
        Ok(repository)
    }

    /// The reference of `tag` in this repository, as a registry is asked for it.
    pub fn tagged(&self, tag: &str) -> Result<Reference, BadImage> {
        let image = &self.0;
        let bad = |reason: &str| BadImage { image: image.clone(), reason: reason.to_owned() };
        if image.contains('@') {
            return Err(bad("names a digest; give the repository only"));
        }
        // A colon after the last slash is a tag (one before it is the registry's port).
        if image.rsplit('/').next().is_some_and(|last| last.contains(':')) {
            return Err(bad("names a tag; give the repository only (draftd adds the stand's tag)"));
        }
        let reference: Reference = format!("{image}:{tag}").parse().map_err(|e| bad(&format!("{e}")))?;
        if reference.tag() != Some(tag) {
            return Err(bad("names a tag; give the repository only"));
        }
        Ok(reference)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ImageRepository {
    type Error = BadImage;
    fn try_from(image: String) -> Result<Self, BadImage> {
        ImageRepository::parse(&image)
    }
}

impl From<ImageRepository> for String {
    fn from(image: ImageRepository) -> String {
        image.0
    }
}

impl std::ops::Deref for ImageRepository {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn error(registry: &str) -> String {
        let toml = format!("[registry]\n{registry}\n");
        Config::from_toml(&toml).map(|_| String::new()).unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn credentials_come_whole_and_of_one_kind() {
        assert!(error("username = \"robot\"").contains("registry.password_env"));
        assert!(error("password_env = \"P\"").contains("registry.username"));
        assert!(error("username = \"r\"\npassword_env = \"P\"\ndocker_config = \"/c.json\"").contains("docker_config"));
        assert!(error("poll = \"20s\"\npoll_max = \"10s\"").contains("registry.poll"));
        assert!(error("wait = \"0s\"").contains("registry.wait"));
        assert_eq!(error("username = \"r\"\npassword_file = \"/p\"\nwait = \"5m\""), "");
        let config = Config::from_toml("[registry]\n").unwrap();
        let r = config.registry.unwrap();
        assert_eq!((r.wait.as_secs(), r.poll.as_secs(), r.poll_max.as_secs(), r.pull_secret), (900, 2, 15, true));
    }

    #[test]
    fn a_project_image_must_name_a_repository() {
        let toml = "[[projects]]\nname = \"s\"\nforge = \"github\"\nrepo = \"a/s\"\nwebhook_secret_env = \"X\"\nimage = \"r.example.com/a/s:1.0\"\n";
        let e = Config::from_toml(toml).unwrap_err().to_string();
        assert!(e.contains("projects[0].image") && e.contains("names a tag"), "{e}");
    }
}
