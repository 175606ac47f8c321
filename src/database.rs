//! Per-stand Postgres databases (DESIGN.md's `database.rs`): one database per stand, owned by a role
//! of the same name, reachable only by that role, created empty or as a clone of a seeded template,
//! and dropped (after its credentials are revoked) with `WITH (FORCE)`.
//!
//! Identifiers cannot be bind parameters in `CREATE DATABASE`/`CREATE ROLE`, so every name goes
//! through [`quote_ident`]; names come from the naming contract, and are quoted anyway.

use std::future::Future;

use chrono::{DateTime, SubsecRound, Utc};
use secrecy::SecretString;
use serde::Serialize;
use sqlx::PgPool;

/// A stand's database as the database step and teardown see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandDb {
    pub database: String,
    /// The role that owns the database; the stand's credentials are granted it.
    pub owner: String,
    /// A seeded database to clone instead of starting empty.
    pub template: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ensured {
    pub created_role: bool,
    pub created_database: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dropped {
    pub dropped_database: bool,
    pub dropped_role: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// Postgres clones a template only while nobody is connected to it.
    #[error(
        "template database {template} is in use by other sessions, so it cannot be cloned now; the step will try again"
    )]
    TemplateInUse { template: String },
    #[error("template database {template} does not exist on the stand database server")]
    TemplateMissing { template: String },
    #[error("{0:?} is not a valid database or role name (1-63 bytes, no NUL)")]
    BadName(String),
    #[error("stand database server: {0}")]
    Db(#[from] sqlx::Error),
}

impl DatabaseError {
    pub fn is_transient(&self) -> bool {
        match self {
            DatabaseError::TemplateInUse { .. } => true,
            DatabaseError::Db(e) => !matches!(e, sqlx::Error::Database(_)),
            _ => false,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            DatabaseError::TemplateInUse { .. } => "template_in_use",
            DatabaseError::TemplateMissing { .. } => "template_missing",
            DatabaseError::BadName(_) => "bad_database_name",
            DatabaseError::Db(_) => "stand_database",
        }
    }
}

/// A login for a stand's database, valid until `valid_until`. The password never leaves draftd
/// except into the stand's Secret.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: SecretString,
    pub valid_until: DateTime<Utc>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("valid_until", &self.valid_until)
            .finish()
    }
}

/// The stand databases' server, as the pipeline uses it.
pub trait Databases: Send + Sync + 'static {
    /// Creates what is missing of the owner role and the database; what exists is left as it is,
    /// so re-running the step changes nothing.
    fn ensure(&self, db: &StandDb) -> impl Future<Output = Result<Ensured, DatabaseError>> + Send;

    /// Drops the database (ending its sessions) and then its owner role. Absent ones are fine.
    /// Credentials granted the owner must be revoked first (Vault issue 3410).
    fn drop_stand(&self, db: &StandDb) -> impl Future<Output = Result<Dropped, DatabaseError>> + Send;

    /// Without Vault: a new login role that acts as the stand's owner, expiring after `ttl`
    /// (`VALID UNTIL`). draftd issues a fresh one before the old expires and revokes the old.
    fn issue_login(
        &self,
        db: &StandDb,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<Credentials, DatabaseError>> + Send;

    /// Ends the login's sessions and drops it. Absent is fine.
    fn revoke_login(&self, username: &str) -> impl Future<Output = Result<(), DatabaseError>> + Send;

    /// The login roles issued for a stand and not revoked yet.
    fn logins(&self, db: &StandDb) -> impl Future<Output = Result<Vec<String>, DatabaseError>> + Send;
}

/// Login role names: the owner's name (cut to leave room) and a random suffix, within 63 bytes.
fn login_name(owner: &str) -> String {
    let suffix = format!("_l{:08x}", fastrand::u32(..));
    let room = 63 - suffix.len();
    let mut cut = owner.len().min(room);
    while !owner.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &owner[..cut])
}

/// 32 characters from an alphabet that needs no quoting anywhere (URLs, env files, SQL literals).
fn new_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..32).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect()
}

/// `"name"`, with embedded quotes doubled: the one way names enter utility statements.
pub fn quote_ident(name: &str) -> Result<String, DatabaseError> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(DatabaseError::BadName(name.to_owned()));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// SQLSTATEs this module tells apart.
const DUPLICATE_DATABASE: &str = "42P04";
const DUPLICATE_OBJECT: &str = "42710";
const OBJECT_IN_USE: &str = "55006";
const INVALID_CATALOG_NAME: &str = "3D000";
const UNDEFINED_OBJECT: &str = "42704";

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

/// The real implementation, on the server of `[postgres] admin_url_env`.
pub struct PgDatabases {
    admin: PgPool,
}

impl PgDatabases {
    pub fn new(admin: PgPool) -> Self {
        Self { admin }
    }

    async fn exists(&self, query: &str, name: &str) -> Result<bool, DatabaseError> {
        Ok(sqlx::query_scalar::<_, bool>(query).bind(name).fetch_one(&self.admin).await?)
    }
}

