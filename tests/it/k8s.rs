//! Kubernetes mode against a real control plane (scripts/k8s-up.sh: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok on 127.0.0.1), with the real helm binary and a
//! real Postgres. draftd runs as its own ServiceAccount with exactly deploy/rbac.yaml's rights, so a
//! call outside them fails the run; each test checks what the cluster holds afterwards as admin.
//!
//! scripts/test.sh starts the control plane and sets DRAFTD_K8S_DIR; DRAFTD_SKIP_K8S=1 skips the
//! suite. kwok marks pods Running and Ready and completes Job pods (or fails those whose command
//! holds the word `draftd-e2e-fail`); no container runs, so the stand's URL is served by a local
//! server that verify reaches through `[cluster.verify] ingress_address`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use draftd::cluster::Kubernetes;
use draftd::config::Config;
use draftd::credentials::{Lifetimes, StandCredentials, StandServer};
use draftd::database::PgDatabases;
use draftd::helm::{Helm, HelmCli, Revision};
use draftd::pipeline::image::Registries;
use draftd::pipeline::steps::KubernetesSteps;
use draftd::pipeline::{Engine, EngineSettings, RunEnd};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support;
use crate::support::registry::{Registry as TestRegistry, RegistryAuth};
use draftd::stand::RunId;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The running control plane's folder, or `None` when the suite is skipped on purpose.
fn control_plane() -> Option<PathBuf> {
    if std::env::var("DRAFTD_SKIP_K8S").as_deref() == Ok("1") {
        eprintln!("skipped: DRAFTD_SKIP_K8S=1");
        return None;
    }
    let dir = std::env::var_os("DRAFTD_K8S_DIR").map(PathBuf::from).expect(
        "DRAFTD_K8S_DIR is not set: run the tests with scripts/test.sh, which starts the local control plane, \
         or start one with `scripts/k8s-up.sh start DIR` and set DRAFTD_K8S_DIR=DIR (DRAFTD_SKIP_K8S=1 skips)",
    );
    assert!(dir.join("draftd.kubeconfig").is_file(), "{}: no control plane there", dir.display());
    Some(dir)
}

