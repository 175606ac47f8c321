//! deploy/rbac.yaml against what draftd and the stand chart actually create: every kind the chart
//! renders and every object the namespace step applies must be covered by `draftd-stand`, and the
//! cluster-wide role must stay as small as documented.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use draftd::config::ClusterConfig;
use draftd::helm::{Helm, HelmCli, Release, release_name};
use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn rbac() -> Vec<Value> {
    documents(&std::fs::read_to_string(root().join("deploy/rbac.yaml")).unwrap())
}

fn role<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name).expect(name)
}

/// The rules a role grants: its own, or for an aggregated role those of every ClusterRole its
/// selectors match (what the controller manager copies into it).
fn rules_of<'a>(docs: &'a [Value], role: &'a Value) -> Vec<&'a Value> {
    let Some(selectors) = role["aggregationRule"]["clusterRoleSelectors"].as_array() else {
        return role["rules"].as_array().unwrap().iter().collect();
    };
    let matches = |labels: &Value| {
        selectors
            .iter()
            .any(|s| s["matchLabels"].as_object().unwrap().iter().all(|(k, v)| labels.get(k).is_some_and(|l| l == v)))
    };
    docs.iter()
        .filter(|d| d["kind"] == "ClusterRole" && matches(&d["metadata"]["labels"]))
        .flat_map(|d| d["rules"].as_array().unwrap().iter())
        .collect()
}

/// Whether `role` (see [`rules_of`]) allows `verb` on `resource` in `group`.
fn allows(docs: &[Value], role: &Value, group: &str, resource: &str, verb: &str) -> bool {
    rules_of(docs, role).into_iter().any(|rule| {
        let has = |key: &str, want: &str| rule[key].as_array().is_some_and(|v| v.iter().any(|x| x == want));
        has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
    })
}

/// The API group and resource of each kind draftd or the chart creates. A kind missing here fails
/// the test: add it, and its rule to deploy/rbac.yaml.
fn resource_of(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "ConfigMap" => ("", "configmaps"),
        "Secret" => ("", "secrets"),
        "Service" => ("", "services"),
        "ServiceAccount" => ("", "serviceaccounts"),
        "PersistentVolumeClaim" => ("", "persistentvolumeclaims"),
        "ResourceQuota" => ("", "resourcequotas"),
        "LimitRange" => ("", "limitranges"),
        "Deployment" => ("apps", "deployments"),
        "StatefulSet" => ("apps", "statefulsets"),
        "Job" => ("batch", "jobs"),
        "Ingress" => ("networking.k8s.io", "ingresses"),
        "NetworkPolicy" => ("networking.k8s.io", "networkpolicies"),
        other => panic!("{other} is created in a stand namespace but has no entry in resource_of"),
    }
}

