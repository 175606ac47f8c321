//! The reporter: delivers outbox rows to the forges, apart from everything else.
//!
//! It is deliberately dumb: the `report` step renders the comment ([`crate::forge::report`]) and
//! enqueues a [`CommentPayload`]; the reporter only puts that body on the PR/MR through a
//! [`ForgeClient`]. Per coalesce key only the newest pending row is delivered (older ones are
//! superseded), one at a time across every reporter (see [`crate::store::outbox`]), so after an
//! outage the forge ends up showing the newest report. Transient failures are retried with
//! exponential backoff (or after the forge's `Retry-After`); permanent ones mark the row `failed`
//! with the reason. A forge that hangs costs at most `call_timeout` per pass; nothing waits on the
//! reporter.
//!
//! The comment id is remembered durably: a delivered row's payload gets `"comment_id"` merged in,
//! and the key's next row edits that comment directly (`PATCH`/`PUT`), listing the PR's comments
//! only when there is no earlier delivery or the comment was deleted (404).

use std::time::Duration;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgExecutor, PgPool};
use tokio::sync::watch;

use crate::config::ForgeKind;
use crate::forge::client::{AnyForge, CommentRef, ForgeClient, ForgeError};
use crate::store::StoreError;
use crate::store::outbox::{self, OutboxRow};

/// The outbox `kind` of sticky comments.
pub const COMMENT_KIND: &str = "comment";

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
    /// The rendered Markdown ([`crate::forge::report::render`]).
    pub body: String,
}

impl CommentPayload {
    /// One key per (stand, PR): a stand whose branch gets a new PR reports on the new one.
    pub fn coalesce_key(&self, stand_id: i64) -> String {
        format!("comment:{}:{}#{}:stand:{stand_id}", self.forge.as_str(), self.repo, self.number)
    }
}

/// Enqueues a sticky-comment report; call it in the transaction that records what it reports.
pub async fn enqueue_comment<'e>(
    conn: impl PgExecutor<'e>,
    stand_id: i64,
    run_id: Option<i64>,
    payload: &CommentPayload,
) -> Result<i64, StoreError> {
    let value = serde_json::to_value(payload).expect("a CommentPayload always serialises");
    outbox::enqueue(conn, stand_id, run_id, COMMENT_KIND, &payload.coalesce_key(stand_id), &value).await
}

#[derive(Debug, Clone)]
pub struct ReporterSettings {
    /// Rows (keys) one pass claims and delivers concurrently.
    pub batch: i64,
    /// Wait between passes when there was nothing more to do.
    pub poll: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A forge's `Retry-After` is honoured up to this.
    pub retry_after_max: Duration,
    /// Transient failures of one row before it is given up.
    pub max_attempts: i32,
    /// Bound on one row's forge calls (listing, then editing or creating).
    pub call_timeout: Duration,
}

