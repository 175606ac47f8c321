//! The kubernetes-mode step runner through the engine, with in-memory fakes of the cluster and of
//! helm (their real implementations are tested in tests/it/cluster.rs and tests/it/helm.rs): which calls
//! each step makes, rollback to the last revision that passed verify, diagnostics in the error,
//! and teardown.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use draftd::cluster::jobs::{JobOutcome, JobRequest};
use draftd::cluster::verify::{ContainerProblem, Diagnostics, PodProblem, Prober};
use draftd::cluster::{Cluster, ClusterError, ManagedNamespace, NamespaceGone, NamespaceOutcome, StandMeta};
use draftd::config::Config;
use draftd::credentials::{Lifetimes, StandCredentials, StandServer};
use draftd::database::PgDatabases;
use draftd::helm::{Helm, HelmError, Release, Revision};
use draftd::pipeline::steps::KubernetesSteps;
use draftd::pipeline::{Engine, EngineSettings, RunEnd};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sqlx::PgPool;

use crate::support::{self, forge_fake};
use draftd::stand::RunId;

#[derive(Default)]
struct Calls(Mutex<Vec<String>>);

impl Calls {
    fn push(&self, call: String) {
        self.0.lock().unwrap().push(call);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

#[derive(Default)]
struct FakeCluster {
    calls: Arc<Calls>,
    /// The next Job's wait fails this way (the API server gone mid-wait, say).
    job_fails: Mutex<Option<ClusterError>>,
    rollout_fails: Mutex<bool>,
    /// Values of the Secrets applied, by name (tests only: a real cluster keeps them).
    secret_values: Mutex<std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>>,
    /// Every build asked for; each one "succeeds" (the test pushes the image).
    builds: Mutex<Vec<draftd::cluster::build::BuildJob>>,
}

impl Cluster for FakeCluster {
    async fn ensure_namespace(&self, stand: &StandMeta) -> Result<NamespaceOutcome, ClusterError> {
        self.calls.push(format!("ensure_namespace {} stand {}", stand.namespace, stand.stand_id));
        Ok(NamespaceOutcome { created: true, applied: vec!["ResourceQuota/draftd-quota".into()] })
    }
    async fn apply_secret(
        &self,
        _: &StandMeta,
        name: &str,
        data: &std::collections::BTreeMap<String, SecretString>,
    ) -> Result<String, ClusterError> {
        self.calls.push(format!("apply_secret {name}"));
        let values = data.iter().map(|(k, v)| (k.clone(), v.expose_secret().to_owned())).collect();
        self.secret_values.lock().unwrap().insert(name.to_owned(), values);
        Ok("checksum".into())
    }
    async fn apply_pull_secret(&self, _: &StandMeta, _: &SecretString) -> Result<(), ClusterError> {
        self.calls.push("apply_pull_secret".to_owned());
        Ok(())
    }
    async fn delete_builds(&self, _: &str, _: &StandMeta) -> Result<Vec<String>, ClusterError> {
        Ok(Vec::new())
    }
    async fn run_build(
        &self,
        _: &StandMeta,
        build: &draftd::cluster::build::BuildJob,
    ) -> Result<JobOutcome, ClusterError> {
        self.calls.push(format!("run_build {}", build.name));
        self.builds.lock().unwrap().push(build.clone());
        Ok(JobOutcome {
            job: build.name.clone(),
            succeeded: true,
            reason: "Complete".into(),
            exit_code: Some(0),
            log_tail: Some("#9 pushing layers done".into()),
            ran_for: Some(Duration::from_secs(1)),
        })
    }
    async fn roll_on_secrets(&self, _: &str, _: &str, _: &str) -> Result<Vec<String>, ClusterError> {
        Ok(Vec::new())
    }
    async fn wait_rollout(&self, namespace: &str, release: &str, _: Duration) -> Result<Vec<String>, ClusterError> {
        self.calls.push(format!("wait_rollout {namespace} {release}"));
        if *self.rollout_fails.lock().unwrap() {
            return Err(ClusterError::RolloutFailed {
                workload: "Deployment/app".into(),
                message: "ReplicaSet has timed out progressing".into(),
            });
        }
        Ok(vec!["Deployment/app".into()])
    }
    async fn diagnose(&self, namespace: &str) -> Result<Diagnostics, ClusterError> {
        self.calls.push(format!("diagnose {namespace}"));
        Ok(Diagnostics {
            pods: vec![PodProblem {
                pod: "app-1".into(),
                phase: "Running".into(),
                containers: vec![ContainerProblem {
                    container: "app".into(),
                    reason: "CrashLoopBackOff (Error)".into(),
                    message: None,
                    restarts: 3,
                    log_tail: Some("boot\npanic: DATABASE_URL is not set\n".into()),
                }],
            }],
            events: vec!["Pod/app-1: BackOff: Back-off restarting failed container".into()],
        })
    }
    async fn run_job(&self, _: &StandMeta, request: &JobRequest) -> Result<JobOutcome, ClusterError> {
        let env: Vec<String> = request.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let secrets =
            if request.secrets.is_empty() { String::new() } else { format!(" secrets {}", request.secrets.join(",")) };
        // What the Job's login is while the Job runs: the migrate test checks it is its own.
        if let Some(user) = request.secrets.first().and_then(|s| self.secret_values.lock().unwrap().get(s).cloned()) {
            self.calls.push(format!("job login {}", user.get("PGUSER").map(String::as_str).unwrap_or("?")));
        }
        if let Some(e) = self.job_fails.lock().unwrap().take() {
            return Err(e);
        }
        self.calls.push(format!(
            "run_job {} {} {:?} {}{secrets}",
            request.name(),
            request.image,
            request.command,
            env.join(",")
        ));
        Ok(JobOutcome {
            job: request.name(),
            succeeded: true,
            reason: "Complete".into(),
            exit_code: Some(0),
            log_tail: Some("ok\n".into()),
            ran_for: None,
        })
    }
    fn service_prober(&self, namespace: &str, service: &str, port: &str, path: &str) -> impl Prober + 'static {
        self.calls.push(format!("probe {namespace} {service}:{port}{path}"));
        support::Healthy
    }
    async fn delete_namespace(&self, namespace: &str, _: Duration) -> Result<NamespaceGone, ClusterError> {
        self.calls.push(format!("delete_namespace {namespace}"));
        Ok(NamespaceGone::Deleted)
    }
    async fn discard_pending_revision(&self, ns: &str, release: &str, revision: u32) -> Result<bool, ClusterError> {
        self.calls.push(format!("discard_pending_revision {ns} {release} {revision}"));
        Ok(true)
    }
    // Sleep and wake are exercised against the real control plane (tests/it/k8s.rs).
    async fn workloads(&self, _: &str, _: &str) -> Result<Vec<draftd::stand::Workload>, ClusterError> {
        Ok(Vec::new())
    }
    async fn scale(&self, _: &str, _: &draftd::stand::Workload, _: i32) -> Result<bool, ClusterError> {
        Ok(false)
    }
    async fn claimed_storage(&self, _: &str) -> Result<i64, ClusterError> {
        Ok(0)
    }
    async fn pod_logs(
        &self,
        _namespace: &str,
        _bounds: draftd::cluster::logs::LogBounds,
    ) -> Result<Vec<draftd::cluster::logs::PodLog>, ClusterError> {
        // No step reads pod logs; the stand page does (tests/it/dashboard_logs.rs).
        Ok(Vec::new())
    }
    async fn managed_namespaces(&self) -> Result<Vec<ManagedNamespace>, ClusterError> {
        Ok(Vec::new())
    }
    async fn annotate_expiry(&self, namespace: &str, at: chrono::DateTime<chrono::Utc>) -> Result<bool, ClusterError> {
        self.calls.push(format!("annotate_expiry {namespace} {}", draftd::cluster::expiry_annotation(at)));
        Ok(true)
    }
}

#[derive(Default)]
struct FakeHelm {
    calls: Arc<Calls>,
    /// The release's history as helm keeps it (one release per test).
    history: support::FakeHistory,
    /// The next upgrade applies a revision, then fails this way (a partial apply, a timeout).
    upgrade_fails: Mutex<Option<HelmError>>,
    /// The next rollback fails this way.
    rollback_fails: Mutex<Option<HelmError>>,
}

impl Helm for FakeHelm {
    async fn upgrade_install(&self, release: &Release) -> Result<Revision, HelmError> {
        if let Some(e) = self.upgrade_fails.lock().unwrap().take() {
            // Killed at its timeout, helm leaves the revision pending; failing by itself, failed.
            let status = if matches!(e, HelmError::Timeout { .. }) { "pending-upgrade" } else { "failed" };
            let made = self.history.add(status);
            self.calls.push(format!("helm upgrade --install {} (revision {}, failed)", release.name, made.revision));
            return Err(e);
        }
        let made = self.history.add("deployed");
        self.calls.push(format!("helm upgrade --install {} (revision {})", release.name, made.revision));
        Ok(made)
    }
    async fn template(&self, release: &Release) -> Result<String, HelmError> {
        self.calls.push(format!("helm template {}", release.name));
        Ok(format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {}-mock-payments\n", release.name))
    }
    async fn history(&self, _: &str, _: &str) -> Result<Vec<Revision>, HelmError> {
        Ok(self.history.get())
    }
    async fn rollback(&self, name: &str, _: &str, revision: u32) -> Result<(), HelmError> {
        self.calls.push(format!("helm rollback {name} {revision}"));
        if let Some(e) = self.rollback_fails.lock().unwrap().take() {
            return Err(e);
        }
        self.history.add("deployed");
        Ok(())
    }
    async fn uninstall(&self, name: &str, _: &str) -> Result<(), HelmError> {
        self.calls.push(format!("helm uninstall {name}"));
        self.history.clear();
        Ok(())
    }
    async fn lint(&self, _: &Path, _: &[PathBuf]) -> Result<String, HelmError> {
        Ok(String::new())
    }
}

struct World {
    pool: PgPool,
    calls: Arc<Calls>,
    cluster: Arc<FakeCluster>,
    helm: Arc<FakeHelm>,
    engine: Engine<KubernetesSteps<FakeHelm, FakeCluster>>,
}

fn world(pool: PgPool) -> World {
    world_with(pool, None)
}

fn world_with(pool: PgPool, credentials: Option<Arc<StandCredentials>>) -> World {
    let config = Config::from_toml(
        r#"
[cluster]
mode = "kubernetes"

[cluster.verify]
probe_window = "10ms"

[[projects]]
name = "shop"
forge = "github"
repo = "acme/shop"
webhook_secret_env = "SHOP_SECRET"
image = "registry.example.com/acme/shop"
migrate = ["bin/migrate"]
smoke = ["scripts/smoke_draft.sh"]
"#,
    )
    .unwrap();
    let calls = Arc::new(Calls::default());
    let cluster = Arc::new(FakeCluster { calls: calls.clone(), ..FakeCluster::default() });
    let helm = Arc::new(FakeHelm { calls: calls.clone(), ..FakeHelm::default() });
    let fake_helm = helm.clone();
    let steps =
        KubernetesSteps::new(pool.clone(), Arc::new(config), helm, cluster.clone()).with_credentials(credentials);
    let settings = EngineSettings { max_step_attempts: 1, ..EngineSettings::default() };
    let engine = Engine::new(pool.clone(), Arc::new(steps), settings, "test");
    World { pool, calls, cluster, helm: fake_helm, engine }
}

async fn queue(pool: &PgPool, kind: &str, sha: &str) -> RunId {
    support::queue_run(pool, "shop", "feature/login", "draft-login", kind, sha).await
}

async fn step_detail(pool: &PgPool, run: RunId, step: &str) -> (String, Value, Option<Value>) {
    sqlx::query_as("select state, detail, error from steps where run_id = $1 and name = $2")
        .bind(run)
        .bind(step)
        .fetch_one(pool)
        .await
        .unwrap()
}

const SHA1: &str = "1111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA2: &str = "2222222bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_deploy_creates_the_namespace_installs_runs_jobs_and_verifies_through_the_proxy(pool: PgPool) {
    let w = world(pool);
    let run = queue(&w.pool, "deploy", SHA1).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((run, RunEnd::Succeeded)));
    let release = "draft-login";
    let image = "registry.example.com/acme/shop:draft-feature-login-1111111";
    assert_eq!(
        w.calls.take(),
        [
            "ensure_namespace draft-login stand 1".to_owned(),
            format!("helm template {release}"),
            format!("helm upgrade --install {release} (revision 1)"),
            format!("run_job migrate-r1 {image} [\"bin/migrate\"] STAND_URL=http://{release}.draft-login.svc"),
            format!("wait_rollout draft-login {release}"),
            format!("probe draft-login {release}:http/health/ready"),
            format!("run_job smoke-r1 {image} [\"scripts/smoke_draft.sh\"] STAND_URL=http://{release}.draft-login.svc"),
        ]
    );
    let (state, detail, _) = step_detail(&w.pool, run, "verify").await;
    assert_eq!(state, "succeeded");
    assert_eq!(detail["revision"], 1, "the revision that passed verify is recorded");
    assert_eq!(step_detail(&w.pool, run, "deploy").await.1["mocks"], serde_json::json!(["payments"]));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_failed_verify_rolls_back_to_the_last_verified_revision_and_explains_why(pool: PgPool) {
    let w = world(pool);
    let good = queue(&w.pool, "deploy", SHA1).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((good, RunEnd::Succeeded)));
    w.calls.take();

