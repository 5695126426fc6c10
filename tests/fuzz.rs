//! Fuzz targets for everything that reads untrusted input, as property tests.
//!
//! Each target runs `PROPTEST_CASES` cases (proptest's default, 256, under `cargo test`);
//! `docs/testing.md` gives the command that runs them long. The generators produce hostile
//! input by class rather than random strings alone: arbitrary Unicode, control and
//! XML-illegal characters, character references, deep nesting, huge attributes, unbalanced
//! markup, valid structure mixed with garbage, and byte streams cut into reads of random
//! sizes. The properties: nothing panics; what goes to a network is legal for it (XML 1.0
//! characters for XMPP, no line breaks in SIP header values); converters stay within a
//! bound linear in their input; round trips hold where they exist.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use futures::StreamExt;
use isthmus::fuzz;
use isthmus::network::{Presence, PresenceState};
use isthmus::sip::ids as sip_ids;
use isthmus::text::{decode_entities, display_name, escape_markup};
use isthmus::xmpp::convert::{html_to_styled_text, sanitize_xhtml, styled_text_to_html};
use isthmus::xmpp::ids as xmpp_ids;
use isthmus::xmpp::limits::{Guard, Limited};
use isthmus::xmpp::xml_safe::{self, is_xml_char};
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncWrite, BufStream, ReadBuf};
use tokio_xmpp::parsers::jid::Jid;
use tokio_xmpp::parsers::message::{Lang, Message, MessageType};
use tokio_xmpp::parsers::minidom::Element;
use tokio_xmpp::parsers::stanza::Stanza;
use tokio_xmpp::xmlstream::{ReadError, StreamHeader, Timeouts, initiate_stream};

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Pieces that break naive parsers: markup, references (good, bad, illegal, huge), control
/// and XML-illegal characters, quotes, line breaks, wide characters.
const NASTY: &[&str] = &[
    "<",
    ">",
    "&",
    "'",
    "\"",
    "/",
    "\\",
    "=",
    ";",
    ":",
    "@",
    "%",
    "#",
    "`",
    "*",
    "_",
    "~",
    "\n",
    "\r\n",
    "\r",
    "\t",
    " ",
    "\u{0}",
    "\u{1}",
    "\u{8}",
    "\u{B}",
    "\u{1F}",
    "\u{7F}",
    "\u{85}",
    "\u{2028}",
    "\u{FEFF}",
    "\u{FFFE}",
    "\u{FFFF}",
    "\u{10FFFF}",
    "\u{1F600}",
    "é",
    "\u{301}",
    "&amp;",
    "&lt;",
    "&gt;",
    "&quot;",
    "&apos;",
    "&nbsp;",
    "&#0;",
    "&#1;",
    "&#x0;",
    "&#xB;",
    "&#xFFFE;",
    "&#xD800;",
    "&#x110000;",
    "&#99999999999;",
    "&#x1F600;",
    "&#65;",
    "&bogus;",
    "&;",
    "&#;",
    "&#x;",
    "&amp",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "<?xml",
    "?>",
    "<!DOCTYPE",
    "<!ENTITY x 'y'>",
    "</",
    "/>",
    "<>",
    "< >",
    "<a",
    "<a>",
    "</a>",
    "<b>",
    "</b>",
    "<br>",
    "<br/>",
    "<p>",
    "</p>",
    "<pre>",
    "</pre>",
    "<code>",
    "<li>",
    "<ol>",
    "<ul>",
    "<script>",
    "</script>",
    "<style>",
    "<mx-reply>",
    "</mx-reply>",
    "<blockquote>",
    "</blockquote>",
    "<a href=\"https://matrix.to/#/@u:hs\">",
    "<a href='javascript:x'>",
    "<hr>",
    "```",
    "> ",
    "sip:",
    "sips:",
    "xmpp:",
    "https://",
    "<sip:a@b>",
    "@",
    "!",
    "%2",
    "%zz",
    "%00",
    "%+1",
    "=40",
    "\\40",
    "\\5c",
    "\\2f",
    "\\",
    "~r.",
    "+01:00",
    "Z",
    ".999",
    "T",
    "-",
];

