//! Message bodies: PIDF presence (RFC 3863, with the RPID activities of RFC 4480), typing
//! notifications (RFC 3994), HTML reduced to text, and splitting of long texts.
//!
//! The XML bodies are read with a namespace-aware XML parser (`rxml`, the one under the XMPP
//! side's DOM), as a stream of events: no tree is built, so nesting costs no recursion, and
//! both the size and the depth of a document are capped before anything is kept. `rxml`
//! knows no DTDs, so no entity can expand; comments are skipped.

use xmpp_parsers::minidom::rxml::parser::CommentMode;
use xmpp_parsers::minidom::rxml::{self, Event, Options, Parse, Parser, QName, WithOptions};

use crate::html::Node;
use crate::network::{Presence, PresenceState};
use crate::text::escape_markup;

/// Content type of PIDF documents.
pub const PIDF: &str = "application/pidf+xml";
/// Content type of typing notifications.
pub const ISCOMPOSING: &str = "application/im-iscomposing+xml";

/// PIDF (RFC 3863).
const NS_PIDF: &str = "urn:ietf:params:xml:ns:pidf";
/// The PIDF data model (RFC 4479): `person`, and its `note`.
const NS_DM: &str = "urn:ietf:params:xml:ns:pidf:data-model";
/// RPID (RFC 4480): `activities`.
const NS_RPID: &str = "urn:ietf:params:xml:ns:pidf:rpid";
/// Typing notifications (RFC 3994).
const NS_ISCOMPOSING: &str = "urn:ietf:params:xml:ns:im-iscomposing";

/// The largest XML body read; a SIP request's body is capped before this, but the reader does
/// not rely on it.
pub const MAX_XML_BODY: usize = 64 * 1024;
/// The deepest element nesting read (a PIDF document needs 4).
const MAX_XML_DEPTH: usize = 32;
/// The longest status note kept, in characters.
const MAX_NOTE_CHARS: usize = 256;

/// RPID activities that make an open status "unavailable".
const AWAY: [&str; 9] = [
    "away",
    "busy",
    "on-the-phone",
    "meeting",
    "vacation",
    "sleeping",
    "appointment",
    "permanent-absence",
    "steering",
];

/// Why an XML body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than `MAX_XML_BODY` (64 KiB).
    #[error("the body has {0} bytes, more than the {MAX_XML_BODY} read")]
    TooLarge(usize),
    /// Nested deeper than the reader goes.
    #[error("the body nests elements deeper than {MAX_XML_DEPTH}")]
    TooDeep,
    /// Not well-formed, namespace-well-formed XML (or it uses a DTD or a processing
    /// instruction, which are not read).
    #[error("the body is not well-formed XML: {0}")]
    Malformed(String),
    /// Well-formed, but its root is not the element the content type promises.
    #[error("the body's root element is not {{{0}}}{1}")]
    WrongRoot(&'static str, &'static str),
    /// The document lacks the element that carries its meaning, or holds a value the
    /// specification does not define.
    #[error("the body has no usable {0}")]
    Missing(&'static str),
}

/// What the reader reports: an element opened, text inside the innermost open element, or
/// that element's end. The path of open elements, outermost first, comes with each.
enum Xml<'a> {
    Start,
    Text(&'a str),
    End,
}

/// Whether `q` is the element `name` in namespace `ns`.
fn is(q: &QName, ns: &str, name: &str) -> bool {
    q.0 == ns && q.1 == name
}

