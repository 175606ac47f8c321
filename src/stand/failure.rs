//! What every adapter's error tells its callers: whether trying again may pass, and a stable label.
//!
//! It sits in `stand`, the lowest layer, so the adapters (helm, vault, database, registry, cluster,
//! store) implement it without importing anything above them, and the pipeline turns any of them
//! into a step's error with one conversion (`pipeline/step.rs`).

/// An error that knows how it failed.
pub trait Failure: std::error::Error {
    /// Whether trying again later may pass: timeouts, an unreachable or overloaded server. A refusal
    /// or a bad input will not pass by retrying.
    fn is_transient(&self) -> bool;

    /// A stable label for metrics, step errors and reports, e.g. `helm_timeout`.
    fn label(&self) -> &'static str;
}