/// Text built from hostile pieces, arbitrary Unicode and long runs.
fn hostile_text(max_parts: usize) -> impl Strategy<Value = String> {
    let part = prop_oneof![
        4 => prop::sample::select(NASTY).prop_map(str::to_owned),
        2 => any::<String>(),
        2 => "[a-z0-9 ]{0,12}",
        1 => (prop::sample::select(NASTY), 1usize..3000).prop_map(|(p, n)| p.repeat(n)),
        1 => (any::<char>(), 1usize..5000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ];
    prop::collection::vec(part, 0..max_parts).prop_map(|v| v.concat())
}

/// Attribute values as a hostile sender writes them: hostile text, escaped or raw.
fn attr_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9@./:_-]{0,24}",
        2 => hostile_text(6).prop_map(|t| escape_markup(&t)),
        1 => hostile_text(6),
        1 => (1usize..20_000).prop_map(|n| "x".repeat(n)),
    ]
}

/// HTML as a Matrix client might send it, or an attacker: random trees of known and unknown
/// tags with hostile attributes and text, unbalanced on purpose, and very deep nesting.
fn hostile_html() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "b",
        "strong",
        "i",
        "em",
        "del",
        "s",
        "code",
        "pre",
        "blockquote",
        "p",
        "div",
        "h1",
        "h6",
        "ul",
        "ol",
        "li",
        "a",
        "br",
        "hr",
        "img",
        "span",
        "font",
        "script",
        "style",
        "mx-reply",
        "head",
        "table",
        "tr",
        "x:y",
        "",
    ]);
    let leaf = prop_oneof![hostile_text(8), "[a-z ]{0,16}", Just(String::new()),];
    let tree = leaf.prop_recursive(8, 256, 8, move |inner| {
        (
            names.clone(),
            prop::collection::vec((("[a-z]{1,6}"), attr_value()), 0..3),
            prop::collection::vec(inner, 0..6),
            0u8..10,
        )
            .prop_map(|(name, attrs, children, shape)| {
                let attrs: String = attrs
                    .iter()
                    .map(|(k, v)| match shape % 3 {
                        0 => format!(" {k}=\"{v}\""),
                        1 => format!(" {k}='{v}'"),
                        _ => format!(" {k}={v}"),
                    })
                    .collect();
                let inner = children.concat();
                match shape {
                    // Unclosed, stray end tag, self-closing, and well-formed.
                    0 => format!("<{name}{attrs}>{inner}"),
                    1 => format!("{inner}</{name}>"),
                    2 => format!("<{name}{attrs}/>{inner}"),
                    _ => format!("<{name}{attrs}>{inner}</{name}>"),
                }
            })
    });
    prop_oneof![
        6 => tree,
        1 => (prop::sample::select(vec!["<b>", "<blockquote>", "<ol><li>", "<a href=x>", "<pre>", "<p>"]),
              1usize..5000, hostile_text(4))
            .prop_map(|(open, n, text)| format!("{}{text}", open.repeat(n))),
        1 => hostile_text(40),
    ]
}

/// Cuts `bytes` into reads of the given sizes (cycled).
fn chunked(bytes: &[u8], cuts: &[usize]) -> VecDeque<Vec<u8>> {
    let mut chunks = VecDeque::new();
    let (mut at, mut k) = (0, 0);
    while at < bytes.len() {
        let n = cuts[k % cuts.len()].clamp(1, bytes.len() - at);
        chunks.push_back(bytes[at..at + n].to_vec());
        at += n;
        k += 1;
    }
    chunks
}

