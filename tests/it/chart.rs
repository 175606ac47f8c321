//! deploy/chart, draftd's own Helm chart, rendered by the real Helm 4 that scripts/install-tools.sh puts in
//! `.tools/bin/helm`: strict lint, the serve Deployment (probes, hardening, config checksum, secrets by
//! reference only), RBAC and reaper CronJob identical to deploy/rbac.yaml and deploy/reaper-cronjob.yaml,
//! the optional ServiceMonitor and Ingress, and a rendered draftd.toml that draftd's own loader accepts
//! with the environment the chart gives the pod.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use draftd::config::{ClusterMode, Config, Projects};
use serde::Deserialize;
use serde_json::{Value, json};

const NAMESPACE: &str = "draftd";
/// The chart's minimum (Chart.yaml kubeVersion): what renders there renders on every later version.
const KUBE_VERSION: &str = "1.30.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("deploy/chart")
}

/// Everything the chart can render switched on (also chart-testing's `ci/` convention).
fn all_values() -> PathBuf {
    chart().join("ci/all-values.yaml")
}

/// The project's Helm 4. Missing is a failure, not a skip: these tests are the chart's only check.
fn helm_path() -> PathBuf {
    let path = root().join(".tools/bin/helm");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-tools.sh (installs Helm 4 and kubectl into .tools/bin)",
        path.display()
    );
    path
}

/// Runs helm; stdout and stderr together, and whether it exited 0.
fn helm(args: &[&str]) -> (bool, String) {
    let out = Command::new(helm_path()).args(args).output().expect("helm runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_file(path: &Path) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `helm template <release> deploy/chart -n draftd <extra…>`, as JSON documents.
fn render_release(release: &str, extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", release, chart.to_str().unwrap(), "--namespace", NAMESPACE];
    args.extend(["--kube-version", KUBE_VERSION]);
    args.extend(extra);
    let (ok, out) = helm(&args);
    assert!(ok, "helm {args:?}:\n{out}");
    documents(&out)
}

fn render(extra: &[&str]) -> Vec<Value> {
    render_release("draftd", extra)
}

fn render_all() -> Vec<Value> {
    render(&["-f", all_values().to_str().unwrap()])
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "one {kind}, found {}", found.len());
    found[0]
}

fn deployment_pod(docs: &[Value]) -> &Value {
    &one(docs, "Deployment")["spec"]["template"]["spec"]
}

fn cronjob_pod(docs: &[Value]) -> &Value {
    &one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
}

fn only_container(pod: &Value) -> &Value {
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container: draftd");
    &containers[0]
}

/// Both pods that run draftd, with a name for messages.
fn draftd_pods(docs: &[Value]) -> Vec<(&'static str, &Value)> {
    vec![("serve", deployment_pod(docs)), ("reaper", cronjob_pod(docs))]
}

fn env(container: &Value) -> &[Value] {
    container["env"].as_array().map(Vec::as_slice).unwrap_or_default()
}

fn literal_env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    env(container).iter().find(|e| e["name"] == name).and_then(|e| e["value"].as_str())
}

fn rbac_yaml() -> Vec<Value> {
    documents(&std::fs::read_to_string(root().join("deploy/rbac.yaml")).unwrap())
}

fn reaper_cronjob_yaml() -> Value {
    let docs = documents(&std::fs::read_to_string(root().join("deploy/reaper-cronjob.yaml")).unwrap());
    docs.into_iter().find(|d| d["kind"] == "CronJob").expect("deploy/reaper-cronjob.yaml has the CronJob")
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn rendered_toml(docs: &[Value]) -> String {
    one(docs, "ConfigMap")["data"]["draftd.toml"].as_str().expect("data.draftd.toml").to_owned()
}

#[test]
fn lint_is_strict_clean_with_defaults_and_with_everything_enabled() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let all = all_values();
    let cases: [&[&str]; 3] =
        [&[], &["--set", "serviceMonitor.enabled=true,ingress.enabled=true"], &["-f", all.to_str().unwrap()]];
    for extra in cases {
        let mut args = vec!["lint", "--strict", chart, "--kube-version", KUBE_VERSION];
        args.extend(extra);
        let (ok, out) = helm(&args);
        assert!(ok, "helm {args:?}:\n{out}");
        assert!(out.contains("0 chart(s) failed"), "{out}");
        assert!(!out.contains("[WARNING]") && !out.contains("[ERROR]"), "helm {args:?}:\n{out}");
    }
}

