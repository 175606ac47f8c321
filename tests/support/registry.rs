//! A real OCI registry on loopback for the image step's tests: Debian's `docker-registry` (CNCF
//! distribution 2.8.2, installed by scripts/install-registry.sh), one process per [`Registry`], with its
//! storage, config and logs in a temporary directory, stopped on drop.
//!
//! Three ways in ([`RegistryAuth`]): anonymous; HTTP Basic against an htpasswd file (bcrypt, from
//! `htpasswd -Bbn`); and the distribution spec's token flow
//! (<https://distribution.github.io/distribution/spec/auth/token/>), with the token server in this test
//! process: an axum route on 127.0.0.1 that checks HTTP Basic credentials and issues ES256 JWTs signed
//! with a key and self-signed certificate made by `openssl` for each registry (`x5c` header), which the
//! registry trusts through `auth.token.rootcertbundle`.
//!
//! The harness pushes through the registry's HTTP API as a client would (Basic, or a `pull,push` token
//! from the realm sent as Bearer) with [`HARNESS_USER_AGENT`]; [`Registry::requests`] and
//! [`Registry::tokens_issued`] leave those requests out, so they count only what the code under test did.
//!
//! Nothing here prints a password or a token: the suite's output is grepped for them (tests/secrets.txt).
//! One `Registry` per test: the token server runs on the test's own runtime. `DRAFTD_KEEP_REGISTRY=1` keeps
//! each registry's directory (config, access.log, registry.log) after the test and says where.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Debian's docker-registry binary (package `docker-registry`).
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";
/// The User-Agent of every request the harness makes (readiness probes, pushes, deletes, its tokens).
pub const HARNESS_USER_AGENT: &str = "draftd-test-registry-harness";
/// The user of [`RegistryAuth::htpasswd`] and [`RegistryAuth::token`].
pub const REGISTRY_USER: &str = "draftd-puller";
/// That user's password (listed in tests/secrets.txt).
pub const REGISTRY_PASSWORD: &str = "reg-pw-5e2b9c71d04a";
/// The `service` of the token flow: the registry's `auth.token.service` and the tokens' `aud`.
pub const AUTH_SERVICE: &str = "draftd-test-registry";
/// The tokens' `iss`, and the registry's `auth.token.issuer`.
pub const AUTH_ISSUER: &str = "draftd-test-token-server";
/// How long the token server's tokens last until [`Registry::set_token_ttl`] says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The Accept header oci-client sends on manifest requests: all four manifest types.
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the registry tests can run: true when [`DOCKER_REGISTRY`] is there. When it is not, this
/// says so on stderr and returns false (the test then returns early), unless `DRAFTD_REQUIRE_REGISTRY=1`
/// (scripts/test.sh sets it after installing), which makes a missing binary a failure.
pub fn available() -> bool {
    if Path::new(DOCKER_REGISTRY).is_file() {
        return true;
    }
    assert!(
        std::env::var("DRAFTD_REQUIRE_REGISTRY").as_deref() != Ok("1"),
        "{DOCKER_REGISTRY} is missing and DRAFTD_REQUIRE_REGISTRY=1: run scripts/install-registry.sh \
         (Debian's docker-registry and apache2-utils)"
    );
    eprintln!(
        "skipped: {DOCKER_REGISTRY} is missing, so this registry test did not run \
         (scripts/install-registry.sh installs it; DRAFTD_REQUIRE_REGISTRY=1 makes this a failure)"
    );
    false
}

/// How clients get in.
#[derive(Clone)]
pub enum RegistryAuth {
    /// Anonymous pull and push.
    None,
    /// HTTP Basic against an htpasswd file (bcrypt); challenge `Basic realm="draftd-test-registry"`.
    Htpasswd { user: String, password: String },
    /// The token flow: challenge `Bearer realm=…,service=…[,scope=…]`; the realm issues tokens to this
    /// user (HTTP Basic) and to no one else, anonymous requests included.
    Token { user: String, password: String },
}

impl RegistryAuth {
    /// htpasswd with [`REGISTRY_USER`] / [`REGISTRY_PASSWORD`].
    pub fn htpasswd() -> RegistryAuth {
        RegistryAuth::Htpasswd { user: REGISTRY_USER.into(), password: REGISTRY_PASSWORD.into() }
    }

