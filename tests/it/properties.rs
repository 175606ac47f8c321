//! Properties across modules that the unit proptests do not cover: names for any project (not only
//! `shop`) and any branch, Helm release names and database names derived from them, image tags for
//! any commit id, and normalisation of arbitrary payloads. The fuzz targets (fuzz/) check the same
//! invariants for much longer; these keep them in `cargo test`.

use draftd::config::{Config, Project, Projects};
use draftd::forge::{Event, command, github, gitlab};
use draftd::helm::{RELEASE_NAME_MAX, release_name};
use draftd::pipeline::plan::image_tag;
use draftd::stand::{BranchName, CommitSha, Namespace, ProjectName, is_dns_label, slug};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

/// DESIGN.md: `-` and six hex characters of a hash of (project, branch), computed here independently.
fn expected_hash(project: &str, branch: &str) -> String {
    let mut h = Sha256::new();
    h.update(project.as_bytes());
    h.update([0]);
    h.update(branch.as_bytes());
    hex::encode(&h.finalize()[..3])
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn is_oci_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn project_name() -> impl Strategy<Value = ProjectName> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?".prop_map(|s| ProjectName::new(&s).unwrap())
}

fn branch() -> impl Strategy<Value = BranchName> {
    prop_oneof![
        "\\PC{1,200}",
        "(feature|bugfix)/[a-zA-Z0-9/_.-]{0,100}",
        "[a-z0-9-]{50,80}",
        "[^a-zA-Z0-9]{1,10}|[/_.-]{1,10}",
    ]
    .prop_filter_map("storable", |s| BranchName::new(&s).ok())
}

fn sha() -> impl Strategy<Value = String> {
    "[0-9a-fA-F]{40}|[0-9a-fA-F]{64}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn every_name_of_a_stand_is_valid(p in project_name(), b in branch(), s in sha(), strip in any::<bool>()) {
        let plain = Namespace::for_branch(&p, &b, strip);
        let hashed = Namespace::hashed(&p, &b, strip);
        for ns in [&plain, &hashed] {
            prop_assert!(is_dns_label(ns.as_str()) && ns.as_str().starts_with("draft-"), "{}", ns);
            let release = release_name(ns.as_str());
            prop_assert!(is_dns_label(&release) && release.len() <= RELEASE_NAME_MAX, "{}", release);
            let database = ns.as_str().replace('-', "_");
            prop_assert!(database.len() <= 63);
        }
        let tag = image_tag(b.as_str(), &s);
        prop_assert!(is_oci_tag(&tag), "{}", tag);
        prop_assert!(tag.starts_with("draft-"));
        let sha = CommitSha::new(&s).unwrap();
        prop_assert!(tag.ends_with(&format!("-{}", &sha.as_str()[..7])), "{}", tag);
    }

    #[test]
    fn readable_name_is_the_whole_slug_or_the_hashed_name(p in project_name(), b in branch(), strip in any::<bool>()) {
        let base = if strip {
            ["feature/", "bugfix/"].iter().find_map(|x| b.as_str().strip_prefix(x)).unwrap_or(b.as_str())
        } else {
            b.as_str()
        };
        let s = slug(base);
        let plain = Namespace::for_branch(&p, &b, strip);
        if !s.is_empty() && s.len() + "draft-".len() <= 63 {
            prop_assert_eq!(plain.as_str(), format!("draft-{s}"));
        } else {
            prop_assert_eq!(plain, Namespace::hashed(&p, &b, strip));
        }
    }

    /// The hashed name ends in the hash of exactly this (project, branch): two stands share it only
    /// when their cut slugs are equal *and* their 24-bit hashes collide, never by a naming rule.
    #[test]
    fn hashed_names_are_unique_per_project_and_branch(
        p1 in project_name(), p2 in project_name(), b1 in branch(), b2 in branch(), strip in any::<bool>()
    ) {
        let n1 = Namespace::hashed(&p1, &b1, strip);
        let h1 = expected_hash(p1.as_str(), b1.as_str());
        let h2 = expected_hash(p2.as_str(), b2.as_str());
        prop_assert!(n1.as_str().ends_with(&format!("-{h1}")), "{} lacks {}", n1, h1);
        prop_assert_eq!(n1.clone(), Namespace::hashed(&p1, &b1, strip));
        if (p1.as_str(), b1.as_str()) != (p2.as_str(), b2.as_str()) {
            let n2 = Namespace::hashed(&p2, &b2, strip);
            prop_assert!(n1 != n2 || h1 == h2, "{} shared by ({}, {:?}) and ({}, {:?})", n1, p1, b1, p2, b2);
        }
    }

    #[test]
    fn image_tags_are_valid_for_any_sha_text(b in "\\PC{0,300}", s in "\\PC{0,80}") {
        let tag = image_tag(&b, &s);
        prop_assert!(is_oci_tag(&tag), "{}", tag);
        prop_assert_eq!(tag, image_tag(&b, &s));
    }

    #[test]
    fn command_parsing_never_panics_on_any_text(body in any::<String>()) {
        let parsed = command::parse(&body);
        let first = body.lines().map(str::trim).find(|l| !l.is_empty());
        let addressed = first
            .and_then(|l| l.strip_prefix("/draft"))
            .is_some_and(|r| r.is_empty() || r.starts_with(char::is_whitespace));
        prop_assert_eq!(parsed.is_some(), addressed);
        if let Some(Err(e)) = parsed {
            let _ = e.to_string();
        }
    }
}

