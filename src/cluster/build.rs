//! The build Job: rootless BuildKit (`buildctl-daemonless.sh`) builds the stand's image from the
//! repository at the run's commit and pushes it under the stand's tag, with the build cache in the
//! registry (`--export-cache`/`--import-cache type=registry`) so a rebuild reuses every unchanged
//! layer. It runs in the build namespace (deploy/build.yaml: its own quota and network policy, Pod
//! Security `privileged` because rootless BuildKit needs an unconfined seccomp and AppArmor
//! profile), never in a stand's namespace.
//!
//! BuildKit fetches the repository itself (a git context), authenticated by a read-only token that
//! expires within the hour, sent only to the forge's host (`GIT_AUTH_TOKEN.<host>`), and pushes with
//! the registry login of a `config.json`. Both sit in a Secret owned by the Job, so both go with it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    AppArmorProfile, Container, EmptyDirVolumeSource, EnvVar, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use secrecy::{ExposeSecret, SecretString};

use super::StandMeta;
use super::resources::labels;

/// The build container's name (its log is what the report quotes).
pub const CONTAINER: &str = "build";
/// Where the Secret is mounted; its keys are files there.
const SECRET_DIR: &str = "/run/draftd";
/// rootless BuildKit's user and home (moby/buildkit:*-rootless).
const BUILDKIT_UID: i64 = 1000;
const HOME: &str = "/home/user";

/// How BuildKit authenticates to the forge when it fetches the repository.
#[derive(Clone)]
pub enum GitAuth {
    /// A token sent as HTTP basic auth (`x-access-token:<token>`, as GitHub expects).
    Token(SecretString),
    /// A whole `Authorization` header value (`basic …` with a user of the forge's choosing).
    Header(SecretString),
}

impl std::fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GitAuth::Token(_) => "Token(<redacted>)",
            GitAuth::Header(_) => "Header(<redacted>)",
        })
    }
}

/// Everything the Job is made of.
#[derive(Debug, Clone)]
pub struct BuildJob {
    pub namespace: String,
    /// `build-<sha7>-<namespace>` (see [`BuildJob::name_for`]): a resumed or retried run finds the
    /// build its earlier attempt started.
    pub name: String,
    pub buildkit_image: String,
    /// The repository over HTTPS (`https://github.com/acme/shop.git`).
    pub git_url: String,
    pub sha: String,
    /// A folder of the repository; `.` for its root.
    pub context: String,
    pub dockerfile: String,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub git_auth: Option<GitAuth>,
    /// `registry/repository:tag` to push, and the cache's reference in the same repository.
    pub push: String,
    pub cache: String,
    /// The registry speaks plain HTTP.
    pub insecure_registry: bool,
    /// A `config.json` with the login to push, when the registry needs one.
    pub registry_auth: Option<SecretString>,
    pub cpu: String,
    pub memory: String,
    pub deadline: Duration,
    pub keep_for: Duration,
}

impl BuildJob {
    /// `build-<sha7>-<namespace>`: one build per stand and commit, whichever draftd database the
    /// stand is in (the build namespace is shared). Cut to 63 characters (the `job-name` label's
    /// limit) with a hash of the whole name at the end when longer.
    pub fn name_for(namespace: &str, sha: &str) -> String {
        use sha2::Digest as _;
        let short: String = sha.chars().filter(|c| c.is_ascii_hexdigit()).take(7).collect::<String>().to_lowercase();
        let name = format!("build-{short}-{namespace}");
        if name.len() <= 63 {
            return name;
        }
        let hash = hex::encode(sha2::Sha256::digest(name.as_bytes()));
        format!("{}-{}", name[..56].trim_end_matches('-'), &hash[..6])
    }

    fn git_host(&self) -> &str {
        let rest = self.git_url.split_once("://").map_or(self.git_url.as_str(), |(_, r)| r);
        rest.split(['/', ':']).next().unwrap_or_default()
    }

    /// BuildKit's git context: `<url>#<sha>` or `<url>#<sha>:<folder>`.
    pub fn context_ref(&self) -> String {
        let folder = self.context.trim_start_matches("./").trim_matches('/');
        if folder.is_empty() || folder == "." {
            format!("{}#{}", self.git_url, self.sha)
        } else {
            format!("{}#{}:{folder}", self.git_url, self.sha)
        }
    }

