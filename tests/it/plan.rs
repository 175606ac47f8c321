//! `draftd plan` as a child process: what a run would create, rendered by the real Helm 4, with no
//! database (DRAFTD_DATABASE_URL points at a closed port), no cluster, no Vault, no forge and no
//! secrets (the webhook secret's variable is unset).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const DRAFTD: &str = env!("CARGO_BIN_EXE_draftd");
/// `plan` renders one chart; it must be done well within this.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Nothing listens on port 1: any attempt to use the database would fail.
const DEAD_DATABASE_URL: &str = "postgres://x@127.0.0.1:1/x";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
/// Set in the environment of every run, named by `[vault] token_env`: it must never be printed.
const VAULT_TOKEN_VAR: &str = "DRAFTD_PLAN_TEST_VAULT_TOKEN";
const VAULT_TOKEN: &str = "hvs.plan-test-secret-0f1e2d3c4b5a";
/// Named by the project's `webhook_secret_env` and never set: plan must not need it.
const UNSET_SECRET_VAR: &str = "DRAFTD_PLAN_TEST_WEBHOOK_SECRET_NEVER_SET";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// A config with `shop` (image, host, team/service, Vault) and `blog` (none of them) on the repo's chart.
fn setup_with_helm(helm: &Path) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let chart = toml_path(&root().join("charts/stand"));
    let values = toml_path(&root().join("values/draft.yaml"));
    let text = format!(
        r#"
[cluster]
helm_path = {helm}

[vault]
address = "http://127.0.0.1:1"
auth = "token"
token_env = "{VAULT_TOKEN_VAR}"

[[projects]]
name = "shop"
forge = "github"
repo = "acme/shop"
webhook_secret_env = "{UNSET_SECRET_VAR}"
team = "payments"
service = "shop"
image = "registry.example.com/acme/shop"
host = "{{stand}}.draft.example.com"
chart = {chart}
values = [{values}]

[[projects]]
name = "blog"
forge = "gitlab"
repo = "acme/blog"
webhook_secret_env = "{UNSET_SECRET_VAR}"
chart = {chart}
values = [{values}]
"#,
        helm = toml_path(helm),
    );
    let config = dir.path().join("draftd.toml");
    std::fs::write(&config, text).unwrap();
    Setup { dir, config }
}