    *w.cluster.rollout_fails.lock().unwrap() = true;
    let bad = queue(&w.pool, "deploy", SHA2).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((bad, RunEnd::Failed)));
    let calls = w.calls.take();
    assert!(calls.contains(&"diagnose draft-login".to_owned()), "{calls:?}");
    assert_eq!(calls.last().unwrap(), "helm rollback draft-login 1", "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("run_job smoke")), "smoke never runs after a failed verify");

    let (state, _, error) = step_detail(&w.pool, bad, "verify").await;
    assert_eq!(state, "failed");
    let error = error.unwrap();
    assert_eq!(error["label"], "rollout_failed");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("Deployment/app failed to roll out"), "{message}");
    assert!(message.contains("app: CrashLoopBackOff (Error), 3 restarts"), "{message}");
    assert!(message.contains("| panic: DATABASE_URL is not set"), "{message}");
    assert!(message.contains("Pod/app-1: BackOff"), "{message}");
    let (state, detail, _) = step_detail(&w.pool, bad, "rollback").await;
    assert_eq!((state.as_str(), &detail["rolled_back_to"]), ("succeeded", &serde_json::json!(1)));
}

/// helm exits non-zero after applying part of a revision, or is killed at its timeout: the deploy
/// fails with helm's reason, and the stand goes back to the revision that last passed verify.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_helm_that_fails_mid_apply_or_hangs_rolls_back_to_the_last_verified_revision(pool: PgPool) {
    let w = world(pool);
    let good = queue(&w.pool, "deploy", SHA1).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((good, RunEnd::Succeeded)));
    let failures = [
        (
            HelmError::Failed {
                command: "helm upgrade --install draft-login".into(),
                code: Some(1),
                stderr: "Error: UPGRADE FAILED: cannot patch \"app\" with kind Deployment".into(),
            },
            "UPGRADE FAILED",
        ),
        (
            HelmError::Timeout {
                command: "helm upgrade --install draft-login".into(),
                after: std::time::Duration::from_secs(300),
            },
            "timed out",
        ),
    ];
    for (i, (failure, says)) in failures.into_iter().enumerate() {
        w.calls.take();
        *w.helm.upgrade_fails.lock().unwrap() = Some(failure);
        let bad = queue(&w.pool, "deploy", &format!("{:040x}", 0xbad0 + i)).await;
        assert_eq!(w.engine.run_one().await.unwrap(), Some((bad, RunEnd::Failed)));
        let calls = w.calls.take();
        assert_eq!(calls.last().unwrap(), "helm rollback draft-login 1", "{calls:?}");
        assert!(!calls.iter().any(|c| c.starts_with("run_job")), "no Job runs after a failed deploy: {calls:?}");
        let (state, _, error) = step_detail(&w.pool, bad, "deploy").await;
        assert_eq!(state, "failed");
        let message = error.unwrap()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{message}");
        let (state, detail, _) = step_detail(&w.pool, bad, "rollback").await;
        assert_eq!((state.as_str(), &detail["rolled_back_to"]), ("succeeded", &serde_json::json!(1)));
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_stand_that_never_passed_verify_is_uninstalled_on_failure(pool: PgPool) {
    let w = world(pool);
    *w.cluster.rollout_fails.lock().unwrap() = true;
    let run = queue(&w.pool, "deploy", SHA1).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((run, RunEnd::Failed)));
    assert_eq!(w.calls.take().last().unwrap(), "helm uninstall draft-login");
    assert_eq!(step_detail(&w.pool, run, "rollback").await.1["uninstalled"], true);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn teardown_uninstalls_deletes_the_namespace_and_marks_the_stand_removed(pool: PgPool) {
    let w = world(pool);
    let run = queue(&w.pool, "teardown", SHA1).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((run, RunEnd::Succeeded)));
    assert_eq!(w.calls.take(), ["helm uninstall draft-login", "delete_namespace draft-login"]);
    let state: String = sqlx::query_scalar("select state from stands").fetch_one(&w.pool).await.unwrap();
    assert_eq!(state, "removed");
}

