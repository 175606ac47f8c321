//! Per-stand Postgres databases (DESIGN.md's `database.rs`): one database per stand, owned by a role
//! of the same name, reachable only by that role, created empty or as a clone of a seeded template,
//! and dropped (after its credentials are revoked) with `WITH (FORCE)`.
//!
//! Identifiers cannot be bind parameters in `CREATE DATABASE`/`CREATE ROLE`, so every name goes
//! through [`quote_ident`]; names come from the naming contract, and are quoted anyway.
//!
//! The admin role needs only LOGIN, CREATEDB and CREATEROLE (and INHERIT, Postgres's default): where
//! it must act with a stand role's rights (own its database; end a login's sessions) it makes itself
//! a member of that role first (`PgDatabases::act_as`), which CREATEROLE allows.
//!
//! What draftd creates carries its installation's [`InstanceMark`] as a comment, so the reaper's
//! orphan scan ([`Databases::marked`]) can tell its own databases and roles from those of other
//! installations (or test runs) on the same server, and the `drop_marked*` methods never drop what
//! does not carry it.

use std::future::Future;

use chrono::{DateTime, SubsecRound, Utc};
use secrecy::SecretString;
use serde::Serialize;
use sqlx::PgPool;

use crate::stand::Failure;

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
    #[error(transparent)]
    BadName(#[from] crate::text::BadIdent),
    /// The admin role needs `role`'s rights (to own a stand's database, or to end a login's
    /// sessions) and could not take them itself; `fix` names the statement that gives them.
    #[error("the stand database admin role {admin:?} cannot act as role {role:?} to {purpose}: {fix}")]
    AdminLacksRole { admin: String, role: String, purpose: &'static str, fix: String },
    /// A revoked login's sessions were told to end and some still run: the login is kept (NOLOGIN,
    /// so nothing new starts) for the next attempt, rather than dropped under them.
    #[error(
        "{sessions} session(s) of login {login:?} had not ended {waited:?} after being terminated; it is kept and revoked again on the next attempt"
    )]
    SessionsRemain { login: String, sessions: i64, waited: std::time::Duration },
    #[error("stand database server: {0}")]
    Db(#[from] sqlx::Error),
}

impl Failure for DatabaseError {
    fn is_transient(&self) -> bool {
        match self {
            DatabaseError::TemplateInUse { .. } | DatabaseError::SessionsRemain { .. } => true,
            DatabaseError::Db(e) => !matches!(e, sqlx::Error::Database(_)),
            _ => false,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            DatabaseError::TemplateInUse { .. } => "template_in_use",
            DatabaseError::TemplateMissing { .. } => "template_missing",
            DatabaseError::BadName(_) => "bad_database_name",
            DatabaseError::AdminLacksRole { .. } => "stand_database_admin_rights",
            DatabaseError::SessionsRemain { .. } => "stand_login_sessions_remain",
            DatabaseError::Db(_) => "stand_database",
        }
    }
}

/// What draftd writes on the stand databases and roles it creates: `COMMENT ON … IS 'draftd
/// instance <uuid>'`, the installation's identity from the `instance` table of draftd's own
/// database. A server may be shared by several installations; only what carries this mark is ever
/// an orphan candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMark(String);

impl InstanceMark {
    /// The one place the comment text is built.
    pub fn new(instance_id: uuid::Uuid) -> Self {
        Self(format!("draftd instance {instance_id}"))
    }

    /// The comment as Postgres stores it (`shobj_description`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// As a SQL literal for `COMMENT ON`, which takes no bind parameters (a UUID needs no escaping;
    /// quotes are doubled anyway).
    fn literal(&self) -> String {
        format!("'{}'", self.0.replace('\'', "''"))
    }
}

/// What carries an installation's mark on the server, as the orphan scan sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marked {
    /// Marked databases, by name.
    pub databases: Vec<String>,
    /// Marked roles: stand owner roles and Postgres-issued logins.
    pub roles: Vec<MarkedRole>,
}

/// A marked role: a stand's owner role, or a login issued for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedRole {
    pub name: String,
    /// May log in; owner roles never may (`NOLOGIN`).
    pub can_login: bool,
    /// The roles it is a member of: an issued login's stand owner.
    pub member_of: Vec<String>,
    /// A database of the same name exists, marked or not.
    pub has_database: bool,
}

