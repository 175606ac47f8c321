//! The image step against a real registry (Debian's docker-registry, CNCF distribution, started per
//! test on loopback by tests/support/registry.rs): without auth, with htpasswd, and with the
//! distribution spec's token flow. Images are pushed by the tests through the registry's HTTP API.
//! The pipeline runs in dry-run mode here (the step is the same in both modes); tests/it/k8s.rs covers
//! the pull Secret and the build Job against the local control plane.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use draftd::config::{Config, RegistryConfig};
use draftd::helm::HelmCli;
use draftd::pipeline::image::Registries;
use draftd::pipeline::plan::image_tag;
use draftd::pipeline::steps::DryRunSteps;
use draftd::pipeline::{Engine, EngineSettings, RunEnd};
use draftd::registry::{ImageRef, Lookup, OciRegistry, Registry};
use serde_json::Value;
use sqlx::PgPool;

use crate::support;
use crate::support::registry::{REGISTRY_PASSWORD, Registry as TestRegistry, RegistryAuth, available};
use draftd::stand::{Failure, RunId};

const SHA1: &str = "1111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA2: &str = "2222222bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const BRANCH: &str = "feature/img";
const NAMESPACE: &str = "draft-feature-img";
const REPO: &str = "acme/shop";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Setup {
    pool: PgPool,
    registry: TestRegistry,
    dir: tempfile::TempDir,
    engine: Arc<Engine<DryRunSteps<HelmCli>>>,
}

/// `[registry]` for `registry`: plain HTTP, a short wait, fast looks, and its login from a file.
fn registry_toml(registry: &TestRegistry, dir: &std::path::Path, wait: &str) -> String {
    let mut toml = format!("insecure = true\nwait = \"{wait}\"\npoll = \"50ms\"\npoll_max = \"200ms\"\n");
    if let Some((user, password)) = registry.auth().credentials() {
        let file = dir.join("registry-password");
        std::fs::write(&file, password).unwrap();
        toml.push_str(&format!("username = \"{user}\"\npassword_file = \"{}\"\n", file.display()));
    }
    toml
}

async fn setup(pool: PgPool, auth: RegistryAuth, wait: &str) -> Setup {
    let registry = TestRegistry::start(auth).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[cluster]
mode = "dry-run"
dry_run_dir = "{stands}"
helm_path = "{root}/.tools/bin/helm"

[registry]
{registry}

[[projects]]
name = "shop"
forge = "github"
repo = "acme/shop"
webhook_secret_env = "X"
image = "{host}/{REPO}"
chart = "{root}/charts/stand"
values = ["{root}/values/draft.yaml"]
"#,
        stands = dir.path().join("stands").display(),
        root = root().display(),
        registry = registry_toml(&registry, dir.path(), wait),
        host = registry.host(),
    );
    let config = Arc::new(Config::from_toml(&toml).unwrap());
    let helm = HelmCli::from_config(&config.cluster, &root()).unwrap();
    let registries = Arc::new(Registries::from_config(&config).unwrap());
    let steps = DryRunSteps::new(pool.clone(), config.clone(), Arc::new(helm)).with_registries(Some(registries));
    let settings =
        EngineSettings { max_step_attempts: 1, poll: Duration::from_millis(100), ..EngineSettings::default() };
    let engine = Arc::new(Engine::new(pool.clone(), Arc::new(steps), settings, "image-test"));
    Setup { pool, registry, dir, engine }
}

impl Setup {
    async fn queue(&self, sha: &str) -> RunId {
        support::queue_run(&self.pool, "shop", BRANCH, NAMESPACE, "deploy", sha).await
    }

    /// Drives the next queued run to its end, in the background.
    fn drive(&self) -> tokio::task::JoinHandle<(RunId, RunEnd)> {
        let engine = self.engine.clone();
        tokio::spawn(async move { engine.run_one().await.unwrap().expect("a run to claim") })
    }