fn projects(forge: &str) -> Vec<Project> {
    let text = format!(
        "[[projects]]\nname = \"strict\"\nforge = \"{forge}\"\nrepo = \"acme/strict\"\nwebhook_secret_env = \"S\"\n\
         [[projects]]\nname = \"open\"\nforge = \"{forge}\"\nrepo = \"acme/open\"\nwebhook_secret_env = \"S\"\n\
         branches = [\"**\"]\nforks = \"allow\"\nskip_draft = false\nstrip_branch_prefix = true\n"
    );
    let config = Config::from_toml(&text).unwrap();
    Projects::resolve_with(&config, |_| Some("s".into())).unwrap().projects
}

/// A PR payload with the fields normalisation reads, each drawn from a few interesting values.
fn github_pr() -> impl Strategy<Value = serde_json::Value> {
    (
        prop_oneof![
            Just("opened".to_string()),
            Just("synchronize".to_string()),
            Just("closed".to_string()),
            Just("labeled".to_string()),
            "\\PC{0,12}",
        ],
        any::<u64>(),
        prop_oneof![Just("open"), Just("closed")],
        any::<bool>(),
        "\\PC{0,40}|feature/[a-z]{1,10}",
        prop_oneof![sha(), "[0-9a-g]{0,70}"],
        prop_oneof![Just("2019-05-15T15:20:33Z".to_string()), "\\PC{0,30}"],
        prop_oneof![Just("draft:skip"), Just("bug")],
    )
        .prop_map(|(action, number, state, draft, branch, sha, updated, label)| {
            serde_json::json!({
                "action": action,
                "label": {"name": label},
                "pull_request": {
                    "number": number, "state": state, "draft": draft, "updated_at": updated,
                    "labels": [{"name": label}],
                    "head": {"ref": branch, "sha": sha, "repo": {"full_name": "acme/open"}},
                    "base": {"ref": "main", "sha": sha, "repo": {"full_name": "acme/open"}},
                },
            })
        })
}

/// Any event from a normalise keeps what later stages rely on.
fn check(event: &Event, project: &Project) -> Result<(), TestCaseError> {
    if let Event::Deploy { pr, .. } | Event::Teardown { pr, .. } = event {
        prop_assert!(project.branches.is_match(pr.branch.as_str()));
        prop_assert!(pr.sha.as_str().len() == 40 || pr.sha.as_str().len() == 64);
        prop_assert!(pr.sha.as_str().bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        let ns = Namespace::for_branch(&project.name, &pr.branch, project.settings.strip_branch_prefix);
        prop_assert!(is_dns_label(ns.as_str()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn github_normalise_never_panics_and_keeps_invariants(
        pr in github_pr(),
        raw in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        for project in projects("github") {
            let body = serde_json::to_vec(&pr).unwrap();
            if let Ok(event) = github::normalise("pull_request", &body, &project) {
                check(&event, &project)?;
            }
            for event in ["pull_request", "issue_comment", "check_run", "ping"] {
                let _ = github::normalise(event, &raw, &project);
            }
        }
    }

    #[test]
    fn gitlab_normalise_never_panics(
        raw in proptest::collection::vec(any::<u8>(), 0..200),
        action in "\\PC{0,10}",
        branch in "\\PC{0,40}",
    ) {
        for project in projects("gitlab") {
            let body = serde_json::to_vec(&serde_json::json!({
                "object_attributes": {
                    "iid": 1, "action": action, "source_branch": branch, "source_project_id": 1,
                    "target_project_id": 1, "last_commit": {"id": "a".repeat(40)},
                    "updated_at": "2021-09-27 05:01:21 UTC", "oldrev": "b".repeat(40),
                },
            })).unwrap();
            if let Ok(event) = gitlab::normalise("Merge Request Hook", &body, &project) {
                check(&event, &project)?;
            }
            for event in ["Merge Request Hook", "Note Hook", "Push Hook"] {
                let _ = gitlab::normalise(event, &raw, &project);
            }
        }
    }
}

/// Found by the `github_webhook` fuzz target: `forge::parse` retried a failed parse through
/// serde_path_to_error for its message, and that path never called `Deserializer::end`, so a body
/// with anything after its JSON value was accepted.
#[test]
fn bodies_with_data_after_the_json_are_refused() {
    let body = br#"{"repository":{"full_name":"acme/shop"}} ,"more":1}"#;
    assert!(draftd::forge::parse::<github::RepositoryOnly>(body).is_err(), "trailing data accepted");
    let pr = br#"{"action":"closed","pull_request":{"number":1,"state":"closed","updated_at":"2019-05-15T15:20:33Z",
        "head":{"ref":"feature/a","sha":"ec26c3e57ca3a959ca5aad62de7213c562f8c821","repo":null},
        "base":{"ref":"main","sha":"ec26c3e57ca3a959ca5aad62de7213c562f8c821","repo":null}}}garbage"#;
    assert!(github::normalise("pull_request", pr, &projects("github")[1]).is_err(), "trailing data accepted");
}
