//! Typed settings: a TOML file (`--config` or `DRAFTD_CONFIG`) with every value overridable by
//! `DRAFTD_…` environment variables (`__` separates levels: `DRAFTD_STANDS__TTL=24h`).
//!
//! Loading parses every value into its type (a quantity, a CIDR, a branch glob, a cron schedule…)
//! without side effects, and names the key and the file (or the environment variable) in every
//! error; what relates two keys is checked right after. Each default is stated once, in the
//! `Default` of its table (or, for tables with required keys, in a function named after the key).
//! Secrets are never in the file: the file names the environment variable that holds each one, and
//! [`Projects::resolve`] reads them when `serve` starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

mod access;
mod cluster;
mod cost;
mod projects;
mod registry;
mod services;
mod sleep;
mod stands;
mod watch;

pub use access::{AccessConfig, AccessMode, AccessSecrets, OAuthApp, OAuthEndpoints};
pub use cluster::{
    ClusterConfig, ClusterMode, LimitsConfig, NetworkPeer, NotAQuantity, PodSecurity, Quantity, QuotaConfig,
    VerifyConfig,
};
pub use cost::CostConfig;
pub use projects::{ForgeKind, ForkPolicy, Project, ProjectConfig, Projects, branch_globs};
pub use registry::{BadImage, BuildConfig, ImageRepository, ProjectBuild, RegistryConfig};
pub use services::{ApiConfig, GithubConfig, GitlabConfig, PostgresConfig, VaultAuth, VaultConfig};
pub use sleep::{ProjectSleep, SleepConfig, WakeService};
pub use stands::{IntakeConfig, OnCap, ReaperConfig, StandsConfig};
pub use watch::WatchConfig;

/// Top-level keys; environment variables naming anything else (like `DRAFTD_CONFIG` or
/// `DRAFTD_API_TOKEN`, which are not settings) are not read as settings.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "database_url",
    "public_url",
    "api",
    "cluster",
    "stands",
    "reaper",
    "watch",
    "intake",
    "postgres",
    "vault",
    "github",
    "gitlab",
    "registry",
    "build",
    "projects",
    "sleep",
    "cost",
    "access",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    /// A value of the wrong type or shape; `key` is spelt as in its source (TOML path or variable name).
    #[error("config {source_name}: key `{key}`: {message}")]
    Invalid { source_name: String, key: String, message: String },
    #[error("config {source_name}: key `{key}`: environment variable {var} is not set or empty")]
    MissingSecret { source_name: String, key: String, var: String },
}

/// The loaded configuration. Secrets are not here, only the names of the variables holding them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the HTTP listener binds: webhooks, health, and later the API and dashboard.
    pub listen: SocketAddr,
    /// draftd's own state. Default: the machine-local Postgres, database `draftd`.
    #[serde(deserialize_with = "url_with_scheme")]
    pub database_url: String,
    /// Base of links in reports.
    #[serde(deserialize_with = "url_with_scheme")]
    pub public_url: String,
    pub api: ApiConfig,
    pub cluster: ClusterConfig,
    pub stands: StandsConfig,
    pub reaper: ReaperConfig,
    pub sleep: SleepConfig,
    pub cost: CostConfig,
    /// The health watch: awake stands probed between deploys.
    pub watch: WatchConfig,
    pub intake: IntakeConfig,
    /// The server of the stands' databases; without it stands get none.
    pub postgres: Option<PostgresConfig>,
    /// Where stands' credentials and KV secrets come from; without it, from `[postgres]` alone.
    pub vault: Option<VaultConfig>,
    pub github: GithubConfig,
    pub gitlab: GitlabConfig,
    /// The registry of the projects' images: the image step waits for each stand's tag there.
    /// Without it (and without a project's own `registry`) the image is not checked.
    pub registry: Option<RegistryConfig>,
    pub build: BuildConfig,
    /// Stand URLs behind forge sign-in; without it every stand's URL is public.
    pub access: Option<AccessConfig>,
    pub projects: Vec<ProjectConfig>,
    /// Where the file came from, for error messages; not a setting.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "postgres://postgres@127.0.0.1:5432/draftd".into(),
            public_url: "http://127.0.0.1:8080".into(),
            api: ApiConfig::default(),
            cluster: ClusterConfig::default(),
            stands: StandsConfig::default(),
            reaper: ReaperConfig::default(),
            sleep: SleepConfig::default(),
            cost: CostConfig::default(),
            watch: WatchConfig::default(),
            intake: IntakeConfig::default(),
            postgres: None,
            vault: None,
            github: GithubConfig::default(),
            gitlab: GitlabConfig::default(),
            registry: None,
            build: BuildConfig::default(),
            access: None,
            projects: Vec::new(),
            source: None,
        }
    }
}

