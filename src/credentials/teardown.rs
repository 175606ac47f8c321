//! Teardown of a stand's credentials: every login revoked, recorded or not, and its Vault role
//! deleted; then its database and owner role dropped.

use serde_json::{Value, json};

use super::{CredentialError, StandCredentials};
use crate::database::{Databases, StandDb};
use crate::stand::StandId;
use crate::store;
use crate::vault::Vault;

impl<D: Databases, V: Vault> StandCredentials<D, V> {
    /// Teardown, first half: every login of the stand revoked, recorded or not, and its Vault role
    /// deleted. Must come before [`Self::drop_database`]. Sessions end at once, although the
    /// stand's pods may still be serving: the stand is going, its namespace with them, and a login
    /// left for them would outlive the teardown.
    pub async fn revoke_all(&self, stand_id: StandId, db: &StandDb) -> Result<Value, CredentialError> {
        let live = store::credentials::live_logins_of(&self.pool, stand_id).await?;
        let mut revoked = 0;
        for login in &live {
            self.revoke_one(&login.source, &login.username, login.lease_id.as_deref()).await?;
            self.mark_revoked(login.credential_id).await?;
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
}
