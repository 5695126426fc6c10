//! A Matrix timeline event, read once where it enters the bridge.
//!
//! The transaction handler reads each timeline event into a [`MatrixEvent`] as it commits
//! the transaction, and the event's queue gets that value in memory: nothing on the way
//! reads the JSON again. The inbox keeps the JSON as the homeserver sent it, because that is
//! what survives a crash; a replay reads it here again ([`MatrixEvent::read`]).
//!
//! The kinds the bridge acts on carry ruma's typed contents ([`EventKind`]); every other
//! kind is [`EventKind::Other`] and accepted as it is. An event whose content does not read
//! as its type says (a message without a body, a reaction without its relation) is an
//! [`InvalidEvent`]: that item's own permanent failure, never the transaction's.
//!
//! Ephemeral events (typing, receipts, presence) are read the same way, into
//! [`EphemeralEvent`] ([`ephemeral`]).

pub mod ephemeral;

use std::fmt;

use ruma::OwnedEventId;
use ruma::events::reaction::ReactionEventContent;
use ruma::events::room::encryption::RoomEncryptionEventContent;
use ruma::events::room::member::RoomMemberEventContent;
use ruma::events::room::message::RoomMessageEventContent;
use ruma::events::room::redaction::RoomRedactionEventContent;
use ruma::events::room::topic::RoomTopicEventContent;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

pub use ephemeral::{EphemeralEvent, EphemeralHead, InvalidEphemeral};

/// The top-level fields of a timeline event, its content still raw: what the transaction
/// handler needs to route and deduplicate an event before its content is read.
#[derive(Debug, Default, Deserialize)]
pub struct Head {
    /// `type`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// `sender`.
    #[serde(default)]
    pub sender: Option<String>,
    /// `room_id`.
    #[serde(default)]
    pub room_id: Option<String>,
    /// `event_id`.
    #[serde(default)]
    pub event_id: Option<String>,
    /// `state_key`, for state events.
    #[serde(default)]
    pub state_key: Option<String>,
    /// `redacts` at the top level, where room versions before 11 put it.
    #[serde(default)]
    pub redacts: Option<String>,
    /// `content`, unread.
    #[serde(default)]
    pub content: Option<Box<RawValue>>,
}

/// A timeline event as the core reads it.
#[derive(Clone, Debug)]
pub struct MatrixEvent {
    /// Who sent it.
    pub sender: String,
    /// Its room.
    pub room_id: String,
    /// Its ID.
    pub event_id: String,
    /// The state key, for state events.
    pub state_key: Option<String>,
    /// What it is, with its content.
    pub kind: EventKind,
}

/// The kinds of timeline event the core tells apart, each with its typed content.
#[derive(Clone, Debug)]
pub enum EventKind {
    /// `m.room.message`.
    Message(Box<RoomMessageEventContent>),
    /// `m.room.member`; the member is the event's state key.
    Member(Box<RoomMemberEventContent>),
    /// `m.reaction`.
    Reaction(Box<ReactionEventContent>),
    /// `m.room.redaction`. The redacted event is in the content from room version 11 on;
    /// for earlier rooms the top-level `redacts` is moved into the content when reading.
    Redaction(Box<RoomRedactionEventContent>),
    /// `m.room.encryption` with the empty state key: encryption turned on in the room.
    Encryption(Box<RoomEncryptionEventContent>),
    /// `m.room.encrypted`: a message the bridge cannot read; its content is not needed.
    Encrypted,
    /// `m.room.topic` with the empty state key: the room's topic changed.
    Topic(Box<RoomTopicEventContent>),
    /// Any other type, by name: accepted, and not bridged.
    Other(String),
}

impl EventKind {
    /// The event type, as in the event's `type` field.
    pub fn name(&self) -> &str {
        match self {
            EventKind::Message(_) => "m.room.message",
            EventKind::Member(_) => "m.room.member",
            EventKind::Reaction(_) => "m.reaction",
            EventKind::Redaction(_) => "m.room.redaction",
            EventKind::Encryption(_) => "m.room.encryption",
            EventKind::Encrypted => "m.room.encrypted",
            EventKind::Topic(_) => "m.room.topic",
            EventKind::Other(name) => name,
        }
    }
}

/// A timeline event that cannot be handled: what is known of it, and why.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{what}")]
pub struct InvalidEvent {
    /// The room it was sent in (an event without one never reaches the inbox).
    pub room_id: String,
    /// Its type, when it has one.
    pub kind: Option<String>,
    /// Its ID, when it has one.
    pub event_id: Option<String>,
    /// Why it cannot be read.
    pub what: String,
}

