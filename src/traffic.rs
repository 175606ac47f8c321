//! Requests to the stands, as the ingress controller counts them in Prometheus: the part of a
//! stand's activity that no run shows. One instant query per sweep for every stand namespace
//! (ingress-nginx's `nginx_ingress_controller_requests` by default), never one per stand.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use serde::Deserialize;

use crate::config::SleepConfig;
use crate::stand::Failure;

/// Why the requests could not be counted. The URL is named; Prometheus has no credentials here.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("prometheus at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("prometheus at {url} refused the query ({status}): {message}")]
    Refused { url: String, status: u16, message: String },
    #[error("prometheus at {url}: unexpected answer: {message}")]
    Answer { url: String, message: String },
}

impl Failure for TrafficError {
    fn is_transient(&self) -> bool {
        matches!(self, TrafficError::Unreachable { .. })
            || matches!(self, TrafficError::Refused { status, .. } if *status >= 500)
    }

    fn label(&self) -> &'static str {
        match self {
            TrafficError::Unreachable { .. } => "prometheus_unreachable",
            TrafficError::Refused { .. } => "prometheus_refused",
            TrafficError::Answer { .. } => "prometheus_answer",
        }
    }
}

/// Where requests to the stands are counted.
pub trait Traffic: Send + Sync {
    /// Requests per stand namespace over the last `window`; a namespace without any is absent.
    fn requests(&self, window: Duration) -> impl Future<Output = Result<BTreeMap<String, f64>, TrafficError>> + Send;
}

/// Prometheus's HTTP API, `GET /api/v1/query`.
pub struct Prometheus {
    http: reqwest::Client,
    url: String,
    query: String,
    label: String,
}

impl Prometheus {
    /// From `[sleep]`; `None` without `prometheus_url`.
    pub fn from_config(sleep: &SleepConfig) -> Option<Prometheus> {
        let url = sleep.prometheus_url.clone()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a client without TLS settings of its own always builds");
        Some(Prometheus { http, url, query: sleep.traffic_query.clone(), label: sleep.traffic_label.clone() })
    }

    /// The query for `window`: `{window}` in the configured query becomes e.g. `600s`.
    fn query_for(&self, window: Duration) -> String {
        self.query.replace("{window}", &format!("{}s", window.as_secs().max(1)))
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    metric: BTreeMap<String, String>,
    /// `[unix seconds, "value"]`: the value is a string, to carry NaN and infinities.
    value: (f64, String),
}

impl Traffic for Prometheus {
    async fn requests(&self, window: Duration) -> Result<BTreeMap<String, f64>, TrafficError> {
        let endpoint = format!("{}/api/v1/query", self.url.trim_end_matches('/'));
        let unreachable =
            |e: reqwest::Error| TrafficError::Unreachable { url: self.url.clone(), message: e.to_string() };
        let response =
            self.http.get(&endpoint).query(&[("query", self.query_for(window))]).send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(unreachable)?;
        let answer: Answer = serde_json::from_str(&body)
            .map_err(|e| TrafficError::Answer { url: self.url.clone(), message: format!("{e} (HTTP {status})") })?;
        if answer.status != "success" {
            let message = answer.error.unwrap_or_else(|| "no error given".into());
            return Err(TrafficError::Refused { url: self.url.clone(), status, message });
        }
        let data =
            answer.data.ok_or_else(|| TrafficError::Answer { url: self.url.clone(), message: "no data".into() })?;
        if data.result_type != "vector" {
            let message = format!("a {} where the query should give a vector", data.result_type);
            return Err(TrafficError::Answer { url: self.url.clone(), message });
        }
        let mut counts = BTreeMap::new();
        for sample in data.result {
            let (Some(namespace), Ok(n)) = (sample.metric.get(&self.label), sample.value.1.parse::<f64>()) else {
                continue;
            };
            // `increase` extrapolates: a handful of requests can read 3.65, none reads 0.
            if n > 0.0 {
                *counts.entry(namespace.clone()).or_insert(0.0) += n;
            }
        }
        Ok(counts)
    }
}
