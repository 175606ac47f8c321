//! Small text helpers shared by modules that put outside text into reports and errors.

/// Cuts `text` to at most `max` bytes on a character boundary and appends `marker` when it cut.
pub fn cut(text: &mut String, max: usize, marker: &str) {
    if text.len() <= max {
        return;
    }
    let mut at = max;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text.truncate(at);
    text.push_str(marker);
}

/// `text` safe inside HTML text and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A name Postgres would refuse or silently truncate as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid database or role name (1-63 bytes, no NUL)")]
pub struct BadIdent(pub String);

/// A Postgres identifier quoted as `"name"`, embedded quotes doubled: the one way names enter
/// utility statements (which take no bind parameters). Here, not in database.rs, because the Vault
/// adapter writes the same names into the statements Vault runs for it.
pub fn quote_ident(name: &str) -> Result<String, BadIdent> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(BadIdent(name.to_owned()));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuts_on_a_character_boundary() {
        let mut s = "ab€cd".to_owned();
        super::cut(&mut s, 3, "…");
        assert_eq!(s, "ab…");
        let mut short = "abc".to_owned();
        super::cut(&mut short, 3, "…");
        assert_eq!(short, "abc");
    }
}
