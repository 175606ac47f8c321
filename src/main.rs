//! The `draftd` command line. Each subcommand lives in `draftd::commands`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use draftd::commands;
use draftd::config::Config;
use draftd::stand::StandState;
use draftd::store::stands::StandRef;
use draftd::telemetry::{self, LogFormat};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => commands::serve(config).await,
            Command::Migrate => commands::migrate(config).await,
            Command::Reap { json } => commands::reap(config, json).await,
            Command::Plan { project, branch, sha, json } => {
                draftd::plan_cmd::plan(config, &project, &branch, &sha, json).await
            }
            Command::Stands { command: StandsCommand::List { project, state, json } } => {
                commands::stands_list(config, project, state, json).await
            }
            Command::Stands { command: StandsCommand::Show { stand, json } } => {
                commands::stands_show(config, stand, json).await
            }
            Command::Stands { command: StandsCommand::Rerun { stand } } => {
                commands::stands_queue(config, stand, draftd::forge::Command::Rerun).await
            }
            Command::Stands { command: StandsCommand::Extend { stand, by } } => {
                commands::stands_queue(config, stand, draftd::forge::Command::Extend { by }).await
            }
            Command::Stands { command: StandsCommand::Destroy { stand } } => {
                commands::stands_queue(config, stand, draftd::forge::Command::Destroy).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--by`: what `/draft extend` and the API take (at least a second).
fn parse_extension(text: &str) -> Result<std::time::Duration, String> {
    draftd::forge::command::extension(text)
        .ok_or_else(|| format!("{text:?} is not a duration of at least 1s, like 24h"))
}
