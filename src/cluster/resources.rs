//! The objects the namespace step applies. Every one carries draftd's labels, so `kubectl get
//! -l app.kubernetes.io/managed-by=draftd` finds them and teardown and the orphan scan trust them.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec, Secret, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{EXPIRES_ANNOTATION, MANAGED_BY, PROJECT_LABEL, STAND_LABEL, StandMeta};
use crate::config::{ClusterConfig, LimitsConfig, NetworkPeer, PodSecurity, QuotaConfig};

pub const QUOTA_NAME: &str = "draftd-quota";
pub const LIMITS_NAME: &str = "draftd-limits";
pub const DENY_ALL_NAME: &str = "draftd-default-deny";
pub const ALLOW_NAME: &str = "draftd-allow";
pub const ROLE_BINDING_NAME: &str = "draftd";
/// Pods that name no service account run as `default`; the chart's pods do.
pub const SERVICE_ACCOUNT_NAME: &str = "default";
/// Namespaces carry their own name in this label (Kubernetes ≥ 1.21), which selectors can match.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub fn labels(stand: &StandMeta) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (STAND_LABEL.to_owned(), stand.stand_id.to_string()),
        (PROJECT_LABEL.to_owned(), stand.project.clone()),
    ])
}

fn meta(stand: &StandMeta, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(stand.namespace.clone()),
        labels: Some(labels(stand)),
        ..ObjectMeta::default()
    }
}

/// The namespace; with `pod_security`, labelled for Pod Security admission to enforce that level
/// (and warn and audit at it), so nothing in the stand runs with more than the cluster allows.
pub fn namespace(stand: &StandMeta, pod_security: Option<PodSecurity>) -> Namespace {
    let mut labels = labels(stand);
    if let Some(level) = pod_security {
        for mode in ["enforce", "warn", "audit"] {
            labels.insert(format!("pod-security.kubernetes.io/{mode}"), level.as_str().to_owned());
        }
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(stand.namespace.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                EXPIRES_ANNOTATION.to_owned(),
                super::expiry_annotation(stand.expires_at),
            )])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn quantities<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, Quantity> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), Quantity(v.to_owned()))).collect()
}

