//! A stand's life end to end against real Postgres (draftd's state and the stand databases), with
//! the cluster and helm behind stateful in-memory fakes: teardown leaves nothing, a deploy in flight
//! gives way to its teardown for good, tombstones hold off late webhooks, expiry, extension and the
//! warning before expiry follow a clock the test controls, and one reaper sweeps at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use draftd::cluster::jobs::{JobOutcome, JobRequest};
use draftd::cluster::verify::{Diagnostics, Prober};
use draftd::cluster::{Cluster, ClusterError, ManagedNamespace, NamespaceGone, NamespaceOutcome, StandMeta};
use draftd::config::{Config, ForgeKind};
use draftd::credentials::{Lifetimes, StandCredentials, StandServer};
use draftd::database::PgDatabases;
use draftd::forge::client::{AnyForge, GithubClient};
use draftd::forge::{Command, Event, PullRequest, Trigger};
use draftd::helm::{Helm, HelmError, Release, Revision};
use draftd::pipeline::steps::KubernetesSteps;
use draftd::pipeline::{Engine, EngineSettings, RunEnd};
use draftd::reaper::{Reaper, Sweep, SweepOutcome};
use draftd::stand::{BranchName, CommitSha, ProjectName, RunId, StandId};
use draftd::store::intake::{self, Delivery};
use draftd::store::manual::{self, ManualOutcome, ManualRequest, StandLookup};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::PgPool;

use crate::support::{self, bao, forge_fake};

pub const CONFIG: &str = r#"
public_url = "https://draftd.example.com"

[cluster]
mode = "kubernetes"

[cluster.verify]
probe_window = "10ms"

[stands]
ttl = "48h"
extend_by = "24h"
max_expiry = "72h"

[reaper]
warn_before = "4h"

# This suite is about expiry: its sweeps jump days ahead, where every stand would be idle.
[sleep]
enabled = false

[[projects]]
name = "shop"
forge = "github"
repo = "acme/shop"
webhook_secret_env = "SHOP_SECRET"
image = "registry.example.com/acme/shop"
"#;

/// Namespaces as a cluster keeps them: created by the namespace step, gone when deleted.
#[derive(Default)]
pub struct FakeCluster {
    pub namespaces: Mutex<BTreeMap<String, ManagedNamespace>>,
    pub deleted: Mutex<Vec<String>>,
    /// Deleting a namespace fails (a finalizer that never finishes, say).
    pub stuck: Mutex<bool>,
}

impl FakeCluster {
    pub fn has(&self, namespace: &str) -> bool {
        self.namespaces.lock().unwrap().contains_key(namespace)
    }
    pub fn expiry_of(&self, namespace: &str) -> Option<DateTime<Utc>> {
        self.namespaces.lock().unwrap().get(namespace).and_then(|n| n.expires_at)
    }
    /// A namespace draftd labelled, whatever its database says.
    pub fn plant(&self, namespace: &str, stand_id: Option<i64>) {
        let ns = ManagedNamespace {
            name: namespace.into(),
            project: Some("shop".into()),
            stand_id: stand_id.map(StandId::new),
            expires_at: None,
            terminating: false,
        };
        self.namespaces.lock().unwrap().insert(namespace.into(), ns);
    }
}

impl Cluster for FakeCluster {
    async fn ensure_namespace(&self, stand: &StandMeta) -> Result<NamespaceOutcome, ClusterError> {
        let ns = ManagedNamespace {
            name: stand.namespace.clone(),
            project: Some(stand.project.clone()),
            stand_id: Some(stand.stand_id),
            expires_at: Some(stand.expires_at),
            terminating: false,
        };
        let created = self.namespaces.lock().unwrap().insert(stand.namespace.clone(), ns).is_none();
        Ok(NamespaceOutcome { created, applied: Vec::new() })
    }
    async fn delete_namespace(&self, namespace: &str, _: Duration) -> Result<NamespaceGone, ClusterError> {
        self.deleted.lock().unwrap().push(namespace.to_owned());
        if *self.stuck.lock().unwrap() {
            return Err(ClusterError::Config("namespace deletion stuck".into()));
        }
        Ok(match self.namespaces.lock().unwrap().remove(namespace) {
            Some(_) => NamespaceGone::Deleted,
            None => NamespaceGone::Absent,
        })
    }
    async fn apply_secret(
        &self,
        _: &StandMeta,
        _: &str,
        _: &BTreeMap<String, SecretString>,
    ) -> Result<String, ClusterError> {
        Ok("checksum".into())
    }
    async fn apply_pull_secret(&self, _: &StandMeta, _: &SecretString) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn delete_builds(&self, _: &str, _: &StandMeta) -> Result<Vec<String>, ClusterError> {
        Ok(Vec::new())
    }
    // No registry is configured here, so no build is ever asked for.
    async fn run_build(
        &self,
        _: &StandMeta,
        build: &draftd::cluster::build::BuildJob,
    ) -> Result<JobOutcome, ClusterError> {
        unreachable!("no project of this suite builds: {}", build.name)
    }
    async fn roll_on_secrets(&self, _: &str, _: &str, _: &str) -> Result<Vec<String>, ClusterError> {
        Ok(Vec::new())
    }
    async fn wait_rollout(&self, _: &str, _: &str, _: Duration) -> Result<Vec<String>, ClusterError> {
        Ok(vec!["Deployment/app".into()])
    }
    async fn diagnose(&self, _: &str) -> Result<Diagnostics, ClusterError> {
        Ok(Diagnostics { pods: Vec::new(), events: Vec::new() })
    }
    async fn run_job(&self, _: &StandMeta, request: &JobRequest) -> Result<JobOutcome, ClusterError> {
        Ok(JobOutcome {
            job: request.name(),
            succeeded: true,
            reason: "Complete".into(),
            exit_code: Some(0),
            log_tail: None,
            ran_for: None,
        })
    }
    fn service_prober(&self, _: &str, _: &str, _: &str, _: &str) -> impl Prober + 'static {
        support::Healthy
    }
    async fn discard_pending_revision(&self, _: &str, _: &str, _: u32) -> Result<bool, ClusterError> {
        Ok(false)
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
        Ok(self.namespaces.lock().unwrap().values().cloned().collect())
    }
    async fn annotate_expiry(&self, namespace: &str, at: DateTime<Utc>) -> Result<bool, ClusterError> {
        Ok(match self.namespaces.lock().unwrap().get_mut(namespace) {
            Some(ns) => {
                ns.expires_at = Some(at);
                true
            }
            None => false,
        })
    }
}

