//! `/draft …` comments: the parser never panics, and a parsed command, written back the way a person
//! would type it, parses to itself.
#![no_main]

use draftd::forge::{Command, CommandError, command::parse};
use libfuzzer_sys::fuzz_target;

/// The comment a person would write for `command`; durations without spaces (`1day 2h` is two words).
fn render(command: &Command) -> String {
    match command {
        Command::Rerun => "/draft rerun".into(),
        Command::Destroy => "/draft destroy".into(),
        Command::Extend { by: None } => "/draft extend".into(),
        Command::Extend { by: Some(d) } => {
            format!("/draft extend {}", humantime::format_duration(*d).to_string().replace(' ', ""))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = parse(&text);
    // Only the first non-blank line counts, and only when it starts with `/draft` as a word.
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    let addressed = first
        .and_then(|l| l.strip_prefix("/draft"))
        .is_some_and(|r| r.is_empty() || r.starts_with(char::is_whitespace));
    assert_eq!(parsed.is_some(), addressed, "addressed-ness of {text:?}");
    if let Some(first) = first {
        assert_eq!(parse(first), parsed, "later lines changed the outcome");
    }
    match &parsed {
        Some(Ok(command)) => {
            if let Command::Extend { by: Some(d) } = command {
                assert!(!d.is_zero());
            }
            let again = render(command);
            assert_eq!(parse(&again), Some(Ok(*command)), "{command:?} rendered as {again:?}");
            serde_json::to_string(command).expect("command serialises");
        }
        Some(Err(e)) => {
            let _ = e.to_string();
            if let CommandError::Unknown(verb) = e {
                assert!(verb.chars().count() <= 40);
            }
        }
        None => {}
    }
    // The same text behind `/draft ` is always addressed to draftd.
    assert!(parse(&format!("/draft {text}")).is_some());
});