async fn client_of(kubeconfig: &Path) -> kube::Client {
    let file = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A stand's app as verify sees it: answers `status` on every path, and remembers the Host headers.
struct App {
    address: String,
    status: Arc<AtomicU16>,
    hosts: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn app() -> App {
    let status = Arc::new(AtomicU16::new(200));
    let hosts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (s, h) = (status.clone(), hosts.clone());
    let handler = move |headers: axum::http::HeaderMap| {
        let (s, h) = (s.clone(), h.clone());
        async move {
            let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            h.lock().unwrap().push(host);
            axum::http::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
    App { address, status, hosts }
}

/// One test's draftd: its own database, project and namespace, against the shared control plane.
struct World {
    pool: PgPool,
    dir: PathBuf,
    admin: kube::Client,
    /// helm as admin, to look at (or break) releases the way an operator would.
    helm: HelmCli,
    project: String,
    namespace: String,
    app: App,
    credentials: Arc<StandCredentials>,
}

const SHA1: &str = "1111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA2: &str = "2222222bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const SHA3: &str = "3333333ccccccccccccccccccccccccccccccccc";

fn sha(n: u32) -> String {
    format!("{n:07x}{}", "d".repeat(33))
}

impl World {
    async fn new(pool: PgPool, dir: PathBuf, name: &str) -> World {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
        let admin_pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await.unwrap();
        let lifetimes = Lifetimes {
            max: Duration::from_secs(600),
            lease: Duration::from_secs(600),
            grace: Duration::from_secs(60),
        };
        let credentials = StandCredentials::new(
            pool.clone(),
            Some((Arc::new(PgDatabases::new(admin_pool)), StandServer::parse(&url, None).unwrap())),
            None,
            lifetimes,
        );
        let mut helm = HelmCli::new(root().join(".tools/bin/helm"));
        helm.kubeconfig = Some(dir.join("admin.kubeconfig"));
        World {
            admin: client_of(&dir.join("admin.kubeconfig")).await,
            pool,
            dir,
            helm,
            project: format!("k8s-{name}-{suffix}"),
            namespace: format!("draft-{name}-{suffix}"),
            app: app().await,
            credentials: Arc::new(credentials),
        }
    }

    /// draftd's configuration for this test; `extra` goes into the project's table.
    fn config(&self, extra: &str) -> Config {
        Config::from_toml(&self.config_text(extra)).unwrap()
    }

    fn config_text(&self, extra: &str) -> String {
        format!(
            r#"
[cluster]
mode = "kubernetes"
pod_security = "restricted"
kubeconfig = "{dir}/draftd.kubeconfig"
service_account = "draftd/draftd"
helm_path = "{root}/.tools/bin/helm"
helm_timeout = "12s"
job_deadline = "60s"
teardown_wait = "90s"

[cluster.verify]
rollout_timeout = "60s"
probes = 2
probe_window = "100ms"
ingress_address = "{app}"

[[projects]]
name = "{project}"
forge = "github"
repo = "acme/{project}"
webhook_secret_env = "K8S_TEST_SECRET"
image = "registry.example.com/acme/shop"
host = "{{stand}}.draft.test"
migrate = ["bin/migrate"]
smoke = ["bin/smoke"]
{extra}
"#,
            dir = self.dir.display(),
            root = root().display(),
            app = self.app.address,
            project = self.project,
        )
    }

    /// [`Self::config`] with the project's image in `registry` (htpasswd login from a file), checked
    /// by the image step with fast looks; `extra` goes into the project's table.
    fn config_with_registry(&self, registry: &TestRegistry, extra: &str) -> Config {
        let (user, password) = registry.auth().credentials().expect("a registry with a login");
        let file = std::env::temp_dir().join(format!("{}-registry-password", self.project));
        std::fs::write(&file, password).unwrap();
        let table = format!(
            "registry = {{ insecure = true, wait = \"30s\", poll = \"100ms\", poll_max = \"500ms\", username = \"{user}\", password_file = \"{}\" }}\n{extra}",
            file.display()
        );
        let toml = self.config_text(&table);
        Config::from_toml(&toml.replace("registry.example.com/acme/shop", &format!("{}/acme/shop", registry.host())))
            .unwrap()
    }

    /// An engine of draftd authenticated as its ServiceAccount, with `config`.
    async fn engine(&self, config: Config) -> Engine<KubernetesSteps<HelmCli, Kubernetes>> {
        let client = draftd::cluster::client::connect(&config.cluster).await.unwrap();
        let probes = draftd::cluster::client::connect_for_probes(&config.cluster).await.unwrap();
        let mut cluster = Kubernetes::new(client, config.cluster.clone()).with_probe_client(probes);
        if let Some(host) = self.credentials.database_host() {
            cluster = cluster.with_database_host(host);
        }
        let helm = HelmCli::from_config(&config.cluster, &root()).unwrap();
        let registries = Some(Arc::new(Registries::from_config(&config).unwrap()));
        let steps = KubernetesSteps::new(self.pool.clone(), Arc::new(config), Arc::new(helm), Arc::new(cluster))
            .with_credentials(Some(self.credentials.clone()))
            .with_registries(registries);
        let settings = EngineSettings {
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            place_recheck: Duration::from_millis(200),
            ..EngineSettings::default()
        };
        Engine::new(self.pool.clone(), Arc::new(steps), settings, "k8s-test")
    }

    async fn queue(&self, kind: &str, sha: &str) -> RunId {
        support::queue_run(&self.pool, &self.project, "feature/k8s", &self.namespace, kind, sha).await
    }

    async fn run(
        &self,
        engine: &Engine<KubernetesSteps<HelmCli, Kubernetes>>,
        kind: &str,
        sha: &str,
    ) -> (RunId, RunEnd) {
        let run = self.queue(kind, sha).await;
        let (claimed, end) = engine.run_one().await.unwrap().expect("a run to claim");
        assert_eq!(claimed, run);
        (run, end)
    }

    async fn step(&self, run: RunId, name: &str) -> (String, Value, Option<Value>) {
        sqlx::query_as("select state, detail, error from steps where run_id = $1 and name = $2")
            .bind(run)
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Every step's state and error, for assertion messages.
    async fn steps(&self, run: RunId) -> String {
        let rows: Vec<(String, String, Option<Value>)> =
            sqlx::query_as("select name, state, error from steps where run_id = $1 order by step_id")
                .bind(run)
                .fetch_all(&self.pool)
                .await
                .unwrap();
        rows.iter().map(|(n, s, e)| format!("{n}={s} {}", e.clone().unwrap_or_default())).collect::<Vec<_>>().join("\n")
    }

    fn release(&self) -> String {
        draftd::helm::release_name(&self.namespace)
    }

    async fn history(&self) -> Vec<Revision> {
        self.helm.history(&self.release(), &self.namespace).await.unwrap()
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.admin.clone(), &self.namespace)
    }

    /// Waits until the namespace is gone (the namespace controller finalises it).
    async fn wait_namespace_gone(&self) {
        let namespaces: Api<Namespace> = Api::all(self.admin.clone());
        let started = Instant::now();
        while namespaces.get_opt(&self.namespace).await.unwrap().is_some() {
            assert!(started.elapsed() < Duration::from_secs(90), "namespace {} is still there", self.namespace);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn labels(meta: &kube::api::ObjectMeta) -> Value {
    json!(meta.labels.clone().unwrap_or_default())
}

/// An opened PR: the namespace and everything that isolates it, the two Secrets, the release
/// deployed and rolled out, the 5xx gate probing the stand's host, and the migrate and smoke Jobs
/// run as the API server stores them; all applied by draftd's own ServiceAccount.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn an_opened_pr_gets_its_whole_stand(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    let w = World::new(pool, dir, "open").await;
    let engine = w.engine(w.config("")).await;
    let (run, end) = w.run(&engine, "deploy", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);

    let namespace = Api::<Namespace>::all(w.admin.clone()).get(&w.namespace).await.unwrap();
    let l = labels(&namespace.metadata);
    assert_eq!(l["app.kubernetes.io/managed-by"], "draftd");
    // Enforced by the API server's Pod Security admission: the chart's pods and draftd's Jobs got in.
    assert_eq!(l["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(l["draftd.io/stand"], "1");
    assert_eq!(l["draftd.io/project"], w.project.as_str());
    let expires = namespace.metadata.annotations.as_ref().unwrap()["draftd.io/expires-at"].clone();
    assert!(chrono::DateTime::parse_from_rfc3339(&expires).is_ok(), "{expires}");

    let quota = w.api::<ResourceQuota>().get("draftd-quota").await.unwrap();
    assert_eq!(quota.spec.unwrap().hard.unwrap()["services.loadbalancers"].0, "0");
    assert!(w.api::<LimitRange>().get("draftd-limits").await.is_ok());
    let deny = w.api::<NetworkPolicy>().get("draftd-default-deny").await.unwrap();
    assert_eq!(deny.spec.unwrap().policy_types.unwrap(), ["Ingress", "Egress"]);
    let allow = serde_json::to_value(w.api::<NetworkPolicy>().get("draftd-allow").await.unwrap().spec).unwrap();
    // The stand database (the suite's Postgres, an IP address) is let out on its own port.
    let pg = url::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    let database_rule = allow["egress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["to"][0]["ipBlock"]["cidr"] == format!("{}/32", pg.host_str().unwrap()))
        .unwrap_or_else(|| panic!("no egress to the stand database: {allow}"));
    assert_eq!(database_rule["ports"][0]["port"], pg.port().unwrap_or(5432));
    let account = w.api::<ServiceAccount>().get("default").await.unwrap();
    assert_eq!(account.automount_service_account_token, Some(false));
    let binding = w.api::<RoleBinding>().get("draftd").await.unwrap();
    assert_eq!(binding.role_ref.name, "draftd-stand");
    assert_eq!(binding.subjects.unwrap()[0].name, "draftd");

    let secret = w.api::<Secret>().get("app-database").await.unwrap();
    assert!(secret.data.unwrap().contains_key("PGPASSWORD"), "the app's login");

    let history = w.history().await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert!(history[0].is_deployed());
    let (_, deploy, _) = w.step(run, "deploy").await;
    assert_eq!(deploy["revision"], 1);
    assert_eq!(deploy["updated"], history[0].updated.as_str(), "the revision is recorded with its time");
    let (_, verify, _) = w.step(run, "verify").await;
    assert_eq!(verify["revision"], 1);
    let deployments = w.api::<Deployment>().list(&ListParams::default()).await.unwrap().items;
    assert!(deployments.len() >= 2, "the app and its mocks");
    for d in &deployments {
        let status = d.status.clone().unwrap();
        assert_eq!(status.available_replicas, d.spec.as_ref().unwrap().replicas, "{:?}", d.metadata.name);
    }
    let host = format!("{}.draft.test", w.namespace);
    let hosts = w.app.hosts.lock().unwrap().clone();
    assert!(!hosts.is_empty() && hosts.iter().all(|h| *h == host), "probed with the stand's host: {hosts:?}");

    for job in ["migrate-r1", "smoke-r1"] {
        let job = w.api::<Job>().get(job).await.unwrap();
        assert_eq!(job.status.as_ref().unwrap().succeeded, Some(1), "{:?}", job.metadata.name);
        let pod = job.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        let env: Vec<(String, String)> =
            container.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect();
        let service = format!("http://{}.{}.svc", w.release(), w.namespace);
        assert!(env.contains(&("STAND_URL".into(), service)), "Jobs reach the app's Service: {env:?}");
        assert!(env.contains(&("PUBLIC_URL".into(), format!("https://{host}"))), "{env:?}");
    }
    let (_, migrate, _) = w.step(run, "migrate").await;
    assert_eq!(migrate["job"], "migrate-r1");
    assert!(migrate["ran_seconds"].as_f64().is_some_and(|s| s >= 0.0), "the Job's own run time: {migrate}");
    // The namespace really enforces "restricted": a pod without its settings is refused.
    let loose: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": { "name": "loose" }, "spec": { "containers": [{ "name": "c", "image": "x" }] },
    }))
    .unwrap();
    let refused = w.api::<k8s_openapi::api::core::v1::Pod>().create(&PostParams::default(), &loose).await.unwrap_err();
    assert!(refused.to_string().contains("violates PodSecurity \"restricted"), "{refused}");
}

/// A push whose revision fails verify rolls back to the last verified revision (as `helm history`
/// shows it); a smoke test that fails after verify passed rolls back to the revision before this
/// run's, never to the one that just failed it.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn failed_verify_and_failed_smoke_roll_back_to_the_last_revision_verified_before(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    let w = World::new(pool, dir, "rollback").await;
    let engine = w.engine(w.config("")).await;
    let (run, end) = w.run(&engine, "deploy", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);

    w.app.status.store(500, Ordering::SeqCst);
    let (run, end) = w.run(&engine, "deploy", SHA2).await;
    assert_eq!(end, RunEnd::Failed);
    let (state, _, error) = w.step(run, "verify").await;
    assert_eq!(state, "failed");
    assert!(error.unwrap()["message"].as_str().unwrap().contains("answered 500"));
    let (_, rollback, _) = w.step(run, "rollback").await;
    assert_eq!(rollback["rolled_back_to"], 1, "{rollback}");
    let history = w.history().await;
    let last = history.last().unwrap();
    assert_eq!((last.revision, last.status.as_str()), (3, "deployed"), "{history:?}");
    assert_eq!(last.description, "Rollback to 1");

    // Verify passes at revision 4, then the smoke test fails: back to 1, not to 4.
    w.app.status.store(200, Ordering::SeqCst);
    let mut config = w.config("");
    config.projects[0].smoke = ["sh", "-c", "draftd-e2e-fail"].map(String::from).to_vec();
    let failing_smoke = w.engine(config).await;
    let (run, end) = w.run(&failing_smoke, "deploy", SHA3).await;
    assert_eq!(end, RunEnd::Failed);
    let (state, verify, _) = w.step(run, "verify").await;
    assert_eq!((state.as_str(), &verify["revision"]), ("succeeded", &json!(4)));
    let (state, _, error) = w.step(run, "smoke").await;
    assert_eq!(state, "failed");
    let message = error.unwrap()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("exit code 3"), "{message}");
    let (_, rollback, _) = w.step(run, "rollback").await;
    assert_eq!(rollback["rolled_back_to"], 1, "{rollback}");
    assert_eq!(w.history().await.last().unwrap().description, "Rollback to 1");
}

/// A PR reopened after teardown starts a fresh release history whose revision 1 is not the revision
/// 1 that passed verify before; and a verified revision pruned by `--history-max` is no target: both
/// end in an uninstall, never a rollback to the wrong revision.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_reopened_pr_and_a_pruned_history_never_roll_back_to_the_wrong_revision(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    let w = World::new(pool, dir, "reopen").await;
    let engine = w.engine(w.config("")).await;
    let (run, end) = w.run(&engine, "deploy", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    let (run, end) = w.run(&engine, "teardown", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    w.wait_namespace_gone().await;

    // Reopened (intake makes the stand active again), and the new revision 1 fails verify.
    sqlx::query("update stands set state = 'active'").execute(&w.pool).await.unwrap();
    w.app.status.store(503, Ordering::SeqCst);
    let (run, end) = w.run(&engine, "deploy", SHA2).await;
    assert_eq!(end, RunEnd::Failed, "{}", w.steps(run).await);
    let (_, deploy, _) = w.step(run, "deploy").await;
    assert_eq!(deploy["revision"], 1, "a fresh history");
    let (_, rollback, _) = w.step(run, "rollback").await;
    assert_eq!(rollback["uninstalled"], true, "{rollback}");
    assert!(w.history().await.is_empty());

    // history-max 3: revision 1 passes, then failures and rollbacks push it out of the history.
    w.app.status.store(200, Ordering::SeqCst);
    let mut config = w.config("");
    config.cluster.helm_history_max = 3;
    let engine = w.engine(config).await;
    let (run, end) = w.run(&engine, "deploy", &sha(4)).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    w.app.status.store(500, Ordering::SeqCst);
    let (run, _) = w.run(&engine, "deploy", &sha(5)).await;
    assert_eq!(w.step(run, "rollback").await.1["rolled_back_to"], 1, "1 is still in the history");
    let (run, _) = w.run(&engine, "deploy", &sha(6)).await;
    let (_, rollback, _) = w.step(run, "rollback").await;
    let history = w.history().await;
    assert!(!history.iter().any(|r| r.revision == 1), "pruned: {history:?}");
    assert_eq!(rollback["uninstalled"], true, "{rollback} {history:?}");
}

/// helm killed mid-upgrade leaves the release pending-upgrade, and every later upgrade would fail
/// with "another operation is in progress": the next run rolls the release back to its last
/// complete revision first, then deploys.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_release_left_pending_by_a_killed_helm_is_recovered_by_the_next_run(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    let w = World::new(pool, dir, "pending").await;
    let engine = w.engine(w.config("")).await;
    let (run, end) = w.run(&engine, "deploy", &sha(4)).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);

    // An upgrade that waits for pods that can never be scheduled, killed while it waits.
    let mut helm = tokio::process::Command::new(root().join(".tools/bin/helm"))
        .args(["upgrade", "--install", &w.release(), "charts/stand", "--namespace", &w.namespace])
        .args(["--values", "values/draft.yaml", "--set-string", "nodeSelector.nowhere=true", "--wait"])
        .args(["--set-string", &format!("stand.project={}", w.project), "--set-string", "stand.id=1"])
        .arg("--kubeconfig")
        .arg(w.dir.join("admin.kubeconfig"))
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once it has applied the new revision (the stand's Ingress, which it drops, is gone) and
    // waits for pods: the release is pending-upgrade, and half of it is in the cluster.
    let ingresses: Api<k8s_openapi::api::networking::v1::Ingress> = w.api();
    let started = Instant::now();
    while ingresses.get_opt(&w.release()).await.unwrap().is_some() {
        assert!(started.elapsed() < Duration::from_secs(30), "helm never applied the upgrade");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    helm.kill().await.unwrap();
    assert_eq!(w.history().await.last().unwrap().status, "pending-upgrade");

    let (run, end) = w.run(&engine, "deploy", SHA2).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    let (_, deploy, _) = w.step(run, "deploy").await;
    let recovered = &deploy["recovered"];
    assert_eq!(recovered["found"], "revision 2 was left pending-upgrade", "{deploy}");
    // Either helm's rollback cleared it, or, where it could not follow the half-applied revision
    // (seen here: "original object Ingress … not found", depending on where helm was killed), that
    // revision's record was discarded and the upgrade went on from revision 1.
    match (&recovered["rolled_back_to"], &recovered["discarded"]) {
        (Value::Number(n), _) => assert_eq!(n.as_u64(), Some(1), "{deploy}"),
        (_, Value::Number(n)) => {
            assert_eq!(n.as_u64(), Some(2), "{deploy}");
            assert!(recovered["rollback_failed"].is_string(), "{deploy}");
        }
        _ => panic!("not recovered: {deploy}"),
    }
    let history = w.history().await;
    assert!(history.last().unwrap().is_deployed(), "{history:?}");
    assert!(!history.iter().any(|r| r.is_pending() && r.revision > 2), "{history:?}");
    assert!(ingresses.get_opt(&w.release()).await.unwrap().is_some(), "the upgrade put the Ingress back");
}

/// Two PRs at once get two stands; closing one removes its namespace (finalised by the namespace
/// controller), its database and its logins, and leaves the other alone.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn two_prs_at_once_and_a_close_that_leaves_nothing_behind(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    let w = World::new(pool, dir, "two").await;
    let engine = w.engine(w.config("")).await;
    let other = format!("{}-b", w.namespace);
    let first = w.queue("deploy", SHA1).await;
    let second = support::queue_run(&w.pool, &w.project, "feature/k8s-b", &other, "deploy", SHA2).await;
    let (a, b) = tokio::join!(engine.run_one(), engine.run_one());
    let mut ends = vec![a.unwrap().unwrap(), b.unwrap().unwrap()];
    ends.sort_by_key(|(run, _)| *run);
    assert_eq!(ends, [(first, RunEnd::Succeeded), (second, RunEnd::Succeeded)], "{}", w.steps(second).await);
    let database = w.namespace.replace('-', "_");
    let exists = |db: String| {
        let pool = w.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("select exists (select 1 from pg_database where datname = $1)")
                .bind(db)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(exists(database.clone()).await);

    let (run, end) = w.run(&engine, "teardown", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    w.wait_namespace_gone().await;
    assert!(!exists(database).await, "the stand database is dropped");
    let live: i64 = sqlx::query_scalar("select count(*) from credentials where revoked_at is null and stand_id = 1")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(live, 0, "every login of the closed stand is revoked");
    let namespaces: Api<Namespace> = Api::all(w.admin.clone());
    assert!(namespaces.get_opt(&other).await.unwrap().is_some(), "the other stand is untouched");
    let run = support::queue_run(&w.pool, &w.project, "feature/k8s-b", &other, "teardown", SHA2).await;
    assert_eq!(engine.run_one().await.unwrap(), Some((run, RunEnd::Succeeded)), "{}", w.steps(run).await);
}

/// draftd runs as its ServiceAccount: what deploy/rbac.yaml gives it works (the other tests), and
/// the admission policy refuses it every namespace and RoleBinding that is not draftd's, which RBAC
/// alone cannot.
#[tokio::test]
async fn draftds_service_account_cannot_reach_beyond_its_own_namespaces() {
    let Some(dir) = control_plane() else { return };
    let draftd = client_of(&dir.join("draftd.kubeconfig")).await;
    let admin = client_of(&dir.join("admin.kubeconfig")).await;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "draftd" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "draftd-stand" },
        "subjects": [{ "kind": "ServiceAccount", "name": "draftd", "namespace": "draftd" }],
    }))
    .unwrap();
    let refused = Api::<RoleBinding>::namespaced(draftd.clone(), "kube-system")
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(message.contains("draftd may change only namespaces labelled"), "{message}");

    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let theirs = format!("someone-else-{suffix}");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": theirs } })).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let as_draftd: Api<Namespace> = Api::all(draftd.clone());
    let refused = as_draftd.delete(&theirs, &Default::default()).await.unwrap_err().to_string();
    assert!(refused.contains("draftd may change only namespaces labelled"), "{refused}");
    let label = json!({ "metadata": { "labels": { "app.kubernetes.io/managed-by": "draftd" } } });
    let refused = as_draftd
        .patch(&theirs, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&label))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("draftd may change only"), "taking a namespace over is refused too: {refused}");
    let unlabelled: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": format!("{theirs}-new") } })).unwrap();
    let refused = as_draftd.create(&PostParams::default(), &unlabelled).await.unwrap_err().to_string();
    assert!(refused.contains("draftd may change only"), "{refused}");
    namespaces.delete(&theirs, &Default::default()).await.unwrap();

    // And what RBAC itself keeps out: Secrets of other namespaces.
    let secrets = Api::<Secret>::namespaced(draftd, "kube-system").list(&ListParams::default()).await.unwrap_err();
    assert!(secrets.to_string().contains("forbidden"), "{secrets}");
}