impl MarkedRole {
    /// An issued login, also one whose revocation stopped after `NOLOGIN` (it is still a member of
    /// its owner); an owner role is neither.
    pub fn is_login(&self) -> bool {
        self.can_login || !self.member_of.is_empty()
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
    /// [`Self::ensure_marked`] without a mark.
    fn ensure(&self, db: &StandDb) -> impl Future<Output = Result<Ensured, DatabaseError>> + Send {
        self.ensure_marked(db, None)
    }

    /// Creates what is missing of the owner role and the database; what exists is left as it is,
    /// so re-running the step changes nothing, except that both get `mark` (so a stand created
    /// before marking existed is marked on its next deploy).
    fn ensure_marked(
        &self,
        db: &StandDb,
        mark: Option<&InstanceMark>,
    ) -> impl Future<Output = Result<Ensured, DatabaseError>> + Send;

    /// Drops the database (ending its sessions) and then its owner role. Absent ones are fine.
    /// Credentials granted the owner must be revoked first (Vault issue 3410).
    fn drop_stand(&self, db: &StandDb) -> impl Future<Output = Result<Dropped, DatabaseError>> + Send;

    /// [`Self::issue_marked_login`] without a mark.
    fn issue_login(
        &self,
        db: &StandDb,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<Credentials, DatabaseError>> + Send {
        self.issue_marked_login(db, ttl, None)
    }

    /// Without Vault: a new login role that acts as the stand's owner, expiring after `ttl`
    /// (`VALID UNTIL`), created with `mark` in one transaction. draftd issues a fresh one before
    /// the old expires and revokes the old.
    fn issue_marked_login(
        &self,
        db: &StandDb,
        ttl: std::time::Duration,
        mark: Option<&InstanceMark>,
    ) -> impl Future<Output = Result<Credentials, DatabaseError>> + Send;

    /// Ends the login's sessions and drops it. Absent is fine. Never drops it while one of its
    /// sessions still runs: [`DatabaseError::AdminLacksRole`] or [`DatabaseError::SessionsRemain`].
    fn revoke_login(&self, username: &str) -> impl Future<Output = Result<(), DatabaseError>> + Send;

    /// How many sessions the login has open now, on any database of the server.
    fn sessions(&self, username: &str) -> impl Future<Output = Result<i64, DatabaseError>> + Send;

    /// The login roles issued for a stand and not revoked yet.
    fn logins(&self, db: &StandDb) -> impl Future<Output = Result<Vec<String>, DatabaseError>> + Send;

    /// Every database and role on the server that carries `mark`, for the orphan scan.
    fn marked(&self, mark: &InstanceMark) -> impl Future<Output = Result<Marked, DatabaseError>> + Send;

    /// [`Self::drop_stand`] for an orphan: if the database carries `mark`, the owner's logins (as
    /// [`Self::logins`]) are revoked and the database dropped (ending its sessions); then the
    /// owner role as [`Self::drop_marked_role`] does. What is absent or unmarked is left as it is.
    fn drop_marked(
        &self,
        db: &StandDb,
        mark: &InstanceMark,
    ) -> impl Future<Output = Result<Dropped, DatabaseError>> + Send;

    /// If the role carries `mark` (checked right before): revokes its logins (members that may log
    /// in, as at teardown), then ends its sessions and drops it as [`Self::revoke_login`] does.
    /// `false` when it is absent or not marked, which leaves it alone.
    fn drop_marked_role(
        &self,
        role: &str,
        mark: &InstanceMark,
    ) -> impl Future<Output = Result<bool, DatabaseError>> + Send;
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
    Ok(crate::text::quote_ident(name)?)
}

/// SQLSTATEs this module tells apart.
const DUPLICATE_DATABASE: &str = "42P04";
const DUPLICATE_OBJECT: &str = "42710";
const OBJECT_IN_USE: &str = "55006";
const INVALID_CATALOG_NAME: &str = "3D000";
const UNDEFINED_OBJECT: &str = "42704";
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// How long a revocation waits for the sessions it terminated to end: `pg_terminate_backend` only
/// signals them, and a backend busy in a long statement notices at its next interrupt check.
const SESSIONS_END_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

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

    /// Whether the database (`database` true) or role exists and carries `mark`.
    async fn carries(&self, database: bool, name: &str, mark: &InstanceMark) -> Result<bool, DatabaseError> {
        let query = if database {
            "select exists (select 1 from pg_database
                            where datname = $1 and shobj_description(oid, 'pg_database') = $2)"
        } else {
            "select exists (select 1 from pg_roles where rolname = $1 and shobj_description(oid, 'pg_authid') = $2)"
        };
        Ok(sqlx::query_scalar::<_, bool>(query).bind(name).bind(mark.as_str()).fetch_one(&self.admin).await?)
    }

