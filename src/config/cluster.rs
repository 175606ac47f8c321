//! `[cluster]`: how draftd reaches Kubernetes and what isolates each stand namespace (quota, limit
//! range, network policy peers, verify's probes).
//!
//! Values the API server would refuse in the middle of a run (quantities, CIDRs, namespace names,
//! label selectors) are parsed when the file is read, so a loaded [`ClusterConfig`] holds none.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::checked;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterMode {
    Kubernetes,
    /// Render and record under `dry_run_dir`, apply nothing: the default, so a first run is harmless.
    #[default]
    DryRun,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub mode: ClusterMode,
    /// Where dry-run mode writes each stand's rendered manifests.
    pub dry_run_dir: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// The Helm 4 binary; default: `.tools/bin/helm` when scripts/install-tools.sh put it there, else PATH.
    pub helm_path: Option<PathBuf>,
    /// One helm command may take this long before it is killed and counted a transient failure.
    #[serde(with = "humantime_serde")]
    pub helm_timeout: Duration,
    /// Revisions helm keeps per stand release (`--history-max`); older ones are pruned, and a pruned
    /// revision is no rollback target any more.
    pub helm_history_max: u32,
    /// The Pod Security Standard stand namespaces enforce (`baseline` or `restricted`); unset leaves
    /// the cluster's default. draftd's own Jobs meet `restricted`, and so does charts/stand.
    pub pod_security: Option<PodSecurity>,
    /// The ingress controller's namespace, whose pods may open connections to a stand; empty for none
    /// (then list the controller in `ingress_from`).
    #[serde(deserialize_with = "namespace_or_empty")]
    pub ingress_namespace: String,
    /// Who else may connect to a stand's pods: an ingress controller in kube-system or on the host
    /// network (by `cidr`), the API server for verify's proxy probe on multi-node clusters.
    pub ingress_from: Vec<NetworkPeer>,
    /// Where a stand's pods may connect outside their namespace besides cluster DNS, as CIDRs of
    /// hosts outside the cluster (all ports). Everything else is denied.
    #[serde(deserialize_with = "cidrs")]
    pub egress_cidrs: Vec<String>,
    /// Where else a stand's pods may connect: in-cluster services by namespace (and pod labels), and
    /// external hosts by `cidr`, on the given ports. The stand database of `[postgres] host` is
    /// added by itself when it is an in-cluster Service name or an IP address.
    pub egress_to: Vec<NetworkPeer>,
    /// Where a stand's pods may send DNS queries (UDP and TCP 53): by default the cluster's kube-dns
    /// pods. NodeLocal DNSCache listens on a link-local address on each node: add its `cidr`
    /// (169.254.20.10/32 by default) beside kube-dns.
    pub dns_to: Vec<NetworkPeer>,
    pub quota: QuotaConfig,
    pub limits: LimitsConfig,
    /// draftd's own ServiceAccount as `namespace/name`: the namespace step binds `stand_role` to it
    /// inside each stand namespace (deploy/rbac.yaml). Unset: no RoleBinding, for a draftd that
    /// runs with rights granted otherwise (a developer's kubeconfig).
    #[serde(deserialize_with = "service_account")]
    pub service_account: Option<String>,
    /// The ClusterRole holding draftd's rights inside a stand namespace.
    pub stand_role: String,
    pub verify: VerifyConfig,
    /// The migrate and smoke Jobs are killed after this long.
    #[serde(with = "humantime_serde")]
    pub job_deadline: Duration,
    /// How long teardown waits for a namespace to be gone before reporting what holds it.
    #[serde(with = "humantime_serde")]
    pub teardown_wait: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            mode: ClusterMode::default(),
            dry_run_dir: PathBuf::from("stands"),
            kubeconfig: None,
            context: None,
            helm_path: None,
            helm_timeout: Duration::from_secs(300),
            helm_history_max: 10,
            pod_security: None,
            ingress_namespace: "ingress-nginx".into(),
            ingress_from: Vec::new(),
            egress_cidrs: Vec::new(),
            egress_to: Vec::new(),
            dns_to: vec![NetworkPeer {
                namespace: Some("kube-system".into()),
                pods: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
                ..NetworkPeer::default()
            }],
            quota: QuotaConfig::default(),
            limits: LimitsConfig::default(),
            service_account: None,
            stand_role: "draftd-stand".into(),
            verify: VerifyConfig::default(),
            job_deadline: Duration::from_secs(600),
            teardown_wait: Duration::from_secs(300),
        }
    }
}

