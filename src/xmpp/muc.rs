//! Group chats (XEP-0045) hosted elsewhere: Matrix users join them through the portal room,
//! each as their own occupant with their display name as nick. Occupants appear on Matrix as
//! ghosts (`room@service/nick`, or their real JID when the room shows it).
//!
//! Every puppet in a room receives each message; only the copy sent to the room's *primary*
//! puppet (the first by user ID) is bridged, so a message is bridged once however many Matrix
//! users are in the room. Messages from our own puppets' nicks are echoes and are dropped.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Mutex;

use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Lang, Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::muc::muc::History;
use xmpp_parsers::muc::{Muc, MucUser};
use xmpp_parsers::ns;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza::Stanza;

use crate::network::{ConnectorStore, SinkError};

/// The resource of every puppet's full JID.
pub(super) const RESOURCE: &str = "isthmus";

/// What the bridge knows of one room.
#[derive(Debug, Default)]
struct Room {
    /// Matrix users in the room, with their nicks.
    puppets: BTreeMap<String, String>,
    /// Other occupants by nick, with their real JID when the room shows it.
    occupants: HashMap<String, Option<String>>,
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
        *x = join_request(History::new().with_maxstanzas(BACKFILL_MESSAGES));
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
        p.payloads.push(match since {
            // Built by hand: the crate writes UTC times without their milliseconds, which
            // would ask again for what was said in the second before.
            Some(ms) => Element::builder("x", ns::MUC)
                .append(
                    Element::builder("history", ns::MUC)
                        .attr(
                            xmpp_parsers::minidom::rxml::xml_ncname!("since").to_owned(),
                            super::time::rfc3339(ms),
                        )
                        .build(),
                )
                .build(),
            None => join_request(History::new().with_maxstanzas(0)),
        });
    }
    Some(p.into())
}

/// The join request (XEP-0045 `<x/>`) asking for `history`.
fn join_request(history: History) -> Element {
    Muc::new().with_history(history).into()
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

/// How much of a message a notice about it quotes, in characters.
const QUOTED_CHARS: usize = 80;

/// The beginning of `body` on one line: each run of whitespace becomes one space, and a
/// longer text is cut after [`QUOTED_CHARS`] characters, with `…`.
pub(super) fn quote(body: &str) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut gap = false;
    for c in body.trim().chars() {
        if c.is_whitespace() {
            gap = true;
            continue;
        }
        let needed = if gap { 2 } else { 1 };
        if count + needed > QUOTED_CHARS {
            out.push('…');
            break;
        }
        if gap {
            out.push(' ');
            gap = false;
        }
        out.push(c);
        count += needed;
    }
    out
}

/// The current nick of the occupant who sent a message as `sender` (an ID made by
/// [`occupant_id`]) under nick `nick`, among the room's `occupants` (nick → real JID).
/// `None` when that occupant is no longer in the room: nobody is there to tell.
pub(super) fn occupant_nick(
    room: &BareJid,
    occupants: &HashMap<String, Option<String>>,
    sender: &str,
    nick: Option<&str>,
) -> Option<String> {
    if let Some(n) = sender
        .strip_prefix(room.as_str())
        .and_then(|rest| rest.strip_prefix('/'))
    {
        // Known by nick only: that nick, while it is in the room.
        return occupants.contains_key(n).then(|| n.to_owned());
    }
    // Known by real JID: the nick it wrote under, else the one it has now.
    let is_sender = |real: &Option<String>| real.as_deref() == Some(sender);
    nick.filter(|n| occupants.get(*n).is_some_and(is_sender))
        .map(str::to_owned)
        .or_else(|| {
            occupants
                .iter()
                .filter(|(_, real)| is_sender(real))
                .map(|(n, _)| n.clone())
                .min()
        })
}

/// The private message (XEP-0045 §7.5: type `chat`, with a `muc#user` element) that tells
/// occupant `nick` of `room` that their message, whose text began with `body`, did not reach
/// Matrix, and why. It goes from `from`, the full JID of a puppet in the room. `None` when
/// `nick` cannot be an occupant's address.
pub(super) fn undelivered_notice(
    from: Jid,
    room: &BareJid,
    nick: &str,
    body: &str,
    reason: &str,
) -> Option<Stanza> {
    let to = room.with_resource_str(nick).ok()?;
    let quoted = quote(body);
    let text = if quoted.is_empty() {
        format!("Your message was not bridged to Matrix: {reason}")
    } else {
        format!("Your message was not bridged to Matrix: {reason}\n> {quoted}")
    };
    let mut m = Message::new(Some(Jid::from(to)));
    m.type_ = MessageType::Chat;
    m.from = Some(from);
    m.bodies.insert(Lang::default(), text);
    m.payloads.push(MucUser::default().into());
    Some(m.into())
}

/// The group chats the bridge is in and when each last had traffic, behind one lock.
#[derive(Debug, Default)]
pub(super) struct Rooms {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Group chats the bridge is in, by room JID.
    rooms: HashMap<String, Room>,
    /// Per group chat: when its traffic time was last persisted.
    seen: HashMap<String, u64>,
}

