//! Matrix rooms hosted as group chats (XEP-0045) on the component: XMPP users join
//! `#lobby@matrix.example.org` and talk with the room's Matrix members, who appear as
//! occupants under their display names. The gateway plays the MUC service: it answers joins
//! with the occupant list, the joiner's own presence (status 110) and the subject, reflects
//! messages to every occupant, and announces arrivals and departures.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Mutex;

use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

/// One hosted room.
#[derive(Debug, Default)]
struct Room {
    /// XMPP occupants: full JID → nick.
    occupants: BTreeMap<String, String>,
    /// Matrix members: user ID → nick.
    members: BTreeMap<String, String>,
}

impl Room {
    /// Whether `nick` is taken by someone other than `jid`.
    fn nick_taken(&self, nick: &str, jid: &str) -> bool {
        self.members.values().any(|n| n == nick)
            || self.occupants.iter().any(|(j, n)| n == nick && j != jid)
    }
}

fn ncname(s: &'static str) -> xmpp_parsers::minidom::rxml::NcName {
    xmpp_parsers::minidom::rxml::NcName::try_from(s).expect("a valid attribute name")
}

/// The hosted rooms: which aliases may be joined, and who is in each room in use (one lock).
#[derive(Debug)]
pub(super) struct HostedRooms {
    /// Room aliases XMPP users may join as hosted group chats.
    allowed: Vec<String>,
    /// Hosted group chats in use, by room JID.
    rooms: Mutex<HashMap<String, Room>>,
}

/// What a presence of an XMPP user to a hosted room did.
pub(super) enum Occupancy {
    /// The user joined, or left; the stanzas tell the occupants.
    Changed { joined: bool, out: Vec<Stanza> },
    /// Nothing changed (a presence update of someone in, a leave of someone out).
    Unchanged,
    /// The join is refused: the nick is taken.
    NickTaken,
}

/// Who speaks in a hosted room.
pub(super) enum Speaker {
    /// The room is not in use.
    NoRoom,
    /// The sender is not an occupant.
    Outsider,
    /// An occupant: its nick, every occupant's address and the Matrix members' (nick, user).
    Occupant {
        nick: String,
        targets: Vec<Jid>,
        members: Vec<(String, String)>,
    },
}

impl HostedRooms {
    /// The hosted rooms with aliases `allowed`, none in use yet.
    pub fn new(allowed: Vec<String>) -> Self {
        Self {
            allowed,
            rooms: Mutex::default(),
        }
    }

    /// Whether `alias` may be joined.
    pub fn allows(&self, alias: &str) -> bool {
        self.allowed.iter().any(|a| a == alias)
    }

    /// The aliases that may be joined.
    pub fn aliases(&self) -> &[String] {
        &self.allowed
    }

