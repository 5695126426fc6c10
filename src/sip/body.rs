//! Message bodies: PIDF presence (RFC 3863, with the RPID activities of RFC 4480), typing
//! notifications (RFC 3994), HTML reduced to text, and splitting of long texts.
//!
//! The XML bodies are small and their shape is fixed, so they are read with a tolerant scan
//! for the few elements that matter instead of a full parser: unknown elements, namespaces
//! prefixes and attributes are ignored, and nothing is ever evaluated.

use crate::network::{Presence, PresenceState};
use crate::text::{decode_entities, escape_markup};

/// Content type of PIDF documents.
pub const PIDF: &str = "application/pidf+xml";
/// Content type of typing notifications.
pub const ISCOMPOSING: &str = "application/im-iscomposing+xml";

/// The text content of the first element with local name `name` (any namespace prefix).
fn element_text<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = xml[from..].find('<') {
        let start = from + i + 1;
        let tag_end = start + xml[start..].find('>')?;
        let tag = &xml[start..tag_end];
        from = tag_end + 1;
        if tag.starts_with('/') || tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        let tag_name = tag.split(|c: char| c.is_whitespace() || c == '/').next()?;
        let local = tag_name.rsplit(':').next()?;
        if local != name {
            continue;
        }
        if tag.ends_with('/') {
            return Some("");
        }
        let close = xml[from..].find("</")?;
        return Some(&xml[from..from + close]);
    }
    None
}

/// Whether an element with local name `name` occurs (any prefix).
fn has_element(xml: &str, name: &str) -> bool {
    element_text(xml, name).is_some()
}

/// Reads a PIDF document: `basic` open/closed, RPID `away`/`busy`/... activities make an open
/// status "unavailable", and the first `note` is the status text.
pub fn parse_pidf(body: &[u8]) -> Option<Presence> {
    let xml = std::str::from_utf8(body).ok()?;
    let basic = element_text(xml, "basic")?.trim().to_ascii_lowercase();
    let note = element_text(xml, "note")
        .map(|n| decode_entities(n.trim()))
        .filter(|n| !n.is_empty())
        .map(|n| n.chars().take(256).collect());
    let away = [
        "away",
        "busy",
        "on-the-phone",
        "meeting",
        "vacation",
        "sleeping",
        "appointment",
        "permanent-absence",
        "steering",
    ]
    .iter()
    .any(|a| has_element(xml, a));
    let state = match basic.as_str() {
        "open" if away => PresenceState::Unavailable,
        "open" => PresenceState::Online,
        "closed" => PresenceState::Offline,
        _ => return None,
    };
    Some(Presence {
        state,
        status: note,
    })
}

/// A PIDF document for `entity` (a SIP URI): online is open, unavailable is open with the
/// RPID activity `away`, offline is closed.
pub fn pidf(entity: &str, presence: &Presence) -> Vec<u8> {
    let (basic, activity) = match presence.state {
        PresenceState::Online => ("open", ""),
        PresenceState::Unavailable => ("open", "<rpid:activities><rpid:away/></rpid:activities>"),
        PresenceState::Offline => ("closed", ""),
    };
    let note = presence
        .status
        .as_deref()
        .map(|n| format!("<note>{}</note>", escape_markup(n)))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" \
         entity=\"{}\"><tuple id=\"isthmus\"><status><basic>{basic}</basic></status>{note}</tuple>\
         <dm:person id=\"p\">{activity}</dm:person></presence>",
        escape_markup(entity)
    )
    .into_bytes()
}

/// Reads a typing notification: `Some(true)` for active, `Some(false)` for idle.
pub fn parse_iscomposing(body: &[u8]) -> Option<bool> {
    let xml = std::str::from_utf8(body).ok()?;
    match element_text(xml, "state")?.trim() {
        "active" => Some(true),
        "idle" => Some(false),
        _ => None,
    }
}

/// A typing notification; an active one asks for a refresh within 60 s.
pub fn iscomposing(active: bool) -> Vec<u8> {
    let state = if active {
        "<state>active</state><refresh>60</refresh>"
    } else {
        "<state>idle</state>"
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<isComposing xmlns=\"urn:ietf:params:xml:ns:im-iscomposing\">\
         {state}<contenttype>text/plain</contenttype></isComposing>"
    )
    .into_bytes()
}

