//! What each subcommand does, one file per subcommand; `main.rs` only parses the arguments and calls
//! [`run`] with one of these.

mod keeper;
pub mod migrate;
pub mod plan;
pub mod reap;
mod runtime;
pub mod serve;
pub mod stands;
mod table;

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::telemetry::{self, LogFormat};

/// Sets up logging, loads the configuration and runs `command` on a multi-threaded runtime.
/// Exit codes: 0 done, 1 the command failed, 2 the configuration is invalid.
pub fn run<F, Fut>(config: Option<&Path>, log_format: LogFormat, command: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    telemetry::init(log_format);
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(command(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
