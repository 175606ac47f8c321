//! Probes through the API server proxy, for stands without an Ingress URL.

use std::time::Duration;

use kube::Client;

use crate::cluster::{resources, verify};

/// Probes the stand's Service through the API server proxy, for stands without an Ingress URL:
/// needs no route into the cluster, only draftd's credentials (`services/proxy` get).
///
/// The proxy passes the app's answers through verbatim, but answers in its place when it cannot
/// ask the app: no such Service (404), no right to proxy (403), no ready endpoint (503), the pod
/// not reachable (502/503, "error trying to reach service"). Those come as the API server's own
/// `Status` objects, and are told apart from the app's answers ([`verify::ProbeResult::Refused`]).
pub struct ServiceProxyProber {
    client: Client,
    namespace: String,
    service: String,
    port: String,
    path: String,
}

/// The most of an error answer read to tell whether it is the API server's: a Status is small.
const MAX_STATUS_BYTES: usize = 64 * 1024;

impl ServiceProxyProber {
    /// `port` is the Service port's number or name (`http`); `path` the app's, e.g. `/health/ready`.
    pub fn new(client: Client, namespace: &str, service: &str, port: &str, path: &str) -> Self {
        let path = format!("/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy{path}");
        Self { client, namespace: namespace.to_owned(), service: service.to_owned(), port: port.to_owned(), path }
    }

    /// `Some(why)` when an answer is the API server's own error rather than the app's: a JSON
    /// `Status` of `apiVersion: v1` with an error code.
    fn refusal(&self, code: u16, content_type: Option<&str>, body: &[u8]) -> Option<String> {
        if code < 400 || !content_type.is_some_and(|t| t.trim_start().starts_with("application/json")) {
            return None;
        }
        let status: serde_json::Value = serde_json::from_slice(body).ok()?;
        if status["kind"] != "Status" || status["apiVersion"] != "v1" {
            return None;
        }
        let reason = status["reason"].as_str().unwrap_or("");
        let message = status["message"].as_str().unwrap_or("").trim();
        let (service, ns, port) = (&self.service, &self.namespace, &self.port);
        let said = match (reason, message) {
            ("", "") => format!("the API server answered {code} in the app's place"),
            (reason, "") | ("", reason) => format!("the API server answered {code} in the app's place ({reason})"),
            (reason, message) => format!("the API server answered {code} {reason} in the app's place: {message}"),
        };
        let lower = message.to_lowercase();
        let hint = if code == 404 {
            format!(
                "there is no Service {service} in namespace {ns}; verify probes the Service named after the release, \
                 on its port `{port}`: name the chart's Service so, or set the project's `host` to probe its URL"
            )
        } else if code == 403 {
            format!(
                "draftd may not proxy to Services in {ns}: it needs `get` on `services/proxy` there (deploy/rbac.yaml's \
                 draftd-stand role, bound by [cluster] service_account and stand_role)"
            )
        } else if lower.contains("no endpoints available") {
            format!(
                "no ready pod backs Service {service} on port `{port}` (none is ready, or the Service has no such port)"
            )
        } else if code == 502
            || lower.contains("error trying to reach service")
            || lower.contains("dial tcp")
            || lower.contains("while dialing")
        {
            format!(
                "the API server could not reach the pod behind Service {service}: the NetworkPolicy {} blocks the API \
                 server unless its addresses are allowed in ([[cluster.ingress_from]] with cidr = \"<API server address>/32\"), \
                 or the project sets a `host` so verify probes the stand's URL instead",
                resources::DENY_ALL_NAME
            )
        } else {
            String::new()
        };
        let target = format!("Service {service}:{port} in {ns}");
        Some(if hint.is_empty() { format!("{target}: {said}") } else { format!("{target}: {said}; {hint}") })
    }
}

impl verify::Prober for ServiceProxyProber {
    async fn probe(&self, timeout: Duration) -> verify::ProbeResult {
        use http_body_util::BodyExt;
        let request = match axum::http::Request::get(&self.path).body(Vec::new()) {
            Ok(request) => request,
            Err(e) => return verify::ProbeResult::Refused(format!("{} is not a valid request path: {e}", self.path)),
        };
        let answer = async {
            let response = self.client.send(request.map(kube::client::Body::from)).await?;
            let code = response.status().as_u16();
            let content_type = response
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if code < 400 {
                return Ok(verify::ProbeResult::Status(code));
            }
            // Only error answers are read, and only so far: a body too long to be a Status, or
            // one that breaks off, is the app's.
            let body = match http_body_util::Limited::new(response.into_body(), MAX_STATUS_BYTES).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return Ok(verify::ProbeResult::Status(code)),
            };
            Ok::<_, kube::Error>(match self.refusal(code, content_type.as_deref(), &body) {
                Some(why) => verify::ProbeResult::Refused(why),
                None => verify::ProbeResult::Status(code),
            })
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => verify::ProbeResult::Unreachable,
            Err(_) => verify::ProbeResult::Timeout,
        }
    }

    fn target(&self) -> String {
        format!("the API server proxy {}", self.path)
    }
}
