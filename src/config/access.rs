//! `[access]`: stand URLs behind forge sign-in. With it configured, a project's stands are private
//! unless it says `access = "public"`: ingress-nginx asks draftd's `/access/check` before each
//! request, and people sign in with the project's forge.

use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, ForgeKind, ProjectConfig};

/// Who may open a project's stand URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// People who can read the repository on its forge, after signing in there; programs with the
    /// stand's access token.
    Forge,
    /// Anyone who has the URL.
    Public,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::Forge => "forge",
            AccessMode::Public => "public",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Where browsers reach draftd's `/access/…` pages: https, on a host under `cookie_domain`, since
    /// only a response from there can set a cookie every stand's host receives.
    #[serde(deserialize_with = "super::url_with_scheme")]
    pub url: String,
    /// The stands' parent domain (`draft.example.com`): the sign-in cookie is set for it, so one
    /// sign-in serves every stand of a repository.
    pub cookie_domain: String,
    /// What ingress-nginx calls before each request (`auth-url`), usually draftd's Service inside the
    /// cluster (`http://draftd.draftd.svc:8080/access/check`); `<url>/access/check` when unset.
    pub check_url: Option<String>,
    /// The environment variable holding the key that signs cookies and access tokens (at least 32
    /// bytes; every replica needs the same one, and changing it signs everyone out).
    pub key_env: String,
    /// How long a forge's "can read" stands before it is asked again: briefly, so someone removed
    /// from the repository loses the stands soon after, without a forge request per page load.
    #[serde(default = "AccessConfig::recheck", with = "humantime_serde")]
    pub recheck: Duration,
    /// The cookie's name; another if a stand's app already uses it.
    #[serde(default = "AccessConfig::cookie_name")]
    pub cookie_name: String,
    /// The OAuth app people sign in to GitHub with: a GitHub App's client (no scopes needed) or an
    /// OAuth App (give it `scope = "repo"` to see private repositories).
    pub github: Option<OAuthApp>,
    /// The OAuth application people sign in to GitLab with (scope `read_api` by default).
    pub gitlab: Option<OAuthApp>,
}

impl AccessConfig {
    fn recheck() -> Duration {
        Duration::from_secs(600)
    }
    fn cookie_name() -> String {
        "draftd_access".into()
    }

    /// The URL ingress-nginx asks before each request of a private stand.
    pub fn check_url(&self) -> String {
        self.check_url.clone().unwrap_or_else(|| format!("{}/access/check", self.url.trim_end_matches('/')))
    }

    /// Where ingress-nginx sends a person without a valid cookie; it adds `rd` itself.
    pub fn signin_url(&self) -> String {
        format!("{}/access/start", self.url.trim_end_matches('/'))
    }

    /// Where the forge sends people back to.
    pub fn callback_url(&self) -> String {
        format!("{}/access/callback", self.url.trim_end_matches('/'))
    }

