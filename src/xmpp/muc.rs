//! Group chats (XEP-0045) hosted elsewhere: Matrix users join them through the portal room,
//! each as their own occupant with their display name as nick. Occupants appear on Matrix as
//! ghosts (`room@service/nick`, or their real JID when the room shows it).
//!
//! Every puppet in a room receives each message; only the copy sent to the room's *primary*
//! puppet (the first by user ID) is bridged, so a message is bridged once however many Matrix
//! users are in the room. Messages from our own puppets' nicks are echoes and are dropped.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza::Stanza;

use super::Shared;
use crate::network::{ConnectorStore, SinkError};

/// The resource of every puppet's full JID.
pub(super) const RESOURCE: &str = "isthmus";

/// What the bridge knows of one room.
#[derive(Debug, Default)]
pub(super) struct Room {
    /// Matrix users in the room, with their nicks.
    pub puppets: BTreeMap<String, String>,
    /// Other occupants by nick, with their real JID when the room shows it.
    pub occupants: HashMap<String, Option<String>>,
}

/// A usable nick from a display name: no control characters, trimmed, not empty.
pub(super) fn nick_for(displayname: &str, user_id: &str) -> String {
    let cleaned: String = displayname.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        user_id
            .trim_start_matches('@')
            .split(':')
            .next()
            .unwrap_or("matrix")
            .to_owned()
    } else {
        cleaned.chars().take(64).collect()
    }
}

/// The remote user ID of an occupant: the real bare JID when known, else `room/nick`.
pub(super) fn occupant_id(room: &BareJid, nick: &str, real: Option<&str>) -> String {
    match real {
        Some(jid) => jid.to_owned(),
        None => format!("{room}/{nick}"),
    }
}

/// The full JID a puppet uses in group chats.
pub(super) fn puppet_full(bare: &BareJid) -> Jid {
    Jid::from_str(&format!("{bare}/{RESOURCE}")).unwrap_or_else(|_| Jid::from(bare.clone()))
}

/// The presence that joins (or, with `leave`, leaves) `room` as `nick`.
pub(super) fn join_presence(from: Jid, room: &BareJid, nick: &str, leave: bool) -> Option<Stanza> {
    join_presence_since(from, room, nick, leave, None)
}

/// How many earlier messages a new portal gets from the room's history (which rooms with
/// XEP-0313 archives serve from the archive), with their original times.
pub(super) const BACKFILL_MESSAGES: u32 = 20;

/// The presence that joins `room` for the first time: the last [`BACKFILL_MESSAGES`]
/// messages come with it.
pub(super) fn join_presence_backfill(from: Jid, room: &BareJid, nick: &str) -> Option<Stanza> {
    let mut stanza = join_presence_since(from, room, nick, false, None)?;
    if let Stanza::Presence(p) = &mut stanza
        && let Some(x) = p.payloads.iter_mut().find(|x| x.is("x", ns::MUC))
    {
        *x = Element::builder("x", ns::MUC)
            .append(
                Element::builder("history", ns::MUC)
                    .attr(
                        xmpp_parsers::minidom::rxml::xml_ncname!("maxstanzas").to_owned(),
                        BACKFILL_MESSAGES.to_string(),
                    )
                    .build(),
            )
            .build();
    }
    Some(stanza)
}

/// Like [`join_presence`]; with `since` (milliseconds since the Unix epoch) the room is asked
/// for what was said since then (XEP-0045 history), else for no history at all.
pub(super) fn join_presence_since(
    from: Jid,
    room: &BareJid,
    nick: &str,
    leave: bool,
    since: Option<u64>,
) -> Option<Stanza> {
    let to = Jid::from_str(&format!("{room}/{nick}")).ok()?;
    let mut p = Presence::new(if leave {
        PresenceType::Unavailable
    } else {
        PresenceType::None
    });
    p.from = Some(from);
    p.to = Some(to);
    if !leave {
        let history = match since {
            Some(ms) => Element::builder("history", ns::MUC)
                .attr(
                    xmpp_parsers::minidom::rxml::xml_ncname!("since").to_owned(),
                    super::time::rfc3339(ms),
                )
                .build(),
            None => Element::builder("history", ns::MUC)
                .attr(
                    xmpp_parsers::minidom::rxml::xml_ncname!("maxstanzas").to_owned(),
                    "0",
                )
                .build(),
        };
        p.payloads
            .push(Element::builder("x", ns::MUC).append(history).build());
    }
    Some(p.into())
}