    async fn step(&self, run: RunId, name: &str) -> Option<(String, Value, Option<Value>)> {
        sqlx::query_as("select state, detail, error from steps where run_id = $1 and name = $2")
            .bind(run)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until the run's image step says it is waiting.
    async fn until_waiting(&self, run: RunId) -> Value {
        let started = Instant::now();
        loop {
            if let Some((state, detail, _)) = self.step(run, "image").await
                && state == "running"
                && detail.get("waiting_for").is_some()
            {
                return detail;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the image step never said it was waiting");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn tag(&self, sha: &str) -> String {
        image_tag(BRANCH, sha)
    }
}

/// A tag that is not there yet: the step waits, says so on the PR's check with the tag, finds the
/// image once it is pushed, records its digest, and the deploy renders the image by that digest.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_step_waits_for_the_tag_then_the_deploy_runs_its_digest(pool: PgPool) {
    if !available() {
        return;
    }
    let s = setup(pool, RegistryAuth::None, "60s").await;
    let run = s.queue(SHA1).await;
    let driving = s.drive();
    let waiting = s.until_waiting(run).await;
    let tagged = format!("{}/{REPO}:{}", s.registry.host(), s.tag(SHA1));
    assert_eq!(waiting["waiting_for"], tagged.as_str());
    assert_eq!(waiting["wait_seconds"], 60);
    // The check and the comment say what the run waits for, with the tag (queued right after the
    // step records it).
    let started = Instant::now();
    loop {
        let checks: Vec<Value> =
            sqlx::query_scalar("select payload from outbox where run_id = $1 and kind = 'check' order by outbox_id")
                .bind(run)
                .fetch_all(&s.pool)
                .await
                .unwrap();
        let title = checks.last().and_then(|c| c["title"].as_str()).unwrap_or_default().to_owned();
        if title.contains(&format!("waiting for image {tagged}")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the check never said it was waiting: {title}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let comments: Vec<Value> = sqlx::query_scalar("select payload from outbox where run_id = $1 and kind = 'check'")
        .bind(run)
        .fetch_all(&s.pool)
        .await
        .unwrap();
    assert!(
        comments.iter().any(|c| c["summary"].as_str().unwrap_or_default().contains("waiting for image")),
        "the report's steps table says it too"
    );
    assert!(!driving.is_finished(), "still waiting while nothing is pushed");

    let digest = s.registry.push_image(REPO, &s.tag(SHA1), "linux/amd64").await;
    let (claimed, end) = tokio::time::timeout(Duration::from_secs(20), driving).await.unwrap().unwrap();
    assert_eq!((claimed, end), (run, RunEnd::Succeeded));
    let (state, detail, _) = s.step(run, "image").await.unwrap();
    assert_eq!(state, "succeeded");
    assert_eq!(detail["digest"], digest.as_str());
    assert_eq!(detail["media_type"], "application/vnd.oci.image.manifest.v1+json");
    let pinned = format!("{}/{REPO}@{digest}", s.registry.host());
    assert_eq!(detail["pinned"], pinned.as_str());
    let (_, deploy, _) = s.step(run, "deploy").await.unwrap();
    assert_eq!(deploy["image"], pinned.as_str());
    let manifests =
        std::fs::read_to_string(s.dir.path().join("stands").join(NAMESPACE).join("manifests.yaml")).unwrap();
    assert!(manifests.contains(&format!("image: \"{pinned}\"")), "the Deployment runs the digest:\n{manifests}");
    assert!(manifests.contains(&s.tag(SHA1)), "the tag stays in the labels");
}

/// Never pushed: the run fails at the image step with the tag and the registry named, and nothing
/// after it (no deploy) ever starts.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_tag_that_never_comes_fails_the_run_before_anything_is_deployed(pool: PgPool) {
    if !available() {
        return;
    }
    let s = setup(pool, RegistryAuth::None, "1s").await;
    let run = s.queue(SHA1).await;
    let (_, end) = s.drive().await.unwrap();
    assert_eq!(end, RunEnd::Failed);
    let (state, _, error) = s.step(run, "image").await.unwrap();
    assert_eq!(state, "failed");
    let error = error.unwrap();
    assert_eq!(error["label"], "image_missing");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(&s.tag(SHA1)) && message.contains(&s.registry.host()), "{message}");
    assert!(message.contains("nothing was deployed"), "{message}");
    assert!(s.step(run, "deploy").await.is_none(), "deploy never started");
    assert!(!s.dir.path().join("stands").join(NAMESPACE).join("manifests.yaml").exists());
}

/// A push while the stand waits for the previous commit's image: the waiting run gives way at once
/// (not after its wait), and the newer run goes on.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_newer_push_supersedes_a_waiting_run_at_once(pool: PgPool) {
    if !available() {
        return;
    }
    let s = setup(pool, RegistryAuth::None, "10m").await;
    let first = s.queue(SHA1).await;
    let driving = s.drive();
    s.until_waiting(first).await;
    let queued = Instant::now();
    let second = s.queue(SHA2).await;
    let (claimed, end) = tokio::time::timeout(Duration::from_secs(10), driving).await.unwrap().unwrap();
    let gave_way = queued.elapsed();
    assert_eq!((claimed, end), (first, RunEnd::Superseded));
    assert!(gave_way < Duration::from_secs(3), "gave way after {gave_way:?}");
    let (state, detail, _) = s.step(first, "image").await.unwrap();
    assert_eq!(state, "cancelled");
    assert!(detail["cancelled"].as_str().unwrap().contains("newer push"), "{detail}");
    // The newer commit's image is there: its run goes straight through.
    let digest = s.registry.push_image(REPO, &s.tag(SHA2), "linux/amd64").await;
    let (claimed, end) = s.drive().await.unwrap();
    assert_eq!((claimed, end), (second, RunEnd::Succeeded));
    assert_eq!(s.step(second, "image").await.unwrap().1["digest"], digest.as_str());
}

/// htpasswd: the step logs in with the configured user; the dry-run stand records the pull Secret
/// it would get, without its values.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn with_htpasswd_the_step_logs_in_and_records_a_redacted_pull_secret(pool: PgPool) {
    if !available() {
        return;
    }
    let s = setup(pool, RegistryAuth::htpasswd(), "30s").await;
    let digest = s.registry.push_docker_v2(REPO, &s.tag(SHA1)).await;
    let run = s.queue(SHA1).await;
    let (_, end) = s.drive().await.unwrap();
    assert_eq!(end, RunEnd::Succeeded);
    let (_, detail, _) = s.step(run, "image").await.unwrap();
    assert_eq!(detail["digest"], digest.as_str());
    assert_eq!(detail["media_type"], "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(detail["pull_secret"]["values"], "redacted");
    assert_eq!(detail["pull_secret"]["type"], "kubernetes.io/dockerconfigjson");
    for entry in walkdir(&s.dir.path().join("stands")) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        assert!(!text.contains(REGISTRY_PASSWORD), "{} holds the registry password", entry.display());
    }
}