/// The reaper, with draftd's ServiceAccount: it tears down a stand whose expiry passed (the
/// namespace finalised and gone), and removes a namespace made by hand with draftd's labels once two
/// sweeps have seen it, while another installation's namespace (a project it does not serve) stays.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_reaper_tears_down_an_expired_stand_and_removes_orphans_of_its_own_projects(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    let w = World::new(pool, dir, "reap").await;
    let config = w.config("");
    let engine = w.engine(config.clone()).await;
    let (run, end) = w.run(&engine, "deploy", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);

    let namespaces: Api<Namespace> = Api::all(w.admin.clone());
    let planted = |name: String, project: String| {
        serde_json::from_value::<Namespace>(json!({ "metadata": { "name": name, "labels": {
            "app.kubernetes.io/managed-by": "draftd", "draftd.io/project": project, "draftd.io/stand": "999" } } }))
        .unwrap()
    };
    let orphan = format!("{}-orphan", w.namespace);
    let theirs = format!("{}-theirs", w.namespace);
    namespaces.create(&PostParams::default(), &planted(orphan.clone(), w.project.clone())).await.unwrap();
    namespaces.create(&PostParams::default(), &planted(theirs.clone(), "another-installation".into())).await.unwrap();

    let client = draftd::cluster::client::connect(&config.cluster).await.unwrap();
    let reaper = draftd::reaper::Reaper::new(w.pool.clone(), Arc::new(config.clone()), "k8s-test")
        .with_cluster(Arc::new(Kubernetes::new(client, config.cluster.clone())))
        .with_credentials(Some(w.credentials.clone()));
    sqlx::query("update stands set expires_at = now() - interval '1 minute'").execute(&w.pool).await.unwrap();
    let draftd::reaper::SweepOutcome::Swept(first) = reaper.sweep(chrono::Utc::now()).await.unwrap() else {
        panic!("the sweep lock is this test's own")
    };
    assert_eq!(first.expired.len(), 1, "{first:?}");
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let (run, end) = engine.run_one().await.unwrap().expect("the queued teardown");
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    w.wait_namespace_gone().await;

    let draftd::reaper::SweepOutcome::Swept(second) = reaper.sweep(chrono::Utc::now()).await.unwrap() else {
        panic!("busy")
    };
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    let report = second.orphans.iter().find(|o| o.name == orphan).expect("the planted namespace is an orphan");
    assert!(report.removed, "seen twice, removed: {report:?}");
    assert!(!second.orphans.iter().any(|o| o.name == theirs), "another installation's namespace is not ours");
    let started = Instant::now();
    while namespaces.get_opt(&orphan).await.unwrap().is_some() {
        assert!(started.elapsed() < Duration::from_secs(90), "the orphan namespace is still there");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(namespaces.get_opt(&theirs).await.unwrap().is_some());
    namespaces.delete(&theirs, &Default::default()).await.unwrap();
}

