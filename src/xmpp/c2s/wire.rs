//! What crosses a client stream: stanzas renamed between the client namespace and the
//! connector's, elements read (stream errors ending the session, skipped stanzas counted) and
//! written, and the pieces of a stream's opening.

use super::*;

/// Renames `from` to `to` as the namespace of `el` and of every descendant in `from`.
pub(in crate::xmpp) fn rename_ns(mut el: Element, from: &str, to: &str) -> Element {
    let ns = el.ns();
    let nodes = el.take_nodes();
    let attrs = el.attrs().clone();
    let mut out = Element::builder(el.name(), if ns == from { to } else { &ns }).build();
    *out.attrs_mut() = attrs;
    for node in nodes {
        match node {
            Node::Element(child) => {
                out.append_child(rename_ns(child, from, to));
            }
            Node::Text(text) => out.append_text_node(text),
        }
    }
    out
}

/// A stanza read in the client namespace, as the connector's type.
pub(crate) fn from_client(el: Element) -> Option<Stanza> {
    let el = rename_ns(el, CLIENT_NS, COMPONENT_NS);
    match el.name() {
        "message" => xmpp_parsers::message::Message::try_from(el)
            .ok()
            .map(Stanza::Message),
        "presence" => xmpp_parsers::presence::Presence::try_from(el)
            .ok()
            .map(Stanza::Presence),
        "iq" => xmpp_parsers::iq::Iq::try_from(el).ok().map(Stanza::Iq),
        _ => None,
    }
}

/// The connector's stanza as it goes on a client stream.
pub(in crate::xmpp) fn to_client(stanza: Stanza) -> Element {
    // The server stamps the session's address (RFC 6120 §8.1.2.1).
    let el = match stanza {
        Stanza::Message(m) => Element::from(m),
        Stanza::Presence(p) => Element::from(p),
        Stanza::Iq(iq) => Element::from(iq),
    };
    let mut el = rename_ns(el, COMPONENT_NS, CLIENT_NS);
    crate::xmpp::xml_safe::element(&mut el);
    el.attrs_mut()
        .remove(xmpp_parsers::minidom::rxml::Namespace::none(), "from");
    el
}

/// An element `name` in `ns` with attributes.
pub(in crate::xmpp) fn element(name: &str, ns: &str, attrs: &[(&str, &str)]) -> Element {
    let mut b = Element::builder(name, ns);
    for (k, v) in attrs {
        b = b.attr(
            xmpp_parsers::minidom::rxml::NcName::try_from(*k).expect("an XML name"),
            *v,
        );
    }
    b.build()
}

pub(super) fn is_stanza(el: &Element) -> bool {
    el.ns() == CLIENT_NS && matches!(el.name(), "message" | "presence" | "iq")
}

/// Reads the next element (on the stream before or after TLS); a stream error ends it.
pub(super) async fn read<Io: tokio::io::AsyncBufRead + Unpin>(
    xml: &mut XmlStream<Io, Element>,
    guard: &Guard,
) -> Result<Element, SessionError> {
    loop {
        match xml.next().await {
            Some(Ok(el)) => {
                skipped(guard);
                if el.is("error", STREAMS_NS) {
                    let cond = el
                        .children()
                        .next()
                        .map(|c| c.name().to_owned())
                        .unwrap_or_default();
                    return Err(SessionError::Transient(
                        format!("the server ended the stream ({cond})").into(),
                    ));
                }
                return Ok(el);
            }
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(e)) => return Err(transient(Reason::because("read failed", e))),
            None => return Err(transient("the server closed the connection")),
        }
    }
}

/// Logs the stanzas the limits skipped since the last read; returns how many were stanzas
/// (message, presence or iq, which stream management counts). They are not answered: the
/// server is the account's own, and it enforces its own limits on its users.
pub(super) fn skipped(guard: &Guard) -> u32 {
    let mut stanzas = 0u32;
    for s in guard.take_skipped() {
        s.log("own account");
        if matches!(s.name.as_str(), "message" | "presence" | "iq") {
            stanzas = stanzas.wrapping_add(1);
        }
    }
    stanzas
}

pub(super) async fn send<Io: AsyncWrite + Unpin>(
    xml: &mut XmlStream<Io, Element>,
    el: &Element,
) -> Result<(), SessionError> {
    xml.send(el)
        .await
        .map_err(|e| transient(Reason::because("write failed", e)))
}

pub(super) fn header(domain: &str) -> StreamHeader<'static> {
    StreamHeader {
        to: Some(Cow::Owned(domain.to_owned())),
        from: None,
        id: None,
    }
}

pub(super) fn timeouts() -> Timeouts {
    Timeouts {
        read_timeout: Duration::from_secs(60),
        response_timeout: Duration::from_secs(30),
    }
}

pub(super) async fn recv_features(
    pending: PendingFeaturesRecv<Io>,
) -> Result<(StreamFeatures, Xml), SessionError> {
    pending
        .recv_features::<Element>()
        .await
        .map_err(|e| transient(Reason::because("no stream features", e)))
}

pub(super) fn limited(conn: Box<dyn Conn>, guard: &Guard) -> Io {
    BufStream::new(Limited::new(conn, guard.clone()))
}
