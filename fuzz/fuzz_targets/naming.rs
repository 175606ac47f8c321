//! (project, branch, sha) → namespace, hashed namespace, Helm release, image tag: always valid DNS
//! labels of at most 63 bytes and OCI tags, deterministic, and the hashed name carries the hash of
//! exactly this (project, branch). Two different (project, branch) pairs hash apart unless their
//! cut slugs and 24-bit hashes both collide.
#![no_main]

mod common;

use arbitrary::Arbitrary;
use draftd::stand::{BranchName, Namespace, ProjectName, is_dns_label, slug};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    project: &'a str,
    branch: &'a str,
    other_branch: &'a str,
    sha: &'a str,
    /// A well-formed sha from 20 bytes, to reach the `-<sha7>` ending.
    sha_bytes: [u8; 20],
    strip: bool,
    use_raw_sha: bool,
}

/// Any text as a valid project name: itself when valid, else its slug cut to fit (or `p`).
fn project_name(text: &str) -> ProjectName {
    ProjectName::new(text).unwrap_or_else(|_| {
        let s = slug(text);
        let cut = s[..s.len().min(63)].trim_end_matches('-');
        ProjectName::new(if cut.is_empty() { "p" } else { cut }).expect("a slug cut to 63 is a DNS label")
    })
}

fuzz_target!(|input: Input| {
    let project = project_name(input.project);
    assert!(is_dns_label(project.as_str()));
    let Ok(branch) = BranchName::new(input.branch) else { return };
    let sha = if input.use_raw_sha { input.sha.to_string() } else { hex::encode(input.sha_bytes) };

    let plain = Namespace::for_branch(&project, &branch, input.strip);
    let hashed = Namespace::hashed(&project, &branch, input.strip);
    for ns in [&plain, &hashed] {
        assert!(is_dns_label(ns.as_str()) && ns.as_str().len() <= 63, "{ns:?}");
        assert!(ns.as_str().starts_with("draft-"));
    }
    assert_eq!(plain, Namespace::for_branch(&project, &branch, input.strip));
    assert_eq!(hashed, Namespace::hashed(&project, &branch, input.strip));
    let suffix = format!("-{}", common::expected_hash(project.as_str(), branch.as_str()));
    assert!(hashed.as_str().ends_with(&suffix), "{hashed:?} lacks {suffix}");
    // The readable name is the whole slug or, when that does not fit or is empty, the hashed name.
    let base = if input.strip {
        ["feature/", "bugfix/"].iter().find_map(|p| branch.as_str().strip_prefix(p)).unwrap_or(branch.as_str())
    } else {
        branch.as_str()
    };
    let s = slug(base);
    if !s.is_empty() && "draft-".len() + s.len() <= 63 {
        assert_eq!(plain.as_str(), format!("draft-{s}"));
    } else {
        assert_eq!(plain, hashed, "a cut or empty slug must hash");
    }

    let tag = draftd::pipeline::plan::image_tag(branch.as_str(), &sha);
    assert!(common::is_oci_tag(&tag), "{tag:?}");
    assert_eq!(tag, draftd::pipeline::plan::image_tag(branch.as_str(), &sha));
    if !input.use_raw_sha {
        assert!(tag.ends_with(&format!("-{}", &sha[..7])), "{tag:?}");
    }
    let release = draftd::helm::release_name(plain.as_str());
    assert!(is_dns_label(&release) && release.len() <= draftd::helm::RELEASE_NAME_MAX, "{release:?}");

    // Uniqueness of the hashed form: a different branch (or project) changes the hash suffix, so
    // equal names mean a 24-bit hash collision, never a naming rule.
    if let Ok(other) = BranchName::new(input.other_branch) {
        let o = Namespace::hashed(&project, &other, input.strip);
        if o == hashed && other != branch {
            assert_eq!(
                common::expected_hash(project.as_str(), other.as_str()),
                common::expected_hash(project.as_str(), branch.as_str()),
                "{branch:?} and {other:?} share {hashed:?} without a hash collision"
            );
        }
    }
});