impl Rooms {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().expect("rooms lock"))
    }

    /// The Matrix user whose copy of the room's traffic is bridged.
    pub fn primary(&self, room: &str) -> Option<String> {
        self.with(|i| i.rooms.get(room)?.puppets.keys().next().cloned())
    }

    /// Whether `nick` in `room` is one of our puppets.
    pub fn is_puppet_nick(&self, room: &str, nick: &str) -> bool {
        self.with(|i| {
            i.rooms
                .get(room)
                .is_some_and(|r| r.puppets.values().any(|n| n == nick))
        })
    }

    /// Whether the bridge has joined `room` for anyone.
    pub fn is_room(&self, room: &str) -> bool {
        self.with(|i| i.rooms.contains_key(room))
    }

    /// Whether any Matrix user's puppet is in `room`.
    pub fn has_puppets(&self, room: &str) -> bool {
        self.with(|i| i.rooms.get(room).is_some_and(|r| !r.puppets.is_empty()))
    }

    /// The nick of `user`'s puppet in `room`, when it is in.
    pub fn puppet_nick(&self, room: &str, user: &str) -> Option<String> {
        self.with(|i| i.rooms.get(room)?.puppets.get(user).cloned())
    }

    /// The (nick, Matrix user) of every puppet in `room`.
    pub fn puppet_nicks(&self, room: &str) -> Vec<(String, String)> {
        self.with(|i| {
            i.rooms
                .get(room)
                .map(|r| {
                    r.puppets
                        .iter()
                        .map(|(u, n)| (n.clone(), u.clone()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Records `user`'s puppet in `room` as `nick`; the nick it had before.
    pub fn add_puppet(&self, room: &str, user: &str, nick: &str) -> Option<String> {
        self.with(|i| {
            i.rooms
                .entry(room.to_owned())
                .or_default()
                .puppets
                .insert(user.to_owned(), nick.to_owned())
        })
    }

    /// Undoes [`Self::add_puppet`] (the join did not go out): the puppet's nick is `before`
    /// again, or it is out; a room without puppets is forgotten.
    pub fn undo_add_puppet(&self, room: &str, user: &str, before: Option<String>) {
        self.with(|i| {
            let Some(r) = i.rooms.get_mut(room) else {
                return;
            };
            match before {
                Some(old) => {
                    r.puppets.insert(user.to_owned(), old);
                }
                None => {
                    r.puppets.remove(user);
                }
            }
            if r.puppets.is_empty() {
                i.rooms.remove(room);
            }
        })
    }

    /// Takes `user`'s puppet out of `room` (a room without puppets is forgotten): `None`
    /// when the bridge is not in the room, else the puppet's nick when it was in.
    pub fn remove_puppet(&self, room: &str, user: &str) -> Option<Option<String>> {
        self.with(|i| {
            let r = i.rooms.get_mut(room)?;
            let nick = r.puppets.remove(user);
            if r.puppets.is_empty() {
                i.rooms.remove(room);
            }
            Some(nick)
        })
    }

    /// The room gave `user`'s puppet nick `nick`: recorded when it differs; the old nick then.
    pub fn puppet_renamed(&self, room: &str, user: &str, nick: &str) -> Option<String> {
        self.with(|i| {
            let n = i.rooms.get_mut(room)?.puppets.get_mut(user)?;
            (n != nick).then(|| std::mem::replace(n, nick.to_owned()))
        })
    }

    /// The real JID of occupant `nick` of `room`, when the room shows it.
    pub fn occupant_real(&self, room: &str, nick: &str) -> Option<String> {
        self.with(|i| i.rooms.get(room)?.occupants.get(nick).cloned().flatten())
    }

    /// Occupant `nick` (real JID `real`, when shown) is in `room`, or left it.
    pub fn occupant_seen(&self, room: &str, nick: &str, real: Option<String>, leaving: bool) {
        self.with(|i| {
            if let Some(r) = i.rooms.get_mut(room) {
                if leaving {
                    r.occupants.remove(nick);
                } else {
                    r.occupants.insert(nick.to_owned(), real);
                }
            }
        })
    }

    /// The current nick of the occupant who sent as `sender` under `nick` ([`occupant_nick`]).
    pub fn occupant_nick(
        &self,
        room: &BareJid,
        sender: &str,
        nick: Option<&str>,
    ) -> Option<String> {
        self.with(|i| occupant_nick(room, &i.rooms.get(room.as_str())?.occupants, sender, nick))
    }

    /// Notes that `room` had traffic at `ms`; true when that is to be persisted (at most
    /// every 30 s).
    pub fn note_seen(&self, room: &str, ms: u64) -> bool {
        self.with(|i| {
            let last = i.seen.entry(room.to_owned()).or_insert(0);
            if ms >= last.saturating_add(30_000) {
                *last = ms;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests;
