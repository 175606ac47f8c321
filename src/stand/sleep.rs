//! What a sleeping stand keeps of its workloads: each one's kind, name and the replicas it had.

use serde::{Deserialize, Serialize};

/// A workload of a stand (a Deployment or StatefulSet of its release) and its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
    pub replicas: i32,
    /// What one replica's containers request, summed: what its cost is priced by.
    #[serde(default)]
    pub cpu_millis: i64,
    #[serde(default)]
    pub memory_bytes: i64,
}

/// What `workloads` request in all, `(cpu millicores, memory bytes)`, at `replicas` each.
pub fn requested(workloads: &[Workload]) -> (i64, i64) {
    workloads.iter().fold((0, 0), |(cpu, memory), w| {
        let n = i64::from(w.replicas.max(0));
        (cpu + n * w.cpu_millis, memory + n * w.memory_bytes)
    })
}

/// The kinds a sleep scales: what a stand's chart runs as long-lived pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}