fn walkdir(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walkdir(&p)) } else { out.push(p) }
    }
    out
}

fn settings(registry: &TestRegistry, dir: &std::path::Path, password: Option<&str>) -> RegistryConfig {
    let mut s = RegistryConfig { insecure: true, ..RegistryConfig::default() };
    if let Some((user, real)) = registry.auth().credentials() {
        let file = dir.join("pw");
        std::fs::write(&file, password.unwrap_or(real)).unwrap();
        s.username = Some(user.to_owned());
        s.password_file = Some(file);
    }
    s
}

/// The token flow: a Bearer challenge, a token from the realm for the repository's pull scope, the
/// token reused while it lasts and fetched again when the registry refuses an expired one; OCI
/// indexes (two platforms), OCI and Docker v2 manifests all found with the digest the registry
/// names; a missing tag is absent, not an error; a wrong password is refused for good.
#[tokio::test]
async fn the_token_flow_finds_indexes_and_manifests_and_logs_in_again_when_a_token_expires() {
    if !available() {
        return;
    }
    let registry = TestRegistry::start(RegistryAuth::token()).await;
    let dir = tempfile::tempdir().unwrap();
    let oci = OciRegistry::new(&settings(&registry, dir.path(), None)).unwrap();
    let image = |tag: &str| ImageRef::parse(&format!("{}/{REPO}", registry.host()), tag).unwrap();

    assert_eq!(oci.lookup(&image("draft-none-0000000")).await.unwrap(), Lookup::Absent);
    let index = registry.push_index(REPO, "draft-multi-1234567", &["linux/amd64", "linux/arm64"]).await;
    let Lookup::Found(found) = oci.lookup(&image("draft-multi-1234567")).await.unwrap() else { panic!("absent") };
    assert_eq!(found.digest, index);
    assert!(found.is_index(), "{}", found.media_type);
    let v2 = registry.push_docker_v2(REPO, "draft-v2-1234567").await;
    let Lookup::Found(found) = oci.lookup(&image("draft-v2-1234567")).await.unwrap() else { panic!("absent") };
    assert_eq!(found.digest, v2);
    let issued = registry.tokens_issued();
    assert_eq!(issued, 1, "one token for every look at the repository while it lasts");

    // A token the registry no longer takes: one new login, and the look goes through.
    registry.issue_stale_tokens(1);
    let fresh = OciRegistry::new(&settings(&registry, dir.path(), None)).unwrap();
    let before = registry.tokens_issued();
    let Lookup::Found(again) = fresh.lookup(&image("draft-v2-1234567")).await.unwrap() else { panic!("absent") };
    assert_eq!(again.digest, v2);
    assert_eq!(registry.tokens_issued(), before + 2, "the refused token is replaced, once");

    let wrong = OciRegistry::new(&settings(&registry, dir.path(), Some("not-the-password"))).unwrap();
    let refused = wrong.lookup(&image("draft-v2-1234567")).await.unwrap_err();
    assert_eq!(refused.label(), "registry_refused", "{refused}");
    assert!(!refused.is_transient());
    assert!(!refused.to_string().contains("not-the-password"));
}