/// Stand databases on the machine's Postgres (DATABASE_URL), logins without Vault: the secrets step
/// puts the app's login in its Secret, migrate gets a login of its own that is gone once the Job
/// ends, and teardown drops database and roles.
/// Stand databases and logins on the machine's Postgres (DATABASE_URL), without Vault; and an admin
/// connection to look at them.
async fn pg_credentials(pool: &PgPool) -> (StandCredentials, PgPool) {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let admin = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    let lifetimes =
        Lifetimes { max: Duration::from_secs(600), lease: Duration::from_secs(600), grace: Duration::from_secs(60) };
    let credentials = StandCredentials::new(
        pool.clone(),
        Some((Arc::new(PgDatabases::new(admin.clone())), StandServer::parse(&url, Some("pg.internal:5432")).unwrap())),
        None,
        lifetimes,
    );
    (credentials, admin)
}

async fn logins_of(admin: &PgPool, database: &str) -> Vec<String> {
    sqlx::query_scalar("select rolname::text from pg_roles where rolname like $1 || '%' order by 1")
        .bind(database)
        .fetch_all(admin)
        .await
        .unwrap()
}

/// A transient error while waiting for the migrate Job says nothing of the Job, which may still be
/// migrating with its login: the login stays (the retried step waits for the same Job, the keeper
/// ends it at its expiry). A Job known to be over has its login revoked at once.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_migrate_login_outlives_a_transient_error_and_goes_once_the_job_is_over(pool: PgPool) {
    let (credentials, admin) = pg_credentials(&pool).await;
    let w = world_with(pool, Some(Arc::new(credentials)));
    let namespace = format!("draft-kr-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let database = namespace.replace('-', "_");
    *w.cluster.job_fails.lock().unwrap() = Some(ClusterError::Terminating { namespace: namespace.clone() });
    let run = support::queue_run(&w.pool, "shop", "feature/login", &namespace, "deploy", SHA1).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((run, RunEnd::Failed)), "one attempt per step here");
    let live_migrate_logins = || async {
        let names: Vec<String> =
            sqlx::query_scalar("select username from credentials where purpose = 'migrate' and revoked_at is null")
                .fetch_all(&w.pool)
                .await
                .unwrap();
        let roles = logins_of(&admin, &database).await;
        assert!(names.iter().all(|n| roles.contains(n)), "{names:?} are roles: {roles:?}");
        names.len()
    };
    assert_eq!(live_migrate_logins().await, 1, "the Job may still be migrating with it");

    *w.cluster.job_fails.lock().unwrap() =
        Some(ClusterError::JobTimeout { job: "migrate-r2".into(), waited: Duration::from_secs(60) });
    let run = support::queue_run(&w.pool, "shop", "feature/login", &namespace, "deploy", SHA2).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((run, RunEnd::Failed)));
    assert_eq!(live_migrate_logins().await, 1, "the timed-out Job's own login went at once");
    let teardown = support::queue_run(&w.pool, "shop", "feature/login", &namespace, "teardown", SHA1).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((teardown, RunEnd::Succeeded)));
    assert!(logins_of(&admin, &database).await.is_empty());
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn secrets_and_migrate_get_their_own_logins_and_teardown_drops_them(pool: PgPool) {
    let (credentials, admin) = pg_credentials(&pool).await;
    let w = world_with(pool, Some(Arc::new(credentials)));
    // A namespace of its own: the server is shared with other tests.
    let namespace = format!("draft-kr-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let database = namespace.replace('-', "_");
    let run = support::queue_run(&w.pool, "shop", "feature/login", &namespace, "deploy", SHA1).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((run, RunEnd::Succeeded)));

    let calls = w.calls.take();
    assert!(calls.contains(&"apply_secret app-database".to_owned()), "{calls:?}");
    let app = w.cluster.secret_values.lock().unwrap()["app-database"].clone();
    assert_eq!(app["PGHOST"], "pg.internal", "stands reach the server at [postgres] host");
    assert_eq!(app["PGDATABASE"], database);
    assert!(app["DATABASE_URL"].starts_with(&format!("postgres://{}:", app["PGUSER"])));
    let migrate_job = calls.iter().find(|c| c.starts_with("run_job migrate-r1")).unwrap();
    assert!(migrate_job.ends_with("secrets migrate-r1-database"), "{migrate_job}");
    let job_login = calls.iter().find_map(|c| c.strip_prefix("job login ")).unwrap().to_owned();
    assert_ne!(job_login, app["PGUSER"], "migrate has a login of its own");

    let roles = logins_of(&admin, &database).await;
    assert_eq!(roles, [database.clone(), app["PGUSER"].clone()], "the migrate login is gone once its Job ended");
    let (_, detail, _) = step_detail(&w.pool, run, "secrets").await;
    assert_eq!(detail["app-database"]["username"], app["PGUSER"].as_str());
    assert!(!detail.to_string().contains(&app["PGPASSWORD"]), "no password in the step's record");

    let teardown = support::queue_run(&w.pool, "shop", "feature/login", &namespace, "teardown", SHA1).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((teardown, RunEnd::Succeeded)));
    let left: i64 = sqlx::query_scalar(
        "select (select count(*) from pg_roles where rolname like $1 || '%')
              + (select count(*) from pg_database where datname = $1)",
    )
    .bind(&database)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(left, 0, "database, owner and logins are gone");
}

