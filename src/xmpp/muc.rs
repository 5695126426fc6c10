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
mod tests {
    use super::*;

    #[test]
    fn a_join_that_did_not_go_out_is_undone() {
        let rooms = Rooms::default();
        assert_eq!(rooms.add_puppet("r@m", "@a:hs", "a"), None);
        assert_eq!(rooms.add_puppet("r@m", "@b:hs", "b"), None);
        assert_eq!(rooms.primary("r@m").as_deref(), Some("@a:hs"));
        // A rename whose join failed: the old nick again.
        let before = rooms.add_puppet("r@m", "@b:hs", "bee");
        rooms.undo_add_puppet("r@m", "@b:hs", before);
        assert_eq!(rooms.puppet_nick("r@m", "@b:hs").as_deref(), Some("b"));
        assert!(rooms.is_puppet_nick("r@m", "b") && !rooms.is_puppet_nick("r@m", "bee"));
        // A first join that failed: the room is forgotten with its last puppet.
        rooms.undo_add_puppet("r@m", "@b:hs", None);
        assert_eq!(rooms.remove_puppet("r@m", "@a:hs"), Some(Some("a".into())));
        assert!(!rooms.is_room("r@m") && !rooms.has_puppets("r@m"));
        assert_eq!(rooms.remove_puppet("r@m", "@a:hs"), None);
    }

    #[test]
    fn occupants_and_nicks_are_tracked_per_room() {
        let rooms = Rooms::default();
        // Occupants of a room the bridge is not in are not kept.
        rooms.occupant_seen("r@m", "bob", Some("bob@x".into()), false);
        assert_eq!(rooms.occupant_real("r@m", "bob"), None);
        rooms.add_puppet("r@m", "@a:hs", "a");
        rooms.occupant_seen("r@m", "bob", Some("bob@x".into()), false);
        assert_eq!(rooms.occupant_real("r@m", "bob").as_deref(), Some("bob@x"));
        let room = BareJid::from_str("r@m").unwrap();
        assert_eq!(
            rooms.occupant_nick(&room, "bob@x", None).as_deref(),
            Some("bob")
        );
        rooms.occupant_seen("r@m", "bob", None, true);
        assert_eq!(rooms.occupant_nick(&room, "bob@x", None), None);
        // The room renames a puppet: recorded once.
        assert_eq!(
            rooms.puppet_renamed("r@m", "@a:hs", "a2").as_deref(),
            Some("a")
        );
        assert_eq!(rooms.puppet_renamed("r@m", "@a:hs", "a2"), None);
        assert_eq!(
            rooms.puppet_nicks("r@m"),
            vec![("a2".into(), "@a:hs".into())]
        );
    }

    #[test]
    fn traffic_times_are_persisted_every_30_seconds() {
        let rooms = Rooms::default();
        assert!(rooms.note_seen("r@m", 100_000));
        assert!(!rooms.note_seen("r@m", 129_999));
        assert!(rooms.note_seen("r@m", 130_000));
        assert!(rooms.note_seen("s@m", 129_999));
    }

    #[test]
    fn nicks_are_cleaned() {
        assert_eq!(nick_for("  Alice \n", "@alice:hs"), "Alice");
        assert_eq!(nick_for("\u{7}", "@alice:hs"), "alice");
        assert_eq!(nick_for(&"x".repeat(100), "@a:hs").len(), 64);
    }

