//! The registry adapter: whether a tag is in an OCI registry and which manifest it names, and the
//! pull credentials a stand's namespace gets. A leaf: its own errors, no pipeline types.
//!
//! References and the distribution spec's token flow (the `WWW-Authenticate` challenge, the realm,
//! the scope) come from `oci-client`. The look itself is one `HEAD` on the manifest, made here,
//! because `oci-client`'s own `fetch_manifest_digest` answers a missing tag with a second `GET` and
//! a 401 instead of logging in again when a token expires: a waiting stand would cost the registry
//! three requests a look instead of one.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;

use crate::config::{BadImage, ImageRepository, RegistryConfig};
use crate::stand::Failure;

/// What the image step accepts: OCI image indexes and manifests, Docker v2 manifests and manifest
/// lists. An index (multi-arch) is pinned as a whole; the node picks its platform.
pub const ACCEPTED_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// An image by repository and tag, as the registry is asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    reference: Reference,
}

impl ImageRef {
    /// `image` names a repository (`registry.example.com/acme/shop`, `ghcr.io/acme/shop`, or
    /// Docker Hub's `acme/shop`), without tag or digest; `tag` is the stand's.
    pub fn parse(image: &str, tag: &str) -> Result<ImageRef, RegistryError> {
        Ok(ImageRef { reference: ImageRepository::parse(image)?.tagged(tag)? })
    }

    /// The registry's host as written (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        self.reference.registry()
    }

    pub fn repository(&self) -> &str {
        self.reference.repository()
    }

    pub fn tag(&self) -> &str {
        self.reference.tag().unwrap_or_default()
    }

    /// `registry/repository:tag`.
    pub fn tagged(&self) -> String {
        format!("{}/{}:{}", self.registry(), self.repository(), self.tag())
    }

    /// `registry/repository@digest`: what the stand runs, so what was checked is what runs.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry(), self.repository())
    }

    /// Where the registry's API is: Docker Hub's images live on `index.docker.io`.
    fn api_host(&self) -> &str {
        self.reference.resolve_registry()
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.tagged())
    }
}

/// A manifest the registry holds under the tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// `sha256:…`, as the registry names it (`Docker-Content-Digest`) or of its bytes.
    pub digest: String,
    pub media_type: String,
}

impl Manifest {
    /// An index or manifest list: one image per platform.
    pub fn is_index(&self) -> bool {
        self.media_type.contains("index") || self.media_type.contains("manifest.list")
    }
}

/// The answer of one look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Manifest),
    /// The registry answered 404: no such tag (or no such repository, yet).
    Absent,
}

impl From<BadImage> for RegistryError {
    fn from(BadImage { image, reason }: BadImage) -> Self {
        RegistryError::BadReference { image, reason }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{image:?} is not an image repository: {reason}")]
    BadReference { image: String, reason: String },
    #[error("registry {registry} could not be reached: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("registry {registry} refused draftd for {repository}: {reason}")]
    Refused { registry: String, repository: String, reason: String },
    #[error("registry {registry} answered {status} for {what}")]
    Status { registry: String, status: u16, what: String },
    #[error("registry {registry} serves {image} as {media_type:?}, which is not an OCI or Docker v2 manifest or index")]
    MediaType { registry: String, image: String, media_type: String },
    #[error("registry credentials: {0}")]
    Credentials(String),
}

impl Failure for RegistryError {
    /// Worth looking again: the registry, its token service or the network may be back.
    fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            RegistryError::BadReference { .. } => "image_reference",
            RegistryError::Unreachable { .. } => "registry_unreachable",
            RegistryError::Refused { .. } => "registry_refused",
            RegistryError::Status { .. } => "registry_status",
            RegistryError::MediaType { .. } => "image_media_type",
            RegistryError::Credentials(_) => "registry_credentials",
        }
    }
}

/// The registry of the projects' images, as the image step sees it.
pub trait Registry: Send + Sync + 'static {
    /// One look at the tag: never waits, never retries (the image step paces its looks).
    fn lookup(&self, image: &ImageRef) -> impl Future<Output = Result<Lookup, RegistryError>> + Send;

    /// A `config.json` (`.dockerconfigjson`) with draftd's login to the image's registry, when it
    /// has one: only that registry's entry, never a whole `config.json` it was given.
    fn login_json(&self, image: &ImageRef) -> Result<Option<SecretString>, RegistryError>;
}

/// How draftd is known to a registry (for one repository: tokens are scoped to it).
#[derive(Clone)]
enum Login {
    Anonymous,
    Basic(String, SecretString),
    Bearer(SecretString),
}

