//! The module map of ../shared/DESIGN.md ("Module layout"), checked against the source: imports run
//! one way (`cli → http → reaper → pipeline → reporter → credentials → {forge, cluster, helm, vault,
//! database, registry, traffic} → store → config → stand`, with metrics, telemetry and text as leaves), no
//! two files of src/ import each other in a cycle, and SQL on draftd's own schema is only in store/.
//!
//! Imports are read the way scripts/import-cycles.py reads them: `use crate::…`, `use super::…`,
//! `use self::…` and inline `crate::…` paths, each resolved to the file of the longest module it
//! names; code after a file's `#[cfg(test)]` does not count (unit tests may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Left to right: a module may import only modules of a later layer (or leaves).
const LAYERS: &[&[&str]] = &[
    &["cli", "commands", "plan_cmd"],
    &["http"],
    &["reaper"],
    &["pipeline"],
    &["reporter"],
    &["credentials"],
    &["forge", "cluster", "helm", "vault", "database", "registry", "traffic"],
    &["store"],
    &["config"],
    &["stand"],
];

/// Importable from anywhere; they import only `stand`.
const LEAVES: &[&str] = &["metrics", "telemetry", "text"];

/// Files allowed to run SQL outside store/: a stand's own database server (logins, databases), and
/// the health check's `select 1`.
const SQL_ALLOWED: &[&str] = &["database.rs", "http/health.rs"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library file by its module path (`pipeline/steps/mod.rs` → ["pipeline", "steps"]).
fn files() -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<Vec<String>, PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("src/ is readable").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap().with_extension("");
                let mut module: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
                if module == ["main"] {
                    continue; // the binary, not the library
                }
                if module == ["lib"] || module.last().is_some_and(|s| s == "mod") {
                    module.pop();
                }
                out.insert(module, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    let root = src();
    walk(&root, &root, &mut out);
    out
}

/// `a::{b, c::{d, e}}` → [a::b, a::c::d, a::c::e].
fn expand(tree: &str) -> Vec<Vec<String>> {
    fn walk(prefix: &[String], text: &str, out: &mut Vec<Vec<String>>) {
        let (mut depth, mut start, mut items) = (0, 0, Vec::new());
        for (i, ch) in text.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(&text[start..]);
        for item in items.into_iter().filter(|i| !i.is_empty()) {
            let mut path = prefix.to_vec();
            match item.split_once('{') {
                Some((head, rest)) => {
                    path.extend(head.split("::").filter(|s| !s.is_empty()).map(String::from));
                    walk(&path, &rest[..rest.len() - 1], out);
                }
                None => {
                    let item = item.split(" as ").next().unwrap_or(item);
                    path.extend(item.split("::").filter(|s| !s.is_empty()).map(String::from));
                    out.push(path);
                }
            }
        }
    }
    let compact: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let compact = compact.replace(" as ", "\u{1}").replace(' ', "").replace('\u{1}', " as ");
    let mut out = Vec::new();
    walk(&[], &compact, &mut out);
    out
}

/// The library's own code of a file: comments removed, unit tests cut off.
fn own_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("source is readable");
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The `use` trees of a file's code (without the `use` and the `;`).
fn use_trees(code: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = &rest[..at];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let head = before[line_start..].trim();
        let is_use = head.is_empty() || head == "pub" || (head.starts_with("pub(") && head.ends_with(')'));
        let after = &rest[at + 4..];
        match after.find(';') {
            Some(end) if is_use => {
                out.push(&after[..end]);
                rest = &after[end + 1..];
            }
            _ => rest = after,
        }
    }
    out
}

/// Inline `crate::a::b` paths: the lower-case segments after `crate::` (types and calls end it).
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let is_start = |c: char| c.is_ascii_lowercase() || c == '_';
    let is_part = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut rest = &code[at + "crate::".len()..];
        let mut segs = Vec::new();
        while rest.starts_with(is_start) {
            let end = rest.find(|c: char| !is_part(c)).unwrap_or(rest.len());
            segs.push(rest[..end].to_string());
            match rest[end..].strip_prefix("::") {
                Some(next) => rest = next,
                None => break,
            }
        }
        if !segs.is_empty() {
            out.push(segs);
        }
    }
    out
}

/// For each file, the files it imports.
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = files();
    let resolve = |mut parts: Vec<String>| {
        while !parts.is_empty() && !files.contains_key(&parts) {
            parts.pop();
        }
        (!parts.is_empty()).then_some(parts)
    };
    let mut edges = BTreeMap::new();
    for (module, path) in &files {
        let code = own_code(path);
        let mut targets = Vec::new();
        for tree in use_trees(&code) {
            for segs in expand(tree) {
                match segs.first().map(String::as_str) {
                    Some("crate") => targets.push(segs[1..].to_vec()),
                    Some("super" | "self") => {
                        let mut base = module.clone();
                        let mut segs = segs.as_slice();
                        while let Some(first) = segs.first().filter(|s| *s == "super" || *s == "self") {
                            if first == "super" {
                                base.pop();
                            }
                            segs = &segs[1..];
                        }
                        base.extend(segs.iter().cloned());
                        targets.push(base);
                    }
                    _ => {}
                }
            }
        }
        targets.extend(inline_paths(&code));
        let outs: BTreeSet<_> = targets.into_iter().filter_map(resolve).filter(|t| t != module).collect();
        edges.insert(module.clone(), outs);
    }
    edges
}