/// A stand built from a fork's pull request (`forks = "allow"`) gets no secrets and no logins, even
/// with credentials configured: its secrets and migrate steps are skipped and say why, no Secret is
/// applied, no login issued, and the deploy still goes ahead.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_fork_stand_gets_no_secrets_and_no_logins(pool: PgPool) {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let admin = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    let lifetimes =
        Lifetimes { max: Duration::from_secs(600), lease: Duration::from_secs(600), grace: Duration::from_secs(60) };
    let credentials = StandCredentials::new(
        pool.clone(),
        Some((Arc::new(PgDatabases::new(admin.clone())), StandServer::parse(&url, None).unwrap())),
        None,
        lifetimes,
    );
    let w = world_with(pool, Some(Arc::new(credentials)));
    let namespace = format!("draft-fork-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let run = support::queue_run(&w.pool, "shop", "feature/from-fork", &namespace, "deploy", SHA1).await;
    sqlx::query("update stands set fork = true").execute(&w.pool).await.unwrap();
    assert_eq!(w.engine.run_one().await.unwrap(), Some((run, RunEnd::Succeeded)));

    let calls = w.calls.take();
    assert!(!calls.iter().any(|c| c.starts_with("apply_secret")), "no Secret for a fork: {calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("run_job migrate")), "no migrate Job with a login: {calls:?}");
    assert!(calls.iter().any(|c| c.starts_with("helm upgrade --install")), "the fork's code is deployed: {calls:?}");
    for step in ["secrets", "migrate"] {
        let (state, detail, _) = step_detail(&w.pool, run, step).await;
        assert_eq!(state, "skipped", "{step}");
        assert!(detail.to_string().contains("fork"), "{step}: {detail}");
    }
    let issued: i64 = sqlx::query_scalar("select count(*) from credentials").fetch_one(&w.pool).await.unwrap();
    assert_eq!(issued, 0, "no login issued for a fork's stand");

    let teardown = support::queue_run(&w.pool, "shop", "feature/from-fork", &namespace, "teardown", SHA1).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((teardown, RunEnd::Succeeded)));
}