/// Reduces an HTML body to text: tags are dropped (with `script` and `style` content),
/// line breaks and block ends become newlines, character references are decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    let mut skip_until: Option<&str> = None;
    while let Some(i) = rest.find('<') {
        if skip_until.is_none() {
            out.push_str(&decode_entities(&rest[..i]));
        }
        let Some(end) = rest[i..].find('>') else {
            rest = "";
            break;
        };
        let tag = rest[i + 1..i + end].trim().to_ascii_lowercase();
        rest = &rest[i + end + 1..];
        let name = tag
            .trim_start_matches('/')
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("");
        if let Some(until) = skip_until {
            if tag.starts_with('/') && name == until {
                skip_until = None;
            }
            continue;
        }
        match name {
            "script" | "style" if !tag.starts_with('/') && !tag.ends_with('/') => {
                skip_until = Some(if name == "script" { "script" } else { "style" });
            }
            "br" => out.push('\n'),
            "p" | "div" | "li" | "tr" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "blockquote"
                if tag.starts_with('/') =>
            {
                out.push('\n')
            }
            _ => {}
        }
    }
    if skip_until.is_none() {
        out.push_str(&decode_entities(rest));
    }
    out.trim().to_owned()
}

/// Splits `text` into parts of at most `max` bytes (at least 16) for separate MESSAGEs (see
/// [`crate::text::split_parts`]); the line break or space a part was cut after is dropped, as
/// each part stands alone.
pub fn split(text: &str, max: usize) -> Vec<String> {
    let parts = crate::text::split_parts(text, max.max(16));
    let last = parts.len() - 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(n, p)| match p.strip_suffix(['\n', ' ']) {
            Some(cut) if n < last => cut.to_owned(),
            _ => p.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidf_round_trips_every_state() {
        for state in [
            PresenceState::Online,
            PresenceState::Unavailable,
            PresenceState::Offline,
        ] {
            let p = Presence {
                state,
                status: Some("in a <meeting> & more".into()),
            };
            assert_eq!(parse_pidf(&pidf("sip:a@b", &p)), Some(p));
        }
    }

    #[test]
    fn pidf_from_other_clients() {
        let doc = br#"<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf"
            xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:bob@x">
            <tuple id="a"><status><basic>open</basic></status></tuple>
            <person xmlns="urn:ietf:params:xml:ns:pidf:data-model"><rpid:activities><rpid:busy/></rpid:activities>
            <note>Lunch</note></person></presence>"#;
        assert_eq!(
            parse_pidf(doc),
            Some(Presence {
                state: PresenceState::Unavailable,
                status: Some("Lunch".into())
            })
        );
        let closed =
            br#"<presence><tuple><status><basic>closed</basic></status></tuple></presence>"#;
        assert_eq!(parse_pidf(closed).unwrap().state, PresenceState::Offline);
        assert_eq!(parse_pidf(b"<presence/>"), None);
        assert_eq!(parse_pidf(b"\xff\xfe"), None);
    }

    #[test]
    fn typing_both_ways() {
        assert_eq!(parse_iscomposing(&iscomposing(true)), Some(true));
        assert_eq!(parse_iscomposing(&iscomposing(false)), Some(false));
        assert_eq!(parse_iscomposing(b"<isComposing/>"), None);
    }

    #[test]
    fn html_becomes_text() {
        assert_eq!(
            html_to_text("<p>Hello <b>you</b> &amp; me</p><p>bye&#33;<br>x</p>"),
            "Hello you & me\nbye!\nx"
        );
        assert_eq!(html_to_text("a<script>alert(1)</script>b"), "ab");
        assert_eq!(html_to_text("<unclosed"), "");
        assert_eq!(decode_entities("&bogus; &#x1F600;"), "&bogus; 😀");
    }

    proptest::proptest! {
        #[test]
        fn text_conversions_never_panic(s in "\\PC{0,64}") {
            let _ = decode_entities(&s);
            let _ = html_to_text(&s);
            let _ = parse_pidf(s.as_bytes());
            let _ = parse_iscomposing(s.as_bytes());
            let _ = split(&s, 17);
        }
    }

    #[test]
    fn entities_next_to_wide_characters() {
        assert_eq!(decode_entities("&中文中文"), "&中文中文");
        assert_eq!(html_to_text("<p>&中文中文 &amp;</p>"), "&中文中文 &");
    }

    #[test]
    fn split_respects_limits_and_characters() {
        let text = "word ".repeat(100);
        let parts = split(text.trim(), 64);
        assert!(parts.iter().all(|p| p.len() <= 64));
        assert_eq!(parts.join(" "), text.trim());
        let emoji = "😀".repeat(50);
        let parts = split(&emoji, 30);
        assert!(parts.iter().all(|p| p.len() <= 30));
        assert_eq!(parts.concat(), emoji);
        assert_eq!(split("", 100), vec![String::new()]);
    }
}