#[test]
fn the_cluster_wide_role_covers_namespaces_and_binding_the_stand_role_only() {
    let docs = rbac();
    let draftd = role(&docs, "draftd");
    for verb in ["get", "list", "create", "patch", "delete"] {
        assert!(allows(&docs, draftd, "", "namespaces", verb), "namespaces {verb}");
    }
    for verb in ["create", "delete"] {
        assert!(allows(&docs, draftd, "rbac.authorization.k8s.io", "rolebindings", verb), "rolebindings {verb}");
    }
    let rules = draftd["rules"].as_array().unwrap();
    for rule in rules {
        for key in ["apiGroups", "resources", "verbs"] {
            assert!(!rule[key].as_array().unwrap().iter().any(|v| v == "*"), "no wildcard in draftd: {rule}");
        }
        let resources: Vec<&str> = rule["resources"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(!resources.contains(&"secrets"), "no Secrets outside stand namespaces: {rule}");
    }
    let bind = rules.iter().find(|r| r["verbs"].as_array().unwrap().iter().any(|v| v == "bind")).unwrap();
    assert_eq!(bind["resourceNames"], serde_json::json!(["draftd-stand"]), "bind is limited to draftd-stand");
    assert_eq!(ClusterConfig::default().stand_role, "draftd-stand", "the default stand_role is the manifest's");
    let binding = docs.iter().find(|d| d["kind"] == "ClusterRoleBinding").unwrap();
    assert_eq!(binding["roleRef"]["name"], "draftd", "only draftd is bound cluster-wide");
}

#[test]
fn the_reapers_service_account_may_scan_annotate_and_delete_namespaces() {
    // `draftd reap` (deploy/reaper-cronjob.yaml) runs as the ServiceAccount bound to `draftd`:
    // list for the orphan scan, get before touching one, delete for orphans it saw twice, and patch
    // for the `draftd.io/expires-at` annotation an extend moves.
    let docs = rbac();
    let account = docs.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    let binding = docs.iter().find(|d| d["kind"] == "ClusterRoleBinding").unwrap();
    let subject = &binding["subjects"][0];
    assert_eq!(
        (&subject["name"], &subject["namespace"]),
        (&account["metadata"]["name"], &account["metadata"]["namespace"]),
        "the cluster-wide role is bound to the ServiceAccount the CronJob runs as"
    );
    let draftd = role(&docs, binding["roleRef"]["name"].as_str().unwrap());
    for verb in ["get", "list", "delete", "patch"] {
        assert!(allows(&docs, draftd, "", "namespaces", verb), "the reaper needs namespaces {verb}");
    }
}

#[tokio::test]
async fn the_stand_role_covers_everything_the_chart_and_the_namespace_step_create() {
    let helm_path = root().join(".tools/bin/helm");
    assert!(helm_path.is_file(), "{} is missing: run scripts/install-tools.sh", helm_path.display());
    let mut helm = HelmCli::new(helm_path);
    helm.timeout = Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("stand.yaml");
    // Everything on: host (Ingress), migrate and smoke Jobs, the mocks of values/draft.yaml.
    std::fs::write(
        &extra,
        "host: 1.draft.example.com\nmigrate: {enabled: true, command: [migrate]}\nsmoke: {enabled: true, command: [smoke]}\n",
    )
    .unwrap();
    let release = Release {
        name: release_name("draft-rbac"),
        namespace: "draft-rbac".into(),
        chart: root().join("charts/stand"),
        values: vec![root().join("values/draft.yaml"), extra],
        set: Default::default(),
    };
    let rendered = documents(&helm.template(&release).await.unwrap());
    let mut kinds: BTreeSet<String> = rendered.iter().map(|d| d["kind"].as_str().unwrap().to_owned()).collect();
    // The namespace step's own objects, and the Secrets draftd writes and helm keeps its releases in.
    kinds.extend(["ResourceQuota", "LimitRange", "NetworkPolicy", "ServiceAccount", "Secret"].map(String::from));

    let docs = rbac();
    let stand = role(&docs, "draftd-stand");
    for kind in &kinds {
        let (group, resource) = resource_of(kind);
        for verb in ["get", "list", "create", "update", "patch", "delete"] {
            assert!(
                allows(&docs, stand, group, resource, verb),
                "draftd-stand cannot {verb} {kind} ({group}/{resource})"
            );
        }
    }
    for (group, resource) in [("", "pods"), ("", "pods/log"), ("", "events"), ("apps", "replicasets")] {
        assert!(allows(&docs, stand, group, resource, "list"), "diagnostics need {resource}");
    }
    assert!(allows(&docs, stand, "", "services/proxy", "get"), "verify probes through the API server proxy");
    assert!(allows(&docs, stand, "", "pods/log", "get"), "the stand page reads its containers' logs");
    assert!(stand["rules"].as_array().unwrap().is_empty(), "draftd-stand's rules come from aggregation only");
}

#[test]
fn an_admission_policy_keeps_draftds_service_account_to_its_own_namespaces() {
    let docs = rbac();
    let policy = docs.iter().find(|d| d["kind"] == "ValidatingAdmissionPolicy").expect("the policy");
    let name = policy["metadata"]["name"].as_str().unwrap();
    let binding = docs.iter().find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding").expect("its binding");
    assert_eq!(binding["spec"]["policyName"], name);
    assert_eq!(binding["spec"]["validationActions"], serde_json::json!(["Deny"]));
    let account = docs.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    let user = format!(
        "system:serviceaccount:{}:{}",
        account["metadata"]["namespace"].as_str().unwrap(),
        account["metadata"]["name"].as_str().unwrap()
    );
    let condition = policy["spec"]["matchConditions"][0]["expression"].as_str().unwrap();
    assert!(condition.contains(&format!("'{user}'")), "the policy applies to draftd's ServiceAccount: {condition}");
    let resources: BTreeSet<&str> = policy["spec"]["matchConstraints"]["resourceRules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()))
        .collect();
    assert_eq!(resources, BTreeSet::from(["namespaces", "rolebindings"]), "what the cluster-wide role may change");
    // What the policy does is shown against the real API server (tests/it/k8s.rs); here only that every
    // resource the cluster-wide role may change is covered.
    let draftd = role(&docs, "draftd");
    for rule in draftd["rules"].as_array().unwrap() {
        let verbs = rule["verbs"].as_array().unwrap();
        if verbs.iter().any(|v| ["create", "patch", "update", "delete"].contains(&v.as_str().unwrap())) {
            for r in rule["resources"].as_array().unwrap() {
                assert!(resources.contains(r.as_str().unwrap()), "{r} is changed by draftd but not fenced in");
            }
        }
    }
}
