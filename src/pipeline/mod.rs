//! Run orchestration: workers claim runs, execute their steps through a [`StepRunner`], record every
//! step as a row, retry transient failures, roll back and report permanent ones, and give way to
//! newer runs of the same stand at step boundaries.

/// Who may act through the forge: write access, checked per command through [`authorise::Access`], audited.
pub mod authorise;
mod engine;
/// The image step: the stand's tag waited for in the registry, built when CI did not.
pub mod image;
/// Teardown, extend and report steps both modes share; what a report says is the reporter's.
pub mod lifecycle;
/// What a run would create: names, image, Helm release.
pub mod plan;
mod step;
/// The step runners of both cluster modes (`dry_run`, `kubernetes`) and what they share.
pub mod steps;

pub use engine::{Caps, Engine, EngineSettings, Fault, RunEnd, Wake};
pub use step::{RunContext, StepError, StepErrorKind, StepName, StepOutcome, StepRunner};