/// Reads an XML document event by event, handing each to `on` with the path of open elements.
/// Leading whitespace and a byte-order mark are tolerated; the rest must be well-formed.
fn walk(body: &[u8], mut on: impl FnMut(&[QName], Xml<'_>)) -> Result<(), BodyError> {
    if body.len() > MAX_XML_BODY {
        return Err(BodyError::TooLarge(body.len()));
    }
    let body = body
        .strip_prefix(b"\xef\xbb\xbf")
        .unwrap_or(body)
        .trim_ascii_start();
    let mut parser = Parser::with_options(Options {
        comments: CommentMode::Discard,
        ..Options::default()
    });
    let mut rest = body;
    let mut path: Vec<QName> = Vec::new();
    let mut root_seen = false;
    loop {
        match parser.parse(&mut rest, true) {
            Ok(None) if root_seen => return Ok(()),
            Ok(None) => return Err(BodyError::Malformed("there is no root element".into())),
            Ok(Some(Event::XmlDeclaration(..))) => {}
            Ok(Some(Event::StartElement(_, name, _))) => {
                if path.len() >= MAX_XML_DEPTH {
                    return Err(BodyError::TooDeep);
                }
                path.push(name);
                root_seen = true;
                on(&path, Xml::Start);
            }
            Ok(Some(Event::Text(_, text))) => on(&path, Xml::Text(&text)),
            Ok(Some(Event::EndElement(_))) => {
                on(&path, Xml::End);
                path.pop();
            }
            Err(rxml::error::EndOrError::NeedMoreData) => {
                return Err(BodyError::Malformed("the document ends early".into()));
            }
            Err(rxml::error::EndOrError::Error(e)) => {
                return Err(BodyError::Malformed(e.to_string()));
            }
        }
    }
}

/// Appends `text` to `buf` while `buf` is shorter than `cap` bytes (leading whitespace is not
/// kept), so that a huge text node costs nothing.
fn collect(buf: &mut String, text: &str, cap: usize) {
    if buf.len() < cap {
        let text = if buf.is_empty() {
            text.trim_start()
        } else {
            text
        };
        let room = cap - buf.len();
        let cut = text.floor_char_boundary(room.min(text.len()));
        buf.push_str(&text[..cut]);
    }
}

/// Reads a PIDF document. Its status is open when any tuple's `status/basic` is `open` (one
/// device of the contact is enough to reach them), closed when some tuple says `closed` and
/// none says open. An RPID activity among `away`, `busy`, ... makes an open status
/// "unavailable". The first non-empty `note` (PIDF's, or the data model's on a person) is the
/// status text, at most 256 characters.
pub fn parse_pidf(body: &[u8]) -> Result<Presence, BodyError> {
    let (mut open, mut closed, mut away) = (false, false, false);
    let mut basic = String::new();
    let mut note = String::new();
    let mut note_done = false;
    let mut root_ok = true;
    walk(body, |path, ev| {
        let Some(here) = path.last() else { return };
        if path.len() == 1 {
            root_ok &= is(here, NS_PIDF, "presence");
        }
        let in_basic = path.len() >= 3
            && is(here, NS_PIDF, "basic")
            && is(&path[path.len() - 2], NS_PIDF, "status")
            && is(&path[path.len() - 3], NS_PIDF, "tuple");
        let in_note = is(here, NS_PIDF, "note") || is(here, NS_DM, "note");
        match ev {
            Xml::Start if in_basic => basic.clear(),
            Xml::Start => {
                away |= path.len() >= 2
                    && here.0 == NS_RPID
                    && AWAY.iter().any(|a| here.1 == *a)
                    && is(&path[path.len() - 2], NS_RPID, "activities");
            }
            Xml::Text(t) if in_basic => collect(&mut basic, t, 16),
            Xml::Text(t) if in_note && !note_done => collect(&mut note, t, 4 * MAX_NOTE_CHARS),
            Xml::Text(_) => {}
            Xml::End if in_basic => match basic.trim().to_ascii_lowercase().as_str() {
                "open" => open = true,
                "closed" => closed = true,
                _ => {}
            },
            Xml::End if in_note => note_done = !note.trim().is_empty(),
            Xml::End => {}
        }
    })?;
    if !root_ok {
        return Err(BodyError::WrongRoot(NS_PIDF, "presence"));
    }
    let state = match (open, closed) {
        (true, _) if away => PresenceState::Unavailable,
        (true, _) => PresenceState::Online,
        (false, true) => PresenceState::Offline,
        (false, false) => return Err(BodyError::Missing("tuple/status/basic")),
    };
    let note: String = note.trim().chars().take(MAX_NOTE_CHARS).collect();
    let note = note.trim_end();
    Ok(Presence {
        state,
        status: (!note.is_empty()).then(|| note.to_owned()),
    })
}

/// Whether `c` may stand in the text of a body the bridge writes: a character XML 1.0
/// allows, and no control character but tab and line feed (a carriage return would read back
/// as a line feed).
pub fn is_body_char(c: char) -> bool {
    matches!(c, '\t' | '\n') || (!c.is_control() && !matches!(c, '\u{fffe}' | '\u{ffff}'))
}

/// A PIDF document for `entity` (a SIP URI): online is open, unavailable is open with the
/// RPID activity `away`, offline is closed. Characters XML cannot carry are left out of the
/// note (see [`is_body_char`]), so the document is always well-formed, and the note is cut to
/// the 256 characters a reader keeps, so the document stays far below the size a reader takes.
pub fn pidf(entity: &str, presence: &Presence) -> Vec<u8> {
    let (basic, activity) = match presence.state {
        PresenceState::Online => ("open", ""),
        PresenceState::Unavailable => ("open", "<rpid:activities><rpid:away/></rpid:activities>"),
        PresenceState::Offline => ("closed", ""),
    };
    let note = presence
        .status
        .as_deref()
        .map(|n| {
            // No longer than a reader keeps (ours among them), so that a long status never
            // makes a document larger than a reader takes.
            let n: String = n.chars().filter(|&c| is_body_char(c)).collect();
            let n: String = n.trim().chars().take(MAX_NOTE_CHARS).collect();
            format!("<note>{}</note>", escape_markup(&n))
        })
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" \
         entity=\"{}\"><tuple id=\"isthmus\"><status><basic>{basic}</basic></status>{note}</tuple>\
         <dm:person id=\"p\">{activity}</dm:person></presence>",
        escape_markup(&entity.chars().filter(|&c| is_body_char(c)).collect::<String>())
    )
    .into_bytes()
}