/// helm killed at draftd's limit leaves the release pending-upgrade: the next deploy clears it with
/// a rollback to the last complete revision first, or, when helm's rollback cannot follow the half-
/// applied revision, by discarding that revision's record; then it upgrades.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_release_left_pending_is_cleared_before_the_next_upgrade(pool: PgPool) {
    let w = world(pool);
    let good = queue(&w.pool, "deploy", SHA1).await;
    assert_eq!(w.engine.run_one().await.unwrap(), Some((good, RunEnd::Succeeded)));
    for (i, rollback_fails) in [false, true].into_iter().enumerate() {
        w.helm.history.add("pending-upgrade");
        let pending = w.helm.history.get().last().unwrap().revision;
        if rollback_fails {
            *w.helm.rollback_fails.lock().unwrap() = Some(HelmError::Failed {
                command: "helm rollback draft-login".into(),
                code: Some(1),
                stderr: "Error: original object Ingress with the name \"draft-login\" not found".into(),
            });
        }
        w.calls.take();
        let run = queue(&w.pool, "deploy", &format!("{:040x}", 0xfeed0 + i)).await;
        assert_eq!(w.engine.run_one().await.unwrap(), Some((run, RunEnd::Succeeded)));
        let calls = w.calls.take();
        let upgrade = calls.iter().position(|c| c.starts_with("helm upgrade")).unwrap();
        let rollback = calls.iter().position(|c| c.starts_with("helm rollback draft-login")).unwrap();
        assert!(rollback < upgrade, "cleared before the upgrade: {calls:?}");
        let recovered = step_detail(&w.pool, run, "deploy").await.1["recovered"].clone();
        assert_eq!(recovered["found"], format!("revision {pending} was left pending-upgrade"));
        if rollback_fails {
            assert!(
                calls.contains(&format!("discard_pending_revision draft-login draft-login {pending}")),
                "{calls:?}"
            );
            assert_eq!(recovered["discarded"], pending);
            assert!(recovered["rollback_failed"].as_str().unwrap().contains("original object"));
        } else {
            assert!(!calls.iter().any(|c| c.starts_with("discard")), "{calls:?}");
            assert!(recovered["rolled_back_to"].is_number(), "{recovered}");
        }
    }
}

