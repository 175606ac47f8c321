//! Arbitrary text as draftd.toml: `Config::from_toml` never panics (errors are fine), and a config it
//! accepts is one `serve` can start with: every secret resolves without the `expect`s in
//! `Projects::resolve_with` firing, the reaper's schedule compiles, and each project plans a stand.
#![no_main]

use draftd::config::{Config, Projects};
use draftd::pipeline::plan::StandPlan;
use draftd::stand::{BranchName, Namespace, is_dns_label};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = Config::from_toml(text) else { return };
    config.reaper.cron().expect("validated schedule compiles");
    assert!(!config.stands.ttl.is_zero());
    let projects = Projects::resolve_with(&config, |_| Some("fuzz-secret".into())).expect("all secrets present");
    assert_eq!(projects.projects.len(), config.projects.len());
    let branch = BranchName::new("feature/fuzz").unwrap();
    for (p, settings) in projects.projects.iter().zip(&config.projects) {
        assert!(is_dns_label(p.name.as_str()));
        let ns = Namespace::for_branch(&p.name, &branch, settings.strip_branch_prefix);
        let plan = StandPlan::new(&config, settings, 1, ns.as_str(), branch.as_str(), &"a".repeat(40));
        assert_eq!(plan.namespace, ns.as_str());
    }
});
