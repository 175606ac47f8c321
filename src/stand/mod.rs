//! Stands: the draft environment of one (project, branch).

mod address;
mod cost;
mod event;
mod failure;
mod fork;
mod health;
mod ids;
mod naming;
mod run;
mod sleep;
mod steps;

pub use address::{stand_host, stand_url};
pub use cost::{Awake, Cost, Rates, cost};
pub use event::{Event, PullRequest};
pub use failure::Failure;
pub use fork::{MIN_PREFIX, Provenance, ShaPrefix, short_sha};
pub use health::Health;
pub use ids::{RunId, StandId};
pub use naming::{BranchName, CommitSha, GitlabEnvironmentName, NameError, Namespace, ProjectName, is_dns_label, slug};
pub use run::{Command, RunKind, RunState, StepState, Trigger};
pub use sleep::{Workload, WorkloadKind, requested};
pub use steps::StepName;

use serde::{Deserialize, Serialize};

/// Where a stand is in its life. Intake only moves stands between these; workers do the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, clap::ValueEnum)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum StandState {
    /// Deploys are accepted.
    Active,
    /// A teardown was asked for; deploy events are recorded but never queue, until a reopen.
    Closing,
    /// Gone (or never built); kept as a tombstone so a late webhook cannot recreate it.
    Removed,
    /// Idle: its workloads scaled to zero, its namespace, database and data kept. A push, a wake
    /// command or a request to its URL wakes it.
    Sleeping,
    /// New, past `max_active`: its deploy waits for a place (why is in its comment), taken when
    /// another stand sleeps or goes.
    Waiting,
}

impl StandState {
    pub const ALL: [StandState; 5] =
        [StandState::Active, StandState::Closing, StandState::Removed, StandState::Sleeping, StandState::Waiting];

    pub fn as_str(self) -> &'static str {
        match self {
            StandState::Active => "active",
            StandState::Closing => "closing",
            StandState::Removed => "removed",
            StandState::Sleeping => "sleeping",
            StandState::Waiting => "waiting",
        }
    }

    /// Built and kept, or about to be: deploys, commands and the expiry apply to it, awake, asleep
    /// or waiting for a place.
    pub fn is_live(self) -> bool {
        matches!(self, StandState::Active | StandState::Sleeping | StandState::Waiting)
    }
}

impl std::fmt::Display for StandState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ways a stand moves between [`StandState`]s. store/stands.rs makes each one in SQL with the
/// states this table allows it from, so the table is the one place the life of a stand is stated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandChange {
    /// The PR closed, a destroy was authorised, or the stand expired: its teardown is queued.
    Close,
    /// A reopen, or a push after the stand expired: built again, in a new epoch.
    Revive,
    /// Its teardown finished: kept as a tombstone.
    Tombstone,
    /// Idle for long enough: its workloads are scaled to zero.
    Sleep,
    /// Scaled back: by a push, a wake command, or a request to its URL.
    Wake,
    /// A new stand past `max_active`: its deploy waits for a place.
    Wait,
    /// A place freed for a waiting stand: its deploy goes on.
    Place,
}

impl StandChange {
    pub const ALL: [StandChange; 7] = [
        StandChange::Close,
        StandChange::Revive,
        StandChange::Tombstone,
        StandChange::Sleep,
        StandChange::Wake,
        StandChange::Wait,
        StandChange::Place,
    ];

    /// The states this change may leave.
    pub fn from(self) -> &'static [StandState] {
        match self {
            // A sleeping stand expires and closes like an awake one: nothing is scaled back for it.
            StandChange::Close => &[StandState::Active, StandState::Sleeping, StandState::Waiting],
            StandChange::Revive => &[StandState::Closing, StandState::Removed],
            // Whatever is left of a stand once its teardown ran; a revive in between moved its
            // epoch, which the store checks too.
            StandChange::Tombstone => &[StandState::Active, StandState::Closing],
            StandChange::Sleep => &[StandState::Active],
            StandChange::Wake => &[StandState::Sleeping],
            // Only a stand that holds no place yet waits (the store checks that): one asleep
            // stays asleep while its wake waits.
            StandChange::Wait => &[StandState::Active],
            StandChange::Place => &[StandState::Waiting],
        }
    }

    /// The state it arrives in.
    pub fn to(self) -> StandState {
        match self {
            StandChange::Close => StandState::Closing,
            StandChange::Revive => StandState::Active,
            StandChange::Tombstone => StandState::Removed,
            StandChange::Sleep => StandState::Sleeping,
            StandChange::Wake => StandState::Active,
            StandChange::Wait => StandState::Waiting,
            StandChange::Place => StandState::Active,
        }
    }

    /// The `from` states as the store binds them.
    pub fn from_names(self) -> Vec<&'static str> {
        self.from().iter().map(|s| s.as_str()).collect()
    }
}

impl StandState {
    /// Where `change` takes a stand in this state; `None` when it may not happen from here.
    pub fn after(self, change: StandChange) -> Option<StandState> {
        change.from().contains(&self).then(|| change.to())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_is_reachable_and_none_is_left_by_a_change_that_keeps_it() {
        for change in StandChange::ALL {
            assert!(!change.from().contains(&change.to()), "{change:?} leaves and re-enters {:?}", change.to());
        }
        for state in StandState::ALL {
            assert!(StandChange::ALL.iter().any(|c| c.to() == state), "{state} cannot be reached");
        }
    }

    #[test]
    fn a_stand_lives_active_closing_removed_and_back() {
        use StandChange::*;
        use StandState::*;
        assert_eq!(Active.after(Close), Some(Closing));
        assert_eq!(Closing.after(Tombstone), Some(Removed));
        assert_eq!(Removed.after(Revive), Some(Active));
        assert_eq!(Closing.after(Revive), Some(Active));
        assert_eq!(Removed.after(Close), None);
        assert_eq!(Closing.after(Close), None);
        assert_eq!(Active.after(Revive), None);
        assert_eq!(Removed.after(Tombstone), None);
        assert_eq!(Active.after(Sleep), Some(Sleeping));
        assert_eq!(Sleeping.after(Wake), Some(Active));
        assert_eq!(Sleeping.after(Close), Some(Closing));
        assert_eq!(Sleeping.after(Sleep), None);
        assert_eq!(Active.after(Wake), None);
        assert_eq!(Closing.after(Wake), None);
        assert_eq!(Active.after(Wait), Some(Waiting));
        assert_eq!(Waiting.after(Place), Some(Active));
        assert_eq!(Waiting.after(Close), Some(Closing));
        assert_eq!(Sleeping.after(Wait), None);
        assert_eq!(Waiting.after(Sleep), None);
    }
}
