//! Fork pull requests under `forks = "approve"`: the commit a maintainer names when approving, and
//! what a stand may be given depending on whose code it runs.

use std::fmt;

use serde::{Serialize, Serializer};

/// Whose code a stand runs, which decides what it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// The repository's own branch: everything the project configures.
    Own,
    /// A fork's pull request nobody approved (`forks = "allow"`): no secrets and no logins.
    Fork,
    /// A fork's commit someone with write access approved (`forks = "approve"`): its own database
    /// and login, mock integrations only, never the team's KV secrets, and its URL behind forge
    /// sign-in.
    ApprovedFork,
}

impl Provenance {
    /// The team's KV secrets: only for the repository's own code.
    pub fn gets_kv_secrets(self) -> bool {
        self == Provenance::Own
    }

    /// A database login of its own (the app's and the migrate Job's).
    pub fn gets_logins(self) -> bool {
        self != Provenance::Fork
    }

    /// Every integration replaced by the chart's mocks, whatever the project's values say.
    /// Its URL is behind forge sign-in whatever the project's `access`: reviewed code, not the project's.
    pub fn private(self) -> bool {
        self == Provenance::ApprovedFork
    }

    pub fn mocks_only(self) -> bool {
        self == Provenance::ApprovedFork
    }
}

/// The longest prefix kept: a SHA-256 commit id.
const MAX_PREFIX: usize = 64;
/// The shortest prefix taken: as short as forges print commits.
pub const MIN_PREFIX: usize = 7;

/// A commit named by a prefix of its id (`/draft approve abc1234`): 7 to 64 hex characters,
/// lowercased. `Copy`, like the commands that carry it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShaPrefix {
    bytes: [u8; MAX_PREFIX],
    len: u8,
}

impl ShaPrefix {
    pub fn new(text: &str) -> Option<ShaPrefix> {
        let ok = (MIN_PREFIX..=MAX_PREFIX).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return None;
        }
        let mut bytes = [0; MAX_PREFIX];
        for (to, from) in bytes.iter_mut().zip(text.bytes()) {
            *to = from.to_ascii_lowercase();
        }
        Some(ShaPrefix { bytes, len: text.len() as u8 })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("hex digits are ASCII")
    }

    /// Whether `sha` (a full commit id) starts with this prefix.
    pub fn names(&self, sha: &str) -> bool {
        sha.len() >= self.as_str().len() && sha[..self.as_str().len()].eq_ignore_ascii_case(self.as_str())
    }
}

impl fmt::Debug for ShaPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShaPrefix({})", self.as_str())
    }
}

impl fmt::Display for ShaPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ShaPrefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The short form people see: the first 7 characters.
pub fn short_sha(sha: &str) -> &str {
    sha.get(..MIN_PREFIX).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_7_to_64_hex_characters_and_name_commits_case_insensitively() {
        let p = ShaPrefix::new("ABC1234").unwrap();
        assert_eq!(p.as_str(), "abc1234");
        assert!(p.names(&format!("abc1234{}", "0".repeat(33))));
        assert!(!p.names(&format!("abc1235{}", "0".repeat(33))));
        assert!(!p.names("abc"));
        assert!(ShaPrefix::new("abc123").is_none(), "too short");
        assert!(ShaPrefix::new("abc123z").is_none(), "not hex");
        assert!(ShaPrefix::new(&"a".repeat(65)).is_none(), "too long");
        assert_eq!(ShaPrefix::new(&"f".repeat(64)).unwrap().as_str().len(), 64);
        assert_eq!(serde_json::to_value(p).unwrap(), serde_json::json!("abc1234"));
    }

    #[test]
    fn only_the_repositorys_own_code_gets_kv_secrets() {
        use Provenance::*;
        assert_eq!([Own, Fork, ApprovedFork].map(|p| p.gets_kv_secrets()), [true, false, false]);
        assert_eq!([Own, Fork, ApprovedFork].map(|p| p.gets_logins()), [true, false, true]);
        assert_eq!([Own, Fork, ApprovedFork].map(|p| p.mocks_only()), [false, false, true]);
    }
}
