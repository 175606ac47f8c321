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
use crate::config::{ClusterConfig, LimitsConfig, QuotaConfig};

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

pub fn namespace(stand: &StandMeta) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(stand.namespace.clone()),
            labels: Some(labels(stand)),
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

/// In: from the stand's own pods and the ingress controller. Out: to the stand's own pods, cluster
/// DNS, and the configured CIDRs (the stand database's host, say).
pub fn allow_policy(stand: &StandMeta, cluster: &ClusterConfig) -> NetworkPolicy {
    let dns = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("k8s-app".to_owned(), "kube-dns".to_owned())])),
            ..LabelSelector::default()
        }),
        ..namespace_peer("kube-system")
    };
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
        NetworkPolicyEgressRule { to: Some(vec![dns]), ports: Some(dns_ports) },
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
    NetworkPolicy {
        metadata: meta(stand, ALLOW_NAME),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![same_namespace_peer(), namespace_peer(&cluster.ingress_namespace)]),
                ..NetworkPolicyIngressRule::default()
            }]),
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