pub fn resource_quota(stand: &StandMeta, q: &QuotaConfig) -> ResourceQuota {
    let (pods, pvcs) = (q.pods.to_string(), q.persistent_volume_claims.to_string());
    ResourceQuota {
        metadata: meta(stand, QUOTA_NAME),
        spec: Some(ResourceQuotaSpec {
            hard: Some(quantities([
                ("requests.cpu", q.requests_cpu.as_str()),
                ("requests.memory", q.requests_memory.as_str()),
                ("limits.cpu", q.limits_cpu.as_str()),
                ("limits.memory", q.limits_memory.as_str()),
                ("pods", pods.as_str()),
                ("persistentvolumeclaims", pvcs.as_str()),
                ("requests.storage", q.requests_storage.as_str()),
                // A stand is reached through the shared ingress, never its own cloud load balancer.
                ("services.loadbalancers", "0"),
                ("services.nodeports", "0"),
            ])),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

pub fn limit_range(stand: &StandMeta, l: &LimitsConfig) -> LimitRange {
    let cpu_memory = |cpu: &str, memory: &str| Some(quantities([("cpu", cpu), ("memory", memory)]));
    LimitRange {
        metadata: meta(stand, LIMITS_NAME),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".to_owned(),
                default_request: cpu_memory(&l.default_request_cpu, &l.default_request_memory),
                default: cpu_memory(&l.default_cpu, &l.default_memory),
                max: cpu_memory(&l.max_cpu, &l.max_memory),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

fn namespace_peer(name: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn same_namespace_peer() -> NetworkPolicyPeer {
    NetworkPolicyPeer { pod_selector: Some(LabelSelector::default()), ..NetworkPolicyPeer::default() }
}

/// Nothing in or out, for every pod of the namespace; [`allow_policy`] then opens what a stand needs.
pub fn deny_all_policy(stand: &StandMeta) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(stand, DENY_ALL_NAME),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// A configured peer as the policy names it.
fn peer(p: &NetworkPeer) -> NetworkPolicyPeer {
    match (&p.namespace, &p.cidr) {
        (_, Some(cidr)) => {
            NetworkPolicyPeer { ip_block: Some(IPBlock { cidr: cidr.clone(), except: None }), ..Default::default() }
        }
        (namespace, None) => NetworkPolicyPeer {
            pod_selector: (!p.pods.is_empty())
                .then(|| LabelSelector { match_labels: Some(p.pods.clone()), ..LabelSelector::default() }),
            ..namespace_peer(namespace.as_deref().unwrap_or_default())
        },
    }
}

fn tcp_ports(ports: &[u16]) -> Option<Vec<NetworkPolicyPort>> {
    let ports: Vec<_> = ports
        .iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(i32::from(*p))),
            protocol: Some("TCP".to_owned()),
            ..NetworkPolicyPort::default()
        })
        .collect();
    (!ports.is_empty()).then_some(ports)
}

/// Where a stand's pods reach the stand database (`[postgres] host`, or the admin URL's host), as a
/// peer: an in-cluster Service name `<service>.<namespace>.svc[.<cluster domain>]` becomes its
/// namespace (Service addresses are translated to pod addresses before policies apply, so no ipBlock
/// can match one), an IP address becomes that one address. Any other name is outside what a policy
/// can express: `egress_to` with the database's `cidr` then.
pub fn database_peer(host: &str) -> Option<NetworkPeer> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            (name, port.parse().ok()?)
        }
        _ => (host, 5432),
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        return Some(NetworkPeer { cidr: Some(format!("{ip}/{bits}")), ports: vec![port], ..NetworkPeer::default() });
    }
    let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    match labels.as_slice() {
        [_service, namespace, "svc", ..] if crate::stand::is_dns_label(namespace) => {
            Some(NetworkPeer { namespace: Some((*namespace).to_owned()), ports: vec![port], ..NetworkPeer::default() })
        }
        _ => None,
    }
}

/// In: from the stand's own pods, the ingress controller's namespace and `ingress_from`. Out: to the
/// stand's own pods, DNS (`dns_to`), `egress_cidrs`, `egress_to` and the stand database (`database`,
/// see [`database_peer`]).
pub fn allow_policy(stand: &StandMeta, cluster: &ClusterConfig, database: Option<&NetworkPeer>) -> NetworkPolicy {
    let dns_ports = ["UDP", "TCP"]
        .iter()
        .map(|protocol| NetworkPolicyPort {
            port: Some(IntOrString::Int(53)),
            protocol: Some((*protocol).to_owned()),
            ..NetworkPolicyPort::default()
        })
        .collect();
    let mut egress = vec![
        NetworkPolicyEgressRule { to: Some(vec![same_namespace_peer()]), ..NetworkPolicyEgressRule::default() },
        NetworkPolicyEgressRule { to: Some(cluster.dns_to.iter().map(peer).collect()), ports: Some(dns_ports) },
    ];
    if !cluster.egress_cidrs.is_empty() {
        let to = cluster
            .egress_cidrs
            .iter()
            .map(|cidr| NetworkPolicyPeer {
                ip_block: Some(IPBlock { cidr: cidr.clone(), except: None }),
                ..NetworkPolicyPeer::default()
            })
            .collect();
        egress.push(NetworkPolicyEgressRule { to: Some(to), ..NetworkPolicyEgressRule::default() });
    }
    // One rule per peer: each has its own ports.
    for p in cluster.egress_to.iter().chain(database) {
        egress.push(NetworkPolicyEgressRule { to: Some(vec![peer(p)]), ports: tcp_ports(&p.ports) });
    }
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(
            std::iter::once(same_namespace_peer())
                .chain((!cluster.ingress_namespace.is_empty()).then(|| namespace_peer(&cluster.ingress_namespace)))
                .collect(),
        ),
        ..NetworkPolicyIngressRule::default()
    }];
    for p in &cluster.ingress_from {
        ingress.push(NetworkPolicyIngressRule { from: Some(vec![peer(p)]), ports: tcp_ports(&p.ports) });
    }
    NetworkPolicy {
        metadata: meta(stand, ALLOW_NAME),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

/// The namespace's `default` service account, without an API token unless the project asks.
pub fn service_account(stand: &StandMeta) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(stand, SERVICE_ACCOUNT_NAME),
        automount_service_account_token: Some(stand.service_account_token),
        ..ServiceAccount::default()
    }
}

/// Grants draftd's ServiceAccount (`namespace/name`) the `role` ClusterRole inside the stand's
/// namespace only.
pub fn role_binding(stand: &StandMeta, service_account: &str, role: &str) -> RoleBinding {
    let (sa_namespace, sa_name) = service_account.split_once('/').unwrap_or(("default", service_account));
    RoleBinding {
        metadata: meta(stand, ROLE_BINDING_NAME),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: role.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: sa_name.to_owned(),
            namespace: Some(sa_namespace.to_owned()),
            ..Subject::default()
        }]),
    }
}

/// The pod-template annotation that carries a checksum of the stand's Secrets: when credentials
/// rotate, changing it rolls the Deployment so pods pick the new values up.
pub const SECRETS_CHECKSUM_ANNOTATION: &str = "draftd.io/secrets-checksum";

/// A Secret of the stand's credentials or KV values. Values go in `data` (bytes), never in labels,
/// annotations or anything draftd logs.
pub fn secret(stand: &StandMeta, name: &str, data: &BTreeMap<String, SecretString>) -> Secret {
    Secret {
        metadata: meta(stand, name),
        type_: Some("Opaque".to_owned()),
        data: Some(data.iter().map(|(k, v)| (k.clone(), ByteString(v.expose_secret().as_bytes().to_vec()))).collect()),
        ..Secret::default()
    }
}