/// How the verify step decides a stand is healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Every Deployment and StatefulSet of the release must have rolled out within this.
    #[serde(with = "humantime_serde")]
    pub rollout_timeout: Duration,
    /// The app's path probed after the rollout (the chart's readiness path).
    #[serde(deserialize_with = "probe_path")]
    pub probe_path: String,
    /// Probes spread over `probe_window`: a stand that answers once and then crashes is caught.
    pub probes: u32,
    #[serde(with = "humantime_serde")]
    pub probe_window: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// `host:port` of the ingress controller: stands with a host are probed there in plain HTTP with
    /// their host as the Host header, instead of at their public URL (before DNS or a certificate
    /// exist, or where draftd cannot resolve stand hosts). E.g.
    /// `ingress-nginx-controller.ingress-nginx.svc:80`.
    pub ingress_address: Option<String>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            rollout_timeout: Duration::from_secs(300),
            probe_path: "/health/ready".into(),
            probes: 5,
            probe_window: Duration::from_secs(20),
            probe_timeout: Duration::from_secs(5),
            ingress_address: None,
        }
    }
}

/// The ResourceQuota of each stand namespace: one stand is a preview, not a production copy, and a
/// runaway stand must not starve the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Sum of CPU requests: the app, three mocks and a job at their defaults fit with room to spare.
    pub requests_cpu: Quantity,
    pub requests_memory: Quantity,
    pub limits_cpu: Quantity,
    pub limits_memory: Quantity,
    /// Pods, counting rollouts' surge and the migrate and smoke Jobs.
    pub pods: u32,
    pub persistent_volume_claims: u32,
    pub requests_storage: Quantity,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            requests_cpu: Quantity::known("2"),
            requests_memory: Quantity::known("4Gi"),
            limits_cpu: Quantity::known("4"),
            limits_memory: Quantity::known("8Gi"),
            pods: 20,
            persistent_volume_claims: 5,
            requests_storage: Quantity::known("10Gi"),
        }
    }
}

/// The LimitRange of each stand namespace: what a container gets when its chart sets nothing (so the
/// quota can be enforced at all), and the most one container may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub default_request_cpu: Quantity,
    pub default_request_memory: Quantity,
    pub default_cpu: Quantity,
    pub default_memory: Quantity,
    pub max_cpu: Quantity,
    pub max_memory: Quantity,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            default_request_cpu: Quantity::known("50m"),
            default_request_memory: Quantity::known("64Mi"),
            default_cpu: Quantity::known("500m"),
            default_memory: Quantity::known("512Mi"),
            max_cpu: Quantity::known("2"),
            max_memory: Quantity::known("2Gi"),
        }
    }
}

/// A plain Kubernetes quantity: a decimal number with an optional SI or binary suffix (`500m`, `2`,
/// `4Gi`), as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Quantity(String);

/// A value that is not a [`Quantity`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes quantity such as 500m, 2 or 4Gi")]
pub struct NotAQuantity(pub String);

impl Quantity {
    pub fn parse(text: &str) -> Result<Quantity, NotAQuantity> {
        let number = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let suffix = &text[number.len()..];
        let mut parts = number.splitn(2, '.');
        let whole = parts.next().unwrap_or("");
        let frac = parts.next();
        let valid = !whole.is_empty()
            && whole.bytes().all(|b| b.is_ascii_digit())
            && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
            && ["", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].contains(&suffix);
        if valid { Ok(Quantity(text.to_owned())) } else { Err(NotAQuantity(text.to_owned())) }
    }

