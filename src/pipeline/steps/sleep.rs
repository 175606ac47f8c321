//! Sleep and wake, in both modes. A sleep records each workload's replicas before it scales any to
//! zero (a sleep resumed after a crash keeps the first record, never a zero), then revokes the
//! stand's logins: a sleeping stand holds no live credentials. A wake's `secrets` step issues new
//! ones; its `wake` step scales back to the record. Namespace, database, data and volume claims
//! stay throughout.

use std::path::Path;

use serde_json::{Value, json};
use sqlx::PgPool;

use super::shared::write;
use crate::cluster::Cluster;
use crate::cluster::fit::quantity;
use crate::credentials::StandCredentials;
use crate::pipeline::lifecycle;
use crate::pipeline::step::{RunContext, StepError, StepOutcome};
use crate::stand::{Workload, WorkloadKind, requested};
use crate::store::{sleep, usage};

fn db(e: crate::store::StoreError) -> StepError {
    StepError::transient("database", e.to_string())
}

/// The `sleep` step against the cluster.
pub(super) async fn sleep<C: Cluster>(
    pool: &PgPool,
    cluster: &C,
    credentials: Option<&StandCredentials>,
    run: &RunContext,
    release: &str,
) -> Result<StepOutcome, StepError> {
    let found = cluster.workloads(&run.namespace, release).await?;
    let record = sleep::keep_record(pool, run.stand_id, &found).await.map_err(db)?;
    let mut scaled = Vec::new();
    for workload in &record {
        if cluster.scale(&run.namespace, workload, 0).await? {
            scaled.push(workload.to_string());
        }
    }
    usage::stopped(pool, run.stand_id).await.map_err(db)?;
    asleep(pool, credentials, run, json!({ "recorded": record, "scaled_to_zero": scaled })).await
}

/// The `wake` step against the cluster: what the sleep recorded, scaled back. Workloads gone since
/// are left out (the next deploy makes what the chart wants).
pub(super) async fn wake<C: Cluster>(pool: &PgPool, cluster: &C, run: &RunContext) -> Result<StepOutcome, StepError> {
    let record = sleep::record(pool, run.stand_id).await.map_err(db)?.unwrap_or_default();
    let mut scaled = Vec::new();
    for workload in &record {
        if cluster.scale(&run.namespace, workload, workload.replicas).await? {
            scaled.push(json!({ "workload": workload.to_string(), "replicas": workload.replicas }));
        }
    }
    sleep::awake(pool, run.stand_id).await.map_err(db)?;
    Ok(StepOutcome::done(json!({ "scaled": scaled })))
}

/// The stand is up at what its workloads and claims request now: the awake stretch its cost is
/// priced by (after verify, in deploys and wakes).
pub(super) async fn record_awake<C: Cluster>(
    pool: &PgPool,
    cluster: &C,
    run: &RunContext,
    release: &str,
) -> Result<Value, StepError> {
    let workloads = cluster.workloads(&run.namespace, release).await?;
    let (cpu_millis, memory_bytes) = requested(&workloads);
    let storage_bytes = cluster.claimed_storage(&run.namespace).await?;
    usage::awake(pool, run.stand_id, cpu_millis, memory_bytes, storage_bytes).await.map_err(db)?;
    Ok(json!({ "cpu_millis": cpu_millis, "memory_bytes": memory_bytes, "storage_bytes": storage_bytes }))
}

/// The `sleep` step of dry-run mode: the workloads of the rendered release, recorded as what
/// would be scaled to zero (`sleep.json` in the stand's folder).
pub(super) async fn sleep_dry_run(
    pool: &PgPool,
    credentials: Option<&StandCredentials>,
    run: &RunContext,
    folder: &Path,
) -> Result<StepOutcome, StepError> {
    let manifests = tokio::fs::read_to_string(folder.join("manifests.yaml")).await.unwrap_or_default();
    let record = sleep::keep_record(pool, run.stand_id, &rendered_workloads(&manifests)).await.map_err(db)?;
    let path = write(
        &folder.join("sleep.json"),
        &serde_json::to_string_pretty(&json!({ "would_scale_to_zero": record })).expect("json"),
    )
    .await?;
    asleep(
        pool,
        credentials,
        run,
        json!({ "dry_run": true, "recorded": record, "rendered": path, "note": "dry-run: nothing scaled" }),
    )
    .await
}

