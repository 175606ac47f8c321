//! Names derived from branches, per DESIGN.md's naming contract.
//!
//! Everything here is pure so it can be property-tested: a namespace is always a valid DNS label
//! (RFC 1123, ≤ 63 bytes) whatever the branch, and the hashed form is unique per (project, branch).

use std::fmt;

use sha2::{Digest, Sha256};

/// Kubernetes caps names and label values at 63 bytes.
pub const MAX_LABEL: usize = 63;
const PREFIX: &str = "draft-";
/// `-` plus six hex characters of the (project, branch) hash.
const HASH_SUFFIX_LEN: usize = 7;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("branch name is empty")]
    EmptyBranch,
    #[error("branch name is longer than {max} bytes")]
    BranchTooLong { max: usize },
    #[error("branch name contains a control character")]
    BranchControlChar,
    #[error("commit sha {0:?} is not 40 or 64 hexadecimal characters")]
    BadSha(String),
    #[error(
        "project name {0:?} must be 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
    )]
    BadProject(String),
    #[error("namespace {0:?} is not a DNS label (1-63 characters of a-z, 0-9 and '-')")]
    BadNamespace(String),
}

/// A project's name as configured: a DNS label, so it can be used in labels and `project/branch` ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ProjectName(String);

impl ProjectName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        if is_dns_label(name) { Ok(Self(name.to_owned())) } else { Err(NameError::BadProject(name.to_owned())) }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A source branch name as the forge sent it (git allows almost anything; we only refuse what cannot be stored).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct BranchName(String);

impl BranchName {
    /// Git refs have no hard limit, but 255 bytes is what filesystems allow for a ref's last component
    /// and far beyond any branch people type.
    pub const MAX_LEN: usize = 1024;

    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::EmptyBranch);
        }
        if name.len() > Self::MAX_LEN {
            return Err(NameError::BranchTooLong { max: Self::MAX_LEN });
        }
        if name.chars().any(char::is_control) {
            return Err(NameError::BranchControlChar);
        }
        Ok(Self(name.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BranchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full commit id: 40 hex characters (SHA-1 repositories) or 64 (SHA-256 repositories), lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct CommitSha(String);

impl CommitSha {
    pub fn new(sha: &str) -> Result<Self, NameError> {
        let ok = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
        if ok { Ok(Self(sha.to_ascii_lowercase())) } else { Err(NameError::BadSha(sha.chars().take(80).collect())) }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Kubernetes namespace of a stand: `draft-<branch-slug>`, a valid DNS label of at most 63 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Namespace(String);

impl Namespace {
    /// The readable name for a stand. It is hashed (see [`Namespace::hashed`]) when the slug had to be
    /// cut or came out empty, because then it no longer identifies the branch.
    pub fn for_branch(project: &ProjectName, branch: &BranchName, strip_prefix: bool) -> Self {
        let slug = slug(branch_for_slug(branch.as_str(), strip_prefix));
        if slug.is_empty() || PREFIX.len() + slug.len() > MAX_LABEL {
            return Self::hashed(project, branch, strip_prefix);
        }
        Self(format!("{PREFIX}{slug}"))
    }

    /// The collision-proof name: the slug cut to fit, then `-` and six hex characters of a hash of
    /// (project, branch). Used when the readable name is cut or already taken by another stand.
    pub fn hashed(project: &ProjectName, branch: &BranchName, strip_prefix: bool) -> Self {
        let slug = slug(branch_for_slug(branch.as_str(), strip_prefix));
        let room = MAX_LABEL - PREFIX.len() - HASH_SUFFIX_LEN;
        let cut = slug[..slug.len().min(room)].trim_end_matches('-');
        let hash = stand_hash(project, branch);
        if cut.is_empty() { Self(format!("{PREFIX}{hash}")) } else { Self(format!("{PREFIX}{cut}-{hash}")) }
    }

    /// A namespace as stored with its stand: checked again on the way out, so a row edited by hand
    /// cannot reach the cluster as a name Kubernetes would refuse.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if is_dns_label(name) { Ok(Self(name.to_owned())) } else { Err(NameError::BadNamespace(name.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a stand's GitLab environment. GitLab takes at most 255 characters of ASCII
/// `[a-zA-Z0-9_/${}. -]`, not starting or ending with `/` (lib/gitlab/regex.rb
/// `environment_name_regex`, app/models/environment.rb), while git also allows `+ # @ , ' =`,
/// non-ASCII letters and longer names in a branch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct GitlabEnvironmentName(String);

impl GitlabEnvironmentName {
    /// GitLab's limit on an environment's name.
    pub const MAX_LEN: usize = 255;
    /// A space and eight hex characters of the hash of the wanted name.
    const SUFFIX_LEN: usize = 9;

    /// `wanted` (the stand's `draft/<branch>`) itself when GitLab accepts it, so an environment made
    /// under that name is found again. Otherwise every run of characters GitLab refuses becomes one
    /// `-`, the result is cut to fit, and a space and eight hex characters of `wanted`'s hash end it:
    /// git allows no space in a branch, so no name kept as it was can take the form of a mapped one,
    /// and the hash keeps two mapped names apart (`a+b` and `a@b`).
    pub fn new(wanted: &str) -> Self {
        if Self::is_valid(wanted) {
            return Self(wanted.to_owned());
        }
        let mut readable = String::with_capacity(wanted.len());
        let mut refused = false;
        for c in wanted.chars() {
            // A space is GitLab's, but here it is kept for the hash's separator.
            if environment_char(c) && c != ' ' {
                if refused {
                    readable.push('-');
                }
                refused = false;
                readable.push(c);
            } else {
                refused = true;
            }
        }
        // ASCII only by now: bytes are characters.
        readable.truncate(Self::MAX_LEN - Self::SUFFIX_LEN);
        let readable = readable.trim_start_matches('/').trim_end_matches(['/', '-']);
        let hash = hex::encode(&Sha256::digest(wanted.as_bytes())[..4]);
        if readable.is_empty() { Self(hash) } else { Self(format!("{readable} {hash}")) }
    }

    /// What GitLab accepts as an environment name.
    pub fn is_valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && !name.starts_with('/')
            && !name.ends_with('/')
            && name.chars().all(environment_char)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GitlabEnvironmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One of GitLab's environment name characters (ASCII only, whatever Unicode calls a letter).
fn environment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '$' | '{' | '}' | '.' | ' ' | '-')
}

fn branch_for_slug(branch: &str, strip_prefix: bool) -> &str {
    if strip_prefix {
        for prefix in ["feature/", "bugfix/"] {
            if let Some(rest) = branch.strip_prefix(prefix) {
                return rest;
            }
        }
    }
    branch
}

/// Lowercase ASCII letters and digits; every other run of characters becomes one `-`; no `-` at either end.
pub fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut dash = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        } else {
            dash = true;
        }
    }
    out
}

/// Six hex characters of SHA-256 over (project, NUL, branch): stable across releases, so a stand keeps its name.
fn stand_hash(project: &ProjectName, branch: &BranchName) -> String {
    let mut h = Sha256::new();
    h.update(project.as_str().as_bytes());
    h.update([0]);
    h.update(branch.as_str().as_bytes());
    hex::encode(&h.finalize()[..3])
}

/// RFC 1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The stored (and sent) forms: each name reads as the string it wraps, and is made from one only
/// through its checks, which is how rows read from the database become typed names.
macro_rules! stored_name {
    ($name:ident, $check:expr) => {
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $check(&s)
            }
        }
    };
}