    /// The members of `owner` that may log in: the logins issued for its stand, by draftd or Vault.
    /// Not the admin role, which is a member of every owner it made ([`Self::act_as`]) and may log
    /// in, nor any other role that may create roles (another installation's admin): revoking
    /// those would lock draftd, or someone else, out of the server.
    async fn logins_of(&self, owner: &str) -> Result<Vec<String>, DatabaseError> {
        Ok(sqlx::query_scalar(
            "select r.rolname::text from pg_roles r
             join pg_auth_members m on m.member = r.oid
             join pg_roles o on o.oid = m.roleid
             where o.rolname = $1 and r.rolcanlogin
               and r.rolname <> current_user and not r.rolsuper and not r.rolcreaterole
             order by 1",
        )
        .bind(owner)
        .fetch_all(&self.admin)
        .await?)
    }

    /// Makes the admin role able to act with `role`'s rights, for `purpose`: Postgres lets only
    /// members of a database's owner create it for that owner or drop it, and only superusers,
    /// members of a role and members of `pg_signal_backend` end that role's sessions
    /// (`pg_terminate_backend` refuses anyone else with an error). A CREATEROLE-only admin is none
    /// of these, but may make itself a member: on Postgres 15 of any role that is not a superuser,
    /// on 16 and later of the roles it created (it holds ADMIN OPTION on them). So draftd grants
    /// itself membership in a stand's owner and, when their sessions must end, its logins, rather
    /// than ask for `pg_signal_backend`, which would let it end any role's sessions on a server that
    /// may be shared, and which on 16 and later only a superuser may grant. Nothing happens when
    /// the admin has the rights already (a superuser always has).
    async fn act_as(&self, role: &str, purpose: &'static str) -> Result<(), DatabaseError> {
        let quoted = quote_ident(role)?;
        let has_rights = "select pg_has_role(current_user, $1, 'usage')";
        if sqlx::query_scalar::<_, bool>(has_rights).bind(role).fetch_one(&self.admin).await? {
            return Ok(());
        }
        let (admin, v16): (String, bool) =
            sqlx::query_as("select current_user::text, current_setting('server_version_num')::int >= 160000")
                .fetch_one(&self.admin)
                .await?;
        // From 16 each membership carries its own INHERIT, which defaults to the member's
        // attribute: asked for explicitly, the admin gets the role's rights even if NOINHERIT.
        let inherit = if v16 { " with inherit true" } else { "" };
        let lacks =
            |fix: String| DatabaseError::AdminLacksRole { admin: admin.clone(), role: role.to_owned(), purpose, fix };
        match sqlx::query(&format!("grant {quoted} to current_user{inherit}")).execute(&self.admin).await {
            Ok(_) => {}
            Err(e) if sqlstate(&e).as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {
                return Err(lacks(format!(
                    "it may not make itself a member of that role (on Postgres 16 and later CREATEROLE \
                     covers only the roles it created); as a superuser, run GRANT {quoted} TO {}{}",
                    quote_ident(&admin)?,
                    inherit.to_uppercase()
                )));
            }
            Err(e) => return Err(e.into()),
        }
        if !sqlx::query_scalar::<_, bool>(has_rights).bind(role).fetch_one(&self.admin).await? {
            // Postgres 15: membership without INHERIT gives no rights, and the grant has no option
            // to ask for them.
            return Err(lacks(format!(
                "it is NOINHERIT, so the roles it is a member of lend it no rights; run ALTER ROLE {} INHERIT",
                quote_ident(&admin)?
            )));
        }
        Ok(())
    }
}

