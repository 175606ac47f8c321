//! The dry-run cluster: a folder per stand stands in for its namespace (manifests, report).

use std::path::Path;

/// Removes a stand's dry-run folder whole, as a namespace would go; false when it was not there.
pub async fn remove_folder(dir: &Path) -> std::io::Result<bool> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
