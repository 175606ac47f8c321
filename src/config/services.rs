//! The systems draftd talks to besides the cluster: `[api]`, `[postgres]` (the server of the stands'
//! databases), `[vault]`, `[github]` and `[gitlab]`. `[registry]` and `[build]` are in
//! [`super::registry`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::{checked, url_with_scheme};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Variable holding the bearer token for the API and the dashboard's buttons.
    pub token_env: Option<String>,
}

/// Every credential a stand receives expires within an hour (DESIGN.md), so that is the longest,
/// and the default, lifetime of a login draftd issues.
fn credential_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// The server hosting per-stand databases.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Environment variable holding the admin URL (a role with CREATEDB and CREATEROLE).
    pub admin_url_env: String,
    /// `host:port` at which stands (and Vault) reach this server, when it differs from the admin
    /// URL's (draftd often reaches it through a tunnel or a loopback address the pods cannot use).
    pub host: Option<String>,
    /// Without `[vault]`: how long each login draftd issues lives (`VALID UNTIL`); draftd issues a
    /// new one before it ends. At most 1h.
    #[serde(default = "credential_ttl", with = "humantime_serde")]
    pub credential_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VaultAuth {
    Token,
    Approle,
    Kubernetes,
}

/// Vault or OpenBao.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    #[serde(deserialize_with = "url_with_scheme")]
    pub address: String,
    pub auth: VaultAuth,
    /// `auth = "token"`: the environment variable, or the file, holding the token.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// `auth = "approle"`: the role id, and the environment variable or file holding the secret id.
    pub role_id: Option<String>,
    pub secret_id_env: Option<String>,
    pub secret_id_file: Option<PathBuf>,
    /// `auth = "kubernetes"`: the Vault role bound to draftd's ServiceAccount.
    pub kubernetes_role: Option<String>,
    /// Where Kubernetes mounts the pod's ServiceAccount token.
    #[serde(default = "VaultConfig::jwt_file")]
    pub jwt_file: PathBuf,
    /// Where the auth method is mounted; default `approle` or `kubernetes` after `auth`.
    pub auth_mount: Option<String>,
    #[serde(default = "VaultConfig::kv_mount", deserialize_with = "mount_path")]
    pub kv_mount: String,
    /// The database secrets engine's mount, and the name of the connection draftd configures there
    /// for the server of `[postgres]`.
    #[serde(default = "VaultConfig::database_mount", deserialize_with = "mount_path")]
    pub database_mount: String,
    #[serde(default = "VaultConfig::database_connection", deserialize_with = "mount_path")]
    pub database_connection: String,
    /// Every credential a stand receives expires within this (the role's max TTL); the seed plan
    /// caps it at one hour. Before it ends draftd issues a new one and updates the Secret.
    #[serde(default = "credential_ttl", with = "humantime_serde")]
    pub credential_ttl: Duration,
    /// A lease's TTL when issued and the increment of each renewal, within `credential_ttl`: a
    /// credential draftd stops renewing (a stand it lost track of) dies this soon.
    #[serde(default = "VaultConfig::lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
}

/// The defaults of the keys `[vault]` may leave out.
impl VaultConfig {
    fn jwt_file() -> PathBuf {
        PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
    }
    fn kv_mount() -> String {
        "draft".into()
    }
    fn database_mount() -> String {
        "database".into()
    }
    fn database_connection() -> String {
        "draftd".into()
    }
    fn lease_ttl() -> Duration {
        Duration::from_secs(20 * 60)
    }
}

/// A Vault path segment as draftd joins it: `<mount>/<path>`.
fn mount_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |value: &String| {
        if value.is_empty() || value.starts_with('/') || value.ends_with('/') {
            Err("must be a path without leading or trailing /".to_owned())
        } else {
            Ok(())
        }
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubConfig {
    #[serde(deserialize_with = "url_with_scheme")]
    pub api_url: String,
    pub token_env: Option<String>,
    pub app_id: Option<u64>,
    pub private_key_file: Option<PathBuf>,
    /// The App's installation; when unset it is looked up per repository owner.
    pub installation_id: Option<u64>,
    /// One secret for every GitHub project (a GitHub App's webhook); projects may still set their own.
    pub webhook_secret_env: Option<String>,
    /// GitHub's best practices, per installation (or token): at least this between writes...
    #[serde(with = "humantime_serde")]
    pub write_gap: Duration,
    /// ...and at most this many content-creating requests a minute and an hour (its secondary limits).
    pub creates_per_minute: usize,
    pub creates_per_hour: usize,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.github.com".into(),
            token_env: None,
            app_id: None,
            private_key_file: None,
            installation_id: None,
            webhook_secret_env: None,
            // GitHub's "Best practices for using the REST API" and its secondary rate limits.
            write_gap: Duration::from_secs(1),
            creates_per_minute: 80,
            creates_per_hour: 500,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitlabConfig {
    #[serde(deserialize_with = "url_with_scheme")]
    pub url: String,
    pub token_env: Option<String>,
    /// One token for every GitLab project (a group webhook); projects may still set their own.
    pub webhook_secret_env: Option<String>,
}

impl Default for GitlabConfig {
    fn default() -> Self {
        Self { url: "https://gitlab.com".into(), token_env: None, webhook_secret_env: None }
    }
}
