//! The orphan scan of stand databases, roles, logins and Vault roles, on the machine's shared
//! Postgres server (where other tests create `draft_*` databases at the same time) and a real
//! OpenBao: only what this installation marked is ever found or removed, and removing is
//! idempotent. Each test has its own draftd database, so its own instance id.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bao::Bao;
use draftd::config::Config;
use draftd::credentials::{CredentialOrphan, Lifetimes, OrphanKind, StandCredentials, StandServer};
use draftd::database::{Databases, PgDatabases, StandDb};
use draftd::vault::{OpenBao, Vault};
use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::support::bao;
use draftd::stand::StandId;

fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL: run the tests through scripts/test.sh")
}

async fn admin() -> PgPool {
    PgPoolOptions::new().max_connections(4).connect(&admin_url()).await.unwrap()
}

/// Drops every database and role whose name starts with the test's prefix (and the logins that
/// are members of those roles), when the test ends, passed or not.
struct Sweep {
    prefix: String,
}

impl Sweep {
    fn new() -> Sweep {
        Sweep { prefix: format!("draft_o{}_", &uuid::Uuid::new_v4().simple().to_string()[..8]) }
    }

    /// A stand of this test: `<prefix><tag>`, database and owner role of the same name.
    fn stand(&self, tag: &str) -> StandDb {
        let name = format!("{}{tag}", self.prefix);
        StandDb { database: name.clone(), owner: name, template: None }
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: a runtime of its own.
        let swept = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let mut conn = PgConnectOptions::from_str(&admin_url()).unwrap().connect().await.unwrap();
                let databases: Vec<String> =
                    sqlx::query_scalar("select datname::text from pg_database where starts_with(datname, $1)")
                        .bind(&prefix)
                        .fetch_all(&mut conn)
                        .await
                        .unwrap();
                for d in databases {
                    sqlx::query(&format!("drop database if exists \"{d}\" with (force)"))
                        .execute(&mut conn)
                        .await
                        .unwrap();
                }
                // Members first (Vault's logins are named v-…), then the test's own roles.
                let roles: Vec<String> = sqlx::query_scalar(
                    "select r.rolname::text from pg_roles r
                     where exists (select 1 from pg_auth_members m join pg_roles o on o.oid = m.roleid
                                   where m.member = r.oid and starts_with(o.rolname, $1))
                     union all
                     select rolname::text from pg_roles where starts_with(rolname, $1)",
                )
                .bind(&prefix)
                .fetch_all(&mut conn)
                .await
                .unwrap();
                for r in roles {
                    sqlx::query(&format!("drop role if exists \"{r}\"")).execute(&mut conn).await.unwrap();
                }
            })
        })
        .join();
        if swept.is_err() && !std::thread::panicking() {
            panic!("could not drop the test's databases and roles");
        }
    }
}

fn lifetimes() -> Lifetimes {
    Lifetimes { max: Duration::from_secs(600), lease: Duration::from_secs(300), grace: Duration::from_secs(1) }
}

/// draftd over the shared server, with Vault when given.
async fn credentials(pool: &PgPool, bao: Option<&Bao>) -> StandCredentials {
    let server = StandServer::parse(&admin_url(), None).unwrap();
    StandCredentials::new(
        pool.clone(),
        Some((Arc::new(PgDatabases::new(admin().await)), server)),
        bao.map(|b| Arc::new(vault_of(b))),
        lifetimes(),
    )
}

fn vault_of(bao: &Bao) -> OpenBao {
    let auth = format!("auth = \"token\"\ntoken_file = \"{}\"", bao.token_file().display());
    vault_with(bao, &auth)
}

fn vault_with(bao: &Bao, auth: &str) -> OpenBao {
    let config = Config::from_toml(&format!(
        "[postgres]\nadmin_url_env = \"DRAFTD_TEST_UNUSED\"\n[vault]\naddress = \"{}\"\n{auth}\n",
        bao.addr
    ))
    .unwrap();
    OpenBao::from_config(config.vault.as_ref().unwrap()).unwrap()
}

async fn new_stand(pool: &PgPool, db: &StandDb) -> i64 {
    sqlx::query_scalar("insert into stands (project, branch, namespace) values ('shop', $1, $2) returning stand_id")
        .bind(&db.database)
        .bind(db.database.replace('_', "-"))
        .fetch_one(pool)
        .await
        .unwrap()
}

fn live(stands: &[&StandDb]) -> HashSet<String> {
    stands.iter().map(|s| s.database.clone()).collect()
}

