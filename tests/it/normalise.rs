//! Every recorded payload normalises to the event it should, as-is and with the fields a test varies.

use chrono::{TimeZone, Utc};
use draftd::config::Project;
use draftd::forge::{Command, Event, Trigger, github, gitlab};
use serde_json::Value;

use crate::support::{config, fixture, projects};

fn project(name: &str) -> Project {
    projects(&config()).projects.into_iter().find(|p| p.name.as_str() == name).unwrap()
}

fn gh(event: &str, payload: &Value) -> Event {
    github::normalise(event, &serde_json::to_vec(payload).unwrap(), &project("hello-world")).unwrap()
}

fn gl(project_name: &str, event: &str, payload: &Value) -> Event {
    gitlab::normalise(event, &serde_json::to_vec(payload).unwrap(), &project(project_name)).unwrap()
}

fn ignored(e: &Event) -> &str {
    match e {
        Event::Ignored { reason } => reason,
        other => panic!("expected Ignored, got {other:?}"),
    }
}

fn on_feature_branch(mut v: Value) -> Value {
    v["pull_request"]["head"]["ref"] = "feature/login".into();
    v
}

#[test]
fn github_pull_request_fixtures_map_to_their_triggers() {
    let cases = [
        ("opened", Some(("deploy", Trigger::Opened))),
        ("synchronize", Some(("deploy", Trigger::Pushed))),
        ("reopened", Some(("deploy", Trigger::Reopened))),
        ("ready_for_review", Some(("deploy", Trigger::ReadyForReview))),
        ("closed", Some(("teardown", Trigger::Closed))),
        // The recorded label is "bug", not the opt-out label: nothing to do.
        ("labeled", None),
        ("unlabeled", None),
    ];
    for (action, expected) in cases {
        let payload = fixture(&format!("github/pull_request.{action}.json"));
        let event = gh("pull_request", &on_feature_branch(payload.clone()));
        match (expected, &event) {
            (Some(("deploy", t)), Event::Deploy { pr, trigger })
            | (Some(("teardown", t)), Event::Teardown { pr, trigger }) => {
                assert_eq!(*trigger, t, "{action}");
                assert_eq!(pr.number, 2);
                assert_eq!(pr.branch.as_str(), "feature/login");
                assert_eq!(pr.sha.as_str(), "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
                let expected_time = payload["pull_request"]["updated_at"].as_str().unwrap();
                assert_eq!(pr.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), expected_time);
            }
            (None, Event::Ignored { reason }) => assert!(reason.contains(action), "{action}: {reason}"),
            _ => panic!("{action}: got {event:?}"),
        }
        // As recorded, the branch is "changes", outside feature/** and bugfix/**.
        if expected.is_some() {
            let as_is = gh("pull_request", &payload);
            assert!(ignored(&as_is).contains("\"changes\" matches none"), "{action}: {as_is:?}");
        }
    }
}

#[test]
fn merged_close_is_a_merged_teardown() {
    let mut v = on_feature_branch(fixture("github/pull_request.closed.json"));
    v["pull_request"]["merged"] = true.into();
    assert!(matches!(gh("pull_request", &v), Event::Teardown { trigger: Trigger::Merged, .. }));
}

#[test]
fn opt_out_label_tears_down_and_its_removal_deploys() {
    let mut v = on_feature_branch(fixture("github/pull_request.labeled.json"));
    v["label"]["name"] = "draft:skip".into();
    assert!(matches!(gh("pull_request", &v), Event::Teardown { trigger: Trigger::OptOut, .. }));
    let mut v = on_feature_branch(fixture("github/pull_request.unlabeled.json"));
    v["label"]["name"] = "draft:skip".into();
    assert!(matches!(gh("pull_request", &v), Event::Deploy { trigger: Trigger::OptIn, .. }));
}

