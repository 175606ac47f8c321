//! A stand's database and credentials, composed from [`Databases`] and [`Vault`]: the database
//! step's database (and Vault role), the secrets step's KV values and database login, the migrate
//! Job's own login, the keeper that renews or replaces logins while the stand lives, and the
//! teardown that revokes every login before the database is dropped (Vault issue 3410).
//!
//! Credentials are recorded by reference (lease id or login name) in `credentials`, never by value.
//! Even one issued but not recorded (a crash in between) cannot outlive the stand: teardown revokes
//! every lease under the stand's Vault role and every login that is a member of its owner role.
//!
//! What outlives its stand anyway (a teardown that never ran) the reaper finds with
//! [`StandCredentials::scan_orphans`]: only databases and roles marked with this installation's
//! [`InstanceMark`], and Vault roles on draftd's own connection, since the server and Vault may be
//! shared.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::OnceCell;

use crate::config::Config;
use crate::database::{DatabaseError, Databases, InstanceMark, Marked, PgDatabases, StandDb};
use crate::stand::Failure;
use crate::vault::{DbRole, DbServer, OpenBao, RoleConnection, Vault, VaultError};

/// Name of the Secret carrying the database login (values/draft.yaml's `secretRefs`).
pub const DATABASE_SECRET: &str = "app-database";
/// Name of the Secret carrying the app's KV values.
pub const APP_SECRET: &str = "app-secrets";

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("draftd's own database: {0}")]
    Store(#[from] sqlx::Error),
    #[error("{0}")]
    Config(String),
}

impl CredentialError {
    /// [`Failure::is_transient`], for callers without the trait in scope.
    pub fn is_transient(&self) -> bool {
        Failure::is_transient(self)
    }

    /// [`Failure::label`], for callers without the trait in scope.
    pub fn label(&self) -> &'static str {
        Failure::label(self)
    }
}

impl Failure for CredentialError {
    fn is_transient(&self) -> bool {
        match self {
            CredentialError::Database(e) => e.is_transient(),
            CredentialError::Vault(e) => e.is_transient(),
            CredentialError::Store(_) => true,
            CredentialError::Config(_) => false,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            CredentialError::Database(e) => e.label(),
            CredentialError::Vault(e) => e.label(),
            CredentialError::Store(_) => "database",
            CredentialError::Config(_) => "credentials_config",
        }
    }
}

/// The stand database server as the stands (and Vault) reach it, from the admin URL.
#[derive(Clone)]
pub struct StandServer {
    /// `host:port` for pods and for Vault's connection.
    pub host: String,
    admin_database: String,
    admin_user: String,
    admin_password: SecretString,
    query: Option<String>,
}

impl StandServer {
    /// Parses the admin URL; `host` overrides where stands reach the server.
    pub fn parse(admin_url: &str, host: Option<&str>) -> Result<Self, CredentialError> {
        // Never echo the URL: it carries the admin password.
        let url = url::Url::parse(admin_url)
            .map_err(|e| CredentialError::Config(format!("the stand database admin URL is not a URL: {e}")))?;
        let decode =
            |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
        let own_host = format!("{}:{}", url.host_str().unwrap_or("localhost"), url.port().unwrap_or(5432));
        let database = url.path().trim_start_matches('/');
        Ok(Self {
            host: host.map(str::to_owned).unwrap_or(own_host),
            admin_database: if database.is_empty() { "postgres".into() } else { database.to_owned() },
            admin_user: decode(url.username()).unwrap_or_default(),
            admin_password: SecretString::from(url.password().and_then(decode).unwrap_or_default()),
            query: url.query().map(str::to_owned),
        })
    }

    fn for_vault(&self) -> DbServer {
        DbServer {
            host: self.host.clone(),
            database: self.admin_database.clone(),
            username: self.admin_user.clone(),
            password: self.admin_password.clone(),
            query: self.query.clone(),
        }
    }
}

/// A login handed out: recorded as `credential_id`, its password only here.
pub struct Issued {
    pub credential_id: i64,
    pub username: String,
    pub password: SecretString,
    pub expires_at: DateTime<Utc>,
    pub source: &'static str,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("credential_id", &self.credential_id)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What the keeper did in one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Kept {
    pub renewed: usize,
    pub replaced: usize,
    pub revoked: usize,
    /// Replaced logins past their grace period left alone because sessions still use them.
    pub in_use: usize,
    pub failed: usize,
}

