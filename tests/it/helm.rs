//! The helm module and the stand chart, against the real Helm 4 that scripts/install-tools.sh puts in
//! `.tools/bin/helm` (lint, template), recorded helm output (history), and fake helm scripts for the
//! commands that would need a cluster (upgrade, uninstall, timeouts).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use draftd::helm::{
    Helm, HelmCli, HelmError, REDACTED, Release, escape_set_value, parse_history, parse_release_revision, release_name,
    template_argv, upgrade_install_argv,
};
use draftd::pipeline::{StepError, StepErrorKind};
use draftd::stand::Failure;
use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project's Helm 4. Missing is a failure, not a skip: these tests are the chart's only check.
fn helm() -> HelmCli {
    let path = root().join(".tools/bin/helm");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-tools.sh (installs Helm 4 and kubectl into .tools/bin)",
        path.display()
    );
    let mut cli = HelmCli::new(path);
    cli.timeout = Duration::from_secs(60);
    cli.kube_version = Some("1.30.0".into());
    cli
}

fn chart() -> PathBuf {
    root().join("charts/stand")
}

fn draft_values() -> PathBuf {
    root().join("values/draft.yaml")
}

const NAMESPACE: &str = "draft-feature-login";
const HOST: &str = "42.draft.example.com";
const TAG: &str = "draft-feature-login-abc1234";

fn stand_release(namespace: &str, values: Vec<PathBuf>) -> Release {
    Release {
        name: release_name(namespace),
        namespace: namespace.into(),
        chart: chart(),
        values,
        set: BTreeMap::from([
            ("image.tag".into(), TAG.into()),
            ("host".into(), HOST.into()),
            ("stand.id".into(), "42".into()),
            ("stand.project".into(), "shop".into()),
        ]),
    }
}

/// The documents of a multi-document YAML stream, as JSON values; empty documents left out.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("helm template printed valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn by_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// Every pod spec of the rendered workloads (Deployments and Jobs), with its owner's name.
fn pod_specs(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "Job")
        .map(|d| (format!("{} {}", d["kind"], d["metadata"]["name"]), &d["spec"]["template"]["spec"]))
        .collect()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

async fn render(release: &Release) -> Vec<Value> {
    let yaml = helm().template(release).await.unwrap_or_else(|e| panic!("helm template failed: {e}"));
    documents(&yaml)
}

// (a) lint

#[tokio::test]
async fn chart_passes_strict_lint_with_draft_values() {
    let report = helm().lint(&chart(), &[draft_values()]).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("0 chart(s) failed"), "{report}");
    assert!(!report.contains("[WARNING]") && !report.contains("[ERROR]"), "{report}");

    // With a host, the migrate and smoke Jobs on: every template is executed.
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("stand.yaml");
    std::fs::write(
        &extra,
        "host: 42.draft.example.com\nstand: {id: \"42\", project: shop, expiresAt: \"2025-11-22T08:00:00Z\"}\n\
         migrate: {enabled: true, command: [alembic, upgrade, head]}\n\
         smoke: {enabled: true, command: [scripts/smoke_draft.sh]}\n\
         ingress: {tlsSecretName: draft-wildcard-tls, annotations: {a.example.com/x: y}}\n",
    )
    .unwrap();
    let report = helm().lint(&chart(), &[draft_values(), extra]).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!report.contains("[WARNING]") && !report.contains("[ERROR]"), "{report}");
}