/// The stand's image pull Secret: one registry's login, as the kubelet reads it.
pub const PULL_SECRET_NAME: &str = "draftd-registry";

/// A `kubernetes.io/dockerconfigjson` Secret holding `dockerconfigjson`.
pub fn pull_secret(stand: &StandMeta, dockerconfigjson: &SecretString) -> Secret {
    Secret {
        metadata: meta(stand, PULL_SECRET_NAME),
        type_: Some("kubernetes.io/dockerconfigjson".to_owned()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_owned(),
            ByteString(dockerconfigjson.expose_secret().as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// Only the `default` ServiceAccount's pull Secrets: applied by a field manager of its own, so the
/// namespace step's apply of the same account neither removes them nor fights over them.
pub fn service_account_pull_secrets(stand: &StandMeta) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(SERVICE_ACCOUNT_NAME.to_owned()),
            namespace: Some(stand.namespace.clone()),
            ..ObjectMeta::default()
        },
        image_pull_secrets: Some(vec![k8s_openapi::api::core::v1::LocalObjectReference {
            name: PULL_SECRET_NAME.to_owned(),
        }]),
        ..ServiceAccount::default()
    }
}

/// SHA-256 over the sorted keys and values, hex: changes exactly when some value does.
pub fn secrets_checksum(data: &BTreeMap<String, SecretString>) -> String {
    let mut hash = Sha256::new();
    for (k, v) in data {
        hash.update(k.as_bytes());
        hash.update([0]);
        hash.update(v.expose_secret().as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stand() -> StandMeta {
        StandMeta {
            namespace: "draft-x".into(),
            stand_id: crate::stand::StandId::new(1),
            project: "shop".into(),
            expires_at: chrono::Utc::now(),
            service_account_token: false,
        }
    }

    fn spec(cluster: &ClusterConfig, database: Option<&NetworkPeer>) -> serde_json::Value {
        serde_json::to_value(allow_policy(&stand(), cluster, database).spec).unwrap()
    }

    #[test]
    fn the_stand_database_is_let_out_by_namespace_or_address_never_by_a_service_ip() {
        let peer = database_peer("pg.db.svc:5432").unwrap();
        assert_eq!((peer.namespace.as_deref(), peer.ports.as_slice()), (Some("db"), &[5432][..]));
        let peer = database_peer("pg.db.svc.cluster.local").unwrap();
        assert_eq!((peer.namespace.as_deref(), peer.ports.as_slice()), (Some("db"), &[5432][..]));
        let peer = database_peer("10.1.2.3:6432").unwrap();
        assert_eq!((peer.cidr.as_deref(), peer.ports.as_slice()), (Some("10.1.2.3/32"), &[6432][..]));
        assert_eq!(database_peer("[fd00::5]:5432").unwrap().cidr.as_deref(), Some("fd00::5/128"));
        assert_eq!(database_peer("db.example.com:5432"), None, "an outside name cannot be a policy peer");

        let with = spec(&ClusterConfig::default(), database_peer("pg.db.svc:5432").as_ref());
        let rule = with["egress"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(rule["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "db");
        assert_eq!(rule["ports"], serde_json::json!([{ "port": 5432, "protocol": "TCP" }]));
        let without = spec(&ClusterConfig::default(), None);
        assert_eq!(without["egress"].as_array().unwrap().len(), 2, "own namespace and DNS only: {without}");
    }

    #[test]
    fn dns_and_ingress_peers_are_configurable() {
        let cluster = ClusterConfig {
            ingress_namespace: String::new(),
            ingress_from: vec![NetworkPeer {
                namespace: Some("kube-system".into()),
                pods: [("app.kubernetes.io/name".to_owned(), "traefik".to_owned())].into(),
                ..NetworkPeer::default()
            }],
            dns_to: vec![
                NetworkPeer { cidr: Some("169.254.20.10/32".into()), ..NetworkPeer::default() },
                NetworkPeer {
                    namespace: Some("kube-system".into()),
                    pods: [("k8s-app".to_owned(), "kube-dns".to_owned())].into(),
                    ..NetworkPeer::default()
                },
            ],
            ..ClusterConfig::default()
        };
        let spec = spec(&cluster, None);
        let dns = &spec["egress"][1];
        assert_eq!(dns["to"][0]["ipBlock"]["cidr"], "169.254.20.10/32", "NodeLocal DNSCache: {dns}");
        assert_eq!(dns["to"][1]["podSelector"]["matchLabels"]["k8s-app"], "kube-dns");
        assert_eq!(dns["ports"].as_array().unwrap().len(), 2, "UDP and TCP 53");
        let ingress = spec["ingress"].as_array().unwrap();
        assert_eq!(ingress[0]["from"].as_array().unwrap().len(), 1, "no ingress namespace: own pods only");
        assert_eq!(
            ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "kube-system"
        );
        assert_eq!(ingress[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "traefik");
    }
}