    /// The token flow with [`REGISTRY_USER`] / [`REGISTRY_PASSWORD`].
    pub fn token() -> RegistryAuth {
        RegistryAuth::Token { user: REGISTRY_USER.into(), password: REGISTRY_PASSWORD.into() }
    }

    /// `(user, password)`, `None` for anonymous.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match self {
            RegistryAuth::None => None,
            RegistryAuth::Htpasswd { user, password } | RegistryAuth::Token { user, password } => {
                Some((user, password))
            }
        }
    }
}

impl std::fmt::Debug for RegistryAuth {
    // The password stays out of every Debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::None => f.write_str("None"),
            RegistryAuth::Htpasswd { user, .. } => write!(f, "Htpasswd {{ user: {user:?}, password: <redacted> }}"),
            RegistryAuth::Token { user, .. } => write!(f, "Token {{ user: {user:?}, password: <redacted> }}"),
        }
    }
}

/// One line of the registry's access log (Apache combined format, which docker-registry writes on
/// stdout for every HTTP request it answers, whatever the status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    pub method: String,
    /// The request target as sent: path and query.
    pub uri: String,
    pub status: u16,
    pub user_agent: String,
}

impl AccessEntry {
    /// Made by this harness (readiness probe, push, delete), not by the code under test.
    pub fn by_harness(&self) -> bool {
        self.user_agent == HARNESS_USER_AGENT
    }

    /// `127.0.0.1 - - [06/Dec/2026:20:54:29 +0000] "HEAD /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`
    fn parse(line: &str) -> Option<AccessEntry> {
        let (_, rest) = line.split_once("] \"")?;
        let (request, rest) = rest.split_once('"')?;
        let mut request = request.split(' ');
        let method = request.next()?.to_owned();
        let uri = request.next()?.to_owned();
        let status = rest.trim_start().split(' ').next()?.parse().ok()?;
        let user_agent = rest.trim_end().strip_suffix('"')?.rsplit_once(" \"")?.1.to_owned();
        Some(AccessEntry { method, uri, status, user_agent })
    }
}

/// A docker-registry on 127.0.0.1, and for [`RegistryAuth::Token`] its token server; both stop on drop.
pub struct Registry {
    dir: tempfile::TempDir,
    child: tokio::process::Child,
    port: u16,
    auth: RegistryAuth,
    token: Option<TokenServer>,
    http: reqwest::Client,
}

