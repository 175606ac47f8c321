//! Orphans: things draftd made that no live stand owns (a lost database row, a teardown that died
//! half-way, a crash between creating and recording). Each kind is scanned, what is found is
//! remembered, and a thing is removed only when two consecutive scans of its kind found it, so
//! something created between a stand's row and its first record is never taken for one.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use super::{ReapError, Reaper};
use crate::cluster::dry_run::remove_folder;
use crate::cluster::orphans::{OrphanReason, scan};
use crate::cluster::{Cluster, ClusterError};
use crate::config::ClusterMode;
use crate::credentials::{CredentialOrphan, OrphanKind, stand_db};
use crate::store::orphans::{self as store, Sighting};

/// One orphan as a sweep saw it.
#[derive(Debug, Clone, Serialize)]
pub struct OrphanReport {
    /// `namespace`, `folder`, `database`, `role`, `login` or `vault_role`.
    pub kind: String,
    pub name: String,
    /// Consecutive scans that found it, this one included.
    pub sightings: i32,
    pub removed: bool,
    /// Why it counts as an orphan, and what removing it did or why it failed.
    pub detail: Value,
}

/// Scans every kind the configuration has, records what each successful scan found, and removes
/// what was found twice. A kind whose scan failed is left as it was (in `errors`).
pub(super) async fn sweep<C: Cluster>(
    reaper: &Reaper<C>,
    errors: &mut Vec<String>,
) -> Result<Vec<OrphanReport>, ReapError> {
    let live = store::live_namespaces(&reaper.pool).await?;
    let mut reports = Vec::new();
    if let Some(cluster) = &reaper.cluster {
        match namespaces(cluster.as_ref(), reaper).await {
            Ok(found) => {
                for (s, detail) in remember(reaper, "namespace", found).await? {
                    let result =
                        if s.sightings >= 2 { Some(delete_namespace(cluster.as_ref(), &s.name).await) } else { None };
                    reports.push(conclude(reaper, "namespace", s, detail, result).await?);
                }
            }
            Err(e) => errors.push(format!("namespace scan: {e}")),
        }
    }
    if reaper.config.cluster.mode == ClusterMode::DryRun {
        let live: HashSet<&str> = live.iter().map(String::as_str).collect();
        match folders(&reaper.config.cluster.dry_run_dir, &live).await {
            Ok(found) => {
                for (s, detail) in remember(reaper, "folder", found).await? {
                    let dir = reaper.config.cluster.dry_run_dir.join(&s.name);
                    let result = if s.sightings >= 2 {
                        Some(
                            remove_folder(&dir)
                                .await
                                .map(|existed| json!({ "existed": existed }))
                                .map_err(|e| format!("removing {}: {e}", dir.display())),
                        )
                    } else {
                        None
                    };
                    reports.push(conclude(reaper, "folder", s, detail, result).await?);
                }
            }
            Err(e) => errors.push(format!("folder scan: {e}")),
        }
    }
    if let Some(credentials) = &reaper.credentials {
        let databases: HashSet<String> = live.iter().map(|ns| stand_db(ns, None).database).collect();
        let mut kinds = Vec::new();
        if credentials.has_databases() {
            kinds.extend([OrphanKind::Database, OrphanKind::Role, OrphanKind::Login]);
        }
        if credentials.has_vault() {
            kinds.push(OrphanKind::VaultRole);
        }
        match credentials.scan_orphans(&databases).await {
            Ok(found) => {
                for kind in kinds {
                    let of_kind: Vec<(String, Value)> = found
                        .iter()
                        .filter(|o| o.kind == kind)
                        .map(|o| (o.name.clone(), json!({ "reason": "no live stand owns it" })))
                        .collect();
                    for (s, detail) in remember(reaper, kind.as_str(), of_kind).await? {
                        let result = if s.sightings >= 2 {
                            let orphan = CredentialOrphan { kind, name: s.name.clone() };
                            Some(credentials.remove_orphan(&orphan).await.map_err(|e| e.to_string()))
                        } else {
                            None
                        };
                        reports.push(conclude(reaper, kind.as_str(), s, detail, result).await?);
                    }
                }
            }
            Err(e) => errors.push(format!("database and Vault scan: {e}")),
        }
    }
    Ok(reports)
}

/// Managed namespaces no live stand accounts for. Expired stands are left to the expiry path,
/// which tears them down with a report.
async fn namespaces<C: Cluster>(cluster: &C, reaper: &Reaper<C>) -> Result<Vec<(String, Value)>, String> {
    let projects: Vec<&str> = reaper.config.projects.iter().map(|p| p.name.as_str()).collect();
    let found = scan(cluster, &reaper.pool, chrono::Utc::now(), &projects).await.map_err(|e| e.to_string())?;
    Ok(found
        .into_iter()
        .filter(|o| !matches!(o.reason, OrphanReason::Expired { .. }))
        .map(|o| (o.namespace, json!(o.reason)))
        .collect())
}

/// Dry-run mode's stand folders (named like namespaces) that no live stand owns.
async fn folders(root: &Path, live: &HashSet<&str>) -> Result<Vec<(String, Value)>, String> {
    let mut entries = match tokio::fs::read_dir(root).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", root.display())),
    };
    let mut found = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(|e| e.to_string())? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().await.map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && name.starts_with("draft-") && crate::stand::is_dns_label(&name) && !live.contains(name.as_str()) {
            found.push((name, json!({ "reason": "no live stand owns it" })));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

async fn remember(
    reaper: &Reaper<impl Cluster>,
    kind: &str,
    found: Vec<(String, Value)>,
) -> Result<Vec<(Sighting, Value)>, ReapError> {
    let seen = store::record_sightings(&reaper.pool, kind, &found).await?;
    Ok(seen
        .into_iter()
        .map(|s| {
            let detail = found.iter().find(|(n, _)| *n == s.name).map(|(_, d)| d.clone()).unwrap_or_default();
            (s, detail)
        })
        .collect())
}

/// The namespace's deletion is asked for, not waited for: the next scan no longer sees a
/// terminating namespace.
async fn delete_namespace(cluster: &impl Cluster, name: &str) -> Result<Value, String> {
    match cluster.delete_namespace(name, std::time::Duration::ZERO).await {
        Ok(gone) => Ok(json!({ "namespace": gone })),
        Err(ClusterError::DeletionBlocked { .. }) => Ok(json!({ "namespace": "deleting" })),
        Err(e) => Err(e.to_string()),
    }
}

/// Records a removal (forgotten, and audited) or its failure (kept, to try again next sweep).
async fn conclude(
    reaper: &Reaper<impl Cluster>,
    kind: &str,
    s: Sighting,
    mut detail: Value,
    result: Option<Result<Value, String>>,
) -> Result<OrphanReport, ReapError> {
    let removed = match result {
        None => false,
        Some(Ok(done)) => {
            detail["removed"] = done;
            store::forget_orphan(&reaper.pool, kind, &s.name).await?;
            store::audit_removed(&reaper.pool, &json!({ "kind": kind, "name": s.name, "detail": detail })).await?;
            true
        }
        Some(Err(e)) => {
            detail["error"] = json!(e);
            false
        }
    };
    Ok(OrphanReport { kind: kind.to_owned(), name: s.name, sightings: s.sightings, removed, detail })
}