    /// The defaults above, which are quantities by sight.
    fn known(text: &'static str) -> Quantity {
        Quantity(text.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Quantity {
    type Error = NotAQuantity;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Quantity::parse(&text)
    }
}

impl From<Quantity> for String {
    fn from(q: Quantity) -> String {
        q.0
    }
}

impl std::ops::Deref for Quantity {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for Quantity {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A level of the Pod Security Standards, as the `pod-security.kubernetes.io/*` labels take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurity {
    Privileged,
    Baseline,
    Restricted,
}

impl PodSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurity::Privileged => "privileged",
            PodSecurity::Baseline => "baseline",
            PodSecurity::Restricted => "restricted",
        }
    }
}

/// One peer of a stand's NetworkPolicies: a namespace (all its pods, or those with `pods` labels),
/// or an address range outside the pod network (`cidr`: host-network pods, nodes, the API server,
/// hosts outside the cluster). Service addresses are translated to pod addresses before policies
/// apply, so an in-cluster Service is named by its namespace and pods, never by a `cidr`, and
/// `ports` are the pods' ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PeerFields")]
pub struct NetworkPeer {
    pub namespace: Option<String>,
    pub pods: BTreeMap<String, String>,
    pub cidr: Option<String>,
    /// TCP ports; empty for all.
    pub ports: Vec<u16>,
}

/// A [`NetworkPeer`] as written, before it is known to name exactly one kind of peer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFields {
    namespace: Option<String>,
    #[serde(default)]
    pods: BTreeMap<String, String>,
    cidr: Option<String>,
    #[serde(default)]
    ports: Vec<u16>,
}

impl TryFrom<PeerFields> for NetworkPeer {
    type Error = String;

    /// A peer names a namespace or an address range, never both or neither; labels and ports are valid.
    fn try_from(p: PeerFields) -> Result<Self, String> {
        match (&p.namespace, &p.cidr) {
            (Some(ns), None) if crate::stand::is_dns_label(ns) => {}
            (Some(ns), None) => return Err(format!("namespace {ns:?} is not a namespace name")),
            (None, Some(cidr)) if !is_cidr(cidr) => return Err(format!("{cidr:?} is not a CIDR")),
            (None, Some(_)) if !p.pods.is_empty() => {
                return Err("`pods` selects pods within a `namespace`; a `cidr` takes no pod labels".into());
            }
            (None, Some(_)) => {}
            _ => return Err("set exactly one of `namespace` (with optional `pods` labels) or `cidr`".into()),
        }
        if let Some((k, v)) = p.pods.iter().find(|(k, v)| k.is_empty() || k.len() > 317 || v.len() > 63) {
            return Err(format!("{k:?} = {v:?} is not a label selector"));
        }
        if p.ports.contains(&0) {
            return Err("ports run from 1 to 65535".into());
        }
        Ok(NetworkPeer { namespace: p.namespace, pods: p.pods, cidr: p.cidr, ports: p.ports })
    }
}

/// `address/prefix`, IPv4 or IPv6, as a NetworkPolicy's ipBlock takes it.
fn is_cidr(s: &str) -> bool {
    let Some((addr, prefix)) = s.split_once('/') else { return false };
    let Ok(prefix) = prefix.parse::<u8>() else { return false };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

/// One CIDR of a list, read element by element so an error names its index.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Cidr(String);

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if is_cidr(&s) { Ok(Cidr(s)) } else { Err(format!("{s:?} is not a CIDR")) }
    }
}

fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<Cidr>::deserialize(d)?.into_iter().map(|c| c.0).collect())
}

fn namespace_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |ns: &String| {
        (ns.is_empty() || crate::stand::is_dns_label(ns))
            .then_some(())
            .ok_or_else(|| "must be a namespace name (a DNS label), or empty".to_owned())
    })
}

fn service_account<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |sa: &Option<String>| {
        let Some(sa) = sa else { return Ok(()) };
        let valid = sa.split_once('/').is_some_and(|(ns, name)| {
            crate::stand::is_dns_label(ns) && !name.is_empty() && name.len() <= 253 && !name.contains('/')
        });
        if valid { Ok(()) } else { Err(format!("{sa:?} is not namespace/name")) }
    })
}

