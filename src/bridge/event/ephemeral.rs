//! A Matrix ephemeral event (typing, read receipts, presence), read once where it enters.
//!
//! The transaction handler reads each ephemeral event into an [`EphemeralEvent`]; one that
//! does not read as its type says is skipped there, alone, with a warning (nobody sent it who
//! could be told). The inbox keeps the JSON as the homeserver sent it, and a crash replay
//! reads it here again ([`EphemeralEvent::read`]).

use std::borrow::Cow;
use std::fmt;

use ruma::OwnedUserId;
use ruma::events::presence::{PresenceEvent, PresenceEventContent};
use ruma::events::receipt::ReceiptEventContent;
use ruma::events::typing::TypingEventContent;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

/// The top-level fields of an ephemeral event, its content still raw: what the transaction
/// handler needs to drop echoes and tell transactions apart before the content is read.
#[derive(Debug, Default, Deserialize)]
pub struct EphemeralHead<'a> {
    /// `type`.
    #[serde(default, rename = "type", borrow)]
    pub kind: Option<Cow<'a, str>>,
    /// `room_id`: typing and receipts have one, presence has none.
    #[serde(default, borrow)]
    pub room_id: Option<Cow<'a, str>>,
    /// `sender`: presence has one, typing and receipts have none.
    #[serde(default, borrow)]
    pub sender: Option<Cow<'a, str>>,
    /// `content`, unread.
    #[serde(default, borrow)]
    pub content: Option<&'a RawValue>,
}

/// The ephemeral events the core tells apart, each with ruma's typed content.
#[derive(Clone, Debug)]
pub enum EphemeralEvent {
    /// `m.typing`: who is typing in a room now (the whole list, not a change).
    Typing {
        /// The room.
        room_id: String,
        /// The users typing.
        content: TypingEventContent,
    },
    /// `m.receipt`: who has read up to which event of a room.
    Receipt {
        /// The room.
        room_id: String,
        /// The receipts, by event and receipt type.
        content: ReceiptEventContent,
    },
    /// `m.presence`: a user's presence, in no room.
    Presence(Box<PresenceEvent>),
    /// Any other type, by name: accepted, and not bridged.
    Other {
        /// Its type.
        kind: String,
        /// Its room, if it names one.
        room_id: Option<String>,
        /// Its sender, if it names one.
        sender: Option<String>,
    },
}

/// An ephemeral event that cannot be handled: what is known of it, and why.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{what}")]
pub struct InvalidEphemeral {
    /// Its type, when it has one.
    pub kind: Option<String>,
    /// Its room, when it names one.
    pub room_id: Option<String>,
    /// Its sender, when it names one.
    pub sender: Option<String>,
    /// Why it cannot be read.
    pub what: String,
}

impl EphemeralEvent {
    /// Reads a stored ephemeral event (a crash replay reads the inbox's JSON here).
    pub fn read(raw: &RawValue) -> Result<EphemeralEvent, InvalidEphemeral> {
        match serde_json::from_str::<EphemeralHead<'_>>(raw.get()) {
            Ok(head) => EphemeralEvent::from_head(&head),
            Err(e) => Err(InvalidEphemeral {
                kind: None,
                room_id: None,
                sender: None,
                what: format!("ephemeral event does not parse: {e}"),
            }),
        }
    }

    /// Reads the content of an ephemeral event whose top-level fields are read already.
    pub fn from_head(head: &EphemeralHead<'_>) -> Result<EphemeralEvent, InvalidEphemeral> {
        let owned = |s: &Option<Cow<'_, str>>| s.as_deref().map(str::to_owned);
        let invalid = |what: String| InvalidEphemeral {
            kind: owned(&head.kind),
            room_id: owned(&head.room_id),
            sender: owned(&head.sender),
            what,
        };
        let Some(kind) = head.kind.as_deref() else {
            return Err(invalid("ephemeral event has no type".into()));
        };
        let content = head.content.map_or("{}", RawValue::get);
        let unread =
            |e: serde_json::Error| invalid(format!("content of {kind} does not parse: {e}"));
        let room =
            || owned(&head.room_id).ok_or_else(|| invalid(format!("{kind} event has no room_id")));
        Ok(match kind {
            "m.typing" => EphemeralEvent::Typing {
                room_id: room()?,
                content: read_content(content).map_err(unread)?,
            },
            "m.receipt" => EphemeralEvent::Receipt {
                room_id: room()?,
                content: read_content(content).map_err(unread)?,
            },
            "m.presence" => {
                let Some(sender) = head.sender.as_deref() else {
                    return Err(invalid("m.presence event has no sender".into()));
                };
                let sender: OwnedUserId = sender
                    .try_into()
                    .map_err(|e| invalid(format!("sender of m.presence is not a user ID: {e}")))?;
                let content: PresenceEventContent = read_content(content).map_err(unread)?;
                EphemeralEvent::Presence(Box::new(PresenceEvent { content, sender }))
            }
            other => EphemeralEvent::Other {
                kind: other.to_owned(),
                room_id: owned(&head.room_id),
                sender: owned(&head.sender),
            },
        })
    }

    /// The event type, as in the event's `type` field.
    pub fn name(&self) -> &str {
        match self {
            EphemeralEvent::Typing { .. } => "m.typing",
            EphemeralEvent::Receipt { .. } => "m.receipt",
            EphemeralEvent::Presence(_) => "m.presence",
            EphemeralEvent::Other { kind, .. } => kind,
        }
    }

    /// The room the event is about, if any, else its sender: what orders it among others.
    pub fn place(&self) -> (Option<&str>, Option<&str>) {
        match self {
            EphemeralEvent::Typing { room_id, .. } | EphemeralEvent::Receipt { room_id, .. } => {
                (Some(room_id), None)
            }
            EphemeralEvent::Presence(p) => (None, Some(p.sender.as_str())),
            EphemeralEvent::Other {
                room_id, sender, ..
            } => (room_id.as_deref(), sender.as_deref()),
        }
    }
}

