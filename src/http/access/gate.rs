//! The check itself: which stand a host is, and whether a request's cookie or token lets it in.
//! Everything it reads is in memory; the stands' hosts are refreshed from the database in the
//! background every few seconds, and at once (at most once a second) when a host or a token is
//! newer than what is known.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::RwLock;

use crate::config::{AccessConfig, AccessMode, AccessSecrets, Config, ForgeKind, ForkPolicy};
use crate::credentials::access::{AccessKey, Grants};
use crate::forge::signin::SignIn;
use crate::stand::{RunId, StandId, stand_host};
use crate::store::StoreError;
use crate::store::access::{self, AccessEvent};

/// How stale the hosts may get: a new stand's URL, or a new run's token, is known within this.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// A host or token newer than the index refreshes it at once, but never more often than this, so a
/// stream of requests for unknown hosts cannot turn into a stream of queries.
const REFRESH_AT_MOST: Duration = Duration::from_secs(1);
/// A token in use is audited once per this per stand and run, not per request.
const AUDIT_EVERY: Duration = Duration::from_secs(600);

/// A stand whose URL the check knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub stand_id: StandId,
    pub project: String,
    pub forge: ForgeKind,
    /// Lowercased.
    pub repo: String,
    pub mode: AccessMode,
    pub token_run: Option<RunId>,
}

/// What the check decided, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// In: a public stand, a person the forge let in (their login), or a program with the token.
    Allowed { login: Option<String> },
    /// No valid cookie: send the person to sign in.
    SignIn,
    /// Not for this request: an old or foreign token, or a host that is no stand.
    Refused(&'static str),
}

struct Projects {
    /// name → (forge, lowercased repo, host pattern, mode)
    by_name: HashMap<String, (ForgeKind, String, Option<String>, AccessMode)>,
    /// Projects with `forks = "approve"`: their fork stands are private whatever their `access`.
    approving: std::collections::HashSet<String>,
}

pub struct Gate {
    pub key: AccessKey,
    pub config: AccessConfig,
    pub signin: SignIn,
    pool: PgPool,
    projects: Projects,
    hosts: RwLock<Index>,
    refreshing: AtomicBool,
    audited: std::sync::Mutex<HashMap<(StandId, RunId, bool), Instant>>,
}

#[derive(Default)]
struct Index {
    by_host: HashMap<String, Entry>,
    by_stand: HashMap<StandId, String>,
    at: Option<Instant>,
}

impl Gate {
    /// The gate of `[access]`, with its secrets; `None` without `[access]`.
    pub fn from_config(config: &Config, secrets: AccessSecrets, pool: PgPool) -> Option<Arc<Gate>> {
        let key = AccessKey::new(&secrets.key).expect("the key's length is checked when it is read");
        let apps = [(ForgeKind::Github, secrets.github), (ForgeKind::Gitlab, secrets.gitlab)]
            .into_iter()
            .filter_map(|(forge, secret)| Some((config.oauth_endpoints(forge)?, secret?)))
            .collect();
        Self::new(config, key, SignIn::new(apps), pool)
    }

