//! tests/e2e/real-cluster.sh needs a real cluster; here, where none can run, it must skip cleanly.

#[test]
fn the_real_cluster_script_skips_with_a_reason_without_kubeconfig() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/real-cluster.sh");
    let out = std::process::Command::new("bash").arg(&script).env_remove("KUBECONFIG").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("skipped: KUBECONFIG is not set"), "{stdout}");
}