    #[test]
    fn join_requests_keep_the_wire_shape() {
        let built = |attr: &'static str, value: &str| {
            Element::builder("x", ns::MUC)
                .append(
                    Element::builder("history", ns::MUC)
                        .attr(
                            xmpp_parsers::minidom::rxml::NcName::try_from(attr).unwrap(),
                            value,
                        )
                        .build(),
                )
                .build()
        };
        let from = Jid::from_str("u@matrix.example.org/isthmus").unwrap();
        let room = BareJid::from_str("lobby@conference.example.org").unwrap();
        let x = |stanza: Option<Stanza>| match stanza {
            Some(Stanza::Presence(p)) => p.payloads.into_iter().find(|e| e.is("x", ns::MUC)),
            _ => None,
        };
        assert_eq!(
            x(join_presence(from.clone(), &room, "u", false)),
            Some(built("maxstanzas", "0"))
        );
        assert_eq!(
            x(join_presence_backfill(from.clone(), &room, "u")),
            Some(built("maxstanzas", &BACKFILL_MESSAGES.to_string()))
        );
        assert_eq!(
            x(join_presence_since(
                from.clone(),
                &room,
                "u",
                false,
                Some(1_795_728_662_123)
            )),
            Some(built("since", "2026-11-26T21:31:02.123Z"))
        );
        assert_eq!(x(join_presence(from, &room, "u", true)), None);
        let private: Element = MucUser::default().into();
        assert_eq!(private, Element::builder("x", ns::MUC_USER).build());
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
    fn quotes_are_one_short_line() {
        assert_eq!(quote(""), "");
        assert_eq!(quote("  \n "), "");
        assert_eq!(quote("hello"), "hello");
        assert_eq!(quote(" two\n\n  lines\t"), "two lines");
        let long = "word ".repeat(40);
        let q = quote(&long);
        assert!(q.ends_with("word…"), "{q}");
        assert!(q.chars().count() <= QUOTED_CHARS + 1, "{q}");
        let exact = "é".repeat(QUOTED_CHARS);
        assert_eq!(quote(&exact), exact);
        let over = "é".repeat(QUOTED_CHARS + 1);
        assert_eq!(quote(&over), format!("{}…", "é".repeat(QUOTED_CHARS)));
        // A cut at a space does not end in one.
        let spaced = format!("{} tail", "x".repeat(QUOTED_CHARS - 1));
        assert_eq!(quote(&spaced), format!("{}…", "x".repeat(QUOTED_CHARS - 1)));
    }

    #[test]
    fn the_sender_is_found_by_nick_or_real_jid() {
        let room = BareJid::from_str("lobby@conference.example.org").unwrap();
        let mut occupants = HashMap::new();
        occupants.insert("a/b @c".to_owned(), None);
        occupants.insert("bobby".to_owned(), Some("bob@example.org".to_owned()));
        // Known by nick: that nick, odd characters and all, while it is in the room.
        let odd = "lobby@conference.example.org/a/b @c";
        assert_eq!(
            occupant_nick(&room, &occupants, odd, Some("a/b @c")).as_deref(),
            Some("a/b @c")
        );
        let gone = "lobby@conference.example.org/gone";
        assert_eq!(occupant_nick(&room, &occupants, gone, Some("gone")), None);
        // Known by real JID: followed to its current nick.
        for nick in [Some("bob"), Some("bobby"), None] {
            assert_eq!(
                occupant_nick(&room, &occupants, "bob@example.org", nick).as_deref(),
                Some("bobby")
            );
        }
        assert_eq!(
            occupant_nick(&room, &occupants, "carol@example.org", Some("bobby")),
            None,
            "never someone else's nick"
        );
    }

    #[test]
    fn an_undelivered_message_is_told_in_private_from_the_puppet() {
        let room = BareJid::from_str("lobby@conference.example.org").unwrap();
        let from = Jid::from_str("alice@matrix.example.org/isthmus").unwrap();
        let s = undelivered_notice(
            from,
            &room,
            "a/b @c",
            "hello\u{1}\n  world",
            "too many new users from your server; try again later",
        )
        .unwrap();
        let el = Element::from(crate::xmpp::xml_safe::stanza(s).unwrap());
        assert_eq!(el.attr("type"), Some("chat"));
        assert_eq!(el.attr("from"), Some("alice@matrix.example.org/isthmus"));
        assert_eq!(el.attr("to"), Some("lobby@conference.example.org/a/b @c"));
        assert!(el.has_child("x", ns::MUC_USER), "a MUC private message");
        let body = el.get_child("body", ns::DEFAULT_NS).unwrap().text();
        assert_eq!(
            body,
            "Your message was not bridged to Matrix: too many new users from your server; try again later\n> hello\u{FFFD} world"
        );
        let mut xml = Vec::new();
        el.write_to(&mut xml).unwrap();
        Element::from_str(&String::from_utf8(xml).unwrap()).unwrap();

        // Without text (a file without caption), only the reason.
        let from = Jid::from_str("alice@matrix.example.org/isthmus").unwrap();
        let el = Element::from(undelivered_notice(from, &room, "bob", "", "why").unwrap());
        assert_eq!(
            el.get_child("body", ns::DEFAULT_NS).unwrap().text(),
            "Your message was not bridged to Matrix: why"
        );
    }

    #[test]
    fn a_nick_that_is_no_address_gets_no_notice() {
        let room = BareJid::from_str("lobby@conference.example.org").unwrap();
        let from = Jid::from_str("alice@matrix.example.org/isthmus").unwrap();
        for nick in ["", &"n".repeat(1100)] {
            assert!(undelivered_notice(from.clone(), &room, nick, "hi", "why").is_none());
        }
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