impl InvalidEphemeral {
    /// The room the event names, if any, else its sender.
    pub fn place(&self) -> (Option<&str>, Option<&str>) {
        (self.room_id.as_deref(), self.sender.as_deref())
    }
}

fn read_content<T: DeserializeOwned>(content: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(content)
}

impl fmt::Display for EphemeralEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.place() {
            (Some(room), _) => write!(f, "{} in {room}", self.name()),
            (None, Some(sender)) => write!(f, "{} from {sender}", self.name()),
            (None, None) => f.write_str(self.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::events::receipt::ReceiptType;
    use ruma::presence::PresenceState;

    fn read(json: &str) -> Result<EphemeralEvent, InvalidEphemeral> {
        EphemeralEvent::read(&RawValue::from_string(json.to_owned()).unwrap())
    }

    #[test]
    fn typing_carries_its_room_and_users() {
        let ev = read(
            r#"{"type":"m.typing","room_id":"!r:hs","content":{"user_ids":["@a:hs","@b:hs"]}}"#,
        )
        .unwrap();
        let EphemeralEvent::Typing { room_id, content } = &ev else {
            panic!("not typing: {ev:?}");
        };
        assert_eq!(room_id, "!r:hs");
        let users: Vec<_> = content.user_ids.iter().map(|u| u.as_str()).collect();
        assert_eq!(users, ["@a:hs", "@b:hs"]);
        assert_eq!(ev.place(), (Some("!r:hs"), None));
        // Nobody typing any more: an empty list, which is what ends everyone's typing.
        let ev =
            read(r#"{"type":"m.typing","room_id":"!r:hs","content":{"user_ids":[]}}"#).unwrap();
        assert!(
            matches!(ev, EphemeralEvent::Typing { content, .. } if content.user_ids.is_empty())
        );
    }

    #[test]
    fn receipts_carry_readers_by_event_and_type() {
        let ev = read(
            r#"{"type":"m.receipt","room_id":"!r:hs","content":{
                "$e1":{"m.read":{"@a:hs":{"ts":1}},"m.read.private":{"@b:hs":{}}},
                "$e2":{"m.read":{"@c:hs":{"ts":2,"thread_id":"main"}}}}}"#,
        )
        .unwrap();
        let EphemeralEvent::Receipt { room_id, content } = &ev else {
            panic!("not a receipt: {ev:?}");
        };
        assert_eq!(room_id, "!r:hs");
        let read: Vec<(&str, &str)> = content
            .0
            .iter()
            .flat_map(|(event, receipts)| {
                receipts
                    .get(&ReceiptType::Read)
                    .into_iter()
                    .flat_map(|users| users.keys())
                    .map(move |u| (event.as_str(), u.as_str()))
            })
            .collect();
        assert_eq!(read, [("$e1", "@a:hs"), ("$e2", "@c:hs")]);
    }

