//! How draftd itself ships, checked without Docker or Grafana: deploy/Dockerfile's structure (stages,
//! locked and cache-friendly build, pinned and checked Helm, non-root numeric user, no secrets),
//! .dockerignore, and deploy/grafana/draftd.json against the metric names of src/metrics.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

const DRAFTD: &str = env!("CARGO_BIN_EXE_draftd");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One Dockerfile instruction: its keyword in capitals and the rest, continuations joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// The instructions of each stage, in order; comments and the parser directive dropped.
fn stages() -> Vec<Vec<Instruction>> {
    let text = read("deploy/Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        // Comment and empty lines may sit inside a continued instruction too; neither ends it.
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let whole = std::mem::take(&mut current);
                let (keyword, args) = whole.split_once(char::is_whitespace).unwrap_or((&whole, ""));
                instructions.push(Instruction { keyword: keyword.to_ascii_uppercase(), args: args.trim().to_owned() });
            }
        }
    }
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for instruction in instructions {
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("the Dockerfile starts with FROM (after ARGs at most)").push(instruction);
    }
    stages
}

/// `FROM image AS name` → (image, name).
fn from(stage: &[Instruction]) -> (String, String) {
    let words: Vec<&str> = stage[0].args.split_whitespace().filter(|w| !w.starts_with("--platform")).collect();
    let name = match words.as_slice() {
        [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
        _ => String::new(),
    };
    (words[0].to_owned(), name)
}

fn all<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage.iter().filter(|i| i.keyword == keyword).map(|i| i.args.as_str()).collect()
}

#[test]
fn the_dockerfile_builds_in_stages_from_the_lockfile_with_dependencies_cached_first() {
    let stages = stages();
    assert!(stages.len() >= 3, "build, helm and runtime stages: {}", stages.len());
    let (image, name) = from(&stages[0]);
    assert_eq!(image, "rust:1-bookworm", "the official Rust image");
    assert_eq!(name, "build");

    let build = &stages[0];
    let position = |pred: &dyn Fn(&Instruction) -> bool| build.iter().position(pred);
    let manifests =
        position(&|i| i.keyword == "COPY" && i.args.contains("Cargo.toml") && i.args.contains("Cargo.lock"))
            .expect("Cargo.toml and Cargo.lock are copied on their own");
    let sources = position(&|i| {
        i.keyword == "COPY" && (i.args.starts_with(". ") || i.args.contains("src")) && !i.args.contains("Cargo.toml")
    })
    .expect("the sources are copied");
    let builds: Vec<usize> =
        (0..build.len()).filter(|&n| build[n].keyword == "RUN" && build[n].args.contains("cargo build")).collect();
    assert!(
        builds.iter().any(|&n| manifests < n && n < sources),
        "dependencies build between copying the manifests and copying the sources (their own layer)"
    );
    assert!(builds.iter().any(|&n| n > sources), "draftd builds after the sources arrive");
    for &n in &builds {
        let args = &build[n].args;
        for part in args.split("&&").filter(|p| p.contains("cargo build")) {
            assert!(part.contains("--release") && part.contains("--locked"), "cargo build --release --locked: {part}");
        }
    }

    let runtime = stages.last().unwrap();
    let (image, _) = from(runtime);
    assert!(image.contains("distroless") || image.contains("slim"), "a slim runtime image: {image}");
    assert!(!image.starts_with("rust"), "the toolchain stays in the build stage: {image}");
}

