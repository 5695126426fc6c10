//! Reversible escaping of arbitrary strings into Matrix localparts.
//!
//! Ghost user IDs and portal room aliases embed remote identifiers (which may contain
//! uppercase letters, `@`, `/`, spaces or any Unicode) in a localpart, whose alphabet is only
//! `[a-z0-9._=/-]`. The scheme here is a bijection between all strings and the set of its
//! outputs:
//!
//! | input byte | output |
//! |---|---|
//! | `a`-`z`, `0`-`9`, `.`, `-` | unchanged |
//! | `A`-`Z` | `_` followed by the lowercase letter (`B` → `_b`) |
//! | `_` | `__` |
//! | any other byte of the UTF-8 encoding | `=` followed by two lowercase hex digits (`@` → `=40`) |
//!
//! So `bob@example.org` becomes `bob=40example.org` and `Bob` becomes `_bob`. The output never
//! contains `/` (allowed in localparts but awkward in URLs and logs) nor uppercase letters.
//!
//! [`unescape_localpart`] accepts exactly the outputs of [`escape_localpart`]: a non-canonical
//! spelling such as `=61` for `a` is rejected, so two different localparts never decode to the
//! same remote identifier.

/// Escapes `s` into a string made only of `[a-z0-9._=-]`.
///
/// Total and injective: every string has exactly one escaped form, and
/// `unescape_localpart(&escape_localpart(s)) == Some(s.to_owned())`.
pub fn escape_localpart(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' => out.push(char::from(b)),
            b'A'..=b'Z' => {
                out.push('_');
                out.push(char::from(b.to_ascii_lowercase()));
            }
            b'_' => out.push_str("__"),
            _ => {
                out.push('=');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
    out
}

/// Reverses [`escape_localpart`].
///
/// Returns `None` when `s` is not an output of [`escape_localpart`]: a character outside
/// `[a-z0-9._=-]`, a dangling `=` or `_`, `=` not followed by two lowercase hex digits, a hex
/// escape of a byte that is written literally (`=61`, `=5f`, `=41`), `_` followed by anything
/// but a lowercase letter or `_`, or bytes that do not form valid UTF-8.
pub fn unescape_localpart(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b @ (b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-') => {
                out.push(b);
                i += 1;
            }
            b'_' => {
                match *bytes.get(i + 1)? {
                    b'_' => out.push(b'_'),
                    c @ b'a'..=b'z' => out.push(c.to_ascii_uppercase()),
                    _ => return None,
                }
                i += 2;
            }
            b'=' => {
                let hi = hex_value(*bytes.get(i + 1)?)?;
                let lo = hex_value(*bytes.get(i + 2)?)?;
                let b = (hi << 4) | lo;
                if escapes_literally(b) {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Whether [`escape_localpart`] writes `b` without a `=xx` escape.
fn escapes_literally(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'A'..=b'Z' | b'_')
}

/// The value of one lowercase hex digit.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn is_localpart_alphabet(s: &str) -> bool {
        s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'/' | b'-'))
    }

    #[test]
    fn escapes_the_documented_examples() {
        assert_eq!(escape_localpart("bob@example.org"), "bob=40example.org");
        assert_eq!(escape_localpart("Bob"), "_bob");
        assert_eq!(escape_localpart("a_b"), "a__b");
        assert_eq!(escape_localpart("a=b"), "a=3db");
        assert_eq!(escape_localpart("room/1"), "room=2f1");
        assert_eq!(escape_localpart("x y"), "x=20y");
        assert_eq!(escape_localpart("ü"), "=c3=bc");
        assert_eq!(escape_localpart("alice-1.2"), "alice-1.2");
        assert_eq!(escape_localpart(""), "");
    }

    #[test]
    fn unescapes_the_documented_examples() {
        assert_eq!(
            unescape_localpart("bob=40example.org").as_deref(),
            Some("bob@example.org")
        );
        assert_eq!(unescape_localpart("_bob").as_deref(), Some("Bob"));
        assert_eq!(unescape_localpart("a__b").as_deref(), Some("a_b"));
        assert_eq!(unescape_localpart("=c3=bc").as_deref(), Some("ü"));
        assert_eq!(unescape_localpart("").as_deref(), Some(""));
    }

    #[test]
    fn rejects_invalid_sequences() {
        for bad in [
            "=",      // dangling escape
            "=4",     // one hex digit
            "=4g",    // bad hex
            "=4A",    // uppercase hex is not canonical
            "_",      // dangling underscore
            "_1",     // `_` before a non-letter
            "_B",     // `_` before an uppercase letter
            "A",      // uppercase is never in the output
            "a/b",    // `/` is a localpart character but never produced
            "a b",    // outside the alphabet
            "ü",      // non-ASCII
            "=61",    // `a` must be written literally
            "=5f",    // `_` must be `__`
            "=41",    // `A` must be `_a`
            "=ff",    // not UTF-8
            "=c3",    // truncated UTF-8
            "=c3=28", // invalid continuation byte
        ] {
            assert_eq!(unescape_localpart(bad), None, "{bad:?} should be rejected");
        }
    }

    proptest! {
        #[test]
        fn round_trips_any_string(s in any::<String>()) {
            prop_assert_eq!(unescape_localpart(&escape_localpart(&s)), Some(s));
        }

        #[test]
        fn output_uses_only_the_localpart_alphabet(s in any::<String>()) {
            let escaped = escape_localpart(&s);
            prop_assert!(is_localpart_alphabet(&escaped), "{:?} -> {:?}", s, escaped);
        }

        #[test]
        fn decoding_is_the_exact_inverse(
            t in prop_oneof!["[a-z0-9._=/-]{0,24}", "([a-z0-9.-]|_[a-z_]|=[0-9a-f]{2}){0,12}"]
        ) {
            // Whatever decodes must re-encode to the same string: no two localparts name the
            // same remote identifier.
            if let Some(u) = unescape_localpart(&t) {
                prop_assert_eq!(escape_localpart(&u), t);
            }
        }

        #[test]
        fn escaping_is_injective(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(escape_localpart(&a), escape_localpart(&b));
        }
    }
}
