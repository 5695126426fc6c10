//! Edits (XEP-0308), retractions (XEP-0424), reactions (XEP-0444) and replies (XEP-0461 with
//! the XEP-0428 fallback): the payloads, both ways.
//!
//! Corrections and reactions are xmpp-parsers' types. The crate (0.23) has no types for
//! retractions (XEP-0424), moderation (XEP-0425), fastening (XEP-0422), fallbacks
//! (XEP-0428), replies (XEP-0461) or hints (XEP-0334): those are built and read here.

use std::collections::BTreeSet;

use xmpp_parsers::message::Id;
use xmpp_parsers::message_correct::Replace;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::minidom::rxml::NcName;
use xmpp_parsers::reactions::{Reaction, Reactions};

use crate::network::{ConnectorStore, SinkError};

/// XEP-0308 corrections.
pub const CORRECT: &str = "urn:xmpp:message-correct:0";
/// XEP-0424 retractions (current and older versions).
pub const RETRACT: &str = "urn:xmpp:message-retract:1";
const RETRACT_0: &str = "urn:xmpp:message-retract:0";
const FASTEN: &str = "urn:xmpp:fasten:0";
/// XEP-0444 reactions.
pub const REACTIONS: &str = "urn:xmpp:reactions:0";
/// XEP-0461 replies.
pub const REPLY: &str = "urn:xmpp:reply:0";
/// XEP-0428 fallback indication.
pub const FALLBACK: &str = "urn:xmpp:fallback:0";
/// XEP-0334 store hint.
const HINTS: &str = "urn:xmpp:hints";

fn name(s: &'static str) -> NcName {
    NcName::try_from(s).expect("a valid attribute name")
}

/// `<replace id=target/>`.
pub fn replace(target: &str) -> Element {
    Replace {
        id: Id(target.to_owned()),
    }
    .into()
}

/// The payloads of a retraction of `target`, with a fallback body for old clients.
pub fn retract(target: &str) -> Vec<Element> {
    vec![
        Element::builder("retract", RETRACT)
            .attr(name("id"), target)
            .build(),
        Element::builder("fallback", FALLBACK)
            .attr(name("for"), RETRACT)
            .build(),
        Element::builder("store", HINTS).build(),
    ]
}

/// The body old clients show for a retraction.
pub const RETRACT_FALLBACK: &str =
    "This person attempted to retract a previous message, but your client does not support it.";

/// `<reactions id=target>` with the full set of one user's reactions.
pub fn reactions(target: &str, keys: &BTreeSet<String>) -> Element {
    Reactions {
        id: target.to_owned(),
        reactions: keys.iter().map(|k| Reaction { emoji: k.clone() }).collect(),
    }
    .into()
}

/// `<reply id=target/>`.
pub fn reply(target: &str) -> Element {
    Element::builder("reply", REPLY)
        .attr(name("id"), target)
        .build()
}

/// What an inbound message is about, beyond a plain new message.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// A correction of `target`.
    Correction(String),
    /// A retraction of `target`.
    Retraction(String),
    /// The sender's full set of reactions to `target`.
    Reactions(String, BTreeSet<String>),
}

/// XEP-0425 moderation, the version Prosody's module speaks and the current one.
pub const MODERATE_0: &str = "urn:xmpp:message-moderate:0";
const MODERATE_1: &str = "urn:xmpp:message-moderate:1";

/// A group chat's announcement that a moderator removed message `target`, with the reason.
pub fn moderation(payloads: &[Element]) -> Option<(String, Option<String>)> {
    let reason = |e: &Element| {
        e.children()
            .find(|c| c.name() == "reason")
            .map(|r| r.text().chars().take(512).collect::<String>())
            .filter(|r| !r.trim().is_empty())
    };
    for p in payloads {
        if p.is("apply-to", FASTEN)
            && let Some(m) = p.get_child("moderated", MODERATE_0)
            && let Some(id) = p.attr("id")
        {
            return Some((id.to_owned(), reason(m).or_else(|| reason(p))));
        }
        if p.is("retract", RETRACT)
            && p.get_child("moderated", MODERATE_1).is_some()
            && let Some(id) = p.attr("id")
        {
            return Some((id.to_owned(), reason(p)));
        }
    }
    None
}

/// The request to moderate `target` (the room's stanza-id) out of a group chat.
pub fn moderate(target: &str, reason: Option<&str>) -> Element {
    let mut m =
        Element::builder("moderate", MODERATE_0).append(Element::builder("retract", RETRACT_0));
    if let Some(r) = reason {
        m = m.append(Element::builder("reason", MODERATE_0).append(r.to_owned()));
    }
    Element::builder("apply-to", FASTEN)
        .attr(
            xmpp_parsers::minidom::rxml::xml_ncname!("id").to_owned(),
            target,
        )
        .append(m)
        .build()
}

