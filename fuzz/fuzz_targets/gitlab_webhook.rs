//! GitLab deliveries: (event name, body) through the intake's project lookup and `normalise`.
//! Never panics; an `Ok` event keeps the invariants in `common::check_event` and agrees with the payload.
#![no_main]

mod common;

use draftd::forge::{Event, command, gitlab, parse};
use libfuzzer_sys::fuzz_target;

const EVENTS: [&str; 7] =
    ["Merge Request Hook", "Note Hook", "Push Hook", "Pipeline Hook", "System Hook", "merge request hook", ""];

fuzz_target!(|data: &[u8]| {
    let Some((variant, event, body)) = common::split(data, &EVENTS) else { return };
    let project = common::gitlab_project(variant);
    let _ = parse::<gitlab::ProjectOnly>(body);
    let Ok(ev) = gitlab::normalise(&event, body, project) else { return };
    common::check_event(&ev, project);
    if !matches!(event.as_str(), "Merge Request Hook" | "Note Hook") {
        assert!(matches!(ev, Event::Ignored { .. }), "{event:?} acted on: {ev:?}");
        return;
    }
    let Some(v) = common::payload_value(body) else { return };
    match &ev {
        Event::Deploy { pr, .. } | Event::Teardown { pr, .. } => {
            assert_eq!(event, "Merge Request Hook");
            let a = &v["object_attributes"];
            assert_eq!(a["iid"].as_u64(), Some(pr.number));
            assert_eq!(a["source_branch"].as_str(), Some(pr.branch.as_str()));
            let sha = a["last_commit"]["id"].as_str().map(str::to_ascii_lowercase);
            assert_eq!(sha.as_deref(), Some(pr.sha.as_str()));
            if matches!(ev, Event::Deploy { .. }) {
                let state = a["state"].as_str();
                assert!(state.is_none() || state == Some("opened"), "deploy of an MR in state {state:?}");
                let opt_out = project.settings.opt_out_label.as_str();
                let labelled = v["labels"].as_array().is_some_and(|ls| ls.iter().any(|l| l["title"] == opt_out));
                assert!(!labelled, "deploy of an MR carrying the opt-out label");
            }
        }
        Event::Command { branch, sha, command: cmd, .. } => {
            assert_eq!(event, "Note Hook");
            assert!(branch.is_some() && sha.is_none());
            let note = v["object_attributes"]["note"].as_str().expect("note");
            assert_eq!(command::parse(note), Some(Ok(*cmd)), "command differs from its note");
            assert_eq!(v["object_attributes"]["noteable_type"].as_str(), Some("MergeRequest"));
        }
        Event::Ignored { .. } => {}
    }
});
