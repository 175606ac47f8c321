//! The keeper: while a stand lives, its logins are renewed (Vault leases at half their TTL),
//! replaced (app logins in the last quarter of their life, through a new Secret) and revoked
//! (replaced ones once unused after their grace period, any at their end, a removed stand's);
//! and a migrate Job's login is revoked once the Job has ended.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::{CredentialError, Lifetimes, StandCredentials, chrono, stand_db};
use crate::database::Databases;
use crate::stand::{StandId, StandState};
use crate::store;
use crate::store::credentials::LiveCredential;
use crate::vault::Vault;

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

impl<D: Databases, V: Vault> StandCredentials<D, V> {
    /// Marks the stand's other live app logins as replaced by `current`; the keeper revokes them
    /// after the grace period.
    pub async fn supersede_app(&self, stand_id: StandId, current: i64) -> Result<u64, CredentialError> {
        Ok(store::credentials::supersede_app(&self.pool, stand_id, current).await?)
    }

    /// Marks one credential replaced: the keeper revokes it like any replaced login.
    async fn supersede(&self, credential_id: i64) -> Result<(), CredentialError> {
        Ok(store::credentials::supersede(&self.pool, credential_id).await?)
    }

    /// Revokes one recorded credential at once, ending its sessions: a migrate Job's once the Job
    /// has ended (a session still open as it serves no running migration).
    pub async fn revoke(&self, credential_id: i64) -> Result<(), CredentialError> {
        if let Some(login) = store::credentials::live_login(&self.pool, credential_id).await? {
            self.revoke_one(&login.source, &login.username, login.lease_id.as_deref()).await?;
            self.mark_revoked(credential_id).await?;
        }
        Ok(())
    }

    /// Ends the login's sessions and drops it, then (for Vault's) revokes its lease. draftd does the
    /// Postgres part of a Vault login itself: Vault's revocation statements run as the admin too,
    /// but cannot take the login's rights first (a GRANT fails once the login is gone, which would
    /// make the lease unrevocable), and logins issued before their creation statements granted them
    /// to the admin would fail there; after draftd, Vault finds nothing to end and nothing to drop.
    pub(super) async fn revoke_one(
        &self,
        source: &str,
        username: &str,
        lease_id: Option<&str>,
    ) -> Result<(), CredentialError> {
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

    /// Records the credential as revoked.
    pub(super) async fn mark_revoked(&self, credential_id: i64) -> Result<(), CredentialError> {
        Ok(store::credentials::mark_revoked(&self.pool, credential_id).await?)
    }

    /// One pass of the keeper: revokes replaced logins past their grace once no session uses them,
    /// migrate logins left over, logins at their end and logins of removed stands; renews Vault
    /// leases at half their TTL (a long migration's too, and a replaced login's while it is used);
    /// replaces app logins nearing their end of life through `deliver` (which puts the new Secret
    /// in place and starts rolling the pods onto it). Failures are counted and retried next pass;
    /// one stand's trouble never stops the others.
    pub async fn keep<F, Fut>(&self, deliver: F) -> Result<Kept, CredentialError>
    where
        F: Fn(StandId, String, BTreeMap<String, SecretString>) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let live = store::credentials::live(&self.pool).await?;
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
                        stand = c.stand_id.get(),
                        credential = c.credential_id,
                        "a replaced login is still in use: kept until unused or its end"
                    );
                }
                Ok(Upkeep::Nothing) => {}
                Err(e) => {
                    kept.failed += 1;
                    tracing::warn!(stand = c.stand_id.get(), credential = c.credential_id, error = %e, "credential upkeep failed");
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
        store::credentials::renewed(&self.pool, c.credential_id, chrono(ttl)).await?;
        Ok(())
    }

    async fn replace<F, Fut>(&self, c: &LiveCredential, deliver: &F) -> Result<(), CredentialError>
    where
        F: Fn(StandId, String, BTreeMap<String, SecretString>) -> Fut,
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
    if c.stand_state == StandState::Removed
        || c.max_expires_at <= now
        || (c.purpose == "migrate" && c.expires_at <= now)
    {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A live credential issued `age` minutes ago for `life` minutes, its lease ending in `lease_left`.
    fn live(purpose: &str, source: &str, age: i64, life: i64, lease_left: i64, now: DateTime<Utc>) -> LiveCredential {
        let minutes = chrono::Duration::minutes;
        LiveCredential {
            credential_id: 1,
            stand_id: crate::stand::StandId::new(1),
            purpose: purpose.into(),
            source: source.into(),
            username: "draft_x_l00000001".into(),
            lease_id: (source == "vault").then(|| "database/creds/draft_x/1".into()),
            issued_at: now - minutes(age),
            expires_at: now + minutes(lease_left),
            max_expires_at: now - minutes(age) + minutes(life),
            superseded_at: None,
            stand_state: StandState::Active,
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
            c.stand_state = StandState::Removed;
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
}
