//! Run orchestration: workers claim runs, execute their steps through a [`StepRunner`], record every
//! step as a row, retry transient failures, roll back and report permanent ones, and give way to
//! newer runs of the same stand at step boundaries.

mod engine;
/// The image step: the stand's tag waited for in the registry, built when CI did not.
pub mod image;
/// The step runner of kubernetes mode.
pub mod kube_runner;
/// Teardown, extend and report steps both modes share.
pub mod lifecycle;
/// What a run would create: names, image, Helm release.
pub mod plan;
/// The dry-run step runner.
pub mod runner;
mod step;

pub use engine::{Engine, EngineSettings, Fault, RunEnd, Wake};
pub use step::{RunContext, StepError, StepErrorKind, StepName, StepOutcome, StepRunner, plan};
