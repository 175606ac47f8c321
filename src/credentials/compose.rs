//! What the deploy steps get: the stand's database and owner role (with Vault, its role in the
//! database engine), the app's KV values, and logins, each recorded before it is handed out, with
//! the Secret data a login becomes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{CredentialError, StandCredentials, chrono};
use crate::database::{Databases, StandDb};
use crate::stand::{RunId, StandId};
use crate::store;
use crate::store::credentials::NewCredential;
use crate::vault::{DbRole, Vault};

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

impl<D: Databases, V: Vault> StandCredentials<D, V> {
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
        stand_id: StandId,
        run_id: Option<RunId>,
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
        let row = NewCredential {
            stand_id,
            run_id,
            purpose,
            source,
            username: &username,
            lease_id: lease_id.as_deref(),
            issued_at: now,
            expires_at,
            max_expires_at,
        };
        let credential_id = store::credentials::record(&self.pool, &row).await?;
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
}
