//! Typed payloads: xmpp-parsers' types for what a stanza carries, looked up among a
//! stanza's payloads.
//!
//! The crate's parsers accept unknown attributes and children (it is built without its
//! `pedantic` feature), so a typed read refuses only what the bridge could not use anyway.
//! Where a type is stricter than that (it refuses a whole element for one part the bridge
//! does not need), the element is read by hand, and the reader says why.

use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_id::{OriginId, StanzaId};

/// The first payload named `name` in `ns` that reads as a `T`. Only payloads with that name
/// are copied to be read, so a large unrelated one (XHTML) costs nothing.
pub(super) fn find<T: TryFrom<Element>>(payloads: &[Element], name: &str, ns: &str) -> Option<T> {
    payloads
        .iter()
        .filter(|p| p.is(name, ns))
        .find_map(|p| T::try_from(p.clone()).ok())
}

/// The ID that `by` (a server for its users, a group chat for its messages) gave a message
/// (XEP-0359 `stanza-id`).
pub(super) fn stanza_id(payloads: &[Element], by: &BareJid) -> Option<String> {
    let by = Jid::from(by.clone());
    payloads
        .iter()
        .filter(|p| p.is("stanza-id", xmpp_parsers::ns::SID))
        .filter_map(|p| StanzaId::try_from(p.clone()).ok())
        .find(|s| s.by == by)
        .map(|s| s.id)
}

/// The ID the sender gave a message (XEP-0359 `origin-id`).
pub(super) fn origin_id(payloads: &[Element]) -> Option<String> {
    find::<OriginId>(payloads, "origin-id", xmpp_parsers::ns::SID).map(|o| o.id)
}

/// `el` as it goes on the wire, for comparisons: without empty text nodes (an element
/// built with empty text and one built without are written alike).
#[cfg(test)]
pub(super) fn wire(el: &Element) -> Element {
    use xmpp_parsers::minidom::Node;
    let mut out = el.clone();
    for node in out.take_nodes() {
        match node {
            Node::Element(child) => {
                out.append_child(wire(&child));
            }
            Node::Text(t) if t.is_empty() => {}
            Node::Text(t) => out.append_text_node(t),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use xmpp_parsers::ns;

    fn el(xml: &str) -> Element {
        Element::from_str(xml).unwrap()
    }

    proptest::proptest! {
        /// A stanza-id counts only when the entity asked about assigned it; other
        /// payloads, unknown attributes and a stanza-id of someone else are passed over.
        #[test]
        fn stanza_ids_by_their_assigner(id in "[a-zA-Z0-9-]{1,16}", extra in "[a-z]{1,8}") {
            let room = BareJid::from_str("room@conference.example.org").unwrap();
            let payloads = [
                el("<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>x</body></html>"),
                el("<stanza-id xmlns='urn:xmpp:sid:0' id='other' by='someone@example.org'/>"),
                el("<stanza-id xmlns='urn:xmpp:sid:0' id='bad' by='not a jid@'/>"),
                el(&format!("<stanza-id xmlns='urn:xmpp:sid:0' id='{id}' by='room@conference.example.org' {extra}='1'/>")),
                el(&format!("<origin-id xmlns='urn:xmpp:sid:0' id='o{id}' {extra}='1'><{extra} xmlns='urn:example'/></origin-id>")),
            ];
            proptest::prop_assert_eq!(stanza_id(&payloads, &room), Some(id.clone()));
            proptest::prop_assert_eq!(origin_id(&payloads), Some(format!("o{id}")));
            let elsewhere = BareJid::from_str("elsewhere@example.org").unwrap();
            proptest::prop_assert_eq!(stanza_id(&payloads, &elsewhere), None);
            proptest::prop_assert_eq!(origin_id(&payloads[..4]), None);
        }
    }

    proptest::proptest! {
        /// The payloads read with the crate's types are read whatever clients add to them
        /// (attributes, children in other namespaces), as they were by hand.
        #[test]
        fn message_payloads_tolerate_additions(id in "[a-zA-Z0-9-]{1,12}", name in "[a-zA-Z ]{1,12}", extra in "[a-z]{1,8}") {
            use xmpp_parsers::chatstates::ChatState;
            use xmpp_parsers::displayed_markers::Displayed;
            use xmpp_parsers::nick::Nick;
            use xmpp_parsers::receipts::{Received, Request};
            let more = format!("{extra}='1'><{extra} xmlns='urn:example'/");
            let payloads = [
                el(&format!("<composing xmlns='http://jabber.org/protocol/chatstates' {more}></composing>")),
                el(&format!("<displayed xmlns='urn:xmpp:chat-markers:0' id='{id}' {more}></displayed>")),
                el(&format!("<nick xmlns='http://jabber.org/protocol/nick' {extra}='1'>{name}</nick>")),
                el(&format!("<request xmlns='urn:xmpp:receipts' {more}></request>")),
            ];
            proptest::prop_assert_eq!(
                find::<ChatState>(&payloads, "composing", ns::CHATSTATES),
                Some(ChatState::Composing)
            );
            proptest::prop_assert_eq!(
                find::<Displayed>(&payloads, "displayed", ns::DISPLAYED_MARKERS).map(|d| d.id.0),
                Some(id.clone())
            );
            proptest::prop_assert_eq!(find::<Nick>(&payloads, "nick", ns::NICK).map(|n| n.0), Some(name));
            proptest::prop_assert!(find::<Request>(&payloads, "request", ns::RECEIPTS).is_some());
            proptest::prop_assert!(find::<Request>(&payloads[..3], "request", ns::RECEIPTS).is_none());
            let received: Element = Received { id: id.clone() }.into();
            proptest::prop_assert_eq!(
                received,
                Element::builder("received", ns::RECEIPTS)
                    .attr(xmpp_parsers::minidom::rxml::xml_ncname!("id").to_owned(), id.as_str())
                    .build()
            );
        }
    }
}