#[test]
fn serve_answers_on_the_http_port_with_liveness_readiness_and_startup_probes() {
    for docs in [render(&[]), render_all()] {
        let container = only_container(deployment_pod(&docs));
        let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args, ["serve"]);
        let port = &container["ports"].as_array().unwrap()[0];
        assert_eq!(port["name"], "http");
        let container_port = port["containerPort"].as_u64().unwrap();
        assert_eq!(
            literal_env(container, "DRAFTD_LISTEN"),
            Some(format!("0.0.0.0:{container_port}").as_str()),
            "draftd listens on every interface at the port the probes and the Service use"
        );
        for (probe, path) in
            [("livenessProbe", "/health"), ("readinessProbe", "/health/ready"), ("startupProbe", "/health/startup")]
        {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{probe}");
            assert_eq!(get["port"], "http", "{probe}");
            assert!(container[probe]["periodSeconds"].as_u64().is_some(), "{probe} timing from values");
        }
        let startup = &container["startupProbe"];
        let allowed = startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
        assert!(allowed >= 120, "migrations get at least two minutes before a restart, got {allowed}s");

        let service = one(&docs, "Service");
        let service_port = &service["spec"]["ports"][0];
        assert_eq!(service_port["targetPort"], "http");
        let pod_labels = &one(&docs, "Deployment")["spec"]["template"]["metadata"]["labels"];
        for (key, value) in service["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&pod_labels[key], value, "the Service selects serve's pods by {key}");
        }
        assert_eq!(pod_labels["app.kubernetes.io/component"], "server", "and not the reaper's");
    }
}

#[test]
fn pods_run_as_non_root_on_a_read_only_root_filesystem_without_capabilities() {
    for docs in [render(&[]), render_all()] {
        for (which, pod) in draftd_pods(&docs) {
            let sc = &pod["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{which}");
            assert!(sc["runAsUser"].as_u64().is_some_and(|u| u > 0), "{which}: a numeric non-root user");
            assert!(sc["runAsGroup"].as_u64().is_some_and(|g| g > 0), "{which}: a numeric non-root group");
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{which}");
            let container = only_container(pod);
            let csc = &container["securityContext"];
            assert_eq!(csc["readOnlyRootFilesystem"], true, "{which}");
            assert_eq!(csc["allowPrivilegeEscalation"], false, "{which}");
            assert_eq!(csc["capabilities"]["drop"], json!(["ALL"]), "{which}");
            assert!(csc["capabilities"]["add"].is_null() && csc["privileged"] != true, "{which}");
            let resources = &container["resources"];
            assert!(resources["requests"]["memory"].is_string(), "{which}: {resources}");
            assert!(resources["limits"]["memory"].is_string(), "{which}: {resources}");
            // helm's and the kube client's caches (the image points HELM_*_HOME and KUBECACHEDIR there).
            let tmp = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == "/tmp");
            let tmp = tmp.unwrap_or_else(|| panic!("{which}: /tmp is mounted"));
            let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == tmp["name"]).unwrap();
            assert!(volume["emptyDir"]["sizeLimit"].is_string(), "{which}: /tmp is a bounded emptyDir");
        }
    }
    let docs = render(&[]);
    let values = yaml_file(&chart().join("values.yaml"));
    assert_eq!(
        only_container(deployment_pod(&docs))["resources"],
        values["resources"],
        "serve's resources are values'"
    );
}

#[test]
fn a_config_change_rolls_the_deployment() {
    let checksum = |docs: &[Value]| -> String {
        let annotation = &one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"];
        annotation.as_str().expect("checksum/config annotation").to_owned()
    };
    let base = checksum(&render(&[]));
    assert_eq!(base.len(), 64, "a sha256: {base}");
    assert!(base.bytes().all(|b| b.is_ascii_hexdigit()), "{base}");
    assert_eq!(checksum(&render(&[])), base, "the same config, the same checksum: no needless rollout");
    assert_eq!(
        checksum(&render(&["--set", "podAnnotations.example\\.com/x=y,replicaCount=3"])),
        base,
        "only the ConfigMap's content counts"
    );

    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("draftd.toml");
    std::fs::write(&changed, "[cluster]\nmode = \"kubernetes\"\n\n[stands]\nttl = \"24h\"\n").unwrap();
    let docs = render(&["--set-file", &format!("config={}", changed.display())]);
    assert_ne!(checksum(&docs), base, "a changed draftd.toml changes the pod template");
    assert!(rendered_toml(&docs).contains("ttl = \"24h\""), "the ConfigMap carries the new config");
}