fn layer(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// Is `from → to` (top-level modules) in DESIGN's direction?
fn allowed(from: &str, to: &str) -> bool {
    if from == to || LEAVES.contains(&to) {
        return true;
    }
    if LEAVES.contains(&from) {
        return to == "stand";
    }
    match (layer(from), layer(to)) {
        (Some(f), Some(t)) => f < t,
        _ => false,
    }
}

fn top_level_edges() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (from, tos) in graph() {
        let Some(f) = from.first() else { continue };
        for to in tos {
            if to[0] != *f {
                out.insert((f.clone(), to[0].clone()));
            }
        }
    }
    out
}

#[test]
fn every_top_level_module_has_a_place_on_the_map() {
    let unplaced: Vec<_> = files()
        .keys()
        .filter_map(|m| m.first().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|m| layer(m).is_none() && !LEAVES.contains(&m.as_str()))
        .collect();
    assert!(unplaced.is_empty(), "modules not on DESIGN.md's map (add them to LAYERS or LEAVES): {unplaced:?}");
}

#[test]
fn imports_run_one_way() {
    let edges = top_level_edges();
    let against: Vec<_> = edges.iter().filter(|(f, t)| !allowed(f, t)).collect();
    let detail = |(f, t): &(String, String)| {
        let files: Vec<String> = graph()
            .into_iter()
            .filter(|(m, tos)| m.first() == Some(f) && tos.iter().any(|to| to[0] == *t))
            .map(|(m, _)| m.join("::"))
            .collect();
        format!("{f} → {t} (in {})", files.join(", "))
    };
    assert!(
        against.is_empty(),
        "imports against DESIGN.md's direction:\n  {}",
        against.iter().map(|e| detail(e)).collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn no_two_files_import_each_other_in_a_cycle() {
    let edges = graph();
    // Tarjan's strongly connected components.
    struct Walk<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a [String], usize>,
        low: BTreeMap<&'a [String], usize>,
        stack: Vec<&'a [String]>,
        cycles: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a [String]) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_slice()) {
                    self.visit(w);
                    let lw = self.low[w.as_slice()];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.stack.contains(&w.as_slice()) {
                    let iw = self.index[w.as_slice()];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    comp.push(w.join("::"));
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.cycles.push(comp);
                }
            }
        }
    }
    let mut walk =
        Walk { edges: &edges, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), cycles: Vec::new() };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_slice()) {
            walk.visit(v);
        }
    }
    assert!(walk.cycles.is_empty(), "files importing each other in a cycle: {:?}", walk.cycles);
}

#[test]
fn sql_on_draftds_schema_is_only_in_store() {
    let root = src();
    let mut found = BTreeSet::new();
    for path in files().values() {
        let rel = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        if rel.starts_with("store/") || SQL_ALLOWED.contains(&rel.as_str()) {
            continue;
        }
        let code = own_code(path);
        if ["sqlx::query", "query_as(", "query_scalar(", ".execute(", "raw_sql("].iter().any(|s| code.contains(s))
            && code.contains("sqlx")
        {
            found.insert(rel);
        }
    }
    assert!(found.is_empty(), "SQL outside store/ (move it into a store function): {found:?}");
}

/// Past this a file holds more than one job, or one job that should be split by concept.
const MAX_FILE_LINES: usize = 700;

#[test]
fn no_source_file_is_longer_than_the_limit() {
    let long: Vec<String> = files()
        .values()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(path).expect("src/ is readable").lines().count();
            (lines > MAX_FILE_LINES).then(|| format!("{} ({lines} lines)", path.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_FILE_LINES} lines: {long:?}");
}

#[test]
fn the_reader_sees_the_imports_it_should() {
    // Guards the reader itself: a parser that saw nothing would make every check above pass.
    let trees = expand("crate::{a::{b, c as d}, e}");
    assert_eq!(trees, vec![vec!["crate", "a", "b"], vec!["crate", "a", "c"], vec!["crate", "e"]]);
    let code = "use crate::store::runs;\npub(crate) use super::x::{y,\n z};\nlet a = crate::config::Config::load();";
    assert_eq!(use_trees(code), vec!["crate::store::runs", "super::x::{y,\n z}"]);
    assert_eq!(inline_paths(code), vec![vec!["store".to_string(), "runs".to_string()], vec!["config".to_string()]]);
    let edges = graph();
    assert!(edges.len() > 50, "read only {} files", edges.len());
    assert!(edges.values().map(BTreeSet::len).sum::<usize>() > 100, "read too few imports");
}
