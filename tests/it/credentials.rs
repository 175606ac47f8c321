//! Stand databases and credentials against a real OpenBao (scripts/openbao-dev.sh) and a real
//! Postgres that checks passwords (scripts/pg-passwords.sh): logins from Vault's database engine
//! work, reach only their own stand's database, stop working when revoked or expired, live on when
//! renewed, and teardown leaves nothing in Vault or Postgres.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bao::Bao;

use draftd::config::Config;
use draftd::credentials::{Lifetimes, StandCredentials, StandServer, stand_db};
use draftd::database::{Databases, PgDatabases};
use draftd::vault::{OpenBao, Vault, VaultError};
use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::support::bao;
use draftd::stand::{Failure, StandId};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

/// A password-checking Postgres for one test, stopped when dropped.
struct Pg {
    dir: tempfile::TempDir,
    url: String,
}

impl Pg {
    fn start() -> Pg {
        let dir = tempfile::Builder::new().prefix("draftd-pgpw-").tempdir().unwrap();
        let out = Command::new("bash").arg(script("pg-passwords.sh")).arg("start").arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = stdout.trim().strip_prefix("export STANDS_PG_URL=").expect("the start line").to_owned();
        Pg { dir, url }
    }

    async fn admin(&self) -> PgPool {
        PgPoolOptions::new().max_connections(4).connect(&self.url).await.unwrap()
    }

