//! deploy/reaper-cronjob.yaml: a CronJob that runs `draftd reap` as the ServiceAccount of
//! deploy/rbac.yaml, never two sweeps at once, never a hung one past the next schedule, hardened
//! like any pod that holds draftd's secrets; and the binary accepts the command line it is given.

use std::path::PathBuf;
use std::str::FromStr;

use draftd::config::ReaperConfig;
use serde::Deserialize;
use serde_json::Value;

const DRAFTD: &str = env!("CARGO_BIN_EXE_draftd");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn documents(path: &str) -> Vec<Value> {
    let yaml = std::fs::read_to_string(root().join(path)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn cronjob() -> Value {
    let docs = documents("deploy/reaper-cronjob.yaml");
    assert_eq!(docs.len(), 1, "one object: the CronJob");
    docs.into_iter().next().unwrap()
}

/// The ServiceAccount deploy/rbac.yaml defines (and binds the cluster-wide role to).
fn service_account() -> Value {
    documents("deploy/rbac.yaml").into_iter().find(|d| d["kind"] == "ServiceAccount").expect("a ServiceAccount")
}

fn pod(cronjob: &Value) -> &Value {
    &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
}

fn container(cronjob: &Value) -> &Value {
    let containers = pod(cronjob)["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container: draftd");
    &containers[0]
}

/// A Kubernetes (5-field) schedule as the `cron` crate's, which wants seconds first.
fn schedule(five_fields: &str) -> cron::Schedule {
    assert_eq!(five_fields.split_whitespace().count(), 5, "a 5-field cron expression: {five_fields:?}");
    cron::Schedule::from_str(&format!("0 {five_fields}")).unwrap()
}

#[test]
fn the_cronjob_runs_one_sweep_as_draftds_service_account_in_its_namespace() {
    let cronjob = cronjob();
    assert_eq!(cronjob["apiVersion"], "batch/v1");
    assert_eq!(cronjob["kind"], "CronJob");
    assert_eq!(cronjob["metadata"]["name"], "draftd-reaper");
    let account = service_account();
    assert_eq!(cronjob["metadata"]["namespace"], account["metadata"]["namespace"], "draftd's namespace");
    assert_eq!(pod(&cronjob)["serviceAccountName"], account["metadata"]["name"], "the ServiceAccount of rbac.yaml");
    assert_eq!(pod(&cronjob)["restartPolicy"], "Never");

    let container = container(&cronjob);
    let argv: Vec<&str> = container["command"]
        .as_array()
        .into_iter()
        .chain(container["args"].as_array())
        .flatten()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(argv.contains(&"reap"), "the container runs `reap`: {argv:?}");
    let env = container["env"].as_array().unwrap();
    let config = env.iter().find(|e| e["name"] == "DRAFTD_CONFIG").expect("DRAFTD_CONFIG is set");
    let config = config["value"].as_str().unwrap();
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| config.starts_with(m["mountPath"].as_str().unwrap())),
        "DRAFTD_CONFIG={config} lies in a mounted volume"
    );
    assert!(
        container["envFrom"].as_array().unwrap().iter().any(|e| e["secretRef"]["name"].is_string()),
        "the secrets the config names come from a Secret"
    );
}

#[test]
fn sweeps_never_overlap_and_a_hung_one_ends_before_the_next_is_due() {
    let cronjob = cronjob();
    let spec = &cronjob["spec"];
    let every = schedule(spec["schedule"].as_str().unwrap());
    let serve = ReaperConfig::default().cron().unwrap();
    let from = chrono::Utc::now();
    let next: Vec<_> = every.after(&from).take(6).collect();
    assert_eq!(next, serve.after(&from).take(6).collect::<Vec<_>>(), "the cadence of serve's reaper");

    assert_eq!(spec["concurrencyPolicy"], "Forbid");
    assert!(spec["startingDeadlineSeconds"].as_u64().is_some_and(|s| s > 0), "startingDeadlineSeconds");
    for key in ["successfulJobsHistoryLimit", "failedJobsHistoryLimit"] {
        assert!(spec[key].as_u64().is_some_and(|n| n <= 5), "{key} is small");
    }
    let job = &spec["jobTemplate"]["spec"];
    assert!(job["backoffLimit"].as_u64().is_some_and(|n| n <= 1), "backoffLimit 0 or 1");
    assert!(job["ttlSecondsAfterFinished"].as_u64().is_some(), "ttlSecondsAfterFinished");
    let deadline = job["activeDeadlineSeconds"].as_i64().expect("activeDeadlineSeconds");
    let interval = (next[1] - next[0]).num_seconds();
    assert!(0 < deadline && deadline < interval, "activeDeadlineSeconds {deadline} within the {interval}s interval");
}

#[test]
fn the_reaper_pod_runs_as_non_root_on_a_read_only_filesystem_without_capabilities() {
    let cronjob = cronjob();
    let pod = pod(&cronjob);
    let container = container(&cronjob);
    let at = |key: &str| {
        let c = &container["securityContext"][key];
        if c.is_null() { pod["securityContext"][key].clone() } else { c.clone() }
    };
    assert_eq!(at("runAsNonRoot"), true);
    assert_eq!(at("seccompProfile")["type"], "RuntimeDefault");
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["privileged"] != true && sc["capabilities"]["add"].is_null());
    let resources = &container["resources"];
    assert!(resources["requests"]["memory"].is_string() && resources["limits"]["memory"].is_string(), "{resources}");
}

#[test]
fn the_binary_accepts_the_cronjobs_command_line() {
    let cronjob = cronjob();
    let args: Vec<&str> = container(&cronjob)["args"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    // `--help` after the CronJob's own arguments: clap parses them as given, then prints help
    // without loading any config.
    let out =
        std::process::Command::new(DRAFTD).args(&args).arg("--help").env_remove("DRAFTD_CONFIG").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "draftd {args:?} --help: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.to_lowercase().contains("one sweep"), "{stdout}");
    assert!(stdout.contains("--json"), "{stdout}");
}