stored_name!(ProjectName, ProjectName::new);
stored_name!(BranchName, BranchName::new);
stored_name!(Namespace, Namespace::parse);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(name: &str) -> ProjectName {
        ProjectName::new(name).unwrap()
    }
    fn b(name: &str) -> BranchName {
        BranchName::new(name).unwrap()
    }

    #[test]
    fn short_branch_keeps_its_prefix_by_default() {
        let ns = Namespace::for_branch(&p("shop"), &b("feature/Login_Form"), false);
        assert_eq!(ns.as_str(), "draft-feature-login-form");
    }

    #[test]
    fn prefix_is_stripped_only_when_the_project_asks() {
        let ns = Namespace::for_branch(&p("shop"), &b("bugfix/crash"), true);
        assert_eq!(ns.as_str(), "draft-crash");
    }

    #[test]
    fn long_branch_is_cut_and_hashed_to_exactly_63() {
        let long = format!("feature/{}", "very-long-name-".repeat(10));
        let ns = Namespace::for_branch(&p("shop"), &b(&long), false);
        assert!(ns.as_str().len() <= 63, "{ns}");
        assert!(is_dns_label(ns.as_str()));
        let hash = &ns.as_str()[ns.as_str().len() - 6..];
        assert!(hash.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(ns.as_str().starts_with("draft-feature-very-long-name"));
    }

    #[test]
    fn unicode_only_branch_gets_a_hash_name() {
        let ns = Namespace::for_branch(&p("shop"), &b("ünïcødé/日本"), false);
        assert!(is_dns_label(ns.as_str()), "{ns}");
        assert!(ns.as_str().starts_with("draft-"));
    }

    #[test]
    fn unicode_letters_become_separators() {
        let ns = Namespace::for_branch(&p("shop"), &b("feature/café-crème"), false);
        assert_eq!(ns.as_str(), "draft-feature-caf-cr-me");
    }

    #[test]
    fn branches_that_slug_alike_differ_once_hashed() {
        let a = Namespace::hashed(&p("shop"), &b("feature/a_b"), false);
        let c = Namespace::hashed(&p("shop"), &b("feature/a-b"), false);
        assert_eq!(
            Namespace::for_branch(&p("shop"), &b("feature/a_b"), false),
            Namespace::for_branch(&p("shop"), &b("feature/a-b"), false)
        );
        assert_ne!(a, c);
    }

    #[test]
    fn sha_must_be_full_hex() {
        assert!(CommitSha::new(&"a".repeat(40)).is_ok());
        assert!(CommitSha::new(&"A".repeat(64)).is_ok());
        assert!(CommitSha::new("abc123").is_err());
        assert!(CommitSha::new(&"g".repeat(40)).is_err());
    }

    #[test]
    fn project_names_are_dns_labels() {
        assert!(ProjectName::new("shop-2").is_ok());
        for bad in ["", "Shop", "-shop", "shop-", "a/b", &"x".repeat(64)] {
            assert!(ProjectName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn branch_names_refuse_only_what_cannot_be_stored() {
        assert!(BranchName::new("").is_err());
        assert!(BranchName::new("a\nb").is_err());
        assert!(BranchName::new(&"x".repeat(BranchName::MAX_LEN + 1)).is_err());
        assert!(BranchName::new("feature/日本語").is_ok());
    }

    fn env(branch: &str) -> String {
        GitlabEnvironmentName::new(&format!("draft/{branch}")).to_string()
    }

    #[test]
    fn gitlab_environment_names_gitlab_accepted_are_kept() {
        for branch in ["feature/login", "fix/a_b.c", "release/1.2 rc", "x/${y}"] {
            assert_eq!(env(branch), format!("draft/{branch}"));
        }
    }

    #[test]
    fn gitlab_environment_names_map_what_gitlab_refuses() {
        let plus = env("feature/a+b");
        assert!(plus.starts_with("draft/feature/a-b "), "{plus}");
        assert_eq!(plus.len(), "draft/feature/a-b ".len() + 8);
        assert_ne!(plus, env("feature/a@b"));
        assert!(env("feature/café").starts_with("draft/feature/caf "));
        assert!(env("trailing/").starts_with("draft/trailing "));
        let long = env(&"x".repeat(300));
        assert_eq!(long.len(), GitlabEnvironmentName::MAX_LEN);
        // Only the hash is left of a name with nothing GitLab takes.
        assert_eq!(GitlabEnvironmentName::new("日本").as_str().len(), 8);
        assert!(!GitlabEnvironmentName::is_valid("/draft"));
        assert!(!GitlabEnvironmentName::is_valid("draft/é"));
        assert!(!GitlabEnvironmentName::is_valid(&"d".repeat(256)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_branch_yields_a_stable_gitlab_environment_name(branch in "\\PC{1,400}") {
            let name = env(&branch);
            prop_assert!(GitlabEnvironmentName::is_valid(&name), "{:?}", name);
            prop_assert_eq!(&name, &env(&branch));
            if GitlabEnvironmentName::is_valid(&format!("draft/{branch}")) {
                prop_assert_eq!(name, format!("draft/{branch}"));
            }
        }

        #[test]
        fn gitlab_environment_names_differ_per_branch(
            a in "[a-zA-Z0-9/_.+@#,'=é-]{1,80}", c in "[a-zA-Z0-9/_.+@#,'=é-]{1,80}"
        ) {
            prop_assume!(a != c);
            prop_assert_ne!(env(&a), env(&c));
        }

        #[test]
        fn any_branch_yields_a_valid_dns_label(branch in "\\PC{1,300}", strip in any::<bool>()) {
            let branch = b(&branch);
            let plain = Namespace::for_branch(&p("shop"), &branch, strip);
            let hashed = Namespace::hashed(&p("shop"), &branch, strip);
            prop_assert!(is_dns_label(plain.as_str()), "{}", plain);
            prop_assert!(is_dns_label(hashed.as_str()), "{}", hashed);
            prop_assert!(plain.as_str().starts_with("draft-"));
        }

        #[test]
        fn hashed_names_are_unique_per_project_and_branch(
            a in "[a-zA-Z0-9/_.-]{1,80}", c in "[a-zA-Z0-9/_.-]{1,80}"
        ) {
            prop_assume!(a != c);
            let na = Namespace::hashed(&p("shop"), &b(&a), false);
            let nc = Namespace::hashed(&p("shop"), &b(&c), false);
            prop_assert_ne!(na.clone(), nc);
            prop_assert_ne!(na, Namespace::hashed(&p("shop2"), &b(&a), false));
        }

        #[test]
        fn naming_is_deterministic(branch in "\\PC{1,100}") {
            let branch = b(&branch);
            prop_assert_eq!(
                Namespace::for_branch(&p("shop"), &branch, false),
                Namespace::for_branch(&p("shop"), &branch, false)
            );
        }
    }
}