impl Databases for PgDatabases {
    async fn ensure(&self, db: &StandDb) -> Result<Ensured, DatabaseError> {
        let (database, owner) = (quote_ident(&db.database)?, quote_ident(&db.owner)?);
        let mut ensured = Ensured { created_role: false, created_database: false };
        if !self.exists("select exists (select 1 from pg_roles where rolname = $1)", &db.owner).await? {
            // NOLOGIN: nobody signs in as the owner; short-lived login roles are granted it.
            match sqlx::query(&format!("create role {owner} nologin")).execute(&self.admin).await {
                Ok(_) => ensured.created_role = true,
                Err(e) if sqlstate(&e).as_deref() == Some(DUPLICATE_OBJECT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !self.exists("select exists (select 1 from pg_database where datname = $1)", &db.database).await? {
            let template = match &db.template {
                Some(t) => format!(" template {}", quote_ident(t)?),
                None => String::new(),
            };
            let create = format!("create database {database} owner {owner}{template}");
            match sqlx::query(&create).execute(&self.admin).await {
                Ok(_) => ensured.created_database = true,
                Err(e) if sqlstate(&e).as_deref() == Some(DUPLICATE_DATABASE) => {}
                Err(e) if sqlstate(&e).as_deref() == Some(OBJECT_IN_USE) && db.template.is_some() => {
                    return Err(DatabaseError::TemplateInUse { template: db.template.clone().unwrap_or_default() });
                }
                Err(e) if sqlstate(&e).as_deref() == Some(INVALID_CATALOG_NAME) && db.template.is_some() => {
                    return Err(DatabaseError::TemplateMissing { template: db.template.clone().unwrap_or_default() });
                }
                Err(e) => return Err(e.into()),
            }
        }
        // New databases let every role connect (PUBLIC has CONNECT): only the owner may, so one
        // stand's credentials never open another stand's database. Repeating these changes nothing.
        sqlx::query(&format!("revoke connect, temporary on database {database} from public"))
            .execute(&self.admin)
            .await?;
        sqlx::query(&format!("grant connect, temporary on database {database} to {owner}"))
            .execute(&self.admin)
            .await?;
        Ok(ensured)
    }

    async fn drop_stand(&self, db: &StandDb) -> Result<Dropped, DatabaseError> {
        let (database, owner) = (quote_ident(&db.database)?, quote_ident(&db.owner)?);
        let had_database =
            self.exists("select exists (select 1 from pg_database where datname = $1)", &db.database).await?;
        // FORCE ends the stand's sessions (its pods may still be connected while the namespace goes).
        sqlx::query(&format!("drop database if exists {database} with (force)")).execute(&self.admin).await?;
        let had_role = self.exists("select exists (select 1 from pg_roles where rolname = $1)", &db.owner).await?;
        sqlx::query(&format!("drop role if exists {owner}")).execute(&self.admin).await?;
        Ok(Dropped { dropped_database: had_database, dropped_role: had_role })
    }

    async fn issue_login(&self, db: &StandDb, ttl: std::time::Duration) -> Result<Credentials, DatabaseError> {
        let owner = quote_ident(&db.owner)?;
        let username = login_name(&db.owner);
        let login = quote_ident(&username)?;
        let password = new_password();
        // Whole seconds, as the literal below carries them: the expiry draftd knows is the server's.
        let valid_until =
            (Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1))).trunc_subsecs(0);
        let until = valid_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        // Role options take no bind parameters: the password is ours (an unquoted-safe alphabet)
        // and the timestamp is formatted here, so both are literals by construction.
        sqlx::query(&format!("create role {login} login password '{password}' valid until '{until}' in role {owner}"))
            .execute(&self.admin)
            .await?;
        // Sessions act as the owner, so what migrations create belongs to the owner and the
        // login can be dropped at any time without orphaning objects.
        sqlx::query(&format!("alter role {login} set role = {owner}")).execute(&self.admin).await?;
        Ok(Credentials { username, password: SecretString::from(password), valid_until })
    }

    async fn revoke_login(&self, username: &str) -> Result<(), DatabaseError> {
        let login = quote_ident(username)?;
        // NOLOGIN first, so no new session starts between ending the old ones and the drop.
        match sqlx::query(&format!("alter role {login} nologin")).execute(&self.admin).await {
            Ok(_) => {}
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some(UNDEFINED_OBJECT) => {
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where usename = $1")
            .bind(username)
            .execute(&self.admin)
            .await?;
        sqlx::query(&format!("drop role if exists {login}")).execute(&self.admin).await?;
        Ok(())
    }

    async fn logins(&self, db: &StandDb) -> Result<Vec<String>, DatabaseError> {
        Ok(sqlx::query_scalar(
            "select r.rolname::text from pg_roles r
             join pg_auth_members m on m.member = r.oid
             join pg_roles o on o.oid = m.roleid
             where o.rolname = $1 and r.rolcanlogin
             order by 1",
        )
        .bind(&db.owner)
        .fetch_all(&self.admin)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_checked() {
        assert_eq!(quote_ident("draft_login").unwrap(), "\"draft_login\"");
        assert_eq!(quote_ident("a\"; drop database x; --").unwrap(), "\"a\"\"; drop database x; --\"");
        assert!(quote_ident("").is_err());
        assert!(quote_ident(&"x".repeat(64)).is_err());
        assert!(quote_ident("a\0b").is_err());
    }
}
