//! Tests of the bridge → XMPP payloads: wire shapes, typing states, stable message IDs.

use super::*;

use super::super::payloads::wire;

fn id_attr() -> xmpp_parsers::minidom::rxml::NcName {
    xmpp_parsers::minidom::rxml::xml_ncname!("id").to_owned()
}

/// Text as a Matrix user may send it, markup and control characters included.
fn text() -> impl proptest::strategy::Strategy<Value = String> {
    proptest::string::string_regex("[ -~\\u{1}<>&'\"é😀]{0,16}").unwrap()
}

proptest::proptest! {
    /// The crate's payloads are the elements the bridge built by hand before: the same
    /// names, namespaces, attributes and text.
    #[test]
    fn typed_payloads_keep_the_wire_shape(id in text(), name in text(), url in text()) {
        use xmpp_parsers::ns;
        let origin = Element::from(OriginId { id: id.clone() });
        proptest::prop_assert_eq!(
            origin,
            Element::builder("origin-id", ns::SID).attr(id_attr(), id.as_str()).build()
        );
        let built = [
            Element::builder("active", ns::CHATSTATES).build(),
            Element::builder("markable", "urn:xmpp:chat-markers:0").build(),
            Element::builder("request", ns::RECEIPTS).build(),
            Element::builder("nick", ns::NICK).append(name.clone()).build(),
        ];
        proptest::prop_assert_eq!(direct_payloads(&name).map(|e| wire(&e)), built.map(|e| wire(&e)));
        proptest::prop_assert_eq!(
            wire(&oob(&url)),
            wire(&Element::builder("x", "jabber:x:oob")
                .append(Element::builder("url", "jabber:x:oob").append(url.clone()))
                .build())
        );
        proptest::prop_assert_eq!(
            displayed(&id),
            Element::builder("displayed", "urn:xmpp:chat-markers:0")
                .attr(id_attr(), id.as_str())
                .build()
        );
    }
}

#[test]
fn typing_states_keep_their_names() {
    for (state, name) in [
        (ChatState::Composing, "composing"),
        (ChatState::Paused, "paused"),
    ] {
        let el = Element::from(state);
        assert!(el.is(name, xmpp_parsers::ns::CHATSTATES));
        assert!(el.attrs().is_empty());
        assert_eq!(el.nodes().count(), 0);
    }
}

#[test]
fn message_ids_are_stable_per_event() {
    assert_eq!(stable_id("$abc:hs"), stable_id("$abc:hs"));
    assert_ne!(stable_id("$abc:hs"), stable_id("$abd:hs"));
    assert!(stable_id("$x").starts_with("isthmus-"));
}
