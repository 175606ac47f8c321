//! tests/e2e/real-cluster.sh needs a real cluster; here, where none can run, it must skip cleanly.

#[test]
fn the_real_cluster_script_skips_with_a_reason_without_kubeconfig() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/real-cluster.sh");
    let out = std::process::Command::new("bash").arg(&script).env_remove("KUBECONFIG").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("skipped: KUBECONFIG is not set"), "{stdout}");
}

/// The draftd command lines the script runs, with `$branch` filled in and redirections dropped.
fn draftd_invocations(script: &str) -> Vec<Vec<String>> {
    const CALL: &str = r#""$draftd" --config "$work/draftd.toml" "#;
    script
        .lines()
        .filter_map(|line| line.split_once(CALL).map(|(_, rest)| rest))
        .map(|rest| {
            rest.split_whitespace()
                .take_while(|w| !w.starts_with(['>', '|', '&']) && !w.starts_with("2>"))
                .map(|w| w.trim_matches('"').replace("$branch", "feature/e2e-1"))
                .collect()
        })
        .collect()
}

#[test]
fn every_draftd_command_line_of_the_script_parses_including_extend_and_reap() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = std::fs::read_to_string(root.join("tests/e2e/real-cluster.sh")).unwrap();
    let calls = draftd_invocations(&script);
    for step in [&["stands", "extend"][..], &["reap"]] {
        assert!(
            calls.iter().any(|c| c.iter().map(String::as_str).take(step.len()).eq(step.iter().copied())),
            "the script runs draftd {step:?}"
        );
    }
    for args in calls {
        // `--help` after the script's own arguments: clap checks them, then prints help without
        // loading a config, so a renamed subcommand or flag fails here rather than on a cluster.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_draftd"))
            .args(&args)
            .arg("--help")
            .env_remove("DRAFTD_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "draftd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