#[test]
fn github_comment_and_check_run_fixtures() {
    // Recorded on a plain issue, and not a command.
    let comment = fixture("github/issue_comment.created.json");
    assert_eq!(ignored(&gh("issue_comment", &comment)), "comment on an issue, not a pull request");
    let mut on_pr = comment.clone();
    on_pr["issue"]["pull_request"] =
        serde_json::json!({ "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1" });
    assert_eq!(ignored(&gh("issue_comment", &on_pr)), "comment is not a /draft command");
    on_pr["comment"]["body"] = "/draft extend 24h".into();
    match gh("issue_comment", &on_pr) {
        Event::Command { pr_number, command: Command::Extend { by }, author, branch: None, .. } => {
            assert_eq!(pr_number, Some(1));
            assert_eq!(by, Some(std::time::Duration::from_secs(86400)));
            assert_eq!(author, "Codertocat");
        }
        other => panic!("{other:?}"),
    }

    let rerequested = fixture("github/check_run.rerequested.json");
    assert!(ignored(&gh("check_run", &rerequested)).contains("not draftd's"));
    let action = fixture("github/check_run.requested_action.json");
    assert_eq!(ignored(&gh("check_run", &action)), "requested action is not draftd's re-run");
    let mut ours = action.clone();
    ours["check_run"]["name"] = "draftd".into();
    ours["requested_action"]["identifier"] = "rerun".into();
    ours["check_run"]["pull_requests"][0]["head"]["ref"] = "feature/x".into();
    match gh("check_run", &ours) {
        Event::Command {
            pr_number: Some(26764),
            command: Command::Rerun,
            branch: Some(b),
            sha: Some(s),
            answer_in: Some(repo),
            author,
            author_id,
        } => {
            assert_eq!(repo, "Codertocat/Hello-World", "a refusal is answered in the project's repository");
            assert!(author_id.is_some(), "the sender's id is kept for the access check");
            assert_eq!(b.as_str(), "feature/x");
            assert_eq!(s.as_str(), "5bd5f196a46b8222fb7484f05faba41a73cf34bd");
            assert_eq!(author, "codebytere");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn github_events_draftd_does_not_act_on_are_ignored() {
    assert!(ignored(&gh("push", &fixture("github/push.json"))).contains("\"push\""));
    assert!(ignored(&gh("ping", &fixture("github/ping.json"))).contains("\"ping\""));
}

#[test]
fn gitlab_merge_request_fixtures() {
    let open = fixture("gitlab/merge_request.open.json");
    assert!(ignored(&gl("gitlab-test", "Merge Request Hook", &open)).contains("\"ms-viewport\""));
    let mut feature = open.clone();
    feature["object_attributes"]["source_branch"] = "feature/viewport".into();
    match gl("gitlab-test", "Merge Request Hook", &feature) {
        Event::Deploy { pr, trigger: Trigger::Opened } => {
            assert_eq!(pr.number, 1);
            assert_eq!(pr.sha.as_str(), "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
            assert_eq!(pr.updated_at, Utc.with_ymd_and_hms(2013, 12, 3, 17, 23, 34).unwrap());
        }
        other => panic!("{other:?}"),
    }

    // A real update with new commits (oldrev) and GitLab's older timestamp format.
    let update = fixture("gitlab/merge_request.update.json");
    match gl("woodpecker", "Merge Request Hook", &update) {
        Event::Deploy { pr, trigger: Trigger::Pushed } => {
            assert_eq!(pr.branch.as_str(), "next-feature");
            assert_eq!(pr.sha.as_str(), "0ab96a10266b95b4b533dcfd98738015fbe70889");
            assert_eq!(pr.updated_at, Utc.with_ymd_and_hms(2021, 9, 27, 5, 1, 21).unwrap());
        }
        other => panic!("{other:?}"),
    }
    let mut no_commits = update.clone();
    no_commits["object_attributes"].as_object_mut().unwrap().remove("oldrev");
    assert_eq!(
        ignored(&gl("woodpecker", "Merge Request Hook", &no_commits)),
        "merge request update without new commits"
    );

    // The docs' payload records a draft → ready change: as an update, that is "ready for review".
    let mut ready = feature.clone();
    ready["object_attributes"]["action"] = "update".into();
    assert!(matches!(
        gl("gitlab-test", "Merge Request Hook", &ready),
        Event::Deploy { trigger: Trigger::ReadyForReview, .. }
    ));

    for (action, trigger) in [("close", Trigger::Closed), ("merge", Trigger::Merged)] {
        let mut v = feature.clone();
        v["object_attributes"]["action"] = action.into();
        assert!(
            matches!(gl("gitlab-test", "Merge Request Hook", &v), Event::Teardown { trigger: t, .. } if t == trigger)
        );
    }
    let mut approved = feature.clone();
    approved["object_attributes"]["action"] = "approved".into();
    assert!(ignored(&gl("gitlab-test", "Merge Request Hook", &approved)).contains("approved"));
}

#[test]
fn gitlab_note_and_push_fixtures() {
    let note = fixture("gitlab/note.merge_request.json");
    // The recorded MR is from "master", and the comment is not a command.
    assert_eq!(ignored(&gl("gitlab-notes", "Note Hook", &note)), "comment is not a /draft command");
    let mut cmd = note.clone();
    cmd["object_attributes"]["note"] = "/draft destroy".into();
    assert!(ignored(&gl("gitlab-notes", "Note Hook", &cmd)).contains("\"master\" matches none"));
    cmd["merge_request"]["source_branch"] = "feature/notes".into();
    match gl("gitlab-notes", "Note Hook", &cmd) {
        Event::Command {
            pr_number: Some(1),
            command: Command::Destroy,
            branch: Some(b),
            sha: None,
            author,
            author_id,
            ..
        } => {
            assert!(author_id.is_some(), "the note author's id is kept for GitLab's member API");
            assert_eq!(b.as_str(), "feature/notes");
            assert_eq!(author, "root");
        }
        other => panic!("{other:?}"),
    }
    assert!(ignored(&gl("gitlab-test", "Push Hook", &fixture("gitlab/push.json"))).contains("Push Hook"));
}

#[test]
fn gitlab_forks_drafts_and_opt_out_labels_hold_deploys_back() {
    let mut v = fixture("gitlab/merge_request.open.json");
    v["object_attributes"]["source_branch"] = "feature/viewport".into();
    let mut fork = v.clone();
    fork["object_attributes"]["source_project_id"] = 99.into();
    assert_eq!(ignored(&gl("gitlab-test", "Merge Request Hook", &fork)), "fork");
    let mut draft = v.clone();
    draft["object_attributes"]["draft"] = true.into();
    assert_eq!(ignored(&gl("gitlab-test", "Merge Request Hook", &draft)), "draft");
    let mut wip = v.clone();
    wip["object_attributes"].as_object_mut().unwrap().remove("draft");
    wip["object_attributes"]["work_in_progress"] = true.into();
    assert_eq!(ignored(&gl("gitlab-test", "Merge Request Hook", &wip)), "draft");
    let mut labelled = v.clone();
    labelled["labels"][0]["title"] = "draft:skip".into();
    assert!(ignored(&gl("gitlab-test", "Merge Request Hook", &labelled)).contains("opted out"));

    let mut add_label = v.clone();
    add_label["object_attributes"]["action"] = "update".into();
    add_label["changes"]["labels"]["current"][0]["title"] = "draft:skip".into();
    assert!(matches!(
        gl("gitlab-test", "Merge Request Hook", &add_label),
        Event::Teardown { trigger: Trigger::OptOut, .. }
    ));
    let mut remove_label = v.clone();
    remove_label["object_attributes"]["action"] = "update".into();
    remove_label["changes"]["labels"]["previous"][0]["title"] = "draft:skip".into();
    assert!(matches!(
        gl("gitlab-test", "Merge Request Hook", &remove_label),
        Event::Deploy { trigger: Trigger::OptIn, .. }
    ));
}

#[test]
fn github_forks_and_drafts_are_ignored() {
    let mut fork = on_feature_branch(fixture("github/pull_request.opened.json"));
    fork["pull_request"]["head"]["repo"]["full_name"] = "someone/Hello-World".into();
    assert_eq!(ignored(&gh("pull_request", &fork)), "fork");
    let mut deleted_fork = on_feature_branch(fixture("github/pull_request.opened.json"));
    deleted_fork["pull_request"]["head"]["repo"] = Value::Null;
    assert_eq!(ignored(&gh("pull_request", &deleted_fork)), "fork");
    let mut draft = on_feature_branch(fixture("github/pull_request.opened.json"));
    draft["pull_request"]["draft"] = true.into();
    assert_eq!(ignored(&gh("pull_request", &draft)), "draft");
    let mut opted_out = on_feature_branch(fixture("github/pull_request.synchronize.json"));
    opted_out["pull_request"]["labels"][0]["name"] = "draft:skip".into();
    assert!(ignored(&gh("pull_request", &opted_out)).contains("opted out"));
}

#[test]
fn malformed_payloads_name_the_field() {
    let p = project("hello-world");
    let mut v = on_feature_branch(fixture("github/pull_request.opened.json"));
    v["pull_request"]["head"]["sha"] = "not-a-sha".into();
    let err = github::normalise("pull_request", &serde_json::to_vec(&v).unwrap(), &p).unwrap_err();
    assert_eq!(err.field, "pull_request.head.sha");
    v["pull_request"].as_object_mut().unwrap().remove("head");
    let err = github::normalise("pull_request", &serde_json::to_vec(&v).unwrap(), &p).unwrap_err();
    assert_eq!(err.field, "pull_request");
    assert!(err.message.contains("head"), "{err}");
    let mut v = on_feature_branch(fixture("github/pull_request.opened.json"));
    v["pull_request"]["number"] = "two".into();
    let err = github::normalise("pull_request", &serde_json::to_vec(&v).unwrap(), &p).unwrap_err();
    assert_eq!(err.field, "pull_request.number");
    let err = github::normalise("pull_request", b"{not json", &p).unwrap_err();
    assert!(!err.message.is_empty());
}

#[test]
fn label_changes_on_closed_pull_requests_deploy_nothing() {
    let mut v = on_feature_branch(fixture("github/pull_request.unlabeled.json"));
    v["label"]["name"] = "draft:skip".into();
    v["pull_request"]["state"] = "closed".into();
    assert_eq!(ignored(&gh("pull_request", &v)), "pull request is closed");
    let mut mr = fixture("gitlab/merge_request.open.json");
    mr["object_attributes"]["source_branch"] = "feature/viewport".into();
    mr["object_attributes"]["action"] = "update".into();
    mr["object_attributes"]["state"] = "merged".into();
    mr["changes"]["labels"]["previous"][0]["title"] = "draft:skip".into();
    assert_eq!(ignored(&gl("gitlab-test", "Merge Request Hook", &mr)), "merge request is merged");
}
