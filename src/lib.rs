//! draftd: a live, isolated draft stand in Kubernetes for every feature or bugfix pull request.
//!
//! The binary in `main.rs` is a thin CLI over this library; tests and benches use the library directly.

/// One file per subcommand behind the CLI (serve, migrate, reap, plan, stands).
pub mod cli;
/// Kubernetes around the Helm release: namespaces and their isolation (kube-rs).
pub mod cluster;
/// Typed settings: TOML file plus `DRAFTD_*` environment, parsed into types at start.
pub mod config;
/// Per-stand credentials: issued from Vault or Postgres, recorded, renewed, replaced and revoked.
pub mod credentials;
/// Per-stand Postgres databases and their owner roles.
pub mod database;
/// Forge events (GitHub, GitLab) normalised to one enum.
pub mod forge;
/// The helm CLI (Helm 4): upgrade --install, history, rollback, uninstall, template, lint.
pub mod helm;
/// The axum router: webhooks, API, dashboard, health, metrics.
pub mod http;
/// Prometheus metrics: names, the recorder, scrape-time gauges.
pub mod metrics;
/// Run orchestration: workers, steps, supersede and cancel.
pub mod pipeline;
/// `draftd plan` under its former name, which tests and tools use.
pub use cli::plan as plan_cmd;
/// The sweep: expired stands, failed teardowns, expiry warnings, missed webhooks, orphans.
pub mod reaper;
/// OCI registries: whether a stand's image tag is there, its digest, the stand's pull Secret.
pub mod registry;
/// Delivers outbox rows (sticky comments) to the forges, with retries and coalescing.
pub mod reporter;
/// Domain types: stand keys, slug and namespace naming, stand states.
pub mod stand;
/// sqlx repositories of draftd's own database.
pub mod store;
/// Tracing set-up (human or JSON).
pub mod telemetry;
/// Cutting outside text to size for reports and errors.
pub mod text;
/// Requests to the stands as Prometheus counts them: activity that no run shows.
pub mod traffic;
/// Vault/OpenBao: KV secrets and dynamic database credentials with their leases.
pub mod vault;
