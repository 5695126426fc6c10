//! Matrix rooms hosted as group chats (XEP-0045) on the component: XMPP users join
//! `#lobby@matrix.example.org` and talk with the room's Matrix members, who appear as
//! occupants under their display names. The gateway plays the MUC service: it answers joins
//! with the occupant list, the joiner's own presence (status 110) and the subject, reflects
//! messages to every occupant, and announces arrivals and departures.

use std::collections::BTreeMap;
use std::str::FromStr;

use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

/// One hosted room.
#[derive(Debug, Default)]
pub(super) struct Room {
    /// XMPP occupants: full JID → nick.
    pub occupants: BTreeMap<String, String>,
    /// Matrix members: user ID → nick.
    pub members: BTreeMap<String, String>,
}

impl Room {
    /// Whether `nick` is taken by someone other than `jid`.
    pub fn nick_taken(&self, nick: &str, jid: &str) -> bool {
        self.members.values().any(|n| n == nick)
            || self.occupants.iter().any(|(j, n)| n == nick && j != jid)
    }
}

fn ncname(s: &'static str) -> xmpp_parsers::minidom::rxml::NcName {
    xmpp_parsers::minidom::rxml::NcName::try_from(s).expect("a valid attribute name")
}

/// The presence of occupant `nick` of `room`, sent to `to`. `own` marks the joiner's own
/// presence (status 110); `real` reveals the occupant's JID (the room is non-anonymous).
pub(super) fn occupant_presence(
    room: &BareJid,
    nick: &str,
    to: &Jid,
    leaving: bool,
    own: bool,
    real: Option<&str>,
) -> Option<Stanza> {
    let from = Jid::from_str(&format!("{room}/{nick}")).ok()?;
    let mut p = Presence::new(if leaving {
        PresenceType::Unavailable
    } else {
        PresenceType::None
    });
    p.from = Some(from);
    p.to = Some(to.clone());
    // Built by hand: the crate's muc#user `item` takes only a full JID, and the room shows
    // its occupants' bare JIDs.
    let mut item = Element::builder("item", ns::MUC_USER)
        .attr(ncname("affiliation"), "none")
        .attr(ncname("role"), if leaving { "none" } else { "participant" });
    if let Some(jid) = real {
        item = item.attr(ncname("jid"), jid);
    }
    let mut x = Element::builder("x", ns::MUC_USER).append(item.build());
    if own {
        for code in ["100", "110"] {
            x = x.append(
                Element::builder("status", ns::MUC_USER)
                    .attr(ncname("code"), code)
                    .build(),
            );
        }
    }
    p.payloads.push(x.build());
    Some(p.into())
}

/// The subject message that ends a join (an empty subject when the room has none).
pub(super) fn subject_message(room: &BareJid, to: &Jid, subject: &str) -> Stanza {
    let mut m = Message::new(Some(to.clone()));
    m.type_ = MessageType::Groupchat;
    m.from = Some(Jid::from(room.clone()));
    m.subjects.insert(Lang::default(), subject.to_owned());
    m.into()
}

/// An error presence refusing a join.
pub(super) fn join_error(from: &Jid, to: &Jid, condition: DefinedCondition, text: &str) -> Stanza {
    let mut p = Presence::new(PresenceType::Error);
    p.from = Some(from.clone());
    p.to = Some(to.clone());
    p.payloads
        .push(StanzaError::new(ErrorType::Cancel, condition, "en", text).into());
    p.into()
}

/// The address in `occupants` (full JID → nick) that sender `sender` (a bare JID) wrote
/// from: the occupant with nick `nick` when there is one, else any occupant of that bare JID.
/// `None` when the sender is no longer in the room.
pub(super) fn occupant_address(
    occupants: &BTreeMap<String, String>,
    sender: &BareJid,
    nick: Option<&str>,
) -> Option<Jid> {
    let of_sender = || {
        occupants.iter().filter_map(|(jid, n)| {
            let jid = Jid::from_str(jid).ok()?;
            (jid.to_bare() == *sender).then_some((jid, n))
        })
    };
    of_sender()
        .find(|(_, n)| Some(n.as_str()) == nick)
        .or_else(|| of_sender().next())
        .map(|(jid, _)| jid)
}