    pub fn app(&self, forge: ForgeKind) -> Option<&OAuthApp> {
        match forge {
            ForgeKind::Github => self.github.as_ref(),
            ForgeKind::Gitlab => self.gitlab.as_ref(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret_env: String,
    /// The forge's web address, for its authorize and token endpoints: GitHub `https://github.com`
    /// (or the Enterprise server), GitLab `[gitlab] url` when unset.
    pub url: Option<String>,
    /// Only GitHub: its API, `[github] api_url` when unset.
    pub api_url: Option<String>,
    /// Scopes asked for: none by default on GitHub (a GitHub App's user token needs none),
    /// `read_api` on GitLab (the user and the project).
    pub scope: Option<String>,
}

/// Where a forge's sign-in happens, with defaults filled in from `[github]` / `[gitlab]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthEndpoints {
    pub forge: ForgeKind,
    pub client_id: String,
    pub authorize: String,
    pub token: String,
    /// The API base the person's token is used on (`/user`, the repository).
    pub api: String,
    pub scope: String,
}

impl Config {
    /// How `project`'s stands are reached: its own `access`, else private when `[access]` is set.
    pub fn access_mode(&self, project: &ProjectConfig) -> AccessMode {
        project.access.unwrap_or(if self.access.is_some() { AccessMode::Forge } else { AccessMode::Public })
    }

    /// The sign-in endpoints of `forge`, when `[access]` configures an app for it.
    pub fn oauth_endpoints(&self, forge: ForgeKind) -> Option<OAuthEndpoints> {
        let app = self.access.as_ref()?.app(forge)?;
        let trim = |u: &str| u.trim_end_matches('/').to_owned();
        Some(match forge {
            ForgeKind::Github => {
                let web = trim(app.url.as_deref().unwrap_or("https://github.com"));
                OAuthEndpoints {
                    forge,
                    client_id: app.client_id.clone(),
                    authorize: format!("{web}/login/oauth/authorize"),
                    token: format!("{web}/login/oauth/access_token"),
                    api: trim(app.api_url.as_deref().unwrap_or(&self.github.api_url)),
                    scope: app.scope.clone().unwrap_or_default(),
                }
            }
            ForgeKind::Gitlab => {
                let web = trim(app.url.as_deref().unwrap_or(&self.gitlab.url));
                OAuthEndpoints {
                    forge,
                    client_id: app.client_id.clone(),
                    authorize: format!("{web}/oauth/authorize"),
                    token: format!("{web}/oauth/token"),
                    api: format!("{web}/api/v4"),
                    scope: app.scope.clone().unwrap_or_else(|| "read_api".into()),
                }
            }
        })
    }

    /// `[access]`'s relations: its URL under the cookie domain, and every private project's forge
    /// with an app to sign in with.
    pub(super) fn check_access(&self) -> Result<(), ConfigError> {
        if let Some(access) = &self.access {
            let url = url::Url::parse(&access.url).map_err(|e| self.invalid("access.url", e.to_string()))?;
            let domain = access.cookie_domain.trim_start_matches('.').to_ascii_lowercase();
            if domain.is_empty() || !domain.contains('.') {
                return Err(
                    self.invalid("access.cookie_domain", "must be the stands' parent domain, like draft.example.com")
                );
            }
            let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
            if !(host == domain || host.ends_with(&format!(".{domain}"))) {
                return Err(self.invalid(
                    "access.url",
                    format!(
                        "its host {host:?} must be {domain} or under it, or the sign-in cookie cannot reach the stands"
                    ),
                ));
            }
            if url.scheme() != "https" {
                return Err(self.invalid("access.url", "must be https: the sign-in cookie is Secure"));
            }
            if access.recheck < Duration::from_secs(10) || access.recheck > Duration::from_secs(24 * 3600) {
                return Err(self.invalid("access.recheck", "must be at least 10s and at most 24h"));
            }
        }
        for (i, p) in self.projects.iter().enumerate() {
            if p.forks == super::ForkPolicy::Approve && self.access.as_ref().and_then(|a| a.app(p.forge)).is_none() {
                return Err(self.invalid(
                    format!("projects[{i}].forks"),
                    format!(
                        "\"approve\" puts approved forks' stands behind {} sign-in: configure [access] and [access.{}]",
                        p.forge.name(),
                        p.forge.as_str()
                    ),
                ));
            }
            if self.access_mode(p) != AccessMode::Forge {
                continue;
            }
            let key = format!("projects[{i}].access");
            let Some(access) = &self.access else {
                return Err(self.invalid(key, "\"forge\" needs [access] configured"));
            };
            if access.app(p.forge).is_none() {
                let forge = p.forge.as_str();
                return Err(self.invalid(
                    key,
                    format!("is \"forge\" (the default with [access]) but [access.{forge}] is not configured: add it, or set access = \"public\""),
                ));
            }
        }
        Ok(())
    }
}

/// `[access]`'s secrets, read once when `serve` starts.
#[derive(Debug, Clone)]
pub struct AccessSecrets {
    pub key: SecretString,
    pub github: Option<SecretString>,
    pub gitlab: Option<SecretString>,
}

impl AccessSecrets {
    /// `None` without `[access]`; a missing variable is an error naming it.
    pub fn resolve(config: &Config, lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let Some(access) = &config.access else { return Ok(None) };
        let read = |key: &str, var: &str| {
            lookup(var).filter(|v| !v.is_empty()).map(SecretString::from).ok_or_else(|| ConfigError::MissingSecret {
                source_name: config.source_name(),
                key: key.to_owned(),
                var: var.to_owned(),
            })
        };
        let key = read("access.key_env", &access.key_env)?;
        // As `credentials::access::AccessKey` needs it: HMAC-SHA256 is as strong as its key up to 32 bytes.
        let len = secrecy::ExposeSecret::expose_secret(&key).len();
        if len < 32 {
            let message = format!(
                "the key in {} is {len} bytes; it must be at least 32 (`openssl rand -base64 48`)",
                access.key_env
            );
            return Err(config.invalid("access.key_env", message));
        }
        Ok(Some(AccessSecrets {
            key,
            github: access
                .github
                .as_ref()
                .map(|a| read("access.github.client_secret_env", &a.client_secret_env))
                .transpose()?,
            gitlab: access
                .gitlab
                .as_ref()
                .map(|a| read("access.gitlab.client_secret_env", &a.client_secret_env))
                .transpose()?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "[[projects]]\nname = \"shop\"\nforge = \"github\"\nrepo = \"acme/shop\"\nwebhook_secret_env = \"S\"\n";
    const ACCESS: &str = "[access]\nurl = \"https://access.draft.example.com\"\ncookie_domain = \"draft.example.com\"\nkey_env = \"K\"\n[access.github]\nclient_id = \"Iv1.abc\"\nclient_secret_env = \"GS\"\n";

    #[test]
    fn stands_are_public_without_access_and_private_with_it_unless_a_project_says() {
        let config = Config::from_toml(BASE).unwrap();
        assert_eq!(config.access_mode(&config.projects[0]), AccessMode::Public);
        let config = Config::from_toml(&format!("{ACCESS}{BASE}")).unwrap();
        assert_eq!(config.access_mode(&config.projects[0]), AccessMode::Forge);
        let config = Config::from_toml(&format!("{ACCESS}{BASE}access = \"public\"\n")).unwrap();
        assert_eq!(config.access_mode(&config.projects[0]), AccessMode::Public);
    }

    #[test]
    fn endpoints_default_to_the_public_forges_and_follow_enterprise_settings() {
        let config = Config::from_toml(&format!("{ACCESS}{BASE}")).unwrap();
        let gh = config.oauth_endpoints(ForgeKind::Github).unwrap();
        assert_eq!(gh.authorize, "https://github.com/login/oauth/authorize");
        assert_eq!(gh.token, "https://github.com/login/oauth/access_token");
        assert_eq!(gh.api, "https://api.github.com");
        let ghe = ACCESS.replace(
            "client_id",
            "url = \"https://ghe.example.com/\"\napi_url = \"https://ghe.example.com/api/v3\"\nclient_id",
        );
        let config = Config::from_toml(&format!("{ghe}{BASE}")).unwrap();
        let gh = config.oauth_endpoints(ForgeKind::Github).unwrap();
        assert_eq!(
            (gh.authorize.as_str(), gh.api.as_str()),
            ("https://ghe.example.com/login/oauth/authorize", "https://ghe.example.com/api/v3")
        );
        let gl = format!(
            "[gitlab]\nurl = \"https://git.example.com\"\n{ACCESS}[access.gitlab]\nclient_id = \"c\"\nclient_secret_env = \"LS\"\n{BASE}"
        );
        let gl = Config::from_toml(&gl).unwrap().oauth_endpoints(ForgeKind::Gitlab).unwrap();
        assert_eq!(
            (gl.token.as_str(), gl.api.as_str(), gl.scope.as_str()),
            ("https://git.example.com/oauth/token", "https://git.example.com/api/v4", "read_api")
        );
    }

    #[test]
    fn access_settings_that_cannot_work_are_refused_naming_the_key() {
        let outside = ACCESS.replace("https://access.draft.example.com", "https://draftd.example.org");
        let err = Config::from_toml(&format!("{outside}{BASE}")).unwrap_err().to_string();
        assert!(err.contains("access.url") && err.contains("under it"), "{err}");
        let http = ACCESS.replace("https://", "http://");
        let err = Config::from_toml(&format!("{http}{BASE}")).unwrap_err().to_string();
        assert!(err.contains("must be https"), "{err}");
        let gitlab_project = BASE.replace("\"github\"", "\"gitlab\"");
        let err = Config::from_toml(&format!("{ACCESS}{gitlab_project}")).unwrap_err().to_string();
        assert!(err.contains("projects[0].access") && err.contains("[access.gitlab]"), "{err}");
        let err = Config::from_toml(&format!("{BASE}access = \"forge\"\n")).unwrap_err().to_string();
        assert!(err.contains("needs [access]"), "{err}");
    }

    #[test]
    fn secrets_are_read_from_the_named_variables() {
        let config = Config::from_toml(&format!("{ACCESS}{BASE}")).unwrap();
        let err = AccessSecrets::resolve(&config, |v| (v == "K").then(|| "k".repeat(32))).unwrap_err().to_string();
        assert!(err.contains("GS"), "{err}");
        let err = AccessSecrets::resolve(&config, |_| Some("x".into())).unwrap_err().to_string();
        assert!(err.contains("at least 32") && !err.contains("xxx"), "{err}");
        let secrets = AccessSecrets::resolve(&config, |_| Some("x".repeat(32))).unwrap().unwrap();
        assert!(secrets.github.is_some() && secrets.gitlab.is_none());
    }
}