/// Releases as helm keeps them; `upgrade_install` can be made to hang, like a slow rollout.
#[derive(Default)]
pub struct FakeHelm {
    pub releases: Mutex<BTreeMap<String, u32>>,
    pub stall: Mutex<Option<Duration>>,
    pub upgrading: tokio::sync::Notify,
}

impl Helm for FakeHelm {
    async fn upgrade_install(&self, release: &Release) -> Result<Revision, HelmError> {
        self.upgrading.notify_one();
        let stall = *self.stall.lock().unwrap();
        if let Some(stall) = stall {
            tokio::time::sleep(stall).await;
        }
        let mut releases = self.releases.lock().unwrap();
        let revision = releases.entry(release.name.clone()).or_insert(0);
        *revision += 1;
        Ok(Revision { revision: *revision, status: "deployed".into(), ..Revision::default() })
    }
    async fn template(&self, release: &Release) -> Result<String, HelmError> {
        Ok(format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {}-mock-payments\n", release.name))
    }
    async fn history(&self, _: &str, _: &str) -> Result<Vec<Revision>, HelmError> {
        Ok(Vec::new())
    }
    async fn rollback(&self, _: &str, _: &str, _: u32) -> Result<(), HelmError> {
        Ok(())
    }
    async fn uninstall(&self, name: &str, _: &str) -> Result<(), HelmError> {
        self.releases.lock().unwrap().remove(name);
        Ok(())
    }
    async fn lint(&self, _: &Path, _: &[PathBuf]) -> Result<String, HelmError> {
        Ok(String::new())
    }
}

pub struct World {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub cluster: Arc<FakeCluster>,
    pub helm: Arc<FakeHelm>,
    pub engine: Arc<Engine<KubernetesSteps<FakeHelm, FakeCluster>>>,
    pub credentials: Option<Arc<StandCredentials>>,
    /// A namespace no other test uses: the stand database server is shared.
    pub namespace: String,
    pub branch: String,
}

pub fn world(pool: PgPool, credentials: Option<Arc<StandCredentials>>) -> World {
    world_with(pool, credentials, CONFIG)
}

pub fn world_with(pool: PgPool, credentials: Option<Arc<StandCredentials>>, config: &str) -> World {
    let config = Arc::new(Config::from_toml(config).unwrap());
    let cluster = Arc::new(FakeCluster::default());
    let helm = Arc::new(FakeHelm::default());
    let steps = KubernetesSteps::new(pool.clone(), config.clone(), helm.clone(), cluster.clone())
        .with_credentials(credentials.clone());
    let settings = EngineSettings {
        max_step_attempts: 1,
        heartbeat: Duration::from_millis(50),
        lease: Duration::from_secs(5),
        ttl: config.stands.ttl,
        ..EngineSettings::default()
    };
    let engine = Arc::new(Engine::new(pool.clone(), Arc::new(steps), settings, "lifecycle-test"));
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    World {
        pool,
        config,
        cluster,
        helm,
        engine,
        credentials,
        namespace: format!("draft-feature-lc-{tag}"),
        branch: format!("feature/lc-{tag}"),
    }
}

/// Stand databases and logins on the machine's Postgres (DATABASE_URL), without Vault.
pub async fn pg_credentials(pool: &PgPool) -> (Arc<StandCredentials>, PgPool) {
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
    (Arc::new(credentials), admin)
}

pub const SHA1: &str = "1111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const SHA2: &str = "2222222bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

impl World {
    /// Records a webhook-like event for PR #7 of the world's branch, updated `at`.
    pub async fn event(&self, kind: &str, trigger: Trigger, sha: &str, at: DateTime<Utc>) -> intake::Recorded {
        let pr = PullRequest {
            number: 7,
            branch: BranchName::new(&self.branch).unwrap(),
            sha: CommitSha::new(sha).unwrap(),
            updated_at: at,
            fork: false,
        };
        let event = match kind {
            "deploy" => Event::Deploy { pr, trigger },
            _ => Event::Teardown { pr, trigger },
        };
        let project = ProjectName::new("shop").unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        let delivery = Delivery {
            forge: ForgeKind::Github,
            delivery_id: &id,
            project: &project,
            event_name: "pull_request",
            body_sha256: "0",
            event: &event,
            strip_branch_prefix: false,
            forks: draftd::config::ForkPolicy::Deny,
            request_id: None,
            origin: draftd::store::intake::Origin::Webhook,
        };
        intake::record(&self.pool, &delivery).await.unwrap()
    }

    /// `draftd stands extend|destroy`, as the CLI queues it.
    pub async fn manual(&self, command: Command) -> RunId {
        let req = ManualRequest {
            command,
            trigger: Trigger::Cli,
            requested_by: "cli:ops",
            author_id: None,
            sha: None,
            authorised: true,
        };
        let mut tx = self.pool.begin().await.unwrap();
        let lookup = StandLookup::Branch { project: "shop", branch: &self.branch };
        let outcome = manual::queue(&mut tx, lookup, &req).await.unwrap();
        tx.commit().await.unwrap();
        match outcome {
            ManualOutcome::Queued { run, .. } => run,
            other => panic!("{other:?}"),
        }
    }