impl Registry {
    /// Writes the config, starts `docker-registry serve` on a free loopback port and waits until `/v2/`
    /// answers (200, or 401 with auth). Panics, with the registry's log, when it does not start.
    pub async fn start(auth: RegistryAuth) -> Registry {
        assert!(
            Path::new(DOCKER_REGISTRY).is_file(),
            "{DOCKER_REGISTRY} is missing: run scripts/install-registry.sh (check registry::available() first)"
        );
        let dir = tempfile::Builder::new().prefix("draftd-registry-").tempdir().expect("temporary directory");
        let http = reqwest::Client::builder()
            .user_agent(HARNESS_USER_AGENT)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client");
        let token = match &auth {
            RegistryAuth::Token { user, password } => Some(TokenServer::start(dir.path(), user, password).await),
            _ => None,
        };
        let auth_config = match &auth {
            RegistryAuth::None => Value::Null,
            RegistryAuth::Htpasswd { user, password } => {
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, htpasswd_line(user, password)).expect("writing htpasswd");
                json!({ "htpasswd": { "realm": "draftd-test-registry", "path": path } })
            }
            RegistryAuth::Token { .. } => {
                let token = token.as_ref().unwrap();
                json!({ "token": {
                    "realm": token.realm,
                    "service": AUTH_SERVICE,
                    "issuer": AUTH_ISSUER,
                    "rootcertbundle": token.cert_path,
                }})
            }
        };
        // Another process may take the free port between our probe and the registry's bind: try again.
        for attempt in 1..=5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            write_config(dir.path(), port, &auth_config);
            let mut child = spawn(dir.path());
            match wait_ready(&mut child, &http, dir.path(), port).await {
                Ok(()) => return Registry { dir, child, port, auth, token, http },
                Err(why) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
                    if attempt < 5 && log.contains("address already in use") {
                        continue;
                    }
                    panic!("docker-registry did not start on 127.0.0.1:{port}: {why}\n{log}");
                }
            }
        }
        unreachable!()
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn auth(&self) -> &RegistryAuth {
        &self.auth
    }

    /// Every line of the access log so far, the harness's own requests included.
    ///
    /// The access-log handler wraps the registry's whole handler and writes its line (unbuffered) when the
    /// handler returns, before Go flushes the rest of the response; so a request's line is there by the
    /// time its client has read a whole (manifest-sized) response.
    pub fn access_log(&self) -> Vec<AccessEntry> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines().filter_map(AccessEntry::parse).collect()
    }

    /// How many HTTP requests the registry has answered for anyone but this harness: access-log lines
    /// (one per request, any method, path and status, 401 challenges and 404s included; `GET /v2/` probes
    /// too) whose User-Agent is not [`HARNESS_USER_AGENT`]. Token-server requests are not in it
    /// (see [`Registry::tokens_issued`]).
    pub fn requests(&self) -> usize {
        self.access_log().iter().filter(|e| !e.by_harness()).count()
    }

    /// Those of [`Registry::requests`] with this method (`"HEAD"`, exact) whose request target (path and
    /// query) contains `path_substring`.
    pub fn requests_matching(&self, method: &str, path_substring: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|e| !e.by_harness() && e.method == method && e.uri.contains(path_substring))
            .count()
    }

    fn token_server(&self) -> &TokenServer {
        self.token.as_ref().expect("this registry has no token server (RegistryAuth::Token only)")
    }

    /// The token realm, `http://127.0.0.1:PORT/token` (token auth only).
    pub fn realm(&self) -> Option<String> {
        self.token.as_ref().map(|t| t.realm.clone())
    }

    /// Tokens the token server has issued to anyone but this harness (0 without token auth).
    pub fn tokens_issued(&self) -> usize {
        self.token.as_ref().map_or(0, |t| t.state.issued.load(Ordering::SeqCst))
    }

    /// Token requests the token server refused (no or wrong credentials, bad service), anyone's.
    pub fn token_refusals(&self) -> usize {
        self.token.as_ref().map_or(0, |t| t.state.refused.load(Ordering::SeqCst))
    }

    /// The next `n` tokens are issued already expired (the registry refuses them with 401), as a
    /// client's cached token is after a long wait.
    pub fn issue_stale_tokens(&self, n: usize) {
        self.token_server().state.stale.store(n, Ordering::SeqCst);
    }

    /// The lifetime of tokens issued from now on: their `exp` (iat + ttl, in whole seconds, rounded up)
    /// and `expires_in`. distribution 2.8.2 accepts a token until 60 s after its `exp` (its leeway): a short
    /// TTL makes clients fetch new tokens (oci-client caches a token until its `exp`), but the registry
    /// does not refuse the old one sooner than that.
    pub fn set_token_ttl(&self, ttl: Duration) {
        *self.token_server().state.ttl.lock().unwrap() = ttl;
    }

    /// The Authorization header a client would send for `actions` on `repo` (Basic, or Bearer with a token
    /// from the realm fetched as the harness, so not counted), `None` for anonymous.
    pub async fn authorization(&self, repo: &str, actions: &str) -> Option<String> {
        match &self.auth {
            RegistryAuth::None => None,
            RegistryAuth::Htpasswd { user, password } => {
                Some(format!("Basic {}", B64.encode(format!("{user}:{password}"))))
            }
            RegistryAuth::Token { user, password } => {
                let token = self.token_server();
                let url = format!(
                    "{}?service={AUTH_SERVICE}&scope={}",
                    token.realm,
                    form_urlencoded::byte_serialize(format!("repository:{repo}:{actions}").as_bytes())
                        .collect::<String>()
                );
                let response = self.http.get(url).basic_auth(user, Some(password)).send().await.expect("token");
                assert_eq!(response.status(), 200, "the token server refused the harness");
                let body: Value = response.json().await.expect("token JSON");
                Some(format!("Bearer {}", body["token"].as_str().expect("token")))
            }
        }
    }

    /// Pushes an OCI image (config + one small tar+gzip layer holding a fresh nonce, so every call's digest
    /// differs) for `platform` (`os/arch[/variant]`, e.g. `"linux/amd64"`) under `tag`; returns the
    /// manifest's digest (`sha256:…` of the exact bytes pushed, checked against Docker-Content-Digest).
    pub async fn push_image(&self, repo: &str, tag: &str, platform: &str) -> String {
        let authz = self.authorization(repo, "pull,push").await;
        let manifest = self.upload_image(repo, platform, OCI_MANIFEST, authz.as_deref()).await;
        self.put_manifest(repo, tag, OCI_MANIFEST, &manifest, authz.as_deref()).await
    }

    /// Pushes a Docker image manifest v2 schema 2 (linux/amd64) under `tag`; returns its digest.
    pub async fn push_docker_v2(&self, repo: &str, tag: &str) -> String {
        let authz = self.authorization(repo, "pull,push").await;
        let manifest = self.upload_image(repo, "linux/amd64", DOCKER_MANIFEST, authz.as_deref()).await;
        self.put_manifest(repo, tag, DOCKER_MANIFEST, &manifest, authz.as_deref()).await
    }

    /// Pushes one OCI image per platform (by digest, untagged), then an OCI image index of them under
    /// `tag`; returns the index's digest.
    pub async fn push_index(&self, repo: &str, tag: &str, platforms: &[&str]) -> String {
        let authz = self.authorization(repo, "pull,push").await;
        let mut manifests = Vec::new();
        for platform in platforms {
            let manifest = self.upload_image(repo, platform, OCI_MANIFEST, authz.as_deref()).await;
            let digest = sha256_digest(&manifest);
            self.put_manifest(repo, &digest, OCI_MANIFEST, &manifest, authz.as_deref()).await;
            manifests.push(json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": manifest.len(),
                "platform": platform_json(platform),
            }));
        }
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
        self.put_manifest(repo, tag, OCI_INDEX, &serde_json::to_vec(&index).unwrap(), authz.as_deref()).await
    }

    /// Deletes the manifest `digest` (and so every tag pointing at it). distribution refuses deletes by tag.
    pub async fn delete_manifest(&self, repo: &str, digest: &str) {
        let authz = self.authorization(repo, "pull,push,delete").await;
        let response = with_auth(self.http.delete(format!("{}/v2/{repo}/manifests/{digest}", self.url())), &authz)
            .send()
            .await
            .expect("DELETE manifest");
        let status = response.status();
        assert_eq!(status, 202, "DELETE {repo}@{digest}: {}", response.text().await.unwrap_or_default());
    }

    /// Resolves `tag` and deletes its manifest, with every tag pointing at it; returns the digest deleted.
    pub async fn delete_tag(&self, repo: &str, tag: &str) -> String {
        let authz = self.authorization(repo, "pull").await;
        let response = with_auth(self.http.head(format!("{}/v2/{repo}/manifests/{tag}", self.url())), &authz)
            .header(header::ACCEPT, ACCEPT_ALL_MANIFESTS)
            .send()
            .await
            .expect("HEAD manifest");
        assert_eq!(response.status(), 200, "HEAD {repo}:{tag}");
        let digest = response.headers()["docker-content-digest"].to_str().unwrap().to_owned();
        self.delete_manifest(repo, &digest).await;
        digest
    }

    /// Uploads a config and a layer for `platform`; returns the image manifest (not yet pushed).
    async fn upload_image(&self, repo: &str, platform: &str, manifest_type: &str, authz: Option<&str>) -> Vec<u8> {
        let docker = manifest_type == DOCKER_MANIFEST;
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let tar = tar_with_one_file("nonce", format!("{nonce}\n").as_bytes());
        let layer = gzip_stored(&tar);
        let mut config = json!({
            "architecture": "",
            "os": "",
            "config": { "Labels": { "io.draftd.test.nonce": nonce } },
            "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&tar)] },
            "history": [{ "created_by": "draftd's test registry harness" }],
        });
        let platform_fields = platform_json(platform);
        for (key, value) in platform_fields.as_object().unwrap() {
            config[key] = value.clone();
        }
        let config = serde_json::to_vec(&config).unwrap();
        let config_digest = self.upload_blob(repo, &config, authz).await;
        let layer_digest = self.upload_blob(repo, &layer, authz).await;
        let (config_type, layer_type) = if docker { (DOCKER_CONFIG, DOCKER_LAYER) } else { (OCI_CONFIG, OCI_LAYER) };
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": { "mediaType": config_type, "digest": config_digest, "size": config.len() },
            "layers": [{ "mediaType": layer_type, "digest": layer_digest, "size": layer.len() }],
        });
        serde_json::to_vec(&manifest).unwrap()
    }

    /// A monolithic upload: POST /v2/<repo>/blobs/uploads/, then PUT <location>&digest=…; returns the digest.
    async fn upload_blob(&self, repo: &str, blob: &[u8], authz: Option<&str>) -> String {
        let digest = sha256_digest(blob);
        let authz = authz.map(str::to_owned);
        let response = with_auth(self.http.post(format!("{}/v2/{repo}/blobs/uploads/", self.url())), &authz)
            .header(header::CONTENT_LENGTH, "0")
            .send()
            .await
            .expect("POST blob upload");
        let status = response.status();
        assert_eq!(status, 202, "POST /v2/{repo}/blobs/uploads/: {}", response.text().await.unwrap_or_default());
        let location = response.headers()[header::LOCATION].to_str().unwrap().to_owned();
        // Never follow the registry anywhere but itself.
        let location = if location.starts_with('/') {
            format!("{}{location}", self.url())
        } else {
            assert!(location.starts_with(&format!("{}/", self.url())), "upload location off this registry: {location}");
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let response = with_auth(self.http.put(format!("{location}{separator}digest={digest}")), &authz)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(blob.to_vec())
            .send()
            .await
            .expect("PUT blob");
        let status = response.status();
        let header_digest = response.headers().get("docker-content-digest").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(status, 201, "PUT blob {digest}: {}", response.text().await.unwrap_or_default());
        assert_eq!(header_digest.as_deref(), Some(digest.as_str()), "the registry's digest of blob");
        digest
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        manifest: &[u8],
        authz: Option<&str>,
    ) -> String {
        let digest = sha256_digest(manifest);
        let authz = authz.map(str::to_owned);
        let response = with_auth(self.http.put(format!("{}/v2/{repo}/manifests/{reference}", self.url())), &authz)
            .header(header::CONTENT_TYPE, media_type)
            .body(manifest.to_vec())
            .send()
            .await
            .expect("PUT manifest");
        let status = response.status();
        let header_digest = response.headers().get("docker-content-digest").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(status, 201, "PUT {repo}:{reference} ({media_type}): {}", response.text().await.unwrap_or_default());
        assert_eq!(header_digest.as_deref(), Some(digest.as_str()), "the registry's digest of {repo}:{reference}");
        digest
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // SIGKILL by process id, then reap it so no zombie outlives the test; the token server's task stops
        // with its own drop, the directory with the TempDir's (unless DRAFTD_KEEP_REGISTRY=1 keeps it).
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if std::env::var("DRAFTD_KEEP_REGISTRY").as_deref() == Ok("1") {
            self.dir.disable_cleanup(true);
            eprintln!("DRAFTD_KEEP_REGISTRY=1: the registry's config and logs stay in {}", self.dir.path().display());
        }
    }
}