/// A stand without a host is probed through the API server's Service proxy. The API server here
/// cannot reach a pod (kwok's pods have loopback addresses, which no Endpoints may hold, as a
/// NetworkPolicy-blocked API server on a multi-node cluster cannot reach one): what it answers in
/// the app's place is never counted a healthy app (the old gate passed its 404 as "a 4xx app").
/// The shapes of those answers are pinned request by request in tests/it/cluster.rs.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_api_servers_own_answer_through_its_proxy_is_not_taken_for_the_app(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    let w = World::new(pool, dir, "proxy").await;
    let mut config = w.config("");
    config.projects[0].host = None;
    let engine = w.engine(config).await;
    let (run, end) = w.run(&engine, "deploy", SHA1).await;
    assert_eq!(end, RunEnd::Failed, "{}", w.steps(run).await);
    let (state, _, error) = w.step(run, "verify").await;
    assert_eq!(state, "failed");
    let message = error.unwrap()["message"].as_str().unwrap().to_owned();
    assert!(message.contains(&format!("services/{}:http/proxy", w.release())), "names the Service: {message}");
    // What the API server said, at once: not retried by the client until the probe timed out.
    assert!(message.contains("no endpoints available"), "{message}");
    assert!(!message.contains("did not answer within"), "{message}");
    assert!(w.app.hosts.lock().unwrap().is_empty(), "nothing was probed at a URL");
}

