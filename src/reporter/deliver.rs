//! The outbox loop: claims due rows, puts them on the forge through a [`ForgeClient`], and records
//! what became of each (delivered, retried later, given up).
//!
//! Rows are delivered per stand in the order they were written, and per coalesce key only the
//! newest pending row is delivered (see [`crate::store::outbox`]), so after an outage the forge ends
//! up showing the newest state. Transient failures are retried with exponential backoff, or after
//! the forge's `Retry-After` / rate-limit reset, holding back the rows behind them; permanent ones
//! mark the row `failed` with the reason and the stream goes on. A forge that hangs costs at most
//! `call_timeout` per pass; nothing waits on the reporter.
//!
//! What a delivery left on the forge is remembered durably: the comment id, the check run id, the
//! deployment or environment id are merged into the delivered row's payload, and the key's next row
//! updates that object directly, searching only when there is no earlier delivery or it was deleted.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

use super::queue::{CheckPayload, CommentPayload, Outbound};
use crate::config::ForgeKind;
use crate::forge::client::{AnyForge, CheckState, EnvironmentRef, ForgeClient, ForgeError};
use crate::stand::Failure;
use crate::store::StoreError;
use crate::store::outbox::{self, OutboxKind, OutboxRow};

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
    /// Streams (stands) claimed.
    pub claimed: usize,
    pub delivered: usize,
    pub retried: usize,
    pub failed: usize,
}