/// What the keeper does with one live credential in a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upkeep {
    Nothing,
    /// Replaced and past its grace period, but still used: revoked once unused, or at its end.
    InUse,
    Revoke,
    Replace,
    Renew,
}

/// A live credential as the keeper sees it.
#[derive(Debug, sqlx::FromRow)]
struct LiveCredential {
    credential_id: i64,
    stand_id: i64,
    purpose: String,
    source: String,
    username: String,
    lease_id: Option<String>,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    max_expires_at: DateTime<Utc>,
    superseded_at: Option<DateTime<Utc>>,
    stand_state: String,
    namespace: String,
}

/// Settings of issuing, from `[postgres]` and `[vault]`.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Longest life of any credential (Vault: the role's max TTL; Postgres: `VALID UNTIL`).
    pub max: Duration,
    /// A Vault lease's TTL when issued and per renewal.
    pub lease: Duration,
    /// How long a replaced credential keeps working, for pods still rolling to the new one.
    pub grace: Duration,
}

/// What the orphan scan found, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrphanKind {
    /// A marked stand database (with its owner role).
    Database,
    /// A marked owner role without a database.
    Role,
    /// A marked Postgres-issued login whose stand is gone.
    Login,
    /// A Vault role on draftd's connection, or the leases left of a deleted one.
    VaultRole,
}

impl OrphanKind {
    /// As recorded in the `orphans` table.
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanKind::Database => "database",
            OrphanKind::Role => "role",
            OrphanKind::Login => "login",
            OrphanKind::VaultRole => "vault_role",
        }
    }
}

/// A database, role, login or Vault role that no live stand accounts for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct CredentialOrphan {
    pub kind: OrphanKind,
    pub name: String,
}

/// Stand databases and Vault roles are named `draft_<branch-slug>` (the namespace with `_` for
/// `-`); the policy lets draftd read only those roles.
const STAND_PREFIX: &str = "draft_";

pub struct StandCredentials<D = PgDatabases, V = OpenBao> {
    pool: PgPool,
    databases: Option<(Arc<D>, StandServer)>,
    vault: Option<Arc<V>>,
    lifetimes: Lifetimes,
    /// This installation's mark, read from draftd's own database on first use.
    instance: OnceCell<InstanceMark>,
}

/// Mask for the dry-run folder and anything else shown: keys, never values.
pub fn redacted(data: &BTreeMap<String, SecretString>) -> Value {
    json!(data.keys().collect::<Vec<_>>())
}

impl StandCredentials<PgDatabases, OpenBao> {
    /// From the configuration; `None` when neither `[postgres]` nor `[vault]` is set. Reads the
    /// admin URL from the environment now, so a missing one stops `serve` at start.
    pub fn from_config(pool: PgPool, config: &Config) -> Result<Option<Self>, CredentialError> {
        if config.postgres.is_none() && config.vault.is_none() {
            return Ok(None);
        }
        let databases = match &config.postgres {
            None => None,
            Some(pg) => {
                let url = std::env::var(&pg.admin_url_env).map_err(|_| {
                    CredentialError::Config(format!(
                        "[postgres] admin_url_env names {}, which is not set: it must hold the stand database server's admin URL",
                        pg.admin_url_env
                    ))
                })?;
                let server = StandServer::parse(&url, pg.host.as_deref())?;
                use sqlx::ConnectOptions;
                use std::str::FromStr;
                let options = sqlx::postgres::PgConnectOptions::from_str(&url)
                    .map_err(|e| CredentialError::Config(format!("the stand database admin URL: {e}")))?
                    // Statements here carry login passwords (CREATE ROLE … PASSWORD): sqlx must
                    // never log them, at any level.
                    .log_statements(log::LevelFilter::Off)
                    .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(3600));
                let admin = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_lazy_with(options);
                Some((Arc::new(PgDatabases::new(admin)), server))
            }
        };
        let vault = match &config.vault {
            None => None,
            Some(v) => Some(Arc::new(OpenBao::from_config(v)?)),
        };
        Ok(Some(Self::new(pool, databases, vault, lifetimes_of(config))))
    }
}

/// The lifetimes the configuration asks for.
pub fn lifetimes_of(config: &Config) -> Lifetimes {
    match (&config.vault, &config.postgres) {
        (Some(v), _) => Lifetimes { max: v.credential_ttl, lease: v.lease_ttl, grace: grace_for(v.credential_ttl) },
        (None, Some(pg)) => {
            Lifetimes { max: pg.credential_ttl, lease: pg.credential_ttl, grace: grace_for(pg.credential_ttl) }
        }
        (None, None) => Lifetimes {
            max: Duration::from_secs(3600),
            lease: Duration::from_secs(1200),
            grace: Duration::from_secs(300),
        },
    }
}

