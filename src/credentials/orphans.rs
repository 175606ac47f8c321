//! What outlives its stand (a teardown that never ran): databases, owner roles and logins marked
//! with this installation's mark, and Vault roles on draftd's own connection (with the leases of
//! deleted ones), that no live stand accounts for; and their removal, checked again right before.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Value, json};

use super::{CredentialError, StandCredentials};
use crate::database::{Databases, Marked, StandDb};
use crate::vault::{RoleConnection, Vault};

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

impl<D: Databases, V: Vault> StandCredentials<D, V> {
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
