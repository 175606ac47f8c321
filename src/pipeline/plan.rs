//! What a run would create for a stand, computed from configuration alone: names, image, Helm release.
//! Shared by the steps (which act on it) and `draftd plan` (which prints it).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{AccessMode, Config, ProjectConfig};
use crate::helm::{Release, release_name};
use crate::stand::{StandId, slug};
pub use crate::stand::{stand_host, stand_url};

/// OCI tags are at most 128 characters.
const MAX_TAG: usize = 128;

#[derive(Debug, Clone, Serialize)]
pub struct StandPlan {
    pub project: String,
    pub branch: String,
    pub sha: String,
    pub namespace: String,
    /// `draft-<branch-slug>-<sha7>`.
    pub image_tag: String,
    /// The full reference when the project names its image repository: `repo:tag`, or
    /// `repo@digest` once the image step found it (see [`StandPlan::pin`]).
    pub image: Option<String>,
    /// The manifest digest the image step found under the tag.
    pub digest: Option<String>,
    pub host: Option<String>,
    pub url: Option<String>,
    /// The stand's own database, and the role that owns it (Postgres keeps the two apart, so one name).
    pub database: String,
    pub role: String,
    /// KV path of the app's secrets: `<kv_mount>/<team>/<service>`.
    pub vault_kv_path: Option<String>,
    #[serde(skip)]
    pub release: Release,
}

impl StandPlan {
    pub fn new(
        config: &Config,
        project: &ProjectConfig,
        stand_id: StandId,
        namespace: &str,
        branch: &str,
        sha: &str,
    ) -> Self {
        let image_tag = image_tag(branch, sha);
        let image = project.image.as_ref().map(|repo| format!("{repo}:{image_tag}"));
        let host = project.host.as_deref().map(|pattern| stand_host(pattern, namespace));
        let url = host.as_deref().map(stand_url);
        let database = namespace.replace('-', "_");
        let vault_kv_path = match (&config.vault, &project.team, &project.service) {
            (Some(v), Some(team), Some(service)) => Some(format!("{}/{team}/{service}", v.kv_mount)),
            _ => None,
        };
        let mut set = BTreeMap::new();
        if let Some(repo) = &project.image {
            set.insert("image.repository".to_string(), repo.to_string());
        }
        set.insert("image.tag".to_string(), image_tag.clone());
        if let Some(h) = &host {
            set.insert("host".to_string(), h.clone());
            // Its requests go to draftd's wake listener while it sleeps.
            if let Some(wake) = &config.sleep.wake_service {
                set.insert("wake.externalName".to_string(), wake.name.clone());
                set.insert("wake.port".to_string(), wake.port.to_string());
            }
        }
        set.insert("stand.id".to_string(), stand_id.to_string());
        set.insert("stand.project".to_string(), project.name.clone());
        let release = Release {
            name: release_name(namespace),
            namespace: namespace.to_string(),
            chart: project.chart.clone(),
            values: project.values.clone(),
            set,
        };
        let mut plan = StandPlan {
            project: project.name.clone(),
            branch: branch.to_string(),
            sha: sha.to_string(),
            namespace: namespace.to_string(),
            image_tag,
            image,
            digest: None,
            host,
            url,
            role: database.clone(),
            database,
            vault_kv_path,
            release,
        };
        // Behind forge sign-in: ingress-nginx asks draftd before each request.
        if config.access_mode(project) == AccessMode::Forge {
            plan.make_private(config);
        }
        plan
    }
}

impl StandPlan {
    /// Puts the stand's URL behind forge sign-in (ingress-nginx's external auth), when it has a host
    /// and `[access]` is configured.
    pub fn make_private(&mut self, config: &Config) {
        if let (Some(access), Some(_)) = (&config.access, &self.host) {
            self.release.set.insert("access.authUrl".to_string(), access.check_url());
            self.release.set.insert("access.signinUrl".to_string(), access.signin_url());
        }
    }

    /// Runs the manifest `digest` instead of whatever the tag names by then: what the image step
    /// checked is what the deploy and its Jobs run. The chart gets `image.digest` (and keeps
    /// `image.tag` for its labels).
    pub fn pin(&mut self, digest: &str) {
        self.digest = Some(digest.to_owned());
        if let Some(repo) = self.release.set.get("image.repository") {
            self.image = Some(format!("{repo}@{digest}"));
        }
        self.release.set.insert("image.digest".to_owned(), digest.to_owned());
    }
}

/// `draft-<branch-slug>-<sha7>`, cut to a valid OCI tag.
pub fn image_tag(branch: &str, sha: &str) -> String {
    let short: String = sha.chars().filter(|c| c.is_ascii_hexdigit()).take(7).collect::<String>().to_ascii_lowercase();
    let room = MAX_TAG - "draft-".len() - 1 - short.len();
    let slug = slug(branch);
    let cut = slug[..slug.len().min(room)].trim_end_matches('-');
    if cut.is_empty() { format!("draft-{short}") } else { format!("draft-{cut}-{short}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn image_tags_follow_the_contract() {
        assert_eq!(image_tag("feature/Login_Form", &"abcdef1234".repeat(4)), "draft-feature-login-form-abcdef1");
    }

    proptest! {
        #[test]
        fn image_tags_are_valid_oci_tags(branch in "\\PC{1,300}", sha in "[0-9a-f]{40}") {
            let tag = image_tag(&branch, &sha);
            prop_assert!(tag.len() <= MAX_TAG);
            prop_assert!(tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
            prop_assert!(tag.starts_with("draft-"));
            prop_assert!(tag.ends_with(&sha[..7]));
        }

        #[test]
        fn image_tags_end_with_the_lowercased_short_sha(
            branch in "\\PC{0,300}",
            sha in "[0-9a-fA-F]{64}|[0-9a-fA-F]{40}",
        ) {
            let tag = image_tag(&branch, &sha);
            prop_assert!(tag.len() <= MAX_TAG);
            prop_assert!(tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
            prop_assert!(tag.ends_with(&format!("-{}", sha[..7].to_ascii_lowercase())), "{}", tag);
            prop_assert_eq!(tag.clone(), image_tag(&branch, &sha));
        }
    }
}
