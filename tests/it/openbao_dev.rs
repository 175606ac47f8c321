//! scripts/openbao-dev.sh: a real OpenBao dev server, started and stopped by the project's own
//! script, with KV v2 at draft/ and the database engine mounted (what the credentials tests use).

use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openbao-dev.sh")
}

/// The `export K=V …` line the start command prints, as pairs.
fn exports(stdout: &str) -> std::collections::HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

#[tokio::test]
async fn the_dev_server_starts_with_draft_kv_and_the_database_engine_then_stops() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash").arg(script()).arg("start").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = exports(&String::from_utf8_lossy(&out.stdout));
    let (addr, token, pid) = (&env["BAO_ADDR"], &env["BAO_TOKEN"], env["BAO_PID"].clone());
    assert!(addr.starts_with("http://127.0.0.1:"), "loopback only: {addr}");
    assert_eq!(env["VAULT_ADDR"], *addr);

    let client = reqwest::Client::new();
    let mounts: serde_json::Value = client
        .get(format!("{addr}/v1/sys/mounts"))
        .header("X-Vault-Token", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mounts["data"]["draft/"]["type"], "kv", "{mounts}");
    assert_eq!(mounts["data"]["draft/"]["options"]["version"], "2", "{mounts}");
    assert_eq!(mounts["data"]["database/"]["type"], "database", "{mounts}");

    let stop = Command::new("bash").arg(script()).arg("stop").arg(dir.path()).status().unwrap();
    assert!(stop.success());
    let alive = Command::new("kill").arg("-0").arg(&pid).status().unwrap().success();
    assert!(!alive, "the server (pid {pid}) is gone after stop");
    assert!(!dir.path().join("token").exists(), "the root token is not left on disk");
}
