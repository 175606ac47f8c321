//! The integration tests, one binary: linking a binary per file dominated a warm test run. Each module
//! is one former test file; `cargo test --test it <module>::` runs one of them.
//!
//! Apart, each in a process of its own: tests/metrics.rs, whose figures come from the process-wide
//! metrics recorder that every router here moves, and tests/logs.rs, whose captured fields depend on
//! tracing's process-wide callsite cache, which tests logging on other threads can leave stale.

#[path = "../support/mod.rs"]
mod support;

mod access;
mod access_browser;
mod api;
mod caps;
mod chart;
mod cli;
mod cluster;
mod credentials;
mod dashboard;
mod dashboard_browser;
mod dashboard_logs;
mod database;
mod database_expiry;
mod deploy;
mod e2e_script;
mod faults_postgres;
mod forge_github;
mod forge_gitlab;
mod forge_listing;
mod forge_pacing;
mod forks;
mod helm;
mod image;
mod k8s;
mod k8s_logs;
mod kube_runner;
mod layering;
mod lifecycle;
mod migrations;
mod nginx_gate;
mod normalise;
mod oauth_fakes;
mod openapi;
mod openbao_dev;
mod orphans_credentials;
mod pipeline;
mod plan;
mod properties;
mod rbac;
mod reaper_cronjob;
mod registry_server;
mod reporter;
mod schemathesis;
mod secrets_listed;
mod security;
mod sleep;
mod smoke_script;
mod stand_changes;
mod summary;
mod wake_browser;
mod watch;
mod webhooks_github;
mod webhooks_gitlab;
