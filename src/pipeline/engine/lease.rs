//! Holding a claimed run: the heartbeat that renews its lease and tells the steps when to stop,
//! and the retries that keep a worker's writes through a database restart.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::settings::{EngineSettings, backoff};
use crate::stand::{Failure, RunId};
use crate::store::runs::{self, ClaimedRun, RunStoreError};

/// Aborts the heartbeat when the run's future is dropped, as a killed worker's would stop.
pub(super) struct AbortOnDrop(pub(super) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a worker keeps retrying a write that met a database restart or outage. The run stays its
/// own meanwhile unless another worker claims it once the lease has run out (the write then finds the
/// lease lost): recording a step's end now beats resuming the run later and doing the step again.
const WRITE_RETRY_FOR: Duration = Duration::from_secs(30);

/// Runs `write` again, with backoff, while it fails on a connection the database cut or cannot give.
pub(super) async fn durable<T, Fut>(
    settings: &EngineSettings,
    mut write: impl FnMut() -> Fut,
) -> Result<T, RunStoreError>
where
    Fut: Future<Output = Result<T, RunStoreError>>,
{
    let deadline = tokio::time::Instant::now() + WRITE_RETRY_FOR;
    let mut attempt = 1;
    loop {
        match write().await {
            Err(RunStoreError::Store(e)) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                let delay = backoff(settings, attempt);
                tracing::warn!(attempt, retry_in = ?delay, error = %e, "recording failed, will retry");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

pub(super) async fn lease_lost(lost: &watch::Receiver<bool>) {
    flagged(lost).await
}

/// Resolves once the flag is raised; never, if its sender is gone without raising it.
pub(super) async fn flagged(flag: &watch::Receiver<bool>) {
    let mut flag = flag.clone();
    if flag.wait_for(|f| *f).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Returns once a newer deploy or teardown of `run`'s stand is queued or running, looking every
/// `poll` (as idle workers look for runs queued elsewhere). A failed look is tried again.
pub(super) async fn newer_deploy(pool: &PgPool, run: &ClaimedRun, poll: Duration) {
    loop {
        tokio::time::sleep(poll).await;
        match runs::overtaken_by(pool, run).await {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "could not look for newer runs"),
        }
    }
}

/// What the heartbeat tells the steps of its run.
pub(super) struct Signals {
    /// Another worker holds the run now.
    pub(super) lost: watch::Receiver<bool>,
    /// A deploy's stand is being torn down.
    pub(super) cancel: watch::Receiver<bool>,
}

/// Renews the lease until dropped; flags `lost` when another worker took the run over, and
/// `cancel` when the run is a deploy of a stand whose teardown was queued.
pub(super) async fn heartbeat(
    pool: PgPool,
    run_id: RunId,
    owner: String,
    settings: EngineSettings,
    lost: watch::Sender<bool>,
    cancel: watch::Sender<bool>,
) {
    loop {
        tokio::time::sleep(settings.heartbeat).await;
        match runs::heartbeat(&pool, run_id, &owner, settings.lease).await {
            Ok(teardown_queued) => {
                if teardown_queued {
                    let _ = cancel.send(true);
                }
            }
            Err(RunStoreError::LeaseLost(_)) => {
                let _ = lost.send(true);
                return;
            }
            // The database may be back before the lease runs out; the next beat tries again.
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}
