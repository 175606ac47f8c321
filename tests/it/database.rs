//! Per-stand databases against the real Postgres server (scripts/pg-env.sh finds or starts one):
//! created, isolated from each other, cloned from a template, idempotent, and gone after teardown.

use std::str::FromStr;

use draftd::database::{
    DatabaseError, Databases, Dropped, Ensured, InstanceMark, Marked, MarkedRole, PgDatabases, StandDb,
};
use draftd::stand::Failure;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL: run the tests through scripts/test.sh")
}

async fn admin() -> PgPool {
    PgPoolOptions::new().max_connections(4).connect(&admin_url()).await.unwrap()
}

/// A stand's names, unique per test so tests run side by side on one server.
fn stand(tag: &str) -> StandDb {
    let name = format!("draft_t_{tag}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    StandDb { database: name.clone(), owner: name, template: None }
}

async fn owner_of(pool: &PgPool, database: &str) -> Option<String> {
    sqlx::query_scalar("select pg_get_userbyid(datdba)::text from pg_database where datname = $1")
        .bind(database)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn role_exists(pool: &PgPool, role: &str) -> bool {
    sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
        .bind(role)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Connects as `role` (made able to log in, as a granted credential would be) to `database`.
async fn connect_as(pool: &PgPool, role: &str, database: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    sqlx::query(&format!("alter role \"{role}\" login")).execute(pool).await.unwrap();
    PgConnectOptions::from_str(&admin_url()).unwrap().username(role).database(database).connect().await
}

#[tokio::test]
async fn a_stand_database_is_created_once_owned_by_its_role() {
    let pool = admin().await;
    let dbs = PgDatabases::new(pool.clone());
    let s = stand("create");
    assert_eq!(dbs.ensure(&s).await.unwrap(), Ensured { created_role: true, created_database: true });
    assert_eq!(owner_of(&pool, &s.database).await.as_deref(), Some(s.owner.as_str()));
    // Re-running the step changes nothing.
    assert_eq!(dbs.ensure(&s).await.unwrap(), Ensured { created_role: false, created_database: false });
    assert_eq!(dbs.drop_stand(&s).await.unwrap(), Dropped { dropped_database: true, dropped_role: true });
}

#[tokio::test]
async fn one_stands_role_cannot_connect_to_another_stands_database() {
    let pool = admin().await;
    let dbs = PgDatabases::new(pool.clone());
    let (a, b) = (stand("a"), stand("b"));
    dbs.ensure(&a).await.unwrap();
    dbs.ensure(&b).await.unwrap();
    let own = connect_as(&pool, &b.owner, &b.database).await.expect("a stand's role reaches its own database");
    own.close().await.unwrap();
    let err = connect_as(&pool, &b.owner, &a.database).await.expect_err("b's role must not reach a's database");
    assert!(err.to_string().contains("permission denied for database"), "{err}");
    dbs.drop_stand(&a).await.unwrap();
    dbs.drop_stand(&b).await.unwrap();
}

#[tokio::test]
async fn a_stand_database_can_be_cloned_from_a_seeded_template() {
    let pool = admin().await;
    let dbs = PgDatabases::new(pool.clone());
    let seed = stand("seed");
    sqlx::query(&format!("create database \"{}\"", seed.database)).execute(&pool).await.unwrap();
    let seed_url = PgConnectOptions::from_str(&admin_url()).unwrap().database(&seed.database);
    let mut seeding = seed_url.connect().await.unwrap();
    sqlx::query("create table tasks (id int primary key, title text)").execute(&mut seeding).await.unwrap();
    sqlx::query("insert into tasks values (1, 'seeded')").execute(&mut seeding).await.unwrap();

    // While someone is connected to the template, Postgres refuses to clone it: a clear, retried error.
    let s = StandDb { template: Some(seed.database.clone()), ..stand("clone") };
    let err = dbs.ensure(&s).await.unwrap_err();
    assert!(matches!(err, DatabaseError::TemplateInUse { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains(&seed.database), "{err}");
    seeding.close().await.unwrap();

    assert!(dbs.ensure(&s).await.unwrap().created_database);
    let mut clone = PgConnectOptions::from_str(&admin_url()).unwrap().database(&s.database).connect().await.unwrap();
    let title: String = sqlx::query_scalar("select title from tasks where id = 1").fetch_one(&mut clone).await.unwrap();
    assert_eq!(title, "seeded");
    clone.close().await.unwrap();

    let missing = StandDb { template: Some("draft_t_no_such_template".into()), ..stand("missing") };
    let err = dbs.ensure(&missing).await.unwrap_err();
    assert!(matches!(err, DatabaseError::TemplateMissing { .. }), "{err:?}");
    assert!(!err.is_transient());
    dbs.drop_stand(&missing).await.unwrap();

    dbs.drop_stand(&s).await.unwrap();
    sqlx::query(&format!("drop database \"{}\"", seed.database)).execute(&pool).await.unwrap();
}

#[tokio::test]
async fn teardown_drops_the_database_even_while_connected_then_its_role_leaving_nothing() {
    let pool = admin().await;
    let dbs = PgDatabases::new(pool.clone());
    let s = stand("drop");
    dbs.ensure(&s).await.unwrap();
    // A pod still connected when the stand goes.
    let connected = connect_as(&pool, &s.owner, &s.database).await.unwrap();
    assert_eq!(dbs.drop_stand(&s).await.unwrap(), Dropped { dropped_database: true, dropped_role: true });
    assert_eq!(owner_of(&pool, &s.database).await, None);
    assert!(!role_exists(&pool, &s.owner).await);
    drop(connected);
    // Again: nothing left to drop, and no error.
    assert_eq!(dbs.drop_stand(&s).await.unwrap(), Dropped { dropped_database: false, dropped_role: false });
}

/// Connects with issued credentials (the server may use trust auth; the role and its grants are
/// what is checked here, expiry by password is checked where passwords are enforced).
async fn connect_with(c: &draftd::database::Credentials, database: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    use secrecy::ExposeSecret;
    PgConnectOptions::from_str(&admin_url())
        .unwrap()
        .username(&c.username)
        .password(c.password.expose_secret())
        .database(database)
        .connect()
        .await
}

#[tokio::test]
async fn issued_logins_act_as_the_owner_of_their_stand_only_and_are_revoked_with_their_sessions() {
    let pool = admin().await;
    let dbs = PgDatabases::new(pool.clone());
    let (a, b) = (stand("la"), stand("lb"));
    dbs.ensure(&a).await.unwrap();
    dbs.ensure(&b).await.unwrap();
    let before = chrono::Utc::now();
    let login = dbs.issue_login(&a, std::time::Duration::from_secs(3600)).await.unwrap();
    assert!(login.username.starts_with(&a.owner) && login.username.len() <= 63, "{}", login.username);
    let lifetime = login.valid_until - before;
    assert!(lifetime <= chrono::Duration::seconds(3601) && lifetime >= chrono::Duration::seconds(3590), "{lifetime}");
    let expiry: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select rolvaliduntil from pg_roles where rolname = $1")
            .bind(&login.username)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(expiry.map(|t| t.timestamp()), Some(login.valid_until.timestamp()), "VALID UNTIL is set on the role");
    let shown = format!("{login:?}");
    assert!(!shown.contains(secrecy::ExposeSecret::expose_secret(&login.password)), "{shown}");
    assert_eq!(dbs.logins(&a).await.unwrap(), vec![login.username.clone()]);

    // It works in its stand's database, and what it creates belongs to the stand's owner role.
    let mut session = connect_with(&login, &a.database).await.expect("the login reaches its stand's database");
    sqlx::query("create table migrated (id int)").execute(&mut session).await.unwrap();
    let table_owner: String = sqlx::query_scalar("select tableowner::text from pg_tables where tablename = 'migrated'")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!(table_owner, a.owner);
    let err = connect_with(&login, &b.database).await.expect_err("never another stand's database");
    assert!(err.to_string().contains("permission denied for database"), "{err}");

    // Revoked: its open session ends, and it cannot come back.
    dbs.revoke_login(&login.username).await.unwrap();
    assert!(sqlx::query("select 1").execute(&mut session).await.is_err(), "the open session was ended");
    assert!(connect_with(&login, &a.database).await.is_err());
    assert!(!role_exists(&pool, &login.username).await);
    assert!(dbs.logins(&a).await.unwrap().is_empty());
    dbs.revoke_login(&login.username).await.expect("revoking twice is fine");

    // With the login gone, the stand drops cleanly: the table belongs to the owner.
    assert_eq!(dbs.drop_stand(&a).await.unwrap(), Dropped { dropped_database: true, dropped_role: true });
    dbs.drop_stand(&b).await.unwrap();
}

#[tokio::test]
async fn only_what_carries_the_mark_is_listed_and_dropped_as_an_orphan() {
    let pool = admin().await;
    let dbs = PgDatabases::new(pool.clone());
    let mark = InstanceMark::new(uuid::Uuid::new_v4());
    let (ours, unmarked) = (stand("mine"), stand("unmarked"));
    assert_eq!(
        dbs.ensure_marked(&ours, Some(&mark)).await.unwrap(),
        Ensured { created_role: true, created_database: true }
    );
    assert_eq!(
        dbs.ensure_marked(&ours, Some(&mark)).await.unwrap(),
        Ensured { created_role: false, created_database: false }
    );
    dbs.ensure(&unmarked).await.unwrap();
    let login = dbs.issue_marked_login(&ours, std::time::Duration::from_secs(3600), Some(&mark)).await.unwrap();
    dbs.issue_login(&unmarked, std::time::Duration::from_secs(3600)).await.unwrap();

    let marked = dbs.marked(&mark).await.unwrap();
    assert_eq!(marked.databases, std::slice::from_ref(&ours.database));
    assert_eq!(
        marked.roles,
        [
            MarkedRole { name: ours.owner.clone(), can_login: false, member_of: vec![], has_database: true },
            MarkedRole {
                name: login.username.clone(),
                can_login: true,
                member_of: vec![ours.owner.clone()],
                has_database: false
            },
        ]
    );
    // Another installation's mark sees none of it.
    assert_eq!(dbs.marked(&InstanceMark::new(uuid::Uuid::new_v4())).await.unwrap(), Marked::default());

    // Unmarked: left as it is, logins included.
    assert_eq!(
        dbs.drop_marked(&unmarked, &mark).await.unwrap(),
        Dropped { dropped_database: false, dropped_role: false }
    );
    assert!(!dbs.drop_marked_role(&unmarked.owner, &mark).await.unwrap());
    assert_eq!(owner_of(&pool, &unmarked.database).await.as_deref(), Some(unmarked.owner.as_str()));
    assert_eq!(dbs.logins(&unmarked).await.unwrap().len(), 1);

    // Marked: the logins, the database and its owner.
    assert_eq!(dbs.drop_marked(&ours, &mark).await.unwrap(), Dropped { dropped_database: true, dropped_role: true });
    assert!(!role_exists(&pool, &login.username).await);
    assert_eq!(owner_of(&pool, &ours.database).await, None);
    assert!(!role_exists(&pool, &ours.owner).await);
    assert_eq!(dbs.marked(&mark).await.unwrap(), Marked::default());

    for l in dbs.logins(&unmarked).await.unwrap() {
        dbs.revoke_login(&l).await.unwrap();
    }
    dbs.drop_stand(&unmarked).await.unwrap();
}

/// A stand database admin as the README asks for it (LOGIN CREATEDB CREATEROLE, nothing else;
/// `extra` adds role options), made by the suite's superuser and dropped when the test ends.
struct Admin {
    name: String,
}

impl Admin {
    async fn create(superuser: &PgPool, extra: &str) -> Admin {
        let name = format!("draftd_t_admin_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        sqlx::query(&format!("create role \"{name}\" login createdb createrole {extra}"))
            .execute(superuser)
            .await
            .unwrap();
        Admin { name }
    }

    async fn pool(&self) -> PgPool {
        let options = PgConnectOptions::from_str(&admin_url()).unwrap().username(&self.name);
        PgPoolOptions::new().max_connections(2).connect_with(options).await.unwrap()
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let mut conn = PgConnectOptions::from_str(&admin_url()).unwrap().connect().await.unwrap();
                sqlx::query(&format!("drop role if exists \"{name}\"")).execute(&mut conn).await.unwrap();
            })
        })
        .join();
    }
}

