//! Small text helpers shared by the core and the connectors: markup escaping, decoding of
//! character references, and display names from remote sources. Network-neutral.

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

#[cfg(test)]
mod tests {
    use super::*;

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
