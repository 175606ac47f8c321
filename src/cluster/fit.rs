//! Whether a rendered release fits the stand namespace's LimitRange, checked before anything is
//! applied. The LimitRanger fills in a missing limit with the namespace's default and then refuses a
//! pod whose request exceeds it, or whose request or limit exceeds the maximum: without this check a
//! chart that requests 1Gi and sets no limit installs "successfully" and its pods never appear.

use serde_yaml_ng::Value;

use crate::config::LimitsConfig;

/// One container resource the namespace would refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    /// `Deployment/app`, `Job/smoke`, …
    pub workload: String,
    pub container: String,
    /// `cpu` or `memory`.
    pub resource: &'static str,
    pub problem: String,
}

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "container {} of {}: {} {}", self.container, self.workload, self.resource, self.problem)
    }
}

/// A Kubernetes quantity (`500m`, `2`, `1.5Gi`, `128M`) in base units; `None` when it is not one.
pub fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        _ => {
            // Exponent forms: 1e3, 2E6.
            let exponent = suffix.strip_prefix(['e', 'E'])?.parse::<i32>().ok()?;
            10f64.powi(exponent)
        }
    };
    Some(number * factor)
}

/// The pod templates of the workloads in `manifests` (multi-document YAML as `helm template` prints
/// it), as `(Kind/name, pod spec)`.
fn pod_specs(manifests: &str) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(manifests) {
        let Ok(doc) = <Value as serde::Deserialize>::deserialize(document) else { continue };
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let spec = match kind.as_str() {
            "Pod" => &doc["spec"],
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &doc["spec"]["template"]["spec"],
            "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            _ => continue,
        };
        if !spec.is_null() {
            found.push((format!("{kind}/{name}"), spec.clone()));
        }
    }
    found
}

fn amount(resources: &Value, which: &str, resource: &str) -> Option<(String, f64)> {
    let value = &resources[which][resource];
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    quantity(&text).map(|q| (text, q))
}

/// Every container of the rendered workloads that the LimitRange of `limits` would refuse, and why.
pub fn misfits(manifests: &str, limits: &LimitsConfig) -> Vec<Misfit> {
    let mut out = Vec::new();
    for (workload, spec) in pod_specs(manifests) {
        let containers = spec["initContainers"].as_sequence().into_iter().chain(spec["containers"].as_sequence());
        for container in containers.flatten() {
            let name = container["name"].as_str().unwrap_or("?").to_owned();
            let resources = &container["resources"];
            let defaults = [
                ("cpu", &limits.default_cpu, &limits.default_request_cpu, &limits.max_cpu),
                ("memory", &limits.default_memory, &limits.default_request_memory, &limits.max_memory),
            ];
            for (resource, default_limit, default_request, max) in defaults {
                let (Some(default_limit_q), Some(max_q)) = (quantity(default_limit), quantity(max)) else { continue };
                let limit = amount(resources, "limits", resource);
                // What the API server ends up with: a missing request is the limit when one is set,
                // else the namespace's default request.
                let request = amount(resources, "requests", resource)
                    .or_else(|| limit.clone())
                    .or_else(|| quantity(default_request).map(|q| (format!("{default_request} (the default)"), q)));
                let mut problem = |p: String| {
                    out.push(Misfit { workload: workload.clone(), container: name.clone(), resource, problem: p })
                };
                match &limit {
                    Some((text, q)) if *q > max_q => {
                        problem(format!("limit {text} is above the namespace's maximum {max}"));
                        continue;
                    }
                    None if request.as_ref().is_some_and(|(_, r)| *r > default_limit_q) => {
                        let (text, _) = request.clone().unwrap_or_default();
                        problem(format!(
                            "request {text} with no limit: the namespace's default limit {default_limit} is below it; \
                             set resources.limits.{resource} (at most {max})"
                        ));
                        continue;
                    }
                    _ => {}
                }
                if let Some((text, q)) = &request
                    && *q > max_q
                {
                    problem(format!("request {text} is above the namespace's maximum {max}"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_reads_them() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("1Gi"), Some(1024.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("128M"), Some(128e6));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("1.5Gi"), Some(1.5 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("lots"), None);
        assert_eq!(quantity("2Q"), None);
    }

    fn deployment(resources: &str) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          resources: {resources}\n"
        )
    }

    #[test]
    fn a_request_above_the_default_limit_without_a_limit_is_refused_before_helm_runs() {
        let limits = LimitsConfig::default();
        let found = misfits(&deployment("{requests: {memory: 1Gi}}"), &limits);
        assert_eq!(found.len(), 1, "{found:?}");
        let text = found[0].to_string();
        assert!(text.contains("container app of Deployment/app: memory request 1Gi with no limit"), "{text}");
        assert!(text.contains("set resources.limits.memory"), "{text}");
    }

    #[test]
    fn what_the_limit_range_accepts_passes() {
        let limits = LimitsConfig::default();
        for ok in [
            "{}",
            "{requests: {memory: 256Mi, cpu: 100m}}",
            "{requests: {memory: 1Gi}, limits: {memory: 1Gi}}",
            "{limits: {cpu: '2', memory: 2Gi}}",
        ] {
            assert_eq!(misfits(&deployment(ok), &limits), vec![], "{ok}");
        }
    }

    #[test]
    fn above_the_maximum_is_refused_for_requests_and_limits() {
        let limits = LimitsConfig::default();
        let found = misfits(&deployment("{limits: {cpu: '4'}, requests: {memory: 3Gi}}"), &limits);
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|t| t.contains("cpu limit 4 is above the namespace's maximum 2")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("memory request 3Gi with no limit")), "{text:?}");
    }

    #[test]
    fn jobs_cron_jobs_and_init_containers_count() {
        let limits = LimitsConfig::default();
        let yaml = "kind: CronJob\nmetadata:\n  name: nightly\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          initContainers:\n            - name: wait\n              resources: {requests: {cpu: '3'}}\n          containers:\n            - name: run\n";
        let found = misfits(yaml, &limits);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].workload.as_str(), found[0].container.as_str()), ("CronJob/nightly", "wait"));
    }
}
