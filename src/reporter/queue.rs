//! What is queued for the reporter: one payload type per outbox `kind`, each naming its forge, where
//! it goes, and the key under which newer rows replace older ones; and [`enqueue`], called in the
//! transaction that records what a row reports.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgExecutor;

use crate::config::ForgeKind;
use crate::forge::client::{CheckReport, EnvironmentReport};
use crate::stand::{RunId, StandId};
use crate::store::StoreError;
use crate::store::outbox::{self, OutboxKind};

/// The payload of a `comment` outbox row: where the sticky comment goes and its whole body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentPayload {
    /// `"github"` or `"gitlab"`: which client delivers it.
    pub forge: ForgeKind,
    /// GitHub `owner/name`; GitLab project path (the project's `repo` setting).
    pub repo: String,
    /// GitHub PR number; GitLab MR iid.
    pub number: u64,
    /// The hidden first line of the body ([`crate::forge::client::marker`]).
    pub marker: String,
    /// The rendered Markdown ([`super::render::render`]).
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckPayload {
    pub forge: ForgeKind,
    pub repo: String,
    #[serde(flatten)]
    pub check: CheckReport,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentPayload {
    pub forge: ForgeKind,
    pub repo: String,
    #[serde(flatten)]
    pub env: EnvironmentReport,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelPayload {
    pub forge: ForgeKind,
    pub repo: String,
    pub number: u64,
    pub label: String,
    /// Added when true, removed when false.
    pub present: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyPayload {
    pub forge: ForgeKind,
    pub repo: String,
    pub number: u64,
    pub body: String,
}

/// One thing owed to a forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    Comment(CommentPayload),
    Check(CheckPayload),
    Environment(EnvironmentPayload),
    Label(LabelPayload),
    /// Never coalesced: each reply is said once (`run` makes its key unique).
    Reply {
        run: RunId,
        reply: ReplyPayload,
    },
}

impl Outbound {
    pub fn kind(&self) -> OutboxKind {
        match self {
            Outbound::Comment(_) => OutboxKind::Comment,
            Outbound::Check(_) => OutboxKind::Check,
            Outbound::Environment(_) => OutboxKind::Environment,
            Outbound::Label(_) => OutboxKind::Label,
            Outbound::Reply { .. } => OutboxKind::Reply,
        }
    }

    pub fn forge(&self) -> ForgeKind {
        match self {
            Outbound::Comment(p) => p.forge,
            Outbound::Check(p) => p.forge,
            Outbound::Environment(p) => p.forge,
            Outbound::Label(p) => p.forge,
            Outbound::Reply { reply, .. } => reply.forge,
        }
    }

    /// Rows with one key are one thing on the forge: only the newest pending one is delivered.
    pub fn coalesce_key(&self, stand_id: StandId) -> String {
        match self {
            Outbound::Comment(p) => {
                // One key per (stand, PR): a stand whose branch gets a new PR reports on the new one.
                format!("comment:{}:{}#{}:stand:{stand_id}", p.forge.as_str(), p.repo, p.number)
            }
            // One key per stand, not per commit: a push supersedes the older commit's pending check.
            Outbound::Check(p) => format!("check:{}:{}:stand:{stand_id}", p.forge.as_str(), p.repo),
            Outbound::Environment(p) => {
                format!("environment:{}:{}:{}:stand:{stand_id}", p.forge.as_str(), p.repo, p.env.environment)
            }
            Outbound::Label(p) => format!("label:{}:{}#{}:{}", p.forge.as_str(), p.repo, p.number, p.label),
            Outbound::Reply { run, reply } => {
                format!("reply:{}:{}#{}:run:{run}", reply.forge.as_str(), reply.repo, reply.number)
            }
        }
    }

    pub fn payload(&self) -> Value {
        let v = match self {
            Outbound::Comment(p) => serde_json::to_value(p),
            Outbound::Check(p) => serde_json::to_value(p),
            Outbound::Environment(p) => serde_json::to_value(p),
            Outbound::Label(p) => serde_json::to_value(p),
            Outbound::Reply { reply, .. } => serde_json::to_value(reply),
        };
        v.expect("payloads always serialise")
    }

    /// A claimed row's payload; `Err` says why it cannot be delivered (a row from a newer draftd).
    pub fn from_row(kind: &str, run: Option<RunId>, payload: &Value) -> Result<Outbound, String> {
        let p = payload.clone();
        let Some(known) = OutboxKind::parse(kind) else {
            return Err(format!("outbox kind {kind:?} is unknown"));
        };
        let parsed = match known {
            OutboxKind::Comment => serde_json::from_value(p).map(Outbound::Comment),
            OutboxKind::Check => serde_json::from_value(p).map(Outbound::Check),
            OutboxKind::Environment => serde_json::from_value(p).map(Outbound::Environment),
            OutboxKind::Label => serde_json::from_value(p).map(Outbound::Label),
            OutboxKind::Reply => {
                serde_json::from_value(p).map(|reply| Outbound::Reply { run: run.unwrap_or(RunId::new(0)), reply })
            }
        };
        parsed.map_err(|e| format!("payload is not a {kind} payload: {e}"))
    }
}

/// Enqueues a report; call it in the transaction that records what it reports.
pub async fn enqueue<'e>(
    conn: impl PgExecutor<'e>,
    stand_id: StandId,
    run_id: Option<RunId>,
    out: &Outbound,
) -> Result<i64, StoreError> {
    outbox::enqueue(conn, stand_id, run_id, out.kind(), &out.coalesce_key(stand_id), &out.payload()).await
}

/// Enqueues a sticky-comment report.
pub async fn enqueue_comment<'e>(
    conn: impl PgExecutor<'e>,
    stand_id: StandId,
    run_id: Option<RunId>,
    payload: &CommentPayload,
) -> Result<i64, StoreError> {
    enqueue(conn, stand_id, run_id, &Outbound::Comment(payload.clone())).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::client::CheckState;
    use serde_json::json;

    #[test]
    fn payload_shapes_and_keys() {
        let p = CommentPayload {
            forge: ForgeKind::Gitlab,
            repo: "acme/platform/shop".into(),
            number: 7,
            marker: "<!-- draftd:stand:3 -->".into(),
            body: "<!-- draftd:stand:3 -->\nhi".into(),
        };
        let c = Outbound::Comment(p);
        assert_eq!(
            c.payload(),
            json!({"forge": "gitlab", "repo": "acme/platform/shop", "number": 7,
                   "marker": "<!-- draftd:stand:3 -->", "body": "<!-- draftd:stand:3 -->\nhi"})
        );
        assert_eq!(c.coalesce_key(crate::stand::StandId::new(3)), "comment:gitlab:acme/platform/shop#7:stand:3");
        let check = Outbound::Check(CheckPayload {
            forge: ForgeKind::Github,
            repo: "acme/shop".into(),
            check: CheckReport {
                sha: "abc1234".into(),
                state: CheckState::InProgress,
                title: "t".into(),
                summary: "s".into(),
                details_url: None,
                branch: None,
            },
        });
        assert_eq!(check.payload()["state"], "in_progress");
        assert_eq!(check.coalesce_key(crate::stand::StandId::new(3)), "check:github:acme/shop:stand:3");
        assert_eq!(Outbound::from_row("check", None, &check.payload()).unwrap(), check);
        assert!(Outbound::from_row("telegram", None, &json!({})).is_err());
    }
}
