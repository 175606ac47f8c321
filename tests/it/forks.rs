//! Fork pull requests under `forks = "approve"` (issue 24): a fork's commit runs nothing until
//! someone with write access approves exactly that commit, a push makes the new head wait again,
//! and an approved fork's stand never reads the project's KV secrets (OpenBao's own audit log says so).
//! Webhooks go through the real router, access checks through the real clients against the forge fakes.

use std::sync::Arc;
use std::time::Duration;

use draftd::config::{Config, ForgeKind};
use draftd::forge::client::{AnyForge, GithubClient, GitlabClient};
use draftd::pipeline::authorise::{Authorise, ForgeAuthoriser, Verdict};
use draftd::pipeline::steps::DryRunSteps;
use draftd::pipeline::{RunContext, StepName, StepRunner};
use draftd::stand::{Provenance, RunId};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::bao::Bao;
use crate::support::forge_fake::{Fake, TOKEN};
use crate::support::*;

const T1: &str = "2019-05-15T15:20:33Z";
const T2: &str = "2019-05-15T15:30:00Z";
const GH_REPO: &str = "Codertocat/Hello-World";
const GL_REPO: &str = "gitlabhq/gitlab-test";
const BRANCH: &str = "feature/from-fork";

const CONFIG: &str = r#"
[api]
token_env = "API_TOKEN"
[access]
url = "https://access.stands.test"
cookie_domain = "stands.test"
key_env = "ACCESS_KEY"
[access.github]
client_id = "Iv1.draftd"
client_secret_env = "GH_CLIENT_SECRET"
[access.gitlab]
client_id = "draftd"
client_secret_env = "GH_CLIENT_SECRET"

[[projects]]
name = "gh-approve"
forge = "github"
repo = "Codertocat/Hello-World"
webhook_secret_env = "GH_SECRET"
forks = "approve"

[[projects]]
name = "gl-approve"
forge = "gitlab"
repo = "gitlabhq/gitlab-test"
webhook_secret_env = "GL_SECRET"
forks = "approve"
"#;

fn config() -> Config {
    Config::from_toml(CONFIG).unwrap()
}

/// A commit id made of one hex digit, so its short form is readable in assertions.
fn commit(digit: char) -> String {
    digit.to_string().repeat(40)
}

fn short(digit: char) -> String {
    digit.to_string().repeat(7)
}

fn delivery() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A GitHub PR event from mallory's fork.
fn github_fork_pr(action: &str, sha: &str, updated_at: &str) -> Value {
    let mut v = github_pr(action, BRANCH, sha, updated_at);
    v["pull_request"]["head"]["repo"] = json!({ "full_name": "mallory/Hello-World" });
    v
}

fn github_comment(login: &str, body: &str) -> Value {
    let mut v = fixture("github/issue_comment.created.json");
    v["issue"]["number"] = github_fork_pr("opened", &commit('a'), T1)["number"].clone();
    v["issue"]["pull_request"] = json!({ "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2" });
    v["comment"]["body"] = body.into();
    v["comment"]["user"]["login"] = login.into();
    v
}

/// A GitLab MR event whose source project is a fork of the target.
fn gitlab_fork_mr(action: &str, sha: &str, updated_at: &str) -> Value {
    let mut v = gitlab_mr(action, BRANCH, sha, updated_at);
    let target = v["object_attributes"]["target_project_id"].as_u64().unwrap();
    v["object_attributes"]["source_project_id"] = (target + 4242).into();
    if action == "update" {
        v["object_attributes"]["oldrev"] = commit('0').into();
    }
    v
}

fn gitlab_note(user_id: u64, username: &str, body: &str) -> Value {
    let mut v = fixture("gitlab/note.merge_request.json");
    v["project"]["path_with_namespace"] = GL_REPO.into();
    v["object_attributes"]["note"] = body.into();
    v["user"]["id"] = user_id.into();
    v["user"]["username"] = username.into();
    let mr = gitlab_fork_mr("open", &commit('a'), T1);
    v["merge_request"]["iid"] = mr["object_attributes"]["iid"].clone();
    v["merge_request"]["source_branch"] = BRANCH.into();
    v["merge_request"]["source_project_id"] = mr["object_attributes"]["source_project_id"].clone();
    v["merge_request"]["target_project_id"] = mr["object_attributes"]["target_project_id"].clone();
    v
}