/// Reads the fidelity payloads of an inbound message.
pub fn classify(payloads: &[Element]) -> Option<Kind> {
    for p in payloads {
        if p.is("replace", CORRECT)
            && let Ok(Replace { id }) = Replace::try_from(p.clone())
        {
            return Some(Kind::Correction(id.0));
        }
        if p.is("retract", RETRACT)
            && let Some(id) = p.attr("id")
        {
            return Some(Kind::Retraction(id.to_owned()));
        }
        if p.is("apply-to", FASTEN)
            && p.children().any(|c| c.is("retract", RETRACT_0))
            && let Some(id) = p.attr("id")
        {
            return Some(Kind::Retraction(id.to_owned()));
        }
        if p.is("reactions", REACTIONS)
            && let Ok(Reactions { id, reactions }) = Reactions::try_from(p.clone())
        {
            let keys = reactions
                .into_iter()
                .map(|r| r.emoji)
                .filter(|k| !k.is_empty() && k.chars().count() <= 16)
                .collect();
            return Some(Kind::Reactions(id, keys));
        }
    }
    None
}

/// The message a reply points at, if the message is a reply.
pub fn reply_target(payloads: &[Element]) -> Option<String> {
    payloads
        .iter()
        .find(|p| p.is("reply", REPLY))
        .and_then(|p| p.attr("id"))
        .map(str::to_owned)
}

/// Removes the parts of `body` that a XEP-0428 fallback marks for `namespace` (indexes are in
/// Unicode code points; a fallback without a range covers the whole body).
pub fn strip_fallback(body: &str, payloads: &[Element], namespace: &str) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for f in payloads
        .iter()
        .filter(|p| p.is("fallback", FALLBACK) && p.attr("for") == Some(namespace))
    {
        let mut any = false;
        for b in f.children().filter(|c| c.name() == "body") {
            any = true;
            if let (Some(s), Some(e)) = (
                b.attr("start").and_then(|v| v.parse().ok()),
                b.attr("end").and_then(|v| v.parse().ok()),
            ) {
                ranges.push((s, e));
            }
        }
        if !any {
            return String::new();
        }
    }
    if ranges.is_empty() {
        return body.to_owned();
    }
    body.chars()
        .enumerate()
        .filter(|(i, _)| !ranges.iter().any(|(s, e)| i >= s && i < e))
        .map(|(_, c)| c)
        .collect::<String>()
        .trim_start_matches('\n')
        .to_owned()
}