    #[test]
    fn presence_carries_its_sender_state_and_status() {
        let ev = read(
            r#"{"type":"m.presence","sender":"@a:hs","content":{"presence":"unavailable","status_msg":"away","last_active_ago":5}}"#,
        )
        .unwrap();
        let EphemeralEvent::Presence(p) = &ev else {
            panic!("not presence: {ev:?}");
        };
        assert_eq!(p.sender, "@a:hs");
        assert_eq!(p.content.presence, PresenceState::Unavailable);
        assert_eq!(p.content.status_msg.as_deref(), Some("away"));
        assert_eq!(ev.place(), (None, Some("@a:hs")));
        // A state this version does not know is read, not refused.
        let ev = read(r#"{"type":"m.presence","sender":"@a:hs","content":{"presence":"busy"}}"#)
            .unwrap();
        assert!(matches!(ev, EphemeralEvent::Presence(_)));
    }

    #[test]
    fn other_kinds_are_accepted_whatever_their_content() {
        for (json, kind, place) in [
            (
                r#"{"type":"m.fully_read","room_id":"!r:hs","content":7}"#,
                "m.fully_read",
                (Some("!r:hs"), None),
            ),
            (
                r#"{"type":"org.example","sender":"@a:hs"}"#,
                "org.example",
                (None, Some("@a:hs")),
            ),
            (r#"{"type":"x","content":null}"#, "x", (None, None)),
        ] {
            let ev = read(json).unwrap();
            assert!(
                matches!(&ev, EphemeralEvent::Other { kind: k, .. } if k == kind),
                "{json}"
            );
            assert_eq!(ev.name(), kind);
            assert_eq!(ev.place(), place, "{json}");
        }
    }

    #[test]
    fn unreadable_events_are_invalid_with_what_is_known() {
        for (json, kind, room) in [
            // Typing: no room, users not a list, a user that is no user ID.
            (
                r#"{"type":"m.typing","content":{"user_ids":[]}}"#,
                Some("m.typing"),
                None,
            ),
            (
                r#"{"type":"m.typing","room_id":"!r:hs","content":{"user_ids":"@a:hs"}}"#,
                Some("m.typing"),
                Some("!r:hs"),
            ),
            (
                r#"{"type":"m.typing","room_id":"!r:hs","content":{"user_ids":["a"]}}"#,
                Some("m.typing"),
                Some("!r:hs"),
            ),
            (
                r#"{"type":"m.typing","room_id":"!r:hs","content":{}}"#,
                Some("m.typing"),
                Some("!r:hs"),
            ),
            // Receipts: no room, not a map, a key that is no event ID.
            (
                r#"{"type":"m.receipt","content":{}}"#,
                Some("m.receipt"),
                None,
            ),
            (
                r#"{"type":"m.receipt","room_id":"!r:hs","content":[1]}"#,
                Some("m.receipt"),
                Some("!r:hs"),
            ),
            (
                r#"{"type":"m.receipt","room_id":"!r:hs","content":{"$e":{"m.read":{"not-a-user":{}}}}}"#,
                Some("m.receipt"),
                Some("!r:hs"),
            ),
            // Presence: no sender, a sender that is no user ID, no state.
            (
                r#"{"type":"m.presence","content":{"presence":"online"}}"#,
                Some("m.presence"),
                None,
            ),
            (
                r#"{"type":"m.presence","sender":"alice","content":{"presence":"online"}}"#,
                Some("m.presence"),
                None,
            ),
            (
                r#"{"type":"m.presence","sender":"@a:hs","content":{}}"#,
                Some("m.presence"),
                None,
            ),
            // Not an event.
            (r#"{"room_id":"!r:hs"}"#, None, Some("!r:hs")),
        ] {
            let e = read(json).expect_err(json);
            assert_eq!(e.kind.as_deref(), kind, "{json}");
            assert_eq!(e.room_id.as_deref(), room, "{json}");
            assert!(!e.what.is_empty());
        }
        for json in ["[]", "42", r#"{"type":7}"#] {
            assert!(read(json).is_err(), "{json}");
        }
    }

    proptest::proptest! {
        /// Whatever the content, reading never panics, a kind the core acts on reads as that
        /// kind or not at all, and what is known of an unreadable event is kept for its queue.
        #[test]
        fn any_content_reads_as_its_kind_or_is_invalid(
            kind in proptest::sample::select(vec!["m.typing", "m.receipt", "m.presence", "org.example"]),
            room in proptest::option::of(proptest::sample::select(vec!["!r:hs", ""])),
            sender in proptest::option::of(proptest::sample::select(vec!["@a:hs", "a", ""])),
            content in proptest::prop_oneof![
                proptest::strategy::Just(r#"{"user_ids":["@a:hs"]}"#.to_owned()),
                proptest::strategy::Just(r#"{"$e":{"m.read":{"@a:hs":{"ts":1}}}}"#.to_owned()),
                proptest::strategy::Just(r#"{"presence":"online"}"#.to_owned()),
                proptest::strategy::Just("{}".to_owned()),
                proptest::strategy::Just("null".to_owned()),
                "[a-z@$!:\\[\\]{}\",]{0,24}",
            ],
        ) {
            let mut fields = vec![format!(r#""type":"{kind}""#)];
            if let Some(room) = room {
                fields.push(format!(r#""room_id":"{room}""#));
            }
            if let Some(sender) = sender {
                fields.push(format!(r#""sender":"{sender}""#));
            }
            let json = format!("{{{},\"content\":{content}}}", fields.join(","));
            let Ok(raw) = RawValue::from_string(json) else {
                // The generated content is not JSON: not an event at all.
                return Ok(());
            };
            match EphemeralEvent::read(&raw) {
                Ok(ev) => {
                    proptest::prop_assert_eq!(ev.name(), kind);
                    if kind != "m.presence" {
                        proptest::prop_assert_eq!(ev.place().0, room);
                    }
                }
                Err(e) => {
                    proptest::prop_assert_ne!(kind, "org.example");
                    proptest::prop_assert_eq!(e.kind.as_deref(), Some(kind));
                    proptest::prop_assert_eq!(e.room_id.as_deref(), room);
                    proptest::prop_assert_eq!(e.sender.as_deref(), sender);
                }
            }
        }
    }
}