/// Until `/v2/` answers 200 or 401; `Err` when the process exits or [`START_TIMEOUT`] passes.
async fn wait_ready(
    child: &mut tokio::process::Child,
    http: &reqwest::Client,
    dir: &Path,
    port: u16,
) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("docker-registry status") {
            return Err(format!("it exited with {status}; its log ({}):", dir.join("registry.log").display()));
        }
        if let Ok(response) = http.get(format!("http://127.0.0.1:{port}/v2/")).send().await {
            if matches!(response.status().as_u16(), 200 | 401) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("/v2/ did not answer within {START_TIMEOUT:?}; its log:"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_auth(request: reqwest::RequestBuilder, authz: &Option<String>) -> reqwest::RequestBuilder {
    match authz {
        Some(value) => request.header(header::AUTHORIZATION, value),
        None => request,
    }
}

fn write_config(dir: &Path, port: u16, auth: &Value) {
    // YAML is a superset of JSON: paths need no YAML quoting this way.
    let mut config = json!({
        "version": "0.1",
        "log": { "level": "info", "formatter": "json", "accesslog": { "disabled": false } },
        "storage": {
            "filesystem": { "rootdirectory": dir.join("storage") },
            "delete": { "enabled": true },
            "maintenance": { "uploadpurging": { "enabled": false } },
        },
        "http": { "addr": format!("127.0.0.1:{port}"), "secret": uuid::Uuid::new_v4().simple().to_string() },
    });
    if !auth.is_null() {
        config["auth"] = auth.clone();
    }
    std::fs::write(dir.join("config.yml"), serde_json::to_vec_pretty(&config).unwrap()).expect("config.yml");
}

fn spawn(dir: &Path) -> tokio::process::Child {
    let access = std::fs::File::create(dir.join("access.log")).expect("access.log");
    let log = std::fs::File::create(dir.join("registry.log")).expect("registry.log");
    tokio::process::Command::new(DOCKER_REGISTRY)
        .arg("serve")
        .arg(dir.join("config.yml"))
        .current_dir(dir)
        // No REGISTRY_* variable (they override the config) and no proxy settings reach it.
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::from(access))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("spawning docker-registry")
}

/// One bcrypt line from `htpasswd -Bbn` (docker-registry reads bcrypt only).
fn htpasswd_line(user: &str, password: &str) -> Vec<u8> {
    let out = std::process::Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .stdin(Stdio::null())
        .output()
        .expect("running htpasswd (apache2-utils; scripts/install-registry.sh installs it)");
    // stderr only: stdout holds the hash.
    assert!(out.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut line = out.stdout;
    while line.last().is_some_and(|b| b.is_ascii_whitespace()) {
        line.pop();
    }
    line.push(b'\n');
    line
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `os/arch[/variant]` as an OCI platform object.
fn platform_json(platform: &str) -> Value {
    let mut parts = platform.split('/');
    let (Some(os), Some(architecture)) = (parts.next(), parts.next()) else {
        panic!("platform {platform:?} is not os/arch[/variant]")
    };
    let mut value = json!({ "architecture": architecture, "os": os });
    if let Some(variant) = parts.next() {
        value["variant"] = json!(variant);
    }
    value
}

/// A ustar archive with one regular file.
fn tar_with_one_file(name: &str, content: &[u8]) -> Vec<u8> {
    fn field(header: &mut [u8], at: usize, len: usize, value: &[u8]) {
        header[at..at + value.len().min(len)].copy_from_slice(&value[..value.len().min(len)]);
    }
    let mut header = [0u8; 512];
    field(&mut header, 0, 100, name.as_bytes());
    field(&mut header, 100, 8, b"0000644\0");
    field(&mut header, 108, 8, b"0000000\0");
    field(&mut header, 116, 8, b"0000000\0");
    field(&mut header, 124, 12, format!("{:011o}\0", content.len()).as_bytes());
    field(&mut header, 136, 12, b"00000000000\0");
    field(&mut header, 148, 8, b"        ");
    header[156] = b'0';
    field(&mut header, 257, 6, b"ustar\0");
    field(&mut header, 263, 2, b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    field(&mut header, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    tar
}

/// gzip with stored (uncompressed) deflate blocks: valid gzip without a compressor.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

// ---- the token server -------------------------------------------------------------------------------

struct TokenServer {
    realm: String,
    cert_path: PathBuf,
    state: Arc<TokenState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct TokenState {
    user: String,
    password: String,
    key: jsonwebtoken::EncodingKey,
    /// The certificate's DER, standard base64: the `x5c` header's one element.
    x5c: String,
    ttl: Mutex<Duration>,
    issued: AtomicUsize,
    refused: AtomicUsize,
    /// Tokens still to issue already expired (beyond the registry's 60 s leeway).
    stale: AtomicUsize,
}

impl TokenServer {
    async fn start(dir: &Path, user: &str, password: &str) -> TokenServer {
        let key_path = dir.join("token-key.pem");
        let cert_path = dir.join("token-cert.pem");
        openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"], &key_path);
        openssl(
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                key_path.to_str().unwrap(),
                "-days",
                "2",
                "-subj",
                "/CN=draftd-test-token-server",
                "-out",
            ],
            &cert_path,
        );
        let key_der = pem_body(&key_path, "PRIVATE KEY");
        let cert_der = pem_body(&cert_path, "CERTIFICATE");
        let state = Arc::new(TokenState {
            user: user.into(),
            password: password.into(),
            key: jsonwebtoken::EncodingKey::from_ec_der(&key_der),
            x5c: B64.encode(cert_der),
            ttl: Mutex::new(DEFAULT_TTL),
            issued: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            stale: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("token server port");
        let realm = format!("http://127.0.0.1:{}/token", listener.local_addr().unwrap().port());
        let app = Router::new().route("/token", get(issue_token)).with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("token server");
        });
        TokenServer { realm, cert_path, state, task }
    }
}

/// `openssl <args> <out>`; its stderr only when it fails (it never holds the key).
fn openssl(args: &[&str], out: &Path) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl");
    assert!(output.status.success(), "openssl {} failed: {}", args[0], String::from_utf8_lossy(&output.stderr));
}

/// The DER inside a PEM file's one `label` block.
fn pem_body(path: &Path, label: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(body, _)| body.split_whitespace().collect::<String>())
        .unwrap_or_else(|| panic!("{} holds no {label} block", path.display()));
    B64.decode(body).expect("PEM base64")
}

fn unauthorized(state: &TokenState, why: &str) -> Response {
    state.refused.fetch_add(1, Ordering::SeqCst);
    let body = json!({ "errors": [{ "code": "UNAUTHORIZED", "message": why }] });
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"draftd-test-token-server\"")],
        axum::Json(body),
    )
        .into_response()
}

