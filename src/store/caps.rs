//! `max_active`: the places awake stands hold. A deploy or a wake takes one before its first step;
//! past the cap it waits, or the idlest stand is put to sleep to make room. Places are counted and
//! taken under one advisory lock, so every replica on the database sees the same count.

use sqlx::PgPool;

use super::StoreError;
use super::runs::queue_for_chosen;
use crate::stand::{RunKind, StandId, Trigger};

/// The caps that apply to one stand's project.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Places across every project (`[stands] max_active`).
    pub all: Option<u32>,
    /// Places of the stand's project (the project's `max_active`).
    pub project: Option<u32>,
    /// Past a cap, queue a sleep of the least recently active stand that holds a place.
    pub sleep_idlest: bool,
}

impl Limits {
    /// Some cap applies: without one, nothing can refuse a place.
    pub fn any(&self) -> bool {
        self.all.is_some() || self.project.is_some()
    }
}

/// Whether a stand may come up now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// It holds a place: it did already, or it took a free one.
    Placed,
    /// Past a cap: its run waits, for `reason` (`news`: a reason the stand did not wait for
    /// before, which its comment should say); `made_room` is the stand this call queued to sleep.
    Waiting { reason: String, news: bool, made_room: Option<StandId> },
}

// 'draftd' in ASCII, then 2: the claim function's key ends in 1.
const PLACES_LOCK: i64 = 28273260327363586;

/// Takes a place for `stand_id`, or says why it must wait (marking it waiting, with the reason).
pub async fn admit(pool: &PgPool, stand_id: StandId, limits: Limits) -> Result<Admission, StoreError> {
    if !limits.any() {
        // Nothing can refuse: one statement on every deploy's path, no lock. A stand left waiting
        // by caps since removed from the configuration takes its place too.
        let state: Option<crate::stand::StandState> = sqlx::query_scalar(
            "update stands set placed_at = coalesce(placed_at, now()) where stand_id = $1 returning state",
        )
        .bind(stand_id)
        .fetch_optional(pool)
        .await?;
        if state == Some(crate::stand::StandState::Waiting) {
            super::stands::place(&mut *pool.acquire().await?, stand_id).await?;
        }
        return Ok(Admission::Placed);
    }
    let mut tx = pool.begin().await?;
    // Before the stand's row lock, always in this order: the lock only ever waits on rows.
    sqlx::query("select pg_advisory_xact_lock($1)").bind(PLACES_LOCK).execute(&mut *tx).await?;
    let stand: Option<(String, bool, Option<String>)> = sqlx::query_as(
        "select project, placed_at is not null, waiting_reason from stands where stand_id = $1 for update",
    )
    .bind(stand_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((project, placed, waited_for)) = stand else {
        return Ok(Admission::Placed);
    };
    if placed {
        return Ok(Admission::Placed);
    }
    let (all, in_project): (i64, i64) =
        sqlx::query_as("select count(*), count(*) filter (where project = $1) from stands where placed_at is not null")
            .bind(&project)
            .fetch_one(&mut *tx)
            .await?;
    let full = |count: i64, cap: Option<u32>| cap.is_some_and(|cap| count >= i64::from(cap));
    // The project's own cap first: making room elsewhere would not help it.
    let (scope, reason) = if full(in_project, limits.project) {
        let cap = limits.project.unwrap_or_default();
        (Some(project.as_str()), format!("project {project} has {in_project} of its {cap} stands (max_active) up"))
    } else if full(all, limits.all) {
        let cap = limits.all.unwrap_or_default();
        (None, format!("{all} of {cap} stands ([stands] max_active) are up"))
    } else {
        super::stands::place(&mut tx, stand_id).await?;
        tx.commit().await?;
        return Ok(Admission::Placed);
    };
    let made_room = if limits.sleep_idlest { make_room(&mut tx, stand_id, scope).await? } else { None };
    super::stands::wait(&mut tx, stand_id, &reason).await?;
    tx.commit().await?;
    let news = waited_for.as_deref() != Some(reason.as_str());
    Ok(Admission::Waiting { reason, news, made_room })
}

/// Queues a sleep (trigger `cap`) of the least recently active stand in `scope` (a project, or
/// all) that holds a place and has no run in flight, unless a sleep there is already on its way:
/// the place it frees goes to whichever waiting stand asks next.
async fn make_room(
    tx: &mut sqlx::PgConnection,
    waiting: StandId,
    scope: Option<&str>,
) -> Result<Option<StandId>, StoreError> {
    let on_its_way: bool = sqlx::query_scalar(
        "select exists (select 1 from runs r join stands s on s.stand_id = r.stand_id
                        where r.kind = 'sleep' and r.state in ('queued', 'running') and s.placed_at is not null
                          and ($1::text is null or s.project = $1))",
    )
    .bind(scope)
    .fetch_one(&mut *tx)
    .await?;
    if on_its_way {
        return Ok(None);
    }
    let sql = queue_for_chosen(
        "select s.stand_id from stands s
         where s.placed_at is not null and s.state = 'active' and s.stand_id <> $1
           and ($2::text is null or s.project = $2)
           and not exists (select 1 from runs r where r.stand_id = s.stand_id and r.state in ('queued', 'running'))
         order by s.last_activity_at limit 1
         for update of s skip locked",
        "",
        RunKind::Sleep,
        Trigger::Cap,
    );
    let queued: Option<(StandId, crate::stand::RunId, String)> =
        sqlx::query_as(&sql).bind(waiting).bind(scope).fetch_optional(&mut *tx).await?;
    Ok(queued.map(|(stand, ..)| stand))
}
