//! What a long-running draftd process needs besides its parts: a listening socket with a backlog,
//! the shutdown signal, a lease owner's name, and migrations applied before work starts.

use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};

use crate::http::AppState;
use crate::stand::Failure;
use crate::store;

/// False when asked to stop first.
pub(super) async fn wait_migrated(state: &AppState, stop: &tokio::sync::watch::Receiver<bool>) -> bool {
    while !state.migrated() {
        if *stop.borrow() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// Unique per process and readable in `runs.lease_owner`: host, pid and a random suffix.
pub(super) fn lease_owner() -> String {
    let host =
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "draftd".into());
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}

/// Retries while the database is unreachable (it may start after draftd); stops on a real migration error.
pub(super) async fn migrate_until_done(pool: sqlx::PgPool, state: AppState) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        match store::migrate(&pool).await {
            Ok(()) => {
                state.set_migrated();
                tracing::info!("migrations applied");
                return std::future::pending().await;
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?delay, "database not reachable for migrations");
            }
            Err(e) => return Err(e).context("migrations failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Binds with `[intake] listen_backlog` rather than tokio's 128: the kernel holds that many
/// finished handshakes while draftd is paused, instead of dropping the SYNs of a burst.
pub(super) fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As TcpListener::bind does: a restarted draftd rebinds at once, despite connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    if let Some(cap) = somaxconn().filter(|cap| *cap < backlog) {
        tracing::warn!(
            listen_backlog = backlog,
            somaxconn = cap,
            "the kernel caps the listen backlog at net.core.somaxconn; raise it to hold bursts"
        );
    }
    socket.listen(backlog)
}

/// Linux's cap on every listen backlog; `None` elsewhere.
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?.trim().parse().ok()
}

pub(super) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
