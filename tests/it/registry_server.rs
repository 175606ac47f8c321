//! The registry harness (tests/support/registry.rs) against the real docker-registry (distribution 2.8.2):
//! for each way in (anonymous, htpasswd, the token flow) pushed images, indexes and Docker v2 manifests
//! answer a client's HEAD by tag with their digest; unauthenticated requests get the right challenge;
//! wrong credentials are refused; and distribution 2.8.2's own ways (Accept handling, token leeway) are
//! pinned here, since the image step has to live with them.
//!
//! The client side below is written from the specs, not taken from the harness: it reads the
//! WWW-Authenticate challenge and follows it (Basic, or a token from the realm sent as Bearer).
//! Without /usr/bin/docker-registry these tests skip, saying so, unless DRAFTD_REQUIRE_REGISTRY=1.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

use crate::support::registry::*;

const REPO: &str = "draftd/shop";
/// Not the password of [`REGISTRY_USER`] (listed in tests/secrets.txt all the same).
const WRONG_PASSWORD: &str = "reg-wrong-pw-8a4f0c3e61";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent("draftd-registry-server-test")
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

struct Head {
    status: u16,
    digest: Option<String>,
    content_type: Option<String>,
    challenge: Option<String>,
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

async fn head(registry: &Registry, reference: &str, authz: Option<&str>, accept: Option<&str>) -> Head {
    let mut request = client().head(format!("{}/v2/{REPO}/manifests/{reference}", registry.url()));
    if let Some(authz) = authz {
        request = request.header("authorization", authz);
    }
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    Head {
        status: response.status().as_u16(),
        digest: header(&response, "docker-content-digest"),
        content_type: header(&response, "content-type"),
        challenge: header(&response, "www-authenticate"),
    }
}

/// `Bearer realm="…",service="…",scope="…"` → its scheme and parameters.
fn parse_challenge(challenge: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = challenge.split_once(' ').unwrap_or((challenge, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let after = after.strip_prefix('"').expect("quoted challenge parameter");
        let (value, after) = after.split_once('"').expect("closing quote");
        params.push((key.trim().to_owned(), value.to_owned()));
        rest = after.trim_start_matches(',').trim();
    }
    (scheme.to_owned(), params)
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A token from `realm` for `scope`, as a client asks for one: `(status, body)`.
async fn fetch_token(realm: &str, service: &str, scope: &str, credentials: Option<(&str, &str)>) -> (u16, Value) {
    let url = url::Url::parse_with_params(realm, [("service", service), ("scope", scope)]).unwrap();
    let mut request = client().get(url);
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// What a client does before pulling `repo`: `GET /v2/`, then follow the challenge (none: anonymous;
/// Basic: send the credentials; Bearer: get a pull token from the realm). The Authorization value.
async fn login(registry: &Registry, repo: &str, user: &str, password: &str) -> Option<String> {
    let response = client().get(format!("{}/v2/", registry.url())).send().await.unwrap();
    if response.status() == 200 {
        return None;
    }
    assert_eq!(response.status(), 401);
    let (scheme, params) = parse_challenge(&header(&response, "www-authenticate").expect("a challenge"));
    match scheme.as_str() {
        "Basic" => Some(format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))),
        "Bearer" => {
            let (realm, service) = (param(&params, "realm").unwrap(), param(&params, "service").unwrap());
            let (status, body) =
                fetch_token(realm, service, &format!("repository:{repo}:pull"), Some((user, password))).await;
            assert_eq!(status, 200, "{body}");
            Some(format!("Bearer {}", body["token"].as_str().unwrap()))
        }
        other => panic!("unknown challenge scheme {other}"),
    }
}

fn jwt_part(token: &str, n: usize) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(n).unwrap()).unwrap()).unwrap()
}