    /// Drives runs until none is runnable; returns how each ended.
    pub async fn drain(&self) -> Vec<(RunId, RunEnd)> {
        let mut ends = Vec::new();
        while let Some(end) = self.engine.run_one().await.unwrap() {
            ends.push(end);
        }
        ends
    }

    pub fn reaper(&self) -> Reaper<FakeCluster> {
        Reaper::new(self.pool.clone(), self.config.clone(), "test-reaper")
            .with_cluster(self.cluster.clone())
            .with_credentials(self.credentials.clone())
    }

    pub async fn sweep(&self, now: DateTime<Utc>) -> Sweep {
        self.sweep_with(now, Vec::new()).await
    }

    /// A sweep whose resync asks `forges`.
    pub async fn sweep_with(&self, now: DateTime<Utc>, forges: Vec<AnyForge>) -> Sweep {
        match self.reaper().with_forges(forges).sweep(now).await.unwrap() {
            SweepOutcome::Swept(s) => s,
            SweepOutcome::Busy => panic!("the sweep lock is held"),
        }
    }

    pub async fn stand(&self) -> (StandId, String, Option<String>, Option<DateTime<Utc>>, i32) {
        sqlx::query_as("select stand_id, state, state_reason, expires_at, epoch from stands where branch = $1")
            .bind(&self.branch)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn runs(&self) -> Vec<(i32, String, String, String)> {
        sqlx::query_as(
            "select r.number, r.kind, r.trigger, r.state from runs r join stands s using (stand_id)
             where s.branch = $1 order by r.number",
        )
        .bind(&self.branch)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn steps_of(&self, number: i32) -> Vec<(String, String)> {
        sqlx::query_as(
            "select st.name, st.state from steps st join runs r using (run_id) join stands s using (stand_id)
             where s.branch = $1 and r.number = $2 order by st.step_id",
        )
        .bind(&self.branch)
        .bind(number)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// The newest pending outbox payload of a kind.
    pub async fn outbox(&self, kind: &str) -> Option<Value> {
        sqlx::query_scalar(
            "select o.payload from outbox o join stands s using (stand_id)
             where s.branch = $1 and o.kind = $2 and o.state = 'pending' order by o.outbox_id desc limit 1",
        )
        .bind(&self.branch)
        .bind(kind)
        .fetch_optional(&self.pool)
        .await
        .unwrap()
    }
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_merge_removes_namespace_release_database_and_logins_and_says_why(pool: PgPool) {
    let (credentials, admin) = pg_credentials(&pool).await;
    let w = world(pool, Some(credentials));
    let database = w.namespace.replace('-', "_");
    w.event("deploy", Trigger::Opened, SHA1, at("2026-11-25T10:00:00Z")).await;
    assert_eq!(w.drain().await.len(), 1);
    assert!(w.cluster.has(&w.namespace));
    assert_eq!(w.helm.releases.lock().unwrap().len(), 1);
    let live = |admin: PgPool, database: String| async move {
        sqlx::query_scalar::<_, i64>(
            "select (select count(*) from pg_roles where rolname like $1 || '%')
                  + (select count(*) from pg_database where datname = $1)",
        )
        .bind(database)
        .fetch_one(&admin)
        .await
        .unwrap()
    };
    assert_eq!(live(admin.clone(), database.clone()).await, 3, "database, owner role and the app's login");

    let merged = w.event("teardown", Trigger::Merged, SHA1, at("2026-11-25T11:00:00Z")).await;
    assert!(merged.run.is_some());
    assert_eq!(w.drain().await, [(merged.run.unwrap(), RunEnd::Succeeded)]);
    let steps: Vec<String> = w.steps_of(2).await.into_iter().map(|(n, s)| format!("{n} {s}")).collect();
    assert_eq!(
        steps,
        [
            "cancel succeeded",
            "deactivate succeeded",
            "revoke succeeded",
            "uninstall succeeded",
            "drop succeeded",
            "report succeeded"
        ]
    );
    assert!(!w.cluster.has(&w.namespace), "namespace gone (and with it its Secrets and volume claims)");
    assert!(w.helm.releases.lock().unwrap().is_empty(), "release uninstalled");
    assert_eq!(live(admin, database).await, 0, "database, owner and logins dropped");
    let live_credentials: i64 = sqlx::query_scalar("select count(*) from credentials where revoked_at is null")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(live_credentials, 0);
    let (_, state, reason, _, _) = w.stand().await;
    assert_eq!((state.as_str(), reason.as_deref()), ("removed", Some("merged")));

    let env = w.outbox("environment").await.expect("the deployment is marked inactive");
    assert_eq!(env["state"], "inactive");
    let comment = w.outbox("comment").await.unwrap();
    let body = comment["body"].as_str().unwrap();
    assert!(body.contains("### 🧹 Draft stand removed"), "{body}");
    assert!(body.contains("| Why | PR merged |"), "{body}");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_teardown_stops_a_deploy_in_flight_and_nothing_comes_back(pool: PgPool) {
    let w = world(pool, None);
    *w.helm.stall.lock().unwrap() = Some(Duration::from_secs(60));
    let opened = w.event("deploy", Trigger::Opened, SHA1, at("2026-11-25T10:00:00Z")).await;
    let engine = w.engine.clone();
    let deploying = tokio::spawn(async move { engine.run_one().await.unwrap() });
    w.helm.upgrading.notified().await;
    assert!(w.cluster.has(&w.namespace), "the deploy got as far as its namespace");

    let started = std::time::Instant::now();
    let closed = w.event("teardown", Trigger::Closed, SHA1, at("2026-11-25T10:01:00Z")).await;
    let deploy_end = tokio::time::timeout(Duration::from_secs(10), deploying).await.unwrap().unwrap();
    assert_eq!(deploy_end, Some((opened.run.unwrap(), RunEnd::Cancelled)));
    assert!(started.elapsed() < Duration::from_secs(5), "stopped inside its step, not after the 60 s upgrade");
    let deploy_steps = w.steps_of(1).await;
    assert!(deploy_steps.contains(&("deploy".into(), "cancelled".into())), "{deploy_steps:?}");

    *w.helm.stall.lock().unwrap() = None;
    assert_eq!(w.drain().await, [(closed.run.unwrap(), RunEnd::Succeeded)]);
    assert!(!w.cluster.has(&w.namespace));
    assert!(w.helm.releases.lock().unwrap().is_empty(), "the interrupted upgrade left no release behind");
    let (_, state, _, _, _) = w.stand().await;
    assert_eq!(state, "removed");
    let cancel = sqlx::query_scalar::<_, Value>(
        "select st.detail from steps st join runs r using (run_id) where r.run_id = $1 and st.name = 'cancel'",
    )
    .bind(closed.run.unwrap())
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(cancel["cancelled_runs"], serde_json::json!([1]));

    // Nothing left to run, and a new worker finds nothing to resume.
    assert!(w.drain().await.is_empty());
    assert!(!w.cluster.has(&w.namespace), "no resurrection");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_late_push_after_close_does_nothing_and_a_reopen_builds_a_new_stand(pool: PgPool) {
    let w = world(pool, None);
    w.event("deploy", Trigger::Opened, SHA1, at("2026-11-25T10:00:00Z")).await;
    w.event("teardown", Trigger::Closed, SHA1, at("2026-11-25T11:00:00Z")).await;
    assert_eq!(w.drain().await.len(), 2);
    assert!(!w.cluster.has(&w.namespace));

    // A synchronize that was delayed, and one that is simply late: neither builds anything.
    let delayed = w.event("deploy", Trigger::Pushed, SHA2, at("2026-11-25T10:30:00Z")).await;
    assert!(delayed.response["ignored"].as_str().unwrap().contains("older"), "{}", delayed.response);
    let late = w.event("deploy", Trigger::Pushed, SHA2, at("2026-11-25T12:00:00Z")).await;
    assert!(late.response["ignored"].as_str().unwrap().contains("only a reopen"), "{}", late.response);
    assert!(w.drain().await.is_empty());
    assert!(!w.cluster.has(&w.namespace));
    assert_eq!(w.runs().await.len(), 2);

    let reopened = w.event("deploy", Trigger::Reopened, SHA2, at("2026-11-25T13:00:00Z")).await;
    assert_eq!(w.drain().await, [(reopened.run.unwrap(), RunEnd::Succeeded)]);
    let (_, state, _, _, epoch) = w.stand().await;
    assert_eq!((state.as_str(), epoch), ("active", 1));
    assert!(w.cluster.has(&w.namespace), "built again");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_stand_expires_48_hours_after_its_last_deploy_started_and_a_push_brings_it_back(pool: PgPool) {
    let w = world(pool, None);
    let opened = w.event("deploy", Trigger::Opened, SHA1, Utc::now()).await;
    w.drain().await;
    let started: DateTime<Utc> = sqlx::query_scalar("select started_at from runs where run_id = $1")
        .bind(opened.run.unwrap())
        .fetch_one(&w.pool)
        .await
        .unwrap();
    let (_, _, _, expires, _) = w.stand().await;
    let expires = expires.unwrap();
    assert_eq!(expires, started + chrono::Duration::hours(48));
    assert_eq!(w.cluster.expiry_of(&w.namespace).map(|t| t.timestamp()), Some(expires.timestamp()), "annotated");
    let comment = w.outbox("comment").await.unwrap();
    assert!(comment["body"].as_str().unwrap().contains(&expires.format("| Expires | %Y-%m-%d %H:%M UTC").to_string()));

    let before = w.sweep(expires - chrono::Duration::seconds(1)).await;
    assert!(before.expired.is_empty());
    // Each sweep counts the stands by state for the dashboard's chart, at the sweep's time.
    let counted: Vec<(String, String, i32)> =
        sqlx::query_as("select project, state, stands from stand_counts where sweep_id = $1 and at = $2")
            .bind(before.sweep_id)
            .bind(expires - chrono::Duration::seconds(1))
            .fetch_all(&w.pool)
            .await
            .unwrap();
    assert_eq!(counted, [("shop".to_owned(), "active".to_owned(), 1)]);
    let after = w.sweep(expires + chrono::Duration::seconds(1)).await;
    assert_eq!(after.expired.len(), 1);
    assert_eq!(after.expired[0].namespace, w.namespace);
    assert!(w.sweep(expires + chrono::Duration::seconds(2)).await.expired.is_empty(), "queued once");
    w.drain().await;
    let (_, state, reason, _, _) = w.stand().await;
    assert_eq!((state.as_str(), reason.as_deref()), ("removed", Some("expired")));
    assert!(!w.cluster.has(&w.namespace));
    let body = w.outbox("comment").await.unwrap()["body"].as_str().unwrap().to_owned();
    assert!(body.contains("| Why | expired: no new deploy within its time to live |"), "{body}");

    // It went for want of pushes: the next push builds it again.
    let pushed = w.event("deploy", Trigger::Pushed, SHA2, Utc::now()).await;
    assert!(pushed.run.is_some(), "{}", pushed.response);
    w.drain().await;
    let (_, state, _, expires_again, epoch) = w.stand().await;
    assert_eq!((state.as_str(), epoch), ("active", 1));
    assert!(expires_again.unwrap() > expires);
    assert!(w.cluster.has(&w.namespace));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn extend_moves_the_expiry_within_the_maximum_and_the_annotation_follows(pool: PgPool) {
    let w = world(pool, None);
    w.event("deploy", Trigger::Opened, SHA1, Utc::now()).await;
    w.drain().await;
    let (_, _, _, first, _) = w.stand().await;
    let first = first.unwrap();

    w.manual(Command::Extend { by: Some(Duration::from_secs(24 * 3600)) }).await;
    w.drain().await;
    let (_, _, _, extended, _) = w.stand().await;
    assert_eq!(extended.unwrap(), first + chrono::Duration::hours(24));
    assert_eq!(w.cluster.expiry_of(&w.namespace).map(|t| t.timestamp()), Some(extended.unwrap().timestamp()));
    assert_eq!(w.steps_of(2).await, [("extend".into(), "succeeded".into()), ("report".into(), "succeeded".into())]);
    let body = w.outbox("comment").await.unwrap()["body"].as_str().unwrap().to_owned();
    assert!(body.contains("### ✅ Draft stand ready"), "the comment still shows the stand, not the extend: {body}");
    assert!(body.contains("(extended by cli:ops)"), "{body}");
    assert!(w.sweep(first + chrono::Duration::seconds(1)).await.expired.is_empty(), "the old expiry no longer holds");

    // Asking for far more than [stands] max_expiry (72h) lands on the maximum.
    let run = w.manual(Command::Extend { by: Some(Duration::from_secs(30 * 24 * 3600)) }).await;
    let asked = Utc::now();
    w.drain().await;
    let done = Utc::now();
    let (_, _, _, capped, _) = w.stand().await;
    let capped = capped.unwrap();
    let max = chrono::Duration::hours(72);
    assert!(capped >= asked + max && capped <= done + max, "{capped} is 72h from when the run ran");
    let detail: Value = sqlx::query_scalar("select detail from steps where run_id = $1 and name = 'extend'")
        .bind(run)
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert!(detail["capped"].as_str().unwrap().contains("max_expiry"), "{detail}");

    // 300,000 years (humantime takes it; found by fuzzing) lands on the maximum too, rather than
    // overflowing the database's timestamps.
    let run = w.manual(Command::Extend { by: Some(humantime::parse_duration("300000years").unwrap()) }).await;
    w.drain().await;
    let steps: Vec<(String, String)> = w.steps_of(4).await;
    assert_eq!(steps[0], ("extend".into(), "succeeded".into()), "run {run}: {steps:?}");
    let (_, _, _, again, _) = w.stand().await;
    assert!(again.unwrap() <= Utc::now() + max, "still at most 72h from now");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_comment_warns_once_a_configured_time_before_expiry(pool: PgPool) {
    let w = world(pool, None);
    w.event("deploy", Trigger::Opened, SHA1, Utc::now()).await;
    w.drain().await;
    let (stand, _, _, expires, _) = w.stand().await;
    let expires = expires.unwrap();
    let warning = format!("⚠️ **This stand will be removed at {}**", expires.format("%Y-%m-%d %H:%M UTC"));
    assert!(!w.outbox("comment").await.unwrap()["body"].as_str().unwrap().contains("⚠️"));

    assert!(w.sweep(expires - chrono::Duration::minutes(241)).await.warned.is_empty(), "not yet: 4h before");
    assert_eq!(w.sweep(expires - chrono::Duration::minutes(239)).await.warned, [stand]);
    let body = w.outbox("comment").await.unwrap()["body"].as_str().unwrap().to_owned();
    assert!(body.contains(&warning), "{body}");
    assert!(body.contains("### ✅ Draft stand ready"), "{body}");
    assert!(w.sweep(expires - chrono::Duration::minutes(120)).await.warned.is_empty(), "warned once per expiry");

    // An extension moves the expiry out of the window; the next approach warns again.
    w.manual(Command::Extend { by: None }).await;
    w.drain().await;
    let (_, _, _, later, _) = w.stand().await;
    assert!(w.sweep(expires - chrono::Duration::minutes(120)).await.warned.is_empty());
    assert_eq!(w.sweep(later.unwrap() - chrono::Duration::minutes(60)).await.warned, [stand]);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn two_reapers_make_one_sweep(pool: PgPool) {
    let w = world(pool, None);
    w.event("deploy", Trigger::Opened, SHA1, Utc::now()).await;
    w.drain().await;
    let (_, _, _, expires, _) = w.stand().await;
    let late = expires.unwrap() + chrono::Duration::minutes(1);

    // One replica mid-sweep holds the lock: another finds it and does nothing.
    let mut holder = sqlx::PgConnection::connect_with(&w.pool.connect_options()).await.unwrap();
    use sqlx::Connection;
    sqlx::query("select pg_advisory_lock(28273260327363586)").execute(&mut holder).await.unwrap();
    assert!(matches!(w.reaper().sweep(late).await.unwrap(), SweepOutcome::Busy));
    holder.close().await.unwrap();

    // Two at once: one teardown between them, whichever swept.
    let (one, two) = (w.reaper(), w.reaper());
    let (a, b) = tokio::join!(one.sweep(late), two.sweep(late));
    let queued: usize = [a.unwrap(), b.unwrap()]
        .into_iter()
        .map(|o| match o {
            SweepOutcome::Swept(s) => s.expired.len(),
            SweepOutcome::Busy => 0,
        })
        .sum();
    assert_eq!(queued, 1);
    let teardowns = w.runs().await.into_iter().filter(|r| r.1 == "teardown").count();
    assert_eq!(teardowns, 1);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn an_orphan_namespace_or_database_goes_when_two_sweeps_found_it(pool: PgPool) {
    let (credentials, admin) = pg_credentials(&pool).await;
    let w = world(pool, Some(credentials.clone()));
    // A live stand, whose namespace and database must stay.
    w.event("deploy", Trigger::Opened, SHA1, Utc::now()).await;
    w.drain().await;
    // Left behind by a lost database: a namespace labelled for a stand draftd no longer knows, and
    // a stand database (marked by this installation) of no stand.
    w.cluster.plant("draft-gone-1", Some(9999));
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let orphan_db = draftd::credentials::stand_db(&format!("draft-orphan-{tag}"), None);
    credentials.ensure_database(&orphan_db).await.unwrap();
    let exists = |name: String| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, bool>("select exists (select 1 from pg_database where datname = $1)")
                .bind(name)
                .fetch_one(&admin)
                .await
                .unwrap()
        }
    };

    let first = w.sweep(Utc::now()).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let kept: Vec<(&str, &str, i32)> =
        first.orphans.iter().map(|o| (o.kind.as_str(), o.name.as_str(), o.sightings)).collect();
    assert!(kept.contains(&("namespace", "draft-gone-1", 1)), "{kept:?}");
    assert!(kept.contains(&("database", orphan_db.database.as_str(), 1)), "{kept:?}");
    assert!(first.orphans.iter().all(|o| !o.removed), "found once: kept");
    assert!(w.cluster.has("draft-gone-1"));
    assert!(exists(orphan_db.database.clone()).await);

    // Something that appears only now is found once, and stays.
    w.cluster.plant("draft-gone-2", None);
    let second = w.sweep(Utc::now()).await;
    let removed: Vec<&str> = second.orphans.iter().filter(|o| o.removed).map(|o| o.name.as_str()).collect();
    assert!(removed.contains(&"draft-gone-1") && removed.contains(&orphan_db.database.as_str()), "{removed:?}");
    assert!(!removed.contains(&"draft-gone-2"));
    assert!(!w.cluster.has("draft-gone-1"));
    assert!(w.cluster.has("draft-gone-2"));
    assert!(!exists(orphan_db.database.clone()).await);
    assert!(w.cluster.has(&w.namespace), "the live stand's namespace stays");
    assert!(exists(w.namespace.replace('-', "_")).await, "the live stand's database stays");
    let audited: i64 = sqlx::query_scalar("select count(*) from audit where action = 'orphan.removed'")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert!(audited >= 2);

    // Clean up the live stand's database on the shared server.
    w.event("teardown", Trigger::Closed, SHA1, Utc::now()).await;
    w.drain().await;
}

// ---------------------------------------------------------------------------------------------
// With the forge: reports delivered, and resync of missed webhooks
// ---------------------------------------------------------------------------------------------

use forge_fake::{Fake, Mode, Pull, REPO, TOKEN};

async fn stand_id(w: &World) -> StandId {
    w.stand().await.0
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn after_a_merge_the_comment_says_removed_and_the_deployment_is_inactive(pool: PgPool) {
    let w = world(pool, None);
    let fake = Fake::start(ForgeKind::Github).await;
    let reporter = forge_fake::reporter(&w.pool, &fake, ForgeKind::Github);
    w.event("deploy", Trigger::Opened, SHA1, at("2026-11-25T10:00:00Z")).await;
    w.drain().await;
    let stand = stand_id(&w).await;
    forge_fake::drain(&reporter, &w.pool, stand, Duration::from_secs(10)).await;
    let marker = draftd::forge::client::marker(stand);
    assert!(fake.marked(REPO, 7, &marker)[0].body.contains("Draft stand ready"));

    w.event("teardown", Trigger::Merged, SHA1, at("2026-11-25T11:00:00Z")).await;
    w.drain().await;
    forge_fake::drain(&reporter, &w.pool, stand, Duration::from_secs(10)).await;
    let comments = fake.marked(REPO, 7, &marker);
    assert_eq!(comments.len(), 1, "one sticky comment, edited in place");
    assert!(comments[0].body.contains("### 🧹 Draft stand removed"), "{}", comments[0].body);
    assert!(comments[0].body.contains("| Why | PR merged |"));
    let deployments = fake.gh_deployments(REPO);
    assert_eq!(deployments.len(), 1);
    assert_eq!(deployments[0].statuses.last().unwrap().0, "inactive", "{deployments:?}");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

/// PR #7 of the world's branch as the fake forge keeps it.
fn pull(w: &World, state: &str, sha: &str) -> Pull {
    Pull {
        branch: w.branch.clone(),
        sha: sha.into(),
        state: state.into(),
        updated_at: at("2026-11-25T12:00:00Z"),
        ..Pull::open(REPO, 7)
    }
}

fn github(fake: &Fake, timeout: Duration) -> AnyForge {
    AnyForge::Github(GithubClient::new(&fake.url(), &SecretString::from(TOKEN), timeout).unwrap())
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn resync_deploys_a_missed_push_and_tears_down_only_what_the_forge_says_is_closed(pool: PgPool) {
    let w = world(pool, None);
    w.event("deploy", Trigger::Opened, SHA1, at("2026-11-25T10:00:00Z")).await;
    w.drain().await;
    let fake = Fake::start(ForgeKind::Github).await;
    let forges = || vec![github(&fake, Duration::from_secs(5))];

    // The push webhook was lost: the forge lists the PR at a commit without a run.
    fake.seed_pull(pull(&w, "open", SHA2));
    let sweep = w.sweep_with(Utc::now(), forges()).await;
    assert_eq!(sweep.resync[0].deploys.len(), 1, "{:?}", sweep.resync);
    assert!(sweep.resync[0].teardowns.is_empty());
    assert_eq!(w.runs().await.last().unwrap().2, "resync");
    w.drain().await;
    assert!(w.sweep_with(Utc::now(), forges()).await.resync[0].deploys.is_empty(), "that commit has a run now");

    // The close webhook was lost: the PR is no longer listed, and looked up it says closed.
    fake.seed_pull(Pull { updated_at: at("2026-11-25T13:00:00Z"), ..pull(&w, "closed", SHA2) });
    let sweep = w.sweep_with(Utc::now(), forges()).await;
    assert_eq!(sweep.resync[0].looked_up, 1);
    assert_eq!(sweep.resync[0].teardowns.len(), 1, "{:?}", sweep.resync);
    w.drain().await;
    let (_, state, reason, _, _) = w.stand().await;
    assert_eq!((state.as_str(), reason.as_deref()), ("removed", Some("closed")));
    assert!(!w.cluster.has(&w.namespace));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn resync_on_a_merged_pr_tears_the_stand_down(pool: PgPool) {
    let w = world(pool, None);
    w.event("deploy", Trigger::Opened, SHA1, at("2026-11-25T10:00:00Z")).await;
    w.drain().await;
    let fake = Fake::start(ForgeKind::Github).await;
    fake.seed_pull(pull(&w, "merged", SHA1));
    let sweep = w.sweep_with(Utc::now(), vec![github(&fake, Duration::from_secs(5))]).await;
    assert_eq!(sweep.resync[0].teardowns.len(), 1);
    assert_eq!(w.stand().await.2.as_deref(), Some("merged"));
}

/// Argo CD issue 11464: an SCM outage must not delete previews. Whatever the forge does short of
/// saying "closed" or "merged" for the PR itself, every stand stays.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn an_unhealthy_forge_never_leads_to_a_teardown(pool: PgPool) {
    let w = world(pool, None);
    w.event("deploy", Trigger::Opened, SHA1, at("2026-11-25T10:00:00Z")).await;
    w.drain().await;
    let fake = Fake::start(ForgeKind::Github).await;
    let quick = || vec![github(&fake, Duration::from_millis(500))];
    let mut sweeps = Vec::new();

    // Down: the list fails, so nothing at all is done.
    fake.set_mode(Mode::Down(500));
    sweeps.push(("500", w.sweep_with(Utc::now(), quick()).await));
    // Rate limited.
    fake.set_mode(Mode::RateLimited(60));
    sweeps.push(("429", w.sweep_with(Utc::now(), quick()).await));
    // Timeouts: the list never comes within the client's limit.
    let fake = Fake::start(ForgeKind::Github).await;
    fake.script(&[Mode::Stall(2_000)]);
    sweeps.push(("timeout", w.sweep_with(Utc::now(), vec![github(&fake, Duration::from_millis(500))]).await));
    // A partial list: page 2 of 150 open PRs fails (our PR is on page 2, after the first 100).
    let fake = Fake::start(ForgeKind::Github).await;
    fake.seed_open_pulls(REPO, 150);
    fake.seed_pull(Pull { number: 140, ..pull(&w, "open", SHA1) });
    fake.script(&[Mode::Up, Mode::Down(502)]);
    sweeps.push(("partial", w.sweep_with(Utc::now(), vec![github(&fake, Duration::from_secs(5))]).await));
    // An empty list while the forge is unhealthy: the PR is looked up, and the look-up fails.
    let fake = Fake::start(ForgeKind::Github).await;
    fake.script(&[Mode::Up, Mode::Down(503)]);
    sweeps.push(("empty, look-up fails", w.sweep_with(Utc::now(), vec![github(&fake, Duration::from_secs(5))]).await));
    // An empty list, and the PR itself not found (a token that lost access): not "closed" either.
    let fake = Fake::start(ForgeKind::Github).await;
    sweeps.push(("empty, 404", w.sweep_with(Utc::now(), vec![github(&fake, Duration::from_secs(5))]).await));
    // A list that is not JSON (a proxy's page): no list.
    let fake = Fake::start(ForgeKind::Github).await;
    fake.seed_pull(pull(&w, "open", SHA1));
    fake.script(&[Mode::Garbled]);
    sweeps.push(("garbled list", w.sweep_with(Utc::now(), vec![github(&fake, Duration::from_secs(5))]).await));

    for (what, sweep) in &sweeps {
        let r = &sweep.resync[0];
        assert!(r.teardowns.is_empty() && r.deploys.is_empty(), "{what}: {r:?}");
    }
    assert!(sweeps[0].1.resync[0].error.is_some() && sweeps[2].1.resync[0].error.is_some());
    assert!(sweeps[3].1.resync[0].error.is_some(), "a partial list is no list");
    assert_eq!(sweeps[4].1.resync[0].lookup_errors, 1);
    assert_eq!(sweeps[5].1.resync[0].lookup_errors, 1);
    assert_eq!(w.runs().await.len(), 1, "no run was queued");
    let (_, state, _, _, _) = w.stand().await;
    assert_eq!(state, "active");
    assert!(w.cluster.has(&w.namespace));
}

/// With Vault (a real OpenBao dev server): a stand torn down by hand behind draftd's back leaves a
/// Vault role with a live lease and its database. The first sweep keeps them, the second revokes
/// the lease, deletes the role and drops the database.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn an_orphan_vault_lease_goes_on_the_second_sweep(pool: PgPool) {
    let bao = bao::Bao::start();
    let url = std::env::var("DATABASE_URL").unwrap();
    let admin = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    let vault_config = Config::from_toml(&format!(
        "[postgres]\nadmin_url_env = \"UNUSED\"\n[vault]\naddress = \"{}\"\nauth = \"token\"\ntoken_file = \"{}\"\n",
        bao.addr,
        bao.token_file().display()
    ))
    .unwrap();
    let vault = Arc::new(draftd::vault::OpenBao::from_config(vault_config.vault.as_ref().unwrap()).unwrap());
    let lifetimes =
        Lifetimes { max: Duration::from_secs(600), lease: Duration::from_secs(300), grace: Duration::from_secs(1) };
    let credentials = Arc::new(StandCredentials::new(
        pool.clone(),
        Some((Arc::new(PgDatabases::new(admin.clone())), StandServer::parse(&url, None).unwrap())),
        Some(vault.clone()),
        lifetimes,
    ));
    let w = world(pool, Some(credentials.clone()));
    w.event("deploy", Trigger::Opened, SHA1, Utc::now()).await;
    w.drain().await;
    let database = w.namespace.replace('-', "_");
    use draftd::vault::Vault;
    assert_eq!(vault.leases(&database).await.unwrap().len(), 1, "the stand's login is a Vault lease");
    // The stand's row is lost (a restored backup, a hand-made delete): nothing accounts for it now.
    sqlx::query("delete from stands").execute(&w.pool).await.unwrap();
    w.cluster.namespaces.lock().unwrap().clear();

    let first = w.sweep(Utc::now()).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let seen: Vec<(&str, i32, bool)> =
        first.orphans.iter().map(|o| (o.kind.as_str(), o.sightings, o.removed)).collect();
    assert_eq!(seen, [("database", 1, false), ("vault_role", 1, false)], "{:?}", first.orphans);
    assert_eq!(vault.leases(&database).await.unwrap().len(), 1, "found once: kept");

    let second = w.sweep(Utc::now()).await;
    assert!(second.orphans.iter().all(|o| o.removed), "{:?}", second.orphans);
    assert!(vault.leases(&database).await.unwrap().is_empty(), "lease revoked");
    assert_eq!(bao.api("GET", &format!("database/roles/{database}"), None).await.0, 404, "role deleted");
    let left: i64 = sqlx::query_scalar(
        "select (select count(*) from pg_roles where rolname like $1 || '%')
              + (select count(*) from pg_database where datname = $1)",
    )
    .bind(&database)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(left, 0, "database, owner and the Vault login are gone");
    assert!(w.sweep(Utc::now()).await.orphans.is_empty(), "nothing left to find");
}

/// Dry-run mode: stand folders stand for namespaces, and a folder no live stand owns goes the same
/// way, on the second sweep that finds it.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn in_dry_run_mode_an_orphan_folder_goes_on_the_second_sweep(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&format!(
        "[cluster]\nmode = \"dry-run\"\ndry_run_dir = \"{}\"\n[[projects]]\nname = \"shop\"\nforge = \"github\"\nrepo = \"acme/shop\"\nwebhook_secret_env = \"X\"\n",
        dir.path().display()
    ))
    .unwrap();
    support::queue_run(&pool, "shop", "feature/live", "draft-feature-live", "deploy", SHA1).await;
    for folder in ["draft-feature-live", "draft-feature-gone", "notes"] {
        std::fs::create_dir_all(dir.path().join(folder).join("steps")).unwrap();
    }
    let reaper: Reaper<FakeCluster> = Reaper::new(pool.clone(), Arc::new(config), "test");
    let SweepOutcome::Swept(first) = reaper.sweep(Utc::now()).await.unwrap() else { panic!("busy") };
    let names: Vec<(&str, &str, bool)> =
        first.orphans.iter().map(|o| (o.kind.as_str(), o.name.as_str(), o.removed)).collect();
    assert_eq!(names, [("folder", "draft-feature-gone", false)]);
    let SweepOutcome::Swept(second) = reaper.sweep(Utc::now()).await.unwrap() else { panic!("busy") };
    assert!(second.orphans[0].removed);
    assert!(!dir.path().join("draft-feature-gone").exists());
    assert!(dir.path().join("draft-feature-live").exists(), "a live stand's folder stays");
    assert!(dir.path().join("notes").exists(), "not named like a stand: never touched");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_failed_teardown_is_retried_by_the_reaper_up_to_three_times(pool: PgPool) {
    let w = world(pool, None);
    w.event("deploy", Trigger::Opened, SHA1, at("2026-11-25T10:00:00Z")).await;
    w.drain().await;
    *w.cluster.stuck.lock().unwrap() = true;
    w.event("teardown", Trigger::Closed, SHA1, at("2026-11-25T11:00:00Z")).await;
    assert_eq!(w.drain().await[0].1, RunEnd::Failed);
    assert_eq!(w.stand().await.1, "closing");
    for attempt in 2..=3 {
        let sweep = w.sweep(Utc::now()).await;
        assert_eq!(sweep.retried.len(), 1, "attempt {attempt}");
        assert_eq!(w.drain().await[0].1, RunEnd::Failed);
    }
    assert!(w.sweep(Utc::now()).await.retried.is_empty(), "three teardowns: left to an operator");
    let triggers: Vec<String> = w.runs().await.into_iter().map(|r| r.2).collect();
    assert_eq!(triggers, ["opened", "closed", "retry", "retry"]);

    // Had the cluster let go before the attempts ran out, the next retry would have finished it
    // (the two retries are set aside here to leave one attempt).
    *w.cluster.stuck.lock().unwrap() = false;
    sqlx::query("update runs set state = 'cancelled' where trigger = 'retry'").execute(&w.pool).await.unwrap();
    assert_eq!(w.sweep(Utc::now()).await.retried.len(), 1);
    w.drain().await;
    assert_eq!(w.stand().await.1, "removed");
    assert!(!w.cluster.has(&w.namespace));
}