#[tokio::test]
async fn lint_failure_carries_the_findings() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    // A mock whose name makes invalid object names: a warning, which --strict makes a failure.
    std::fs::write(&bad, "mocks: {Bad_Name: {enabled: true}}\n").unwrap();
    let err = helm().lint(&chart(), &[draft_values(), bad]).await.unwrap_err();
    assert!(matches!(err, HelmError::Failed { code: Some(1), .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("mock-Bad_Name") && text.contains("naming requirements"), "{text}");
    assert!(text.contains("1 chart(s) failed"), "{text}");
    assert!(!err.is_transient());
}

// (b) template

#[tokio::test]
async fn template_renders_a_complete_stand_for_kubernetes_1_30() {
    let release = stand_release(NAMESPACE, vec![draft_values()]);
    assert_eq!(release.name, NAMESPACE, "a short namespace is its own release name");
    let docs = render(&release).await;
    assert!(!docs.is_empty());

    let ga: BTreeSet<&str> = ["v1", "apps/v1", "batch/v1", "networking.k8s.io/v1"].into();
    for doc in &docs {
        let api = doc["apiVersion"].as_str().unwrap_or_default();
        assert!(ga.contains(api), "apiVersion {api} is not GA on 1.30: {doc}");
        let kind = doc["kind"].as_str().unwrap_or_default();
        assert!(!kind.is_empty(), "no kind: {doc}");
        assert_ne!(kind, "Secret", "the chart must never render a Secret: {doc}");
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        assert!(is_dns1123_label(name), "{kind} name {name:?} is not a DNS-1123 label");
        let labels = &doc["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{kind} {name}");
        assert_eq!(labels["app.kubernetes.io/instance"], NAMESPACE, "{kind} {name}");
        assert_eq!(labels["draftd.io/stand"], "42", "{kind} {name}");
        assert_eq!(labels["draftd.io/project"], "shop", "{kind} {name}");
    }

    // The app: image, probes, security, environment.
    let app = named(&docs, "Deployment", NAMESPACE);
    let pod = &app["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], format!("registry.example.com/app:{TAG}"));
    for (probe, path) in
        [("livenessProbe", "/health"), ("readinessProbe", "/health/ready"), ("startupProbe", "/health/startup")]
    {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe}");
    }
    assert_eq!(env_value(c, "PAYMENTS_URL"), Some("http://draft-feature-login-mock-payments:8080"));
    assert_eq!(env_value(c, "EMAIL_URL"), Some("http://draft-feature-login-mock-email:8080"));
    assert_eq!(env_value(c, "SMS_URL"), Some("http://draft-feature-login-mock-sms:8080"));
    let refs: Vec<&str> =
        c["envFrom"].as_array().unwrap().iter().filter_map(|e| e["secretRef"]["name"].as_str()).collect();
    assert_eq!(refs, ["app-database", "app-secrets"]);

    // Every container: small resources, locked-down security context.
    for (owner, pod) in pod_specs(&docs) {
        assert_eq!(pod["automountServiceAccountToken"], false, "{owner}");
        for c in pod["containers"].as_array().unwrap() {
            let r = &c["resources"];
            assert!(r["requests"]["cpu"].is_string() && r["requests"]["memory"].is_string(), "{owner}: {r}");
            assert!(r["limits"]["memory"].is_string(), "{owner}: {r}");
            let s = &c["securityContext"];
            assert_eq!(s["readOnlyRootFilesystem"], true, "{owner}");
            assert_eq!(s["allowPrivilegeEscalation"], false, "{owner}");
            assert_eq!(s["capabilities"]["drop"], serde_json::json!(["ALL"]), "{owner}");
        }
    }

    // The Service the app's env and the Ingress point at.
    let service = named(&docs, "Service", NAMESPACE);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let ingresses = by_kind(&docs, "Ingress");
    assert_eq!(ingresses.len(), 1);
    let rule = &ingresses[0]["spec"]["rules"][0];
    assert_eq!(rule["host"], HOST);
    assert_eq!(rule["http"]["paths"][0]["backend"]["service"]["name"], NAMESPACE);

    // The three WireMock mocks, each a Deployment, a Service on 8080 and a ConfigMap of mappings.
    for mock in ["payments", "email", "sms"] {
        let name = format!("{NAMESPACE}-mock-{mock}");
        let deployment = named(&docs, "Deployment", &name);
        let pod = &deployment["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert!(c["image"].as_str().unwrap().starts_with("wiremock/wiremock:3."), "{c}");
        let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "mappings").unwrap();
        assert_eq!(mount["mountPath"], "/home/wiremock/mappings");
        let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "mappings").unwrap();
        assert_eq!(volume["configMap"]["name"], name.as_str());
        assert_eq!(named(&docs, "Service", &name)["spec"]["ports"][0]["port"], 8080);
        let data = named(&docs, "ConfigMap", &name)["data"].as_object().unwrap();
        assert!(!data.is_empty(), "{name} has no mappings");
        for (file, mapping) in data {
            assert!(file.ends_with(".json"), "{file}");
            let mapping: Value = serde_json::from_str(mapping.as_str().unwrap()).unwrap();
            assert!(mapping["request"]["method"].is_string() && mapping["response"]["status"].is_number(), "{mapping}");
        }
    }
    assert!(by_kind(&docs, "Job").is_empty(), "migrate and smoke are off by default");
}