async fn sessions_of(pool: &PgPool, role: &str) -> i64 {
    sqlx::query_scalar("select count(*) from pg_stat_activity where usename = $1")
        .bind(role)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Postgres ends another role's session only for superusers, members of that role or of
/// pg_signal_backend; a CREATEDB CREATEROLE admin is none of them until draftd makes it a member.
#[tokio::test]
async fn a_createrole_only_admin_makes_a_stand_and_revoking_a_login_ends_its_open_session() {
    let pool = admin().await;
    let admin_role = Admin::create(&pool, "").await;
    let dbs = PgDatabases::new(admin_role.pool().await);
    let s = stand("nosu");
    assert_eq!(
        dbs.ensure(&s).await.expect("CREATEDB and CREATEROLE are enough for a stand's database"),
        Ensured { created_role: true, created_database: true }
    );
    assert_eq!(owner_of(&pool, &s.database).await.as_deref(), Some(s.owner.as_str()));
    let login = dbs.issue_login(&s, std::time::Duration::from_secs(3600)).await.unwrap();
    // The admin is now a member of the owner, and may log in: it is still no login of the stand's.
    assert_eq!(dbs.logins(&s).await.unwrap(), std::slice::from_ref(&login.username));

    // A pod's session, open while the login is revoked.
    let mut session = connect_with(&login, &s.database).await.expect("the login reaches its stand's database");
    sqlx::query("create table tasks (id int)").execute(&mut session).await.unwrap();
    assert_eq!(dbs.sessions(&login.username).await.unwrap(), 1, "the admin sees the login's session");

    dbs.revoke_login(&login.username).await.expect("revoked by the CREATEROLE admin");
    let err = sqlx::query("select 1").execute(&mut session).await.expect_err("the open session was ended");
    assert!(!err.to_string().contains("permission denied"), "{err}");
    assert_eq!(sessions_of(&pool, &login.username).await, 0);
    assert!(!role_exists(&pool, &login.username).await, "the login is dropped");
    assert!(dbs.logins(&s).await.unwrap().is_empty());
    assert!(role_exists(&pool, &admin_role.name).await, "the admin itself is left alone");
    dbs.revoke_login(&login.username).await.expect("revoking twice is fine");

    // Teardown by the same admin: the database (it owns it through the owner role) and the owner.
    assert_eq!(dbs.drop_stand(&s).await.unwrap(), Dropped { dropped_database: true, dropped_role: true });
    assert_eq!(owner_of(&pool, &s.database).await, None);
    assert!(!role_exists(&pool, &s.owner).await);
}

/// An admin that cannot take a login's rights (here NOINHERIT, on Postgres 15; on 16 and later one
/// that did not create the login) gets an error naming the statement that fixes it, and the login
/// is not dropped under its open session, which would leave that session running unseen.
#[tokio::test]
async fn an_admin_that_cannot_end_a_logins_sessions_is_told_what_to_run_and_the_login_stays() {
    let pool = admin().await;
    let superuser = PgDatabases::new(pool.clone());
    let s = stand("noinh");
    superuser.ensure(&s).await.unwrap();
    let login = superuser.issue_login(&s, std::time::Duration::from_secs(3600)).await.unwrap();
    let mut session = connect_with(&login, &s.database).await.unwrap();

    let admin_role = Admin::create(&pool, "noinherit").await;
    let dbs = PgDatabases::new(admin_role.pool().await);
    let err = dbs.revoke_login(&login.username).await.expect_err("it may not end the session");
    assert!(matches!(&err, DatabaseError::AdminLacksRole { role, .. } if *role == login.username), "{err:?}");
    assert!(!err.is_transient());
    let shown = err.to_string();
    let version: i32 =
        sqlx::query_scalar("select current_setting('server_version_num')::int").fetch_one(&pool).await.unwrap();
    if version < 160000 {
        assert!(shown.contains(&format!("ALTER ROLE \"{}\" INHERIT", admin_role.name)), "{shown}");
    }
    sqlx::query("select 1").execute(&mut session).await.expect("the session still runs, in plain sight");
    assert!(role_exists(&pool, &login.username).await, "the login is not dropped under its session");
    assert_eq!(dbs.logins(&s).await.unwrap(), Vec::<String>::new(), "NOLOGIN: it cannot open new sessions");

    // Fixed as the error says, the same revocation goes through.
    sqlx::query(&format!("alter role \"{}\" inherit", admin_role.name)).execute(&pool).await.unwrap();
    dbs.revoke_login(&login.username).await.unwrap();
    assert!(sqlx::query("select 1").execute(&mut session).await.is_err(), "the open session was ended");
    assert!(!role_exists(&pool, &login.username).await);
    superuser.drop_stand(&s).await.unwrap();
}
