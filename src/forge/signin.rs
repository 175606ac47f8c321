//! Signing people in with their forge (OAuth 2.0 authorization-code flow with PKCE), and asking the
//! forge, with the person's own token, whether they can read a repository. Both forges document
//! the same three requests: authorize (a browser redirect), token, and the API with the token.
//! GitHub Enterprise and self-managed GitLab differ only in their addresses ([`OAuthEndpoints`]).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::{ForgeKind, OAuthEndpoints};

/// A forge that does not answer within this is taken as down: the person sees an error page and
/// can try again, rather than a browser spinning.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Who signed in, as their forge names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub login: String,
    pub id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The forge turned the sign-in down (a used or expired code, a wrong client secret, a
    /// verifier that does not match); `code` is the forge's own error code.
    #[error("{forge} refused the sign-in: {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused { forge: &'static str, code: String, description: Option<String> },
    /// The person's token was not taken by the API (revoked meanwhile).
    #[error("{forge} did not take the token it had just given: {status}")]
    TokenRefused { forge: &'static str, status: u16 },
    #[error("{forge} could not be reached or failed: {message}")]
    Unavailable { forge: &'static str, message: String },
    #[error("no sign-in is configured for {0}")]
    NotConfigured(&'static str),
}

/// The OAuth apps of `[access]`, with their secrets.
#[derive(Clone)]
pub struct SignIn {
    apps: Vec<(OAuthEndpoints, SecretString)>,
    http: reqwest::Client,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn").field("forges", &self.apps.iter().map(|(e, _)| e.forge).collect::<Vec<_>>()).finish()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl SignIn {
    pub fn new(apps: Vec<(OAuthEndpoints, SecretString)>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("draftd/", env!("CARGO_PKG_VERSION")))
            // The token endpoint answers directly; following a redirect could send the code elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client with rustls");
        SignIn { apps, http }
    }

    pub fn serves(&self, forge: ForgeKind) -> bool {
        self.app(forge).is_ok()
    }

    fn app(&self, forge: ForgeKind) -> Result<&(OAuthEndpoints, SecretString), SignInError> {
        self.apps.iter().find(|(e, _)| e.forge == forge).ok_or(SignInError::NotConfigured(forge.as_str()))
    }

    /// Where to send the browser: the forge's authorize page for this app, this `state` and PKCE
    /// `challenge` (S256), coming back to `redirect`.
    pub fn authorize_url(
        &self,
        forge: ForgeKind,
        state: &str,
        challenge: &str,
        redirect: &str,
    ) -> Result<String, SignInError> {
        let (app, _) = self.app(forge)?;
        let mut url = url::Url::parse(&app.authorize)
            .map_err(|e| SignInError::Unavailable { forge: forge.as_str(), message: e.to_string() })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("client_id", &app.client_id)
                .append_pair("redirect_uri", redirect)
                .append_pair("state", state)
                .append_pair("code_challenge", challenge)
                .append_pair("code_challenge_method", "S256");
            if forge == ForgeKind::Gitlab {
                q.append_pair("response_type", "code");
            }
            if !app.scope.is_empty() {
                q.append_pair("scope", &app.scope);
            }
        }
        Ok(url.into())
    }

    /// The person's token for `code`, proving with `verifier` that this is who started the flow.
    pub async fn exchange(
        &self,
        forge: ForgeKind,
        code: &str,
        verifier: &str,
        redirect: &str,
    ) -> Result<SecretString, SignInError> {
        let (app, secret) = self.app(forge)?;
        let name = forge.as_str();
        let mut form = vec![
            ("client_id", app.client_id.as_str()),
            ("client_secret", secret.expose_secret()),
            ("code", code),
            ("redirect_uri", redirect),
            ("code_verifier", verifier),
        ];
        if forge == ForgeKind::Gitlab {
            form.push(("grant_type", "authorization_code"));
        }
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&form).finish();
        let response = self
            .http
            .post(&app.token)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| SignInError::Unavailable { forge: name, message: without_url(&e) })?;
        let status = response.status();
        if status.is_server_error() {
            return Err(SignInError::Unavailable { forge: name, message: format!("token endpoint answered {status}") });
        }
        // GitHub answers a refused code with 200 and an `error` field; GitLab with 400/401 and the same field.
        let answer: TokenAnswer = response.json().await.map_err(|e| SignInError::Unavailable {
            forge: name,
            message: format!("token endpoint answered {status} without the documented JSON: {}", without_url(&e)),
        })?;
        match (answer.access_token, answer.error) {
            (Some(token), None) if !token.is_empty() => Ok(SecretString::from(token)),
            (_, error) => Err(SignInError::Refused {
                forge: name,
                code: error.unwrap_or_else(|| format!("no access_token ({status})")),
                description: answer.error_description,
            }),
        }
    }

    async fn api_get(
        &self,
        forge: ForgeKind,
        path: &str,
        token: &SecretString,
    ) -> Result<reqwest::Response, SignInError> {
        let (app, _) = self.app(forge)?;
        let mut request = self.http.get(format!("{}{path}", app.api)).bearer_auth(token.expose_secret());
        if forge == ForgeKind::Github {
            request = request
                .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28");
        }
        let response = request
            .send()
            .await
            .map_err(|e| SignInError::Unavailable { forge: forge.as_str(), message: without_url(&e) })?;
        if response.status().is_server_error() {
            let message = format!("{path} answered {}", response.status());
            return Err(SignInError::Unavailable { forge: forge.as_str(), message });
        }
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(SignInError::TokenRefused { forge: forge.as_str(), status: 401 });
        }
        Ok(response)
    }

    /// Who the token belongs to.
    pub async fn person(&self, forge: ForgeKind, token: &SecretString) -> Result<Person, SignInError> {
        #[derive(Deserialize)]
        struct User {
            login: Option<String>,
            username: Option<String>,
            id: u64,
        }
        let response = self.api_get(forge, "/user", token).await?;
        let status = response.status();
        let bad = |message: String| SignInError::Unavailable { forge: forge.as_str(), message };
        if !status.is_success() {
            return Err(bad(format!("/user answered {status}")));
        }
        let user: User = response.json().await.map_err(|e| bad(format!("/user: {}", without_url(&e))))?;
        let login = match forge {
            ForgeKind::Github => user.login,
            ForgeKind::Gitlab => user.username,
        };
        login
            .filter(|l| !l.is_empty())
            .map(|login| Person { login, id: user.id })
            .ok_or_else(|| bad("/user named nobody".into()))
    }

    /// Whether the token's owner can read `repo`: the forge shows them the repository (both hide
    /// private ones from people without access, answering 404).
    pub async fn can_read(&self, forge: ForgeKind, token: &SecretString, repo: &str) -> Result<bool, SignInError> {
        let path = match forge {
            ForgeKind::Github => format!("/repos/{repo}"),
            ForgeKind::Gitlab => {
                format!("/projects/{}", url::form_urlencoded::byte_serialize(repo.as_bytes()).collect::<String>())
            }
        };
        let response = self.api_get(forge, &path, token).await?;
        let status = response.status();
        if matches!(status.as_u16(), 403 | 404) {
            return Ok(false);
        }
        if !status.is_success() {
            return Err(SignInError::Unavailable {
                forge: forge.as_str(),
                message: format!("{path} answered {status}"),
            });
        }
        #[derive(Deserialize)]
        struct Repo {
            permissions: Option<serde_json::Value>,
        }
        let body: Repo = response.json().await.map_err(|e| SignInError::Unavailable {
            forge: forge.as_str(),
            message: format!("{path}: {}", without_url(&e)),
        })?;
        // GitHub lists `pull` for who can read; a repository shown without permissions (public, to a
        // token without repo scope) is readable by everyone anyway.
        Ok(match (forge, body.permissions) {
            (ForgeKind::Github, Some(p)) => p.get("pull").and_then(|v| v.as_bool()).unwrap_or(true),
            _ => true,
        })
    }
}

