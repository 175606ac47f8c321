//! Connecting to the API server, once at start, so a missing or broken configuration stops `serve`
//! with a clear error instead of failing the first run.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::ClusterError;
use crate::config::ClusterConfig;

/// Where the connection settings come from, in order: `[cluster] kubeconfig` when set (explicit
/// wins); the pod's service account when running in a cluster and no context is asked for;
/// otherwise `KUBECONFIG` or `~/.kube/config`. `[cluster] context` picks a context in either file.
pub async fn config(cluster: &ClusterConfig) -> Result<Config, ClusterError> {
    let options = KubeConfigOptions { context: cluster.context.clone(), ..KubeConfigOptions::default() };
    if let Some(path) = &cluster.kubeconfig {
        let file = Kubeconfig::read_from(path)
            .map_err(|e| ClusterError::Config(format!("[cluster] kubeconfig {}: {e}", path.display())))?;
        return Config::from_custom_kubeconfig(file, &options)
            .await
            .map_err(|e| ClusterError::Config(format!("[cluster] kubeconfig {}: {e}", path.display())));
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() && cluster.context.is_none() {
        return Config::incluster().map_err(|e| {
            ClusterError::Config(format!("running in a pod, but its service account cannot be used: {e}"))
        });
    }
    Config::from_kubeconfig(&options).await.map_err(|e| {
        let source = match std::env::var_os("KUBECONFIG") {
            Some(path) => format!("KUBECONFIG={}", path.to_string_lossy()),
            None => "~/.kube/config".to_owned(),
        };
        ClusterError::Config(format!(
            "not in a pod (KUBERNETES_SERVICE_HOST is unset) and {source} cannot be used: {e}; \
             set [cluster] kubeconfig (and context) or KUBECONFIG, or use [cluster] mode = \"dry-run\""
        ))
    })
}

pub async fn connect(cluster: &ClusterConfig) -> Result<Client, ClusterError> {
    let config = config(cluster).await?;
    tracing::info!(api_server = %config.cluster_url, "kubernetes client configured");
    Client::try_from(config).map_err(|e| ClusterError::Config(format!("building the Kubernetes client: {e}")))
}

/// A client for verify's probes through the API server proxy. kube's default client retries 429,
/// 503 and 504 answers by itself, up to 15 times: the API server's own "no endpoints available"
/// (503) would be retried until the probe's timeout, and reported as an app that never answered
/// instead of what the API server said.
pub async fn connect_for_probes(cluster: &ClusterConfig) -> Result<Client, ClusterError> {
    let mut config = config(cluster).await?;
    config.default_retry = false;
    Client::try_from(config).map_err(|e| ClusterError::Config(format!("building the Kubernetes client: {e}")))
}