fn orphan(kind: OrphanKind, name: &str) -> CredentialOrphan {
    CredentialOrphan { kind, name: name.to_owned() }
}

async fn database_exists(admin: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(name)
        .fetch_one(admin)
        .await
        .unwrap()
}

async fn role_exists(admin: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
        .bind(name)
        .fetch_one(admin)
        .await
        .unwrap()
}

async fn connect(user: &str, password: &str, database: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    PgConnectOptions::from_str(&admin_url())
        .unwrap()
        .username(user)
        .password(password)
        .database(database)
        .connect()
        .await
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_marked_database_of_a_dead_stand_is_found_and_removed_and_a_live_one_is_not(pool: PgPool) {
    let sweep = Sweep::new();
    let admin = admin().await;
    let creds = credentials(&pool, None).await;
    let (dead, alive) = (sweep.stand("dead"), sweep.stand("alive"));
    creds.ensure_database(&dead).await.unwrap();
    creds.ensure_database(&alive).await.unwrap();

    // Both carry the mark of this installation, from its own database.
    let instance: String = sqlx::query_scalar("select instance_id::text from instance").fetch_one(&pool).await.unwrap();
    let comments: Vec<Option<String>> = sqlx::query_scalar(
        "select shobj_description(oid, 'pg_database') from pg_database where datname = $1
         union all select shobj_description(oid, 'pg_authid') from pg_roles where rolname = $1",
    )
    .bind(&dead.database)
    .fetch_all(&admin)
    .await
    .unwrap();
    let expected = Some(format!("draftd instance {instance}"));
    assert_eq!(comments, [expected.clone(), expected]);

    // Exactly the dead stand: other tests' databases on this server carry other marks, or none.
    let found = creds.scan_orphans(&live(&[&alive])).await.unwrap();
    assert_eq!(found, [orphan(OrphanKind::Database, &dead.database)]);

    let removed = creds.remove_orphan(&found[0]).await.unwrap();
    assert_eq!((removed["dropped_database"].clone(), removed["dropped_role"].clone()), (json!(true), json!(true)));
    assert!(!database_exists(&admin, &dead.database).await, "pg_database");
    assert!(!role_exists(&admin, &dead.owner).await, "pg_roles");
    assert!(database_exists(&admin, &alive.database).await, "the live stand is untouched");
    assert!(creds.scan_orphans(&live(&[&alive])).await.unwrap().is_empty());

    // Again: gone already, and no error.
    let again = creds.remove_orphan(&found[0]).await.unwrap();
    assert_eq!((again["dropped_database"].clone(), again["dropped_role"].clone()), (json!(false), json!(false)));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn unmarked_databases_and_those_of_another_installation_are_never_orphans(pool: PgPool) {
    let sweep = Sweep::new();
    let admin = admin().await;
    let creds = credentials(&pool, None).await;
    // Made by hand, as another tool (or draftd before marking) would.
    let by_hand = sweep.stand("by_hand");
    PgDatabases::new(admin.clone()).ensure(&by_hand).await.unwrap();
    // Made by another draftd installation on the same server.
    let foreign = sweep.stand("foreign");
    PgDatabases::new(admin.clone()).ensure(&foreign).await.unwrap();
    let other = format!("draftd instance {}", uuid::Uuid::new_v4());
    for what in ["database", "role"] {
        sqlx::query(&format!("comment on {what} \"{}\" is '{other}'", foreign.database)).execute(&admin).await.unwrap();
    }
    let foreign_login = PgDatabases::new(admin.clone()).issue_login(&foreign, Duration::from_secs(600)).await.unwrap();
    sqlx::query(&format!("comment on role \"{}\" is '{other}'", foreign_login.username)).execute(&admin).await.unwrap();

    assert!(creds.scan_orphans(&HashSet::new()).await.unwrap().is_empty(), "nothing of this installation's");

    // Asked to remove them anyway, draftd leaves them.
    for db in [&by_hand, &foreign] {
        let removed = creds.remove_orphan(&orphan(OrphanKind::Database, &db.database)).await.unwrap();
        assert_eq!(removed["dropped_database"], json!(false), "{removed}");
        assert!(database_exists(&admin, &db.database).await, "{} is still there", db.database);
        let removed = creds.remove_orphan(&orphan(OrphanKind::Role, &db.owner)).await.unwrap();
        assert_eq!(removed["dropped"], json!(false), "{removed}");
        assert!(role_exists(&admin, &db.owner).await);
    }
    let removed = creds.remove_orphan(&orphan(OrphanKind::Login, &foreign_login.username)).await.unwrap();
    assert_eq!(removed["dropped"], json!(false));
    assert!(role_exists(&admin, &foreign_login.username).await);

    // The next deploy of a stand made before marking marks it: then it is this installation's.
    creds.ensure_database(&by_hand).await.unwrap();
    assert_eq!(creds.scan_orphans(&HashSet::new()).await.unwrap(), [orphan(OrphanKind::Database, &by_hand.database)]);
    assert!(creds.scan_orphans(&live(&[&by_hand])).await.unwrap().is_empty());
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_postgres_login_of_a_dead_stand_is_found_and_revoked(pool: PgPool) {
    let sweep = Sweep::new();
    let admin = admin().await;
    let creds = credentials(&pool, None).await;
    let (dead, alive) = (sweep.stand("dead"), sweep.stand("alive"));
    creds.ensure_database(&dead).await.unwrap();
    creds.ensure_database(&alive).await.unwrap();
    let dead_login = creds.issue(StandId::new(new_stand(&pool, &dead).await), None, "app", &dead).await.unwrap();
    let alive_login = creds.issue(StandId::new(new_stand(&pool, &alive).await), None, "app", &alive).await.unwrap();
    assert_eq!(dead_login.source, "postgres");
    let open = connect(&dead_login.username, dead_login.password.expose_secret(), &dead.database).await.unwrap();

    let found = creds.scan_orphans(&live(&[&alive])).await.unwrap();
    assert_eq!(found, [orphan(OrphanKind::Database, &dead.database), orphan(OrphanKind::Login, &dead_login.username)]);

    // The login alone: revoked, its session ended; the database stays until removed itself.
    let removed = creds.remove_orphan(&found[1]).await.unwrap();
    assert_eq!(removed["dropped"], json!(true));
    assert!(!role_exists(&admin, &dead_login.username).await);
    let err = connect(&dead_login.username, dead_login.password.expose_secret(), &dead.database)
        .await
        .expect_err("a revoked login cannot connect");
    assert!(err.to_string().contains("does not exist"), "{err}");
    drop(open);
    assert!(database_exists(&admin, &dead.database).await);
    assert_eq!(creds.scan_orphans(&live(&[&alive])).await.unwrap(), [found[0].clone()]);
    assert_eq!(creds.remove_orphan(&found[1]).await.unwrap()["dropped"], json!(false), "twice is fine");

    // An owner role whose database went (a teardown stopped halfway) is found on its own.
    sqlx::query(&format!("drop database \"{}\" with (force)", dead.database)).execute(&admin).await.unwrap();
    let found = creds.scan_orphans(&live(&[&alive])).await.unwrap();
    assert_eq!(found, [orphan(OrphanKind::Role, &dead.owner)]);
    assert_eq!(creds.remove_orphan(&found[0]).await.unwrap()["dropped"], json!(true));
    assert!(!role_exists(&admin, &dead.owner).await);

    assert!(creds.scan_orphans(&live(&[&alive])).await.unwrap().is_empty());
    connect(&alive_login.username, alive_login.password.expose_secret(), &alive.database)
        .await
        .expect("the live stand's login still works")
        .close()
        .await
        .unwrap();
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_vault_role_of_a_dead_stand_is_found_and_removed_with_its_leases(pool: PgPool) {
    let sweep = Sweep::new();
    let bao = Bao::start();
    let creds = credentials(&pool, Some(&bao)).await;
    let vault = vault_of(&bao);
    let (dead, alive) = (sweep.stand("dead"), sweep.stand("alive"));
    creds.ensure_database(&dead).await.unwrap();
    creds.ensure_database(&alive).await.unwrap();
    let dead_login = creds.issue(StandId::new(new_stand(&pool, &dead).await), None, "app", &dead).await.unwrap();
    vault.issue(&dead.database).await.unwrap();
    creds.issue(StandId::new(new_stand(&pool, &alive).await), None, "app", &alive).await.unwrap();
    assert_eq!(dead_login.source, "vault");
    // A role on another connection is not draftd's, whatever its name.
    let (status, body) = bao
        .api(
            "POST",
            &format!("database/roles/{}", sweep.stand("elsewhere").database),
            Some(json!({ "db_name": "someone-else", "creation_statements": ["select 1"] })),
        )
        .await;
    assert!(status < 300, "{status} {body}");

    let found = creds.scan_orphans(&live(&[&alive])).await.unwrap();
    assert_eq!(
        found,
        [orphan(OrphanKind::Database, &dead.database), orphan(OrphanKind::VaultRole, &dead.database)],
        "Vault's logins are not marked: Vault revokes them by lease"
    );
    assert_eq!(vault.leases(&dead.database).await.unwrap().len(), 2);

    let removed = creds.remove_orphan(&found[1]).await.unwrap();
    assert_eq!((removed["leases_revoked"].clone(), removed["role_deleted"].clone()), (json!(2), json!(true)));
    assert!(vault.leases(&dead.database).await.unwrap().is_empty(), "no lease left");
    let err = connect(&dead_login.username, dead_login.password.expose_secret(), &dead.database)
        .await
        .expect_err("the revoked login cannot connect");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(bao.api("GET", &format!("database/roles/{}", dead.database), None).await.0, 404);
    assert_eq!(vault.leases(&alive.database).await.unwrap().len(), 1, "the live stand's lease is untouched");
    let again = creds.remove_orphan(&found[1]).await.unwrap();
    assert_eq!(again["leases_revoked"], json!(0), "twice is fine: {again}");

    creds.remove_orphan(&found[0]).await.unwrap();
    assert!(creds.scan_orphans(&live(&[&alive])).await.unwrap().is_empty());
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn leases_left_of_a_deleted_vault_role_are_found_and_revoked(pool: PgPool) {
    let sweep = Sweep::new();
    let bao = Bao::start();
    let creds = credentials(&pool, Some(&bao)).await;
    let vault = vault_of(&bao);
    let dead = sweep.stand("dead");
    creds.ensure_database(&dead).await.unwrap();
    let login = vault.issue(&dead.database).await.unwrap();
    // Deleted behind draftd's back, leases and all.
    assert_eq!(bao.api("DELETE", &format!("database/roles/{}", dead.database), None).await.0, 204);

    let found = creds.scan_orphans(&HashSet::new()).await.unwrap();
    let vault_role = orphan(OrphanKind::VaultRole, &dead.database);
    assert!(found.contains(&vault_role), "{found:?}");
    assert!(creds.scan_orphans(&live(&[&dead])).await.unwrap().is_empty(), "unless the stand lives");

    let removed = creds.remove_orphan(&vault_role).await.unwrap();
    assert_eq!((removed["leases_revoked"].clone(), removed["role_deleted"].clone()), (json!(1), json!(false)));
    assert!(vault.leases(&dead.database).await.unwrap().is_empty());
    assert!(connect(&login.username, login.password.expose_secret(), &dead.database).await.is_err());
    assert!(!creds.scan_orphans(&HashSet::new()).await.unwrap().contains(&vault_role));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_shipped_policy_allows_the_vault_scan_and_removal(pool: PgPool) {
    let sweep = Sweep::new();
    let bao = Bao::start();
    let policy =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vault-policy.hcl"))
            .unwrap();
    assert_eq!(bao.api("PUT", "sys/policies/acl/draftd", Some(json!({ "policy": policy }))).await.0, 204);
    let (status, body) =
        bao.api("POST", "auth/token/create", Some(json!({ "policies": ["draftd"], "no_default_policy": true }))).await;
    assert_eq!(status, 200, "{body}");
    let token_file = bao.dir.path().join("policy-token");
    std::fs::write(&token_file, body["auth"]["client_token"].as_str().unwrap()).unwrap();
    let vault = vault_with(&bao, &format!("auth = \"token\"\ntoken_file = \"{}\"", token_file.display()));
    let creds = StandCredentials::new(
        pool.clone(),
        Some((Arc::new(PgDatabases::new(admin().await)), StandServer::parse(&admin_url(), None).unwrap())),
        Some(Arc::new(vault)),
        lifetimes(),
    );
    let (dead, gone) = (sweep.stand("dead"), sweep.stand("gone"));
    creds.ensure_database(&dead).await.unwrap();
    creds.ensure_database(&gone).await.unwrap();
    creds.issue(StandId::new(new_stand(&pool, &dead).await), None, "app", &dead).await.unwrap();
    creds.issue(StandId::new(new_stand(&pool, &gone).await), None, "app", &gone).await.unwrap();
    assert_eq!(bao.api("DELETE", &format!("database/roles/{}", gone.database), None).await.0, 204);

    let found = creds.scan_orphans(&HashSet::new()).await.unwrap();
    let vault_roles: Vec<_> = found.iter().filter(|o| o.kind == OrphanKind::VaultRole).cloned().collect();
    assert_eq!(
        vault_roles,
        [orphan(OrphanKind::VaultRole, &dead.database), orphan(OrphanKind::VaultRole, &gone.database)]
    );
    for o in &found {
        creds.remove_orphan(o).await.unwrap();
    }
    assert!(creds.scan_orphans(&HashSet::new()).await.unwrap().is_empty());
}
