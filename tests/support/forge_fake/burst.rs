//! Many stands reporting at once to the fake GitHub (tests/it/forge_pacing.rs, benches/forge_pacing.rs):
//! every stand's sticky comment is written `versions` times in a row, and the run ends when every
//! PR's comment shows the last version.

use std::time::{Duration, Instant};

use draftd::config::ForgeKind;
use draftd::forge::client::{AnyForge, marker};
use draftd::reporter::{CommentPayload, Reporter, ReporterSettings, enqueue_comment};
use sqlx::PgPool;

use super::{Fake, REPO};
use draftd::stand::StandId;

#[derive(Debug, Clone, Copy)]
pub struct Burst {
    pub stands: usize,
    /// Reports per stand, each enqueued for every stand at once, `between` apart.
    pub versions: usize,
    pub between: Duration,
    /// Given up (and reported as not current) after this.
    pub deadline: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// From the first report until every comment showed its stand's last one (or the deadline).
    pub current_after: Duration,
    pub all_current: bool,
    /// Comments showing the last version, and PRs with more than one sticky comment.
    #[allow(dead_code)] // in benches/forge_pacing.rs's table; the test checks all_current
    pub current: usize,
    pub duplicated: usize,
    #[allow(dead_code)] // in benches/forge_pacing.rs's table
    pub requests: usize,
    #[allow(dead_code)] // in benches/forge_pacing.rs's table
    pub writes: usize,
    /// GitHub's secondary-limit answers.
    pub limited: usize,
    /// The most requests the fake was answering at once.
    pub max_concurrent: usize,
}

/// Stands `numbers` of project `shop`, PR `i` for stand `i`; their ids in order.
pub async fn stands(pool: &PgPool, numbers: std::ops::RangeInclusive<usize>) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in numbers {
        let id: i64 = sqlx::query_scalar(
            "insert into stands (project, branch, namespace, pr_number) values ('shop', $1, $2, $3) returning stand_id",
        )
        .bind(format!("feature/burst-{i}"))
        .bind(format!("draft-feature-burst-{i}"))
        .bind(i as i64)
        .fetch_one(pool)
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

fn body(stand: StandId, version: usize) -> String {
    format!("{}\nreport version {version} of stand {stand}", marker(stand))
}

/// Runs the burst with one reporter over `client` (with `settings`) against `fake` (seeded with
/// nothing: each stand's first delivery creates its comment).
pub async fn run(pool: &PgPool, fake: &Fake, client: AnyForge, settings: ReporterSettings, burst: Burst) -> Outcome {
    let ids = stands(pool, 1..=burst.stands).await;
    let reporter = Reporter::new(pool.clone(), settings).with_forge(ForgeKind::Github, client);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(async move { reporter.run(stopped).await });
    let start = Instant::now();
    for version in 1..=burst.versions {
        if version > 1 {
            tokio::time::sleep(burst.between).await;
        }
        for (i, stand) in ids.iter().enumerate() {
            let payload = CommentPayload {
                forge: ForgeKind::Github,
                repo: REPO.into(),
                number: i as u64 + 1,
                marker: marker(StandId::new(*stand)),
                body: body(StandId::new(*stand), version),
            };
            enqueue_comment(pool, StandId::new(*stand), None, &payload).await.unwrap();
        }
    }
    let tally = |fake: &Fake| {
        let (mut current, mut duplicated) = (0, 0);
        for (i, stand) in ids.iter().enumerate() {
            let ours = fake.marked(REPO, i as u64 + 1, &marker(StandId::new(*stand)));
            duplicated += usize::from(ours.len() > 1);
            current += usize::from(ours.len() == 1 && ours[0].body == body(StandId::new(*stand), burst.versions));
        }
        (current, duplicated)
    };
    let (mut current, mut duplicated) = tally(fake);
    while current < ids.len() && start.elapsed() < burst.deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        (current, duplicated) = tally(fake);
    }
    let current_after = start.elapsed();
    stop.send(true).ok();
    worker.await.ok();
    let seen = fake.seen();
    let writes = seen.iter().filter(|s| s.method != "GET").count();
    Outcome {
        current_after,
        all_current: current == ids.len(),
        current,
        duplicated,
        requests: seen.len(),
        writes,
        limited: fake.gh_limited(),
        max_concurrent: fake.gh_max_concurrent(),
    }
}