/// The registry over HTTP, with `[registry]`'s credentials and TLS settings.
pub struct OciRegistry {
    settings: RegistryConfig,
    oci: oci_client::Client,
    http: reqwest::Client,
    /// Per `registry/repository`: the login of the last successful look, reused until refused.
    logins: Mutex<HashMap<String, Login>>,
}

impl OciRegistry {
    pub fn new(settings: &RegistryConfig) -> Result<OciRegistry, RegistryError> {
        let mut extra = Vec::new();
        let mut http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            // A registry redirects blob reads to storage, never manifest HEADs; a redirect here
            // would carry the login elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("draftd/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| RegistryError::Credentials(format!("reading ca_file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| RegistryError::Credentials(format!("ca_file {}: {e}", path.display())))?;
            http = http.tls_certs_merge(certs);
            extra.push(Certificate { encoding: CertificateEncoding::Pem, data: pem });
        }
        let config = ClientConfig {
            protocol: if settings.insecure { ClientProtocol::Http } else { ClientProtocol::Https },
            extra_root_certificates: extra,
            read_timeout: Some(settings.request_timeout),
            connect_timeout: Some(settings.request_timeout.min(Duration::from_secs(10))),
            ..ClientConfig::default()
        };
        let oci = oci_client::Client::try_from(config).map_err(|e| RegistryError::Credentials(e.to_string()))?;
        let http = http.build().map_err(|e| RegistryError::Credentials(e.to_string()))?;
        Ok(OciRegistry { settings: settings.clone(), oci, http, logins: Mutex::new(HashMap::new()) })
    }

    fn scheme(&self) -> &'static str {
        if self.settings.insecure { "http" } else { "https" }
    }

    /// The credentials for `registry`, read now: a rotated file or variable counts at the next login.
    fn credentials(&self, registry: &str) -> Result<Option<(String, SecretString)>, RegistryError> {
        let s = &self.settings;
        if let Some(user) = &s.username {
            let password = match (&s.password_env, &s.password_file) {
                (Some(var), _) => std::env::var(var)
                    .map_err(|_| RegistryError::Credentials(format!("environment variable {var} is not set")))?,
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| RegistryError::Credentials(format!("reading {}: {e}", path.display())))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
                (None, None) => return Err(RegistryError::Credentials("username without a password".into())),
            };
            return Ok(Some((user.clone(), SecretString::from(password))));
        }
        if let Some(path) = &s.docker_config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| RegistryError::Credentials(format!("reading {}: {e}", path.display())))?;
            return docker_config_entry(&text, registry)
                .map_err(|e| RegistryError::Credentials(format!("{}: {e}", path.display())));
        }
        Ok(None)
    }

    async fn login(&self, image: &ImageRef) -> Result<Login, RegistryError> {
        let creds = self.credentials(image.registry())?;
        let auth = match &creds {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.expose_secret().to_owned()),
            None => RegistryAuth::Anonymous,
        };
        let asked = self.oci.auth(&image.reference, &auth, RegistryOperation::Pull);
        let answer = tokio::time::timeout(self.settings.request_timeout * 2, asked).await.map_err(|_| {
            RegistryError::Unreachable {
                registry: image.registry().to_owned(),
                reason: format!("no answer to the login within {:?}", self.settings.request_timeout * 2),
            }
        })?;
        match answer {
            Ok(Some(token)) => Ok(Login::Bearer(SecretString::from(token))),
            Ok(None) => Ok(match creds {
                Some((user, password)) => Login::Basic(user, password),
                None => Login::Anonymous,
            }),
            Err(e) => Err(oci_error(image, e)),
        }
    }

    async fn head(&self, image: &ImageRef, login: &Login) -> Result<reqwest::Response, RegistryError> {
        let url =
            format!("{}://{}/v2/{}/manifests/{}", self.scheme(), image.api_host(), image.repository(), image.tag());
        let request =
            authorised(self.http.head(&url).header(reqwest::header::ACCEPT, ACCEPTED_MEDIA_TYPES.join(", ")), login);
        request.send().await.map_err(|e| unreachable(image, &e))
    }

    /// The manifest's bytes, for a registry that does not name the digest in its answer to `HEAD`.
    async fn digest_of_body(&self, image: &ImageRef, login: &Login) -> Result<String, RegistryError> {
        let url =
            format!("{}://{}/v2/{}/manifests/{}", self.scheme(), image.api_host(), image.repository(), image.tag());
        let request =
            authorised(self.http.get(&url).header(reqwest::header::ACCEPT, ACCEPTED_MEDIA_TYPES.join(", ")), login);
        let response = request.send().await.map_err(|e| unreachable(image, &e))?;
        if !response.status().is_success() {
            return Err(status(image, response.status().as_u16()));
        }
        let body = response.bytes().await.map_err(|e| unreachable(image, &e))?;
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&body))))
    }
}