    /// The addresses of the XMPP occupants of `room`.
    pub fn occupants(&self, room: &str) -> Vec<Jid> {
        self.rooms
            .lock()
            .expect("hosted lock")
            .get(room)
            .map(|r| {
                r.occupants
                    .keys()
                    .filter_map(|j| Jid::from_str(j).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `full` is an occupant of `room`.
    pub fn is_occupant(&self, room: &str, full: &str) -> bool {
        self.rooms
            .lock()
            .expect("hosted lock")
            .get(room)
            .is_some_and(|r| r.occupants.contains_key(full))
    }

    /// The address occupant `sender` (of nick `nick`) writes from, while in `room`.
    pub fn occupant_address(
        &self,
        room: &str,
        sender: &BareJid,
        nick: Option<&str>,
    ) -> Option<Jid> {
        self.rooms
            .lock()
            .expect("hosted lock")
            .get(room)
            .and_then(|r| occupant_address(&r.occupants, sender, nick))
    }

    /// The nick of Matrix member `user` in `room`, when recorded.
    pub fn member_nick(&self, room: &str, user: &str) -> Option<String> {
        self.rooms
            .lock()
            .expect("hosted lock")
            .get(room)
            .and_then(|r| r.members.get(user).cloned())
    }

    /// A Matrix member arrives in `room` with nick `nick` (suffixed when an XMPP occupant
    /// has it) or leaves; the nick and the occupants to tell, `None` when nothing changed.
    pub fn member_change(
        &self,
        room: &str,
        user: &str,
        nick: String,
        leaving: bool,
    ) -> Option<(String, Vec<Jid>)> {
        let mut rooms = self.rooms.lock().expect("hosted lock");
        let r = rooms.entry(room.to_owned()).or_default();
        let nick = if leaving {
            r.members.remove(user)?
        } else {
            let mut nick = nick;
            if r.occupants.values().any(|n| n == &nick) {
                nick = format!("{nick} (Matrix)");
            }
            if r.members.get(user) == Some(&nick) {
                return None;
            }
            r.members.insert(user.to_owned(), nick.clone());
            nick
        };
        let targets = r
            .occupants
            .keys()
            .filter_map(|j| Jid::from_str(j).ok())
            .collect();
        Some((nick, targets))
    }

    /// Whether nobody is known in `room` yet (its Matrix members must be asked for).
    pub fn is_unknown(&self, room: &str) -> bool {
        self.rooms
            .lock()
            .expect("hosted lock")
            .get(room)
            .is_none_or(|r| r.members.is_empty() && r.occupants.is_empty())
    }

    /// Records Matrix members of `room` (user, nick) not yet known.
    pub fn add_members(&self, room: &str, members: impl IntoIterator<Item = (String, String)>) {
        let mut rooms = self.rooms.lock().expect("hosted lock");
        let r = rooms.entry(room.to_owned()).or_default();
        for (user, nick) in members {
            r.members.entry(user).or_insert(nick);
        }
    }

    /// XMPP user `from` (contact `contact`) joins `room` as `nick`, or leaves it: the
    /// occupant list changes, and the stanzas that tell everyone are returned.
    pub fn occupant_change(
        &self,
        room: &BareJid,
        from: &Jid,
        nick: &str,
        contact: &str,
        leaving: bool,
    ) -> Occupancy {
        let who = from.to_string();
        let mut out = Vec::new();
        let mut rooms = self.rooms.lock().expect("hosted lock");
        let r = rooms.entry(room.to_string()).or_default();
        if leaving {
            let Some(nick) = r.occupants.remove(&who) else {
                return Occupancy::Unchanged;
            };
            out.extend(occupant_presence(room, &nick, from, true, true, None));
            for other in r.occupants.keys().filter_map(|j| Jid::from_str(j).ok()) {
                out.extend(occupant_presence(
                    room,
                    &nick,
                    &other,
                    true,
                    false,
                    Some(contact),
                ));
            }
            return Occupancy::Changed { joined: false, out };
        }
        if r.occupants.contains_key(&who) {
            return Occupancy::Unchanged;
        }
        if r.nick_taken(nick, &who) {
            return Occupancy::NickTaken;
        }
        for mnick in r.members.values() {
            out.extend(occupant_presence(room, mnick, from, false, false, None));
        }
        for (jid, onick) in &r.occupants {
            let real = Jid::from_str(jid).ok().map(|j| j.to_bare().to_string());
            out.extend(occupant_presence(
                room,
                onick,
                from,
                false,
                false,
                real.as_deref(),
            ));
            if let Ok(other) = Jid::from_str(jid) {
                out.extend(occupant_presence(
                    room,
                    nick,
                    &other,
                    false,
                    false,
                    Some(contact),
                ));
            }
        }
        out.extend(occupant_presence(
            room,
            nick,
            from,
            false,
            true,
            Some(contact),
        ));
        r.occupants.insert(who, nick.to_owned());
        Occupancy::Changed { joined: true, out }
    }

    /// Who `from` is in `room`, for a message it sends there.
    pub fn speaker(&self, room: &str, from: &Jid) -> Speaker {
        let rooms = self.rooms.lock().expect("hosted lock");
        let Some(r) = rooms.get(room) else {
            return Speaker::NoRoom;
        };
        let Some(nick) = r.occupants.get(&from.to_string()).cloned() else {
            return Speaker::Outsider;
        };
        Speaker::Occupant {
            nick,
            targets: r
                .occupants
                .keys()
                .filter_map(|j| Jid::from_str(j).ok())
                .collect(),
            members: r
                .members
                .iter()
                .map(|(u, n)| (n.clone(), u.clone()))
                .collect(),
        }
    }

    /// Puts XMPP occupant `full` in `room` as `nick` without telling anyone.
    #[cfg(test)]
    pub fn add_occupant(&self, room: &str, full: &str, nick: &str) {
        self.rooms
            .lock()
            .expect("hosted lock")
            .entry(room.to_owned())
            .or_default()
            .occupants
            .insert(full.to_owned(), nick.to_owned());
    }
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

/// How much of a room's history an XMPP user joining it gets when the join does not say.
pub(super) const HISTORY_DEFAULT: u32 = 20;
/// The most messages of history a join gets, whatever it asks for.
pub(super) const HISTORY_MAX: u32 = 50;

/// What a join asks of the room's history (XEP-0045 §7.2.14): at most how many messages,
/// and from when (milliseconds since the epoch; `seconds` is counted back from `now_ms`).
/// `maxchars` is honoured only as 0, "none", as XEP-0045 allows.
pub(super) fn history_wanted(p: &xmpp_parsers::presence::Presence, now_ms: u64) -> (u32, u64) {
    let asked = p
        .payloads
        .iter()
        .find(|e| e.is("x", xmpp_parsers::ns::MUC))
        .and_then(|x| xmpp_parsers::muc::Muc::try_from(x.clone()).ok())
        .and_then(|m| m.history);
    let Some(h) = asked else {
        return (HISTORY_DEFAULT, 0);
    };
    let count = if h.maxchars == Some(0) {
        0
    } else {
        h.maxstanzas.unwrap_or(HISTORY_DEFAULT).min(HISTORY_MAX)
    };
    let by_seconds = h
        .seconds
        .map(|s| now_ms.saturating_sub(u64::from(s) * 1000))
        .unwrap_or(0);
    let by_date = h
        .since
        .and_then(|d| u64::try_from(d.0.timestamp_millis()).ok())
        .unwrap_or(0);
    (count, by_seconds.max(by_date))
}

/// A message of the room's history for an occupant who just joined: from the author's nick,
/// with the time it was sent (XEP-0203, stamped by the room). `None` when the nick makes no
/// address.
pub(super) fn history_message(
    room: &BareJid,
    to: &Jid,
    nick: &str,
    id: &str,
    body: String,
    sent_ms: u64,
) -> Option<Stanza> {
    let from = Jid::from_str(&format!("{room}/{nick}")).ok()?;
    let stamp = xmpp_parsers::date::DateTime::from_str(&super::time::rfc3339(sent_ms)).ok()?;
    let mut m = Message::new(Some(to.clone()));
    m.type_ = MessageType::Groupchat;
    m.from = Some(from);
    m.id = Some(xmpp_parsers::message::Id(id.to_owned()));
    m.bodies.insert(Lang::default(), body);
    m.payloads.push(
        xmpp_parsers::delay::Delay {
            from: Some(Jid::from(room.clone())),
            stamp,
            data: None,
        }
        .into(),
    );
    Some(m.into())
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
/// A change of subject, from the nick of the member who made it (XEP-0045 §8.1); `None`
/// when the nick makes no address.
pub(super) fn subject_change(
    room: &BareJid,
    nick: &str,
    to: &Jid,
    subject: &str,
) -> Option<Stanza> {
    let from = Jid::from_str(&format!("{room}/{nick}")).ok()?;
    let mut m = Message::new(Some(to.clone()));
    m.type_ = MessageType::Groupchat;
    m.from = Some(from);
    m.subjects.insert(Lang::default(), subject.to_owned());
    Some(m.into())
}

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

    fn join_with(history: &str) -> Presence {
        let xml = format!(
            "<presence xmlns='jabber:component:accept' from='bob@example.net/phone' to='#lobby@matrix.example.org/bob'><x xmlns='http://jabber.org/protocol/muc'>{history}</x></presence>"
        );
        Presence::try_from(xml.parse::<Element>().unwrap()).unwrap()
    }

    #[test]
    fn a_join_asks_for_history_by_count_and_time() {
        let now = 1_800_000_000_000;
        // (what the join carries, messages, since)
        let cases = [
            ("", (HISTORY_DEFAULT, 0)),
            ("<history/>", (HISTORY_DEFAULT, 0)),
            ("<history maxstanzas='3'/>", (3, 0)),
            ("<history maxstanzas='0'/>", (0, 0)),
            ("<history maxstanzas='100000'/>", (HISTORY_MAX, 0)),
            ("<history maxchars='0'/>", (0, 0)),
            ("<history maxchars='65000'/>", (HISTORY_DEFAULT, 0)),
            ("<history seconds='60'/>", (HISTORY_DEFAULT, now - 60_000)),
            (
                "<history since='2027-01-15T00:00:00Z'/>",
                (HISTORY_DEFAULT, 1_799_971_200_000),
            ),
            (
                "<history maxstanzas='5' seconds='3600' since='1970-01-01T00:00:01Z'/>",
                (5, now - 3_600_000),
            ),
        ];
        for (history, want) in cases {
            assert_eq!(
                history_wanted(&join_with(history), now),
                want,
                "{history:?}"
            );
        }
        // A presence without the MUC element (a plain presence to an occupant address).
        let plain = Presence::try_from(
            "<presence xmlns='jabber:component:accept' from='bob@example.net/phone' to='#lobby@matrix.example.org/bob'/>"
                .parse::<Element>()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(history_wanted(&plain, now), (HISTORY_DEFAULT, 0));
    }

    #[test]
    fn a_history_message_comes_from_the_nick_stamped_by_the_room() {
        let room = BareJid::from_str("#lobby@matrix.example.org").unwrap();
        let to = Jid::from_str("bob@example.net/phone").unwrap();
        let m = history_message(
            &room,
            &to,
            "alice",
            "isthmus-1",
            "hi".into(),
            1_700_000_000_123,
        )
        .unwrap();
        let xml = String::from(&Element::from(m));
        for part in [
            "type='groupchat'",
            "from='#lobby@matrix.example.org/alice'",
            "to='bob@example.net/phone'",
            "id='isthmus-1'",
            "<body>hi</body>",
            "xmlns='urn:xmpp:delay'",
            "stamp='2023-11-14T22:13:20.123+00:00'",
        ] {
            assert!(xml.contains(part), "{part} in {xml}");
        }
        assert!(
            xml.contains("from='#lobby@matrix.example.org'"),
            "the room stamps it: {xml}"
        );
        // A nick that makes no address gives no message.
        assert!(history_message(&room, &to, "", "x", "hi".into(), 0).is_none());
    }
}