/// The error message that tells a sender their message did not reach Matrix (RFC 6120 §8.3:
/// type `error`, the original's ID, `from` the address it was sent to: a hosted room, or a
/// Matrix user's gateway address in a direct chat). Its text is `reason`; clients mark the
/// message with that ID as failed.
pub(super) fn undelivered_error(from: Jid, to: Jid, id: &str, reason: &str) -> Stanza {
    let mut err = Message::new(Some(to));
    err.type_ = MessageType::Error;
    err.from = Some(from);
    err.id = Some(xmpp_parsers::message::Id(id.to_owned()));
    err.payloads.push(
        StanzaError::new(
            ErrorType::Cancel,
            DefinedCondition::UndefinedCondition,
            "en",
            reason,
        )
        .into(),
    );
    err.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_presence_carries_status_110() {
        let room = BareJid::from_str("#lobby@matrix.example.org").unwrap();
        let to = Jid::from_str("bob@example.net/phone").unwrap();
        let xml = String::from(&Element::from(
            occupant_presence(&room, "bob", &to, false, true, None).unwrap(),
        ));
        assert!(xml.contains("code='110'"), "{xml}");
        assert!(
            xml.contains("from='#lobby@matrix.example.org/bob'"),
            "{xml}"
        );
        let other = String::from(&Element::from(
            occupant_presence(&room, "Alice", &to, false, false, None).unwrap(),
        ));
        assert!(!other.contains("110"), "{other}");
    }

    #[test]
    fn an_undelivered_message_is_answered_with_its_id_from_the_room() {
        let room = BareJid::from_str("#lobby@matrix.example.org").unwrap();
        let to = Jid::from_str("carol@example.net/phone").unwrap();
        let el = Element::from(
            crate::xmpp::xml_safe::stanza(undelivered_error(
                Jid::from(room.clone()),
                to,
                "m\u{1}1",
                "too many new users\u{7} from your server",
            ))
            .unwrap(),
        );
        assert_eq!(el.attr("type"), Some("error"));
        assert_eq!(el.attr("from"), Some("#lobby@matrix.example.org"));
        assert_eq!(el.attr("to"), Some("carol@example.net/phone"));
        assert_eq!(el.attr("id"), Some("m\u{FFFD}1"));
        let error = el.get_child("error", ns::DEFAULT_NS).expect("an error");
        assert_eq!(error.attr("type"), Some("cancel"));
        assert!(error.has_child("undefined-condition", ns::XMPP_STANZAS));
        let text = error.get_child("text", ns::XMPP_STANZAS).unwrap().text();
        assert_eq!(text, "too many new users\u{FFFD} from your server");
        // Written as the link writes it, and read back.
        let mut xml = Vec::new();
        el.write_to(&mut xml).unwrap();
        let back = Element::from_str(&String::from_utf8(xml).unwrap()).unwrap();
        assert_eq!(back.attr("id"), Some("m\u{FFFD}1"));
    }

    #[test]
    fn the_sender_is_found_among_the_occupants() {
        let sender = BareJid::from_str("carol@example.net").unwrap();
        let mut occupants = BTreeMap::new();
        occupants.insert("bob@example.net/pc".to_owned(), "bob".to_owned());
        assert_eq!(occupant_address(&occupants, &sender, Some("carol")), None);
        occupants.insert("carol@example.net/laptop".to_owned(), "carol2".to_owned());
        occupants.insert("carol@example.net/phone".to_owned(), "carol".to_owned());
        // The resource that wrote under the nick.
        assert_eq!(
            occupant_address(&occupants, &sender, Some("carol")),
            Some(Jid::from_str("carol@example.net/phone").unwrap())
        );
        // Another of the sender's resources when the nick is gone or unknown.
        for nick in [Some("gone"), None] {
            assert_eq!(
                occupant_address(&occupants, &sender, nick),
                Some(Jid::from_str("carol@example.net/laptop").unwrap())
            );
        }
        // Never someone else's, even under the sender's nick.
        let dave = BareJid::from_str("dave@example.net").unwrap();
        assert_eq!(occupant_address(&occupants, &dave, Some("carol")), None);
    }

    #[test]
    fn nicks_are_unique_across_both_sides() {
        let mut r = Room::default();
        r.members.insert("@alice:hs".into(), "Alice".into());
        r.occupants.insert("bob@x/1".into(), "bob".into());
        assert!(r.nick_taken("Alice", "carol@x/1"));
        assert!(r.nick_taken("bob", "carol@x/1"));
        assert!(
            !r.nick_taken("bob", "bob@x/1"),
            "one's own nick is not taken"
        );
        assert!(!r.nick_taken("carol", "carol@x/1"));
    }
}