impl Databases for PgDatabases {
    async fn ensure_marked(&self, db: &StandDb, mark: Option<&InstanceMark>) -> Result<Ensured, DatabaseError> {
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
        // Creating a database for the owner, and later revoking CONNECT on it, commenting on it and
        // dropping it, all take the owner's rights.
        self.act_as(&db.owner, "create and own the stand's database").await?;
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
        // Marked every time, not only when created: COMMENT replaces the comment, so repeating it
        // changes nothing, and a stand created before marking existed is marked on its next deploy.
        if let Some(mark) = mark {
            let comment = mark.literal();
            sqlx::query(&format!("comment on role {owner} is {comment}")).execute(&self.admin).await?;
            sqlx::query(&format!("comment on database {database} is {comment}")).execute(&self.admin).await?;
        }
        Ok(ensured)
    }

    async fn drop_stand(&self, db: &StandDb) -> Result<Dropped, DatabaseError> {
        let (database, owner) = (quote_ident(&db.database)?, quote_ident(&db.owner)?);
        let had_database =
            self.exists("select exists (select 1 from pg_database where datname = $1)", &db.database).await?;
        let had_role = self.exists("select exists (select 1 from pg_roles where rolname = $1)", &db.owner).await?;
        if had_database && had_role {
            // Only the owner drops a database: a stand made before the admin took the owner's
            // rights at creation takes them now.
            self.act_as(&db.owner, "drop the stand's database").await?;
        }
        // FORCE ends what is still connected (the stand's logins are revoked, with their sessions,
        // before this; its pods may still be there while the namespace goes).
        sqlx::query(&format!("drop database if exists {database} with (force)")).execute(&self.admin).await?;
        sqlx::query(&format!("drop role if exists {owner}")).execute(&self.admin).await?;
        Ok(Dropped { dropped_database: had_database, dropped_role: had_role })
    }

