//! Every hard-coded secret of the test harness is listed in tests/secrets.txt, the list
//! scripts/check-secrets.sh greps the suite's whole output for. The Rust sources are read as text:
//! a `const`/`static` string whose name says SECRET, TOKEN or PASSWORD must have its value there.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The literal lines of tests/secrets.txt (not comments, not `re:` patterns).
fn listed() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("tests/secrets.txt")).expect("tests/secrets.txt");
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("re:")).map(str::to_owned).collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Names that hold a secret; names of the variables or settings that carry one (`*_VAR`, `*_ENV`) do not.
fn secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["SECRET", "TOKEN", "PASSWORD", "PASSWD"].iter().any(|w| upper.contains(w))
        && !upper.ends_with("_VAR")
        && !upper.ends_with("_ENV")
}

/// `(line, name, value)` of each `const`/`static` with a secret's name; `value` is `None` when it is
/// not a one-line string literal (so the test can say it could not check it).
fn secret_constants(source: &str) -> Vec<(usize, String, Option<String>)> {
    let mut found = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let line = line.trim_start();
        let line = line.strip_prefix("pub(crate) ").or_else(|| line.strip_prefix("pub ")).unwrap_or(line);
        let Some(rest) = line.strip_prefix("const ").or_else(|| line.strip_prefix("static ")) else { continue };
        let Some((name, rest)) = rest.split_once(':') else { continue };
        let name = name.trim();
        if !secret_name(name) {
            continue;
        }
        let value = rest
            .split_once("= \"")
            .and_then(|(ty, v)| ty.contains("str").then_some(v))
            .and_then(|v| v.strip_suffix("\";"))
            .filter(|v| !v.contains('\\') && !v.contains('"'))
            .map(str::to_owned);
        found.push((n + 1, name.to_owned(), value));
    }
    found
}

#[test]
fn every_secret_constant_of_the_tests_is_in_secrets_txt() {
    let listed = listed();
    let mut files = Vec::new();
    rust_files(&root().join("tests"), &mut files);
    rust_files(&root().join("benches"), &mut files);
    files.sort();
    let mut missing = Vec::new();
    let mut seen = Vec::new();
    // This file's own parser test holds made-up constants.
    files.retain(|f| !f.ends_with("tests/it/secrets_listed.rs"));
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(root()).unwrap().display().to_string();
        for (line, name, value) in secret_constants(&source) {
            match value {
                Some(v) if listed.contains(&v) => seen.push(format!("{shown}:{line} {name}")),
                // The value stays out of the message: this test's output is scanned too.
                Some(_) => missing.push(format!("{shown}:{line}: {name} is not listed in tests/secrets.txt")),
                None => {
                    missing.push(format!("{shown}:{line}: {name} is not a one-line string literal; list it by hand"))
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    // The harness's own secrets are among those checked: the parser still finds them.
    for expected in [
        "tests/support/mod.rs:25 GITHUB_SECRET",
        "tests/support/mod.rs:26 GITLAB_SECRET",
        "tests/support/mod.rs:27 API_TOKEN",
        "tests/support/forge_fake/mod.rs:26 TOKEN",
    ] {
        let name = expected.split(' ').nth(1).unwrap();
        let file = expected.split(':').next().unwrap();
        assert!(
            seen.iter().any(|s| s.starts_with(file) && s.ends_with(&format!(" {name}"))),
            "{expected} was not found: {seen:?}"
        );
    }
    assert!(seen.iter().any(|s| s.starts_with("tests/support/bao.rs:") && s.ends_with(" BAO_ROOT_TOKEN")), "{seen:?}");
}

#[test]
fn listed_secrets_are_distinctive() {
    // A short or common word would match everywhere and hide real hits among false ones.
    for (n, line) in listed().iter().enumerate() {
        assert!(line.len() >= 6, "tests/secrets.txt: literal #{} is too short to grep for", n + 1);
        assert!(
            !["secret", "password", "token", "root", "unused", "changeme"]
                .contains(&line.to_ascii_lowercase().as_str()),
            "tests/secrets.txt: literal #{} is a common word",
            n + 1
        );
    }
}

#[test]
fn the_parser_reads_constants_as_written() {
    let source = r#"
pub const GITHUB_SECRET: &str = "a-1";
    const APP_SECRET: &str = "b-2";
pub static DB_PASSWORD: &'static str = "c-3";
const GITHUB_SECRET_VAR: &str = "NOT_A_SECRET";
const SECRET_ENV: &str = "NOT_EITHER";
const REPO: &str = "acme/shop";
const LONG_TOKEN: &str = concat!("x", "y");
"#;
    let found: Vec<_> = secret_constants(source).into_iter().map(|(_, n, v)| (n, v)).collect();
    assert_eq!(
        found,
        [
            ("GITHUB_SECRET".into(), Some("a-1".into())),
            ("APP_SECRET".into(), Some("b-2".into())),
            ("DB_PASSWORD".into(), Some("c-3".into())),
            ("LONG_TOKEN".into(), None),
        ]
    );
}