/// Long enough for a rollout to reach the new Secret, short against the credential's life.
fn grace_for(max: Duration) -> Duration {
    (max / 6).min(Duration::from_secs(300))
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(1))
}

impl<D: Databases, V: Vault> StandCredentials<D, V> {
    pub fn new(
        pool: PgPool,
        databases: Option<(Arc<D>, StandServer)>,
        vault: Option<Arc<V>>,
        lifetimes: Lifetimes,
    ) -> Self {
        Self { pool, databases, vault, lifetimes, instance: OnceCell::new() }
    }

    /// This installation's mark (`instance` in draftd's own database), read once.
    pub async fn instance_mark(&self) -> Result<&InstanceMark, CredentialError> {
        self.instance
            .get_or_try_init(|| async {
                let id: uuid::Uuid =
                    sqlx::query_scalar("select instance_id from instance").fetch_one(&self.pool).await?;
                Ok::<_, CredentialError>(InstanceMark::new(id))
            })
            .await
    }

    /// `host:port` at which stands reach their database server, when there is one.
    pub fn database_host(&self) -> Option<&str> {
        self.databases.as_ref().map(|(_, server)| server.host.as_str())
    }

    pub fn has_databases(&self) -> bool {
        self.databases.is_some()
    }

    pub fn has_vault(&self) -> bool {
        self.vault.is_some()
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    fn databases(&self) -> Result<&(Arc<D>, StandServer), CredentialError> {
        self.databases.as_ref().ok_or_else(|| CredentialError::Config("no [postgres] configured".into()))
    }

    /// The database step: the stand's database and owner role, and with Vault the stand's role in
    /// the database engine. Every part is idempotent.
    pub async fn ensure_database(&self, db: &StandDb) -> Result<Value, CredentialError> {
        let (databases, server) = self.databases()?;
        let ensured = databases.ensure_marked(db, Some(self.instance_mark().await?)).await?;
        let mut detail = json!({
            "database": db.database,
            "owner": db.owner,
            "template": db.template,
            "created_database": ensured.created_database,
            "created_role": ensured.created_role,
            "host": server.host,
        });
        if let Some(vault) = &self.vault {
            vault.ensure_connection(&server.for_vault()).await?;
            let role = DbRole {
                name: db.database.clone(),
                owner: db.owner.clone(),
                ttl: self.lifetimes.lease,
                max_ttl: self.lifetimes.max,
            };
            vault.ensure_role(&role).await?;
            detail["vault_role"] = json!(role.name);
        }
        Ok(detail)
    }

    /// The app's KV secrets at `<kv_mount>/<team>/<service>`; `None` without Vault.
    pub async fn read_kv(
        &self,
        team: &str,
        service: &str,
    ) -> Result<Option<BTreeMap<String, SecretString>>, CredentialError> {
        match &self.vault {
            None => Ok(None),
            Some(vault) => Ok(Some(vault.read_kv(&format!("{team}/{service}")).await?)),
        }
    }

    /// A new login for the stand's database, from Vault when configured, else a Postgres role with
    /// `VALID UNTIL`; recorded before it is handed out.
    pub async fn issue(
        &self,
        stand_id: i64,
        run_id: Option<i64>,
        purpose: &str,
        db: &StandDb,
    ) -> Result<Issued, CredentialError> {
        let (databases, _) = self.databases()?;
        let now = Utc::now();
        let (source, username, password, lease_id, expires_at, max_expires_at) = match &self.vault {
            Some(vault) => {
                let login = vault.issue(&db.database).await?;
                let expires = now + chrono(login.lease_duration);
                (
                    "vault",
                    login.username,
                    login.password,
                    Some(login.lease_id),
                    expires,
                    now + chrono(self.lifetimes.max),
                )
            }
            None => {
                let mark = self.instance_mark().await?;
                let login = databases.issue_marked_login(db, self.lifetimes.max, Some(mark)).await?;
                ("postgres", login.username, login.password, None, login.valid_until, login.valid_until)
            }
        };
        let credential_id: i64 = sqlx::query_scalar(
            "insert into credentials (stand_id, run_id, purpose, source, username, lease_id, issued_at, expires_at, max_expires_at)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning credential_id",
        )
        .bind(stand_id)
        .bind(run_id)
        .bind(purpose)
        .bind(source)
        .bind(&username)
        .bind(&lease_id)
        .bind(now)
        .bind(expires_at)
        .bind(max_expires_at)
        .fetch_one(&self.pool)
        .await?;
        Ok(Issued { credential_id, username, password, expires_at, source })
    }

    /// The environment a login becomes in the stand's Secret: libpq's variables and one URL.
    pub fn secret_data(
        &self,
        db: &StandDb,
        issued: &Issued,
    ) -> Result<BTreeMap<String, SecretString>, CredentialError> {
        let (_, server) = self.databases()?;
        let (host, port) = server.host.rsplit_once(':').unwrap_or((server.host.as_str(), "5432"));
        let url = format!(
            "postgres://{}:{}@{}/{}",
            issued.username,
            issued.password.expose_secret(),
            server.host,
            db.database
        );
        let plain = |s: &str| SecretString::from(s.to_owned());
        Ok(BTreeMap::from([
            ("DATABASE_URL".to_owned(), SecretString::from(url)),
            ("PGHOST".to_owned(), plain(host)),
            ("PGPORT".to_owned(), plain(port)),
            ("PGDATABASE".to_owned(), plain(&db.database)),
            ("PGUSER".to_owned(), plain(&issued.username)),
            ("PGPASSWORD".to_owned(), issued.password.clone()),
            ("DATABASE_EXPIRES_AT".to_owned(), plain(&issued.expires_at.to_rfc3339())),
        ]))
    }

    /// Marks the stand's other live app logins as replaced by `current`; the keeper revokes them
    /// after the grace period.
    pub async fn supersede_app(&self, stand_id: i64, current: i64) -> Result<u64, CredentialError> {
        Ok(sqlx::query(
            "update credentials set superseded_at = now()
             where stand_id = $1 and purpose = 'app' and credential_id <> $2
               and revoked_at is null and superseded_at is null",
        )
        .bind(stand_id)
        .bind(current)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Marks one credential replaced: the keeper revokes it like any replaced login.
    async fn supersede(&self, credential_id: i64) -> Result<(), CredentialError> {
        sqlx::query("update credentials set superseded_at = now() where credential_id = $1 and superseded_at is null")
            .bind(credential_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Revokes one recorded credential at once, ending its sessions: a migrate Job's once the Job
    /// has ended (a session still open as it serves no running migration).
    pub async fn revoke(&self, credential_id: i64) -> Result<(), CredentialError> {
        let row: Option<(String, String, Option<String>)> = sqlx::query_as(
            "select source, username, lease_id from credentials where credential_id = $1 and revoked_at is null",
        )
        .bind(credential_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((source, username, lease_id)) = row {
            self.revoke_one(&source, &username, lease_id.as_deref()).await?;
            self.mark_revoked(credential_id).await?;
        }
        Ok(())
    }

    /// Ends the login's sessions and drops it, then (for Vault's) revokes its lease. draftd does the
    /// Postgres part of a Vault login itself: Vault's revocation statements run as the admin too,
    /// but cannot take the login's rights first (a GRANT fails once the login is gone, which would
    /// make the lease unrevocable), and logins issued before their creation statements granted them
    /// to the admin would fail there; after draftd, Vault finds nothing to end and nothing to drop.
    async fn revoke_one(&self, source: &str, username: &str, lease_id: Option<&str>) -> Result<(), CredentialError> {
        let databases = self.databases.as_ref().map(|(d, _)| d);
        if let Some(databases) = databases {
            databases.revoke_login(username).await?;
        }
        match (source, lease_id, &self.vault) {
            ("vault", Some(lease), Some(vault)) => vault.revoke(lease).await?,
            _ if databases.is_some() => {}
            _ => return Err(CredentialError::Config("no [postgres] configured".into())),
        }
        Ok(())
    }

    async fn mark_revoked(&self, credential_id: i64) -> Result<(), CredentialError> {
        sqlx::query("update credentials set revoked_at = now() where credential_id = $1")
            .bind(credential_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Teardown, first half: every login of the stand revoked, recorded or not, and its Vault role
    /// deleted. Must come before [`Self::drop_database`]. Sessions end at once, although the
    /// stand's pods may still be serving: the stand is going, its namespace with them, and a login
    /// left for them would outlive the teardown.
    pub async fn revoke_all(&self, stand_id: i64, db: &StandDb) -> Result<Value, CredentialError> {
        let live: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
            "select credential_id, source, username, lease_id from credentials
             where stand_id = $1 and revoked_at is null order by credential_id",
        )
        .bind(stand_id)
        .fetch_all(&self.pool)
        .await?;
        let mut revoked = 0;
        for (id, source, username, lease_id) in &live {
            self.revoke_one(source, username, lease_id.as_deref()).await?;
            self.mark_revoked(*id).await?;
            revoked += 1;
        }
        let mut detail = json!({ "revoked": revoked });
        // Logins draftd never recorded (a crash between issue and insert), Vault's too: before
        // their leases, for the reason in revoke_one.
        if let Some((databases, _)) = &self.databases {
            let mut stray = 0;
            for login in databases.logins(db).await? {
                databases.revoke_login(&login).await?;
                stray += 1;
            }
            detail["unrecorded_logins_revoked"] = json!(stray);
        }
        if let Some(vault) = &self.vault {
            vault.revoke_role_leases(&db.database).await?;
            vault.delete_role(&db.database).await?;
            detail["vault_role_deleted"] = json!(db.database);
        }
        Ok(detail)
    }

    /// Teardown, second half: the database (ending its sessions) and its owner role.
    pub async fn drop_database(&self, db: &StandDb) -> Result<Value, CredentialError> {
        let (databases, _) = self.databases()?;
        let dropped = databases.drop_stand(db).await?;
        Ok(json!(dropped))
    }

    /// What no live stand accounts for: databases and owner roles marked by this installation and
    /// not in `live` (stand database names, `stand_db(namespace).database`), marked logins whose
    /// owner is not in `live`, and Vault roles on draftd's connection not in `live`, with the
    /// leases left of deleted `draft_*` roles. Only what is configured is scanned. An owner role
    /// whose database exists unmarked is left out: it is not all draftd's.
    pub async fn scan_orphans(&self, live: &HashSet<String>) -> Result<Vec<CredentialOrphan>, CredentialError> {
        let mut found = BTreeSet::new();
        if let Some((databases, _)) = &self.databases {
            let marked = databases.marked(self.instance_mark().await?).await?;
            found.extend(postgres_orphans(&marked, live));
        }
        if let Some(vault) = &self.vault {
            let roles = vault.list_roles().await?;
            for role in roles.iter().filter(|r| r.starts_with(STAND_PREFIX) && !live.contains(*r)) {
                if vault.role_connection(role).await? == RoleConnection::Ours {
                    found.insert(CredentialOrphan { kind: OrphanKind::VaultRole, name: role.clone() });
                }
            }
            // Leases of a role deleted before they were revoked. No role says whose they were, but
            // draftd deletes a role only after revoking its leases: what is left is nobody's.
            for role in vault.lease_roles().await? {
                if role.starts_with(STAND_PREFIX) && !live.contains(&role) && !roles.contains(&role) {
                    found.insert(CredentialOrphan { kind: OrphanKind::VaultRole, name: role });
                }
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Removes an orphan [`Self::scan_orphans`] found. A database or role is dropped only if it
    /// still carries this installation's mark (checked right before); a Vault role only if it is
    /// on draftd's connection or gone (then its leases are revoked). Removing what is gone
    /// already succeeds.
    pub async fn remove_orphan(&self, orphan: &CredentialOrphan) -> Result<Value, CredentialError> {
        let name = orphan.name.as_str();
        let mut detail = json!({ "kind": orphan.kind.as_str(), "name": name });
        match orphan.kind {
            OrphanKind::Database => {
                let (databases, _) = self.databases()?;
                let db = StandDb { database: name.to_owned(), owner: name.to_owned(), template: None };
                let dropped = databases.drop_marked(&db, self.instance_mark().await?).await?;
                detail["dropped_database"] = json!(dropped.dropped_database);
                detail["dropped_role"] = json!(dropped.dropped_role);
            }
            OrphanKind::Role | OrphanKind::Login => {
                let (databases, _) = self.databases()?;
                detail["dropped"] = json!(databases.drop_marked_role(name, self.instance_mark().await?).await?);
            }
            OrphanKind::VaultRole => {
                let vault =
                    self.vault.as_ref().ok_or_else(|| CredentialError::Config("no [vault] configured".into()))?;
                let connection = if name.starts_with(STAND_PREFIX) {
                    vault.role_connection(name).await?
                } else {
                    RoleConnection::Other
                };
                if connection == RoleConnection::Other {
                    detail["skipped"] = json!("not a draftd role on draftd's connection");
                    return Ok(detail);
                }
                let leases = vault.leases(name).await?.len();
                vault.revoke_role_leases(name).await?;
                vault.delete_role(name).await?;
                detail["leases_revoked"] = json!(leases);
                detail["role_deleted"] = json!(connection == RoleConnection::Ours);
            }
        }
        Ok(detail)
    }

    /// One pass of the keeper: revokes replaced logins past their grace once no session uses them,
    /// migrate logins left over, logins at their end and logins of removed stands; renews Vault
    /// leases at half their TTL (a long migration's too, and a replaced login's while it is used);
    /// replaces app logins nearing their end of life through `deliver` (which puts the new Secret
    /// in place and starts rolling the pods onto it). Failures are counted and retried next pass;
    /// one stand's trouble never stops the others.
    pub async fn keep<F, Fut>(&self, deliver: F) -> Result<Kept, CredentialError>
    where
        F: Fn(i64, String, BTreeMap<String, SecretString>) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let live: Vec<LiveCredential> = sqlx::query_as(
            "select c.credential_id, c.stand_id, c.purpose, c.source, c.username, c.lease_id, c.issued_at,
                    c.expires_at, c.max_expires_at, c.superseded_at, s.state as stand_state, s.namespace
             from credentials c join stands s using (stand_id)
             where c.revoked_at is null order by c.credential_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let now = Utc::now();
        let mut kept = Kept::default();
        for c in live {
            let outcome = match self.upkeep_of(&c, now).await {
                Ok(Upkeep::Revoke) => {
                    self.revoke_one(&c.source, &c.username, c.lease_id.as_deref()).await.map(|_| Upkeep::Revoke)
                }
                Ok(Upkeep::Replace) => self.replace(&c, &deliver).await.map(|_| Upkeep::Replace),
                Ok(Upkeep::Renew) => self.renew(&c).await.map(|_| Upkeep::Renew),
                other => other,
            };
            match outcome {
                Ok(Upkeep::Revoke) => {
                    self.mark_revoked(c.credential_id).await?;
                    kept.revoked += 1;
                }
                Ok(Upkeep::Replace) => kept.replaced += 1,
                Ok(Upkeep::Renew) => kept.renewed += 1,
                Ok(Upkeep::InUse) => {
                    kept.in_use += 1;
                    tracing::info!(
                        stand = c.stand_id,
                        credential = c.credential_id,
                        "a replaced login is still in use: kept until unused or its end"
                    );
                }
                Ok(Upkeep::Nothing) => {}
                Err(e) => {
                    kept.failed += 1;
                    tracing::warn!(stand = c.stand_id, credential = c.credential_id, error = %e, "credential upkeep failed");
                }
            }
        }
        Ok(kept)
    }

    /// [`upkeep`], asking the server whether the login is in use only when the answer decides.
    async fn upkeep_of(&self, c: &LiveCredential, now: DateTime<Utc>) -> Result<Upkeep, CredentialError> {
        let (if_used, if_unused) = (upkeep(c, now, &self.lifetimes, true), upkeep(c, now, &self.lifetimes, false));
        if if_used == if_unused {
            return Ok(if_used);
        }
        let in_use = match &self.databases {
            Some((databases, _)) => databases.sessions(&c.username).await? > 0,
            // No server to ask ([postgres] taken out of the configuration): gone after the grace period.
            None => false,
        };
        Ok(if in_use { if_used } else { if_unused })
    }

    async fn renew(&self, c: &LiveCredential) -> Result<(), CredentialError> {
        let (Some(vault), Some(lease)) = (&self.vault, &c.lease_id) else { return Ok(()) };
        let ttl = vault.renew(lease, self.lifetimes.lease).await?;
        sqlx::query("update credentials set expires_at = now() + $2 where credential_id = $1")
            .bind(c.credential_id)
            .bind(chrono(ttl))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn replace<F, Fut>(&self, c: &LiveCredential, deliver: &F) -> Result<(), CredentialError>
    where
        F: Fn(i64, String, BTreeMap<String, SecretString>) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let db = stand_db(&c.namespace, None);
        let issued = self.issue(c.stand_id, None, "app", &db).await?;
        let data = self.secret_data(&db, &issued)?;
        if let Err(e) = deliver(c.stand_id, c.namespace.clone(), data).await {
            // Maybe handed out after all (the Secret written, the roll failed: a pod that restarts
            // takes it), so not revoked here: replaced at once, it goes after the grace period as
            // soon as nothing uses it, or at its end. The next pass tries a new one.
            if let Err(supersede) = self.supersede(issued.credential_id).await {
                tracing::warn!(credential = issued.credential_id, error = %supersede, "could not retire an undelivered login");
            }
            return Err(CredentialError::Config(format!("the new Secret could not be delivered: {e}")));
        }
        self.supersede_app(c.stand_id, issued.credential_id).await?;
        Ok(())
    }
}

/// What the keeper does with `c` now; `in_use`: whether a session of the login is open (asked only
/// when the answer decides: a replaced login past its grace period).
///
/// A replaced login is still the one the stand's pods use until they have rolled onto the new
/// Secret: delivering it only starts the rollout, and a deploy's secrets step replaces the login
/// before the image and deploy steps, which can take long or fail. Revoking it while they still
/// use it would end their sessions mid-request and refuse their reconnections. So after the grace
/// period it goes once unused (the old pods gone), and at its end (`max_expires_at`, within the
/// 1 h the design allows) whatever still uses it: by then its password no longer opens a session
/// anyway. Those ends, and a removed stand's logins, are revoked with their sessions.
fn upkeep(c: &LiveCredential, now: DateTime<Utc>, lifetimes: &Lifetimes, in_use: bool) -> Upkeep {
    let lease_half_gone = c.source == "vault" && c.expires_at - now <= chrono(lifetimes.lease) / 2;
    if c.stand_state == "removed" || c.max_expires_at <= now || (c.purpose == "migrate" && c.expires_at <= now) {
        Upkeep::Revoke
    } else if let Some(at) = c.superseded_at {
        if at + chrono(lifetimes.grace) > now {
            // Vault would end it at its lease's end, grace or not.
            if lease_half_gone { Upkeep::Renew } else { Upkeep::Nothing }
        } else if !in_use {
            Upkeep::Revoke
        } else if lease_half_gone {
            Upkeep::Renew
        } else {
            Upkeep::InUse
        }
    } else if c.purpose == "app" && c.max_expires_at - now <= (c.max_expires_at - c.issued_at) / 4 {
        Upkeep::Replace
    } else if lease_half_gone {
        Upkeep::Renew
    } else {
        Upkeep::Nothing
    }
}

/// The Postgres part of the orphan scan, from what carries the mark.
fn postgres_orphans(marked: &Marked, live: &HashSet<String>) -> Vec<CredentialOrphan> {
    let orphan = |kind, name: &String| CredentialOrphan { kind, name: name.clone() };
    let databases = marked.databases.iter().filter(|d| !live.contains(*d)).map(|d| orphan(OrphanKind::Database, d));
    let roles = marked.roles.iter().filter_map(|r| {
        if r.is_login() {
            // A login whose owner is gone (no membership left) is no live stand's either.
            (!r.member_of.iter().any(|owner| live.contains(owner))).then(|| orphan(OrphanKind::Login, &r.name))
        } else {
            // With a database of its name, the role goes with that database (or stays, unmarked).
            (!live.contains(&r.name) && !r.has_database).then(|| orphan(OrphanKind::Role, &r.name))
        }
    });
    databases.chain(roles).collect()
}

/// The stand's database by the naming contract: the namespace with `_` for `-`, owned by a role
/// of the same name (see `pipeline::plan`).
pub fn stand_db(namespace: &str, template: Option<String>) -> StandDb {
    let name = namespace.replace('-', "_");
    StandDb { database: name.clone(), owner: name, template }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::MarkedRole;

    fn role(name: &str, can_login: bool, member_of: &[&str], has_database: bool) -> MarkedRole {
        MarkedRole {
            name: name.into(),
            can_login,
            member_of: member_of.iter().map(|s| s.to_string()).collect(),
            has_database,
        }
    }

    #[test]
    fn only_what_no_live_stand_accounts_for_is_an_orphan() {
        let live: HashSet<String> = ["draft_live".to_owned()].into();
        let marked = Marked {
            databases: vec!["draft_live".into(), "draft_dead".into()],
            roles: vec![
                role("draft_live", false, &[], true),
                role("draft_live_l0000000a", true, &["draft_live"], false),
                // The dead stand's owner goes with its database.
                role("draft_dead", false, &[], true),
                role("draft_dead_l0000000b", true, &["draft_dead"], false),
                // A revocation that stopped after NOLOGIN: still a login of its owner.
                role("draft_dead_l0000000c", false, &["draft_dead"], false),
                // A login whose owner was dropped: nobody's.
                role("draft_gone_l0000000d", true, &[], false),
                // An owner whose database was dropped.
                role("draft_bare", false, &[], false),
                // An owner whose database exists but is not marked: left alone.
                role("draft_foreign", false, &[], true),
            ],
        };
        let names = |kind| {
            postgres_orphans(&marked, &live).into_iter().filter(|o| o.kind == kind).map(|o| o.name).collect::<Vec<_>>()
        };
        assert_eq!(names(OrphanKind::Database), ["draft_dead"]);
        assert_eq!(names(OrphanKind::Role), ["draft_bare"]);
        assert_eq!(names(OrphanKind::Login), ["draft_dead_l0000000b", "draft_dead_l0000000c", "draft_gone_l0000000d"]);
    }

    /// A live credential issued `age` minutes ago for `life` minutes, its lease ending in `lease_left`.
    fn live(purpose: &str, source: &str, age: i64, life: i64, lease_left: i64, now: DateTime<Utc>) -> LiveCredential {
        let minutes = chrono::Duration::minutes;
        LiveCredential {
            credential_id: 1,
            stand_id: 1,
            purpose: purpose.into(),
            source: source.into(),
            username: "draft_x_l00000001".into(),
            lease_id: (source == "vault").then(|| "database/creds/draft_x/1".into()),
            issued_at: now - minutes(age),
            expires_at: now + minutes(lease_left),
            max_expires_at: now - minutes(age) + minutes(life),
            superseded_at: None,
            stand_state: "active".into(),
            namespace: "draft-x".into(),
        }
    }

    #[test]
    fn the_keeper_revokes_a_replaced_login_only_once_unused_or_at_its_end() {
        let now = Utc::now();
        let lifetimes = Lifetimes {
            max: Duration::from_secs(3600),
            lease: Duration::from_secs(1200),
            grace: Duration::from_secs(300),
        };
        let minutes = chrono::Duration::minutes;
        let replaced = |mut c: LiveCredential, ago: i64| {
            c.superseded_at = Some(now - minutes(ago));
            c
        };
        let removed = |mut c: LiveCredential| {
            c.stand_state = "removed".into();
            c
        };
        use Upkeep::*;
        let cases = [
            ("fresh", live("app", "postgres", 5, 60, 55, now), true, Nothing),
            ("a quarter of its life left", live("app", "postgres", 46, 60, 14, now), true, Replace),
            ("at its end, even in use", live("app", "postgres", 60, 60, 0, now), true, Revoke),
            ("replaced, within the grace period", replaced(live("app", "postgres", 30, 60, 30, now), 2), true, Nothing),
            (
                "replaced, past the grace period, unused",
                replaced(live("app", "postgres", 30, 60, 30, now), 6),
                false,
                Revoke,
            ),
            (
                "replaced, past the grace period, in use",
                replaced(live("app", "postgres", 30, 60, 30, now), 6),
                true,
                InUse,
            ),
            ("replaced, in use, at its end", replaced(live("app", "postgres", 61, 60, 0, now), 30), true, Revoke),
            (
                "replaced and near its end: not replaced again",
                replaced(live("app", "postgres", 50, 60, 10, now), 2),
                true,
                Nothing,
            ),
            (
                "Vault, replaced, in use, lease half gone",
                replaced(live("app", "vault", 30, 60, 5, now), 6),
                true,
                Renew,
            ),
            (
                "Vault, replaced, in grace, lease half gone",
                replaced(live("app", "vault", 30, 60, 5, now), 2),
                true,
                Renew,
            ),
            ("Vault, lease half gone", live("app", "vault", 15, 60, 9, now), true, Renew),
            ("a stand removed", removed(live("app", "postgres", 5, 60, 55, now)), true, Revoke),
            ("a migrate login past its lease", live("migrate", "vault", 25, 60, -1, now), true, Revoke),
            (
                "a migrate login in its last quarter: never replaced",
                live("migrate", "postgres", 50, 60, 10, now),
                true,
                Nothing,
            ),
        ];
        for (what, c, in_use, expected) in cases {
            assert_eq!(upkeep(&c, now, &lifetimes, in_use), expected, "{what}");
        }
    }

    #[test]
    fn orphan_kinds_are_named_as_recorded() {
        for (kind, name) in [
            (OrphanKind::Database, "database"),
            (OrphanKind::Role, "role"),
            (OrphanKind::Login, "login"),
            (OrphanKind::VaultRole, "vault_role"),
        ] {
            assert_eq!(kind.as_str(), name);
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(name));
        }
    }
}