/// A chart whose container requests more than the LimitRange's default limit and sets no limit of
/// its own is refused before anything is applied, with the container and the fix named, and the
/// API server itself refuses such a pod in the stand's namespace: the check says what it would.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_release_the_limit_range_would_refuse_is_stopped_before_helm_applies_it(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    let w = World::new(pool, dir, "limits").await;
    let values = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(values.path(), "resources:\n  requests:\n    memory: 1Gi\n  limits: null\n").unwrap();
    let mut config = w.config("");
    config.projects[0].values.push(values.path().to_owned());
    let engine = w.engine(config).await;
    let (run, end) = w.run(&engine, "deploy", SHA1).await;
    assert_eq!(end, RunEnd::Failed, "{}", w.steps(run).await);
    let (state, _, error) = w.step(run, "deploy").await;
    assert_eq!(state, "failed");
    let error = error.unwrap();
    assert_eq!(error["label"], "limits_refused");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(&format!("container app of Deployment/{}: memory request 1Gi", w.release())), "{message}");
    assert!(w.history().await.is_empty(), "nothing was applied");

    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": { "name": "too-big" },
        "spec": { "containers": [{ "name": "app", "image": "x", "resources": { "requests": { "memory": "1Gi" } } }] },
    }))
    .unwrap();
    let refused = w.api::<k8s_openapi::api::core::v1::Pod>().create(&PostParams::default(), &pod).await.unwrap_err();
    assert!(refused.to_string().contains("must be less than or equal to memory limit"), "{refused}");
}

/// The admin's view of the build namespace (deploy/build.yaml, applied by scripts/k8s-up.sh).
fn build_api<K>(w: &World) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(w.admin.clone(), "draftd-build")
}