/// reqwest's errors name the URL, whose query may carry a code; only the kind is kept.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_decode() {
        "the answer is not the documented JSON"
    } else {
        "the request failed"
    };
    kind.to_owned()
}

/// A PKCE verifier (RFC 7636: 43 characters of base64url) and its S256 challenge.
pub fn pkce() -> (String, String) {
    use base64::Engine;
    use sha2::Digest;
    let verifier = random_token();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// 32 random bytes from the operating system, base64url: states and verifiers nobody can guess.
pub fn random_token() -> String {
    use base64::Engine;
    // v4 UUIDs come from the operating system's CSPRNG (getrandom); two give 244 random bits.
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn github() -> SignIn {
        SignIn::new(vec![(
            OAuthEndpoints {
                forge: ForgeKind::Github,
                client_id: "Iv1.abc".into(),
                authorize: "https://github.com/login/oauth/authorize".into(),
                token: "https://github.com/login/oauth/access_token".into(),
                api: "https://api.github.com".into(),
                scope: String::new(),
            },
            SecretString::from("s"),
        )])
    }

    #[test]
    fn the_authorize_url_carries_state_challenge_and_callback_and_never_the_secret() {
        let url =
            github().authorize_url(ForgeKind::Github, "st", "ch", "https://access.x.test/access/callback").unwrap();
        assert_eq!(
            url,
            "https://github.com/login/oauth/authorize?client_id=Iv1.abc&redirect_uri=https%3A%2F%2Faccess.x.test%2Faccess%2Fcallback&state=st&code_challenge=ch&code_challenge_method=S256"
        );
        assert!(matches!(
            github().authorize_url(ForgeKind::Gitlab, "s", "c", "r"),
            Err(SignInError::NotConfigured("gitlab"))
        ));
    }

    #[test]
    fn pkce_challenges_are_the_s256_of_their_verifier() {
        use base64::Engine;
        use sha2::Digest;
        let (verifier, challenge) = pkce();
        assert_eq!(verifier.len(), 43);
        assert!(verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let expected =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        assert_eq!(challenge, expected);
        assert_ne!(pkce().0, verifier);
    }
}
