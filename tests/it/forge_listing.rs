//! What resync reads from the forges, through the real clients against the local fakes: every open
//! PR/MR across pages (forks, drafts, labels; GitLab's `locked` counted as open), never a partial
//! list when a page fails, times out or is rate limited, and one PR/MR in each state (or missing).

use std::time::Duration;

use draftd::config::ForgeKind;
use draftd::forge::client::{
    AnyForge, ForgeClient, ForgeError, GithubClient, GitlabClient, PullRequestInfo, PullRequestState,
};
use forge_fake::github::FIRST_REPOSITORY_ID;
use forge_fake::*;
use secrecy::SecretString;

use crate::support::forge_fake;
use draftd::stand::Failure;

/// Short enough that a stalled page fails the call quickly.
const TIMEOUT: Duration = Duration::from_millis(1_000);
const KINDS: [ForgeKind; 2] = [ForgeKind::Github, ForgeKind::Gitlab];

async fn forge(kind: ForgeKind) -> (Fake, AnyForge) {
    let fake = Fake::start(kind).await;
    let c = client(kind, &fake.url(), TOKEN);
    (fake, c)
}

/// 150 open PRs/MRs (two pages of 100) with a draft, a fork and a deleted fork among them, and a
/// closed and a merged one that must not be listed.
fn seed(fake: &Fake, repo: &str) {
    fake.seed_open_pulls(repo, 150);
    fake.seed_pull(Pull { draft: true, labels: vec!["draft-tested".into(), "ui".into()], ..Pull::open(repo, 3) });
    fake.seed_pull(Pull { head_repo: Some("mallory/shop".into()), ..Pull::open(repo, 4) });
    fake.seed_pull(Pull { head_repo: None, ..Pull::open(repo, 5) });
    fake.seed_pull(Pull { state: "closed".into(), ..Pull::open(repo, 151) });
    fake.seed_pull(Pull { state: "merged".into(), ..Pull::open(repo, 152) });
}

fn check_listing(prs: &[PullRequestInfo], kind: ForgeKind) {
    let numbers: Vec<u64> = prs.iter().map(|p| p.number).collect();
    assert_eq!(numbers, (1..=150).collect::<Vec<_>>());
    assert!(prs.iter().all(|p| p.state == PullRequestState::Open));
    let pr = |n: usize| &prs[n - 1];
    assert_eq!(
        *pr(1),
        PullRequestInfo {
            number: 1,
            state: PullRequestState::Open,
            branch: "feature/pr-1".into(),
            sha: format!("{:040x}", 1),
            updated_at: Pull::open("x/y", 1).updated_at,
            fork: false,
            draft: false,
            labels: vec![],
        }
    );
    assert!(pr(3).draft);
    assert_eq!(pr(3).labels, ["draft-tested", "ui"]);
    assert!(pr(4).fork, "{kind:?}: a PR from another repository is a fork");
    assert!(pr(5).fork, "{kind:?}: a PR whose fork was deleted is a fork");
    assert_eq!(prs.iter().filter(|p| p.fork).count(), 2);
    assert_eq!(prs.iter().filter(|p| p.draft).count(), 1);
    assert_eq!(pr(150).branch, "feature/pr-150");
}

fn assert_clean(fake: &Fake) {
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
}

/// The listing's error when its second page (of 150 open PRs/MRs) answers `fault`; the client
/// gives up on a call after [`TIMEOUT`].
async fn second_page(kind: ForgeKind, fault: Mode) -> (Fake, AnyForge, ForgeError) {
    let fake = Fake::start(kind).await;
    let token = SecretString::from(TOKEN);
    let c = match kind {
        ForgeKind::Github => AnyForge::Github(GithubClient::new(&fake.url(), &token, TIMEOUT).unwrap()),
        ForgeKind::Gitlab => AnyForge::Gitlab(GitlabClient::new(&fake.url(), &token, TIMEOUT).unwrap()),
    };
    seed(&fake, repo_of(kind));
    // GitLab's client signs in (`GET /user`) before its first call.
    let sign_in: &[Mode] = if kind == ForgeKind::Gitlab { &[Mode::Up] } else { &[] };
    fake.script(&[sign_in, &[Mode::Up, fault]].concat());
    let e = c.open_pull_requests(repo_of(kind)).await.unwrap_err();
    (fake, c, e)
}

// ---------------------------------------------------------------------------------------------
// Never a partial list
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_second_page_failing_fails_the_whole_listing() {
    for kind in KINDS {
        let (fake, c, e) = second_page(kind, Mode::Down(500)).await;
        assert_eq!(e.status(), Some(500), "{kind:?}: {e}");
        assert!(e.is_transient());
        // A 200 that is not JSON (a proxy's sign-in page) is no empty page either.
        fake.script(&[Mode::Up, Mode::Garbled]);
        assert!(c.open_pull_requests(repo_of(kind)).await.is_err(), "{kind:?}");
        if kind == ForgeKind::Gitlab {
            // The second listing, of locked MRs (third request), fails it just the same.
            fake.script(&[Mode::Up, Mode::Up, Mode::Down(503)]);
            assert_eq!(c.open_pull_requests(GITLAB_REPO).await.unwrap_err().status(), Some(503));
        }
        assert_clean(&fake);
    }
}

#[tokio::test]
async fn a_second_page_that_never_comes_fails_the_listing_with_a_timeout() {
    for kind in KINDS {
        let (_fake, _, e) = second_page(kind, Mode::Stall(3 * TIMEOUT.as_millis() as u64)).await;
        assert!(matches!(e, ForgeError::Timeout { after: TIMEOUT, .. }), "{kind:?}: {e:?}");
        assert!(e.is_transient());
    }
}

