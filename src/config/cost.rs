//! `[cost]`: what a stand's requests cost, for the figures on the PR, the API and `/metrics`.

use serde::{Deserialize, Serialize};

use crate::stand::Rates;

/// The defaults are examples of a public cloud's on-demand prices, not anyone's bill: set your own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostConfig {
    /// Per CPU core requested, per hour awake.
    pub cpu_hour: f64,
    /// Per GiB of memory requested, per hour awake.
    pub memory_gib_hour: f64,
    /// Per GiB of volume claims, per hour of the stand's life (asleep too).
    pub storage_gib_hour: f64,
    pub currency: String,
}

impl Default for CostConfig {
    fn default() -> Self {
        Self { cpu_hour: 0.04, memory_gib_hour: 0.005, storage_gib_hour: 0.0002, currency: "USD".to_owned() }
    }
}

impl CostConfig {
    pub fn rates(&self) -> Rates {
        Rates {
            cpu_hour: self.cpu_hour,
            memory_gib_hour: self.memory_gib_hour,
            storage_gib_hour: self.storage_gib_hour,
        }
    }
}