/// Reads a typing notification: `true` for active, `false` for idle.
pub fn parse_iscomposing(body: &[u8]) -> Result<bool, BodyError> {
    let mut state = String::new();
    let mut root_ok = true;
    walk(body, |path, ev| {
        let Some(here) = path.last() else { return };
        if path.len() == 1 {
            root_ok &= is(here, NS_ISCOMPOSING, "isComposing");
        }
        if let Xml::Text(t) = ev
            && path.len() == 2
            && is(here, NS_ISCOMPOSING, "state")
        {
            collect(&mut state, t, 16);
        }
    })?;
    if !root_ok {
        return Err(BodyError::WrongRoot(NS_ISCOMPOSING, "isComposing"));
    }
    match state.trim() {
        "active" => Ok(true),
        "idle" => Ok(false),
        _ => Err(BodyError::Missing("state")),
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
/// line breaks and block ends become newlines, character references are decoded. The HTML is
/// read by [`crate::html::parse`], so its nesting is capped.
pub fn html_to_text(html: &str) -> String {
    fn walk(nodes: &[Node], out: &mut String) {
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Elem { name, children, .. } => match name.as_str() {
                    "script" | "style" => {}
                    "br" => out.push('\n'),
                    "p" | "div" | "li" | "tr" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6"
                    | "blockquote" => {
                        walk(children, out);
                        out.push('\n');
                    }
                    _ => walk(children, out),
                },
            }
        }
    }
    let mut out = String::with_capacity(html.len());
    walk(&crate::html::parse(html), &mut out);
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
    use crate::text::decode_entities;

    #[test]
    fn a_long_note_is_written_as_much_as_a_reader_keeps() {
        // Markup-heavy notes grow fivefold when escaped: each of these once made a document
        // larger than a reader takes, which then read as nothing.
        for unit in ["<a href=\"x\">", "&", "\u{1F600}", "plain text "] {
            let long = unit.repeat(MAX_XML_BODY);
            let doc = pidf(
                "sip:a@b",
                &Presence {
                    state: PresenceState::Online,
                    status: Some(long.clone()),
                },
            );
            assert!(doc.len() < 4 * 1024, "{unit:?}: {} bytes", doc.len());
            let read = parse_pidf(&doc).expect("reads");
            assert_eq!(read.state, PresenceState::Online);
            let expected: String = long.trim().chars().take(MAX_NOTE_CHARS).collect();
            assert_eq!(read.status.as_deref(), Some(expected.trim()));
        }
    }

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
            assert_eq!(parse_pidf(&pidf("sip:a@b", &p)), Ok(p));
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
            Ok(Presence {
                state: PresenceState::Unavailable,
                status: Some("Lunch".into())
            })
        );
        let closed = br#"<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple id="t"><status><basic>closed</basic></status></tuple></presence>"#;
        assert_eq!(parse_pidf(closed).unwrap().state, PresenceState::Offline);
        assert_eq!(
            parse_pidf(br#"<presence xmlns="urn:ietf:params:xml:ns:pidf"/>"#),
            Err(BodyError::Missing("tuple/status/basic"))
        );
        assert!(matches!(
            parse_pidf(b"\xff\xfe"),
            Err(BodyError::Malformed(_))
        ));
    }

    /// A PIDF document written the many ways XML allows: any prefixes (or none), comments
    /// and whitespace between elements, the note as CDATA or with character references, and
    /// attributes (namespace declarations among them) in any order.
    fn pidf_spelled(
        basic: &str,
        away: bool,
        note: &str,
        prefix: &str,
        cdata: bool,
        comment: bool,
        attrs_first: bool,
    ) -> String {
        let p = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}:")
        };
        let decl = if prefix.is_empty() {
            format!("xmlns=\"{NS_PIDF}\"")
        } else {
            format!("xmlns:{prefix}=\"{NS_PIDF}\"")
        };
        let c = if comment { "<!-- a <b> & c -->\n " } else { "" };
        // rxml takes a comment before the root element, without whitespace after it, but
        // none after the root.
        let outer = if comment { "<!-- a <b> & c -->" } else { "" };
        let attrs = if attrs_first {
            format!("entity='sip:a@b' {decl} xmlns:r='{NS_RPID}'")
        } else {
            format!("xmlns:r='{NS_RPID}' {decl} entity='sip:a@b'")
        };
        let note = if cdata {
            format!("<![CDATA[{}]]>", note.replace("]]>", "]]]]><![CDATA[>"))
        } else {
            note.chars()
                .map(|ch| format!("&#x{:x};", u32::from(ch)))
                .collect()
        };
        let activity = if away {
            format!(
                "<dm:person xmlns:dm='{NS_DM}' id='p'>{c}<r:activities><r:away/></r:activities></dm:person>"
            )
        } else {
            String::new()
        };
        format!(
            "<?xml version='1.0' encoding='UTF-8'?>{outer}<{p}presence {attrs}>{c}<{p}tuple id='t'>{c}\
             <{p}status>{c}<{p}basic>{basic}</{p}basic></{p}status>{c}<{p}note>{note}</{p}note>\
             </{p}tuple>{activity}</{p}presence>"
        )
    }

    #[test]
    fn pidf_by_class_of_spelling() {
        let doc = pidf_spelled("open", true, "a ]]> b & <c>", "p", true, true, true);
        assert_eq!(
            parse_pidf(doc.as_bytes()),
            Ok(Presence {
                state: PresenceState::Unavailable,
                status: Some("a ]]> b & <c>".into())
            })
        );
        // Namespaces decide, not local names: the same names in another namespace, or none,
        // are not PIDF.
        let foreign = "<presence xmlns='urn:x'><tuple><status><basic>open</basic></status></tuple></presence>";
        assert_eq!(
            parse_pidf(foreign.as_bytes()),
            Err(BodyError::WrongRoot(NS_PIDF, "presence"))
        );
        let foreign_basic = format!(
            "<presence xmlns='{NS_PIDF}'><tuple><status><basic xmlns='urn:x'>open</basic></status></tuple></presence>"
        );
        assert!(parse_pidf(foreign_basic.as_bytes()).is_err());
        let foreign_away = format!(
            "<presence xmlns='{NS_PIDF}'><tuple><status><basic>open</basic></status></tuple><activities xmlns='urn:x'><away/></activities></presence>"
        );
        assert_eq!(
            parse_pidf(foreign_away.as_bytes()).unwrap().state,
            PresenceState::Online
        );
        // Several tuples: one open device is enough.
        let two = format!(
            "<presence xmlns='{NS_PIDF}'><tuple id='a'><status><basic>closed</basic></status></tuple>\
             <tuple id='b'><status><basic>open</basic></status></tuple></presence>"
        );
        assert_eq!(
            parse_pidf(two.as_bytes()).unwrap().state,
            PresenceState::Online
        );
    }

    #[test]
    fn hostile_xml_is_refused_not_expanded() {
        // A DTD (and so any entity of its own), an undeclared prefix, a truncated document,
        // trailing garbage, nesting past the cap, and a body past the size cap.
        let bomb = format!(
            "<?xml version='1.0'?><!DOCTYPE p [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;'>]>\
             <presence xmlns='{NS_PIDF}'><tuple><status><basic>open</basic></status><note>&b;</note></tuple></presence>"
        );
        assert!(matches!(
            parse_pidf(bomb.as_bytes()),
            Err(BodyError::Malformed(_))
        ));
        for bad in [
            "<p:presence><p:tuple/></p:presence>".to_owned(),
            format!("<presence xmlns='{NS_PIDF}'><tuple><status><basic>open"),
            format!("<presence xmlns='{NS_PIDF}'/><x/>"),
            format!("<presence xmlns='{NS_PIDF}'><note>&nbsp;</note></presence>"),
            String::new(),
        ] {
            assert!(
                matches!(parse_pidf(bad.as_bytes()), Err(BodyError::Malformed(_))),
                "{bad}"
            );
        }
        let deep = format!(
            "<presence xmlns='{NS_PIDF}'>{}{}</presence>",
            "<x>".repeat(100_000),
            "</x>".repeat(100_000)
        );
        assert_eq!(
            parse_pidf(&deep.as_bytes()[..MAX_XML_BODY]),
            Err(BodyError::TooDeep)
        );
        assert_eq!(
            parse_pidf(deep.as_bytes()),
            Err(BodyError::TooLarge(deep.len()))
        );
        let long_note = format!(
            "<presence xmlns='{NS_PIDF}'><tuple><status><basic>open</basic></status><note>{}</note></tuple></presence>",
            "é".repeat(20_000)
        );
        let status = parse_pidf(long_note.as_bytes()).unwrap().status.unwrap();
        assert_eq!(status.chars().count(), MAX_NOTE_CHARS);
    }

    #[test]
    fn typing_both_ways() {
        assert_eq!(parse_iscomposing(&iscomposing(true)), Ok(true));
        assert_eq!(parse_iscomposing(&iscomposing(false)), Ok(false));
        assert_eq!(
            parse_iscomposing(b"<isComposing/>"),
            Err(BodyError::WrongRoot(NS_ISCOMPOSING, "isComposing"))
        );
        let spelled = format!(
            "<!-- c --><t:isComposing xmlns:t='{NS_ISCOMPOSING}'><t:state><![CDATA[act]]>&#x69;ve</t:state></t:isComposing>"
        );
        assert_eq!(parse_iscomposing(spelled.as_bytes()), Ok(true));
    }

    proptest::proptest! {
        #[test]
        fn pidf_reads_every_spelling(
            state in proptest::sample::select(vec![
                PresenceState::Online,
                PresenceState::Unavailable,
                PresenceState::Offline,
            ]),
            note in "\\PC{0,40}",
            prefix in proptest::sample::select(vec!["", "p", "pidf", "x-y.z"]),
            cdata: bool,
            comment: bool,
            attrs_first: bool,
        ) {
            let (basic, away) = match state {
                PresenceState::Online => ("open", false),
                PresenceState::Unavailable => ("open", true),
                PresenceState::Offline => ("closed", false),
            };
            let doc = pidf_spelled(basic, away, &note, prefix, cdata, comment, attrs_first);
            let expected: String = note.trim().chars().take(MAX_NOTE_CHARS).collect();
            proptest::prop_assert_eq!(
                parse_pidf(doc.as_bytes()),
                Ok(Presence { state, status: (!expected.is_empty()).then_some(expected) })
            );
        }

        #[test]
        fn any_bytes_are_read_or_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_pidf(&bytes);
            let _ = parse_iscomposing(&bytes);
        }
    }

    #[test]
    fn html_becomes_text() {
        assert_eq!(
            html_to_text("<p>Hello <b>you</b> &amp; me</p><p>bye&#33;<br>x</p>"),
            "Hello you & me\nbye!\nx"
        );
        assert_eq!(html_to_text("a<script>alert(1)</script>b"), "ab");
        assert_eq!(html_to_text("<unclosed"), "");
        // Each block element ends with a line break, closed by its end tag or not; a stray
        // end tag closes nothing.
        assert_eq!(html_to_text("<p>a<p>b</p>c</p>d"), "ab\nc\nd");
        assert_eq!(html_to_text("a</p>b<p/>c"), "ab\nc");
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
