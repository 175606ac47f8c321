//! `serve`'s wiring of the credentials keeper: how often it runs, and how a replacement login
//! reaches a running stand in the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::SecretString;

use super::runtime::wait_migrated;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::credentials::StandCredentials;
use crate::http::AppState;
use crate::stand::StandId;
use crate::store::stands;

/// The keeper's way of handing a replacement login to a running stand: its Secret updated and the
/// release's Deployments rolled onto it.
pub(super) fn deliver_to_cluster(
    cluster: Arc<crate::cluster::Kubernetes>,
    pool: sqlx::PgPool,
    config: Arc<Config>,
) -> impl Fn(StandId, String, BTreeMap<String, SecretString>) -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static
{
    move |stand_id, namespace, data| {
        let (cluster, pool, config) = (cluster.clone(), pool.clone(), config.clone());
        Box::pin(async move {
            let (project, expires_at) = stands::project_and_expiry(&pool, stand_id).await.map_err(|e| e.to_string())?;
            let sa_token = config.project(&project).is_some_and(|p| p.service_account_token);
            let stand = crate::cluster::StandMeta {
                namespace: namespace.clone(),
                stand_id,
                project,
                expires_at: expires_at.unwrap_or_else(chrono::Utc::now),
                service_account_token: sa_token,
            };
            let checksum = cluster
                .apply_secret(&stand, crate::credentials::DATABASE_SECRET, &data)
                .await
                .map_err(|e| e.to_string())?;
            cluster
                .roll_on_secrets(&namespace, &crate::helm::release_name(&namespace), &checksum)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    }
}

/// Renews, replaces and revokes stand logins on a short period, from when migrations are applied
/// until `stop`.
pub(super) fn spawn_keeper<F, Fut>(
    credentials: Arc<StandCredentials>,
    deliver: F,
    state: &AppState,
    stop: &tokio::sync::watch::Receiver<bool>,
) where
    F: Fn(StandId, String, BTreeMap<String, SecretString>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    // Often enough to renew a lease at half its TTL and revoke replaced logins on time.
    let period = (credentials.lifetimes().lease / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let (state, mut stop) = (state.clone(), stop.clone());
    tokio::spawn(async move {
        if !wait_migrated(&state, &stop).await {
            return;
        }
        loop {
            match credentials.keep(&deliver).await {
                Ok(kept) if kept != Default::default() => tracing::info!(?kept, "credential upkeep"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "credential upkeep could not run"),
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
}