/// Names of variables that carry secrets; none may have a literal value in a pod spec.
fn looks_secret(name: &str) -> bool {
    ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "PRIVATE", "DATABASE_URL", "PG_URL", "CREDENTIAL"]
        .iter()
        .any(|word| name.contains(word))
}

/// (name, secret, key, optional) of each `secrets.env` entry of a values file, the Secret resolved
/// to `secrets.existingSecret` when the entry names none.
fn secret_env_of(values: &Value, fallback: &Value) -> Vec<(String, String, String, bool)> {
    let secrets = if values["secrets"].is_null() { &fallback["secrets"] } else { &values["secrets"] };
    let default = secrets["existingSecret"].as_str().unwrap_or_default();
    secrets["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["secret"].as_str().unwrap_or(default).to_owned(),
                e["key"].as_str().unwrap().to_owned(),
                e["optional"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn secrets_reach_the_pods_only_by_reference_to_existing_secrets() {
    let defaults = yaml_file(&chart().join("values.yaml"));
    let all = yaml_file(&all_values());
    for (docs, values) in [(render(&[]), &defaults), (render_all(), &all)] {
        assert!(of_kind(&docs, "Secret").is_empty(), "the chart never creates a Secret");
        let expected = secret_env_of(values, &defaults);
        assert!(!expected.is_empty());
        for (which, pod) in draftd_pods(&docs) {
            let container = only_container(pod);
            assert!(container["envFrom"].is_null(), "{which}: every variable is named, none imported wholesale");
            let mut from_secrets = Vec::new();
            for e in env(container) {
                let name = e["name"].as_str().unwrap();
                if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                    assert!(e["value"].is_null(), "{which}: {name} has a value beside its reference");
                    from_secrets.push((
                        name.to_owned(),
                        r["name"].as_str().unwrap().to_owned(),
                        r["key"].as_str().unwrap().to_owned(),
                        r.get("optional").and_then(Value::as_bool).unwrap_or(false),
                    ));
                } else {
                    assert!(e["value"].is_string(), "{which}: {name} is a literal or a secretKeyRef: {e}");
                    assert!(!looks_secret(name), "{which}: {name} looks like a secret but has a literal value");
                }
            }
            assert_eq!(from_secrets, expected, "{which}: exactly the values' secrets.env, in order");
        }
    }
    // The files Secret is mounted only when named, and read-only.
    assert!(!deployment_pod(&render(&[]))["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "files"));
    let docs = render_all();
    for (which, pod) in draftd_pods(&docs) {
        let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "files").expect(which);
        assert_eq!(volume["secret"]["secretName"], all["secrets"]["files"]["existingSecret"], "{which}");
        let mount = only_container(pod)["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "files");
        let mount = mount.unwrap_or_else(|| panic!("{which}: files mounted"));
        assert_eq!(mount["mountPath"], "/var/run/secrets/draftd", "{which}");
        assert_eq!(mount["readOnly"], true, "{which}");
    }
}

#[test]
fn serve_and_the_reaper_run_as_the_charts_service_account() {
    let docs = render(&[]);
    let account = one(&docs, "ServiceAccount");
    let name = account["metadata"]["name"].as_str().unwrap();
    assert_eq!(account["metadata"]["namespace"], NAMESPACE);
    let documented = rbac_yaml().into_iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    assert_eq!(name, documented["metadata"]["name"], "release `draftd` gives deploy/rbac.yaml's names");
    for (which, pod) in draftd_pods(&docs) {
        assert_eq!(pod["serviceAccountName"], name, "{which}");
        assert_eq!(pod["automountServiceAccountToken"], true, "{which}: the in-cluster client needs the token");
        assert_eq!(
            literal_env(only_container(pod), "DRAFTD_CLUSTER__SERVICE_ACCOUNT"),
            Some(format!("{NAMESPACE}/{name}").as_str()),
            "{which}: [cluster] service_account, which draftd binds the stand role to"
        );
    }
    let binding = one(&docs, "ClusterRoleBinding");
    assert_eq!(binding["subjects"], json!([{ "kind": "ServiceAccount", "name": name, "namespace": NAMESPACE }]));

    // An account made elsewhere: used, not created.
    let docs = render(&["--set", "serviceAccount.create=false,serviceAccount.name=platform-draftd"]);
    assert!(of_kind(&docs, "ServiceAccount").is_empty());
    for (which, pod) in draftd_pods(&docs) {
        assert_eq!(pod["serviceAccountName"], "platform-draftd", "{which}");
    }
    assert_eq!(one(&docs, "ClusterRoleBinding")["subjects"][0]["name"], "platform-draftd");
    let (ok, out) = helm(&["template", "draftd", chart().to_str().unwrap(), "--set", "serviceAccount.create=false"]);
    assert!(!ok && out.contains("serviceAccount.name is required"), "{out}");
}

#[test]
fn the_charts_rbac_is_deploy_rbac_yaml_rule_for_rule() {
    let documented = rbac_yaml();
    let docs = render(&[]);
    let kinds = |docs: &[Value]| -> BTreeSet<(String, String)> {
        docs.iter()
            .filter(|d| d["kind"].as_str().is_some_and(|k| k.starts_with("Cluster")))
            .map(|d| (d["kind"].as_str().unwrap().to_owned(), d["metadata"]["name"].as_str().unwrap().to_owned()))
            .collect()
    };
    assert_eq!(kinds(&docs), kinds(&documented), "the same cluster-scoped objects");
    for role in documented.iter().filter(|d| d["kind"] == "ClusterRole") {
        let name = role["metadata"]["name"].as_str().unwrap();
        let rendered = named(&docs, "ClusterRole", name);
        assert_eq!(rendered["rules"], role["rules"], "ClusterRole {name}'s rules");
        assert_eq!(rendered["aggregationRule"], role["aggregationRule"], "ClusterRole {name}'s aggregation");
        let aggregate = |r: &Value| r["metadata"]["labels"]["draftd.io/aggregate-to"].clone();
        assert_eq!(aggregate(rendered), aggregate(role), "ClusterRole {name}'s aggregation label");
    }
    for kind in ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] {
        let policy = |docs: &[Value]| {
            let mut spec = one(docs, kind)["spec"].clone();
            // The user name and the policy's name follow the release's; the rest is the same.
            spec["matchConditions"] = Value::Null;
            spec["policyName"] = Value::Null;
            spec
        };
        assert_eq!(policy(&docs), policy(&documented), "{kind}");
    }
    assert!(
        one(&docs, "ValidatingAdmissionPolicy")["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .unwrap()
            .contains("'system:serviceaccount:draftd:draftd'"),
        "the policy fences in the chart's own ServiceAccount"
    );
    let binding = documented.iter().find(|d| d["kind"] == "ClusterRoleBinding").unwrap();
    let rendered = one(&docs, "ClusterRoleBinding");
    assert_eq!(rendered["roleRef"], binding["roleRef"]);
    assert_eq!(rendered["subjects"], binding["subjects"]);
    assert_eq!(
        literal_env(only_container(deployment_pod(&docs)), "DRAFTD_CLUSTER__STAND_ROLE"),
        Some("draftd-stand"),
        "[cluster] stand_role is the role the chart made"
    );

    // Another release name: its own roles, and the bind rule follows the stand role's name.
    let docs = render_release("preview", &[]);
    let stand_role = literal_env(only_container(deployment_pod(&docs)), "DRAFTD_CLUSTER__STAND_ROLE").unwrap();
    assert_eq!(stand_role, "preview-draftd-stand");
    let binding = one(&docs, "ClusterRoleBinding");
    let wide = named(&docs, "ClusterRole", binding["roleRef"]["name"].as_str().unwrap());
    let bind = wide["rules"].as_array().unwrap().iter().find(|r| r["verbs"] == json!(["bind"])).unwrap();
    assert_eq!(bind["resourceNames"], json!([stand_role]), "draftd may bind its own stand role only");
    let stand = named(&docs, "ClusterRole", stand_role);
    let selector = &stand["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"]["draftd.io/aggregate-to"];
    assert_eq!(selector, stand_role, "the stand role aggregates its own base");
    let base = named(&docs, "ClusterRole", &format!("{stand_role}-base"));
    assert_eq!(base["metadata"]["labels"]["draftd.io/aggregate-to"], stand_role);
    assert_eq!(base["rules"], named(&documented, "ClusterRole", "draftd-stand-base")["rules"]);

    let docs = render(&["--set", "rbac.create=false"]);
    assert!(of_kind(&docs, "ClusterRole").is_empty() && of_kind(&docs, "ClusterRoleBinding").is_empty());
    assert!(of_kind(&docs, "ValidatingAdmissionPolicy").is_empty());
    let serve = only_container(deployment_pod(&docs));
    assert_eq!(literal_env(serve, "DRAFTD_CLUSTER__STAND_ROLE"), None, "the config's stand_role stands");
}

#[test]
fn the_reaper_cronjob_is_deploy_reaper_cronjob_yaml() {
    let documented = reaper_cronjob_yaml();
    let docs = render(&[]);
    let cronjob = one(&docs, "CronJob");
    assert_eq!(cronjob["metadata"]["name"], documented["metadata"]["name"]);
    for key in [
        "schedule",
        "concurrencyPolicy",
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        assert_eq!(cronjob["spec"][key], documented["spec"][key], "spec.{key}");
    }
    let job = &cronjob["spec"]["jobTemplate"]["spec"];
    for key in ["backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"] {
        assert_eq!(job[key], documented["spec"]["jobTemplate"]["spec"][key], "jobTemplate.spec.{key}");
    }
    let pod = cronjob_pod(&docs);
    let documented_pod = &documented["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    for key in ["restartPolicy", "automountServiceAccountToken", "serviceAccountName"] {
        assert_eq!(pod[key], documented_pod[key], "pod {key}");
    }
    for key in ["runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile"] {
        assert_eq!(pod["securityContext"][key], documented_pod["securityContext"][key], "pod securityContext.{key}");
    }
    let container = only_container(pod);
    let documented_container = only_container(documented_pod);
    for key in ["args", "securityContext", "resources"] {
        assert_eq!(container[key], documented_container[key], "container {key}");
    }
    for name in ["DRAFTD_CONFIG", "DRAFTD_LOG_FORMAT"] {
        assert_eq!(literal_env(container, name), literal_env(documented_container, name), "{name}");
    }
    let mounts = |c: &Value| -> BTreeMap<String, String> {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["name"].as_str().unwrap().to_owned(), m["mountPath"].as_str().unwrap().to_owned()))
            .collect()
    };
    let (rendered_mounts, documented_mounts) = (mounts(container), mounts(documented_container));
    for (name, path) in &rendered_mounts {
        assert_eq!(documented_mounts.get(name), Some(path), "mount {name}");
    }
    let config_volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "config").unwrap();
    assert_eq!(config_volume["configMap"]["name"], one(&docs, "ConfigMap")["metadata"]["name"]);
    assert_eq!(config_volume["configMap"]["name"], "draftd-config", "deploy/reaper-cronjob.yaml's ConfigMap");

    assert!(of_kind(&render(&["--set", "reaper.enabled=false"]), "CronJob").is_empty(), "reaper.enabled=false");
    // The CronJob alone sweeping: serve's in-process reaper goes off.
    let docs = render(&["--set", "reaper.sweepInServe=false"]);
    assert_eq!(literal_env(only_container(deployment_pod(&docs)), "DRAFTD_REAPER__ENABLED"), Some("false"));
    assert_eq!(literal_env(only_container(cronjob_pod(&docs)), "DRAFTD_REAPER__ENABLED"), None);
    assert_eq!(literal_env(only_container(deployment_pod(&render(&[]))), "DRAFTD_REAPER__ENABLED"), None);
    let (ok, out) = helm(&[
        "template",
        "draftd",
        chart().to_str().unwrap(),
        "--set",
        "reaper.enabled=false,reaper.sweepInServe=false",
    ]);
    assert!(!ok && out.contains("nothing would sweep"), "no sweeps at all is refused:\n{out}");
}

#[test]
fn the_service_monitor_and_the_ingress_render_only_when_enabled() {
    let docs = render(&[]);
    assert!(of_kind(&docs, "ServiceMonitor").is_empty(), "off by default: needs the operator's CRDs");
    assert!(of_kind(&docs, "Ingress").is_empty(), "off by default");

    let docs = render(&["--set", "serviceMonitor.enabled=true,ingress.enabled=true"]);
    let service = one(&docs, "Service");
    let monitor = one(&docs, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"], "http");
    assert_eq!(endpoints[0]["path"], "/metrics");
    assert_eq!(service["spec"]["ports"][0]["name"], "http", "the port the ServiceMonitor names");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&service["metadata"]["labels"][key], value, "the ServiceMonitor selects the Service by {key}");
    }
    assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"], json!([NAMESPACE]));

    let ingress = one(&docs, "Ingress");
    for rule in ingress["spec"]["rules"].as_array().unwrap() {
        for path in rule["http"]["paths"].as_array().unwrap() {
            assert_eq!(path["backend"]["service"]["name"], service["metadata"]["name"]);
            assert_eq!(path["backend"]["service"]["port"]["name"], "http");
        }
    }

    let all = render_all();
    let values = yaml_file(&all_values());
    let monitor = one(&all, "ServiceMonitor");
    for (key, value) in values["serviceMonitor"]["labels"].as_object().unwrap() {
        assert_eq!(&monitor["metadata"]["labels"][key], value, "labels Prometheus selects ServiceMonitors by");
    }
    let ingress = one(&all, "Ingress");
    assert_eq!(ingress["spec"]["tls"], values["ingress"]["tls"]);
    assert_eq!(ingress["spec"]["ingressClassName"], values["ingress"]["className"]);
}

