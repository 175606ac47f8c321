//! The step runners: one per cluster mode, over what they share.

/// `[cluster] mode = "dry-run"`: a folder per stand.
pub mod dry_run;
/// `[cluster] mode = "kubernetes"`: the stand's namespace, Jobs and release.
pub mod kubernetes;
pub(crate) mod shared;
/// Sleep and wake, in both modes.
mod sleep;

pub use dry_run::DryRunSteps;
pub use kubernetes::KubernetesSteps;
