//! GitHub deliveries: (event name, body) through the intake's repository lookup and `normalise`.
//! Never panics; an `Ok` event keeps the invariants in `common::check_event` and agrees with the payload.
#![no_main]

mod common;

use draftd::forge::{Command, Event, command, github, parse};
use libfuzzer_sys::fuzz_target;

const EVENTS: [&str; 7] = ["pull_request", "issue_comment", "check_run", "ping", "push", "check_suite", ""];

fuzz_target!(|data: &[u8]| {
    let Some((variant, event, body)) = common::split(data, &EVENTS) else { return };
    let project = common::github_project(variant);
    // What the webhook extractor reads before normalising: never panics either.
    let _ = parse::<github::RepositoryOnly>(body);
    let Ok(ev) = github::normalise(&event, body, project) else { return };
    common::check_event(&ev, project);
    if !matches!(event.as_str(), "pull_request" | "issue_comment" | "check_run") {
        assert!(matches!(ev, Event::Ignored { .. }), "{event:?} acted on: {ev:?}");
        return;
    }
    let Some(v) = common::payload_value(body) else { return };
    match &ev {
        Event::Deploy { pr, .. } | Event::Teardown { pr, .. } => {
            assert_eq!(event, "pull_request");
            let p = &v["pull_request"];
            assert_eq!(p["number"].as_u64(), Some(pr.number));
            assert_eq!(p["head"]["ref"].as_str(), Some(pr.branch.as_str()));
            assert_eq!(p["head"]["sha"].as_str().map(str::to_ascii_lowercase).as_deref(), Some(pr.sha.as_str()));
            if matches!(ev, Event::Deploy { .. }) {
                assert_eq!(p["state"].as_str(), Some("open"), "deploy of a PR that is not open");
                let opt_out = project.settings.opt_out_label.as_str();
                let labelled = p["labels"].as_array().is_some_and(|ls| ls.iter().any(|l| l["name"] == opt_out));
                assert!(!labelled, "deploy of a PR carrying the opt-out label");
            }
        }
        Event::Command { branch, sha, command: cmd, .. } => match event.as_str() {
            "issue_comment" => {
                assert!(branch.is_none() && sha.is_none());
                let body = v["comment"]["body"].as_str().expect("comment body");
                assert_eq!(command::parse(body), Some(Ok(*cmd)), "command differs from its comment");
            }
            "check_run" => {
                assert_eq!(*cmd, Command::Rerun);
                assert!(branch.is_some() && sha.is_some(), "check-run re-run without branch and sha");
                assert_eq!(v["check_run"]["name"].as_str(), Some(draftd::forge::CHECK_NAME));
            }
            other => panic!("command from {other:?}"),
        },
        Event::Ignored { .. } => {}
    }
});