#[test]
fn the_runtime_runs_draftd_as_a_numeric_non_root_user_with_helm_beside_it() {
    let stages = stages();
    let names: Vec<String> = stages.iter().map(|s| from(s).1).collect();
    let runtime = stages.last().unwrap();
    let copies = all(runtime, "COPY");
    let copied_from = |target: &str| -> String {
        let copy = copies.iter().find(|c| c.ends_with(target)).unwrap_or_else(|| panic!("{target} is copied in"));
        let stage = copy.split_whitespace().find_map(|w| w.strip_prefix("--from=")).expect("from a stage");
        assert!(names.iter().any(|n| n == stage), "--from={stage} names a stage of this Dockerfile");
        stage.to_owned()
    };
    copied_from("/usr/local/bin/draftd");
    let helm_stage = copied_from("/usr/local/bin/helm");

    let users = all(runtime, "USER");
    let user = users.last().expect("the runtime sets USER");
    let ids: Vec<u32> = user.split(':').map(|id| id.parse().expect("USER is numeric (uid[:gid])")).collect();
    assert!(ids.iter().all(|&id| id != 0), "not root: {user}");
    assert_eq!(all(runtime, "ENTRYPOINT"), [r#"["/usr/local/bin/draftd"]"#]);
    let cmd = all(runtime, "CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd.last().expect("CMD")).expect("CMD in exec form");
    assert_eq!(cmd, ["serve", "--config", "/etc/draftd/draftd.toml"]);
    assert_eq!(all(runtime, "EXPOSE"), ["8080"]);
    // Files the runtime copies from the context exist, so the build cannot fail on them.
    for copy in copies.iter().filter(|c| !c.contains("--from=")) {
        let words: Vec<&str> = copy.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(root().join(source).exists(), "COPY {source}: missing from the repository");
        }
    }

    // Helm: the version the tests run (scripts/install-tools.sh), downloaded from get.helm.sh and checked.
    let helm = stages.iter().find(|s| from(s).1 == helm_stage).unwrap();
    let install_tools = read("scripts/install-tools.sh");
    let pinned = install_tools
        .lines()
        .find_map(|l| l.strip_prefix("HELM_VERSION="))
        .expect("install-tools.sh pins HELM_VERSION")
        .trim_matches('"');
    let args = all(helm, "ARG");
    assert!(args.contains(&format!("HELM_VERSION={pinned}").as_str()), "Helm {pinned}: {args:?}");
    assert!(args.iter().any(|a| a.starts_with("HELM_SHA256")), "ARG HELM_SHA256: {args:?}");
    let run = all(helm, "RUN").join("\n");
    assert!(run.contains("https://get.helm.sh/") && run.contains("helm-${HELM_VERSION}-linux-"), "{run}");
    assert!(run.contains("${HELM_SHA256}") && run.contains("sha256sum -c"), "the archive is checked: {run}");
}

#[test]
fn the_dockerfile_holds_no_secrets() {
    let text = read("deploy/Dockerfile");
    let secretish = ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "PRIVATE", "CREDENTIAL", "API_KEY"];
    for stage in stages() {
        for instruction in stage.iter().filter(|i| i.keyword == "ARG" || i.keyword == "ENV") {
            for word in instruction.args.split_whitespace() {
                let name = word.split('=').next().unwrap().to_ascii_uppercase();
                assert!(
                    !secretish.iter().any(|s| name.contains(s)),
                    "{} {name}: build args and image env end up in the image's history",
                    instruction.keyword
                );
            }
        }
        for copy in all(&stage, "COPY").into_iter().chain(all(&stage, "ADD")) {
            for bad in [".env", ".pem", "id_rsa", "kubeconfig", ".kube", "credentials"] {
                assert!(!copy.contains(bad), "COPY/ADD of a likely secret: {copy}");
            }
        }
    }
    for token in ["ghp_", "github_pat_", "glpat-", "hvs.", "BEGIN RSA", "BEGIN PRIVATE"] {
        assert!(!text.contains(token), "a credential-looking string in the Dockerfile: {token}");
    }
}

#[test]
fn the_build_context_leaves_out_local_state() {
    let ignored: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_owned())
        .collect();
    for entry in ["target", ".tools", ".pg", "stands", ".git"] {
        assert!(ignored.contains(entry), ".dockerignore lists {entry}: {ignored:?}");
    }
    // The build needs these; an ignore pattern must not drop them.
    for needed in ["src", "migrations", "Cargo.toml", "Cargo.lock", "charts", "values", "benches"] {
        assert!(!ignored.contains(needed), ".dockerignore must keep {needed}");
    }
}

#[test]
fn the_binary_accepts_the_images_command_line() {
    let stages = stages();
    let cmd = all(stages.last().unwrap(), "CMD");
    let args: Vec<String> = serde_json::from_str(cmd.last().unwrap()).unwrap();
    // `--help` after the image's own arguments: clap parses them as given, then prints help without
    // loading the config the path names.
    let out =
        std::process::Command::new(DRAFTD).args(&args).arg("--help").env_remove("DRAFTD_CONFIG").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "draftd {args:?} --help: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.to_lowercase().contains("serve"), "{stdout}");
}