fn setup() -> Setup {
    let helm = root().join(".tools/bin/helm");
    assert!(helm.exists(), "{} is missing: run scripts/install-tools.sh", helm.display());
    setup_with_helm(&helm)
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Output {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `draftd --config <setup> plan <args>` in the temp directory, with no inherited DRAFTD_* variables
/// and the database "down"; killed if it outlives [`CLI_TIMEOUT`].
fn plan(setup: &Setup, args: &[&str]) -> Output {
    let mut cmd = Command::new(DRAFTD);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DRAFTD_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("DATABASE_URL")
        .env("DRAFTD_DATABASE_URL", DEAD_DATABASE_URL)
        .env(VAULT_TOKEN_VAR, VAULT_TOKEN)
        .env_remove(UNSET_SECRET_VAR)
        .current_dir(setup.dir.path())
        .arg("--config")
        .arg(&setup.config)
        .arg("plan")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start draftd");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).map(|_| s)
    });
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("draftd plan {args:?} did not exit within {CLI_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output { ok: status.success(), stdout: out.join().unwrap().unwrap(), stderr: err.join().unwrap().unwrap() }
}

fn assert_no_secret(out: &Output) {
    let all = out.all();
    assert!(!all.contains(VAULT_TOKEN), "a secret was printed:\n{all}");
}

const IMAGE: &str = "registry.example.com/acme/shop:draft-feature-login-0123456";

// (a) the text form
#[test]
fn plan_prints_names_command_and_rendered_manifests() {
    let s = setup();
    let out = plan(&s, &["--project", "shop", "--branch", "feature/login", "--sha", SHA]);
    assert!(out.ok, "plan failed:\n{}", out.all());
    let o = &out.stdout;
    assert!(o.contains("namespace:      draft-feature-login\n"), "{o}");
    assert!(o.contains(&format!("image:          {IMAGE}\n")), "{o}");
    assert!(o.contains("https://draft-feature-login.draft.example.com"), "{o}");
    assert!(o.contains("database:       draft_feature_login\n"), "{o}");
    assert!(o.contains("database role:  draft_feature_login\n"), "{o}");
    assert!(o.contains("vault kv path:  draft/payments/shop\n"), "{o}");
    // The hashed alternative is announced.
    assert!(o.contains("instead if another stand already has that name"), "{o}");
    let mut lines = o.lines().skip_while(|l| !l.starts_with("helm command"));
    let command = lines.nth(1).expect("a line after the helm command heading").trim();
    assert!(command.starts_with("helm upgrade --install draft-feature-login "), "{command}");
    assert!(command.contains("--set-string image.tag=***"), "{command}");
    assert!(!command.contains("draft-feature-login-0123456"), "set values are redacted: {command}");
    let manifests = o.split_once("manifests (helm template):").expect("manifests section").1;
    assert!(manifests.contains("kind: Deployment"), "{manifests}");
    assert!(manifests.contains(IMAGE), "{manifests}");
    assert!(manifests.contains("kind: Ingress") && manifests.contains("draft-feature-login.draft.example.com"));
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    assert_no_secret(&out);
}

#[test]
fn project_without_image_or_vault_paths_says_so() {
    let s = setup();
    let out = plan(&s, &["--project", "blog", "--branch", "bugfix/crash", "--sha", SHA]);
    assert!(out.ok, "plan failed:\n{}", out.all());
    let o = &out.stdout;
    assert!(o.contains("image tag:      draft-bugfix-crash-0123456 (the project sets no image repository)"), "{o}");
    assert!(o.contains("host:           none"), "{o}");
    assert!(o.contains("vault kv path:  none (project \"blog\" does not set both team and service"), "{o}");
    assert_no_secret(&out);
}

// (b) --json
#[test]
fn json_is_one_object_with_the_plan() {
    let s = setup();
    let out = plan(&s, &["--project", "shop", "--branch", "feature/login", "--sha", SHA, "--json"]);
    assert!(out.ok, "plan failed:\n{}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.stdout));
    assert_eq!(v["project"], "shop");
    assert_eq!(v["branch"], "feature/login");
    assert_eq!(v["sha"], SHA);
    assert_eq!(v["namespace"], "draft-feature-login");
    assert!(v["namespace_if_taken"].as_str().unwrap().starts_with("draft-feature-login-"), "{v}");
    assert_eq!(v["release"], "draft-feature-login");
    assert_eq!(v["image"], IMAGE);
    assert_eq!(v["image_tag"], "draft-feature-login-0123456");
    assert_eq!(v["host"], "draft-feature-login.draft.example.com");
    assert_eq!(v["url"], "https://draft-feature-login.draft.example.com");
    assert_eq!(v["database"], "draft_feature_login");
    assert_eq!(v["role"], "draft_feature_login");
    assert_eq!(v["vault_kv_path"], "draft/payments/shop");
    assert_eq!(v["branch_matches"], true);
    assert_eq!(v["cluster_mode"], "dry-run");
    assert_eq!(v["warnings"], Value::Array(vec![]));
    assert!(v["helm_command"].as_str().unwrap().starts_with("helm upgrade --install draft-feature-login "), "{v}");
    let manifests = v["manifests"].as_str().unwrap();
    assert!(manifests.contains("kind: Deployment") && manifests.contains(IMAGE), "{manifests}");
    assert!(v["helm_error"].is_null());
    assert_no_secret(&out);
}

// (c) refusals
#[test]
fn unknown_project_names_the_configured_ones() {
    let s = setup();
    let out = plan(&s, &["--project", "nope", "--branch", "feature/login", "--sha", SHA]);
    assert!(!out.ok, "{}", out.all());
    assert!(out.stderr.contains("\"nope\""), "{}", out.stderr);
    assert!(out.stderr.contains("shop") && out.stderr.contains("blog"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn bad_sha_is_refused_naming_it() {
    let s = setup();
    for bad in ["abc1234", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"] {
        let out = plan(&s, &["--project", "shop", "--branch", "feature/login", "--sha", bad]);
        assert!(!out.ok, "{}", out.all());
        assert!(out.stderr.contains(bad) && out.stderr.contains("--sha"), "{}", out.stderr);
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }
}

#[test]
fn bad_branch_is_refused() {
    let s = setup();
    let out = plan(&s, &["--project", "shop", "--branch", "a\nb", "--sha", SHA]);
    assert!(!out.ok, "{}", out.all());
    assert!(out.stderr.contains("--branch"), "{}", out.stderr);
}

// (d) outside the globs
#[test]
fn branch_outside_the_globs_still_plans_with_a_warning() {
    let s = setup();
    let out = plan(&s, &["--project", "shop", "--branch", "main", "--sha", SHA]);
    assert!(out.ok, "plan failed:\n{}", out.all());
    assert!(out.stderr.contains("warning:") && out.stderr.contains("would be ignored"), "{}", out.stderr);
    assert!(out.stdout.contains("namespace:      draft-main\n"), "{}", out.stdout);
    assert!(out.stdout.contains("NO MATCH"), "{}", out.stdout);

    let out = plan(&s, &["--project", "shop", "--branch", "main", "--sha", SHA, "--json"]);
    assert!(out.ok, "plan failed:\n{}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["branch_matches"], false);
    assert!(v["warnings"][0].as_str().unwrap().contains("would be ignored"), "{v}");
}

// helm missing: everything else is printed, then a non-zero exit naming the problem.
#[test]
fn missing_helm_prints_the_plan_then_fails() {
    let s = setup_with_helm(Path::new("/nonexistent/helm"));
    let out = plan(&s, &["--project", "shop", "--branch", "feature/login", "--sha", SHA]);
    assert!(!out.ok, "{}", out.all());
    assert!(out.stdout.contains("namespace:      draft-feature-login\n"), "{}", out.stdout);
    assert!(out.stdout.contains("helm upgrade --install draft-feature-login "), "{}", out.stdout);
    assert!(out.stderr.contains("helm not found") && out.stderr.contains("/nonexistent/helm"), "{}", out.stderr);

    let out = plan(&s, &["--project", "shop", "--branch", "feature/login", "--sha", SHA, "--json"]);
    assert!(!out.ok, "{}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(v["manifests"].is_null());
    assert!(v["helm_error"].as_str().unwrap().contains("helm not found"), "{v}");
}

/// The image step in the plan: the reference it would look for, how long, and whether a build
/// would run, with the build's source and destination; without a registry, that it is skipped.
#[test]
fn the_plan_shows_the_image_step_and_whether_a_build_would_run() {
    let toml = r#"
[registry]
wait = "10m"

[[projects]]
name = "shop"
forge = "github"
repo = "acme/shop"
webhook_secret_env = "X"
image = "registry.example.com/acme/shop"
build = { context = "web", dockerfile = "Dockerfile.draft" }

[[projects]]
name = "blog"
forge = "github"
repo = "acme/blog"
webhook_secret_env = "X"
image = "registry.example.com/acme/blog"
registry = { wait = "2m" }
build = { always = true, public = true }

[[projects]]
name = "docs"
forge = "github"
repo = "acme/docs"
webhook_secret_env = "X"
"#;
    let config = draftd::config::Config::from_toml(toml).unwrap();
    let shop = draftd::plan_cmd::build(&config, "shop", "feature/login", SHA).unwrap();
    let image = serde_json::to_value(&shop.image_step).unwrap();
    assert_eq!(image["image"], "registry.example.com/acme/shop:draft-feature-login-0123456");
    assert_eq!(image["wait_seconds"], 600);
    assert_eq!(image["build"], "when missing");
    assert_eq!(image["build_detail"]["cache"], "registry.example.com/acme/shop:draft-buildcache");
    assert_eq!(image["build_detail"]["context"], "web");
    let mut text = Vec::new();
    draftd::plan_cmd::write_text(&mut text, &shop).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("image step:     waits for CI's image, then builds it in the cluster"), "{text}");
    assert!(text.contains("image build:    when missing (acme/shop at 0123456789"), "{text}");

    let blog = draftd::plan_cmd::build(&config, "blog", "feature/login", SHA).unwrap();
    assert_eq!((blog.image_step.build, blog.image_step.wait_seconds), (Some("always"), Some(0)));
    let docs = draftd::plan_cmd::build(&config, "docs", "feature/login", SHA).unwrap();
    assert_eq!(docs.image_step.note, "skipped: the project names no image");
    // A build needs somewhere to push.
    let no_registry = toml.replace("[registry]\nwait = \"10m\"\n", "");
    let err = draftd::config::Config::from_toml(&no_registry).unwrap_err().to_string();
    assert!(err.contains("projects[0].build") && err.contains("registry"), "{err}");
}