impl Config {
    /// Loads `path` (when given) under `DRAFTD_*` overrides, parsing every value.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            // Toml::file ignores a missing file; a typo in --config must not silently mean "defaults".
            std::fs::metadata(path)
                .map_err(|e| ConfigError::Unreadable { path: path.to_owned(), reason: e.to_string() })?;
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(
            Env::prefixed("DRAFTD_")
                .filter(|key| {
                    let top = key.as_str().split("__").next().unwrap_or_default();
                    TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
                })
                .split("__"),
        );
        let mut config: Config = figment.extract().map_err(|e| from_figment(e, path))?;
        config.source = path.map(Path::to_owned);
        config.check_relations()?;
        Ok(config)
    }

    /// Parses settings from TOML text alone (no file, no environment): for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| from_figment(e, None))?;
        config.check_relations()?;
        Ok(config)
    }

    fn source_name(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => "(defaults and environment)".into(),
        }
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { source_name: self.source_name(), key: key.into(), message: message.into() }
    }

    fn check_vault(&self, vault: &VaultConfig) -> Result<(), ConfigError> {
        if vault.credential_ttl < Duration::from_secs(1) || vault.credential_ttl > Duration::from_secs(3600) {
            return Err(self.invalid("vault.credential_ttl", "must be at least 1s and at most 1h"));
        }
        if vault.lease_ttl < Duration::from_secs(1) || vault.lease_ttl > vault.credential_ttl {
            return Err(self.invalid("vault.lease_ttl", "must be at least 1s and at most vault.credential_ttl"));
        }
        let needed: &[(&str, bool)] = match vault.auth {
            VaultAuth::Token => &[("vault.token_env", vault.token_env.is_some() || vault.token_file.is_some())],
            VaultAuth::Approle => &[
                ("vault.role_id", vault.role_id.is_some()),
                ("vault.secret_id_env", vault.secret_id_env.is_some() || vault.secret_id_file.is_some()),
            ],
            VaultAuth::Kubernetes => &[("vault.kubernetes_role", vault.kubernetes_role.is_some())],
        };
        for (key, present) in needed {
            if !present {
                let or_file = if key.ends_with("_env") { " (or the matching _file)" } else { "" };
                return Err(self.invalid(*key, format!("is required{or_file} with auth = {:?}", vault.auth)));
            }
        }
        Ok(())
    }

    /// What a value's own type cannot say: bounds of numbers and durations, and keys that depend on
    /// each other.
    fn check_relations(&self) -> Result<(), ConfigError> {
        if self.stands.ttl.is_zero() {
            return Err(self.invalid("stands.ttl", "must be longer than zero"));
        }
        if self.stands.extend_by.is_zero() {
            return Err(self.invalid("stands.extend_by", "must be longer than zero"));
        }
        if self.stands.max_expiry < self.stands.extend_by {
            return Err(self.invalid("stands.max_expiry", "must be at least stands.extend_by"));
        }
        if self.stands.lease < Duration::from_secs(1) {
            return Err(self.invalid("stands.lease", "must be at least 1s"));
        }
        if self.stands.max_concurrent_runs == 0 {
            return Err(self.invalid("stands.max_concurrent_runs", "must be at least 1"));
        }
        if self.intake.db_pool_size == 0 {
            return Err(self.invalid("intake.db_pool_size", "must be at least 1"));
        }
        if self.intake.listen_backlog == 0 {
            return Err(self.invalid("intake.listen_backlog", "must be at least 1"));
        }
        if let Some((key, message)) = self.watch.problem() {
            return Err(self.invalid(format!("watch.{key}"), message));
        }
        if let Some(vault) = &self.vault {
            self.check_vault(vault)?;
        }
        if let Some((key, message)) = self.registry.as_ref().and_then(|r| r.problem()) {
            return Err(self.invalid(format!("registry.{key}"), message));
        }
        match (self.github.app_id, &self.github.private_key_file) {
            (Some(_), None) => return Err(self.invalid("github.private_key_file", "is needed with github.app_id")),
            (None, Some(_)) => return Err(self.invalid("github.app_id", "is needed with github.private_key_file")),
            _ => {}
        }
        if self.github.installation_id.is_some() && self.github.app_id.is_none() {
            return Err(self.invalid("github.installation_id", "only applies to a GitHub App (github.app_id)"));
        }
        if let Some(pg) = &self.postgres
            && (pg.credential_ttl < Duration::from_secs(1) || pg.credential_ttl > Duration::from_secs(3600))
        {
            return Err(self.invalid("postgres.credential_ttl", "must be at least 1s and at most 1h"));
        }
        projects::check_unique(self)?;
        self.check_access()?;
        for (i, p) in self.projects.iter().enumerate() {
            let key = |field: &str| format!("projects[{i}].{field}");
            if p.ttl.is_some_and(|t| t.is_zero()) {
                return Err(self.invalid(key("ttl"), "must be longer than zero"));
            }
            if p.max_concurrent_runs == Some(0) {
                return Err(self.invalid(key("max_concurrent_runs"), "must be at least 1 (leave it out for no limit)"));
            }
            let app_wide = match p.forge {
                ForgeKind::Github => &self.github.webhook_secret_env,
                ForgeKind::Gitlab => &self.gitlab.webhook_secret_env,
            };
            if p.webhook_secret_env.is_none() && app_wide.is_none() {
                return Err(self.invalid(
                    key("webhook_secret_env"),
                    format!("is required unless [{}] webhook_secret_env is set", p.forge.as_str()),
                ));
            }
            if let Some((k, message)) = p.registry.as_ref().and_then(|r| r.problem()) {
                return Err(self.invalid(key(&format!("registry.{k}")), message));
            }
            if p.build.is_some() && (p.image.is_none() || p.registry(self).is_none()) {
                return Err(self.invalid(
                    key("build"),
                    "needs the project's image and a registry ([registry] or the project's own) to push to",
                ));
            }
        }
        Ok(())
    }
}