/// CI pushed the image: the image step finds it in a registry that wants a login, the stand's pods
/// and Jobs run it by digest, and the namespace's default ServiceAccount pulls with a Secret that
/// holds that one registry's login.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_image_ci_pushed_runs_by_digest_pulled_with_the_stands_own_secret(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    if !support::registry::available() {
        return;
    }
    let w = World::new(pool, dir, "image").await;
    let registry = TestRegistry::start(RegistryAuth::htpasswd()).await;
    let tag = draftd::pipeline::plan::image_tag("feature/k8s", SHA1);
    let digest = registry.push_image("acme/shop", &tag, "linux/amd64").await;
    let engine = w.engine(w.config_with_registry(&registry, "")).await;
    let (run, end) = w.run(&engine, "deploy", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);

    let pinned = format!("{}/acme/shop@{digest}", registry.host());
    let (_, image, _) = w.step(run, "image").await;
    assert_eq!(image["pinned"], pinned.as_str());
    let app = w.api::<Deployment>().get(&w.release()).await.unwrap();
    let spec = app.spec.unwrap().template;
    assert_eq!(spec.spec.unwrap().containers[0].image.as_deref(), Some(pinned.as_str()), "the app runs the digest");
    let pod_labels = spec.metadata.unwrap().labels.unwrap();
    assert_eq!(pod_labels.get("app.kubernetes.io/version"), Some(&tag), "the tag stays in the labels");
    for job in ["migrate-r1", "smoke-r1"] {
        let job = w.api::<Job>().get(job).await.unwrap();
        assert_eq!(job.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(), Some(pinned.as_str()));
    }

    let secret = w.api::<Secret>().get("draftd-registry").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    let config: Value = serde_json::from_slice(&secret.data.unwrap()[".dockerconfigjson"].0).unwrap();
    let auths = config["auths"].as_object().unwrap();
    assert_eq!(auths.keys().collect::<Vec<_>>(), [&registry.host()], "that one registry's login");
    assert_eq!(labels(&secret.metadata)["draftd.io/stand"], "1");
    let account = w.api::<ServiceAccount>().get("default").await.unwrap();
    let pulls: Vec<String> = account.image_pull_secrets.unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(pulls, ["draftd-registry"]);
    assert_eq!(account.automount_service_account_token, Some(false), "the namespace step's fields stay");

    // A second deploy applies the namespace's account again: the pull Secret stays named on it.
    let digest2 =
        registry.push_image("acme/shop", &draftd::pipeline::plan::image_tag("feature/k8s", SHA2), "linux/amd64").await;
    let (run2, end) = w.run(&engine, "deploy", SHA2).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run2).await);
    assert_eq!(w.step(run2, "image").await.1["digest"], digest2.as_str());
    let account = w.api::<ServiceAccount>().get("default").await.unwrap();
    assert_eq!(account.image_pull_secrets.map(|p| p.len()), Some(1));
}

/// CI pushed nothing and the project builds: a rootless BuildKit Job in the build namespace, as
/// the API server stores it, fetching the commit and pushing the stand's tag with a registry cache;
/// its registry login in a Secret the Job owns. kwok completes the Job; the test pushes the image
/// as BuildKit would, and the stand runs it by digest. A failing build fails the run before deploy.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_missing_image_is_built_by_a_buildkit_job_and_a_failed_build_deploys_nothing(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    if !support::registry::available() {
        return;
    }
    let w = World::new(pool, dir, "build").await;
    let registry = TestRegistry::start(RegistryAuth::htpasswd()).await;
    let config = w.config_with_registry(
        &registry,
        r#"build = { context = "./web", dockerfile = "Dockerfile.draft", always = true, public = true, args = { MODE = "draft" } }"#,
    );
    let engine = Arc::new(w.engine(config).await);
    let run = w.queue("deploy", SHA1).await;
    let driving = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_one().await.unwrap().expect("a run to claim") })
    };
    let name = draftd::cluster::build::BuildJob::name_for(&w.namespace, SHA1);
    let started = Instant::now();
    let job = loop {
        if let Some(job) = build_api::<Job>(&w).get_opt(&name).await.unwrap() {
            break job;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no build Job {name}: {}", w.steps(run).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tag = draftd::pipeline::plan::image_tag("feature/k8s", SHA1);
    let pushed = format!("{}/acme/shop:{tag}", registry.host());
    let spec = job.spec.clone().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    let pod = spec.template.spec.unwrap();
    let container = &pod.containers[0];
    assert_eq!(container.command.as_deref(), Some(&["buildctl-daemonless.sh".to_owned()][..]));
    let args = container.args.clone().unwrap();
    let context = format!("--opt=context=https://github.com/acme/{}.git#{SHA1}:web", w.project);
    for wanted in [
        context.as_str(),
        "--opt=filename=Dockerfile.draft",
        "--opt=build-arg:MODE=draft",
        &format!("--output=type=image,name={pushed},push=true,registry.insecure=true"),
        &format!(
            "--export-cache=type=registry,ref={}/acme/shop:draft-buildcache,mode=max,registry.insecure=true",
            registry.host()
        ),
    ] {
        assert!(args.iter().any(|a| a == wanted), "{wanted} not in {args:?}");
    }
    assert!(!args.iter().any(|a| a.contains("GIT_AUTH")), "a public repository is fetched without a token");
    let security = pod.security_context.unwrap();
    assert_eq!(security.seccomp_profile.unwrap().type_, "Unconfined", "rootless BuildKit's documented profile");
    assert_eq!(security.run_as_user, Some(1000));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert!(container.resources.as_ref().unwrap().limits.as_ref().unwrap().contains_key("memory"));
    assert_eq!(labels(&job.metadata)["draftd.io/stand"], "1");
    // The registry login goes in a Secret the Job owns, so both go together.
    let started = Instant::now();
    let secret = loop {
        if let Some(secret) = build_api::<Secret>(&w).get_opt(&name).await.unwrap() {
            break secret;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no build Secret");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), Some(owner.uid.as_str())), ("Job", job.metadata.uid.as_deref()));
    let data = secret.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["config.json"]);

    // What BuildKit would have pushed.
    let digest = registry.push_image("acme/shop", &tag, "linux/amd64").await;
    let (claimed, end) = tokio::time::timeout(Duration::from_secs(120), driving).await.unwrap().unwrap();
    assert_eq!((claimed, end), (run, RunEnd::Succeeded), "{}", w.steps(run).await);
    let (_, image, _) = w.step(run, "image").await;
    assert_eq!(image["digest"], digest.as_str());
    assert_eq!(image["built"]["job"], format!("draftd-build/{name}"));
    let app = w.api::<Deployment>().get(&w.release()).await.unwrap();
    let running = app.spec.unwrap().template.spec.unwrap().containers[0].image.clone();
    assert_eq!(running, Some(format!("{}/acme/shop@{digest}", registry.host())));

    // A build that fails (kwok fails Jobs whose arguments hold the word draftd-e2e-fail): the run
    // fails at the image step with the Job named, and the release stays at the first revision.
    let failing = w.config_with_registry(
        &registry,
        r#"build = { always = true, public = true, args = { MODE = "draftd-e2e-fail" } }"#,
    );
    let engine = w.engine(failing).await;
    let (run2, end) = w.run(&engine, "deploy", SHA2).await;
    assert_eq!(end, RunEnd::Failed, "{}", w.steps(run2).await);
    let (state, _, error) = w.step(run2, "image").await;
    assert_eq!(state, "failed");
    let error = error.unwrap();
    assert_eq!(error["label"], "build_failed", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(&draftd::cluster::build::BuildJob::name_for(&w.namespace, SHA2)), "{message}");
    assert!(message.contains("nothing was deployed"), "{message}");
    assert_eq!(w.history().await.len(), 1, "no new revision");

    // The PR closes: the stand's builds go with it.
    let (run3, end) = w.run(&engine, "teardown", SHA2).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run3).await);
    let (_, uninstall, _) = w.step(run3, "uninstall").await;
    assert_eq!(uninstall["builds_deleted"].as_array().map(Vec::len), Some(2), "{uninstall}");
    let selector = format!("draftd.io/stand=1,draftd.io/project={}", w.project);
    let left = build_api::<Job>(&w).list(&ListParams::default().labels(&selector)).await.unwrap().items;
    let left: Vec<_> = left.into_iter().filter(|j| j.metadata.deletion_timestamp.is_none()).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The replicas each Deployment of the stand asks for, by name, as the API server stores them.
async fn replicas(w: &World) -> Vec<(String, i32)> {
    let mut found: Vec<(String, i32)> = w
        .api::<Deployment>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|d| (d.metadata.name.unwrap_or_default(), d.spec.and_then(|s| s.replicas).unwrap_or(1)))
        .collect();
    found.sort();
    found
}