    /// Makes a stand database admin as the README asks for it (LOGIN CREATEDB CREATEROLE, nothing
    /// else; the cluster's own `postgres` is a superuser) and returns its URL.
    async fn createrole_admin(&self) -> String {
        let password = uuid::Uuid::new_v4().simple().to_string();
        let admin = self.admin().await;
        sqlx::query(&format!("create role stands_admin login createdb createrole password '{password}'"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let mut url = url::Url::parse(&self.url).unwrap();
        url.set_username("stands_admin").unwrap();
        url.set_password(Some(&password)).unwrap();
        url.to_string()
    }

    /// Waits until `user` has no session left on the server (a closed connection's backend exits
    /// a moment after the client is gone).
    async fn wait_sessions_gone(&self, user: &str) {
        let admin = self.admin().await;
        for _ in 0..100 {
            let n: i64 = sqlx::query_scalar("select count(*) from pg_stat_activity where usename = $1")
                .bind(user)
                .fetch_one(&admin)
                .await
                .unwrap();
            if n == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{user}'s sessions did not end");
    }

    async fn connect(&self, user: &str, password: &str, database: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
        PgConnectOptions::from_str(&self.url)
            .unwrap()
            .username(user)
            .password(password)
            .database(database)
            .connect()
            .await
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script("pg-passwords.sh")).arg("stop").arg(self.dir.path()).status();
    }
}

fn vault_config(addr: &str, auth: &str, lifetimes: Lifetimes) -> Config {
    Config::from_toml(&format!(
        r#"
        [postgres]
        admin_url_env = "DRAFTD_TEST_UNUSED"
        [vault]
        address = "{addr}"
        {auth}
        credential_ttl = "{}s"
        lease_ttl = "{}s"
        "#,
        lifetimes.max.as_secs(),
        lifetimes.lease.as_secs()
    ))
    .unwrap()
}

fn lifetimes(max: u64, lease: u64) -> Lifetimes {
    Lifetimes { max: Duration::from_secs(max), lease: Duration::from_secs(lease), grace: Duration::from_secs(1) }
}

async fn credentials(pool: &PgPool, bao: &Bao, pg: &Pg, lifetimes: Lifetimes) -> StandCredentials {
    credentials_as(pool, Some(bao), &pg.url, lifetimes).await
}

/// draftd with `admin_url` as `[postgres]`'s admin URL (Vault's connection uses it too).
async fn credentials_as(pool: &PgPool, bao: Option<&Bao>, admin_url: &str, lifetimes: Lifetimes) -> StandCredentials {
    let admin = PgPoolOptions::new().max_connections(4).connect(admin_url).await.unwrap();
    StandCredentials::new(
        pool.clone(),
        Some((Arc::new(PgDatabases::new(admin)), StandServer::parse(admin_url, None).unwrap())),
        bao.map(|b| Arc::new(vault_of(b))),
        lifetimes,
    )
}

async fn new_stand(pool: &PgPool, branch: &str) -> (StandId, String) {
    let namespace = format!("draft-{}", branch.replace('/', "-"));
    let id = sqlx::query_scalar(
        "insert into stands (project, branch, namespace) values ('shop', $1, $2) returning stand_id",
    )
    .bind(branch)
    .bind(&namespace)
    .fetch_one(pool)
    .await
    .unwrap();
    (id, namespace)
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn vault_logins_reach_only_their_own_stand_and_die_when_revoked(pool: PgPool) {
    let (bao, pg) = (Bao::start(), Pg::start());
    let creds = credentials(&pool, &bao, &pg, lifetimes(600, 300)).await;
    let (a_id, a_ns) = new_stand(&pool, "feature/a").await;
    let (b_id, b_ns) = new_stand(&pool, "feature/b").await;
    let (a, b) = (stand_db(&a_ns, None), stand_db(&b_ns, None));
    let detail = creds.ensure_database(&a).await.unwrap();
    assert_eq!(detail["vault_role"], json!(a.database));
    creds.ensure_database(&b).await.unwrap();
    // Idempotent: the step again changes nothing.
    let again = creds.ensure_database(&a).await.unwrap();
    assert_eq!((again["created_database"].clone(), again["created_role"].clone()), (json!(false), json!(false)));

    let la = creds.issue(a_id, None, "app", &a).await.unwrap();
    let lb = creds.issue(b_id, None, "app", &b).await.unwrap();
    assert_eq!(la.source, "vault");
    let mut conn =
        pg.connect(&la.username, la.password.expose_secret(), &a.database).await.expect("a's login opens a's database");
    // The login acts as the stand's owner: what migrations create belongs to the owner.
    sqlx::query("create table tasks (id int)").execute(&mut conn).await.unwrap();
    let owner: String = sqlx::query_scalar("select tableowner::text from pg_tables where tablename = 'tasks'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(owner, a.owner);
    conn.close().await.unwrap();
    let err = pg
        .connect(&lb.username, lb.password.expose_secret(), &a.database)
        .await
        .expect_err("b's login must not open a's database");
    assert!(err.to_string().contains("permission denied for database"), "{err}");

    let vault = vault_of(&bao);
    assert_eq!(vault.leases(&a.database).await.unwrap().len(), 1, "one lease of a's role");
    creds.revoke(la.credential_id).await.unwrap();
    let err = pg.connect(&la.username, la.password.expose_secret(), &a.database).await.expect_err("revoked");
    assert!(err.to_string().contains("password authentication failed"), "{err}");
    assert!(vault.leases(&a.database).await.unwrap().is_empty(), "the lease is gone from Vault");
    let revoked: bool = sqlx::query_scalar("select revoked_at is not null from credentials where credential_id = $1")
        .bind(la.credential_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(revoked);
    // b is untouched.
    pg.connect(&lb.username, lb.password.expose_secret(), &b.database)
        .await
        .expect("b still works")
        .close()
        .await
        .unwrap();
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_login_expires_with_its_lease_unless_renewed(pool: PgPool) {
    let (bao, pg) = (Bao::start(), Pg::start());
    // Leases of 4 s, renewable up to 30 s.
    let creds = credentials(&pool, &bao, &pg, lifetimes(30, 4)).await;
    let (id, ns) = new_stand(&pool, "feature/ttl").await;
    let db = stand_db(&ns, None);
    creds.ensure_database(&db).await.unwrap();
    let kept = creds.issue(id, None, "app", &db).await.unwrap();
    // A lease nobody renews (issued behind draftd's back, so the keeper does not know it).
    let lapsed = vault_of(&bao).issue(&db.database).await.unwrap();
    for (username, password) in [(&kept.username, &kept.password), (&lapsed.username, &lapsed.password)] {
        pg.connect(username, password.expose_secret(), &db.database)
            .await
            .expect("works at first")
            .close()
            .await
            .unwrap();
    }
    // The keeper renews the recorded login at half its TTL.
    let deliver = |_, _, _| async { Ok::<(), String>(()) };
    let mut renewed = 0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        renewed += creds.keep(&deliver).await.unwrap().renewed;
    }
    assert!(renewed >= 1, "the app login was renewed");
    // 6 s in: past the original 4 s TTL.
    pg.connect(&kept.username, kept.password.expose_secret(), &db.database)
        .await
        .expect("renewal keeps the login working past its first TTL")
        .close()
        .await
        .unwrap();
    let err = pg.connect(&lapsed.username, lapsed.password.expose_secret(), &db.database).await.expect_err("expired");
    assert!(err.to_string().contains("password authentication failed"), "{err}");
}

/// With an admin that has only CREATEDB and CREATEROLE, as draftd's and Vault's connection: every
/// login goes, recorded or not, Vault's or draftd's, and so do the sessions open as them.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn teardown_revokes_every_login_then_drops_the_database_leaving_nothing(pool: PgPool) {
    let (bao, pg) = (Bao::start(), Pg::start());
    let admin_url = pg.createrole_admin().await;
    let creds = credentials_as(&pool, Some(&bao), &admin_url, lifetimes(600, 300)).await;
    let (id, ns) = new_stand(&pool, "feature/gone").await;
    let db = stand_db(&ns, None);
    creds.ensure_database(&db).await.unwrap();
    let app = creds.issue(id, None, "app", &db).await.unwrap();
    creds.issue(id, None, "migrate", &db).await.unwrap();
    // Issued but never recorded (a crash between issue and insert): teardown finds them anyway.
    let vault = vault_of(&bao);
    let stray = vault.issue(&db.database).await.unwrap();
    let admin = pg.admin().await;
    let stands_admin = PgPoolOptions::new().max_connections(1).connect(&admin_url).await.unwrap();
    PgDatabases::new(stands_admin).issue_login(&db, Duration::from_secs(600)).await.unwrap();
    assert_eq!(vault.leases(&db.database).await.unwrap().len(), 3);
    // A stand whose role name starts with this one's keeps its login.
    let (other_id, other_ns) = new_stand(&pool, "feature/gone-too").await;
    let other = stand_db(&other_ns, None);
    creds.ensure_database(&other).await.unwrap();
    let other_login = creds.issue(other_id, None, "app", &other).await.unwrap();

    // Sessions open during teardown (its pods are still there) are ended too.
    let mut open = pg.connect(&app.username, app.password.expose_secret(), &db.database).await.unwrap();
    let mut stray_open = pg.connect(&stray.username, stray.password.expose_secret(), &db.database).await.unwrap();
    let revoked = creds.revoke_all(id, &db).await.unwrap();
    assert_eq!(revoked["revoked"], json!(2));
    // Vault's unrecorded login and draftd's.
    assert_eq!(revoked["unrecorded_logins_revoked"], json!(2));
    assert!(sqlx::query("select 1").execute(&mut open).await.is_err(), "the app's session was ended");
    assert!(sqlx::query("select 1").execute(&mut stray_open).await.is_err(), "the unrecorded login's too");
    assert!(vault.leases(&db.database).await.unwrap().is_empty(), "no lease left in Vault");
    let (status, _) = bao.api("GET", &format!("database/roles/{}", db.database), None).await;
    assert_eq!(status, 404, "the stand's Vault role is deleted");
    creds.drop_database(&db).await.unwrap();

    let databases: i64 = sqlx::query_scalar("select count(*) from pg_database where datname = $1")
        .bind(&db.database)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(databases, 0, "pg_database");
    let roles: Vec<String> = sqlx::query_scalar(
        "select rolname::text from pg_roles where rolname like 'draft%' or rolname like 'v-%' order by 1",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(roles, [other.database.clone(), other_login.username.clone()], "pg_roles holds only the other stand's");
    assert_eq!(vault.leases(&other.database).await.unwrap().len(), 1, "the other stand's lease is untouched");
    let live: Vec<i64> = sqlx::query_scalar("select credential_id from credentials where revoked_at is null")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(live, [other_login.credential_id]);
}

/// Vault ends a lease on its own when nobody renews it, with its revocation statements, as the
/// admin: the login's creation made the CREATEROLE admin a member, so it may end the sessions.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn vault_ends_an_expired_leases_open_session_under_a_createrole_admin(pool: PgPool) {
    let (bao, pg) = (Bao::start(), Pg::start());
    let admin_url = pg.createrole_admin().await;
    let creds = credentials_as(&pool, Some(&bao), &admin_url, lifetimes(30, 2)).await;
    let (_, ns) = new_stand(&pool, "feature/lapse").await;
    let db = stand_db(&ns, None);
    creds.ensure_database(&db).await.unwrap();
    let lapsing = vault_of(&bao).issue(&db.database).await.unwrap();
    let mut open = pg.connect(&lapsing.username, lapsing.password.expose_secret(), &db.database).await.unwrap();
    let admin = pg.admin().await;
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
            .bind(&lapsing.username)
            .fetch_one(&admin)
            .await
            .unwrap();
        if !exists {
            gone = true;
            break;
        }
    }
    assert!(gone, "Vault revoked the lapsed lease's login");
    assert!(sqlx::query("select 1").execute(&mut open).await.is_err(), "and ended its session first");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn kv_secrets_come_from_the_teams_path_and_a_missing_path_is_named(pool: PgPool) {
    let (bao, pg) = (Bao::start(), Pg::start());
    let (status, _) = bao
        .api("POST", "draft/data/payments/shop", Some(json!({ "data": { "STRIPE_KEY": "sk_test_kv", "RETRIES": 3 } })))
        .await;
    assert_eq!(status, 200);
    let creds = credentials(&pool, &bao, &pg, lifetimes(600, 300)).await;
    let kv = creds.read_kv("payments", "shop").await.unwrap().unwrap();
    assert_eq!(kv["STRIPE_KEY"].expose_secret(), "sk_test_kv");
    assert_eq!(kv["RETRIES"].expose_secret(), "3");
    let err = creds.read_kv("payments", "billing").await.unwrap_err();
    assert!(!err.is_transient());
    assert!(err.to_string().contains("draft/payments/billing"), "{err}");
}

#[tokio::test]
async fn an_unreachable_vault_is_a_transient_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "nothing").unwrap();
    let config = vault_config(
        &format!("http://127.0.0.1:{port}"),
        &format!("auth = \"token\"\ntoken_file = \"{}\"", token.display()),
        lifetimes(600, 300),
    );
    let vault = OpenBao::from_config(config.vault.as_ref().unwrap()).unwrap();
    let err = vault.read_kv("payments/shop").await.unwrap_err();
    assert!(matches!(err, VaultError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(err.label(), "vault_unavailable");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn approle_with_the_shipped_policy_runs_a_stands_whole_life(pool: PgPool) {
    let (bao, pg) = (Bao::start(), Pg::start());
    let policy =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vault-policy.hcl")).unwrap();
    assert_eq!(bao.api("PUT", "sys/policies/acl/draftd", Some(json!({ "policy": policy }))).await.0, 204);
    assert_eq!(bao.api("POST", "sys/auth/approle", Some(json!({ "type": "approle" }))).await.0, 204);
    let (status, _) = bao
        .api("POST", "auth/approle/role/draftd", Some(json!({ "token_policies": ["draftd"], "token_ttl": "10m" })))
        .await;
    assert_eq!(status, 204);
    let role_id = bao.api("GET", "auth/approle/role/draftd/role-id", None).await.1["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = bao.api("POST", "auth/approle/role/draftd/secret-id", None).await.1["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_file = bao.dir.path().join("secret-id");
    std::fs::write(&secret_file, secret_id).unwrap();
    bao.api("POST", "draft/data/payments/shop", Some(json!({ "data": { "K": "v" } }))).await;

    let auth = format!("auth = \"approle\"\nrole_id = \"{role_id}\"\nsecret_id_file = \"{}\"", secret_file.display());
    let config = vault_config(&bao.addr, &auth, lifetimes(600, 300));
    let vault = Arc::new(OpenBao::from_config(config.vault.as_ref().unwrap()).unwrap());
    let server = StandServer::parse(&pg.url, None).unwrap();
    let creds = StandCredentials::new(
        pool.clone(),
        Some((Arc::new(PgDatabases::new(pg.admin().await)), server)),
        Some(vault.clone()),
        lifetimes(600, 300),
    );
    let (id, ns) = new_stand(&pool, "feature/approle").await;
    let db = stand_db(&ns, None);
    creds.ensure_database(&db).await.unwrap();
    assert_eq!(creds.read_kv("payments", "shop").await.unwrap().unwrap()["K"].expose_secret(), "v");
    let login = creds.issue(id, None, "app", &db).await.unwrap();
    pg.connect(&login.username, login.password.expose_secret(), &db.database).await.unwrap().close().await.unwrap();
    vault.renew(&creds_lease(&pool, login.credential_id).await, Duration::from_secs(300)).await.unwrap();
    assert_eq!(vault.leases(&db.database).await.unwrap().len(), 1);
    creds.revoke_all(id, &db).await.unwrap();
    creds.drop_database(&db).await.unwrap();
    assert!(vault.leases(&db.database).await.unwrap().is_empty());
}

async fn creds_lease(pool: &PgPool, credential_id: i64) -> String {
    sqlx::query_scalar("select lease_id from credentials where credential_id = $1")
        .bind(credential_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Without Vault: Postgres logins with VALID UNTIL, replaced by the keeper before they end (the new
/// one handed to `deliver`), the replaced one revoked after the grace period.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn without_vault_the_keeper_replaces_logins_before_they_end(pool: PgPool) {
    let pg = Pg::start();
    let lifetimes =
        Lifetimes { max: Duration::from_secs(8), lease: Duration::from_secs(8), grace: Duration::from_secs(1) };
    let creds = credentials_as(&pool, None, &pg.createrole_admin().await, lifetimes).await;
    let (id, ns) = new_stand(&pool, "feature/rotate").await;
    let db = stand_db(&ns, None);
    creds.ensure_database(&db).await.unwrap();
    let first = creds.issue(id, None, "app", &db).await.unwrap();
    assert_eq!(first.source, "postgres");
    let delivered = std::sync::Mutex::new(Vec::new());
    let deliver =
        |stand: StandId, namespace: String, data: std::collections::BTreeMap<String, secrecy::SecretString>| {
            delivered.lock().unwrap().push((stand, namespace, data));
            async { Ok::<(), String>(()) }
        };
    assert_eq!(creds.keep(&deliver).await.unwrap(), Default::default(), "nothing to do at first");
    // Less than a quarter of its life left (2 s of 8): replaced.
    let replace_at = first.expires_at - chrono::Duration::milliseconds(1500);
    tokio::time::sleep((replace_at - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    let kept = creds.keep(&deliver).await.unwrap();
    assert_eq!(kept.replaced, 1, "{kept:?}");
    let (stand, namespace, data) = delivered.lock().unwrap().pop().unwrap();
    assert_eq!((stand, namespace.as_str()), (id, ns.as_str()));
    let (user, password) = (data["PGUSER"].expose_secret().to_owned(), data["PGPASSWORD"].expose_secret().to_owned());
    assert_ne!(user, first.username);
    let mut rolled = pg.connect(&user, &password, &db.database).await.expect("the new login works");
    // After the grace period the replaced login, no longer used, is revoked; the new one and its
    // sessions live on.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(creds.keep(&deliver).await.unwrap().revoked, 1);
    sqlx::query("select 1").execute(&mut rolled).await.expect("the new login's session is untouched");
    let roles: Vec<String> =
        sqlx::query_scalar("select rolname::text from pg_roles where rolname like 'draft_feature_rotate_l%'")
            .fetch_all(&pg.admin().await)
            .await
            .unwrap();
    assert_eq!(roles, [user], "only the new login is left");
}

/// A replaced login is what the stand's pods use until they have rolled onto the new Secret (a
/// deploy's secrets step replaces it before the deploy step rolls them): past its grace period it
/// stays while a session still uses it, goes once none does, and at its end goes whatever uses it.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_replaced_login_still_in_use_is_kept_until_unused_or_its_end(pool: PgPool) {
    let pg = Pg::start();
    let lifetimes =
        Lifetimes { max: Duration::from_secs(600), lease: Duration::from_secs(600), grace: Duration::from_secs(1) };
    let creds = credentials_as(&pool, None, &pg.createrole_admin().await, lifetimes).await;
    let deliver = |_, _, _| async { Ok::<(), String>(()) };
    let (id, ns) = new_stand(&pool, "feature/rolling").await;
    let db = stand_db(&ns, None);
    creds.ensure_database(&db).await.unwrap();
    let old = creds.issue(id, None, "app", &db).await.unwrap();
    let mut old_pod = pg.connect(&old.username, old.password.expose_secret(), &db.database).await.unwrap();
    // A redeploy: the new login's Secret is in place, the pods not rolled yet.
    let new = creds.issue(id, None, "app", &db).await.unwrap();
    assert_eq!(creds.supersede_app(id, new.credential_id).await.unwrap(), 1);
    let mut new_pod = pg.connect(&new.username, new.password.expose_secret(), &db.database).await.unwrap();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let kept = creds.keep(&deliver).await.unwrap();
    assert_eq!((kept.in_use, kept.revoked), (1, 0), "{kept:?}");
    sqlx::query("select 1").execute(&mut old_pod).await.expect("the old pod still serves");

    // The old pod is gone: so is its login, at the next pass.
    old_pod.close().await.unwrap();
    pg.wait_sessions_gone(&old.username).await;
    let kept = creds.keep(&deliver).await.unwrap();
    assert_eq!((kept.in_use, kept.revoked), (0, 1), "{kept:?}");
    let err = pg.connect(&old.username, old.password.expose_secret(), &db.database).await.expect_err("revoked");
    assert!(err.to_string().contains("password authentication failed"), "{err}");
    sqlx::query("select 1").execute(&mut new_pod).await.expect("the new login's session is untouched");

    // Replaced again, and still used when its life ends: revoked then, its session with it.
    let newest = creds.issue(id, None, "app", &db).await.unwrap();
    creds.supersede_app(id, newest.credential_id).await.unwrap();
    sqlx::query("update credentials set max_expires_at = now() where credential_id = $1")
        .bind(new.credential_id)
        .execute(&pool)
        .await
        .unwrap();
    let kept = creds.keep(&deliver).await.unwrap();
    assert_eq!((kept.in_use, kept.revoked), (0, 1), "{kept:?}");
    assert!(sqlx::query("select 1").execute(&mut new_pod).await.is_err(), "the session of a login at its end is ended");
}

fn vault_of(bao: &Bao) -> OpenBao {
    let auth = format!("auth = \"token\"\ntoken_file = \"{}\"", bao.token_file().display());
    OpenBao::from_config(vault_config(&bao.addr, &auth, lifetimes(600, 300)).vault.as_ref().unwrap()).unwrap()
}

/// A TCP proxy in front of OpenBao that can be cut: while down it drops new connections at once and
/// ends the open ones, as a Vault restart or a network partition would.
struct Cut {
    addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Cut {
    async fn start(upstream: &str) -> Cut {
        use std::sync::atomic::{AtomicBool, Ordering};
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (flag, cuts) = (up.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let (upstream, mut cut) = (upstream.clone(), cuts.subscribe());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Cut { addr, up, cut, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Vault cut off in the middle of a stand's life: the call made meanwhile fails as transient (so
/// the step retries), the same client works again once Vault is back, and teardown still leaves no
/// lease, role or login behind.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_vault_outage_mid_life_is_transient_and_teardown_still_leaves_nothing(pool: PgPool) {
    let (bao, pg) = (Bao::start(), Pg::start());
    let cut = Cut::start(&bao.addr).await;
    let auth = format!("auth = \"token\"\ntoken_file = \"{}\"", bao.token_file().display());
    let through_cut =
        OpenBao::from_config(vault_config(&cut.url(), &auth, lifetimes(600, 300)).vault.as_ref().unwrap()).unwrap();
    let server = StandServer::parse(&pg.url, None).unwrap();
    let creds = StandCredentials::new(
        pool.clone(),
        Some((Arc::new(PgDatabases::new(pg.admin().await)), server)),
        Some(Arc::new(through_cut)),
        lifetimes(600, 300),
    );
    let (id, ns) = new_stand(&pool, "feature/cut").await;
    let db = stand_db(&ns, None);
    creds.ensure_database(&db).await.unwrap();
    creds.issue(id, None, "app", &db).await.unwrap();

    cut.down();
    let err = creds.issue(id, None, "migrate", &db).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    cut.restore();
    let migrate = creds.issue(id, None, "migrate", &db).await.unwrap();
    let login = pg.connect(&migrate.username, migrate.password.expose_secret(), &db.database).await;
    assert!(login.is_ok(), "the login issued after the outage works: {login:?}");
    drop(login);

    creds.revoke_all(id, &db).await.unwrap();
    creds.drop_database(&db).await.unwrap();
    assert!(vault_of(&bao).leases(&db.database).await.unwrap().is_empty(), "no lease left in Vault");
    let live: i64 =
        sqlx::query_scalar("select count(*) from credentials where revoked_at is null").fetch_one(&pool).await.unwrap();
    assert_eq!(live, 0, "every recorded credential is revoked");
    let roles: i64 =
        sqlx::query_scalar("select count(*) from pg_roles where rolname like 'draft%' or rolname like 'v-%'")
            .fetch_one(&pg.admin().await)
            .await
            .unwrap();
    assert_eq!(roles, 0, "no role or login left in Postgres");
}