enum Outcome {
    /// Delivered, with what to remember for the key's next row.
    Delivered(Option<Value>),
    Retry(String, Duration),
    /// Not tried: a row ahead in the stream is being retried after this delay, or the client is held.
    Waiting(Duration),
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
        let streams = outbox::claim_streams(&mut tx, &OutboxKind::ALL, self.settings.batch).await?;
        let mut stats = PassStats { claimed: streams.len(), ..Default::default() };
        if streams.is_empty() {
            tx.commit().await?;
            return Ok(stats);
        }
        let outcomes = join_all(streams.iter().map(|rows| self.deliver_stream(rows))).await;
        for (row, outcome) in streams.iter().flatten().zip(outcomes.into_iter().flatten()) {
            let span = (row.outbox_id, row.stand_id, row.kind.as_str(), row.attempts);
            match outcome {
                Outcome::Delivered(receipt) => {
                    tracing::info!(outbox = span.0, stand = span.1.get(), kind = span.2, "report delivered");
                    outbox::delivered(&mut *tx, row.outbox_id, receipt.as_ref()).await?;
                    stats.delivered += 1;
                }
                Outcome::Retry(error, delay) => {
                    tracing::warn!(outbox = span.0, stand = span.1.get(), kind = span.2, attempt = span.3, retry_in = ?delay, %error, "report not delivered; will retry");
                    outbox::retry_later(&mut *tx, row.outbox_id, &error, delay).await?;
                    stats.retried += 1;
                }
                Outcome::Waiting(delay) => {
                    outbox::wait(&mut *tx, row.outbox_id, delay).await?;
                }
                Outcome::Failed(error) => {
                    tracing::warn!(outbox = span.0, stand = span.1.get(), kind = span.2, attempt = span.3, %error, "report given up");
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

    /// One stand's rows, in order; the first that must be retried holds back the rest.
    async fn deliver_stream(&self, rows: &[OutboxRow]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(Outcome::Retry(_, delay) | Outcome::Waiting(delay)) = outcomes.last() {
                let delay = *delay;
                outcomes.push(Outcome::Waiting(delay));
                continue;
            }
            outcomes.push(self.deliver(row).await);
        }
        outcomes
    }

    async fn deliver(&self, row: &OutboxRow) -> Outcome {
        let out = match Outbound::from_row(&row.kind, row.run_id, &row.payload) {
            Ok(out) => out,
            Err(e) => return Outcome::Failed(e),
        };
        let forge = out.forge();
        let Some((_, client)) = self.forges.iter().find(|(k, _)| *k == forge) else {
            return Outcome::Failed(format!("no {} client is configured ([{0}])", forge.as_str()));
        };
        let result = match tokio::time::timeout(self.settings.call_timeout, self.send(client, row, &out)).await {
            Ok(r) => r,
            Err(_) => Err(ForgeError::Timeout { forge, operation: "report", after: self.settings.call_timeout }),
        };
        match result {
            Ok(receipt) => Outcome::Delivered(receipt),
            // Held back by the client (a rate limit another row ran into): nothing reached the forge,
            // so it is no attempt. Counting it would grow the backoff towards its 5-minute cap and
            // give rows up after `max_attempts` holds during a burst of 429s (benches/soak.rs).
            Err(ForgeError::Held { wait, .. }) => Outcome::Waiting(wait),
            Err(e) if e.is_transient() && row.attempts < self.settings.max_attempts => {
                Outcome::Retry(e.to_string(), self.backoff(row.attempts, e.retry_after()))
            }
            Err(e) if e.is_transient() => Outcome::Failed(format!("gave up after {} attempts: {e}", row.attempts)),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// The forge calls of one row; `Ok` carries what to remember for the key's next row.
    async fn send(&self, client: &F, row: &OutboxRow, out: &Outbound) -> Result<Option<Value>, ForgeError> {
        let previous = row.previous.as_ref();
        match out {
            Outbound::Comment(p) => {
                let known = previous.and_then(|prev| {
                    let same = serde_json::from_value::<CommentPayload>(prev.clone())
                        .is_ok_and(|prev| prev.forge == p.forge && prev.repo == p.repo && prev.number == p.number);
                    prev.get("comment_id").and_then(Value::as_u64).filter(|_| same)
                });
                if let Some(id) = known {
                    match client.edit_comment(&p.repo, p.number, id, &p.body).await {
                        Err(e) if e.is_not_found() => {
                            tracing::info!(
                                outbox = row.outbox_id,
                                comment = id,
                                "remembered comment is gone; looking for the marker"
                            );
                        }
                        other => return other.map(|c| Some(json!({ "comment_id": c.id }))),
                    }
                }
                let c = client.upsert_sticky_comment(&p.repo, p.number, &p.marker, &p.body).await?;
                Ok(Some(json!({ "comment_id": c.id })))
            }
            Outbound::Check(p) => {
                let prev = previous.and_then(|prev| serde_json::from_value::<CheckPayload>(prev.clone()).ok());
                let prev_id = previous.and_then(|prev| prev.get("check_id")).and_then(Value::as_u64);
                let unfinished = |s: CheckState| matches!(s, CheckState::Queued | CheckState::InProgress);
                let mut known = None;
                match prev {
                    // A completed check run is final on GitHub: the next state of the same commit (a
                    // re-run) goes on a new one, or a failure would stay red whatever followed.
                    Some(old) if old.check.sha == p.check.sha && unfinished(old.check.state) => known = prev_id,
                    Some(old) if old.check.sha == p.check.sha => {}
                    // An older commit's check left running would spin forever on that commit.
                    Some(mut old) if unfinished(old.check.state) && old.repo == p.repo => {
                        old.check.state = CheckState::Cancelled;
                        old.check.title = format!("Superseded by {}", short(&p.check.sha));
                        client.report_check(&old.repo, &old.check, prev_id).await?;
                    }
                    _ => {}
                }
                let id = client.report_check(&p.repo, &p.check, known).await?;
                Ok(Some(json!({ "check_id": id.or(known) })))
            }
            Outbound::Environment(p) => {
                let known: Option<EnvironmentRef> =
                    previous.and_then(|prev| prev.get("receipt")).and_then(|r| serde_json::from_value(r.clone()).ok());
                let made = client.report_environment(&p.repo, &p.env, known.as_ref()).await?;
                Ok(made.map(|r| json!({ "receipt": r })))
            }
            Outbound::Label(p) => client.set_label(&p.repo, p.number, &p.label, p.present).await.map(|()| None),
            Outbound::Reply { reply, .. } => {
                let c = client.post_comment(&reply.repo, reply.number, &reply.body).await?;
                Ok(Some(json!({ "comment_id": c.id })))
            }
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

fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

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