async fn stand_state(w: &World) -> (String, Option<Value>) {
    sqlx::query_as("select state, sleep_record from stands where namespace = $1")
        .bind(&w.namespace)
        .fetch_one(&w.pool)
        .await
        .unwrap()
}

/// Sleep scales every Deployment of the release to zero through the scale subresource, as draftd's
/// own ServiceAccount, and revokes the stand's logins; the namespace, its Secrets and the release
/// stay. A wake issues new logins, scales back to what the sleep recorded and verifies. A push to a
/// sleeping stand deploys (helm upgrading a release whose replicas draftd changed) and wakes it.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_stand_sleeps_at_zero_replicas_and_wakes_by_a_wake_run_or_a_push(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    let w = World::new(pool, dir, "sleep").await;
    let wake_service = "[sleep]\nwake_service = \"draftd-wake.draftd.svc.cluster.local:8081\"\n";
    let engine = w.engine(Config::from_toml(&format!("{wake_service}{}", w.config_text(""))).unwrap()).await;
    let (run, end) = w.run(&engine, "deploy", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    // What sends the stand's requests to draftd while it sleeps, as the API server stores it.
    let ingress = w.api::<Ingress>().get(&w.release()).await.unwrap();
    let annotations = ingress.metadata.annotations.unwrap_or_default();
    let wake = format!("{}-wake", w.release());
    assert_eq!(annotations["nginx.ingress.kubernetes.io/custom-http-errors"], "503");
    assert_eq!(annotations["nginx.ingress.kubernetes.io/default-backend"], wake);
    let service = w.api::<Service>().get(&wake).await.unwrap().spec.unwrap();
    assert_eq!(service.type_.as_deref(), Some("ExternalName"));
    assert_eq!(service.external_name.as_deref(), Some("draftd-wake.draftd.svc.cluster.local"));
    assert_eq!(service.ports.unwrap()[0].port, 8081);
    let awake = replicas(&w).await;
    assert!(!awake.is_empty() && awake.iter().all(|(_, n)| *n >= 1), "{awake:?}");
    let live_logins = || async {
        let n: i64 = sqlx::query_scalar("select count(*) from credentials where revoked_at is null")
            .fetch_one(&w.pool)
            .await
            .unwrap();
        n
    };
    assert!(live_logins().await > 0, "the deploy issued the app's login");
    // What the cost is priced by: the release's requests, recorded when verify passed.
    let open = || async {
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("select cpu_millis, memory_bytes from stand_usage where ended_at is null")
                .fetch_all(&w.pool)
                .await
                .unwrap();
        rows
    };
    let requested = open().await;
    assert_eq!(requested.len(), 1, "one open stretch");
    assert!(requested[0].0 >= 25 && requested[0].1 >= 96 << 20, "the app's requests at least: {requested:?}");

    let (run, end) = w.run(&engine, "sleep", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    assert!(replicas(&w).await.iter().all(|(_, n)| *n == 0), "{:?}", replicas(&w).await);
    let (state, record) = stand_state(&w).await;
    assert_eq!(state, "sleeping");
    let record = record.expect("the replicas recorded");
    assert_eq!(record.as_array().unwrap().len(), awake.len(), "{record}");
    assert_eq!(live_logins().await, 0, "a sleeping stand holds no live credentials");
    assert!(open().await.is_empty(), "asleep: nothing is paid for but storage");
    assert!(w.history().await.last().unwrap().is_deployed(), "the release stays");

    let (run, end) = w.run(&engine, "wake", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    assert_eq!(replicas(&w).await, awake);
    assert_eq!(stand_state(&w).await, ("active".to_owned(), None));
    assert!(live_logins().await > 0, "the wake issued new logins");
    assert_eq!(open().await, requested, "awake again at the same requests");
    assert_eq!(w.step(run, "verify").await.0, "succeeded");

    // Asleep again, then a push: helm upgrades the release and the deploy scales it back.
    let (run, end) = w.run(&engine, "sleep", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    let (run, end) = w.run(&engine, "deploy", SHA2).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    assert_eq!(replicas(&w).await, awake, "{}", w.steps(run).await);
    assert_eq!(stand_state(&w).await, ("active".to_owned(), None));
}

/// `max_active = 1` with `on_cap = "sleep_idlest"`, against the API server: a second stand's deploy
/// waits while the first, idler, is scaled to zero through the scale subresource, then comes up.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn past_max_active_the_idlest_stand_is_scaled_to_zero_to_make_room(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    let w = World::new(pool, dir, "caps").await;
    let engine = w.engine(w.config("")).await.with_caps(draftd::pipeline::Caps {
        all: Some(1),
        sleep_idlest: true,
        ..Default::default()
    });
    let (run, end) = w.run(&engine, "deploy", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    let awake = replicas(&w).await;
    assert!(!awake.is_empty() && awake.iter().all(|(_, n)| *n >= 1), "{awake:?}");

    let other = format!("{}-b", w.namespace);
    let second = support::queue_run(&w.pool, &w.project, "feature/k8s-b", &other, "deploy", SHA2).await;
    assert_eq!(engine.run_one().await.unwrap(), Some((second, RunEnd::Waiting)), "past the cap, it waits");
    let waiting: (String, Option<String>) =
        sqlx::query_as("select state, waiting_reason from stands where namespace = $1")
            .bind(&other)
            .fetch_one(&w.pool)
            .await
            .unwrap();
    assert_eq!(waiting, ("waiting".to_owned(), Some("1 of 1 stands ([stands] max_active) are up".to_owned())));
    // The sleep the cap queued runs; the waiting deploy asks again each time its recheck comes round.
    let started = Instant::now();
    loop {
        match engine.run_one().await.unwrap() {
            Some((run, RunEnd::Succeeded)) if run == second => break,
            Some((run, end)) if run == second => assert_eq!(end, RunEnd::Waiting),
            Some((run, end)) => assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await),
            None => {}
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the second stand never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replicas(&w).await.iter().all(|(_, n)| *n == 0), "{:?}", replicas(&w).await);
    assert_eq!(stand_state(&w).await.0, "sleeping");
    let sleeps: Vec<String> =
        sqlx::query_scalar("select trigger from runs where kind = 'sleep'").fetch_all(&w.pool).await.unwrap();
    assert_eq!(sleeps, ["cap"], "one sleep, for the cap");
    let deployments: Api<Deployment> = Api::namespaced(w.admin.clone(), &other);
    let up = deployments.list(&ListParams::default()).await.unwrap().items;
    assert!(!up.is_empty() && up.iter().all(|d| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) >= 1));

    for (namespace, branch, sha) in [(&w.namespace, "feature/k8s", SHA1), (&other, "feature/k8s-b", SHA2)] {
        let run = support::queue_run(&w.pool, &w.project, branch, namespace, "teardown", sha).await;
        assert_eq!(engine.run_one().await.unwrap(), Some((run, RunEnd::Succeeded)), "{}", w.steps(run).await);
    }
    w.wait_namespace_gone().await;
}

/// The health watch as draftd's own ServiceAccount: once a deploy passed verify, the stand is probed
/// where verify probed it (its host through the ingress address); when its app starts answering 500
/// it turns degraded, its comment and check say so with the pods' diagnostics read from the API
/// server, and it is healthy again, said the same way, when the app answers 200.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_stand_whose_app_starts_answering_500_turns_degraded_and_healthy_again(pool: PgPool) {
    use draftd::reaper::watch::Watch;
    let Some(dir) = control_plane() else { return };
    let w = World::new(pool, dir, "watch").await;
    let watch_table = "[watch]\ninterval = \"3s\"\ntimeout = \"1s\"\nrecheck_after = \"100ms\"\n";
    let config = Config::from_toml(&format!("{watch_table}{}", w.config_text(""))).unwrap();
    let engine = w.engine(config.clone()).await;
    let (run, end) = w.run(&engine, "deploy", SHA1).await;
    assert_eq!(end, RunEnd::Succeeded, "{}", w.steps(run).await);
    let stand: draftd::stand::StandId =
        sqlx::query_scalar("update stands set pr_number = 7 where namespace = $1 returning stand_id")
            .bind(&w.namespace)
            .fetch_one(&w.pool)
            .await
            .unwrap();
    let client = draftd::cluster::client::connect(&config.cluster).await.unwrap();
    let cluster = Kubernetes::new(client, config.cluster.clone());
    let watch = Watch::new(w.pool.clone(), Arc::new(config)).with_cluster(Arc::new(cluster));
    let due = || async {
        sqlx::query("update stands set next_probe_at = now() where stand_id = $1")
            .bind(stand)
            .execute(&w.pool)
            .await
            .unwrap();
    };
    let outbox = || async {
        let rows: Vec<(String, Value)> = sqlx::query_as(
            "select kind, payload from outbox where stand_id = $1 and run_id is null order by outbox_id",
        )
        .bind(stand)
        .fetch_all(&w.pool)
        .await
        .unwrap();
        rows
    };
    let watched: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select next_probe_at from stands where stand_id = $1")
            .bind(stand)
            .fetch_one(&w.pool)
            .await
            .unwrap();
    assert!(watched.is_some(), "verify passed, so the watch looks after it");

    due().await;
    w.app.hosts.lock().unwrap().clear();
    let tick = watch.tick(chrono::Utc::now(), 16).await.unwrap();
    assert_eq!((tick.probes, tick.degraded.len(), tick.errors.len()), (1, 0, 0), "{tick:?}");
    let host = format!("{}.draft.test", w.namespace);
    assert_eq!(*w.app.hosts.lock().unwrap(), [host], "probed as verify probes it");

    w.app.status.store(500, Ordering::SeqCst);
    due().await;
    let tick = watch.tick(chrono::Utc::now(), 16).await.unwrap();
    assert_eq!(tick.degraded, [stand], "{tick:?}");
    let (health, diagnostics): (String, Option<String>) =
        sqlx::query_as("select health, health_diagnostics from stands where stand_id = $1")
            .bind(stand)
            .fetch_one(&w.pool)
            .await
            .unwrap();
    assert_eq!(health, "degraded");
    assert!(diagnostics.is_some(), "the pods were looked at through the API server");
    let rows = outbox().await;
    let kinds: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["comment", "check"]);
    assert!(rows[0].1["body"].as_str().unwrap().contains("Draft stand degraded"));
    assert_eq!((rows[1].1["state"].as_str(), rows[1].1["sha"].as_str()), (Some("failure"), Some(SHA1)));
    let snapshot = draftd::store::metrics::snapshot(&w.pool, 3).await.unwrap();
    assert_eq!(snapshot.health, [(w.project.clone(), 0, 1)]);

    w.app.status.store(200, Ordering::SeqCst);
    due().await;
    let tick = watch.tick(chrono::Utc::now(), 16).await.unwrap();
    assert_eq!(tick.recovered, [stand], "{tick:?}");
    let rows = outbox().await;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3].1["state"], "success");
    let snapshot = draftd::store::metrics::snapshot(&w.pool, 3).await.unwrap();
    assert_eq!(snapshot.health, [(w.project.clone(), 1, 0)]);

    let run = w.queue("teardown", SHA1).await;
    assert_eq!(engine.run_one().await.unwrap(), Some((run, RunEnd::Succeeded)), "{}", w.steps(run).await);
    w.wait_namespace_gone().await;
}
