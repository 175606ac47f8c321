//! `/draft …` commands written in PR/MR comments.

// What the parser makes is the domain's (the API, CLI and store take it too); re-exported for its old path.
pub use crate::stand::Command;
use crate::stand::ShaPrefix;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("/draft needs a command: rerun, extend [duration], destroy, wake or approve [commit]")]
    Missing,
    #[error("unknown /draft command {0:?}: use rerun, extend [duration], destroy, wake or approve [commit]")]
    Unknown(String),
    #[error("/draft approve: {0:?} is not a commit (7 to 64 hex characters, like abc1234)")]
    BadCommit(String),
    #[error("/draft extend: {0:?} is not a duration like 24h")]
    BadDuration(String),
    #[error("/draft {0}: unexpected {1:?}")]
    Extra(&'static str, String),
}

/// `None` when the comment is not addressed to draftd at all (its first non-blank line does not start
/// with `/draft`); otherwise the command or why it cannot be understood. Never panics, whatever the text.
pub fn parse(body: &str) -> Option<Result<Command, CommandError>> {
    let line = body.lines().map(str::trim).find(|l| !l.is_empty())?;
    let rest = line.strip_prefix("/draft")?;
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    let mut words = rest.split_whitespace();
    let Some(verb) = words.next() else {
        return Some(Err(CommandError::Missing));
    };
    let arg = words.next();
    let extra = words.next();
    Some(match verb.to_ascii_lowercase().as_str() {
        "rerun" => no_args("rerun", arg).map(|_| Command::Rerun),
        "destroy" => no_args("destroy", arg).map(|_| Command::Destroy),
        "wake" => no_args("wake", arg).map(|_| Command::Wake),
        "extend" => match (arg, extra) {
            (_, Some(x)) => Err(CommandError::Extra("extend", x.to_owned())),
            (None, None) => Ok(Command::Extend { by: None }),
            (Some(d), None) => extension(d)
                .map(|d| Command::Extend { by: Some(d) })
                .ok_or_else(|| CommandError::BadDuration(d.to_owned())),
        },
        "approve" => match (arg, extra) {
            (_, Some(x)) => Err(CommandError::Extra("approve", x.to_owned())),
            (None, None) => Ok(Command::Approve { commit: None }),
            (Some(c), None) => ShaPrefix::new(c)
                .map(|p| Command::Approve { commit: Some(p) })
                .ok_or_else(|| CommandError::BadCommit(c.chars().take(70).collect())),
        },
        other => Err(CommandError::Unknown(other.chars().take(40).collect())),
    })
}

/// An extension as `/draft extend`, the API and the CLI take it: a duration like `24h`, at least a
/// second (runs record whole seconds). Longer than `[stands] max_expiry` is capped when it runs.
pub fn extension(text: &str) -> Option<std::time::Duration> {
    humantime::parse_duration(text).ok().filter(|d| d.as_secs() >= 1)
}

fn no_args(verb: &'static str, arg: Option<&str>) -> Result<(), CommandError> {
    match arg {
        Some(a) => Err(CommandError::Extra(verb, a.to_owned())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("/draft rerun"), Some(Ok(Command::Rerun)));
        assert_eq!(parse("\n  /draft destroy  \nthanks"), Some(Ok(Command::Destroy)));
        assert_eq!(parse("/draft extend"), Some(Ok(Command::Extend { by: None })));
        assert_eq!(parse("/draft extend 24h"), Some(Ok(Command::Extend { by: Some(Duration::from_secs(86400)) })));
        assert_eq!(parse("/draft RERUN"), Some(Ok(Command::Rerun)));
        assert_eq!(parse("/draft wake"), Some(Ok(Command::Wake)));
    }

    #[test]
    fn approve_takes_an_optional_commit_prefix() {
        assert_eq!(parse("/draft approve"), Some(Ok(Command::Approve { commit: None })));
        let pinned = parse("/draft approve ABC1234").unwrap().unwrap();
        assert_eq!(pinned, Command::Approve { commit: ShaPrefix::new("abc1234") });
        let Command::Approve { commit: Some(p) } = pinned else { unreachable!() };
        assert_eq!(p.as_str(), "abc1234");
        let full = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            parse(&format!("/draft APPROVE {full}")),
            Some(Ok(Command::Approve { commit: ShaPrefix::new(full) }))
        );
        assert_eq!(parse("/draft approve abc"), Some(Err(CommandError::BadCommit("abc".into()))));
        assert_eq!(parse("/draft approve main"), Some(Err(CommandError::BadCommit("main".into()))));
        assert!(matches!(parse("/draft approve abc1234 please"), Some(Err(CommandError::Extra("approve", _)))));
        assert_eq!(
            serde_json::to_value(Command::Approve { commit: ShaPrefix::new("abc1234") }).unwrap(),
            serde_json::json!({ "command": "approve", "commit": "abc1234" })
        );
    }

    #[test]
    fn other_comments_are_not_commands() {
        assert_eq!(parse("LGTM"), None);
        assert_eq!(parse("see /draft rerun"), None);
        assert_eq!(parse("/drafts rerun"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn malformed_commands_say_why() {
        assert_eq!(parse("/draft"), Some(Err(CommandError::Missing)));
        assert_eq!(parse("/draft deploy"), Some(Err(CommandError::Unknown("deploy".into()))));
        assert_eq!(parse("/draft extend soon"), Some(Err(CommandError::BadDuration("soon".into()))));
        assert_eq!(parse("/draft extend 0s"), Some(Err(CommandError::BadDuration("0s".into()))));
        assert!(matches!(parse("/draft rerun now"), Some(Err(CommandError::Extra(..)))));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(body in "\\PC*") {
            let _ = parse(&body);
            let _ = parse(&format!("/draft {body}"));
        }

        #[test]
        fn parsing_never_panics_across_lines(body in any::<String>()) {
            let _ = parse(&body);
            let addressed = format!("/draft {body}");
            prop_assert!(parse(&addressed).is_some(), "{:?}", addressed);
        }

        #[test]
        fn only_the_first_non_blank_line_counts(
            blank in "[ \t\n]{0,5}",
            first in "\\PC{0,40}",
            rest in any::<String>(),
        ) {
            let body = format!("{blank}{first}\n{rest}");
            prop_assert_eq!(parse(&body), parse(&first));
        }

        #[test]
        fn a_parsed_extend_written_back_parses_to_itself(
            secs in 1u64..=20 * 365 * 86_400,
            nanos in 0u32..1_000_000_000,
        ) {
            let by = Duration::new(secs, nanos);
            let text = format!("/draft extend {}", humantime::format_duration(by).to_string().replace(' ', ""));
            prop_assert_eq!(parse(&text), Some(Ok(Command::Extend { by: Some(by) })));
        }

        #[test]
        fn verbs_are_ascii_case_insensitive(
            verb in prop_oneof!["rerun", "destroy", "extend", "approve"],
            upper in any::<[bool; 7]>(),
        ) {
            let verb: String =
                verb.chars().zip(upper).map(|(c, u)| if u { c.to_ascii_uppercase() } else { c }).collect();
            let text = format!("/draft {verb}");
            prop_assert!(matches!(parse(&text), Some(Ok(_))), "{:?}", text);
        }
    }
}