/// Deserialises a `T` and refuses it, with `check`'s explanation, when it is not a valid value: the
/// error then names the key (and list index) the value was read from, like a type error does.
fn checked<'de, D, T>(d: D, check: impl FnOnce(&T) -> Result<(), String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = T::deserialize(d)?;
    check(&value).map_err(serde::de::Error::custom)?;
    Ok(value)
}

fn url_with_scheme<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |url: &String| if url.contains("://") { Ok(()) } else { Err("must be a URL with a scheme".to_owned()) })
}

fn from_figment(err: figment::Error, path: Option<&Path>) -> ConfigError {
    // As the file spells it: `projects[0].branches`, not `projects.0.branches`.
    let mut dotted = String::new();
    for part in &err.path {
        if part.bytes().all(|b| b.is_ascii_digit()) && !part.is_empty() {
            dotted.push_str(&format!("[{part}]"));
        } else {
            if !dotted.is_empty() {
                dotted.push('.');
            }
            dotted.push_str(part);
        }
    }
    let (source_name, key) = match &err.metadata {
        // Environment values are named by the variable the user set, files by the file.
        Some(md) if md.source.is_none() && md.name.contains("environment") => {
            let var = format!("DRAFTD_{}", err.path.join("__").to_uppercase());
            ("environment".to_string(), var)
        }
        Some(md) => match &md.source {
            Some(figment::Source::File(f)) => (f.display().to_string(), dotted),
            _ => (path.map(|p| p.display().to_string()).unwrap_or_else(|| md.name.to_string()), dotted),
        },
        None => (path.map(|p| p.display().to_string()).unwrap_or_default(), dotted),
    };
    let key = if key.is_empty() { "(top level)".into() } else { key };
    ConfigError::Invalid { source_name, key, message: err.kind.to_string() }
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    const EXAMPLE: &str = r#"
listen = "127.0.0.1:9999"
[stands]
ttl = "24h"
[[projects]]
name = "shop"
forge = "github"
repo = "Acme/Shop"
webhook_secret_env = "SHOP_SECRET"
"#;

    fn load(jail: &Jail) -> Result<Config, ConfigError> {
        Config::load(Some(&jail.directory().join("draftd.toml")))
    }

    #[test]
    fn file_values_and_defaults_combine() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", EXAMPLE)?;
            let c = load(jail).unwrap();
            assert_eq!(c.listen.port(), 9999);
            assert_eq!(c.stands.ttl, Duration::from_secs(24 * 3600));
            assert_eq!(c.cluster.mode, ClusterMode::DryRun);
            assert_eq!(c.projects[0].branches, vec!["feature/**", "bugfix/**"]);
            assert!(c.projects[0].skip_draft);
            assert_eq!(c.projects[0].opt_out_label, "draft:skip");
            Ok(())
        });
    }

    #[test]
    fn a_partial_table_keeps_the_defaults_of_its_other_keys() {
        let c = Config::from_toml("[stands]\nworkers = 2\n[vault]\naddress = \"http://v\"\nauth = \"token\"\ntoken_env = \"T\"\n[postgres]\nadmin_url_env = \"PG\"\n").unwrap();
        assert_eq!((c.stands.workers, c.stands.ttl), (2, StandsConfig::default().ttl));
        let vault = c.vault.unwrap();
        assert_eq!(
            (vault.kv_mount.as_str(), vault.lease_ttl, vault.credential_ttl.as_secs()),
            ("draft", Duration::from_secs(1200), 3600)
        );
        assert_eq!(c.postgres.unwrap().credential_ttl.as_secs(), 3600);
        let defaults = Config::from_toml("").unwrap();
        assert_eq!(defaults.listen, Config::default().listen);
        assert_eq!(defaults.cluster.verify, VerifyConfig::default());
    }

    #[test]
    fn environment_overrides_nested_keys_and_ignores_non_settings() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", EXAMPLE)?;
            jail.set_env("DRAFTD_STANDS__TTL", "2h");
            jail.set_env("DRAFTD_CLUSTER__MODE", "kubernetes");
            jail.set_env("DRAFTD_CONFIG", "/elsewhere.toml");
            jail.set_env("DRAFTD_API_TOKEN", "not-a-setting");
            let c = load(jail).unwrap();
            assert_eq!(c.stands.ttl, Duration::from_secs(7200));
            assert_eq!(c.cluster.mode, ClusterMode::Kubernetes);
            Ok(())
        });
    }

    #[test]
    fn bad_duration_names_key_and_file() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", "[stands]\nttl = \"two days\"\n")?;
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("stands.ttl"), "{err}");
            assert!(err.contains("draftd.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_environment_value_names_the_variable() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", EXAMPLE)?;
            jail.set_env("DRAFTD_STANDS__MAX_CONCURRENT_RUNS", "many");
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("DRAFTD_STANDS__MAX_CONCURRENT_RUNS"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_listen_backlog_defaults_above_tokios_and_zero_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", EXAMPLE)?;
            assert_eq!(load(jail).unwrap().intake.listen_backlog, 1024);
            jail.set_env("DRAFTD_INTAKE__LISTEN_BACKLOG", "4096");
            assert_eq!(load(jail).unwrap().intake.listen_backlog, 4096);
            jail.set_env("DRAFTD_INTAKE__LISTEN_BACKLOG", "0");
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("intake.listen_backlog"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn project_run_limits_are_read_and_zero_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", EXAMPLE)?;
            assert_eq!(load(jail).unwrap().projects[0].max_concurrent_runs, None);
            jail.create_file("draftd.toml", &format!("{EXAMPLE}max_concurrent_runs = 4\n"))?;
            assert_eq!(load(jail).unwrap().projects[0].max_concurrent_runs, Some(4));
            jail.create_file("draftd.toml", &format!("{EXAMPLE}max_concurrent_runs = 0\n"))?;
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("projects[0].max_concurrent_runs"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors_not_silence() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", "[stands]\nttll = \"2h\"\n")?;
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("ttll"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/draftd.toml"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/draftd.toml"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_project_key() {
        Jail::expect_with(|jail| {
            let bad_glob = EXAMPLE.replace("webhook_secret_env", "branches = [\"feature/[\"]\nwebhook_secret_env");
            jail.create_file("draftd.toml", &bad_glob)?;
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("projects[0].branches") && err.contains("draftd.toml"), "{err}");

            jail.create_file("draftd.toml", &EXAMPLE.replace("\"shop\"", "\"Shop Co\""))?;
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("projects[0].name"), "{err}");

            jail.create_file("draftd.toml", &EXAMPLE.replace("webhook_secret_env = \"SHOP_SECRET\"", ""))?;
            let err = load(jail).unwrap_err().to_string();
            assert!(err.contains("projects[0].webhook_secret_env"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn values_parsed_at_load_keep_their_explanations() {
        let project = "[[projects]]\nname = \"s\"\nforge = \"github\"\nrepo = \"a/s\"\nwebhook_secret_env = \"X\"\n";
        let cases = [
            ("public_url = \"example.com\"\n", "key `public_url`: must be a URL with a scheme"),
            ("[reaper]\nschedule = \"often\"\n", "\"often\" is not a cron expression with seconds"),
            (
                "[vault]\naddress = \"http://v\"\nauth = \"token\"\ntoken_env = \"T\"\nkv_mount = \"/draft\"\n",
                "key `vault.kv_mount`: must be a path without leading or trailing /",
            ),
            ("[build]\nnamespace = \"Builds\"\n", "key `build.namespace`: must be a namespace name (a DNS label)"),
            (&format!("{project}branches = []\n"), "key `projects[0].branches`: must list at least one glob"),
            (
                &format!("{project}build = {{ context = \"../up\" }}\n"),
                "key `projects[0].build.context`: \"../up\" must be a relative path inside the repository",
            ),
            (&project.replace("a/s", "as"), "key `projects[0].repo`: must be the repository path, like owner/name"),
        ];
        for (text, expected) in cases {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn missing_secret_variable_is_named_and_secret_never_printed() {
        Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", EXAMPLE)?;
            let c = load(jail).unwrap();
            let err = Projects::resolve(&c).unwrap_err().to_string();
            assert!(err.contains("SHOP_SECRET") && err.contains("projects[0].webhook_secret_env"), "{err}");

            jail.set_env("SHOP_SECRET", "hunter2-very-secret");
            let projects = Projects::resolve(&c).unwrap();
            let printed = format!("{:?}", projects.projects);
            assert!(!printed.contains("hunter2"), "{printed}");
            Ok(())
        });
    }

    #[test]
    fn branch_globs_keep_single_star_within_a_segment() {
        let set = branch_globs(&["feature/*".into(), "bugfix/**".into()]).unwrap();
        assert!(set.is_match("feature/x"));
        assert!(!set.is_match("feature/x/y"));
        assert!(set.is_match("bugfix/a/b/c"));
        assert!(!set.is_match("main"));
    }
}
