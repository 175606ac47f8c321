//! Short-lived stand logins expire on a server that checks passwords (scripts/pg-passwords.sh starts
//! a throwaway one: the machine's own server trusts loopback, where VALID UNTIL means nothing).

use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use draftd::database::{Databases, PgDatabases, StandDb};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

struct Server {
    dir: tempfile::TempDir,
    url: String,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::Builder::new().prefix("draftd-pgpw-").tempdir().unwrap();
        let out = Command::new("bash").arg(script()).arg("start").arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = stdout.trim().strip_prefix("export STANDS_PG_URL=").expect("the start line").to_owned();
        Server { dir, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("stop").arg(self.dir.path()).status();
    }
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-passwords.sh")
}

#[tokio::test]
async fn an_issued_login_works_until_its_expiry_and_not_after() {
    let server = Server::start();
    let admin = PgPoolOptions::new().max_connections(2).connect(&server.url).await.unwrap();
    let dbs = PgDatabases::new(admin.clone());
    let stand = StandDb { database: "draft_expiry".into(), owner: "draft_expiry".into(), template: None };
    dbs.ensure(&stand).await.unwrap();
    let login = dbs.issue_login(&stand, Duration::from_secs(3)).await.unwrap();
    let options = PgConnectOptions::from_str(&server.url)
        .unwrap()
        .username(&login.username)
        .password(login.password.expose_secret())
        .database(&stand.database);

    let conn = options.connect().await.expect("the login works before its expiry");
    conn.close().await.unwrap();
    let wrong = options.clone().password("not-the-password").connect().await;
    assert!(wrong.is_err(), "this server checks passwords");

    let wait = (login.valid_until - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(1500);
    tokio::time::sleep(wait).await;
    let err = options.connect().await.expect_err("the login is refused after its expiry");
    assert!(err.to_string().contains("password authentication failed"), "{err}");

    dbs.revoke_login(&login.username).await.unwrap();
    dbs.drop_stand(&stand).await.unwrap();
    admin.close().await;
}