/// The newest sticky comment queued.
async fn comment(pool: &PgPool) -> String {
    let body: Option<String> = sqlx::query_scalar(
        "select payload->>'body' from outbox where kind = 'comment' order by outbox_id desc limit 1",
    )
    .fetch_optional(pool)
    .await
    .unwrap();
    body.expect("a sticky comment was queued")
}

async fn replies(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select payload->>'body' from outbox where kind = 'reply' order by outbox_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn awaiting(pool: &PgPool, project: &str) -> Option<String> {
    sqlx::query_scalar("select awaiting_approval from stands where project = $1")
        .bind(project)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn approvals(pool: &PgPool) -> Vec<(String, String, Option<RunId>)> {
    sqlx::query_as("select sha, approved_by, run_id from fork_approvals order by approval_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The run as a worker claims it.
async fn claimed(pool: &PgPool, run: RunId) -> RunContext {
    sqlx::query_as(
        "select r.run_id, r.stand_id, r.number, r.kind, r.trigger, r.sha, r.epoch, r.requested_by, r.params,
                1 as attempt, s.project, s.branch, s.namespace
         from runs r join stands s using (stand_id) where r.run_id = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await
    .unwrap()
}

fn run_of(res: &Response) -> RunId {
    RunId::new(res.body["run"].as_i64().unwrap_or_else(|| panic!("a run was queued: {}", res.body)))
}

/// The forge fakes behind one authoriser: alice may push on GitHub, bob is a GitLab Developer; mallory
/// and tom may only read.
struct Forges {
    authoriser: ForgeAuthoriser<AnyForge>,
    _github: Fake,
    _gitlab: Fake,
}

async fn forges(pool: &PgPool) -> Forges {
    let github = Fake::start(ForgeKind::Github).await;
    github.gh_grant(GH_REPO, "alice", "write");
    github.gh_grant(GH_REPO, "mallory", "read");
    let gitlab = Fake::start(ForgeKind::Gitlab).await;
    gitlab.gl_add_member(GL_REPO, 7, "bob", 30);
    gitlab.gl_add_member(GL_REPO, 8, "tom", 20);
    let token = SecretString::from(TOKEN);
    let timeout = Duration::from_secs(5);
    let clients = vec![
        (ForgeKind::Github, AnyForge::Github(GithubClient::new(&github.url(), &token, timeout).unwrap())),
        (ForgeKind::Gitlab, AnyForge::Gitlab(GitlabClient::new(&gitlab.url(), &token, timeout).unwrap())),
    ];
    Forges {
        authoriser: ForgeAuthoriser::with_clients(pool.clone(), &config(), clients),
        _github: github,
        _gitlab: gitlab,
    }
}

impl Forges {
    async fn verdict(&self, pool: &PgPool, run: RunId) -> Verdict {
        self.authoriser.authorise(&claimed(pool, run).await).await.unwrap()
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_github_fork_commit_runs_nothing_until_someone_with_write_access_approves_exactly_it(pool: PgPool) {
    let app = app_with(pool.clone(), &config());
    let f = forges(&pool).await;

    // Opened: recorded, no run, and the sticky comment says how to approve commit aaaaaaa.
    let res = github(&app, "pull_request", &delivery(), &github_fork_pr("opened", &commit('a'), T1)).await;
    assert_eq!(res.status, 202, "{}", res.body);
    assert!(res.body["run"].is_null(), "nothing runs before approval: {}", res.body);
    assert!(res.body["ignored"].as_str().unwrap().contains("waits for approval"), "{}", res.body);
    assert_eq!(count(&pool, "runs").await, 0);
    assert_eq!(awaiting(&pool, "gh-approve").await, Some(commit('a')));
    let body = comment(&pool).await;
    assert!(
        body.contains(&format!("A maintainer can approve commit `{}` with `/draft approve`", short('a'))),
        "{body}"
    );
    assert!(body.contains("waiting for approval"), "{body}");
    let kinds: Vec<String> = sqlx::query_scalar("select kind from outbox").fetch_all(&pool).await.unwrap();
    assert_eq!(kinds, ["comment"], "no check, no deployment for a commit that never ran");

    // A reader's approval is checked like any command: refused with a reply, nothing recorded.
    let res = github(&app, "issue_comment", &delivery(), &github_comment("mallory", "/draft approve")).await;
    let refused = run_of(&res);
    assert_eq!(
        f.verdict(&pool, refused).await,
        Verdict::Denied {
            reason: format!("mallory has read access to {GH_REPO}; `/draft approve` needs write access")
        }
    );
    assert!(replies(&pool).await.last().unwrap().starts_with("@mallory `/draft approve` needs write access"));
    assert!(approvals(&pool).await.is_empty());
    assert_eq!(awaiting(&pool, "gh-approve").await, Some(commit('a')), "still waiting");

    // An approval naming another commit is refused at once, with a reply naming the waiting one.
    let res = github(&app, "issue_comment", &delivery(), &github_comment("alice", "/draft approve bbbbbbb")).await;
    assert!(res.body["run"].is_null(), "{}", res.body);
    let reply = replies(&pool).await.last().cloned().unwrap();
    assert!(
        reply.starts_with("@alice `/draft approve` was not acted on: commit bbbbbbb is not the one waiting"),
        "{reply}"
    );
    assert!(reply.contains(&format!("`/draft approve {}`", short('a'))), "{reply}");

    // A writer's approval pinned to the waiting commit runs exactly that commit.
    let res =
        github(&app, "issue_comment", &delivery(), &github_comment("alice", &format!("/draft approve {}", short('a'))))
            .await;
    let approved = run_of(&res);
    assert_eq!(f.verdict(&pool, approved).await, Verdict::Allowed);
    let run = runs(&pool).await.into_iter().find(|r| r.run_id == approved).unwrap();
    assert_eq!((run.kind.as_str(), run.sha.as_deref()), ("deploy", Some(commit('a').as_str())));
    assert_eq!(approvals(&pool).await, [(commit('a'), "github:alice".to_owned(), Some(approved))]);
    assert_eq!(awaiting(&pool, "gh-approve").await, None);
    let audit: Vec<(String, String, Value)> =
        sqlx::query_as("select actor, action, detail->'approve' from audit order by audit_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(audit.last().unwrap(), &("github:alice".into(), "command.allowed".into(), json!(commit('a'))));
    let stand = stand(&pool, "gh-approve", BRANCH).await.unwrap();
    let provenance = draftd::store::approvals::provenance(&pool, stand.stand_id, draftd::config::ForkPolicy::Approve);
    assert_eq!(provenance.await.unwrap(), Provenance::ApprovedFork);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_push_needs_a_new_approval_and_the_approved_commit_keeps_running(pool: PgPool) {
    let app = app_with(pool.clone(), &config());
    let f = forges(&pool).await;
    github(&app, "pull_request", &delivery(), &github_fork_pr("opened", &commit('a'), T1)).await;
    let first = run_of(&github(&app, "issue_comment", &delivery(), &github_comment("alice", "/draft approve")).await);
    assert_eq!(f.verdict(&pool, first).await, Verdict::Allowed);

    let res = github(&app, "pull_request", &delivery(), &github_fork_pr("synchronize", &commit('b'), T2)).await;
    assert!(res.body["run"].is_null(), "the push runs nothing: {}", res.body);
    assert_eq!(awaiting(&pool, "gh-approve").await, Some(commit('b')));
    let body = comment(&pool).await;
    assert!(body.contains(&format!("approve commit `{}`", short('b'))), "the comment names the new commit: {body}");
    assert!(body.contains(&format!("keeps running commit `{}`", short('a'))), "{body}");

    // An approval of bbbbbbb still in the queue when ccccccc is pushed runs nothing, and says why.
    let late = run_of(&github(&app, "issue_comment", &delivery(), &github_comment("alice", "/draft approve")).await);
    let t3 = "2019-05-15T15:40:00Z";
    github(&app, "pull_request", &delivery(), &github_fork_pr("synchronize", &commit('c'), t3)).await;
    assert!(matches!(f.verdict(&pool, late).await, Verdict::Denied { .. }));
    let reply = replies(&pool).await.last().cloned().unwrap();
    assert!(reply.contains(&format!("commit `{}` was pushed since", short('c'))), "{reply}");
    assert_eq!(approvals(&pool).await.len(), 1, "only aaaaaaa is approved");

    // `/draft rerun` deploys the approved commit, never the waiting one.
    let rerun = run_of(&github(&app, "issue_comment", &delivery(), &github_comment("alice", "/draft rerun")).await);
    assert_eq!(runs(&pool).await.into_iter().find(|r| r.run_id == rerun).unwrap().sha, Some(commit('a')));

    let second = run_of(&github(&app, "issue_comment", &delivery(), &github_comment("alice", "/draft approve")).await);
    assert_eq!(f.verdict(&pool, second).await, Verdict::Allowed);
    let shas: Vec<String> = approvals(&pool).await.into_iter().map(|(sha, ..)| sha).collect();
    assert_eq!(shas, [commit('a'), commit('c')]);
    assert_eq!(runs(&pool).await.into_iter().find(|r| r.run_id == second).unwrap().sha, Some(commit('c')));
    // The comment is written again by the approved run's report; until then nothing new is queued,
    // and the stand no longer waits.
    assert_eq!(awaiting(&pool, "gh-approve").await, None);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_gitlab_fork_merge_request_waits_for_a_developers_approval(pool: PgPool) {
    let app = app_with(pool.clone(), &config());
    let f = forges(&pool).await;
    let res = gitlab(&app, "Merge Request Hook", &gitlab_fork_mr("open", &commit('c'), T1)).await;
    assert_eq!(res.status, 202, "{}", res.body);
    assert!(res.body["run"].is_null(), "{}", res.body);
    assert!(comment(&pool).await.contains(&format!("approve commit `{}`", short('c'))));

    let refused = run_of(&gitlab(&app, "Note Hook", &gitlab_note(8, "tom", "/draft approve")).await);
    assert!(matches!(f.verdict(&pool, refused).await, Verdict::Denied { .. }), "a Reporter may not approve");
    let approved = run_of(&gitlab(&app, "Note Hook", &gitlab_note(7, "bob", "/draft approve")).await);
    assert_eq!(f.verdict(&pool, approved).await, Verdict::Allowed);
    assert_eq!(approvals(&pool).await, [(commit('c'), "gitlab:bob".to_owned(), Some(approved))]);

    let res = gitlab(&app, "Merge Request Hook", &gitlab_fork_mr("update", &commit('d'), T2)).await;
    assert!(res.body["run"].is_null(), "a push waits for its own approval: {}", res.body);
    assert_eq!(awaiting(&pool, "gl-approve").await, Some(commit('d')));
    assert!(comment(&pool).await.contains(&format!("approve commit `{}`", short('d'))));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn an_approval_on_the_repositorys_own_pull_request_is_refused_with_a_reply(pool: PgPool) {
    let app = app_with(pool.clone(), &config());
    let res = github(&app, "pull_request", &delivery(), &github_pr("opened", BRANCH, &commit('e'), T1)).await;
    assert!(res.body["run"].is_i64(), "the repository's own PR runs at once: {}", res.body);
    let res = github(&app, "issue_comment", &delivery(), &github_comment("alice", "/draft approve")).await;
    assert!(res.body["run"].is_null(), "{}", res.body);
    assert!(replies(&pool).await[0].contains("not from a fork"), "{:?}", replies(&pool).await);
}

// ---------------------------------------------------------------------------------------------
// No KV read for an approved fork's stand, as OpenBao's audit log shows
// ---------------------------------------------------------------------------------------------

/// An OpenBao dev server with a file audit device (declared in its configuration: OpenBao refuses to
/// create audit devices through its API).
fn audited_bao() -> (Bao, std::path::PathBuf) {
    let dir = tempfile::Builder::new().prefix("draftd-bao-audit-").tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let hcl = dir.path().join("audit.hcl");
    std::fs::write(
        &hcl,
        format!("audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n", log.display()),
    )
    .unwrap();
    let bao = Bao::start_in(dir, &[("BAO_DEV_CONFIG", hcl.to_str().unwrap())]);
    (bao, log)
}

/// Reads of `path` in the audit log (each request is logged once as a request, once as a response).
fn reads_of(log: &std::path::Path, path: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "request" && e["request"]["operation"] == "read" && e["request"]["path"] == path)
        .count()
}

async fn new_stand(pool: &PgPool, branch: &str, fork: bool) -> RunContext {
    let namespace = format!("draft-{}", branch.replace('/', "-"));
    let (stand,): (i64,) = sqlx::query_as(
        "insert into stands (project, branch, namespace, fork, head_sha) values ('shop', $1, $2, $3, $4) returning stand_id",
    )
    .bind(branch)
    .bind(&namespace)
    .bind(fork)
    .bind(commit('f'))
    .fetch_one(pool)
    .await
    .unwrap();
    let run: RunId = sqlx::query_scalar(
        "insert into runs (stand_id, number, kind, trigger, automatic, epoch, sha)
         values ($1, 1, 'deploy', 'command', false, 0, $2) returning run_id",
    )
    .bind(stand)
    .bind(commit('f'))
    .fetch_one(pool)
    .await
    .unwrap();
    if fork {
        sqlx::query(
            "insert into fork_approvals (stand_id, sha, approved_by, run_id) values ($1, $2, 'github:alice', $3)",
        )
        .bind(stand)
        .bind(commit('f'))
        .bind(run)
        .execute(pool)
        .await
        .unwrap();
    }
    claimed(pool, run).await
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn an_approved_fork_stand_never_reads_the_projects_kv_secrets(pool: PgPool) {
    let (bao, log) = audited_bao();
    let (status, _) =
        bao.api("POST", "draft/data/payments/shop", Some(json!({ "data": { "API_KEY": "sk_live_team" } }))).await;
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&format!(
        r#"
        [cluster]
        mode = "dry-run"
        dry_run_dir = "{}"
        [vault]
        address = "{}"
        auth = "token"
        token_file = "{}"
        [access]
        url = "https://access.stands.test"
        cookie_domain = "stands.test"
        key_env = "ACCESS_KEY"
        [access.github]
        client_id = "Iv1.draftd"
        client_secret_env = "GH_CLIENT_SECRET"
        [[projects]]
        name = "shop"
        forge = "github"
        repo = "acme/shop"
        webhook_secret_env = "SHOP_WEBHOOK_SECRET"
        team = "payments"
        service = "shop"
        forks = "approve"
        "#,
        dir.path().display(),
        bao.addr,
        bao.token_file().display()
    ))
    .unwrap();
    let credentials = draftd::credentials::StandCredentials::from_config(pool.clone(), &config).unwrap().map(Arc::new);
    let helm = Arc::new(draftd::helm::HelmCli::new("helm-is-not-called-by-the-secrets-step"));
    let steps = DryRunSteps::new(pool.clone(), Arc::new(config), helm).with_credentials(credentials);
    const KV: &str = "draft/data/payments/shop";

    // The repository's own stand reads the KV path: the audit log does show reads.
    let own = new_stand(&pool, "feature/own", false).await;
    let outcome = steps.run(StepName::Secrets, &own).await.unwrap();
    assert_eq!(outcome.detail["app-secrets"]["kv_path"], "payments/shop", "{}", outcome.detail);
    let after_own = reads_of(&log, KV);
    assert!(after_own >= 1, "the audit log shows the own stand's read");

    // The approved fork's stand does not: not a single read of the path.
    let fork = new_stand(&pool, BRANCH, true).await;
    let outcome = steps.run(StepName::Secrets, &fork).await.unwrap();
    assert!(outcome.skipped, "nothing to hand over without [postgres]: {}", outcome.detail);
    assert!(outcome.detail.to_string().contains("none of the team's KV secrets"), "{}", outcome.detail);
    assert_eq!(reads_of(&log, KV), after_own, "no KV read for the approved fork's stand");
}