/// A stand-in for a secret's value: a URL where draftd wants one.
fn placeholder(name: &str) -> &'static str {
    if name.ends_with("_URL") { "postgres://draftd@db.invalid:5432/draftd" } else { "placeholder" }
}

#[test]
// figment's Jail closures return figment::Error, which is large; that is its API, not ours.
#[allow(clippy::result_large_err)]
fn the_rendered_config_loads_with_draftds_loader_and_the_pods_environment() {
    for (what, docs) in [("defaults", render(&[])), ("ci/all-values.yaml", render_all())] {
        let text = rendered_toml(&docs);
        let parsed = Config::from_toml(&text).unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
        assert_eq!(parsed.cluster.mode, ClusterMode::Kubernetes, "{what}: the chart deploys for real");
        assert!(parsed.cluster.kubeconfig.is_none(), "{what}: the pod's ServiceAccount, not a kubeconfig");

        let pod = deployment_pod(&docs);
        let container = only_container(pod);
        let config_path = literal_env(container, "DRAFTD_CONFIG").unwrap();
        let config_mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "config");
        let mount_path = config_mount.unwrap()["mountPath"].as_str().unwrap();
        assert_eq!(Path::new(config_path), Path::new(mount_path).join("draftd.toml"), "{what}");
        let container_port = container["ports"][0]["containerPort"].as_u64().unwrap();
        let secret_vars: BTreeSet<String> = env(container)
            .iter()
            .filter(|e| e["valueFrom"]["secretKeyRef"].is_object())
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect();

        // As `serve` starts in the pod: the mounted file under the Deployment's environment.
        figment::Jail::expect_with(|jail| {
            jail.create_file("draftd.toml", &text)?;
            for e in env(container) {
                let name = e["name"].as_str().unwrap();
                match e["value"].as_str() {
                    Some(value) => jail.set_env(name, value),
                    None => jail.set_env(name, placeholder(name)),
                }
            }
            let config = Config::load(Some(&jail.directory().join("draftd.toml")))
                .unwrap_or_else(|e| panic!("{what}: serve's environment over the file: {e}"));
            assert_eq!(u64::from(config.listen.port()), container_port, "{what}: listen follows containerPort");
            assert!(config.listen.ip().is_unspecified(), "{what}: reachable by the kubelet and the Service");
            assert_eq!(config.cluster.service_account.as_deref(), Some("draftd/draftd"), "{what}");
            assert_eq!(config.cluster.stand_role, "draftd-stand", "{what}");
            assert_eq!(config.database_url, placeholder("DRAFTD_DATABASE_URL"), "{what}: from the Secret");

            // Every variable a *_env key names is one the chart fills from a Secret.
            Projects::resolve_with(&config, |var| secret_vars.contains(var).then(|| placeholder(var).to_owned()))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let named = [
                config.github.token_env.clone(),
                config.gitlab.token_env.clone(),
                config.postgres.as_ref().map(|p| p.admin_url_env.clone()),
                config.vault.as_ref().and_then(|v| v.token_env.clone()),
                config.vault.as_ref().and_then(|v| v.secret_id_env.clone()),
            ];
            for var in named.into_iter().flatten() {
                assert!(secret_vars.contains(&var), "{what}: {var} is named by the config but not in secrets.env");
            }
            // Files the config names lie in the mounted files Secret.
            let files = [
                config.github.private_key_file.clone(),
                config.vault.as_ref().and_then(|v| v.secret_id_file.clone()),
                config.vault.as_ref().and_then(|v| v.token_file.clone()),
            ];
            for file in files.into_iter().flatten() {
                assert!(file.starts_with("/var/run/secrets/draftd"), "{what}: {}", file.display());
                assert!(pod["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "files"), "{what}");
            }
            Ok(())
        });
    }
    let values = yaml_file(&chart().join("values.yaml"));
    let text = values["config"].as_str().unwrap();
    assert!(!text.contains('@'), "the default config has no credentials in a URL");
}

/// The Dockerfile's instructions (continuations joined, comments dropped) named `keyword`.
fn dockerfile(keyword: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.starts_with('#') || line.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let instruction = std::mem::take(&mut current);
                if let Some((word, rest)) = instruction.split_once(char::is_whitespace)
                    && word.eq_ignore_ascii_case(keyword)
                {
                    out.push(rest.trim().to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn the_chart_runs_the_image_the_way_the_dockerfile_builds_it() {
    let docs = render(&[]);
    let pod = deployment_pod(&docs);
    let container = only_container(pod);

    let user = dockerfile("USER").pop().expect("USER");
    let uid: u64 = user.split(':').next().unwrap().parse().expect("a numeric USER");
    assert_eq!(pod["securityContext"]["runAsUser"], uid, "the pod runs as the image's user");

    let expose = dockerfile("EXPOSE").pop().expect("EXPOSE");
    assert_eq!(container["ports"][0]["containerPort"], expose.parse::<u64>().unwrap(), "the image's port");

    let cmd: Vec<String> = serde_json::from_str(&dockerfile("CMD").pop().expect("CMD")).unwrap();
    let at = cmd.iter().position(|a| a == "--config").expect("CMD names --config");
    assert_eq!(literal_env(container, "DRAFTD_CONFIG"), Some(cmd[at + 1].as_str()), "the image's default config path");

    // The image keeps helm's and the kube client's state under a writable mount of the chart.
    let writable: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["readOnly"] != true)
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    let env_lines = dockerfile("ENV").join(" ");
    for var in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME", "KUBECACHEDIR"] {
        let value = env_lines
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{var}=")))
            .unwrap_or_else(|| panic!("the image sets {var}"));
        assert!(writable.iter().any(|m| Path::new(value).starts_with(m)), "{var}={value} lies in a writable mount");
    }
}

/// `doc` through its k8s-openapi type and back. Unknown fields are dropped on the way in, so a
/// misspelt or misplaced field makes the result differ from `doc`.
fn through_api_type<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Value {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    serde_json::to_value(typed).unwrap()
}

#[test]
fn every_object_is_valid_for_the_kubernetes_api() {
    use k8s_openapi::api::{admissionregistration, apps, batch, core, networking, rbac};
    for docs in [render(&[]), render_all()] {
        for doc in &docs {
            let kind = doc["kind"].as_str().unwrap();
            let back = match kind {
                "Deployment" => through_api_type::<apps::v1::Deployment>(doc),
                "CronJob" => through_api_type::<batch::v1::CronJob>(doc),
                "Service" => through_api_type::<core::v1::Service>(doc),
                "ServiceAccount" => through_api_type::<core::v1::ServiceAccount>(doc),
                "ConfigMap" => through_api_type::<core::v1::ConfigMap>(doc),
                "ClusterRole" => through_api_type::<rbac::v1::ClusterRole>(doc),
                "ClusterRoleBinding" => through_api_type::<rbac::v1::ClusterRoleBinding>(doc),
                "ValidatingAdmissionPolicy" => {
                    through_api_type::<admissionregistration::v1::ValidatingAdmissionPolicy>(doc)
                }
                "ValidatingAdmissionPolicyBinding" => {
                    through_api_type::<admissionregistration::v1::ValidatingAdmissionPolicyBinding>(doc)
                }
                "Ingress" => through_api_type::<networking::v1::Ingress>(doc),
                // A prometheus-operator CRD: no type here; its fields are checked above.
                "ServiceMonitor" => continue,
                other => panic!("{other}: add its k8s-openapi type here"),
            };
            assert_eq!(&back, doc, "{kind} {}: a field the API does not know", doc["metadata"]["name"]);
        }
    }
}