fn authorised(request: reqwest::RequestBuilder, login: &Login) -> reqwest::RequestBuilder {
    match login {
        Login::Anonymous => request,
        Login::Basic(user, password) => request.basic_auth(user, Some(password.expose_secret())),
        Login::Bearer(token) => request.bearer_auth(token.expose_secret()),
    }
}

fn unreachable(image: &ImageRef, e: &reqwest::Error) -> RegistryError {
    // reqwest's errors name the URL, never a header: no credential can show here.
    RegistryError::Unreachable { registry: image.registry().to_owned(), reason: e.to_string() }
}

fn status(image: &ImageRef, status: u16) -> RegistryError {
    RegistryError::Status {
        registry: image.registry().to_owned(),
        status,
        what: format!("the manifest of {}", image.tagged()),
    }
}

fn refused(image: &ImageRef, reason: impl Into<String>) -> RegistryError {
    RegistryError::Refused {
        registry: image.registry().to_owned(),
        repository: image.repository().to_owned(),
        reason: reason.into(),
    }
}

fn oci_error(image: &ImageRef, e: OciDistributionError) -> RegistryError {
    match e {
        OciDistributionError::AuthenticationFailure(reason) => {
            // The token service's own words; it never echoes the password back.
            let reason = reason.trim();
            let reason = if reason.is_empty() { "its token service refused the credentials" } else { reason };
            refused(image, reason.chars().take(300).collect::<String>())
        }
        OciDistributionError::RequestError(e) => unreachable(image, &e),
        OciDistributionError::ServerError { code, .. } => status(image, code),
        other => RegistryError::Unreachable { registry: image.registry().to_owned(), reason: other.to_string() },
    }
}

impl Registry for OciRegistry {
    async fn lookup(&self, image: &ImageRef) -> Result<Lookup, RegistryError> {
        let key = format!("{}/{}", image.api_host(), image.repository());
        let cached = self.logins.lock().await.get(&key).cloned();
        let mut login = match cached {
            Some(login) => login,
            None => self.login(image).await?,
        };
        let mut logged_in_again = false;
        loop {
            let response = self.head(image, &login).await?;
            let code = response.status().as_u16();
            match code {
                200 => {
                    self.logins.lock().await.insert(key, login.clone());
                    let header = |name: &str| {
                        response.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned())
                    };
                    let media_type = header("content-type").unwrap_or_default();
                    let media_type = media_type.split(';').next().unwrap_or_default().trim().to_owned();
                    if !ACCEPTED_MEDIA_TYPES.contains(&media_type.as_str()) {
                        return Err(RegistryError::MediaType {
                            registry: image.registry().to_owned(),
                            image: image.tagged(),
                            media_type,
                        });
                    }
                    let digest = match header("docker-content-digest").filter(|d| d.starts_with("sha256:")) {
                        Some(d) => d,
                        None => self.digest_of_body(image, &login).await?,
                    };
                    return Ok(Lookup::Found(Manifest { digest, media_type }));
                }
                404 => {
                    self.logins.lock().await.insert(key, login);
                    return Ok(Lookup::Absent);
                }
                // A token that expired since it was issued (a long wait between looks, a token
                // service with short tokens): log in again, once.
                401 if !logged_in_again => {
                    self.logins.lock().await.remove(&key);
                    login = self.login(image).await?;
                    logged_in_again = true;
                }
                401 | 403 => {
                    self.logins.lock().await.remove(&key);
                    return Err(refused(image, format!("{code} on the manifest of {}", image.tagged())));
                }
                other => return Err(status(image, other)),
            }
        }
    }

    fn login_json(&self, image: &ImageRef) -> Result<Option<SecretString>, RegistryError> {
        let Some((user, password)) = self.credentials(image.registry())? else { return Ok(None) };
        Ok(Some(dockerconfigjson(image.registry(), &user, &password)))
    }
}

/// The `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson` Secret with one registry's login.
pub fn dockerconfigjson(registry: &str, user: &str, password: &SecretString) -> SecretString {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.expose_secret()));
    // Docker Hub's entry is keyed the way the Docker client and the kubelet know it.
    let key = if registry == "docker.io" { "https://index.docker.io/v1/" } else { registry };
    let json = serde_json::json!({
        "auths": { key: { "username": user, "password": password.expose_secret(), "auth": auth } }
    });
    SecretString::from(json.to_string())
}

