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
mod tests;
