//! Small text helpers shared by the core and the connectors: markup escaping, decoding of
//! character references, display names from remote sources, and splitting long texts into
//! parts. Network-neutral.

/// A display name a remote source gave, as a Matrix display name may show it: without
/// control characters, trimmed, at most 100 characters; `None` when nothing is left.
pub fn display_name(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty()).then(|| cleaned.to_owned())
}

/// Escapes text for HTML or XML (`&`, `<`, `>`, `"`, `'`).
pub fn escape_markup(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// Decodes the character references that matter in HTML and XML text: the five named ones,
/// `&nbsp;` (as a space) and numeric ones. Anything else is kept as written.
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        // A reference is short: its `;` is within the first 12 bytes (searched by byte, so a
        // multi-byte character there cannot split a slice).
        let Some(end) = tail.as_bytes()[..tail.len().min(12)]
            .iter()
            .position(|&b| b == b';')
        else {
            out.push('&');
            rest = &tail[1..];
            continue;
        };
        let entity = &tail[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &tail[end + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Splits `text` into parts of at most `max` bytes (at least 4), never inside a character.
/// A part ends after a line break, else after a space, when one stands in the second half of
/// the part; else it is cut where the size says. Joined, the parts are `text` again; an empty
/// text is one empty part.
pub fn split_parts(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(4);
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let window = &rest[..cut];
        let in_second_half = |c: char| window.rfind(c).filter(|&at| at >= cut / 2);
        if let Some(at) = in_second_half('\n').or_else(|| in_second_half(' ')) {
            cut = at + 1;
        }
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn parts_are_small_enough_and_join_back(text in proptest::prelude::any::<String>(), max in 4usize..64) {
            let parts = split_parts(&text, max);
            proptest::prop_assert_eq!(parts.concat(), text.clone());
            for p in &parts {
                proptest::prop_assert!(p.len() <= max, "{} > {}", p.len(), max);
            }
            if !text.is_empty() {
                proptest::prop_assert!(parts.iter().all(|p| !p.is_empty()));
            }
        }
    }

    #[test]
    fn parts_end_at_a_line_or_a_space_in_their_second_half() {
        assert_eq!(split_parts("aaaa bbbb cccc", 10), ["aaaa bbbb ", "cccc"]);
        assert_eq!(split_parts("aaaa\nbbbb cccc", 12), ["aaaa\nbbbb ", "cccc"]);
        // A break early in the part would make tiny parts: cut where the size says.
        assert_eq!(
            split_parts("a bbbbbbbbbbbbbbb", 8),
            ["a bbbbbb", "bbbbbbbb", "b"]
        );
        // Characters are never cut.
        assert_eq!(split_parts("ééééé", 5), ["éé", "éé", "é"]);
        assert_eq!(split_parts("", 5), [""]);
    }

    #[test]
    fn display_names_are_printable_short_and_never_empty() {
        assert_eq!(display_name("  Bob\u{7}\n B "), Some("Bob B".into()));
        assert_eq!(display_name(" \t\u{0} "), None);
        assert_eq!(display_name(&"x".repeat(300)).unwrap().chars().count(), 100);
    }

    #[test]
    fn round_trip_and_odd_input() {
        let s = "a <b> & \"c\" 'd'";
        assert_eq!(decode_entities(&escape_markup(s)), s);
        assert_eq!(
            decode_entities("&bogus; &#x1F600; &#65;&nbsp;"),
            "&bogus; 😀 A "
        );
        assert_eq!(decode_entities("&中文中文"), "&中文中文");
        assert_eq!(decode_entities("&"), "&");
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(s in "\\PC{0,64}") {
            let _ = decode_entities(&s);
        }
    }
}
