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