/// The metric names of src/metrics.rs: constant name → metric name.
fn metric_constants() -> BTreeMap<String, String> {
    let text = read("src/metrics.rs");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else { continue };
        let Some((name, value)) = rest.split_once(": &str = \"") else { continue };
        let Some(metric) = value.strip_suffix("\";") else { continue };
        if metric.starts_with("draftd_") {
            out.insert(name.to_owned(), metric.to_owned());
        }
    }
    // Nothing named elsewhere in the file escapes the constants above.
    for (i, _) in text.match_indices("\"draftd_") {
        let name: String = text[i + 1..].chars().take_while(|c| *c != '"').collect();
        assert!(out.values().any(|m| *m == name), "{name} in src/metrics.rs is not a `pub const`");
    }
    assert!(out.len() >= 17, "src/metrics.rs defines the metrics: {out:?}");
    out
}

/// The metrics src/metrics.rs describes as histograms (exported as _bucket, _sum, _count).
fn histograms(constants: &BTreeMap<String, String>) -> BTreeSet<String> {
    let text = read("src/metrics.rs");
    text.match_indices("describe_histogram!(")
        .map(|(i, m)| {
            let constant: String =
                text[i + m.len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            constants.get(&constant).unwrap_or_else(|| panic!("describe_histogram!({constant}")).clone()
        })
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/draftd.json")).expect("deploy/grafana/draftd.json is JSON")
}

/// Each `draftd_…` name in a PromQL expression, with the text before it.
fn metric_uses(expr: &str) -> Vec<(&str, String)> {
    expr.match_indices("draftd_")
        .filter(|(i, _)| !expr[..*i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(i, _)| {
            let name: String =
                expr[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            (&expr[..i], name)
        })
        .collect()
}

#[test]
fn the_dashboard_charts_every_metric_and_only_metrics_draftd_exports() {
    let constants = metric_constants();
    let known: BTreeSet<String> = constants.values().cloned().collect();
    let histograms = histograms(&constants);
    let dashboard = dashboard();
    let mut used = BTreeSet::new();
    for panel in panels(&dashboard).into_iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no queries");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: a PromQL expr"));
            let uses = metric_uses(expr);
            assert!(!uses.is_empty(), "{title}: {expr} uses no draftd metric");
            for (before, name) in uses {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| histograms.contains(*b)))
                    .unwrap_or(&name);
                assert!(known.contains(base), "{title}: {name} is not a metric of src/metrics.rs");
                if histograms.contains(base) {
                    assert_ne!(base, name, "{title}: histogram {name} is exported as _bucket, _sum and _count");
                }
                if name.ends_with("_total")
                    || name.ends_with("_bucket")
                    || name.ends_with("_sum")
                    || name.ends_with("_count")
                {
                    assert!(
                        before.ends_with("rate(") || before.ends_with("increase("),
                        "{title}: counter {name} is read through rate() or increase(): {expr}"
                    );
                }
                used.insert(base.to_owned());
            }
        }
    }
    let missing: Vec<&String> = known.difference(&used).collect();
    assert!(missing.is_empty(), "metrics of src/metrics.rs with no panel: {missing:?}");
}

#[test]
fn time_to_url_shows_median_and_95th_percentile_per_project() {
    let dashboard = dashboard();
    let exprs: Vec<&str> = panels(&dashboard)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .filter(|e| e.contains("draftd_time_to_url_seconds_bucket"))
        .collect();
    for quantile in ["histogram_quantile(0.5,", "histogram_quantile(0.95,"] {
        assert!(exprs.iter().any(|e| e.contains(quantile)), "time to URL {quantile}…: {exprs:?}");
    }
    for expr in &exprs {
        assert!(expr.contains("project=~\"$project\""), "filtered by the project variable: {expr}");
    }
}

#[test]
fn the_dashboard_picks_its_prometheus_and_project_through_variables() {
    let dashboard = dashboard();
    let schema = dashboard["schemaVersion"].as_u64().unwrap();
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("${name}"));
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let project = variable("project");
    assert_eq!(project["type"], "query");
    assert_eq!(project["datasource"]["uid"], "${datasource}");
    let definition = project["definition"].as_str().unwrap();
    assert!(definition.contains("draftd_time_to_url_seconds") && definition.contains("project"), "{definition}");

    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap();
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "{title}: a unique id");
        let at = |key: &str| panel["gridPos"][key].as_u64().unwrap_or_else(|| panic!("{title}: gridPos.{key}"));
        let (x, y, w, h) = (at("x"), at("y"), at("w"), at("h"));
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: within the 24 columns");
        for row in y..y + h {
            for col in x..x + w {
                assert!(cells.insert((row, col)), "{title} overlaps another panel at row {row}, column {col}");
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
        }
        assert!(panel["description"].as_str().is_some_and(|d| !d.is_empty()), "{title}: says what it shows");
    }
}