#[tokio::test]
async fn longest_namespace_still_gives_valid_names_and_jobs_render() {
    let namespace = format!("draft-{}-1a2b3c", "x".repeat(50));
    assert_eq!(namespace.len(), 63);
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("jobs.yaml");
    std::fs::write(
        &extra,
        "migrate: {enabled: true, command: [alembic, upgrade, head]}\nsmoke: {enabled: true, command: [\"true\"]}\n",
    )
    .unwrap();
    let release = stand_release(&namespace, vec![draft_values(), extra]);
    assert_eq!(release.name.len(), 53);
    let docs = render(&release).await;
    for doc in &docs {
        let name = doc["metadata"]["name"].as_str().unwrap();
        assert!(is_dns1123_label(name), "{} name {name:?} ({} chars)", doc["kind"], name.len());
    }
    let jobs = by_kind(&docs, "Job");
    assert_eq!(jobs.len(), 2);
    let migrate = jobs.iter().find(|j| j["metadata"]["labels"]["app.kubernetes.io/component"] == "migrate").unwrap();
    let c = &migrate["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"], serde_json::json!(["alembic", "upgrade", "head"]));
    assert_eq!(migrate["spec"]["template"]["spec"]["restartPolicy"], "Never");
    // The mock URLs follow the (cut) Service names.
    let app = named(&docs, "Deployment", &release.name);
    let url = env_value(&app["spec"]["template"]["spec"]["containers"][0], "PAYMENTS_URL").unwrap();
    let service = url.trim_start_matches("http://").trim_end_matches(":8080");
    named(&docs, "Service", service);
}

#[tokio::test]
async fn template_without_host_has_no_ingress() {
    let mut release = stand_release(NAMESPACE, vec![draft_values()]);
    release.set.remove("host");
    assert!(by_kind(&render(&release).await, "Ingress").is_empty());
}