/// The `wake` step of dry-run mode: what would be scaled back (`wake.json`).
pub(super) async fn wake_dry_run(pool: &PgPool, run: &RunContext, folder: &Path) -> Result<StepOutcome, StepError> {
    let record = sleep::record(pool, run.stand_id).await.map_err(db)?.unwrap_or_default();
    let path = write(
        &folder.join("wake.json"),
        &serde_json::to_string_pretty(&json!({ "would_scale": record })).expect("json"),
    )
    .await?;
    sleep::awake(pool, run.stand_id).await.map_err(db)?;
    Ok(StepOutcome::done(
        json!({ "dry_run": true, "would_scale": record, "rendered": path, "note": "dry-run: nothing scaled" }),
    ))
}

/// Logins revoked, then the stand marked asleep.
async fn asleep(
    pool: &PgPool,
    credentials: Option<&StandCredentials>,
    run: &RunContext,
    mut detail: Value,
) -> Result<StepOutcome, StepError> {
    let revoked = lifecycle::revoke(credentials, run).await?;
    detail["credentials"] = revoked.detail;
    let slept = sleep::asleep(pool, run.stand_id).await.map_err(db)?;
    detail["stand"] = json!(if slept { "sleeping" } else { "no longer active: left as it is" });
    Ok(StepOutcome::done(detail))
}

/// The Deployments and StatefulSets of a rendered release, with the replicas each asks for.
fn rendered_workloads(manifests: &str) -> Vec<Workload> {
    serde_yaml_ng::Deserializer::from_str(manifests)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter_map(|doc: Value| {
            let kind = match doc["kind"].as_str()? {
                "Deployment" => WorkloadKind::Deployment,
                "StatefulSet" => WorkloadKind::StatefulSet,
                _ => return None,
            };
            let name = doc["metadata"]["name"].as_str()?.to_owned();
            let replicas = doc["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
            let amount = |v: &Value| match v {
                Value::String(s) => quantity(s),
                Value::Number(n) => n.as_f64(),
                _ => None,
            };
            let (mut cpu, mut memory) = (0.0, 0.0);
            for container in doc["spec"]["template"]["spec"]["containers"].as_array().into_iter().flatten() {
                cpu += amount(&container["resources"]["requests"]["cpu"]).unwrap_or(0.0);
                memory += amount(&container["resources"]["requests"]["memory"]).unwrap_or(0.0);
            }
            let (cpu_millis, memory_bytes) = ((cpu * 1000.0).round() as i64, memory.round() as i64);
            Some(Workload { kind, name, replicas, cpu_millis, memory_bytes })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workloads_of_a_rendered_release_are_its_deployments_and_statefulsets() {
        let manifests = "---\nkind: Service\nmetadata:\n  name: web\n---\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  template:\n    spec:\n      containers:\n        - resources: {requests: {cpu: 100m, memory: 96Mi}}\n        - resources: {requests: {cpu: \"0.05\", memory: 32Mi}}\n---\nkind: StatefulSet\nmetadata:\n  name: db\nspec: {}\n";
        assert_eq!(
            rendered_workloads(manifests),
            [
                Workload {
                    kind: WorkloadKind::Deployment,
                    name: "web".into(),
                    replicas: 2,
                    cpu_millis: 150,
                    memory_bytes: 128 << 20
                },
                Workload {
                    kind: WorkloadKind::StatefulSet,
                    name: "db".into(),
                    replicas: 1,
                    cpu_millis: 0,
                    memory_bytes: 0
                },
            ]
        );
    }
}
