//! Durations as draftd reads them: `humantime::parse_duration` (the API's `by` and `window`, the
//! `/draft extend` argument) and humantime-serde in the config (`[stands] ttl` here). Never panics;
//! the config accepts exactly the non-zero durations the parser accepts, with the same value; a
//! parsed duration printed by humantime parses back to itself.
#![no_main]

use draftd::config::Config;
use libfuzzer_sys::fuzz_target;

/// A TOML basic string holding `s` exactly.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = humantime::parse_duration(text);
    if let Ok(d) = parsed {
        let printed = humantime::format_duration(d).to_string();
        assert_eq!(humantime::parse_duration(&printed).ok(), Some(d), "{text:?} → {d:?} → {printed:?}");
    }
    // The command's argument is one word; the API's `by` is the whole string.
    let _ = draftd::forge::command::parse(&format!("/draft extend {text}"));
    if text.len() > 200 || text.contains(char::is_control) {
        return;
    }
    let config = Config::from_toml(&format!("[stands]\nttl = {}\n", toml_string(text)));
    match (parsed, config) {
        (Ok(d), Ok(c)) => assert_eq!(c.stands.ttl, d),
        (Ok(d), Err(e)) => assert!(d.is_zero(), "{text:?} parses as {d:?} but the config refuses it: {e}"),
        (Err(_), Ok(c)) => panic!("{text:?} is no duration but the config took it as {:?}", c.stands.ttl),
        (Err(_), Err(_)) => {}
    }
});