/// A peer that hands out one scripted chunk per read, then EOF, and swallows writes.
struct Script(VecDeque<Vec<u8>>);

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut c) = self.0.pop_front() {
            let n = c.len().min(buf.remaining());
            buf.put_slice(&c[..n]);
            if n < c.len() {
                self.0.push_front(c.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Reads everything the limits let through from `chunks`.
async fn through_limits(chunks: VecDeque<Vec<u8>>, guard: &Guard) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut l = Limited::new(Script(chunks), guard.clone());
    let mut out = Vec::new();
    l.read_to_end(&mut out).await?;
    Ok(out)
}

const SERVER_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' from='example.org' id='s1' version='1.0'>\
    <stream:features/>";

/// Runs `chunks` (a server's stream) through the limits into the XML stream parser, as an
/// own-account connection reads it: the elements parsed, in order, and whether the stream
/// failed, and why. Stops after `max` elements.
async fn parse_stream(
    chunks: VecDeque<Vec<u8>>,
    guard: &Guard,
    max: usize,
) -> (Vec<Element>, Option<String>) {
    let io = BufStream::new(Limited::new(Script(chunks), guard.clone()));
    let header = StreamHeader {
        to: Some("example.org".into()),
        from: None,
        id: None,
    };
    let pending = match initiate_stream(io, "jabber:client", header, Timeouts::default()).await {
        Ok(p) => p,
        Err(e) => return (Vec::new(), Some(format!("header: {e}"))),
    };
    let mut xml = match pending.recv_features::<Element>().await {
        Ok((_, xml)) => xml,
        Err(e) => return (Vec::new(), Some(format!("features: {e}"))),
    };
    let mut out = Vec::new();
    while out.len() < max {
        match xml.next().await {
            Some(Ok(el)) => out.push(el),
            Some(Err(ReadError::ParseError(_))) => continue,
            Some(Err(ReadError::StreamFooterReceived)) | None => return (out, None),
            Some(Err(e)) => return (out, Some(e.to_string())),
        }
    }
    (out, None)
}

/// Payloads the inbound message handler looks at, with hostile values.
fn payload() -> impl Strategy<Value = String> {
    let v = || attr_value().prop_map(|s| escape_markup(&s));
    let t = || hostile_text(6).prop_map(|s| escape_markup(&s));
    prop_oneof![
        v().prop_map(|id| format!("<origin-id xmlns='urn:xmpp:sid:0' id=\"{id}\"/>")),
        (v(), v()).prop_map(|(id, by)| format!("<stanza-id xmlns='urn:xmpp:sid:0' id=\"{id}\" by=\"{by}\"/>")),
        (prop_oneof![
            Just("2026-11-26T22:31:02.5+01:00".to_owned()),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?(Z|[+-][0-9]{2}:[0-9]{2})",
            v(),
        ], v()).prop_map(|(stamp, from)| format!("<delay xmlns='urn:xmpp:delay' stamp=\"{}\" from=\"{from}\"/>", escape_markup(&stamp))),
        v().prop_map(|id| format!("<replace xmlns='urn:xmpp:message-correct:0' id=\"{id}\"/>")),
        v().prop_map(|id| format!("<retract xmlns='urn:xmpp:message-retract:1' id=\"{id}\"/>")),
        (v(), t()).prop_map(|(id, r)| format!("<retract xmlns='urn:xmpp:message-retract:1' id=\"{id}\"><moderated xmlns='urn:xmpp:message-moderate:1'/><reason>{r}</reason></retract>")),
        (v(), t()).prop_map(|(id, r)| format!("<apply-to xmlns='urn:xmpp:fasten:0' id=\"{id}\"><moderated xmlns='urn:xmpp:message-moderate:0'><retract xmlns='urn:xmpp:message-retract:0'/><reason>{r}</reason></moderated><retract xmlns='urn:xmpp:message-retract:0'/></apply-to>")),
        (v(), prop::collection::vec(t(), 0..20)).prop_map(|(id, ks)| format!(
            "<reactions xmlns='urn:xmpp:reactions:0' id=\"{id}\">{}</reactions>",
            ks.iter().map(|k| format!("<reaction>{k}</reaction>")).collect::<String>())),
        v().prop_map(|id| format!("<reply xmlns='urn:xmpp:reply:0' id=\"{id}\" to='a@b'/>")),
        (v(), v(), any::<bool>()).prop_map(|(s, e, with_body)| if with_body {
            format!("<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start=\"{s}\" end=\"{e}\"/></fallback>")
        } else {
            "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'/>".to_owned()
        }),
        (0usize..100_000, 0usize..100_000).prop_map(|(s, e)| format!("<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='{s}' end='{e}'/></fallback>")),
        prop_oneof![Just("https://example.org/f.png".to_owned()), v()].prop_map(|u| format!("<x xmlns='jabber:x:oob'><url>{}</url></x>", escape_markup(&u))),
        hostile_html().prop_map(|h| format!("<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>{}</body></html>", xmlish(&h))),
        t().prop_map(|x| format!("<unknown xmlns='urn:x'>{x}</unknown>")),
    ]
}

/// HTML made well-formed enough to sit inside XML: tags kept when they balance, else escaped.
fn xmlish(html: &str) -> String {
    match Element::from_str(&format!("<r xmlns='x'>{html}</r>")) {
        Ok(_) => html.to_owned(),
        Err(_) => escape_markup(html),
    }
}

/// An inbound message stanza: well-formed (`raw` false) or with raw hostile text pasted in.
fn message_stanza() -> impl Strategy<Value = String> {
    (
        attr_value(),
        attr_value(),
        prop::option::of(hostile_text(10)),
        prop::collection::vec(payload(), 0..5),
        any::<bool>(),
        prop::option::of(hostile_text(4)),
    )
        .prop_map(|(from, id, body, payloads, raw, garbage)| {
            let body = body
                .map(|b| {
                    if raw {
                        format!("<body>{b}</body>")
                    } else {
                        format!("<body>{}</body>", escape_markup(&b))
                    }
                })
                .unwrap_or_default();
            let from = if raw { from } else { escape_markup(&from) };
            let garbage = if raw { garbage.unwrap_or_default() } else { String::new() };
            format!(
                "<message from=\"{from}@example.org/r\" to='me@example.org' id=\"{}\" type='chat'>{body}{}{garbage}</message>",
                escape_markup(&id),
                payloads.concat()
            )
        })
}

/// Whether every element below `el` is on the Matrix allow-list, with only safe links.
fn only_allowed(el: &Element) -> bool {
    const ALLOWED: [&str; 18] = [
        "b",
        "strong",
        "i",
        "em",
        "u",
        "s",
        "del",
        "code",
        "pre",
        "blockquote",
        "p",
        "br",
        "ul",
        "ol",
        "li",
        "a",
        "span",
        "h3",
    ];
    el.children().all(|c| {
        let attrs_ok = c.attrs().iter().all(|((_, k), v)| {
            c.name() == "a" && k.as_str() == "href" && {
                let v = v.to_ascii_lowercase();
                ["https://", "http://", "mailto:", "xmpp:"]
                    .iter()
                    .any(|p| v.starts_with(p))
            }
        });
        ALLOWED.contains(&c.name()) && attrs_ok && only_allowed(c)
    })
}

/// Whether `s` is free of line breaks and other controls (a SIP header value).
fn header_safe(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

// ---------------------------------------------------------------------------------------------
// XMPP inbound: the stream scanner and the parser behind it
// ---------------------------------------------------------------------------------------------

proptest! {
    /// Arbitrary bytes in arbitrary reads: the scanner never panics, releases a subsequence
    /// of what it read in order, and reports skipped stanzas with bounded fields.
    #[test]
    fn xmpp_limits_take_arbitrary_bytes(
        prefix in any::<bool>(),
        body in prop::collection::vec(prop_oneof![
            3 => any::<u8>().prop_map(|b| vec![b]),
            2 => prop::sample::select(NASTY).prop_map(|s| s.as_bytes().to_vec()),
            1 => message_stanza().prop_map(String::into_bytes),
            1 => (1usize..200).prop_map(|n| b"<a>".repeat(n)),
            1 => (1usize..200).prop_map(|n| b"</a>".repeat(n)),
        ], 0..64),
        cuts in prop::collection::vec(1usize..9000, 1..16),
        max_bytes in prop::sample::select(vec![64usize, 512, 4096, 65536]),
        max_depth in 0usize..20,
    ) {
        let mut input = if prefix { SERVER_HEADER.as_bytes().to_vec() } else { Vec::new() };
        input.extend(body.concat());
        let guard = Guard::new(max_bytes, max_depth);
        let out = runtime().block_on(through_limits(chunked(&input, &cuts), &guard));
        if let Ok(out) = out {
            // A subsequence of the input, in order.
            let mut it = input.iter();
            prop_assert!(out.iter().all(|b| it.any(|x| x == b)));
        }
        for s in guard.take_skipped() {
            prop_assert!(s.name.chars().count() <= 64);
            for v in [&s.from, &s.to, &s.id, &s.kind].into_iter().flatten() {
                prop_assert!(v.len() <= 3071);
            }
        }
    }

    /// Message streams, well-formed or not, through the scanner into the XML parser and the
    /// pure parts of the message handler: nothing panics, and each stanza read yields an ID,
    /// bounded content and bounded fields.
    #[test]
    fn xmpp_inbound_stanzas_are_handled(
        stanzas in prop::collection::vec(prop_oneof![
            6 => message_stanza(),
            1 => (1usize..100).prop_map(|n| format!("<message>{}{}</message>", "<a>".repeat(n), "</a>".repeat(n))),
            1 => (1usize..40_000).prop_map(|n| format!("<message id='{}'/>", "i".repeat(n))),
            1 => hostile_text(6),
        ], 1..8),
        cuts in prop::collection::vec(1usize..5000, 1..16),
        nicks in prop::collection::vec(("[a-z@:,]{0,6}", "@[a-z]{1,4}:hs"), 0..3),
    ) {
        let mut input = SERVER_HEADER.to_owned();
        for s in &stanzas {
            input.push_str(s);
        }
        input.push_str("</stream:stream>");
        let guard = Guard::new(64 * 1024, 16);
        let (elements, _) = runtime().block_on(parse_stream(chunked(input.as_bytes(), &cuts), &guard, 64));
        for el in elements {
            let size = String::from(&el).len();
            let Some(m) = fuzz::xmpp_message(el, "example.org", &nicks) else { continue };
            prop_assert!(!m.id.is_empty());
            if let Some(c) = &m.content {
                prop_assert!(c.body.len() <= size);
                if let Some(h) = &c.html {
                    prop_assert!(h.len() <= 64 * size + 1024, "html {} from a stanza of {}", h.len(), size);
                }
            }
            if let Some((_, Some(reason))) = &m.moderation {
                prop_assert!(reason.chars().count() <= 512);
            }
            if let Some(fuzz::Kind::Reactions(_, keys)) = &m.kind {
                prop_assert!(keys.iter().all(|k| !k.is_empty() && k.chars().count() <= 16));
            }
            for t in [m.delay_ms, m.trusted_delay_ms].into_iter().flatten() {
                prop_assert!(t <= isthmus::network::now_ms());
            }
        }
    }

    /// XMPP date-times: any text parses or not without panicking; formatting round-trips.
    #[test]
    fn xmpp_time_parses_anything_and_round_trips(
        s in prop_oneof![
            hostile_text(6),
            "[0-9+-]{4}-[0-9+-]{2}-[0-9+-]{2}T[0-9+-]{2}:[0-9+-]{2}:[0-9+-]{2}(\\.[0-9]{0,30})?(Z|[+-][0-9+-]{2}:[0-9+-]{2}|.{0,4})",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9][\u{80}-\u{10FFFF}].{0,8}",
        ],
        ms in 0u64..253_402_300_800_000,
    ) {
        let _ = fuzz::parse_xmpp_time(&s);
        prop_assert_eq!(fuzz::parse_xmpp_time(&fuzz::rfc3339(ms)), Some(ms));
    }

    /// XEP-0106 node escaping round-trips, and every Matrix user gets a valid JID or none.
    #[test]
    fn xmpp_addressing_round_trips(node in hostile_text(8), user in hostile_text(4), raw in hostile_text(4)) {
        prop_assert_eq!(xmpp_ids::unescape_node(&xmpp_ids::escape_node(&node)), node);
        let a = xmpp_ids::Addressing::new("matrix.example.org", "example.org");
        let _ = a.contact(&raw);
        for id in [user.clone(), format!("@{user}:example.org"), format!("@{user}:other.org")] {
            // Every valid Matrix user ID (historical ones too) that has an address maps back.
            if let Some(jid) = a.puppet(&id)
                && ruma::UserId::parse(&id).is_ok()
            {
                prop_assert_eq!(a.matrix_user(&jid), Some(id.clone()));
            }
            let _ = a.hosted_room(&id);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Converters, both ways
// ---------------------------------------------------------------------------------------------

/// Serialises a message body to XMPP after the connector's cleaning, as the link writes it.
fn write_to_xmpp(body: &str) -> Result<String, String> {
    let mut m = Message::new(Some(Jid::new("bob@example.org").expect("jid")));
    m.type_ = MessageType::Chat;
    m.bodies.insert(Lang::new(), body.to_owned());
    let Stanza::Message(cleaned) =
        xml_safe::stanza(Stanza::Message(m)).map_err(|e| e.to_string())?
    else {
        return Err("not a message".into());
    };
    let el: Element = cleaned.into();
    let mut out = Vec::new();
    el.write_to(&mut out).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

proptest! {
    /// Matrix HTML → XEP-0393 text: no panic, output linear in the input, and what is sent
    /// writes as XML and parses back.
    #[test]
    fn matrix_html_to_xmpp_text(html in hostile_html()) {
        let text = html_to_styled_text(&html);
        prop_assert!(text.len() <= 80 * html.len() + 64, "{} bytes from {}", text.len(), html.len());
        let xml = write_to_xmpp(&text);
        prop_assert!(xml.is_ok(), "{:?}", xml);
        let xml = xml.unwrap();
        prop_assert!(xml.chars().all(is_xml_char));
        let back = Element::from_str(&xml);
        prop_assert!(back.is_ok(), "{:?}", back);
    }

    /// XEP-0393 text → Matrix HTML: no panic, output linear in the input, and the HTML is
    /// balanced markup (it parses as XML once wrapped).
    #[test]
    fn xmpp_styling_to_matrix_html(text in hostile_text(40)) {
        if let Some(html) = styled_text_to_html(&text) {
            prop_assert!(html.len() <= 32 * text.len() + 64, "{} bytes from {}", html.len(), text.len());
            let wrapped = format!("<r xmlns='x'>{}</r>", xml_safe::clean(&html).replace("<br>", "<br/>"));
            prop_assert!(Element::from_str(&wrapped).is_ok(), "{}", html);
        }
    }

    /// XHTML-IM → Matrix HTML: no panic, bounded, nothing outside the allow-list survives.
    #[test]
    fn xhtml_im_is_sanitised(html in hostile_html()) {
        let doc = format!(
            "<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>{}</body></html>",
            xmlish(&xml_safe::clean(&html))
        );
        let Ok(el) = Element::from_str(&doc) else { return Ok(()) };
        if let Some(out) = sanitize_xhtml(&el) {
            prop_assert!(out.len() <= 8 * doc.len() + 64);
            let parsed = Element::from_str(&format!("<r xmlns='x'>{}</r>", out.replace("<br>", "<br/>")));
            prop_assert!(parsed.is_ok(), "{}", out);
            prop_assert!(only_allowed(&parsed.unwrap()), "{}", out);
        }
    }

    /// Text helpers: escaping round-trips through decoding; display names are short and
    /// printable; decoding never grows the text.
    #[test]
    fn text_helpers(s in hostile_text(20)) {
        prop_assert_eq!(decode_entities(&escape_markup(&s)), s.clone());
        prop_assert!(decode_entities(&s).len() <= s.len());
        if let Some(n) = display_name(&s) {
            prop_assert!(n.chars().count() <= 100 && header_safe(&n) && !n.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SIP: bodies, header parsing, addressing
// ---------------------------------------------------------------------------------------------

fn presence_state() -> impl Strategy<Value = PresenceState> {
    prop::sample::select(vec![
        PresenceState::Online,
        PresenceState::Unavailable,
        PresenceState::Offline,
    ])
}

proptest! {
    /// SIP bodies: PIDF and typing documents of any shape read without panicking; our own
    /// PIDF round-trips; HTML to text stays linear; splitting respects the limit and loses
    /// nothing but the separators it cut at.
    #[test]
    fn sip_bodies(
        doc in prop_oneof![
            hostile_text(20),
            (hostile_text(4), hostile_text(4), hostile_html()).prop_map(|(b, n, x)| format!(
                "<?xml version='1.0'?><presence xmlns='urn:ietf:params:xml:ns:pidf'><tuple><status><basic>{b}</basic></status><note>{n}</note></tuple>{x}<rpid:away/></presence>")),
            hostile_html().prop_map(|x| format!("<isComposing><state>{x}</state></isComposing>")),
        ],
        html in hostile_html(),
        state in presence_state(),
        note in prop::option::of(hostile_text(6)),
        max in 0usize..400,
    ) {
        let _ = fuzz::parse_pidf(doc.as_bytes());
        let _ = fuzz::parse_iscomposing(doc.as_bytes());
        let presence = Presence { state, status: note.clone() };
        let read = fuzz::parse_pidf(&fuzz::pidf("sip:a@b", &presence));
        let expected_note = note
            .map(|n| {
                let n: String = n.chars().filter(|&c| fuzz::is_body_char(c)).collect();
                n.trim().chars().take(256).collect::<String>()
            })
            .filter(|n| !n.is_empty());
        prop_assert_eq!(read.as_ref().ok().map(|p| p.state), Some(state));
        let got_note = read.ok().and_then(|p| p.status);
        prop_assert_eq!(got_note.as_deref().map(str::trim), expected_note.as_deref().map(str::trim));

        // Text never grows past three times the HTML: a NUL in raw text reads as U+FFFD, and a
        // few named references are longer than their name.
        let text = fuzz::html_to_text(&html);
        prop_assert!(text.len() <= 3 * html.len());
        let parts = fuzz::split(&text, max);
        let limit = max.max(16);
        prop_assert!(parts.iter().all(|p| p.len() <= limit));
        let total: usize = parts.iter().map(String::len).sum();
        prop_assert!(total <= text.len() && total + parts.len() >= text.len());
    }

    /// SIP header helpers: name-addr and list parsing take anything; a quoted display name
    /// never carries a line break or a control character.
    #[test]
    fn sip_headers(value in hostile_text(12), display in hostile_text(8)) {
        let na = fuzz::name_addr(&value);
        prop_assert!(na.uri.len() <= value.len());
        let list = fuzz::split_list(&value);
        prop_assert!(list.iter().map(String::len).sum::<usize>() <= value.len());
        let q = fuzz::quoted(&display);
        prop_assert!(header_safe(&q), "{:?}", q);
        prop_assert!(q.starts_with('"') && q.ends_with('"'));
        // What it quotes reads back as the display name (controls dropped, 64 characters).
        let read = fuzz::name_addr(&format!("{q} <sip:a@b>;tag=t"));
        prop_assert_eq!(read.uri, "sip:a@b");
        prop_assert_eq!(read.tag.as_deref(), Some("t"));
        let clean: String = display
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .map(|c| match c {
                '<' => '‹',
                '>' => '›',
                c => c,
            })
            .collect();
        let clean = clean.trim();
        prop_assert_eq!(read.display.as_deref(), (!clean.is_empty()).then_some(clean));
        let list = fuzz::split_list(&format!("{q} <sip:a@b>, {q} <sip:c@d>"));
        prop_assert_eq!(list.len(), 2);
    }

    /// SIP addressing: any input parses or not; every address it accepts is header-safe and
    /// round-trips through the URI the bridge writes; Matrix users round-trip through their
    /// gateway user part.
    #[test]
    fn sip_addressing(
        raw in hostile_text(8),
        user in prop_oneof![hostile_text(4), "[a-zA-Z0-9;?/&=+$,!~*'()._%-]{1,12}"],
        host in "[a-z0-9.-]{1,20}",
        local in "[a-z0-9._=/+-]{1,12}",
        server in prop_oneof![Just("example.org".to_owned()), "[a-z0-9.-]{1,12}(:[0-9]{1,5})?"],
    ) {
        let a = sip_ids::Addressing::new("gw.example.org", "example.org");
        for input in [raw.clone(), format!("sip:{raw}@h"), format!("<sip:{raw}@host;tag=1>")] {
            if let Ok(aor) = a.contact(&input) {
                prop_assert!(header_safe(&aor), "{:?}", aor);
                let uri = sip_ids::contact_uri(&aor);
                prop_assert!(header_safe(&uri));
                prop_assert_eq!(sip_ids::parse_aor(&uri), Ok(aor.clone()));
            }
            let _ = a.local(&input);
        }
        // A contact the bridge accepts round-trips through the URI it writes.
        let aor = format!("{user}@{host}");
        if let Ok(parsed) = sip_ids::parse_aor(&format!("sip:{}@{host}", sip_ids::escape_user(&user))) {
            prop_assert_eq!(&parsed, &aor);
            prop_assert_eq!(sip_ids::parse_aor(&sip_ids::contact_uri(&parsed)), Ok(aor.clone()));
        } else {
            let user_ok = !user.is_empty() && user.len() <= 128 && user.chars().all(|c| !c.is_control() && !c.is_whitespace() && !matches!(c, '<' | '>' | '"' | '@'));
            prop_assert!(!user_ok, "{:?} refused", user);
        }
        prop_assert_eq!(sip_ids::percent_decode(&sip_ids::escape_user(&user)), Some(user.clone()));
        let id = format!("@{local}:{server}");
        if let Some(part) = a.puppet_user(&id) {
            prop_assert!(header_safe(&part));
            prop_assert_eq!(a.local(&sip_ids::escape_user(&part)), Some(sip_ids::Local::User(id.clone())));
        }
        let _ = a.puppet_uri(&format!("@{raw}:{raw}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Appservice transactions
// ---------------------------------------------------------------------------------------------

/// A JSON value of any shape, shallow or deep.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        hostile_text(4).prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "room_id", "sender", "type", "event_id", "content", "x"
                ])
                .prop_map(str::to_owned),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An event: mostly the shape the handler reads, with fields missing or of the wrong type.
fn event() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::option::of(prop_oneof![
            hostile_text(3).prop_map(serde_json::Value::String),
            json()
        ]),
        prop::option::of(prop_oneof![
            Just(serde_json::json!("@_xmpp_a:hs")),
            Just(serde_json::json!("@alice:hs")),
            json()
        ]),
        prop::option::of(prop_oneof![
            Just(serde_json::json!("m.room.message")),
            json()
        ]),
        prop::option::of(json()),
        json(),
    )
        .prop_map(|(room, sender, kind, id, content)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("room_id", room),
                ("sender", sender),
                ("type", kind),
                ("event_id", id),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            m.insert("content".into(), content);
            serde_json::Value::Object(m)
        })
}

proptest! {
    /// Transaction bodies: arbitrary bytes are refused or read; a transaction of any events
    /// accounts for every event exactly once (kept, dropped or malformed), and every timeline
    /// item kept has a room.
    #[test]
    fn appservice_transactions(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        events in prop::collection::vec(prop_oneof![4 => event(), 1 => json()], 0..20),
        ephemeral in prop::collection::vec(prop_oneof![event(), json()], 0..6),
        unstable in any::<bool>(),
    ) {
        let echo = |u: &str, _: &str| u.starts_with("@_");
        let _ = fuzz::transaction(&echo, &bytes);
        let key = if unstable { "de.sorunome.msc2409.ephemeral" } else { "ephemeral" };
        let body = serde_json::json!({ "events": events, key: ephemeral });
        let bytes = serde_json::to_vec(&body).expect("json");
        let (kept, dropped, malformed, rooms) = fuzz::transaction(&echo, &bytes).expect("a transaction");
        prop_assert_eq!(kept + dropped + malformed, events.len() + ephemeral.len());
        prop_assert_eq!(rooms.len(), kept);
        // Timeline items come first and always have a room.
        let timeline = kept.saturating_sub(ephemeral.len());
        prop_assert!(rooms[..timeline.min(rooms.len())].iter().all(Option::is_some));
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions found by the targets above
// ---------------------------------------------------------------------------------------------

#[test]
fn xmpp_limits_and_parser_agree_on_a_plain_stream() {
    let input = format!(
        "{SERVER_HEADER}<message from='a@example.org/r' to='me@example.org' id='1' type='chat'><body>hi &amp; bye</body></message></stream:stream>"
    );
    let guard = Guard::new(4096, 16);
    let (els, failed) =
        runtime().block_on(parse_stream(chunked(input.as_bytes(), &[7]), &guard, 8));
    assert_eq!(failed, None);
    assert_eq!(els.len(), 1);
    let m = fuzz::xmpp_message(els[0].clone(), "example.org", &[])
        .unwrap_or_else(|| panic!("not a message: {}", String::from(&els[0])));
    assert_eq!(m.id, "1");
    assert_eq!(m.content.expect("content").body, "hi & bye");
}