/// An approved fork's stand (`forks = "approve"`) gets every mock, whatever the project's values
/// enable: draftd sets `mocksOnly` to the string "true", as it sets every value.
#[tokio::test]
async fn mocks_only_renders_every_mock_the_values_turn_off() {
    let dir = tempfile::tempdir().unwrap();
    let off = dir.path().join("off.yaml");
    std::fs::write(&off, "mocks: {payments: {enabled: false}, email: {enabled: false}, sms: {enabled: false}}\n")
        .unwrap();
    let mut release = stand_release(NAMESPACE, vec![draft_values(), off]);
    let mocks = |docs: &[Value]| {
        by_kind(docs, "Deployment")
            .iter()
            .filter(|d| d["metadata"]["name"].as_str().unwrap().contains("-mock-"))
            .count()
    };
    assert_eq!(mocks(&render(&release).await), 0, "the project turned its mocks off");
    release.set.insert("mocksOnly".into(), "true".into());
    let docs = render(&release).await;
    assert_eq!(mocks(&docs), 3);
    let c = &named(&docs, "Deployment", NAMESPACE)["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env_value(c, "PAYMENTS_URL"), Some("http://draft-feature-login-mock-payments:8080"));
    assert_eq!(env_value(c, "SMS_URL"), Some("http://draft-feature-login-mock-sms:8080"));
}

#[tokio::test]
async fn set_strings_reach_helm_verbatim_and_stay_strings() {
    let mut release = stand_release(NAMESPACE, vec![draft_values()]);
    release.set.insert("env.ODD".into(), r"a,b={c}\d".into());
    release.set.insert("stand.id".into(), "0042".into());
    let docs = render(&release).await;
    let c = &named(&docs, "Deployment", NAMESPACE)["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env_value(c, "ODD"), Some(r"a,b={c}\d"));
    assert_eq!(docs[0]["metadata"]["labels"]["draftd.io/stand"], "0042");
}

#[tokio::test]
async fn helm_failure_never_shows_set_values() {
    // A chart that echoes a value in its error, as real charts do with `required`/`fail`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("Chart.yaml"), "apiVersion: v2\nname: leaky\nversion: 0.1.0\n").unwrap();
    std::fs::write(dir.path().join("templates/x.yaml"), "{{ fail (printf \"bad token %s\" .Values.token) }}\n")
        .unwrap();
    let secret = "s3cr3t-t0ken,with-comma";
    let release = Release {
        name: "leaky".into(),
        namespace: "draft-x".into(),
        chart: dir.path().to_owned(),
        values: vec![],
        set: BTreeMap::from([("token".into(), secret.into())]),
    };
    let err = helm().template(&release).await.unwrap_err();
    let text = format!("{err} {err:?} {:?}", StepError::from(err.clone()));
    assert!(text.contains("bad token"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(text.contains(&format!("token={REDACTED}")), "{text}");
    assert!(!format!("{release:?}").contains("s3cr3t"));
}

#[tokio::test]
async fn version_is_helm_4() {
    let v = helm().version().await.unwrap();
    assert!(v.starts_with("v4."), "{v}");
}

// (c) history

#[test]
fn recorded_history_parses() {
    let json = std::fs::read_to_string(root().join("tests/fixtures/helm/history.json")).unwrap();
    let history = parse_history(&json).unwrap();
    let revisions: Vec<(u32, &str)> = history.iter().map(|r| (r.revision, r.status.as_str())).collect();
    assert_eq!(
        revisions,
        [(1, "superseded"), (2, "superseded"), (3, "failed"), (4, "deployed"), (5, "pending-upgrade")]
    );
    assert_eq!(history[0].chart, "stand-0.1.0");
    assert_eq!(history[0].app_version, "0.0.0");
    assert_eq!(history[0].updated, "2025-11-20T09:12:44.518372911Z");
    assert_eq!(history[3].description, "Rollback to 2");
    assert!(history[2].description.contains("Required value"));
    assert!(history[3].is_deployed() && history[4].is_pending());
    assert_eq!(history[4].updated, "", "Helm 4 leaves `updated` out when unknown");
    assert_eq!(history.iter().rev().find(|r| r.is_deployed()).map(|r| r.revision), Some(4));

    assert_eq!(parse_history("[]\n").unwrap(), vec![]);
    assert!(parse_history("Error: something").is_err());
}

#[test]
fn release_json_gives_the_revision() {
    let json = r#"{"name":"draft-x","info":{"status":"deployed"},"config":{"token":"s3cr3t"},"version":7,"namespace":"draft-x"}"#;
    assert_eq!(parse_release_revision(json).map(|r| (r.revision, r.status)), Ok((7, "deployed".to_owned())));
    let chatty = format!("Release \"draft-x\" does not exist. Installing it now.\n{json}\n");
    assert_eq!(parse_release_revision(&chatty).map(|r| r.revision), Ok(7));
    let err = parse_release_revision(r#"{"config":{"token":"s3cr3t"},"version":"seven"}"#).unwrap_err();
    assert!(!err.contains("s3cr3t") && !err.contains("seven"), "{err}");
    assert!(parse_release_revision("not json").is_err());
    // As Helm 4 prints it: info.last_deployed is the revision's `updated` in `helm history`.
    let made = parse_release_revision(
        r#"{"name":"r1","info":{"first_deployed":"2026-12-06T18:33:37.063311877Z","last_deployed":"2026-12-06T18:33:37.329841538Z","description":"Upgrade complete","status":"deployed"},"version":2}"#,
    )
    .unwrap();
    assert_eq!(made.updated, "2026-12-06T18:33:37.329841538Z");
    assert!(made.is(2, "2026-12-06T18:33:37.329841538Z") && !made.is(2, "2026-12-06T18:33:37.063311877Z"));
}

// (d) argv and names

#[test]
fn upgrade_argv_keeps_values_order_and_redacts_set_strings() {
    let release = Release {
        name: "draft-feature-login".into(),
        namespace: "draft-feature-login".into(),
        chart: "charts/stand".into(),
        values: vec!["charts/stand/values-base.yaml".into(), "values/draft.yaml".into(), "values/shop.yaml".into()],
        set: BTreeMap::from([
            ("image.tag".into(), TAG.into()),
            ("db.password".into(), "hunter2,x".into()),
            ("host".into(), HOST.into()),
        ]),
    };
    let argv = upgrade_install_argv(&release);
    let args: Vec<String> = argv.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
    assert_eq!(
        args,
        [
            "upgrade",
            "--install",
            "draft-feature-login",
            "charts/stand",
            "--namespace",
            "draft-feature-login",
            "--reset-values",
            "--values",
            "charts/stand/values-base.yaml",
            "--values",
            "values/draft.yaml",
            "--values",
            "values/shop.yaml",
            "--set-string",
            r"db.password=hunter2\,x",
            "--set-string",
            "host=42.draft.example.com",
            "--set-string",
            "image.tag=draft-feature-login-abc1234",
            "--output",
            "json",
        ]
    );
    assert!(!args.iter().any(|a| a == "--wait" || a == "--rollback-on-failure" || a == "--atomic"));
    let shown = argv.to_string();
    assert!(shown.starts_with("helm upgrade --install draft-feature-login charts/stand"), "{shown}");
    assert!(shown.contains("--set-string db.password=*** --set-string host=*** --set-string image.tag=***"), "{shown}");
    assert!(!shown.contains("hunter2") && !format!("{argv:?}").contains("hunter2"), "{shown}");

    let template = template_argv(&release, Some("1.30.0"));
    let args: Vec<String> = template.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
    assert_eq!(args[..5], ["template", "draft-feature-login", "charts/stand", "--namespace", "draft-feature-login"]);
    assert_eq!(args[args.len() - 2..], ["--kube-version", "1.30.0"]);
    let files: Vec<&str> = args.windows(2).filter(|w| w[0] == "--values").map(|w| w[1].as_str()).collect();
    assert_eq!(files, ["charts/stand/values-base.yaml", "values/draft.yaml", "values/shop.yaml"]);
    assert!(!template_argv(&release, None).args().iter().any(|a| a == "--kube-version"));
}

#[test]
fn set_values_are_escaped_for_helm() {
    assert_eq!(escape_set_value("plain-value.1"), "plain-value.1");
    assert_eq!(escape_set_value(r"a,b\c{d}"), r"a\,b\\c\{d\}");
    assert_eq!(escape_set_value("k=v"), "k=v");
}

#[test]
fn release_names_fit_helm() {
    assert_eq!(release_name("draft-feature-login"), "draft-feature-login");
    let exactly = format!("draft-{}", "a".repeat(47));
    assert_eq!(release_name(&exactly), exactly);

    let long = format!("draft-{}-1a2b3c", "x".repeat(50));
    let name = release_name(&long);
    assert_eq!(name.len(), 53, "{name}");
    assert!(name.starts_with("draft-xxxx") && is_dns1123_label(&name), "{name}");
    assert_eq!(release_name(&long), name, "stable");
    let other = format!("draft-{}-4d5e6f", "x".repeat(50));
    assert_ne!(release_name(&other), name, "namespaces sharing a beginning get different names");
    // A cut that would end in '-' does not.
    let dashy = format!("draft-{}-{}", "y".repeat(39), "z".repeat(20));
    assert!(is_dns1123_label(&release_name(&dashy)) && release_name(&dashy).len() <= 53);
}

// (e) locating helm

#[test]
fn locate_explains_how_to_get_helm() {
    let empty = tempfile::tempdir().unwrap();
    let err = HelmCli::locate(Some(Path::new("/nonexistent/helm")), empty.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, HelmError::NotFound { .. }), "{err:?}");
    assert!(text.contains("/nonexistent/helm"), "{text}");
    assert!(text.contains("scripts/install-tools.sh") && text.contains("[cluster] helm_path"), "{text}");
    let step = StepError::from(err);
    assert_eq!((step.kind, step.label.as_str()), (StepErrorKind::Permanent, "helm_missing"));

    // A relative helm_path is the project's; .tools/bin/helm is found without configuration.
    let project = root();
    assert_eq!(HelmCli::locate(Some(Path::new(".tools/bin/helm")), &project).unwrap(), project.join(".tools/bin/helm"));
    assert_eq!(HelmCli::locate(None, &project).unwrap(), project.join(".tools/bin/helm"));
    // Not executable is not found.
    let file = empty.path().join("helm");
    std::fs::write(&file, "").unwrap();
    assert!(HelmCli::locate(Some(&file), empty.path()).is_err());
}

// (f) classification, and the cluster commands through a fake helm

fn failed(stderr: &str) -> HelmError {
    HelmError::Failed { command: "helm upgrade".into(), code: Some(1), stderr: stderr.into() }
}

#[test]
fn transient_and_permanent_failures_are_told_apart() {
    let transient = [
        "Error: Kubernetes cluster unreachable: Get \"https://10.0.0.1:6443/version\": dial tcp 10.0.0.1:6443: connect: connection refused",
        "Error: UPGRADE FAILED: Get \"https://api.k8s:6443/api/v1/namespaces/x/secrets\": dial tcp: lookup api.k8s: i/o timeout",
        "Error: Kubernetes cluster unreachable: Get \"https://api:6443/version\": net/http: TLS handshake timeout",
        "Error: UPGRADE FAILED: etcdserver: request timed out",
        "Error: UPGRADE FAILED: the server is currently unable to handle the request (get deployments.apps x)",
        "Error: INSTALLATION FAILED: context deadline exceeded",
    ];
    for stderr in transient {
        let err = failed(stderr);
        assert!(err.is_transient(), "{stderr}");
        let step = StepError::from(err);
        assert_eq!((step.kind, step.label.as_str()), (StepErrorKind::Transient, "helm_failed"), "{stderr}");
    }
    let permanent = [
        "Error: INSTALLATION FAILED: 1 error occurred:\n\t* Deployment.apps \"x\" is invalid: spec.template.spec.containers[0].image: Required value",
        "Error: UPGRADE FAILED: template: stand/templates/job-smoke.yaml:9:4: executing: error calling fail: smoke.enabled needs smoke.command",
        "Error: path \"charts/nope\" not found",
        "Error: INSTALLATION FAILED: chart requires kubeVersion: >=1.30.0-0 which is incompatible with Kubernetes v1.29.4",
    ];
    for stderr in permanent {
        let step = StepError::from(failed(stderr));
        assert_eq!((step.kind, step.label.as_str()), (StepErrorKind::Permanent, "helm_failed"), "{stderr}");
    }
    let locked = failed("Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress");
    assert!(locked.is_locked() && !locked.is_transient());
    assert_eq!(StepError::from(locked).label, "helm_locked");

    let timeout = HelmError::Timeout { command: "helm upgrade".into(), after: Duration::from_secs(300) };
    let step = StepError::from(timeout);
    assert_eq!((step.kind, step.label.as_str()), (StepErrorKind::Transient, "helm_timeout"));
    assert!(step.message.contains("5m"), "{}", step.message);
    let parse = HelmError::Parse { command: "helm history".into(), message: "not JSON".into() };
    assert_eq!(StepError::from(parse).kind, StepErrorKind::Permanent);
}

/// A stand-in for helm: a shell script that logs its arguments to `args.log` and runs `body`.
fn fake_helm(dir: &Path, body: &str) -> HelmCli {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("helm");
    let log = dir.join("args.log");
    std::fs::write(&path, format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n{body}\n", log.display())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Let any fork of a parallel test that inherited the write handle exec first (ETXTBSY).
    std::thread::sleep(Duration::from_millis(100));
    let mut cli = HelmCli::new(path);
    cli.timeout = Duration::from_secs(10);
    cli
}

fn logged_args(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("args.log")).unwrap().lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn upgrade_install_reads_the_revision_and_passes_cluster_flags() {
    let dir = tempfile::tempdir().unwrap();
    let mut cli = fake_helm(dir.path(), r#"echo '{"name":"draft-x","version":3,"namespace":"draft-x"}'"#);
    cli.kubeconfig = Some("/etc/draftd/kubeconfig".into());
    cli.context = Some("drafts".into());
    let release = stand_release("draft-x", vec![draft_values()]);
    assert_eq!(cli.upgrade_install(&release).await.unwrap().revision, 3);
    let args = logged_args(dir.path());
    assert_eq!(args[..4], ["upgrade", "--install", "draft-x", chart().to_str().unwrap()]);
    assert_eq!(args[args.len() - 4..], ["--kubeconfig", "/etc/draftd/kubeconfig", "--kube-context", "drafts"]);
}

#[tokio::test]
async fn uninstall_of_a_missing_release_succeeds_and_other_failures_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let cli =
        fake_helm(dir.path(), "echo 'Error: uninstall: Release not loaded: draft-x: release: not found' >&2; exit 1");
    cli.uninstall("draft-x", "draft-x").await.unwrap();
    assert!(logged_args(dir.path()).contains(&"--ignore-not-found".to_owned()));
    let cli = fake_helm(dir.path(), "echo 'Error: Kubernetes cluster unreachable: connection refused' >&2; exit 1");
    let err = cli.uninstall("draft-x", "draft-x").await.unwrap_err();
    assert!(err.is_transient(), "{err}");

    let cli = fake_helm(dir.path(), "echo 'Error: release: not found' >&2; exit 1");
    assert_eq!(cli.history("draft-x", "draft-x").await.unwrap(), vec![]);
}

#[tokio::test]
async fn a_hung_helm_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let mut cli = fake_helm(dir.path(), &format!("echo $$ > '{}'\nexec sleep 30", pid_file.display()));
    cli.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = cli.rollback("draft-x", "draft-x", 2).await.unwrap_err();
    assert!(matches!(err, HelmError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(StepError::from(err).label, "helm_timeout");
    // The process is gone (killed, then reaped by tokio).
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
    {
        assert!(Instant::now() < deadline, "helm (pid {pid}) still running after its timeout");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// WireMock is a JVM: heap, metaspace, code cache and direct memory each take their own room, plus
/// threads and the JVM itself. With the chart's defaults and with values/draft.yaml every pool is
/// capped and the caps fit the container's memory limit with room to spare; a limit at the heap's
/// size (192Mi for a 128m heap, as draft.yaml once had) gets the mock OOM-killed under load.
#[tokio::test]
async fn the_mocks_jvm_fits_its_memory_limit() {
    fn mib(flag: &str, opts: &str) -> Option<f64> {
        let value = opts.split_whitespace().find_map(|o| o.strip_prefix(flag))?;
        let (number, unit) = value.split_at(value.len() - 1);
        let n: f64 = number.parse().ok()?;
        Some(match unit {
            "m" | "M" => n,
            "g" | "G" => n * 1024.0,
            "k" | "K" => n / 1024.0,
            _ => return None,
        })
    }
    for values in [vec![], vec![draft_values()]] {
        let docs = render(&stand_release(NAMESPACE, values.clone())).await;
        let mut mocks = 0;
        for (name, pod) in pod_specs(&docs) {
            let Some(c) = pod["containers"].as_array().unwrap().iter().find(|c| c["name"] == "wiremock") else {
                continue;
            };
            mocks += 1;
            let opts = env_value(c, "JAVA_OPTS").unwrap_or_else(|| panic!("{name}: JAVA_OPTS"));
            let caps: Vec<f64> =
                ["-Xmx", "-XX:MaxMetaspaceSize=", "-XX:ReservedCodeCacheSize=", "-XX:MaxDirectMemorySize="]
                    .iter()
                    .map(|flag| mib(flag, opts).unwrap_or_else(|| panic!("{name}: {flag} is not capped in {opts:?}")))
                    .collect();
            let limit = c["resources"]["limits"]["memory"].as_str().unwrap();
            let limit = limit.strip_suffix("Mi").map(|n| n.parse::<f64>().unwrap()).expect("a limit in Mi");
            // Thread stacks, GC structures and the JVM's own memory: at least 48Mi beyond the caps.
            let needed = caps.iter().sum::<f64>() + 48.0;
            assert!(limit >= needed, "{name} ({values:?}): limit {limit}Mi, JVM caps {caps:?} need {needed}Mi");
        }
        assert!(values.is_empty() || mocks == 3, "draft.yaml turns the three mocks on: {mocks}");
    }
}
