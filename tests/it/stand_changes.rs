//! The life of a stand as the store makes it: every change from every state lands where
//! `StandChange`'s table says, and a change the table does not allow leaves the stand as it was.

use draftd::stand::{StandChange, StandId, StandState};
use draftd::store::{sleep, stands};
use sqlx::PgPool;

async fn stand_in(pool: &PgPool, state: StandState, epoch: i32) -> StandId {
    sqlx::query_scalar(
        "insert into stands (project, branch, namespace, state, epoch)
         values ('shop', 'feature/' || $1, 'draft-feature-' || $1, $1, $2) returning stand_id",
    )
    .bind(state.as_str())
    .bind(epoch)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn state_of(pool: &PgPool, stand: StandId) -> (StandState, i32) {
    sqlx::query_as("select state, epoch from stands where stand_id = $1").bind(stand).fetch_one(pool).await.unwrap()
}

async fn apply(pool: &PgPool, change: StandChange, stand: StandId) -> bool {
    match change {
        StandChange::Close => stands::close(pool, stand, "closed").await.unwrap(),
        StandChange::Revive => stands::revive(pool, stand, 1).await.unwrap(),
        StandChange::Tombstone => stands::tombstone(pool, stand, 0).await.unwrap(),
        StandChange::Sleep => sleep::asleep(pool, stand).await.unwrap(),
        StandChange::Wake => sleep::awake(pool, stand).await.unwrap(),
        StandChange::Wait => stands::wait(&mut pool.acquire().await.unwrap(), stand, "full").await.unwrap(),
        StandChange::Place => stands::place(&mut pool.acquire().await.unwrap(), stand).await.unwrap(),
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn every_change_from_every_state_follows_the_table(pool: PgPool) {
    for change in StandChange::ALL {
        for state in StandState::ALL {
            sqlx::query("delete from stands").execute(&pool).await.unwrap();
            let stand = stand_in(&pool, state, 0).await;
            let changed = apply(&pool, change, stand).await;
            let (now, _) = state_of(&pool, stand).await;
            match state.after(change) {
                Some(to) => assert!(changed && now == to, "{change:?} from {state}: now {now}, changed {changed}"),
                None => assert!(!changed && now == state, "{change:?} from {state} is not allowed, yet now {now}"),
            }
        }
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_tombstone_from_an_older_life_leaves_a_revived_stand_alone(pool: PgPool) {
    let stand = stand_in(&pool, StandState::Closing, 0).await;
    assert!(stands::revive(&pool, stand, 1).await.unwrap());
    assert!(!stands::tombstone(&pool, stand, 0).await.unwrap(), "the teardown of epoch 0 ended after a revive");
    assert_eq!(state_of(&pool, stand).await, (StandState::Active, 1));
}

/// Whatever a stand's state, once it is closed or removed it holds no place under `max_active`, and
/// one put to sleep gives its place back.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn closing_removing_and_sleeping_give_the_place_back(pool: PgPool) {
    for (change, from) in [
        (StandChange::Close, StandState::Active),
        (StandChange::Tombstone, StandState::Active),
        (StandChange::Sleep, StandState::Active),
    ] {
        sqlx::query("delete from stands").execute(&pool).await.unwrap();
        let stand = stand_in(&pool, from, 0).await;
        sqlx::query("update stands set placed_at = now() where stand_id = $1")
            .bind(stand)
            .execute(&pool)
            .await
            .unwrap();
        assert!(apply(&pool, change, stand).await, "{change:?}");
        let placed: bool = sqlx::query_scalar("select placed_at is not null from stands where stand_id = $1")
            .bind(stand)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(!placed, "{change:?} from {from} left the stand its place");
    }
}