    /// `buildctl-daemonless.sh` arguments.
    pub fn args(&self) -> Vec<String> {
        let insecure = if self.insecure_registry { ",registry.insecure=true" } else { "" };
        let mut args = vec![
            "build".to_owned(),
            "--progress=plain".to_owned(),
            "--frontend=dockerfile.v0".to_owned(),
            format!("--opt=context={}", self.context_ref()),
            format!("--opt=filename={}", self.dockerfile),
        ];
        for (k, v) in &self.build_args {
            args.push(format!("--opt=build-arg:{k}={v}"));
        }
        if let Some(target) = &self.target {
            args.push(format!("--opt=target={target}"));
        }
        match &self.git_auth {
            Some(GitAuth::Token(_)) => {
                args.push(format!("--secret=id=GIT_AUTH_TOKEN.{},src={SECRET_DIR}/git-token", self.git_host()))
            }
            Some(GitAuth::Header(_)) => {
                args.push(format!("--secret=id=GIT_AUTH_HEADER.{},src={SECRET_DIR}/git-header", self.git_host()))
            }
            None => {}
        }
        args.push(format!("--output=type=image,name={},push=true{insecure}", self.push));
        args.push(format!("--export-cache=type=registry,ref={},mode=max{insecure}", self.cache));
        args.push(format!("--import-cache=type=registry,ref={}{insecure}", self.cache));
        args
    }
}

fn unconfined() -> (Option<SeccompProfile>, Option<AppArmorProfile>) {
    (
        Some(SeccompProfile { type_: "Unconfined".to_owned(), localhost_profile: None }),
        Some(AppArmorProfile { type_: "Unconfined".to_owned(), localhost_profile: None }),
    )
}

/// The build's labels: the stand's, so a teardown or orphan scan can find its builds, and the purpose.
fn build_labels(stand: &StandMeta) -> BTreeMap<String, String> {
    let mut l = labels(stand);
    l.insert("draftd.io/job".into(), "build".into());
    l
}