/// htpasswd: Basic on every look; no login at all is refused for good.
#[tokio::test]
async fn htpasswd_logins_are_basic_and_anonymous_looks_are_refused() {
    if !available() {
        return;
    }
    let registry = TestRegistry::start(RegistryAuth::htpasswd()).await;
    let dir = tempfile::tempdir().unwrap();
    let oci = OciRegistry::new(&settings(&registry, dir.path(), None)).unwrap();
    let image = ImageRef::parse(&format!("{}/{REPO}", registry.host()), "draft-x-1234567").unwrap();
    assert_eq!(oci.lookup(&image).await.unwrap(), Lookup::Absent);
    let digest = registry.push_image(REPO, "draft-x-1234567", "linux/amd64").await;
    let Lookup::Found(found) = oci.lookup(&image).await.unwrap() else { panic!("absent") };
    assert_eq!(found.digest, digest);
    let anonymous = OciRegistry::new(&RegistryConfig { insecure: true, ..RegistryConfig::default() }).unwrap();
    let refused = anonymous.lookup(&image).await.unwrap_err();
    assert_eq!(refused.label(), "registry_refused", "{refused}");
    // A registry that is not there is an outage, worth looking again.
    let gone = ImageRef::parse(&format!("127.0.0.1:{}/{REPO}", free_port()), "t").unwrap();
    let unreachable = anonymous.lookup(&gone).await.unwrap_err();
    assert!(unreachable.is_transient(), "{unreachable}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
