//! The `draftd` command line: clap only. Each subcommand lives in `draftd::cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use draftd::cli;
use draftd::forge::Command as Queued;
use draftd::stand::StandState;
use draftd::store::stands::StandRef;
use draftd::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "draftd", version, about = "A live, isolated draft stand for every pull request")]
struct Cli {
    /// Configuration file (TOML); every value can be overridden by DRAFTD_* variables.
    #[arg(long, global = true, env = "DRAFTD_CONFIG")]
    config: Option<PathBuf>,
    /// Log output on stderr: human-readable or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value = "human", env = "DRAFTD_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve webhooks and health checks (applies migrations at start).
    Serve,
    /// Apply draftd's database migrations and exit.
    Migrate,
    /// One sweep of the reaper, then exit (for a Kubernetes CronJob): teardowns for expired stands
    /// and closed PRs, expiry warnings, missed webhooks, orphans.
    Reap {
        /// The sweep's summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show what a run would create for a branch, rendered, without touching anything.
    Plan {
        /// The configured project's name.
        #[arg(long)]
        project: String,
        /// The source branch, as the forge names it.
        #[arg(long)]
        branch: String,
        /// The full commit id (40 or 64 hex characters).
        #[arg(long)]
        sha: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inspect stands (read-only).
    Stands {
        #[command(subcommand)]
        command: StandsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StandsCommand {
    /// List stands with their newest run.
    List {
        /// Only this project's stands.
        #[arg(long)]
        project: Option<String>,
        /// Only stands in this state.
        #[arg(long, value_enum)]
        state: Option<StandState>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one stand with its runs: by id, or as project/branch.
    Show {
        stand: StandRef,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Queue a re-run of the stand at its head commit.
    Rerun { stand: StandRef },
    /// Queue an extension of the stand's lifetime.
    Extend {
        stand: StandRef,
        /// How much longer, like 24h; the configured default when absent.
        #[arg(long, value_parser = parse_extension)]
        by: Option<std::time::Duration>,
    },
    /// Queue the stand's teardown.
    Destroy { stand: StandRef },
    /// Queue a wake of a sleeping stand.
    Wake { stand: StandRef },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    cli::run(args.config.as_deref(), args.log_format, |config| async move {
        match args.command {
            Command::Serve => cli::serve::serve(config).await,
            Command::Migrate => cli::migrate::migrate(config).await,
            Command::Reap { json } => cli::reap::reap(config, json).await,
            Command::Plan { project, branch, sha, json } => {
                cli::plan::plan(config, &project, &branch, &sha, json).await
            }
            Command::Stands { command: StandsCommand::List { project, state, json } } => {
                cli::stands::list(config, project, state, json).await
            }
            Command::Stands { command: StandsCommand::Show { stand, json } } => {
                cli::stands::show(config, stand, json).await
            }
            Command::Stands { command: StandsCommand::Rerun { stand } } => {
                cli::stands::queue(config, stand, Queued::Rerun).await
            }
            Command::Stands { command: StandsCommand::Extend { stand, by } } => {
                cli::stands::queue(config, stand, Queued::Extend { by }).await
            }
            Command::Stands { command: StandsCommand::Destroy { stand } } => {
                cli::stands::queue(config, stand, Queued::Destroy).await
            }
            Command::Stands { command: StandsCommand::Wake { stand } } => {
                cli::stands::queue(config, stand, Queued::Wake).await
            }
        }
    })
}

/// `--by`: what `/draft extend` and the API take (at least a second).
fn parse_extension(text: &str) -> Result<std::time::Duration, String> {
    draftd::forge::command::extension(text)
        .ok_or_else(|| format!("{text:?} is not a duration of at least 1s, like 24h"))
}
