//! Whether an awake stand still answers, as the health watch last found it. Apart from
//! [`super::StandState`] on purpose: a degraded stand is still active (it takes deploys, commands,
//! sleeps and expires like any other), so health is a second, independent fact about it.

use serde::{Deserialize, Serialize};

/// What the last probe of an awake stand found; stored as `stands.health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// It answered (anything below 500), or it has not been probed since verify passed.
    Healthy,
    /// It did not answer, or answered 5xx, twice in a row; it is healthy again at its next answer.
    Degraded,
}

impl Health {
    pub const ALL: [Health; 2] = [Health::Healthy, Health::Degraded];

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