impl MatrixEvent {
    /// Reads a stored event of room `room_id` (the inbox keeps its JSON; a crash replay and
    /// the quarantine's release read it here).
    pub fn read(room_id: &str, raw: &RawValue) -> Result<MatrixEvent, InvalidEvent> {
        match serde_json::from_str::<Head>(raw.get()) {
            Ok(head) => MatrixEvent::from_head(head),
            Err(e) => Err(InvalidEvent {
                room_id: room_id.to_owned(),
                kind: None,
                event_id: None,
                what: format!("event does not parse: {e}"),
            }),
        }
    }

    /// Reads the content of an event whose top-level fields are read already.
    pub fn from_head(head: Head) -> Result<MatrixEvent, InvalidEvent> {
        let Head {
            kind,
            sender,
            room_id,
            event_id,
            state_key,
            redacts,
            content,
        } = head;
        let invalid = |what: String| InvalidEvent {
            room_id: room_id.clone().unwrap_or_default(),
            kind: kind.clone(),
            event_id: event_id.clone(),
            what,
        };
        let (Some(name), Some(sender), Some(room), Some(id)) =
            (&kind, &sender, &room_id, &event_id)
        else {
            return Err(invalid(
                "event lacks one of type, sender, room_id and event_id".into(),
            ));
        };
        let content = content.as_deref().map_or("{}", RawValue::get);
        let parsed = read_kind(name, state_key.as_deref(), redacts.as_deref(), content)
            .map_err(|e| invalid(format!("content of {name} does not parse: {e}")))?;
        Ok(MatrixEvent {
            sender: sender.clone(),
            room_id: room.clone(),
            event_id: id.clone(),
            state_key,
            kind: parsed,
        })
    }

    /// The content of a message event, if it is one.
    pub fn message(&self) -> Option<&RoomMessageEventContent> {
        match &self.kind {
            EventKind::Message(c) => Some(c),
            _ => None,
        }
    }
}

/// Reads `content` as the content of an event of type `name`.
fn read_kind(
    name: &str,
    state_key: Option<&str>,
    redacts: Option<&str>,
    content: &str,
) -> Result<EventKind, serde_json::Error> {
    fn typed<T: DeserializeOwned>(content: &str) -> Result<Box<T>, serde_json::Error> {
        serde_json::from_str(content).map(Box::new)
    }
    Ok(match name {
        "m.room.message" => EventKind::Message(typed(content)?),
        "m.room.member" => EventKind::Member(typed(content)?),
        "m.reaction" => EventKind::Reaction(typed(content)?),
        "m.room.redaction" => {
            let mut c: Box<RoomRedactionEventContent> = typed(content)?;
            if c.redacts.is_none()
                && let Some(id) = redacts
            {
                c.redacts = Some(serde_json::from_value::<OwnedEventId>(
                    serde_json::Value::String(id.to_owned()),
                )?);
            }
            EventKind::Redaction(c)
        }
        "m.room.encryption" if state_key == Some("") => EventKind::Encryption(typed(content)?),
        "m.room.encrypted" => EventKind::Encrypted,
        "m.room.topic" if state_key == Some("") => EventKind::Topic(typed(content)?),
        other => EventKind::Other(other.to_owned()),
    })
}