/// The connector-store key of the room's stanza-id for a message the bridge sent as `id`.
pub(super) fn stanza_id_key(room: &str, id: &str) -> String {
    format!("sid:{room}\u{1f}{id}")
}

/// Remembers when the bridge last saw traffic in `room` (milliseconds since the epoch).
pub(super) fn remember_seen(
    store: &dyn ConnectorStore,
    room: &str,
    ms: u64,
) -> Result<(), SinkError> {
    store.put(&format!("mucseen:{room}"), &serde_json::Value::from(ms))
}

/// When the bridge last saw traffic in `room`.
pub(super) fn last_seen(store: &dyn ConnectorStore, room: &str) -> Option<u64> {
    store
        .get(&format!("mucseen:{room}"))
        .ok()
        .flatten()
        .and_then(|v| v.as_u64())
}

fn key(room: &str, user: &str) -> String {
    format!("muc:{room}\u{1f}{user}")
}

/// Remembers that `user` is in `room` as `nick` (survives restarts, for rejoining).
pub(super) fn remember(
    store: &dyn ConnectorStore,
    room: &str,
    user: &str,
    nick: &str,
) -> Result<(), SinkError> {
    store.put(
        &key(room, user),
        &serde_json::Value::String(nick.to_owned()),
    )
}

/// Forgets that `user` is in `room`.
pub(super) fn forget(store: &dyn ConnectorStore, room: &str, user: &str) -> Result<(), SinkError> {
    store.delete(&key(room, user))
}

/// Every remembered (room, user, nick).
pub(super) fn all_joined(
    store: &dyn ConnectorStore,
) -> Result<Vec<(String, String, String)>, SinkError> {
    Ok(store
        .scan("muc:")?
        .into_iter()
        .filter_map(|(k, v)| {
            let (room, user) = k.strip_prefix("muc:")?.split_once('\u{1f}')?;
            Some((room.to_owned(), user.to_owned(), v.as_str()?.to_owned()))
        })
        .collect())
}

impl Shared {
    /// The Matrix user whose copy of the room's traffic is bridged.
    pub(super) fn primary(&self, room: &str) -> Option<String> {
        self.rooms
            .lock()
            .expect("rooms lock")
            .get(room)
            .and_then(|r| r.puppets.keys().next().cloned())
    }

    /// Whether `nick` in `room` is one of our puppets.
    pub(super) fn is_puppet_nick(&self, room: &str, nick: &str) -> bool {
        self.rooms
            .lock()
            .expect("rooms lock")
            .get(room)
            .is_some_and(|r| r.puppets.values().any(|n| n == nick))
    }

    /// Whether the bridge has joined `room` for anyone.
    pub(super) fn is_room(&self, room: &str) -> bool {
        self.rooms.lock().expect("rooms lock").contains_key(room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicks_are_cleaned() {
        assert_eq!(nick_for("  Alice \n", "@alice:hs"), "Alice");
        assert_eq!(nick_for("\u{7}", "@alice:hs"), "alice");
        assert_eq!(nick_for(&"x".repeat(100), "@a:hs").len(), 64);
    }

    #[test]
    fn occupants_prefer_real_jids() {
        let room = BareJid::from_str("lobby@conference.example.org").unwrap();
        assert_eq!(
            occupant_id(&room, "bob", Some("bob@example.org")),
            "bob@example.org"
        );
        assert_eq!(
            occupant_id(&room, "bob", None),
            "lobby@conference.example.org/bob"
        );
    }

    #[test]
    fn join_presence_asks_for_no_history() {
        let room = BareJid::from_str("lobby@conference.example.org").unwrap();
        let from = Jid::from_str("alice@matrix.example.org/isthmus").unwrap();
        let s = join_presence(from, &room, "Alice", false).unwrap();
        let xml = String::from(&Element::from(s));
        assert!(
            xml.contains("to='lobby@conference.example.org/Alice'"),
            "{xml}"
        );
        assert!(xml.contains("maxstanzas='0'"), "{xml}");
    }
}