/// `GET /token?service=…&scope=repository:<name>:<actions>[&scope=…]` with HTTP Basic credentials.
async fn issue_token(State(state): State<Arc<TokenState>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| B64.decode(v.trim()).ok())
        .and_then(|v| String::from_utf8(v).ok());
    let Some(credentials) = credentials else {
        return unauthorized(&state, "credentials required: this token server issues no anonymous tokens");
    };
    let ok = credentials.split_once(':').is_some_and(|(u, p)| u == state.user && p == state.password);
    if !ok {
        return unauthorized(&state, "invalid username or password");
    }
    let mut service = None;
    let mut access = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "service" => service = Some(value.into_owned()),
            // Several `scope` parameters, or several scopes in one separated by spaces.
            "scope" => {
                for scope in value.split(' ').filter(|s| !s.is_empty()) {
                    let parsed = scope
                        .split_once(':')
                        .and_then(|(kind, rest)| rest.rsplit_once(':').map(|(name, actions)| (kind, name, actions)));
                    let Some((kind, name, actions)) = parsed else {
                        state.refused.fetch_add(1, Ordering::SeqCst);
                        return (StatusCode::BAD_REQUEST, format!("malformed scope {scope:?}")).into_response();
                    };
                    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
                    access.push(json!({ "type": kind, "name": name, "actions": actions }));
                }
            }
            _ => {}
        }
    }
    if service.as_deref() != Some(AUTH_SERVICE) {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::BAD_REQUEST, format!("service must be {AUTH_SERVICE:?}, not {service:?}")).into_response();
    }
    let ttl = *state.ttl.lock().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let stale = state.stale.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    // A stale token ran out two minutes ago, past the registry's leeway: what a client holds after
    // a long pause, as the registry sees it.
    let exp = if stale { now.as_secs() - 120 } else { now.as_secs() + ttl_secs };
    let claims = json!({
        "iss": AUTH_ISSUER,
        "sub": state.user,
        // A string: distribution 2.8.2 reads `aud` into a string and refuses a token with an array.
        "aud": AUTH_SERVICE,
        "exp": exp,
        "nbf": now.as_secs(),
        "iat": now.as_secs(),
        "jti": uuid::Uuid::new_v4().to_string(),
        "access": access,
    });
    let mut jwt_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    jwt_header.x5c = Some(vec![state.x5c.clone()]);
    let token = jsonwebtoken::encode(&jwt_header, &claims, &state.key).expect("signing the token");
    let by_harness = headers.get(header::USER_AGENT).is_some_and(|ua| ua == HARNESS_USER_AGENT);
    if !by_harness {
        state.issued.fetch_add(1, Ordering::SeqCst);
    }
    let issued_at = chrono::DateTime::<chrono::Utc>::from(UNIX_EPOCH + Duration::from_secs(now.as_secs()));
    axum::Json(json!({
        "token": token,
        "access_token": token,
        "expires_in": ttl_secs,
        "issued_at": issued_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
    .into_response()
}