    async fn issue_marked_login(
        &self,
        db: &StandDb,
        ttl: std::time::Duration,
        mark: Option<&InstanceMark>,
    ) -> Result<Credentials, DatabaseError> {
        let owner = quote_ident(&db.owner)?;
        let username = login_name(&db.owner);
        let login = quote_ident(&username)?;
        let password = new_password();
        // Whole seconds, as the literal below carries them: the expiry draftd knows is the server's.
        let valid_until =
            (Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1))).trunc_subsecs(0);
        let until = valid_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        // One transaction: a login exists with its settings and its mark, or not at all (an
        // unmarked one of a stand that dies without teardown would be left for good).
        let mut tx = self.admin.begin().await?;
        // Role options take no bind parameters: the password is ours (an unquoted-safe alphabet)
        // and the timestamp is formatted here, so both are literals by construction.
        sqlx::query(&format!("create role {login} login password '{password}' valid until '{until}' in role {owner}"))
            .execute(&mut *tx)
            .await?;
        // Sessions act as the owner, so what migrations create belongs to the owner and the
        // login can be dropped at any time without orphaning objects.
        sqlx::query(&format!("alter role {login} set role = {owner}")).execute(&mut *tx).await?;
        if let Some(mark) = mark {
            sqlx::query(&format!("comment on role {login} is {}", mark.literal())).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Credentials { username, password: SecretString::from(password), valid_until })
    }

    async fn revoke_login(&self, username: &str) -> Result<(), DatabaseError> {
        let login = quote_ident(username)?;
        // NOLOGIN first, committed on its own: a session ended below cannot come back as this
        // login (an app's pool reconnects at once) while the rest runs.
        match sqlx::query(&format!("alter role {login} nologin")).execute(&self.admin).await {
            Ok(_) => {}
            Err(e) if sqlstate(&e).as_deref() == Some(UNDEFINED_OBJECT) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // Ended before the drop, and the drop only once they are gone: DROP ROLE does not wait for
        // a role's sessions, and those of a dropped role run on with no name, where no later
        // revocation (which finds sessions by name) would ever see them.
        if self.sessions(username).await? > 0 {
            match self.act_as(username, "end its sessions before dropping it").await {
                // Dropped meanwhile by someone else: nothing of it left to revoke.
                Err(DatabaseError::Db(e)) if sqlstate(&e).as_deref() == Some(UNDEFINED_OBJECT) => return Ok(()),
                other => other?,
            }
            sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where usename = $1")
                .bind(username)
                .execute(&self.admin)
                .await?;
            // pg_terminate_backend only signals. Each count is its own statement, so it sees the
            // server as it is now (a transaction keeps its first view of pg_stat_activity).
            let started = std::time::Instant::now();
            loop {
                let sessions = self.sessions(username).await?;
                if sessions == 0 {
                    break;
                }
                if started.elapsed() >= SESSIONS_END_WITHIN {
                    return Err(DatabaseError::SessionsRemain {
                        login: username.to_owned(),
                        sessions,
                        waited: SESSIONS_END_WITHIN,
                    });
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        sqlx::query(&format!("drop role if exists {login}")).execute(&self.admin).await?;
        Ok(())
    }

    async fn sessions(&self, username: &str) -> Result<i64, DatabaseError> {
        // Every role sees every session's pid and user here, only not what others run.
        Ok(sqlx::query_scalar("select count(*) from pg_stat_activity where usename = $1")
            .bind(username)
            .fetch_one(&self.admin)
            .await?)
    }

    async fn logins(&self, db: &StandDb) -> Result<Vec<String>, DatabaseError> {
        self.logins_of(&db.owner).await
    }

    async fn marked(&self, mark: &InstanceMark) -> Result<Marked, DatabaseError> {
        let databases = sqlx::query_scalar(
            "select datname::text from pg_database where shobj_description(oid, 'pg_database') = $1 order by 1",
        )
        .bind(mark.as_str())
        .fetch_all(&self.admin)
        .await?;
        let rows: Vec<(String, bool, Vec<String>, bool)> = sqlx::query_as(
            "select r.rolname::text, r.rolcanlogin,
                    array(select o.rolname::text from pg_auth_members m join pg_roles o on o.oid = m.roleid
                          where m.member = r.oid order by 1),
                    exists (select 1 from pg_database d where d.datname = r.rolname)
             from pg_roles r where shobj_description(r.oid, 'pg_authid') = $1
             order by 1",
        )
        .bind(mark.as_str())
        .fetch_all(&self.admin)
        .await?;
        let roles = rows
            .into_iter()
            .map(|(name, can_login, member_of, has_database)| MarkedRole { name, can_login, member_of, has_database })
            .collect();
        Ok(Marked { databases, roles })
    }

    async fn drop_marked(&self, db: &StandDb, mark: &InstanceMark) -> Result<Dropped, DatabaseError> {
        let database = quote_ident(&db.database)?;
        let mut dropped = Dropped { dropped_database: false, dropped_role: false };
        if self.carries(true, &db.database, mark).await? {
            // As at teardown: the logins go first (Vault issue 3410), whoever issued them.
            for login in self.logins_of(&db.owner).await? {
                self.revoke_login(&login).await?;
            }
            sqlx::query(&format!("drop database if exists {database} with (force)")).execute(&self.admin).await?;
            dropped.dropped_database = true;
        }
        dropped.dropped_role = self.drop_marked_role(&db.owner, mark).await?;
        Ok(dropped)
    }

    async fn drop_marked_role(&self, role: &str, mark: &InstanceMark) -> Result<bool, DatabaseError> {
        quote_ident(role)?;
        if !self.carries(false, role, mark).await? {
            return Ok(false);
        }
        for login in self.logins_of(role).await? {
            self.revoke_login(&login).await?;
        }
        self.revoke_login(role).await?;
        Ok(true)
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

    #[test]
    fn the_mark_names_the_installation() {
        let id = uuid::Uuid::parse_str("6f1c2a4e-0b7d-4e2f-9a51-3c8d7e6f5a40").unwrap();
        let mark = InstanceMark::new(id);
        assert_eq!(mark.as_str(), "draftd instance 6f1c2a4e-0b7d-4e2f-9a51-3c8d7e6f5a40");
        assert_eq!(mark.literal(), "'draftd instance 6f1c2a4e-0b7d-4e2f-9a51-3c8d7e6f5a40'");
    }
}