fn probe_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |path: &String| {
        if path.starts_with('/') {
            Ok(())
        } else {
            Err(format!("{path:?} must start with `/` (it is appended to the stand's URL)"))
        }
    })
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;

    use super::*;
    use crate::config::Config;

    fn load(jail: &Jail) -> Result<Config, crate::config::ConfigError> {
        Config::load(Some(&jail.directory().join("draftd.toml")))
    }

    #[test]
    fn cluster_isolation_settings_are_checked_at_start() {
        let cases = [
            ("[cluster.quota]\nrequests_memory = \"4 gigs\"\n", "cluster.quota.requests_memory"),
            ("[cluster.limits]\nmax_cpu = \"2.\"\n", "cluster.limits.max_cpu"),
            ("[cluster]\negress_cidrs = [\"10.0.0.0/8\", \"10.0.0.1\"]\n", "cluster.egress_cidrs[1]"),
            ("[cluster]\negress_cidrs = [\"10.0.0.0/33\"]\n", "cluster.egress_cidrs[0]"),
            ("[cluster]\ningress_namespace = \"Ingress_NGINX\"\n", "cluster.ingress_namespace"),
            ("[cluster]\nservice_account = \"draftd\"\n", "cluster.service_account"),
            ("[[cluster.egress_to]]\nnamespace = \"db\"\ncidr = \"10.0.0.0/8\"\n", "cluster.egress_to[0]"),
            ("[[cluster.egress_to]]\nports = [5432]\n", "cluster.egress_to[0]"),
            ("[[cluster.ingress_from]]\ncidr = \"10.0.0.0/8\"\npods = { app = \"x\" }\n", "cluster.ingress_from[0]"),
            ("[[cluster.dns_to]]\ncidr = \"169.254.20.10\"\n", "cluster.dns_to[0]"),
            ("[[cluster.egress_to]]\nnamespace = \"DB\"\n", "cluster.egress_to[0]"),
            ("[cluster.verify]\nprobe_path = \"health\"\n", "cluster.verify.probe_path"),
        ];
        for (text, key) in cases {
            Jail::expect_with(|jail| {
                jail.create_file("draftd.toml", text)?;
                let err = load(jail).unwrap_err().to_string();
                assert!(err.contains(key), "{text}: {err}");
                Ok(())
            });
        }
        Jail::expect_with(|jail| {
            let text =
                "[cluster]\negress_cidrs = [\"10.0.0.0/8\", \"fd00::/64\"]\n[cluster.quota]\nrequests_cpu = \"1.5\"\n";
            jail.create_file("draftd.toml", text)?;
            let c = load(jail).unwrap();
            assert_eq!(c.cluster.egress_cidrs.len(), 2);
            assert_eq!(c.cluster.quota.requests_cpu, "1.5");
            assert_eq!(c.cluster.quota.requests_memory, "4Gi", "unset keys keep their defaults");
            Ok(())
        });
        Jail::expect_with(|jail| {
            let text = "[cluster]\ningress_namespace = \"\"\n[[cluster.egress_to]]\nnamespace = \"db\"\npods = { app = \"pg\" }\nports = [5432]\n[[cluster.dns_to]]\ncidr = \"169.254.20.10/32\"\n";
            jail.create_file("draftd.toml", text)?;
            let c = load(jail).unwrap();
            assert_eq!(c.cluster.egress_to[0].pods["app"], "pg");
            assert_eq!(c.cluster.dns_to.len(), 1, "dns_to replaces the kube-dns default");
            assert_eq!(ClusterConfig::default().dns_to[0].namespace.as_deref(), Some("kube-system"));
            Ok(())
        });
    }

    #[test]
    fn invalid_values_keep_their_explanations() {
        let err = Config::from_toml("[cluster.quota]\nlimits_cpu = \"lots\"\n").unwrap_err().to_string();
        assert!(err.contains("\"lots\" is not a Kubernetes quantity such as 500m, 2 or 4Gi"), "{err}");
        let err = Config::from_toml("[cluster]\ningress_namespace = \"A\"\n").unwrap_err().to_string();
        assert!(err.contains("must be a namespace name (a DNS label), or empty"), "{err}");
    }

    #[test]
    fn every_default_quantity_parses() {
        let (q, l) = (QuotaConfig::default(), LimitsConfig::default());
        for value in [&q.requests_cpu, &q.requests_memory, &q.limits_cpu, &q.limits_memory, &q.requests_storage]
            .into_iter()
            .chain([&l.default_request_cpu, &l.default_request_memory, &l.default_cpu, &l.default_memory])
            .chain([&l.max_cpu, &l.max_memory])
        {
            assert_eq!(Quantity::parse(value).as_ref(), Ok(value));
        }
    }
}
