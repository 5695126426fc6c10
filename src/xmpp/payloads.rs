//! Typed payloads: xmpp-parsers' types for what a stanza carries, looked up among a
//! stanza's payloads; and the one list of features (XEP-0030) the bridge's identities
//! advertise, with the entity capabilities (XEP-0115) of own accounts computed from it.
//!
//! The crate's parsers accept unknown attributes and children (it is built without its
//! `pedantic` feature), so a typed read refuses only what the bridge could not use anyway.
//! Where a type is stricter than that (it refuses a whole element for one part the bridge
//! does not need), the element is read by hand, and the reader says why.

use std::collections::BTreeSet;

use xmpp_parsers::caps::{self, Caps};
use xmpp_parsers::disco::{DiscoInfoResult, Identity};
use xmpp_parsers::hashes::Algo;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::stanza_id::{OriginId, StanzaId};

use super::{avatar, fidelity};

/// Who answers a disco#info query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// The gateway: the component and the Matrix users' addresses on it.
    Gateway,
    /// A Matrix user's own account, on its client connection.
    Account,
}

/// What every identity of the bridge handles in a chat, in both directions.
const CHAT_FEATURES: [&str; 10] = [
    ns::DISCO_INFO,
    ns::PING,
    ns::CHATSTATES,
    ns::RECEIPTS,
    ns::DISPLAYED_MARKERS,
    fidelity::CORRECT,
    fidelity::RETRACT,
    fidelity::REACTIONS,
    fidelity::REPLY,
    ns::SID,
];

/// The features `side` advertises: exactly what it implements. The gateway also answers
/// disco#items, version and vCard queries; an account's connection follows its contacts'
/// avatars (XEP-0163 filtered notifications).
pub(super) fn features(side: Side) -> BTreeSet<String> {
    let extra: &[&str] = match side {
        Side::Gateway => &[ns::DISCO_ITEMS, ns::VERSION, avatar::VCARD],
        Side::Account => &["urn:xmpp:avatar:metadata+notify"],
    };
    CHAT_FEATURES
        .iter()
        .chain(extra)
        .map(|f| (*f).to_owned())
        .collect()
}

/// The node of an account connection's entity capabilities (XEP-0115).
pub(super) const CAPS_NODE: &str = "https://github.com/isthmus-bridge/isthmus";

/// What an account's connection answers to disco#info (for `node`, when asked for one).
pub(super) fn account_disco(node: Option<String>) -> DiscoInfoResult {
    DiscoInfoResult {
        node,
        identities: vec![Identity {
            category: "client".into(),
            type_: "bot".into(),
            lang: None,
            name: Some("isthmus".into()),
        }],
        features: features(Side::Account),
        extensions: Vec::new(),
    }
}

/// The entity capabilities an account's presence carries: the SHA-1 hash (XEP-0115 §5.1)
/// of its disco#info answer.
pub(super) fn account_caps() -> Caps {
    let hash = caps::hash_caps(&caps::compute_disco(&account_disco(None)), Algo::Sha_1)
        .expect("SHA-1 is supported");
    Caps::new(CAPS_NODE, hash)
}

/// The `node` an account's disco#info answers for, besides none: its caps node and hash.
pub(super) fn account_caps_node() -> String {
    use base64::Engine;
    format!(
        "{CAPS_NODE}#{}",
        base64::engine::general_purpose::STANDARD.encode(account_caps().ver)
    )
}

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

    fn el(xml: &str) -> Element {
        Element::from_str(xml).unwrap()
    }

    /// The lists each side advertised before they became one.
    const GATEWAY_BEFORE: [&str; 13] = [
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        ns::VERSION,
        ns::PING,
        ns::CHATSTATES,
        ns::RECEIPTS,
        "urn:xmpp:chat-markers:0",
        fidelity::CORRECT,
        fidelity::RETRACT,
        fidelity::REACTIONS,
        fidelity::REPLY,
        ns::SID,
        avatar::VCARD,
    ];
    const ACCOUNT_BEFORE: [&str; 11] = [
        ns::DISCO_INFO,
        ns::PING,
        ns::CHATSTATES,
        ns::RECEIPTS,
        "urn:xmpp:chat-markers:0",
        fidelity::CORRECT,
        fidelity::RETRACT,
        fidelity::REACTIONS,
        fidelity::REPLY,
        ns::SID,
        "urn:xmpp:avatar:metadata+notify",
    ];

    #[test]
    fn each_side_advertises_what_it_did() {
        let set = |l: &[&str]| l.iter().map(|f| f.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(features(Side::Gateway), set(&GATEWAY_BEFORE));
        assert_eq!(features(Side::Account), set(&ACCOUNT_BEFORE));
    }

    /// XEP-0115 §5.1 by hand: identities, then features, each sorted and ended by `<`.
    fn caps_by_hand(identity: &str, features: &[&str]) -> String {
        use base64::Engine;
        let mut features = features.to_vec();
        features.sort_unstable();
        let mut s = format!("{identity}<");
        for f in features {
            s.push_str(f);
            s.push('<');
        }
        base64::engine::general_purpose::STANDARD.encode(
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, s.as_bytes()).as_ref(),
        )
    }

    #[test]
    fn account_caps_hash_what_the_account_answers() {
        let caps = account_caps();
        let ver = caps_by_hand("client/bot//isthmus", &ACCOUNT_BEFORE);
        assert_eq!(account_caps_node(), format!("{CAPS_NODE}#{ver}"));
        let el = Element::from(caps);
        assert!(el.is("c", ns::CAPS));
        assert_eq!(el.attr("hash"), Some("sha-1"));
        assert_eq!(el.attr("node"), Some(CAPS_NODE));
        assert_eq!(el.attr("ver"), Some(ver.as_str()));
        // XEP-0115 §5.3 example 2, through the same functions.
        let example = DiscoInfoResult {
            node: None,
            identities: vec![Identity {
                category: "client".into(),
                type_: "pc".into(),
                lang: None,
                name: Some("Exodus 0.9.1".into()),
            }],
            features: [
                "http://jabber.org/protocol/caps",
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "http://jabber.org/protocol/muc",
            ]
            .map(String::from)
            .into(),
            extensions: Vec::new(),
        };
        let hash = caps::hash_caps(&caps::compute_disco(&example), Algo::Sha_1).unwrap();
        assert_eq!(hash.to_base64(), "QgayPKawpkPSDYmwT/WM94uAlu0=");
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
                el(&format!("<stanza-id xmlns='urn:xmpp:sid:0' id='{id}' by='room@conference.example.org' x-{extra}='1'/>")),
                el(&format!("<origin-id xmlns='urn:xmpp:sid:0' id='o{id}' x-{extra}='1'><{extra} xmlns='urn:example'/></origin-id>")),
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
            let more = format!("x-{extra}='1'><{extra} xmlns='urn:example'/");
            let payloads = [
                el(&format!("<composing xmlns='http://jabber.org/protocol/chatstates' {more}></composing>")),
                el(&format!("<displayed xmlns='urn:xmpp:chat-markers:0' id='{id}' {more}></displayed>")),
                el(&format!("<nick xmlns='http://jabber.org/protocol/nick' x-{extra}='1'>{name}</nick>")),
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
