//! Pacing of one GitHub client's requests, as GitHub's "Best practices for using the REST API" ask:
//! the requests of one installation (or token) one after another, never at once; about a second
//! between POST, PATCH, PUT and DELETE requests; and content-creating requests (POST) within the
//! secondary rate limits' budgets, 80 a minute and 500 an hour. Each installation has a lane of its
//! own, so a busy installation never slows the stands of another.
//!
//! A write that would have to wait longer than `max_wait` is not made: it fails at once with
//! [`ForgeError::Held`], naming when its turn is likely to come. The reporter puts the row back in
//! the outbox for that long, where a newer report for the same comment replaces it, and delivers
//! other installations' rows meanwhile. A burst of 200 reports thus costs one write a second and no
//! secondary-limit answers, instead of a minute's hold after each and, GitHub warns, a ban for
//! integrations that keep hitting them.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use secrecy::{ExposeSecret, SecretString};

use super::model::ForgeError;
use crate::config::ForgeKind;

/// How one client paces each installation's requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    /// The least time between two writes (POST, PATCH, PUT, DELETE) of one installation.
    pub write_gap: Duration,
    /// Content-creating requests (POST) of one installation per `minute` and per `hour`.
    pub creates_per_minute: usize,
    pub creates_per_hour: usize,
    /// A write whose turn is further off than this fails as held instead of waiting in the call.
    pub max_wait: Duration,
    /// The windows of the two budgets: a minute and an hour, shorter only in tests.
    pub minute: Duration,
    pub hour: Duration,
}

impl Pacing {
    /// GitHub's guidance: one second between writes, 80 content-creating requests a minute, 500 an hour.
    pub const GITHUB: Pacing = Pacing {
        write_gap: Duration::from_secs(1),
        creates_per_minute: 80,
        creates_per_hour: 500,
        max_wait: Duration::from_secs(2),
        minute: Duration::from_secs(60),
        hour: Duration::from_secs(3600),
    };

    /// No pacing at all: requests go as they come (a forge without secondary limits, or a test
    /// about something else).
    pub const OFF: Pacing = Pacing {
        write_gap: Duration::ZERO,
        creates_per_minute: usize::MAX,
        creates_per_hour: usize::MAX,
        max_wait: Duration::MAX,
        minute: Duration::from_secs(60),
        hour: Duration::from_secs(3600),
    };

    /// Every duration multiplied by `factor`: the same pacing on a faster clock (tests and benches
    /// run GitHub's limits in seconds instead of minutes, against a fake scaled alike).
    pub fn scaled(self, factor: f64) -> Pacing {
        Pacing {
            write_gap: self.write_gap.mul_f64(factor),
            max_wait: if self.max_wait == Duration::MAX { Duration::MAX } else { self.max_wait.mul_f64(factor) },
            minute: self.minute.mul_f64(factor),
            hour: self.hour.mul_f64(factor),
            ..self
        }
    }

    fn is_off(&self) -> bool {
        self.write_gap.is_zero() && self.creates_per_minute == usize::MAX && self.creates_per_hour == usize::MAX
    }
}

/// The lanes of one client, by installation token.
pub(crate) struct Pacer {
    pacing: Pacing,
    /// Lanes are keyed by a keyed hash of the token, so no token is kept here; a renewed token (every
    /// hour) starts a new lane, and lanes unused for two hours are dropped.
    hasher: std::collections::hash_map::RandomState,
    lanes: Mutex<HashMap<u64, Arc<Lane>>>,
}

struct Lane {
    /// Held for the whole of each request: one request of the installation at a time, in turn.
    serial: Arc<tokio::sync::Mutex<Option<Instant>>>,
    plan: Mutex<Plan>,
}

struct Plan {
    /// The earliest slot the next write may take (slots already promised are before it).
    next_write: Instant,
    /// Where the last write that was turned away was told to come back, so a burst's held writes
    /// come back one gap apart instead of all at once.
    next_held: Instant,
    /// The slots of content-creating requests within the last hour (and those promised).
    creates: VecDeque<Instant>,
    used: Instant,
}

/// A request's turn: the lane is its own until this is dropped.
pub(crate) struct Turn {
    _serial: Option<tokio::sync::OwnedMutexGuard<Option<Instant>>>,
}

fn writes(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PATCH | Method::PUT | Method::DELETE)
}

impl Pacer {
    pub(crate) fn new(pacing: Pacing) -> Self {
        Self { pacing, hasher: Default::default(), lanes: Mutex::new(HashMap::new()) }
    }

    fn lane(&self, token: &SecretString) -> Arc<Lane> {
        let key = self.hasher.hash_one(token.expose_secret());
        let now = Instant::now();
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if !lanes.contains_key(&key) {
            let stale = |lane: &Arc<Lane>| {
                let plan = lane.plan.lock().unwrap_or_else(|e| e.into_inner());
                now.saturating_duration_since(plan.used) > 2 * self.pacing.hour && Arc::strong_count(lane) == 1
            };
            lanes.retain(|_, lane| !stale(lane));
        }
        let lane = lanes.entry(key).or_insert_with(|| {
            Arc::new(Lane {
                serial: Arc::new(tokio::sync::Mutex::new(None)),
                plan: Mutex::new(Plan { next_write: now, next_held: now, creates: VecDeque::new(), used: now }),
            })
        });
        lane.plan.lock().unwrap_or_else(|e| e.into_inner()).used = now;
        lane.clone()
    }

