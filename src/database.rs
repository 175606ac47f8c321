//! Per-stand Postgres databases (DESIGN.md's `database.rs`): one database per stand, owned by a role
//! of the same name, reachable only by that role, created empty or as a clone of a seeded template,
//! and dropped (after its credentials are revoked) with `WITH (FORCE)`.
//!
//! Identifiers cannot be bind parameters in `CREATE DATABASE`/`CREATE ROLE`, so every name goes
//! through [`quote_ident`]; names come from the naming contract, and are quoted anyway.

use std::future::Future;

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

/// The stand databases' server, as the pipeline uses it.
pub trait Databases: Send + Sync + 'static {
    /// Creates what is missing of the owner role and the database; what exists is left as it is,
    /// so re-running the step changes nothing.
    fn ensure(&self, db: &StandDb) -> impl Future<Output = Result<Ensured, DatabaseError>> + Send;

    /// Drops the database (ending its sessions) and then its owner role. Absent ones are fine.
    /// Credentials granted the owner must be revoked first (Vault issue 3410).
    fn drop_stand(&self, db: &StandDb) -> impl Future<Output = Result<Dropped, DatabaseError>> + Send;
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
