//! Output that is valid XML by construction.
//!
//! XML 1.0 allows only some characters in a document (`Char` in section 2.2 of the
//! specification): no control characters but tab, line feed and carriage return, no
//! surrogates, and neither U+FFFE nor U+FFFF. Text from Matrix (bodies, formatted bodies,
//! display names, room names, file names) can hold any of them, and the XML writer refuses a
//! stanza that carries one, which used to fail the write of the whole link. Every stanza the
//! connector writes passes through [`stanza`] (component link) or [`element`] (client
//! connections) on its way out, so a character that cannot be carried is replaced, visibly,
//! by U+FFFD wherever it came from.

use std::borrow::Cow;

use xmpp_parsers::minidom::{Element, Node};
use xmpp_parsers::stanza::Stanza;

use crate::error::Reason;

/// What stands in for a character that XML cannot carry.
pub const REPLACEMENT: char = '\u{FFFD}';

/// Whether XML 1.0 allows `c` in a document.
pub fn is_xml_char(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r'
        | '\u{20}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}'
        | '\u{10000}'..='\u{10FFFF}')
}

/// `s` with every character XML cannot carry replaced by [`REPLACEMENT`]; borrowed when
/// nothing needed replacing.
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().all(is_xml_char) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| if is_xml_char(c) { c } else { REPLACEMENT })
            .collect(),
    )
}

fn clean_in_place(s: &mut String) -> bool {
    match clean(s) {
        Cow::Borrowed(_) => false,
        Cow::Owned(cleaned) => {
            *s = cleaned;
            true
        }
    }
}

/// Replaces, in place, every character XML cannot carry in the text and attribute values of
/// `el` and of everything below it. Returns whether anything was replaced.
pub fn element(el: &mut Element) -> bool {
    let mut changed = false;
    for value in el.attrs_mut().values_mut() {
        changed |= clean_in_place(value);
    }
    for node in el.nodes_mut() {
        changed |= match node {
            Node::Text(text) => clean_in_place(text),
            Node::Element(child) => element(child),
        };
    }
    changed
}

/// `stanza`, with every character XML cannot carry replaced (see [`element`]). An error
/// names a stanza that no longer parses once cleaned (it cannot happen: only text and
/// attribute values change, each to another legal value); it concerns that stanza alone.
pub fn stanza(stanza: Stanza) -> Result<Stanza, Unwritable> {
    Ok(match stanza {
        Stanza::Message(m) => Stanza::Message(retyped(m)?),
        Stanza::Presence(p) => Stanza::Presence(retyped(p)?),
        Stanza::Iq(iq) => Stanza::Iq(retyped(iq)?),
    })
}

/// A stanza that no longer parses once cleaned (see [`stanza`]).
#[derive(Clone, Debug, thiserror::Error)]
#[error("the stanza does not parse once cleaned: {0}")]
pub struct Unwritable(#[source] Reason);

impl From<Reason> for Unwritable {
    fn from(reason: Reason) -> Self {
        Unwritable(reason)
    }
}

fn retyped<T>(typed: T) -> Result<T, Unwritable>
where
    T: Into<Element> + TryFrom<Element>,
    <T as TryFrom<Element>>::Error: std::error::Error + Send + Sync + 'static,
{
    let mut el: Element = typed.into();
    element(&mut el);
    T::try_from(el).map_err(|e| Reason::from_error(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use xmpp_parsers::message::{Id, Lang, Message, MessageType};

    /// Writes `el` as the link's writer does; an error means the stanza could not go out.
    fn write(el: &Element) -> Result<String, Box<dyn std::error::Error>> {
        let mut out = Vec::new();
        el.write_to(&mut out)?;
        Ok(String::from_utf8(out)?)
    }

    fn message(body: &str, nick: &str) -> Element {
        let mut m = Message::new(Some("bob@example.org".parse().unwrap()));
        m.type_ = MessageType::Chat;
        m.id = Some(Id(nick.to_owned()));
        let m = m.with_body(Lang::default(), body.to_owned());
        let mut el = Element::from(m);
        el.append_child(
            Element::builder("nick", "http://jabber.org/protocol/nick")
                .append(nick)
                .build(),
        );
        el
    }

    #[test]
    fn legal_characters_are_kept() {
        for s in [
            "",
            "plain",
            "tab\tnl\ncr\r",
            "\u{D7FF}\u{E000}\u{FFFD}\u{10000}\u{10FFFF}",
        ] {
            assert!(matches!(clean(s), Cow::Borrowed(_)), "{s:?}");
        }
    }

    #[test]
    fn illegal_characters_are_replaced_visibly() {
        for (input, want) in [
            ("a\u{1}b", "a\u{FFFD}b"),
            ("\u{0}", "\u{FFFD}"),
            ("bell\u{7}", "bell\u{FFFD}"),
            ("\u{B}\u{C}\u{1F}", "\u{FFFD}\u{FFFD}\u{FFFD}"),
            ("x\u{FFFE}y\u{FFFF}", "x\u{FFFD}y\u{FFFD}"),
        ] {
            assert_eq!(clean(input), want);
        }
    }

    proptest! {
        /// Any string as a body, a nickname and an attribute value: the stanza is written, and
        /// what is written parses back as XML with the same legal characters.
        #[test]
        fn any_text_makes_a_stanza_that_can_be_written(body in any::<String>(), nick in any::<String>()) {
            let mut el = message(&body, &nick);
            element(&mut el);
            let xml = write(&el).map_err(|e| TestCaseError::fail(format!("write failed: {e}")))?;
            let parsed: Element = xml.parse().map_err(|e| TestCaseError::fail(format!("{e}: {xml:?}")))?;
            let want: String = clean(&body).into_owned();
            let got = parsed.get_child("body", xmpp_parsers::ns::DEFAULT_NS).map(|b| b.text()).unwrap_or_default();
            prop_assert_eq!(got, want);
            let id = clean(&nick).into_owned();
            prop_assert_eq!(parsed.attr("id"), Some(id.as_str()));
        }

        /// The typed path used by the component link keeps the stanza's meaning.
        #[test]
        fn stanzas_are_cleaned_through_their_types(body in any::<String>()) {
            let cleaned = stanza(Stanza::Message(Message::new(None).with_body(Lang::default(), body.clone())));
            let Ok(Stanza::Message(cleaned)) = cleaned else {
                return Err(TestCaseError::fail("not a message any more"));
            };
            let el = Element::from(cleaned);
            prop_assert!(write(&el).is_ok());
            let got = el.get_child("body", xmpp_parsers::ns::DEFAULT_NS).map(|b| b.text()).unwrap_or_default();
            prop_assert_eq!(got, clean(&body).into_owned());
        }
    }

    #[test]
    fn without_cleaning_the_writer_refuses() {
        // The reason this module exists: the XML writer refuses such a stanza (it even
        // panics), for a body as for an attribute.
        for el in [message("a\u{1}b", "n"), message("ok", "bell\u{7}")] {
            let written = std::panic::catch_unwind(|| write(&el));
            assert!(
                !matches!(written, Ok(Ok(_))),
                "the XML writer accepted a control character"
            );
            let mut cleaned = el.clone();
            assert!(element(&mut cleaned));
            assert!(write(&cleaned).is_ok());
        }
    }
}