/// Replaces a stored set of reaction keys and returns (added, removed).
pub fn diff_reactions(
    store: &dyn ConnectorStore,
    key: &str,
    new: &BTreeSet<String>,
) -> Result<(Vec<String>, Vec<String>), SinkError> {
    let old: BTreeSet<String> = store
        .get(key)?
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let added = new.difference(&old).cloned().collect();
    let removed = old.difference(new).cloned().collect();
    if new.is_empty() {
        store.delete(key)?;
    } else {
        let v = serde_json::to_value(new)
            .map_err(|e| SinkError(crate::error::Reason::from_error(e)))?;
        store.put(key, &v)?;
    }
    Ok((added, removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use std::str::FromStr;

    fn el(xml: &str) -> Element {
        Element::from_str(xml).unwrap()
    }

    #[test]
    fn moderation_both_versions() {
        let v0 = el(
            "<apply-to xmlns='urn:xmpp:fasten:0' id='s1'><moderated xmlns='urn:xmpp:message-moderate:0' by='r@c/mod'><retract xmlns='urn:xmpp:message-retract:0'/><reason>spam</reason></moderated></apply-to>",
        );
        assert_eq!(moderation(&[v0]), Some(("s1".into(), Some("spam".into()))));
        let v1 = el(
            "<retract xmlns='urn:xmpp:message-retract:1' id='s2'><moderated xmlns='urn:xmpp:message-moderate:1' by='r@c/mod'/></retract>",
        );
        assert_eq!(moderation(&[v1]), Some(("s2".into(), None)));
        let plain = el("<retract xmlns='urn:xmpp:message-retract:1' id='s3'/>");
        assert_eq!(moderation(&[plain]), None);
        let req = moderate("s4", Some("off topic"));
        assert_eq!(req.attr("id"), Some("s4"));
        assert!(req.get_child("moderate", MODERATE_0).is_some());
    }

    #[test]
    fn classify_payloads() {
        assert_eq!(
            classify(&[el("<replace xmlns='urn:xmpp:message-correct:0' id='m1'/>")]),
            Some(Kind::Correction("m1".into()))
        );
        assert_eq!(
            classify(&[el("<retract xmlns='urn:xmpp:message-retract:1' id='m2'/>")]),
            Some(Kind::Retraction("m2".into()))
        );
        assert_eq!(
            classify(&[el(
                "<apply-to xmlns='urn:xmpp:fasten:0' id='m3'><retract xmlns='urn:xmpp:message-retract:0'/></apply-to>"
            )]),
            Some(Kind::Retraction("m3".into()))
        );
        let r = classify(&[el(
            "<reactions xmlns='urn:xmpp:reactions:0' id='m4'><reaction>👍</reaction><reaction>🎉</reaction></reactions>",
        )]);
        assert_eq!(
            r,
            Some(Kind::Reactions(
                "m4".into(),
                ["👍".to_owned(), "🎉".to_owned()].into()
            ))
        );
        assert_eq!(
            classify(&[el(
                "<active xmlns='http://jabber.org/protocol/chatstates'/>"
            )]),
            None
        );
    }

    #[test]
    fn reply_fallback_is_stripped() {
        let payloads = [
            el("<reply xmlns='urn:xmpp:reply:0' id='m1'/>"),
            el(
                "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='0' end='13'/></fallback>",
            ),
        ];
        assert_eq!(reply_target(&payloads).as_deref(), Some("m1"));
        assert_eq!(
            strip_fallback("> quoted ✓ x\nthe answer", &payloads, REPLY),
            "the answer"
        );
        assert_eq!(
            strip_fallback("no fallback here", &payloads[..1], REPLY),
            "no fallback here"
        );
    }

    use super::super::payloads::wire;

    /// The elements as the bridge built them by hand before the crate's types.
    fn built_replace(target: &str) -> Element {
        Element::builder("replace", CORRECT)
            .attr(name("id"), target)
            .build()
    }

    fn built_reactions(target: &str, keys: &BTreeSet<String>) -> Element {
        let mut b = Element::builder("reactions", REACTIONS).attr(name("id"), target);
        for k in keys {
            b = b.append(
                Element::builder("reaction", REACTIONS)
                    .append(k.clone())
                    .build(),
            );
        }
        b.build()
    }

    /// Text and attribute values as a Matrix user may send them, markup and control
    /// characters included (the link escapes or drops them when it writes).
    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex("[ -~\u{1}\u{7f}<>&'\"é😀]{0,12}").unwrap()
    }

    proptest::proptest! {
        /// The typed payloads are the elements the bridge sent before, and read back.
        #[test]
        fn typed_payloads_keep_the_wire_shape(
            target in text(),
            keys in proptest::collection::btree_set(text(), 0..4),
        ) {
            let r = replace(&target);
            proptest::prop_assert_eq!(&r, &built_replace(&target));
            proptest::prop_assert_eq!((r.name(), r.ns()), ("replace", CORRECT.to_owned()));
            proptest::prop_assert_eq!(classify(&[r]), Some(Kind::Correction(target.clone())));

            let set = reactions(&target, &keys);
            proptest::prop_assert_eq!(wire(&set), wire(&built_reactions(&target, &keys)));
            proptest::prop_assert_eq!(set.attr("id"), Some(target.as_str()));
            let read: BTreeSet<String> = keys
                .iter()
                .filter(|k| !k.is_empty() && k.chars().count() <= 16)
                .cloned()
                .collect();
            proptest::prop_assert_eq!(classify(&[set]), Some(Kind::Reactions(target, read)));
        }

        /// What clients add that the bridge does not know (attributes, children in other
        /// namespaces) does not make it drop a correction or a reaction.
        #[test]
        fn unknown_parts_are_tolerated(target in "[a-z0-9-]{1,12}", extra in "[a-z]{1,8}") {
            let correction = el(&format!(
                "<replace xmlns='urn:xmpp:message-correct:0' id='{target}' x-{extra}='x'><{extra} xmlns='urn:example'/></replace>"
            ));
            proptest::prop_assert_eq!(classify(&[correction]), Some(Kind::Correction(target.clone())));
            let set = el(&format!(
                "<reactions xmlns='urn:xmpp:reactions:0' id='{target}' x-{extra}='x'><reaction x-{extra}='y'>👍</reaction><{extra} xmlns='urn:example'>z</{extra}></reactions>"
            ));
            proptest::prop_assert_eq!(
                classify(&[set]),
                Some(Kind::Reactions(target, ["👍".to_owned()].into()))
            );
        }
    }

    #[test]
    fn reaction_sets_are_diffed() {
        let s = Store::temporary().unwrap();
        let kv = s.connector_kv("xmpp");
        let set = |k: &[&str]| k.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            diff_reactions(&kv, "r", &set(&["a", "b"])).unwrap(),
            (vec!["a".into(), "b".into()], vec![])
        );
        assert_eq!(
            diff_reactions(&kv, "r", &set(&["b", "c"])).unwrap(),
            (vec!["c".into()], vec!["a".into()])
        );
        assert_eq!(
            diff_reactions(&kv, "r", &set(&[])).unwrap(),
            (vec![], vec!["b".into(), "c".into()])
        );
        assert_eq!(kv.get("r").unwrap(), None);
    }
}