/// Push an image, an index and a Docker v2 manifest; a client logs in as it would and HEADs each tag.
async fn serves_tags_with_their_digests(auth: RegistryAuth) {
    let registry = Registry::start(auth.clone()).await;
    let image = registry.push_image(REPO, "draft-feature-cart-1a2b3c4", "linux/amd64").await;
    let index = registry.push_index(REPO, "draft-feature-multi-5d6e7f8", &["linux/amd64", "linux/arm64/v8"]).await;
    let docker = registry.push_docker_v2(REPO, "draft-bugfix-legacy-9a0b1c2").await;
    for digest in [&image, &index, &docker] {
        assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    }
    assert!(image != index && index != docker && image != docker);
    // A second push of the same tag gives new content, so a new digest.
    let again = registry.push_image(REPO, "draft-feature-cart-1a2b3c4", "linux/amd64").await;
    assert_ne!(again, image);
    assert_eq!(registry.requests(), 0, "the harness's own requests are not counted: {:?}", registry.access_log());
    assert_eq!(registry.tokens_issued(), 0);

    let (user, password) = auth.credentials().unwrap_or(("", ""));
    let authz = login(&registry, REPO, user, password).await;
    assert_eq!(authz.is_some(), !matches!(auth, RegistryAuth::None));
    let cases = [
        ("draft-feature-cart-1a2b3c4", &again, OCI_MANIFEST),
        ("draft-feature-multi-5d6e7f8", &index, OCI_INDEX),
        ("draft-bugfix-legacy-9a0b1c2", &docker, DOCKER_MANIFEST),
    ];
    for (tag, digest, media_type) in cases {
        // All four types accepted, as oci-client sends them; then only the tag's own type.
        for accept in [ACCEPT_ALL_MANIFESTS, media_type] {
            let found = head(&registry, tag, authz.as_deref(), Some(accept)).await;
            assert_eq!(found.status, 200, "HEAD {tag} ({auth:?}, Accept {accept})");
            assert_eq!(found.digest.as_deref(), Some(digest.as_str()), "{tag}");
            assert_eq!(found.content_type.as_deref(), Some(media_type), "{tag}");
        }
    }
    // Unknown tags are 404 for an authorised client.
    assert_eq!(
        head(&registry, "draft-feature-none-0000000", authz.as_deref(), Some(ACCEPT_ALL_MANIFESTS)).await.status,
        404
    );

    // Counted: the client's GET /v2/ and its seven HEADs, nothing of the harness.
    assert_eq!(registry.requests_matching("HEAD", &format!("/v2/{REPO}/manifests/")), 7);
    assert_eq!(registry.requests_matching("GET", "/v2/"), 1);
    assert_eq!(registry.requests(), 8);
    let token_auth = matches!(auth, RegistryAuth::Token { .. });
    assert_eq!(registry.tokens_issued(), usize::from(token_auth));

    // Without credentials.
    let anonymous = head(&registry, "draft-feature-cart-1a2b3c4", None, Some(ACCEPT_ALL_MANIFESTS)).await;
    match &auth {
        RegistryAuth::None => assert_eq!(anonymous.status, 200),
        RegistryAuth::Htpasswd { .. } => {
            assert_eq!(anonymous.status, 401);
            assert_eq!(anonymous.challenge.as_deref(), Some(r#"Basic realm="draftd-test-registry""#));
        }
        RegistryAuth::Token { .. } => {
            assert_eq!(anonymous.status, 401);
            let (scheme, params) = parse_challenge(anonymous.challenge.as_deref().unwrap());
            assert_eq!(scheme, "Bearer");
            assert_eq!(param(&params, "realm"), registry.realm().as_deref());
            assert_eq!(param(&params, "service"), Some(AUTH_SERVICE));
            assert_eq!(param(&params, "scope"), Some(format!("repository:{REPO}:pull").as_str()));
        }
    }
    assert_eq!(registry.requests(), 9);
}

#[tokio::test]
async fn anonymous_registry_serves_tags_with_their_digests() {
    if !available() {
        return;
    }
    serves_tags_with_their_digests(RegistryAuth::None).await;
}

#[tokio::test]
async fn htpasswd_registry_serves_tags_with_their_digests() {
    if !available() {
        return;
    }
    serves_tags_with_their_digests(RegistryAuth::htpasswd()).await;
}

#[tokio::test]
async fn token_registry_serves_tags_with_their_digests() {
    if !available() {
        return;
    }
    serves_tags_with_their_digests(RegistryAuth::token()).await;
}

#[tokio::test]
async fn htpasswd_refuses_a_wrong_password() {
    if !available() {
        return;
    }
    let registry = Registry::start(RegistryAuth::htpasswd()).await;
    let tag = "draft-feature-pw-1111111";
    let digest = registry.push_image(REPO, tag, "linux/amd64").await;
    let wrong = format!("Basic {}", STANDARD.encode(format!("{REGISTRY_USER}:{WRONG_PASSWORD}")));
    let refused = head(&registry, tag, Some(&wrong), Some(ACCEPT_ALL_MANIFESTS)).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.challenge.as_deref(), Some(r#"Basic realm="draftd-test-registry""#));
    let right = format!("Basic {}", STANDARD.encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}")));
    assert_eq!(head(&registry, tag, Some(&right), Some(OCI_MANIFEST)).await.digest, Some(digest));
}

#[tokio::test]
async fn the_token_server_issues_only_to_the_right_credentials_and_scope() {
    if !available() {
        return;
    }
    let registry = Registry::start(RegistryAuth::token()).await;
    let tag = "draft-feature-tok-2222222";
    let digest = registry.push_image(REPO, tag, "linux/amd64").await;
    let realm = registry.realm().unwrap();
    let scope = format!("repository:{REPO}:pull");

    // Wrong password, no credentials, another service: no token.
    let (status, body) = fetch_token(&realm, AUTH_SERVICE, &scope, Some((REGISTRY_USER, WRONG_PASSWORD))).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.get("token").is_none());
    let (status, _) = fetch_token(&realm, AUTH_SERVICE, &scope, None).await;
    assert_eq!(status, 401);
    let (status, _) = fetch_token(&realm, "another-registry", &scope, Some((REGISTRY_USER, REGISTRY_PASSWORD))).await;
    assert_eq!(status, 400);
    assert_eq!((registry.tokens_issued(), registry.token_refusals()), (0, 3));

    // A token the registry did not sign for: invalid_token.
    let forged = head(&registry, tag, Some("Bearer not.a-real.token"), Some(OCI_MANIFEST)).await;
    assert_eq!(forged.status, 401);
    assert!(forged.challenge.unwrap().contains(r#"error="invalid_token""#));

    // A token for another repository: insufficient_scope.
    let (status, other) =
        fetch_token(&realm, AUTH_SERVICE, "repository:draftd/other:pull", Some((REGISTRY_USER, REGISTRY_PASSWORD)))
            .await;
    assert_eq!(status, 200);
    let other = format!("Bearer {}", other["token"].as_str().unwrap());
    let refused = head(&registry, tag, Some(&other), Some(OCI_MANIFEST)).await;
    assert_eq!(refused.status, 401);
    assert!(refused.challenge.unwrap().contains(r#"error="insufficient_scope""#));

    // The right one works, and reads as the spec says.
    let (status, body) = fetch_token(&realm, AUTH_SERVICE, &scope, Some((REGISTRY_USER, REGISTRY_PASSWORD))).await;
    assert_eq!(status, 200);
    let token = body["token"].as_str().unwrap();
    assert_eq!(body["access_token"], body["token"]);
    assert_eq!(body["expires_in"], DEFAULT_TTL.as_secs());
    assert!(chrono::DateTime::parse_from_rfc3339(body["issued_at"].as_str().unwrap()).is_ok());
    // tests/secrets.txt lists this prefix, so a token in any test's output fails the run.
    assert!(token.starts_with(&URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ES256","x5c":["M"#)));
    let (jwt_header, claims) = (jwt_part(token, 0), jwt_part(token, 1));
    assert_eq!(jwt_header["alg"], "ES256");
    assert_eq!(jwt_header["x5c"].as_array().unwrap().len(), 1);
    assert_eq!(claims["iss"], AUTH_ISSUER);
    assert_eq!(claims["sub"], REGISTRY_USER);
    assert_eq!(claims["aud"], AUTH_SERVICE);
    assert_eq!(claims["access"], serde_json::json!([{ "type": "repository", "name": REPO, "actions": ["pull"] }]));
    let found = head(&registry, tag, Some(&format!("Bearer {token}")), Some(OCI_MANIFEST)).await;
    assert_eq!(found.digest, Some(digest));
    assert_eq!(registry.tokens_issued(), 2);
}

#[tokio::test]
async fn short_lived_tokens_expire_for_clients_but_distribution_allows_a_minute_of_leeway() {
    if !available() {
        return;
    }
    let registry = Registry::start(RegistryAuth::token()).await;
    let tag = "draft-feature-ttl-3333333";
    let digest = registry.push_image(REPO, tag, "linux/amd64").await;
    registry.set_token_ttl(Duration::from_secs(1));
    // The harness's pushes still work with one-second tokens (it takes a new one per push).
    registry.push_index(REPO, "draft-feature-ttl-index", &["linux/amd64"]).await;
    let (status, body) = fetch_token(
        &registry.realm().unwrap(),
        AUTH_SERVICE,
        &format!("repository:{REPO}:pull"),
        Some((REGISTRY_USER, REGISTRY_PASSWORD)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["expires_in"], 1);
    let token = body["token"].as_str().unwrap();
    let claims = jwt_part(token, 1);
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 1);
    // Past its exp, distribution 2.8.2 still takes it (Leeway = 60 s in registry/auth/token/token.go):
    // clients that renew on `exp` (oci-client's cache) fetch new tokens; the registry does not force them.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(now > claims["exp"].as_u64().unwrap());
    let found = head(&registry, tag, Some(&format!("Bearer {token}")), Some(OCI_MANIFEST)).await;
    assert_eq!((found.status, found.digest), (200, Some(digest)));
}

#[tokio::test]
async fn deleted_manifests_and_tags_are_gone() {
    if !available() {
        return;
    }
    let registry = Registry::start(RegistryAuth::token()).await;
    let image = registry.push_image(REPO, "draft-feature-del-4444444", "linux/amd64").await;
    let index = registry.push_index(REPO, "draft-feature-del-index", &["linux/amd64", "linux/arm64"]).await;
    let authz = login(&registry, REPO, REGISTRY_USER, REGISTRY_PASSWORD).await;
    assert_eq!(registry.delete_tag(REPO, "draft-feature-del-4444444").await, image);
    registry.delete_manifest(REPO, &index).await;
    for reference in ["draft-feature-del-4444444", "draft-feature-del-index", image.as_str(), index.as_str()] {
        let gone = head(&registry, reference, authz.as_deref(), Some(ACCEPT_ALL_MANIFESTS)).await;
        assert_eq!(gone.status, 404, "{reference}");
    }
}

/// distribution 2.8.2's Accept handling (registry/handlers/manifests.go), which a client must meet.
#[tokio::test]
async fn distribution_answers_by_the_accept_header() {
    if !available() {
        return;
    }
    let registry = Registry::start(RegistryAuth::None).await;
    let image = registry.push_image(REPO, "draft-accept-oci", "linux/amd64").await;
    let index = registry.push_index(REPO, "draft-accept-index", &["linux/amd64", "linux/arm64"]).await;
    let docker = registry.push_docker_v2(REPO, "draft-accept-docker").await;

    // An OCI manifest or index is 404 MANIFEST_UNKNOWN unless the Accept header names its type.
    for accept in [None, Some(DOCKER_MANIFEST), Some(OCI_INDEX)] {
        assert_eq!(head(&registry, "draft-accept-oci", None, accept).await.status, 404, "{accept:?}");
    }
    for accept in [None, Some(OCI_MANIFEST), Some(DOCKER_MANIFEST_LIST)] {
        assert_eq!(head(&registry, "draft-accept-index", None, accept).await.status, 404, "{accept:?}");
    }
    // A Docker v2 manifest asked for by tag without its type is rewritten to schema 1: another digest.
    for accept in [None, Some(OCI_MANIFEST)] {
        let old = head(&registry, "draft-accept-docker", None, accept).await;
        assert_eq!(old.status, 200);
        assert_ne!(old.digest.as_deref(), Some(docker.as_str()));
        assert_eq!(old.content_type.as_deref(), Some("application/vnd.docker.distribution.manifest.v1+prettyjws"));
    }
    // Several Accept values in one header, with spaces and q-values, are understood.
    let accept = format!("{DOCKER_MANIFEST};q=0.5, {OCI_MANIFEST} , {OCI_INDEX}");
    assert_eq!(head(&registry, "draft-accept-oci", None, Some(&accept)).await.digest, Some(image.clone()));
    assert_eq!(head(&registry, "draft-accept-index", None, Some(&accept)).await.digest, Some(index.clone()));
    // By digest, the stored type whatever the Accept header (but OCI types still need it).
    assert_eq!(head(&registry, &docker, None, None).await.digest, Some(docker.clone()));
    assert_eq!(head(&registry, &image, None, None).await.status, 404);
    assert_eq!(head(&registry, &image, None, Some(OCI_MANIFEST)).await.digest, Some(image));
}

/// The index lists one manifest per platform; each image is a real one: its config names the platform
/// and the uncompressed layer's digest, and the layer is a gzip'd tar.
#[tokio::test]
async fn pushed_images_are_real_images() {
    if !available() {
        return;
    }
    let registry = Registry::start(RegistryAuth::None).await;
    let index = registry.push_index(REPO, "draft-real", &["linux/amd64", "linux/arm64/v8"]).await;
    let get = |path: String, accept: &'static str| {
        let url = format!("{}/v2/{REPO}/{path}", registry.url());
        async move {
            let response = client().get(url).header("accept", accept).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap().to_vec()
        }
    };
    let bytes = get(format!("manifests/{index}"), OCI_INDEX).await;
    assert_eq!(sha256_digest(&bytes), index);
    let index: Value = serde_json::from_slice(&bytes).unwrap();
    let platforms: Vec<_> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["platform"]["os"].clone(), m["platform"]["architecture"].clone(), m["platform"]["variant"].clone()))
        .collect();
    assert_eq!(
        platforms,
        [("linux".into(), "amd64".into(), Value::Null), ("linux".into(), "arm64".into(), "v8".into())]
    );
    let dir = tempfile::tempdir().unwrap();
    for entry in index["manifests"].as_array().unwrap() {
        let manifest: Value = serde_json::from_slice(
            &get(format!("manifests/{}", entry["digest"].as_str().unwrap()), OCI_MANIFEST).await,
        )
        .unwrap();
        let config: Value = serde_json::from_slice(
            &get(format!("blobs/{}", manifest["config"]["digest"].as_str().unwrap()), "*/*").await,
        )
        .unwrap();
        assert_eq!(config["architecture"], entry["platform"]["architecture"]);
        assert_eq!(config["os"], "linux");
        let layer = get(format!("blobs/{}", manifest["layers"][0]["digest"].as_str().unwrap()), "*/*").await;
        let path = dir.path().join("layer.tar.gz");
        std::fs::write(&path, &layer).unwrap();
        let tar = std::process::Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
        assert!(tar.status.success(), "gzip: {}", String::from_utf8_lossy(&tar.stderr));
        assert_eq!(config["rootfs"]["diff_ids"][0].as_str(), Some(sha256_digest(&tar.stdout).as_str()));
        let listed = std::process::Command::new("tar").arg("-tzf").arg(&path).output().unwrap();
        assert!(listed.status.success(), "tar: {}", String::from_utf8_lossy(&listed.stderr));
        assert_eq!(String::from_utf8(listed.stdout).unwrap(), "nonce\n");
    }
}

/// requests() has each request by the time its client has the response: no waiting, no flakes.
#[tokio::test]
async fn requests_are_counted_by_the_time_their_responses_arrive() {
    if !available() {
        return;
    }
    let registry = Registry::start(RegistryAuth::htpasswd()).await;
    registry.push_image(REPO, "draft-count", "linux/amd64").await;
    let authz = format!("Basic {}", STANDARD.encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}")));
    for n in 1..=40 {
        let (reference, authz) = match n % 4 {
            0 => ("draft-count", None),
            1 => ("draft-count", Some(authz.as_str())),
            2 => ("draft-missing", Some(authz.as_str())),
            _ => ("draft-count", Some(authz.as_str())),
        };
        head(&registry, reference, authz, Some(ACCEPT_ALL_MANIFESTS)).await;
        assert_eq!(registry.requests(), n, "after request {n}");
    }
    assert_eq!(registry.requests_matching("HEAD", "/manifests/draft-missing"), 10);
    let statuses: Vec<u16> = registry.access_log().iter().filter(|e| !e.by_harness()).map(|e| e.status).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 401).count(), 10);
    assert_eq!(statuses.iter().filter(|&&s| s == 404).count(), 10);
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 20);
}
