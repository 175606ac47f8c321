//! The engine's timings and limits, and the backoff every retry of it waits by.

use std::collections::HashMap;
use std::time::Duration;

use crate::stand::StepName;
use crate::store::caps::Limits;

/// Timings and limits of the engine; the defaults suit a cluster, tests shrink them.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Runs this process drives at once.
    pub workers: usize,
    /// Runs in flight across every process on the database (DESIGN.md's `max_concurrent_runs`).
    pub max_running: i64,
    /// A run whose worker has not renewed its lease for this long is taken over by another.
    pub lease: Duration,
    /// Renewal period; a third of the lease survives two missed beats.
    pub heartbeat: Duration,
    /// How long an idle worker waits before looking for work again.
    pub poll: Duration,
    /// Attempts of a step failing transiently before the run fails.
    pub max_step_attempts: i32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Aborts the process at a step boundary or inside a step, for crash tests (`DRAFTD_FAULT`).
    pub fault: Option<Fault>,
    /// A stand lives this long after its newest deploy started, unless its project says otherwise.
    pub ttl: Duration,
    /// A deploy or wake waiting for a place (`max_active`) asks again after this long.
    pub place_recheck: Duration,
}

/// `max_active` as configured: across projects, per project, and what passing a cap does.
#[derive(Debug, Clone, Default)]
pub struct Caps {
    pub all: Option<u32>,
    pub projects: HashMap<String, u32>,
    pub sleep_idlest: bool,
}

impl Caps {
    pub(super) fn limits(&self, project: &str) -> Limits {
        Limits { all: self.all, project: self.projects.get(project).copied(), sleep_idlest: self.sleep_idlest }
    }
}

/// `before:<step>` (the step is recorded as started, then the process dies inside it) or
/// `after:<step>` (the step is recorded as done, then the process dies at the boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub after: bool,
    pub step: StepName,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (when, step) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected before:<step> or after:<step>"))?;
        let after = match when {
            "before" => false,
            "after" => true,
            other => return Err(format!("{other:?}: expected before or after")),
        };
        let step = StepName::ALL
            .iter()
            .copied()
            .find(|n| n.as_str() == step)
            .ok_or_else(|| format!("{step:?} is not a step"))?;
        Ok(Fault { after, step })
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            workers: 4,
            max_running: 8,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            poll: Duration::from_millis(500),
            max_step_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            fault: None,
            ttl: Duration::from_secs(48 * 3600),
            place_recheck: Duration::from_secs(10),
        }
    }
}

/// Exponential backoff with jitter (half to all of the step), so retries of many runs spread out.
pub(super) fn backoff(settings: &EngineSettings, attempt: i32) -> Duration {
    let exp = settings.backoff_base.saturating_mul(1u32 << attempt.clamp(0, 20).saturating_sub(1));
    exp.min(settings.backoff_max).mul_f64(0.5 + fastrand::f64() / 2.0)
}