impl fmt::Display for MatrixEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} from {} in {}",
            self.kind.name(),
            self.event_id,
            self.sender,
            self.room_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::events::room::member::MembershipState;
    use ruma::events::room::message::{MessageType, Relation};

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn read(json: &str) -> Result<MatrixEvent, InvalidEvent> {
        MatrixEvent::read("!r:hs", &raw(json))
    }

    fn event(kind: &str, extra: &str, content: &str) -> String {
        format!(
            r#"{{"type":"{kind}","sender":"@a:hs","room_id":"!r:hs","event_id":"$e"{extra},"content":{content}}}"#
        )
    }

    #[test]
    fn known_kinds_carry_their_typed_content() {
        let ev = read(&event(
            "m.room.message",
            "",
            r#"{"msgtype":"m.text","body":"hi","m.relates_to":{"m.in_reply_to":{"event_id":"$o"}}}"#,
        ))
        .unwrap();
        let c = ev.message().expect("a message");
        assert!(matches!(&c.msgtype, MessageType::Text(t) if t.body == "hi"));
        assert!(
            matches!(&c.relates_to, Some(Relation::Reply(r)) if r.in_reply_to.event_id == "$o")
        );

        let ev = read(&event(
            "m.room.member",
            r#","state_key":"@b:hs""#,
            r#"{"membership":"invite","is_direct":true}"#,
        ))
        .unwrap();
        assert_eq!(ev.state_key.as_deref(), Some("@b:hs"));
        assert!(matches!(&ev.kind, EventKind::Member(m)
            if m.membership == MembershipState::Invite && m.is_direct == Some(true)));

        let ev = read(&event(
            "m.reaction",
            "",
            r#"{"m.relates_to":{"rel_type":"m.annotation","event_id":"$o","key":"👍"}}"#,
        ))
        .unwrap();
        assert!(matches!(&ev.kind, EventKind::Reaction(r)
            if r.relates_to.event_id == "$o" && r.relates_to.key == "👍"));

        let ev = read(&event(
            "m.room.encryption",
            r#","state_key":"""#,
            r#"{"algorithm":"m.megolm.v1.aes-sha2"}"#,
        ))
        .unwrap();
        assert!(matches!(ev.kind, EventKind::Encryption(_)));
        let ev = read(&event("m.room.encrypted", "", r#"{"anything":1}"#)).unwrap();
        assert!(matches!(ev.kind, EventKind::Encrypted));

        let ev = read(&event(
            "m.room.topic",
            r#","state_key":"""#,
            r#"{"topic":"what we do"}"#,
        ))
        .unwrap();
        assert!(matches!(&ev.kind, EventKind::Topic(t) if t.topic == "what we do"));
        // A topic with another state key is not the room's.
        let ev = read(&event(
            "m.room.topic",
            r#","state_key":"x""#,
            r#"{"topic":"not the room's"}"#,
        ))
        .unwrap();
        assert!(matches!(&ev.kind, EventKind::Other(k) if k == "m.room.topic"));
    }

    #[test]
    fn redactions_read_the_redacted_event_from_either_place() {
        for (extra, content) in [
            (r#","redacts":"$old""#, r#"{}"#),
            ("", r#"{"redacts":"$old","reason":"spam"}"#),
            (r#","redacts":"$other""#, r#"{"redacts":"$old"}"#),
        ] {
            let ev = read(&event("m.room.redaction", extra, content)).unwrap();
            let EventKind::Redaction(c) = &ev.kind else {
                panic!("{content}: not a redaction");
            };
            assert_eq!(c.redacts.as_deref().map(|e| e.as_str()), Some("$old"));
        }
        let ev = read(&event("m.room.redaction", "", "{}")).unwrap();
        assert!(matches!(&ev.kind, EventKind::Redaction(c) if c.redacts.is_none()));
    }

    #[test]
    fn other_kinds_are_accepted_whatever_their_content() {
        for (kind, extra, content) in [
            ("m.room.name", r#","state_key":"""#, r#"{"name":7}"#),
            ("org.example.custom", "", r#""not an object""#),
            ("m.room.power_levels", r#","state_key":"""#, "null"),
            // Encryption in a state key other than the empty one turns nothing on.
            ("m.room.encryption", r#","state_key":"x""#, "{}"),
        ] {
            let ev = read(&event(kind, extra, content)).unwrap();
            assert!(
                matches!(&ev.kind, EventKind::Other(k) if k == kind),
                "{kind}"
            );
            assert_eq!(ev.kind.name(), kind);
        }
        // No content at all.
        let ev =
            read(r#"{"type":"m.room.topic","sender":"@a:hs","room_id":"!r:hs","event_id":"$e"}"#)
                .unwrap();
        assert_eq!(ev.kind.name(), "m.room.topic");
    }

    #[test]
    fn unreadable_events_are_invalid_with_what_is_known() {
        for (json, kind) in [
            (
                event("m.room.message", "", r#"{"msgtype":"m.text"}"#),
                Some("m.room.message"),
            ),
            (
                event("m.room.message", "", r#"{"body":"no msgtype"}"#),
                Some("m.room.message"),
            ),
            (
                event("m.room.member", r#","state_key":"@b:hs""#, "{}"),
                Some("m.room.member"),
            ),
            (
                event("m.reaction", "", r#"{"key":"x"}"#),
                Some("m.reaction"),
            ),
            (
                event("m.room.redaction", r#","redacts":"no-sigil""#, "{}"),
                Some("m.room.redaction"),
            ),
            (
                event("m.room.encryption", r#","state_key":"""#, "{}"),
                Some("m.room.encryption"),
            ),
            (
                event(
                    "m.room.message",
                    "",
                    r#"{"msgtype":"m.text","body":"* x","m.relates_to":{"rel_type":"m.replace","event_id":"$o"}}"#,
                ),
                Some("m.room.message"),
            ),
            (
                r#"{"type":"m.room.message","sender":"@a:hs","room_id":"!r:hs"}"#.into(),
                Some("m.room.message"),
            ),
            (
                r#"{"sender":"@a:hs","room_id":"!r:hs","event_id":"$e"}"#.into(),
                None,
            ),
            ("[1,2]".into(), None),
        ] {
            let e = read(&json).expect_err(&json);
            assert_eq!(e.room_id, "!r:hs", "{json}");
            assert_eq!(e.kind.as_deref(), kind, "{json}");
            assert!(!e.what.is_empty());
        }
    }
}
