//! Logs go to stderr (stdout is for command output), human-readable or one JSON object per line.
//!
//! JSON lines carry the current span's fields and the whole span list, so a line logged deep inside
//! a run (in a client library's own span, say) still carries the run's request id, delivery, project,
//! stand and run ids.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// `RUST_LOG` overrides the default: draftd at info, sqlx's per-statement logs only when slow.
fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"))
}

pub fn init(format: LogFormat) {
    let result = match format {
        LogFormat::Human => tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr).try_init(),
        LogFormat::Json => {
            tracing::subscriber::set_global_default(json_subscriber(std::io::stderr, filter())).map_err(|e| e.into())
        }
    };
    // A second init (tests) keeps the first subscriber.
    let _: Result<(), Box<dyn std::error::Error + Send + Sync>> = result;
}

/// The JSON log format, writing to `writer`: `serve --log-format json` uses it on stderr, tests on a
/// buffer to check what the lines carry.
pub fn json_subscriber<W>(writer: W, filter: EnvFilter) -> impl Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .finish()
}
