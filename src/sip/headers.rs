//! SIP header values read and written by hand where the stack's parser is not enough:
//! name-addrs whose quoted display names may hold `<`, `,` and escapes, lists split outside
//! quotes and angle brackets, compact and any-case header names, and quoted display names
//! the stack reads back.

use rsipstack::sip;
use rsipstack::sip::prelude::HeadersExt;

/// A name-addr or addr-spec header value, split: display name, URI, and the `tag` param.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted.
    pub display: Option<String>,
    /// The URI.
    pub uri: String,
    /// The tag parameter.
    pub tag: Option<String>,
}

/// Parses a From/To/Contact/Record-Route value. The display name may be a quoted string
/// holding `<`, `>`, `,` and escaped quotes (RFC 3261 §25.1); the URI is what the first `<`
/// outside it opens.
pub fn name_addr(value: &str) -> NameAddr {
    let value = value.trim();
    let open = outside_quotes(value)
        .find(|&(_, c)| c == '<')
        .map(|(i, _)| i);
    let close = open.and_then(|a| value[a..].find('>').map(|b| a + b));
    let (display, uri, params) = match (open, close) {
        (Some(a), Some(b)) => {
            let display = unquote(value[..a].trim());
            (
                (!display.is_empty()).then_some(display),
                value[a + 1..b].trim().to_owned(),
                &value[b + 1..],
            )
        }
        _ => {
            let (uri, params) = value.split_once(';').unwrap_or((value, ""));
            (None, uri.trim().to_owned(), params)
        }
    };
    let tag = split_outside_quotes(params, ';')
        .into_iter()
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("tag"))
        .map(|(_, v)| v.trim().to_owned());
    NameAddr { display, uri, tag }
}

