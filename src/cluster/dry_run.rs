//! The dry-run cluster: a folder per stand stands in for its namespace (manifests, report), and
//! nothing stands in for its pods or their logs.

use std::path::Path;

/// Removes a stand's dry-run folder whole, as a namespace would go; false when it was not there.
pub async fn remove_folder(dir: &Path) -> std::io::Result<bool> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Dry-run mode's answer to the stand page's Logs: there are none, and it says why
/// ([`super::ClusterError::DryRun`]).
pub struct DryRunLogs;

impl super::logs::LogReader for DryRunLogs {
    fn pod_logs<'a>(&'a self, _namespace: &'a str, _bounds: super::logs::LogBounds) -> super::logs::LogsFuture<'a> {
        Box::pin(async { Err(super::ClusterError::DryRun) })
    }
}