    /// Waits for the turn of a `method` request made with `token`, or fails as held when a write's
    /// turn is more than `max_wait` off.
    pub(crate) async fn turn(
        &self,
        forge: ForgeKind,
        operation: &'static str,
        method: &Method,
        token: &SecretString,
    ) -> Result<Turn, ForgeError> {
        if self.pacing.is_off() {
            return Ok(Turn { _serial: None });
        }
        let lane = self.lane(token);
        let slot = if writes(method) {
            let mut plan = lane.plan.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let mut slot = plan.next_write.max(now);
            let creates = *method == Method::POST;
            if creates {
                while plan.creates.front().is_some_and(|t| now.saturating_duration_since(*t) >= self.pacing.hour) {
                    plan.creates.pop_front();
                }
                for (budget, window) in [
                    (self.pacing.creates_per_minute, self.pacing.minute),
                    (self.pacing.creates_per_hour, self.pacing.hour),
                ] {
                    // With `budget` creates already in the window ending at `slot`, the slot moves to
                    // just after the oldest of the last `budget` leaves it.
                    if budget > 0 && plan.creates.len() >= budget {
                        let oldest = plan.creates[plan.creates.len() - budget];
                        slot = slot.max(oldest + window);
                    }
                }
            }
            let wait = slot - now;
            if wait > self.pacing.max_wait {
                plan.next_held = plan.next_held.max(slot) + self.pacing.write_gap;
                let wait = plan.next_held - now;
                tracing::debug!(operation, ?wait, "GitHub write paced: held for later");
                return Err(ForgeError::Held { forge, operation, wait });
            }
            plan.next_write = slot + self.pacing.write_gap;
            if creates {
                plan.creates.push_back(slot);
            }
            Some(slot)
        } else {
            None
        };
        // In turn (tokio's mutex is fair), then no sooner than the slot and a gap after the lane's
        // last write actually began, whatever slowed the requests before it.
        let mut serial = lane.serial.clone().lock_owned().await;
        if let Some(slot) = slot {
            let start = serial.map_or(slot, |last| slot.max(last + self.pacing.write_gap));
            tokio::time::sleep_until(start.into()).await;
            *serial = Some(Instant::now());
        }
        Ok(Turn { _serial: Some(serial) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[tokio::test]
    async fn writes_of_one_installation_go_a_gap_apart_and_reads_are_not_spaced() {
        let pacing = Pacing { write_gap: Duration::from_millis(40), ..Pacing::GITHUB };
        let pacer = Pacer::new(pacing);
        let t = token("a");
        let start = Instant::now();
        for _ in 0..3 {
            drop(pacer.turn(ForgeKind::Github, "w", &Method::PATCH, &t).await.unwrap());
        }
        assert!(start.elapsed() >= Duration::from_millis(80), "{:?}", start.elapsed());
        let reads = Instant::now();
        for _ in 0..5 {
            drop(pacer.turn(ForgeKind::Github, "r", &Method::GET, &t).await.unwrap());
        }
        assert!(reads.elapsed() < Duration::from_millis(40), "{:?}", reads.elapsed());
    }

    #[tokio::test]
    async fn another_installation_is_not_slowed() {
        let pacing = Pacing { write_gap: Duration::from_millis(500), ..Pacing::GITHUB };
        let pacer = Pacer::new(pacing);
        drop(pacer.turn(ForgeKind::Github, "w", &Method::POST, &token("a")).await.unwrap());
        let start = Instant::now();
        drop(pacer.turn(ForgeKind::Github, "w", &Method::POST, &token("b")).await.unwrap());
        assert!(start.elapsed() < Duration::from_millis(100), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn a_write_far_off_is_held_and_held_writes_are_spread_out() {
        let pacing =
            Pacing { write_gap: Duration::from_millis(100), max_wait: Duration::from_millis(150), ..Pacing::GITHUB };
        let pacer = Pacer::new(pacing);
        let t = token("a");
        // All at once, as a reporter pass sends them: the first two fit within `max_wait`.
        let answers = futures_util::future::join_all(
            (0..6).map(|_| async { pacer.turn(ForgeKind::Github, "w", &Method::POST, &t).await.map(drop) }),
        )
        .await;
        let waits: Vec<Duration> = answers
            .into_iter()
            .filter_map(|a| match a {
                Ok(()) => None,
                Err(ForgeError::Held { wait, .. }) => Some(wait),
                Err(e) => panic!("{e}"),
            })
            .collect();
        assert_eq!(waits.len(), 4, "{waits:?}");
        assert!(!waits.is_empty());
        assert!(waits.windows(2).all(|w| w[1] > w[0]), "held writes come back one after another: {waits:?}");
    }

    #[tokio::test]
    async fn content_creation_keeps_within_the_minute_budget() {
        let pacing = Pacing {
            write_gap: Duration::ZERO,
            creates_per_minute: 3,
            minute: Duration::from_millis(300),
            max_wait: Duration::from_secs(5),
            ..Pacing::GITHUB
        };
        let pacer = Pacer::new(pacing);
        let t = token("a");
        let start = Instant::now();
        for _ in 0..4 {
            drop(pacer.turn(ForgeKind::Github, "create", &Method::POST, &t).await.unwrap());
        }
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "the fourth waits for the window: {:?}",
            start.elapsed()
        );
        // Edits are writes but not creations: no budget.
        let edits = Instant::now();
        for _ in 0..4 {
            drop(pacer.turn(ForgeKind::Github, "edit", &Method::PATCH, &t).await.unwrap());
        }
        assert!(edits.elapsed() < Duration::from_millis(100), "{:?}", edits.elapsed());
    }

    #[test]
    fn scaling_keeps_the_budgets() {
        let fast = Pacing::GITHUB.scaled(0.01);
        assert_eq!(fast.write_gap, Duration::from_millis(10));
        assert_eq!(fast.minute, Duration::from_millis(600));
        assert_eq!(fast.creates_per_minute, 80);
        assert_eq!(Pacing::OFF.scaled(0.5).max_wait, Duration::MAX);
    }
}