/// `value` cut at each `sep` that is not inside a quoted string.
fn split_outside_quotes(value: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, c) in outside_quotes(value) {
        if c == sep {
            parts.push(&value[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&value[start..]);
    parts
}

/// The characters of `value` (with their positions) that are not inside a quoted string.
fn outside_quotes(value: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let (mut quoted, mut escaped) = (false, false);
    value.char_indices().filter(move |&(_, c)| {
        if escaped {
            escaped = false;
            return false;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => return !quoted,
        }
        false
    })
}

/// A display name without its quotes and quoted-pair escapes, trimmed.
fn unquote(display: &str) -> String {
    let inner = display
        .strip_prefix('"')
        .and_then(|d| d.strip_suffix('"'))
        .unwrap_or(display);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out.trim().to_owned()
}

/// Splits a header value holding several comma-separated name-addrs (commas inside `<>` or
/// quoted strings do not split).
pub fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in outside_quotes(value) {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(value[start..i].trim().to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = value[start..].trim();
    if !last.is_empty() {
        out.push(last.to_owned());
    }
    out
}

/// The compact forms of header names (RFC 3261 §7.3.3 and §20, RFC 6665 §8.2.1, RFC 3515,
/// RFC 3892, RFC 3841, RFC 4028, RFC 4474), with the full names they stand for.
const COMPACT: [(&str, &str); 20] = [
    ("a", "Accept-Contact"),
    ("b", "Referred-By"),
    ("c", "Content-Type"),
    ("d", "Request-Disposition"),
    ("e", "Content-Encoding"),
    ("f", "From"),
    ("i", "Call-ID"),
    ("j", "Reject-Contact"),
    ("k", "Supported"),
    ("l", "Content-Length"),
    ("m", "Contact"),
    ("n", "Identity-Info"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("s", "Subject"),
    ("t", "To"),
    ("u", "Allow-Events"),
    ("v", "Via"),
    ("x", "Session-Expires"),
    ("y", "Identity"),
];

/// Whether header name `found` (as a message spelled it) names header `name`: header names
/// are case-insensitive, and a compact form names its full header.
pub fn is_header(found: &str, name: &str) -> bool {
    let full = |n: &str| -> String {
        COMPACT
            .iter()
            .find(|(short, _)| n.eq_ignore_ascii_case(short))
            .map_or(n, |(_, full)| full)
            .to_ascii_lowercase()
    };
    found.eq_ignore_ascii_case(name) || full(found.trim()) == full(name)
}

/// The first value of header `name` in a message, trimmed (compact forms and any case).
pub fn header_value(headers: &sip::Headers, name: &str) -> Option<String> {
    headers
        .iter()
        .find(|h| is_header(h.name(), name))
        .map(|h| h.value().trim().to_owned())
}

/// Every value of header `name` in a message, in order (list values split; compact forms and
/// any case).
pub fn header_values(headers: &sip::Headers, name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|h| is_header(h.name(), name))
        .flat_map(|h| split_list(h.value()))
        .collect()
}

/// The request's Call-ID.
pub fn call_id(req: &sip::Request) -> String {
    req.call_id_header()
        .map(|c| c.value().to_owned())
        .unwrap_or_default()
}

/// A quoted display name for a From header: control characters dropped, at most 64
/// characters, `\\` and `"` escaped (RFC 3261 §25.1).
///
/// `<` and `>` become `‹` and `›`: they are legal in a quoted string, but the SIP stack under
/// the bridge, like others, takes a name-addr's URI from the first `<` even inside quotes, so
/// a From carrying one either fails to parse (`"Bob <boss>" <sip:...;transport=tcp>`: the
/// request gets no transaction and is never sent) or is read with the wrong URI.
pub fn quoted(display: &str) -> String {
    let mut out = String::with_capacity(display.len() + 2);
    out.push('"');
    for c in display.chars().filter(|c| !c.is_control()).take(64) {
        match c {
            '\\' | '"' => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push('‹'),
            '>' => out.push('›'),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rsipstack::sip::SipMessage;

    #[test]
    fn name_addrs() {
        let n = name_addr("\"Bob \\\"B\\\" Smith\" <sip:bob@x.org;transport=tcp>;tag=12ab");
        assert_eq!(n.display.as_deref(), Some("Bob \"B\" Smith"));
        assert_eq!(n.uri, "sip:bob@x.org;transport=tcp");
        assert_eq!(n.tag.as_deref(), Some("12ab"));
        let n = name_addr("sip:bob@x.org;tag=9");
        assert_eq!(n.uri, "sip:bob@x.org");
        assert_eq!(n.tag.as_deref(), Some("9"));
        assert_eq!(
            split_list("<sip:a@x;lr>, \"b, c\" <sip:b@y>,<sip:c@z>"),
            vec!["<sip:a@x;lr>", "\"b, c\" <sip:b@y>", "<sip:c@z>"]
        );
        assert_eq!(quoted("a\"b\\"), "\"a\\\"b\\\\\"");
    }

    #[test]
    fn quoted_display_names_may_hold_angle_brackets_and_escapes() {
        // Found by the fuzz target `sip_headers`: the URI was taken from a `<` inside the
        // quoted display name.
        let n = name_addr("\"Bob <boss>, \\\"B\\\"\" <sip:bob@x.org>;tag=1");
        assert_eq!(n.uri, "sip:bob@x.org");
        assert_eq!(n.display.as_deref(), Some("Bob <boss>, \"B\""));
        assert_eq!(n.tag.as_deref(), Some("1"));
        let n = name_addr(&format!("{} <sip:a@b>", quoted("a\\b <c>")));
        assert_eq!(n.display.as_deref(), Some("a\\b ‹c›"));
        assert_eq!(n.uri, "sip:a@b");
        assert_eq!(
            split_list("\"x\\\", <y>\" <sip:a@b>, <sip:c@d>"),
            vec!["\"x\\\", <y>\" <sip:a@b>", "<sip:c@d>"]
        );
    }

    #[test]
    fn params_are_split_outside_quoted_strings() {
        let n = name_addr("<sip:a@b>;x=\"a;tag=evil\" ; TAG = 7");
        assert_eq!(n.tag.as_deref(), Some("7"));
        let n = name_addr("\"a;tag=1\" <sip:a@b>");
        assert_eq!(n.tag, None);
        assert_eq!(n.display.as_deref(), Some("a;tag=1"));
    }

    /// A request as a peer writes it, with the given From and extra header lines.
    fn request(from: &str, extra: &str) -> sip::Request {
        let raw = format!(
            "MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: {from}\r\n\
             To: <sip:b@x>\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match SipMessage::try_from(raw.as_str()) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("{raw:?} did not parse: {other:?}"),
        }
    }

    #[test]
    fn compact_and_any_case_header_names() {
        let raw = "SUBSCRIBE sip:b@x SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
                   f: \"A\" <sip:a@x>;tag=9\r\nt: <sip:b@x>\r\ni: c1\r\nCSeq: 1 SUBSCRIBE\r\n\
                   m: <sip:a@10.0.0.1>, <sip:a@10.0.0.2>\r\nm: <sip:a@10.0.0.3>\r\no: presence\r\n\
                   u: presence, message-summary\r\nrecord-ROUTE: <sip:p;lr>\r\nc: application/pidf+xml\r\n\
                   l: 0\r\n\r\n";
        let Ok(SipMessage::Request(req)) = SipMessage::try_from(raw) else {
            panic!("compact forms did not parse");
        };
        assert_eq!(
            header_values(&req.headers, "Contact"),
            vec!["<sip:a@10.0.0.1>", "<sip:a@10.0.0.2>", "<sip:a@10.0.0.3>"]
        );
        assert_eq!(
            header_value(&req.headers, "event").as_deref(),
            Some("presence")
        );
        assert_eq!(
            header_value(&req.headers, "Allow-Events").as_deref(),
            Some("presence, message-summary")
        );
        assert_eq!(
            header_values(&req.headers, "Record-Route"),
            vec!["<sip:p;lr>"]
        );
        assert_eq!(
            header_value(&req.headers, "CONTENT-TYPE").as_deref(),
            Some("application/pidf+xml")
        );
        assert_eq!(call_id(&req), "c1");
        let from = name_addr(req.from_header().unwrap().value());
        assert_eq!(
            (from.display.as_deref(), from.tag.as_deref()),
            (Some("A"), Some("9"))
        );
        for (short, full) in COMPACT {
            assert!(is_header(short, full) && is_header(&short.to_uppercase(), full));
            assert!(is_header(full, short) && is_header(&full.to_uppercase(), full));
        }
        assert!(!is_header("m", "To") && !is_header("Contact", "Content-Type"));
    }

    proptest::proptest! {
        /// Any display name the bridge writes in a From header survives the SIP stack: the
        /// request parses, gets its transaction key, and reads back as the same name, URI and
        /// tag (controls dropped, 64 characters, angle brackets as their lookalikes).
        #[test]
        fn written_display_names_read_back(
            display in proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(vec!["\"", "\\", "<", ">", ";", ",", "tag=x", " ", "\\\"", "é", "😀"])
                        .prop_map(str::to_owned),
                    "\\PC{0,4}",
                    any::<char>().prop_map(String::from),
                ],
                0..12,
            ).prop_map(|v| v.concat()),
        ) {
            let from = format!("{} <sip:gw@example.org;transport=tcp>;tag=t1", quoted(&display));
            let req = request(&from, "");
            let key = rsipstack::transaction::key::TransactionKey::from_request(
                &req,
                rsipstack::transaction::key::TransactionRole::Server,
            );
            proptest::prop_assert!(key.is_ok(), "{from:?}: {key:?}");
            let read = name_addr(req.from_header().unwrap().value());
            let expected: String = display
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .map(|c| match c {
                    '<' => '‹',
                    '>' => '›',
                    c => c,
                })
                .collect();
            let expected = expected.trim();
            proptest::prop_assert_eq!(read.display.as_deref(), (!expected.is_empty()).then_some(expected));
            proptest::prop_assert_eq!(read.uri, "sip:gw@example.org;transport=tcp");
            proptest::prop_assert_eq!(read.tag.as_deref(), Some("t1"));
        }
    }
}