/// The login a Docker `config.json` holds for `registry`: `auth` (base64 `user:password`) or
/// `username` and `password`, under the registry's host, a URL of it, or Docker Hub's aliases.
fn docker_config_entry(text: &str, registry: &str) -> Result<Option<(String, SecretString)>, String> {
    let config: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else { return Ok(None) };
    let hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let host_of = |key: &str| -> String {
        let rest = key.split_once("://").map_or(key, |(_, rest)| rest);
        rest.split('/').next().unwrap_or_default().to_ascii_lowercase()
    };
    let wanted = registry.to_ascii_lowercase();
    let entry = auths.iter().find_map(|(key, entry)| {
        let host = host_of(key);
        let matches = host == wanted || (hub.contains(&host.as_str()) && hub.contains(&wanted.as_str()));
        matches.then_some(entry)
    });
    let Some(entry) = entry else { return Ok(None) };
    let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).filter(|v| !v.is_empty());
    if let (Some(user), Some(password)) = (field("username"), field("password")) {
        return Ok(Some((user.to_owned(), SecretString::from(password.to_owned()))));
    }
    if let Some(auth) = field("auth") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .map_err(|_| format!("the auth of {registry} is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| format!("the auth of {registry} is not text"))?;
        let (user, password) =
            decoded.split_once(':').ok_or_else(|| format!("the auth of {registry} is not user:password"))?;
        return Ok(Some((user.to_owned(), SecretString::from(password.to_owned()))));
    }
    Err(format!("the entry for {registry} has neither auth nor username and password"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_repository_and_the_stands_tag() {
        let r = ImageRef::parse("registry.example.com:5000/acme/shop", "draft-login-abcdef1").unwrap();
        assert_eq!(r.registry(), "registry.example.com:5000");
        assert_eq!(r.repository(), "acme/shop");
        assert_eq!(r.tagged(), "registry.example.com:5000/acme/shop:draft-login-abcdef1");
        assert_eq!(r.pinned("sha256:00"), "registry.example.com:5000/acme/shop@sha256:00");
        let hub = ImageRef::parse("acme/shop", "t").unwrap();
        assert_eq!((hub.registry(), hub.repository(), hub.api_host()), ("docker.io", "acme/shop", "index.docker.io"));
        assert!(ImageRef::parse("acme/shop:1.0", "t").is_err());
        assert!(ImageRef::parse("acme/shop@sha256:abc", "t").is_err());
        assert!(ImageRef::parse("Acme/Shop", "t").is_err());
    }

    #[test]
    fn docker_config_entries_are_found_by_host() {
        let config = r#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"aHViOmh1Yi1wYXNz"},
            "registry.example.com":{"username":"robot","password":"pw"},
            "http://127.0.0.1:5000/v2/":{"auth":"bG9jYWw6c2VjcmV0"}}}"#;
        let user = |r: &str| docker_config_entry(config, r).unwrap().map(|(u, p)| (u, p.expose_secret().to_owned()));
        assert_eq!(user("docker.io"), Some(("hub".into(), "hub-pass".into())));
        assert_eq!(user("registry.example.com"), Some(("robot".into(), "pw".into())));
        assert_eq!(user("127.0.0.1:5000"), Some(("local".into(), "secret".into())));
        assert_eq!(user("ghcr.io"), None);
        assert!(docker_config_entry("{", "x").is_err());
        assert!(docker_config_entry(r#"{"auths":{"x":{"auth":"bm9jb2xvbg=="}}}"#, "x").is_err());
    }

    #[test]
    fn pull_secrets_hold_one_registry() {
        let json = dockerconfigjson("registry.example.com", "robot", &SecretString::from("pw".to_owned()));
        let v: serde_json::Value = serde_json::from_str(json.expose_secret()).unwrap();
        assert_eq!(v["auths"]["registry.example.com"]["auth"], "cm9ib3Q6cHc=");
        assert_eq!(v["auths"].as_object().unwrap().len(), 1);
    }

    #[test]
    fn only_outages_are_transient() {
        let s = |status| RegistryError::Status { registry: "r".into(), status, what: "m".into() };
        assert!(s(503).is_transient() && s(429).is_transient() && !s(400).is_transient());
        assert!(!refused(&ImageRef::parse("a/b", "t").unwrap(), "no").is_transient());
    }
}