/// A private GitLab project's build: the repository is fetched with a deploy token that can only
/// read it, handed to BuildKit as its own Authorization header for the GitLab host only, and revoked
/// once the build is over; the registry and the forge are real enough (a docker-registry, the fake
/// GitLab); the cluster is the fake that records the build.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_private_gitlab_project_builds_with_a_deploy_token_revoked_after_the_build(pool: PgPool) {
    if !support::registry::available() {
        return;
    }
    use draftd::cluster::build::GitAuth;
    let registry = support::registry::Registry::start(support::registry::RegistryAuth::None).await;
    let fake = forge_fake::Fake::start(draftd::config::ForgeKind::Gitlab).await;
    let forge = forge_fake::client(draftd::config::ForgeKind::Gitlab, &fake.url(), forge_fake::TOKEN);
    let config = Config::from_toml(&format!(
        r#"
[cluster]
mode = "kubernetes"

[cluster.verify]
probe_window = "10ms"

[gitlab]
url = "{gitlab}"

[[projects]]
name = "shop"
forge = "gitlab"
repo = "{repo}"
webhook_secret_env = "SHOP_SECRET"
image = "{host}/acme/shop"
registry = {{ insecure = true, wait = "20s", poll = "50ms", poll_max = "200ms" }}
build = {{ always = true }}
"#,
        gitlab = fake.url(),
        repo = forge_fake::GITLAB_REPO,
        host = registry.host(),
    ))
    .unwrap();
    let registries = Arc::new(draftd::pipeline::image::Registries::from_config(&config).unwrap());
    let cluster = Arc::new(FakeCluster::default());
    let steps = KubernetesSteps::new(pool.clone(), Arc::new(config), Arc::new(FakeHelm::default()), cluster.clone())
        .with_registries(Some(registries))
        .with_forges(Arc::new(vec![forge]));
    let engine = Engine::new(pool.clone(), Arc::new(steps), EngineSettings::default(), "test");
    let run = queue(&pool, "deploy", SHA1).await;
    // BuildKit's push, once draftd has asked for the build.
    let tag = draftd::pipeline::plan::image_tag("feature/login", SHA1);
    let pusher = {
        let (cluster, registry) = (cluster.clone(), &registry);
        async move {
            while cluster.builds.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            registry.push_image("acme/shop", &tag, "linux/amd64").await
        }
    };
    let (ran, digest) = tokio::join!(engine.run_one(), pusher);
    let steps: Vec<(String, String, Option<Value>)> =
        sqlx::query_as("select name, state, error from steps where run_id = $1")
            .bind(run)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(ran.unwrap().unwrap(), (run, RunEnd::Succeeded), "{steps:?}");
    let (_, image, _) = step_detail(&pool, run, "image").await;
    assert_eq!(image["digest"], digest.as_str());

    let build = cluster.builds.lock().unwrap()[0].clone();
    assert_eq!(build.git_url, format!("{}/{}.git", fake.url(), forge_fake::GITLAB_REPO));
    let tokens = fake.gl_deploy_tokens(forge_fake::GITLAB_REPO);
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].scopes, ["read_repository"]);
    assert!(tokens[0].revoked, "revoked once the build was over");
    let Some(GitAuth::Header(header)) = &build.git_auth else { panic!("a GitLab build sends a header") };
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", tokens[0].username, tokens[0].token));
    assert_eq!(header.expose_secret(), format!("basic {basic}"));
    let host = fake.url().trim_start_matches("http://").split(['/', ':']).next().unwrap().to_owned();
    assert!(
        build.args().iter().any(|a| a == &format!("--secret=id=GIT_AUTH_HEADER.{host},src=/run/draftd/git-header"))
    );
    assert!(!build.args().iter().any(|a| a.contains(&tokens[0].token)), "the token is never an argument");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}
