//! The orphan scan: namespaces labelled managed-by=draftd that no live stand accounts for, so the
//! reaper can tear them down. Only namespaces carrying draftd's label are ever candidates.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::{Cluster, ClusterError, ManagedNamespace};
use crate::stand::{StandId, StandState};
use crate::store::StoreError;
use crate::store::orphans::stands_of;

// The row is read in the store; named here too, where `classify` takes it.
pub use crate::store::orphans::StandRow;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Orphan {
    pub namespace: String,
    pub reason: OrphanReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum OrphanReason {
    /// draftd's database has no stand with this namespace (a lost database, a stand deleted by hand).
    NoStand,
    /// The stand was torn down, but its namespace is still there.
    StandRemoved,
    /// The stand's expiry passed and no run of it is queued or running.
    Expired { at: DateTime<Utc> },
    /// The label names another stand than the one the database gives this namespace to: left by an
    /// earlier stand of the same name, it blocks the current one.
    OtherStand { labelled: Option<StandId>, owner: StandId },
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Pure, so each rule is tested without a cluster or a database. Namespaces already terminating
/// are left out: their deletion is under way.
pub fn classify(namespaces: &[ManagedNamespace], stands: &[StandRow], now: DateTime<Utc>) -> Vec<Orphan> {
    let mut orphans = Vec::new();
    for ns in namespaces.iter().filter(|ns| !ns.terminating) {
        let reason = match stands.iter().find(|s| s.namespace == ns.name) {
            None => Some(OrphanReason::NoStand),
            Some(stand) if ns.stand_id != Some(stand.stand_id) => {
                Some(OrphanReason::OtherStand { labelled: ns.stand_id, owner: stand.stand_id })
            }
            Some(stand) if stand.state == StandState::Removed => Some(OrphanReason::StandRemoved),
            Some(StandRow { expires_at: Some(at), busy: false, .. }) if *at < now => {
                Some(OrphanReason::Expired { at: *at })
            }
            Some(_) => None,
        };
        if let Some(reason) = reason {
            orphans.push(Orphan { namespace: ns.name.clone(), reason });
        }
    }
    orphans
}

/// Lists draftd's namespaces, reads their stands, and returns the orphans.
/// Only namespaces of `projects` (this configuration's) are candidates: a namespace labelled for a
/// project draftd does not serve belongs to another installation sharing the cluster, whose stands
/// this database knows nothing of.
pub async fn scan<C: Cluster>(
    cluster: &C,
    pool: &PgPool,
    now: DateTime<Utc>,
    projects: &[&str],
) -> Result<Vec<Orphan>, ScanError> {
    let mut namespaces = cluster.managed_namespaces().await?;
    namespaces.retain(|n| n.project.as_deref().is_some_and(|p| projects.contains(&p)));
    let names: Vec<&str> = namespaces.iter().map(|n| n.name.as_str()).collect();
    let stands = stands_of(pool, &names).await?;
    Ok(classify(&namespaces, &stands, now))
}
