//! A stand's database and credentials, composed from [`Databases`] and [`Vault`]: the database
//! step's database (and Vault role), the secrets step's KV values and database login, the migrate
//! Job's own login, the keeper that renews or replaces logins while the stand lives, and the
//! teardown that revokes every login before the database is dropped (Vault issue 3410).
//!
//! Credentials are recorded by reference (lease id or login name) in `credentials`, never by value
//! (through [`crate::store::credentials`]). Even one issued but not recorded (a crash in between)
//! cannot outlive the stand: teardown revokes every lease under the stand's Vault role and every
//! login that is a member of its owner role.
//!
//! What outlives its stand anyway (a teardown that never ran) the reaper finds with
//! [`StandCredentials::scan_orphans`]: only databases and roles marked with this installation's
//! [`InstanceMark`], and Vault roles on draftd's own connection, since the server and Vault may be
//! shared.

/// The stand's URL login: the signed sign-in cookie and the per-run access token.
pub mod access;
/// The database step's database and Vault role, KV values, logins issued and their Secret data.
mod compose;
/// The keeper: renews, replaces and revokes logins while the stand lives.
mod keeper;
/// What no live stand accounts for: found, and removed.
mod orphans;
/// Teardown: every login revoked, then the database dropped.
mod teardown;

pub use compose::Issued;
pub use keeper::Kept;
pub use orphans::{CredentialOrphan, OrphanKind};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::OnceCell;

use crate::config::Config;
use crate::database::{DatabaseError, Databases, InstanceMark, PgDatabases, StandDb};
use crate::stand::Failure;
use crate::store;
use crate::vault::{DbServer, OpenBao, Vault, VaultError};

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
                let id = store::credentials::instance_id(&self.pool).await?;
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
}

/// The stand's database by the naming contract: the namespace with `_` for `-`, owned by a role
/// of the same name (see `pipeline::plan`).
pub fn stand_db(namespace: &str, template: Option<String>) -> StandDb {
    let name = namespace.replace('-', "_");
    StandDb { database: name.clone(), owner: name, template }
}
