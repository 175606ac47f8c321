//! `[sleep]`: idle stands scaled to zero and woken on their first request (DESIGN.md's sleep / wake).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SleepConfig {
    /// Whether the sweep puts idle stands to sleep; a project can turn it off for itself.
    pub enabled: bool,
    /// A stand with no activity (deploy, command, API or dashboard action, wake) for this long is
    /// put to sleep by the sweep. Most stands are looked at for minutes, then sit for hours.
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
    /// How long a request for a sleeping stand is held while the stand wakes, before the answer
    /// says to come back (a redirect to the same URL for a browser, 503 with Retry-After for the rest).
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// Where requests for sleeping stands arrive (what the stands' Ingresses name as their
    /// `default-backend`, through an ExternalName Service): a listener of its own, so no path of a
    /// stand's app reaches draftd's API. Without it, nothing wakes a stand on a request.
    pub listen: Option<std::net::SocketAddr>,
    /// How the stands' ingress reaches `listen`, as `name:port` (e.g.
    /// `draftd-wake.draftd.svc.cluster.local:8081`): each stand's chart gets an ExternalName Service
    /// for it and the ingress-nginx annotations that send its requests there while it sleeps.
    pub wake_service: Option<WakeService>,
    /// Prometheus with the ingress controller's request counter; without it, requests to a stand
    /// are not counted as activity (only runs are).
    #[serde(default, deserialize_with = "optional_url")]
    pub prometheus_url: Option<String>,
    /// The instant query for requests per stand namespace over `{window}`.
    pub traffic_query: String,
    /// The label of `traffic_query`'s result that names the namespace: `exported_namespace` when
    /// Prometheus scrapes the controller with `honor_labels: false` (a ServiceMonitor's default).
    pub traffic_label: String,
    /// The window each sweep asks about: at least the time between sweeps, so no request falls
    /// between two.
    #[serde(with = "humantime_serde")]
    pub traffic_window: Duration,
    /// Stands put to sleep by one sweep, at most: a fleet left idle over a weekend sleeps over a
    /// few sweeps rather than in one burst of scale calls.
    pub max_per_sweep: u32,
}

impl Default for SleepConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            idle_after: Duration::from_secs(30 * 60),
            hold: Duration::from_secs(20),
            listen: None,
            wake_service: None,
            prometheus_url: None,
            traffic_query:
                "sum by (namespace) (increase(nginx_ingress_controller_requests{namespace=~\"draft-.*\"}[{window}]))"
                    .to_owned(),
            traffic_label: "namespace".to_owned(),
            traffic_window: Duration::from_secs(10 * 60),
            max_per_sweep: 100,
        }
    }
}

/// `[sleep] wake_service`: a DNS name and a port, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WakeService {
    pub name: String,
    pub port: u16,
}

impl TryFrom<String> for WakeService {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let bad = || format!("{text:?} is not `name:port` (e.g. draftd-wake.draftd.svc.cluster.local:8081)");
        let (name, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let dns = !name.is_empty() && name.len() <= 253 && name.split('.').all(crate::stand::is_dns_label);
        if !dns || port == 0 {
            return Err(bad());
        }
        Ok(WakeService { name: name.to_owned(), port })
    }
}

impl From<WakeService> for String {
    fn from(w: WakeService) -> String {
        format!("{}:{}", w.name, w.port)
    }
}

/// A project's `sleep` table: what it changes of `[sleep]` for its own stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectSleep {
    pub enabled: Option<bool>,
    #[serde(with = "humantime_serde")]
    pub idle_after: Option<Duration>,
}

impl SleepConfig {
    /// How long the project's stands may be idle before they sleep; `None` when they never do.
    pub fn idle_after_for(&self, project: &ProjectSleep) -> Option<Duration> {
        project.enabled.unwrap_or(self.enabled).then(|| project.idle_after.unwrap_or(self.idle_after))
    }
}

fn optional_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(url) if !url.contains("://") => Err(serde::de::Error::custom("must be a URL with a scheme")),
        url => Ok(url),
    }
}