    pub fn new(config: &Config, key: AccessKey, signin: SignIn, pool: PgPool) -> Option<Arc<Gate>> {
        let access = config.access.clone()?;
        let by_name = config
            .projects
            .iter()
            .map(|p| (p.name.clone(), (p.forge, p.repo.to_lowercase(), p.host.clone(), config.access_mode(p))))
            .collect();
        let approving =
            config.projects.iter().filter(|p| p.forks == ForkPolicy::Approve).map(|p| p.name.clone()).collect();
        Some(Arc::new(Gate {
            key,
            config: access,
            signin,
            pool,
            projects: Projects { by_name, approving },
            hosts: RwLock::new(Index::default()),
            refreshing: AtomicBool::new(false),
            audited: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// Reads every stand's host afresh.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let rows = access::reachable(&self.pool).await?;
        let mut index = Index { at: Some(Instant::now()), ..Index::default() };
        for row in rows {
            let Some((forge, repo, Some(pattern), mode)) = self.projects.by_name.get(&row.project) else { continue };
            // A removed project's stands, and stands without a host, have no URL to guard.
            let host = stand_host(pattern, &row.namespace).to_ascii_lowercase();
            index.by_stand.insert(row.stand_id, host.clone());
            let private_fork = row.fork && self.projects.approving.contains(&row.project);
            index.by_host.insert(
                host,
                Entry {
                    stand_id: row.stand_id,
                    project: row.project,
                    forge: *forge,
                    repo: repo.clone(),
                    mode: if private_fork { AccessMode::Forge } else { *mode },
                    token_run: row.access_run_id,
                },
            );
        }
        *self.hosts.write().await = index;
        Ok(())
    }

    /// Refreshes in the background when the index is older than [`REFRESH_EVERY`]; once at a time.
    fn refresh_when_stale(self: &Arc<Self>, at: Option<Instant>) {
        if at.is_some_and(|t| t.elapsed() < REFRESH_EVERY) || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let gate = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = gate.refresh().await {
                tracing::warn!(error = %e, "could not refresh the stands' hosts for the access check");
            }
            gate.refreshing.store(false, Ordering::Release);
        });
    }

    /// Refreshes now, unless that happened within [`REFRESH_AT_MOST`].
    async fn refresh_now(&self) {
        let recent = self.hosts.read().await.at.is_some_and(|t| t.elapsed() < REFRESH_AT_MOST);
        if !recent && let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "could not refresh the stands' hosts for the access check");
        }
    }

    /// The stand served at `host`.
    pub async fn entry(self: &Arc<Self>, host: &str) -> Option<Entry> {
        let host = host.to_ascii_lowercase();
        let host = host.split(':').next().unwrap_or_default();
        {
            let index = self.hosts.read().await;
            self.refresh_when_stale(index.at);
            if let Some(e) = index.by_host.get(host) {
                return Some(e.clone());
            }
        }
        self.refresh_now().await;
        self.hosts.read().await.by_host.get(host).cloned()
    }

    /// The host of a stand, as the check knows it.
    pub async fn host_of(self: &Arc<Self>, stand: StandId) -> Option<String> {
        if let Some(h) = self.hosts.read().await.by_stand.get(&stand) {
            return Some(h.clone());
        }
        self.refresh_now().await;
        self.hosts.read().await.by_stand.get(&stand).cloned()
    }

    /// The check: the request's token, else its cookie, against the stand's repository.
    pub async fn decide(
        self: &Arc<Self>,
        entry: &Entry,
        cookie: Option<&str>,
        token: Option<&str>,
        now: i64,
    ) -> Verdict {
        if entry.mode == AccessMode::Public {
            return Verdict::Allowed { login: None };
        }
        if let Some(token) = token {
            return self.decide_token(entry, token).await;
        }
        let Some(value) = cookie else { return Verdict::SignIn };
        match self.key.open(value) {
            Ok(grants) => match grants.admits(entry.forge, &entry.repo, now) {
                Some(g) => Verdict::Allowed { login: Some(g.login.clone()) },
                None => Verdict::SignIn,
            },
            Err(e) => {
                tracing::debug!(reason = %e, stand = entry.stand_id.get(), "access cookie not taken");
                Verdict::SignIn
            }
        }
    }

    async fn decide_token(self: &Arc<Self>, entry: &Entry, token: &str) -> Verdict {
        let (stand, run) = match self.key.verify_token(token) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::info!(reason = %e, stand = entry.stand_id.get(), "access token refused");
                return Verdict::Refused("the access token is not one draftd made");
            }
        };
        if stand != entry.stand_id {
            self.audit_token(entry.stand_id, run, false, "another stand's token");
            return Verdict::Refused("the access token is another stand's");
        }
        let mut current = entry.token_run;
        if current.is_none_or(|c| run > c) {
            // A run newer than the index knows: its Secret was just written, perhaps by another
            // replica. Only draftd can make a token that passed the MAC, so this look-up (by primary
            // key) happens once per new run, whatever clients send.
            current = self.refresh_token_run(stand).await;
        }
        if current == Some(run) {
            self.audit_token(stand, run, true, "current run");
            Verdict::Allowed { login: None }
        } else {
            self.audit_token(stand, run, false, "an earlier run's token");
            Verdict::Refused("the access token is an earlier run's; each run makes a new one")
        }
    }

    /// Reads the stand's current token run into the index.
    async fn refresh_token_run(&self, stand: StandId) -> Option<RunId> {
        let run = match access::token_run(&self.pool, stand).await {
            Ok(run) => run,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the stand's access token run");
                return None;
            }
        };
        let mut index = self.hosts.write().await;
        if let Some(host) = index.by_stand.get(&stand).cloned()
            && let Some(entry) = index.by_host.get_mut(&host)
        {
            entry.token_run = run;
        }
        run
    }

    /// An audit row for a token's use or refusal, at most once per [`AUDIT_EVERY`] per stand, run and
    /// outcome, written after the answer so the check never waits for it.
    fn audit_token(&self, stand: StandId, run: RunId, used: bool, why: &'static str) {
        {
            let mut audited = self.audited.lock().expect("not poisoned");
            if audited.get(&(stand, run, used)).is_some_and(|t| t.elapsed() < AUDIT_EVERY) {
                return;
            }
            audited.retain(|_, t| t.elapsed() < AUDIT_EVERY);
            audited.insert((stand, run, used), Instant::now());
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let event = if used { AccessEvent::TokenUsed } else { AccessEvent::TokenRefused };
            let detail = serde_json::json!({ "token_run": run, "why": why });
            if let Err(e) = access::record(&pool, event, "token", stand, Some(run), &detail).await {
                tracing::warn!(error = %e, "could not record the access token's use");
            }
        });
    }

    /// What the API shows of a stand's access: its mode and, when private, its current token.
    pub async fn shown(
        &self,
        stand: StandId,
        project: &str,
    ) -> Result<Option<crate::http::schema::StandAccess>, StoreError> {
        let Some((_, _, _, mode)) = self.projects.by_name.get(project) else { return Ok(None) };
        let (token, token_run) = match mode {
            AccessMode::Public => (None, None),
            AccessMode::Forge => {
                let run = access::token_run(&self.pool, stand).await?;
                (run.map(|r| self.key.token(stand, r).expose().to_owned()), run)
            }
        };
        Ok(Some(crate::http::schema::StandAccess { mode: mode.as_str().to_owned(), token, token_run }))
    }

    /// The cookie's grants, valid or not, to add a new one to.
    pub fn grants_in(&self, cookie: Option<&str>) -> Grants {
        cookie.and_then(|c| self.key.open(c).ok()).unwrap_or_default()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