#[tokio::test]
async fn a_rate_limited_page_is_a_transient_error_with_its_retry_after() {
    for kind in KINDS {
        let (fake, c, e) = second_page(kind, Mode::RateLimited(7)).await;
        assert_eq!((e.status(), e.retry_after()), (Some(429), Some(Duration::from_secs(7))), "{kind:?}: {e}");
        assert!(e.is_transient());
        // The client holds off: the next call is not even sent.
        let sent = fake.seen().len();
        let held = c.pull_request(repo_of(kind), 1).await.unwrap_err();
        assert!(matches!(held, ForgeError::Held { .. }), "{kind:?}: {held:?}");
        assert_eq!(fake.seen().len(), sent);
    }
}

// ---------------------------------------------------------------------------------------------
// GitHub
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn github_lists_every_open_pr_across_pages_following_link() {
    let (fake, c) = forge(ForgeKind::Github).await;
    seed(&fake, REPO);
    let prs = c.open_pull_requests(REPO).await.unwrap();
    check_listing(&prs, ForgeKind::Github);
    let pages: Vec<String> = fake.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        pages,
        [
            "/repos/acme/shop/pulls?state=open&sort=created&direction=asc&per_page=100&page=1".to_owned(),
            // The `Link` header's next page, which names the repository by id as GitHub's do.
            format!(
                "/repositories/{FIRST_REPOSITORY_ID}/pulls?state=open&sort=created&direction=asc&per_page=100&page=2"
            ),
        ]
    );
    assert_clean(&fake);
}

#[tokio::test]
async fn github_one_page_without_link_is_the_whole_list() {
    let (fake, c) = forge(ForgeKind::Github).await;
    fake.seed_open_pulls(REPO, 3);
    fake.seed_open_pulls("acme/other", 2);
    let prs = c.open_pull_requests(REPO).await.unwrap();
    assert_eq!(prs.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(fake.seen().len(), 1);
    assert!(c.open_pull_requests("acme/empty").await.unwrap().is_empty());
    assert_clean(&fake);
}

#[tokio::test]
async fn github_reads_one_pr_open_closed_merged_or_missing() {
    let (fake, c) = forge(ForgeKind::Github).await;
    seed(&fake, REPO);
    let open = c.pull_request(REPO, 3).await.unwrap();
    assert_eq!((open.number, open.state, open.draft, open.fork), (3, PullRequestState::Open, true, false));
    assert_eq!(open.labels, ["draft-tested", "ui"]);
    assert_eq!(c.pull_request(REPO, 151).await.unwrap().state, PullRequestState::Closed);
    let merged = c.pull_request(REPO, 152).await.unwrap();
    assert_eq!((merged.state, merged.branch.as_str()), (PullRequestState::Merged, "feature/pr-152"));
    assert!(c.pull_request(REPO, 5).await.unwrap().fork, "deleted fork");
    let missing = c.pull_request(REPO, 999).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    assert!(!missing.is_transient());
    assert_eq!(fake.count("GET", "/repos/acme/shop/pulls/151"), 1);
    assert_clean(&fake);
}

// ---------------------------------------------------------------------------------------------
// GitLab
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn gitlab_lists_every_open_mr_across_pages_with_locked_ones() {
    let (fake, c) = forge(ForgeKind::Gitlab).await;
    seed(&fake, GITLAB_REPO);
    // Being merged: still open for resync. Listed after the opened ones, by their own query.
    fake.seed_pull(Pull { state: "locked".into(), ..Pull::open(GITLAB_REPO, 149) });
    let prs = c.open_pull_requests(GITLAB_REPO).await.unwrap();
    check_listing(&prs, ForgeKind::Gitlab);
    let lists: Vec<String> =
        fake.seen().into_iter().map(|s| s.path).filter(|p| p.contains("/merge_requests")).collect();
    let list = |state: &str, page: u64| {
        format!(
            "/api/v4/projects/acme%2Fplatform%2Fshop/merge_requests?state={state}&order_by=created_at&sort=asc&per_page=100&page={page}"
        )
    };
    assert_eq!(lists, [list("opened", 1), list("opened", 2), list("locked", 1)]);
    assert_clean(&fake);
}

#[tokio::test]
async fn gitlab_reads_one_mr_open_locked_closed_merged_or_missing() {
    let (fake, c) = forge(ForgeKind::Gitlab).await;
    seed(&fake, GITLAB_REPO);
    fake.seed_pull(Pull { state: "locked".into(), ..Pull::open(GITLAB_REPO, 149) });
    let open = c.pull_request(GITLAB_REPO, 3).await.unwrap();
    assert_eq!((open.number, open.state, open.draft, open.fork), (3, PullRequestState::Open, true, false));
    assert_eq!(open.labels, ["draft-tested", "ui"]);
    assert_eq!(open.updated_at, Pull::open("x/y", 3).updated_at);
    assert_eq!(c.pull_request(GITLAB_REPO, 149).await.unwrap().state, PullRequestState::Open);
    assert_eq!(c.pull_request(GITLAB_REPO, 151).await.unwrap().state, PullRequestState::Closed);
    let merged = c.pull_request(GITLAB_REPO, 152).await.unwrap();
    assert_eq!((merged.state, merged.sha), (PullRequestState::Merged, format!("{:040x}", 152)));
    assert!(c.pull_request(GITLAB_REPO, 4).await.unwrap().fork);
    let missing = c.pull_request(GITLAB_REPO, 999).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    assert!(!missing.is_transient());
    assert_eq!(fake.count("GET", "/merge_requests/152"), 1);
    assert_clean(&fake);
}