impl Default for ReporterSettings {
    fn default() -> Self {
        Self {
            batch: 16,
            poll: Duration::from_secs(1),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            retry_after_max: Duration::from_secs(3600),
            // With the 5-minute cap: a little over four hours of outage before a row is given up.
            max_attempts: 60,
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    pub claimed: usize,
    pub delivered: usize,
    pub retried: usize,
    pub failed: usize,
}

enum Outcome {
    Delivered(CommentRef),
    Retry(String, Duration),
    Failed(String),
}

pub struct Reporter<F> {
    pool: PgPool,
    forges: Vec<(ForgeKind, F)>,
    settings: ReporterSettings,
}

impl Reporter<AnyForge> {
    /// A reporter for every client [`AnyForge::from_config`] made.
    pub fn with_forges(mut self, forges: Vec<AnyForge>) -> Self {
        for f in forges {
            self = self.with_forge(f.kind(), f);
        }
        self
    }
}

impl<F: ForgeClient> Reporter<F> {
    pub fn new(pool: PgPool, settings: ReporterSettings) -> Self {
        Self { pool, forges: Vec::new(), settings }
    }

    /// Rows naming `kind` go through `client`.
    pub fn with_forge(mut self, kind: ForgeKind, client: F) -> Self {
        self.forges.retain(|(k, _)| *k != kind);
        self.forges.push((kind, client));
        self
    }

    /// One pass: claims due rows, delivers them, records each outcome. Returns the rows delivered.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        Ok(self.pass().await?.delivered)
    }

    /// One pass, with what became of every claimed row.
    pub async fn pass(&self) -> Result<PassStats, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = outbox::claim_due(&mut tx, &[COMMENT_KIND], self.settings.batch).await?;
        let mut stats = PassStats { claimed: rows.len(), ..Default::default() };
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(stats);
        }
        let outcomes = join_all(rows.iter().map(|row| self.deliver(row))).await;
        for (row, outcome) in rows.iter().zip(outcomes) {
            let span = (row.outbox_id, row.stand_id, row.attempts);
            match outcome {
                Outcome::Delivered(comment) => {
                    tracing::info!(
                        outbox = span.0,
                        stand = span.1,
                        comment = comment.id,
                        created = comment.created,
                        "report delivered"
                    );
                    outbox::delivered(&mut *tx, row.outbox_id, Some(&json!({ "comment_id": comment.id }))).await?;
                    stats.delivered += 1;
                }
                Outcome::Retry(error, delay) => {
                    tracing::warn!(outbox = span.0, stand = span.1, attempt = span.2, retry_in = ?delay, %error, "report not delivered; will retry");
                    outbox::retry_later(&mut *tx, row.outbox_id, &error, delay).await?;
                    stats.retried += 1;
                }
                Outcome::Failed(error) => {
                    tracing::warn!(outbox = span.0, stand = span.1, attempt = span.2, %error, "report given up");
                    outbox::failed(&mut *tx, row.outbox_id, &error).await?;
                    stats.failed += 1;
                }
            }
        }
        tx.commit().await?;
        Ok(stats)
    }

    /// Passes until `shutdown` turns true; a full batch is followed by another pass at once.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            match self.pass().await {
                Ok(stats) if stats.claimed as i64 >= self.settings.batch => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reporter could not claim or record outbox rows"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.poll) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn deliver(&self, row: &OutboxRow) -> Outcome {
        let payload: CommentPayload = match serde_json::from_value(row.payload.clone()) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(format!("payload is not a comment payload: {e}")),
        };
        let Some((_, client)) = self.forges.iter().find(|(k, _)| *k == payload.forge) else {
            return Outcome::Failed(format!("no {} client is configured ([{0}] token_env)", payload.forge.as_str()));
        };
        let known = row.previous.as_ref().and_then(|p| {
            let same = serde_json::from_value::<CommentPayload>(p.clone()).is_ok_and(|prev| {
                prev.forge == payload.forge && prev.repo == payload.repo && prev.number == payload.number
            });
            p.get("comment_id").and_then(|id| id.as_u64()).filter(|_| same)
        });
        let call = async {
            if let Some(id) = known {
                match client.edit_comment(&payload.repo, payload.number, id, &payload.body).await {
                    Err(e) if e.is_not_found() => {
                        tracing::info!(
                            outbox = row.outbox_id,
                            comment = id,
                            "remembered comment is gone; looking for the marker"
                        );
                    }
                    other => return other,
                }
            }
            client.upsert_sticky_comment(&payload.repo, payload.number, &payload.marker, &payload.body).await
        };
        let result = match tokio::time::timeout(self.settings.call_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(ForgeError::Timeout {
                forge: payload.forge,
                operation: "report",
                after: self.settings.call_timeout,
            }),
        };
        match result {
            Ok(comment) => Outcome::Delivered(comment),
            Err(e) if e.is_transient() && row.attempts < self.settings.max_attempts => {
                Outcome::Retry(e.to_string(), self.backoff(row.attempts, e.retry_after()))
            }
            Err(e) if e.is_transient() => Outcome::Failed(format!("gave up after {} attempts: {e}", row.attempts)),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// `Retry-After` when the forge gave one (bounded), else base·2^(attempt−1) capped, ±20 % jitter.
    fn backoff(&self, attempt: i32, retry_after: Option<Duration>) -> Duration {
        let s = &self.settings;
        if let Some(after) = retry_after {
            return after.clamp(s.backoff_base.min(s.retry_after_max), s.retry_after_max);
        }
        let exp = s.backoff_base.saturating_mul(1u32 << attempt.clamp(1, 20).saturating_sub(1)).min(s.backoff_max);
        exp.mul_f64(0.8 + fastrand::f64() * 0.4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_shape_and_key() {
        let p = CommentPayload {
            forge: ForgeKind::Gitlab,
            repo: "acme/platform/shop".into(),
            number: 7,
            marker: "<!-- draftd:stand:3 -->".into(),
            body: "<!-- draftd:stand:3 -->\nhi".into(),
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"forge": "gitlab", "repo": "acme/platform/shop", "number": 7,
                   "marker": "<!-- draftd:stand:3 -->", "body": "<!-- draftd:stand:3 -->\nhi"})
        );
        assert_eq!(p.coalesce_key(3), "comment:gitlab:acme/platform/shop#7:stand:3");
    }

    #[tokio::test]
    async fn backoff_grows_caps_and_honours_retry_after() {
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let settings = ReporterSettings {
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            retry_after_max: Duration::from_secs(3600),
            ..Default::default()
        };
        let r: Reporter<AnyForge> = Reporter::new(pool, settings);
        let within = |d: Duration, nominal: f64| (nominal * 0.8..=nominal * 1.2).contains(&d.as_secs_f64());
        assert!(within(r.backoff(1, None), 2.0));
        assert!(within(r.backoff(2, None), 4.0));
        assert!(within(r.backoff(5, None), 32.0));
        assert!(within(r.backoff(40, None), 300.0));
        assert_eq!(r.backoff(3, Some(Duration::from_secs(7))), Duration::from_secs(7));
        assert_eq!(r.backoff(3, Some(Duration::ZERO)), Duration::from_secs(2), "never hammer");
        assert_eq!(r.backoff(3, Some(Duration::from_secs(86_400))), Duration::from_secs(3600));
    }
}