/// The Job, without `ttlSecondsAfterFinished` (set once draftd has read its end, as for the
/// stand's own Jobs).
pub fn job(stand: &StandMeta, build: &BuildJob) -> Job {
    let labels = build_labels(stand);
    let (seccomp, apparmor) = unconfined();
    let quantity = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    let mut mounts = vec![VolumeMount {
        name: "buildkitd".into(),
        mount_path: format!("{HOME}/.local/share/buildkit"),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "buildkitd".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut items = Vec::new();
    if build.registry_auth.is_some() {
        items.push(KeyToPath { key: "config.json".into(), path: "docker/config.json".into(), mode: None });
    }
    match &build.git_auth {
        Some(GitAuth::Token(_)) => {
            items.push(KeyToPath { key: "git-token".into(), path: "git-token".into(), mode: None })
        }
        Some(GitAuth::Header(_)) => {
            items.push(KeyToPath { key: "git-header".into(), path: "git-header".into(), mode: None })
        }
        None => {}
    }
    if !items.is_empty() {
        mounts.push(VolumeMount {
            name: "auth".into(),
            mount_path: SECRET_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "auth".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(build.name.clone()),
                items: Some(items),
                default_mode: Some(0o400),
                optional: Some(false),
            }),
            ..Volume::default()
        });
    }
    let mut env = vec![
        // Rootless BuildKit inside an unprivileged pod: no nested process sandbox (BuildKit's
        // documented setting for Kubernetes).
        EnvVar {
            name: "BUILDKITD_FLAGS".into(),
            value: Some("--oci-worker-no-process-sandbox".into()),
            ..EnvVar::default()
        },
    ];
    if build.registry_auth.is_some() {
        env.push(EnvVar {
            name: "DOCKER_CONFIG".into(),
            value: Some(format!("{SECRET_DIR}/docker")),
            ..EnvVar::default()
        });
    }
    Job {
        metadata: ObjectMeta {
            name: Some(build.name.clone()),
            namespace: Some(build.namespace.clone()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            // Once: a failed build is reported with its log, not retried behind the user's back.
            backoff_limit: Some(0),
            // From the start, unlike the stand's own Jobs: a build whose run gave way to a newer
            // push is never read, and must not stay. A retried step that finds it gone builds
            // again, from the registry cache.
            ttl_seconds_after_finished: Some(super::jobs::ttl_seconds(build.keep_for)),
            active_deadline_seconds: Some(build.deadline.as_secs().max(1) as i64),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(BUILDKIT_UID),
                        run_as_group: Some(BUILDKIT_UID),
                        fs_group: Some(BUILDKIT_UID),
                        run_as_non_root: Some(true),
                        seccomp_profile: seccomp.clone(),
                        app_armor_profile: apparmor.clone(),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![Container {
                        name: CONTAINER.into(),
                        image: Some(build.buildkit_image.clone()),
                        command: Some(vec!["buildctl-daemonless.sh".into()]),
                        args: Some(build.args()),
                        env: Some(env),
                        volume_mounts: Some(mounts),
                        resources: Some(ResourceRequirements {
                            requests: Some(quantity(&build.cpu, &build.memory)),
                            limits: Some(quantity(&build.cpu, &build.memory)),
                            ..ResourceRequirements::default()
                        }),
                        security_context: Some(SecurityContext {
                            allow_privilege_escalation: Some(true),
                            run_as_non_root: Some(true),
                            seccomp_profile: seccomp,
                            app_armor_profile: apparmor,
                            ..SecurityContext::default()
                        }),
                        ..Container::default()
                    }],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The build's Secret (registry login, forge token), owned by `job` so it goes with it.
pub fn secret(stand: &StandMeta, build: &BuildJob, job: &Job) -> Secret {
    let mut data = BTreeMap::new();
    if let Some(auth) = &build.registry_auth {
        data.insert("config.json".to_owned(), ByteString(auth.expose_secret().as_bytes().to_vec()));
    }
    match &build.git_auth {
        Some(GitAuth::Token(t)) => {
            data.insert("git-token".to_owned(), ByteString(t.expose_secret().as_bytes().to_vec()));
        }
        Some(GitAuth::Header(h)) => {
            data.insert("git-header".to_owned(), ByteString(h.expose_secret().as_bytes().to_vec()));
        }
        None => {}
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(build.name.clone()),
            namespace: Some(build.namespace.clone()),
            labels: Some(build_labels(stand)),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: job.name_any(),
                uid: job.uid().unwrap_or_default(),
                controller: Some(false),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> BuildJob {
        BuildJob {
            namespace: "draftd-build".into(),
            name: BuildJob::name_for("draft-x", "ABCDEF0123456789"),
            buildkit_image: "moby/buildkit:rootless".into(),
            git_url: "https://github.com/acme/shop.git".into(),
            sha: "abcdef0123456789".into(),
            context: "./web".into(),
            dockerfile: "Dockerfile".into(),
            build_args: BTreeMap::from([("MODE".into(), "draft".into())]),
            target: None,
            git_auth: Some(GitAuth::Token(SecretString::from("t0k".to_owned()))),
            push: "127.0.0.1:5000/acme/shop:draft-x-abcdef0".into(),
            cache: "127.0.0.1:5000/acme/shop:draft-buildcache".into(),
            insecure_registry: true,
            registry_auth: None,
            cpu: "1".into(),
            memory: "2Gi".into(),
            deadline: Duration::from_secs(600),
            keep_for: Duration::from_secs(3600),
        }
    }

    #[test]
    fn buildctl_gets_the_commit_the_token_for_the_forge_only_and_the_cache() {
        let b = build();
        assert_eq!(b.name, "build-abcdef0-draft-x");
        let long = BuildJob::name_for(&format!("draft-{}", "a".repeat(57)), "abcdef0");
        assert_eq!(long.len(), 63, "{long}");
        let args = b.args();
        assert!(args.contains(&"--opt=context=https://github.com/acme/shop.git#abcdef0123456789:web".to_owned()));
        assert!(args.contains(&"--secret=id=GIT_AUTH_TOKEN.github.com,src=/run/draftd/git-token".to_owned()));
        assert!(args.contains(&"--opt=build-arg:MODE=draft".to_owned()));
        assert!(args.iter().any(|a| a.starts_with(
            "--output=type=image,name=127.0.0.1:5000/acme/shop:draft-x-abcdef0,push=true,registry.insecure=true"
        )));
        assert!(
            args.iter()
                .any(|a| a.starts_with("--import-cache=type=registry,ref=127.0.0.1:5000/acme/shop:draft-buildcache"))
        );
        // The token is in the Secret, never in the Job.
        let stand = StandMeta {
            namespace: "draft-x".into(),
            stand_id: crate::stand::StandId::new(7),
            project: "shop".into(),
            expires_at: chrono::Utc::now(),
            service_account_token: false,
        };
        let job = serde_json::to_string(&job(&stand, &b)).unwrap();
        assert!(!job.contains("t0k"));
        assert!(job.contains("\"Unconfined\""));
    }
}
