//! Where a stand answers: its host, from the project's `host` pattern, and the address reports and
//! the dashboard link to.

/// A stand's host: the project's `host` pattern with `{stand}` replaced by the namespace.
pub fn stand_host(pattern: &str, namespace: &str) -> String {
    pattern.replace("{stand}", namespace)
}

/// The address reports and the dashboard link to, and verify probes.
pub fn stand_url(host: &str) -> String {
    format!("https://{host}")
}
