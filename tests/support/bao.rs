//! An OpenBao dev server per test (scripts/openbao-dev.sh), shared by the tests that need one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use serde_json::Value;

/// The dev servers' root token unless a test sets `BAO_DEV_TOKEN`: fixed and distinctive, so
/// scripts/check-secrets.sh can find it in the suite's output (tests/secrets.txt lists it).
pub const BAO_ROOT_TOKEN: &str = "bao-root-test-4d7e19c2a0b8f356";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join("openbao-dev.sh")
}

/// An OpenBao dev server for one test, stopped when dropped.
pub struct Bao {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub token: String,
}

impl Bao {
    pub fn start() -> Bao {
        Self::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Bao {
        let dir = tempfile::Builder::new().prefix("draftd-bao-").tempdir().unwrap();
        Self::start_in(dir, env)
    }

    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Bao {
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .env("BAO_DEV_TOKEN", BAO_ROOT_TOKEN)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let var = |k: &str| {
            stdout
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} in {stdout}"))
                .to_owned()
        };
        Bao { addr: var("BAO_ADDR"), token: var("BAO_TOKEN"), dir }
    }

    pub fn stop(&self) {
        let _ = Command::new("bash").arg(script()).arg("stop").arg(self.dir.path()).status();
    }

    /// A token file for draftd (the script's own is removed at stop).
    pub fn token_file(&self) -> PathBuf {
        let path = self.dir.path().join("draftd-token");
        std::fs::write(&path, &self.token).unwrap();
        path
    }

    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = reqwest::Client::new();
        let mut request = client
            .request(reqwest::Method::from_str(method).unwrap(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}
