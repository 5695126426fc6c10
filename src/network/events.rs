//! Events that cross the connector boundary, in both directions.

use serde::{Deserialize, Serialize};

use super::{RemoteChatId, RemoteMessageId, RemoteUserId};

/// Direct (two parties) or group chat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// One remote contact and one Matrix user.
    Direct,
    /// A group chat.
    Group,
    /// A Matrix room whose members on a network without group chats (SIP) get each room
    /// message one by one, and whose messages from them come back into the room.
    Fanout,
}

/// How a message is meant, as Matrix distinguishes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Ordinary text.
    #[default]
    Text,
    /// `/me` action.
    Emote,
    /// Automated notice.
    Notice,
}

/// The content of a message, network-neutral.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageContent {
    /// Text or emote or notice.
    #[serde(default)]
    pub kind: MessageKind,
    /// Plain-text body; always present.
    pub body: String,
    /// Sanitised HTML, when the message is formatted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Matrix users this message mentions for real (never guessed from the text by the core).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    /// A file the message carries; `body` is then its caption (or its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

/// A file in a message, by link. From a network, the core downloads it (under the media
/// rules) and stores it on Matrix; to a network, the link is one the bridge serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Where the file is (http or https).
    pub url: String,
    /// File name.
    pub name: String,
    /// Content type, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mimetype: Option<String>,
    /// Size in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl MessageContent {
    /// A plain text message.
    pub fn text(body: impl Into<String>) -> Self {
        Self {
            kind: MessageKind::Text,
            body: body.into(),
            html: None,
            mentions: Vec::new(),
            attachment: None,
        }
    }
}

/// Presence of a user, modelled on PIDF (RFC 3863) so that every network maps onto it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Basic status.
    pub state: PresenceState,
    /// Free text ("in a meeting").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl Presence {
    /// The longest status a presence carries, in characters: a status is a line ("in a
    /// meeting"), and networks' readers keep about this much (SIP PIDF readers, ours among
    /// them); a longer one would only make documents and stanzas larger than peers take.
    pub const MAX_STATUS_CHARS: usize = 256;

    /// A presence with `status` trimmed and cut to [`Presence::MAX_STATUS_CHARS`]; an empty
    /// status is none.
    pub fn new(state: PresenceState, status: Option<&str>) -> Self {
        let status = status
            .map(|s| {
                s.trim()
                    .chars()
                    .take(Self::MAX_STATUS_CHARS)
                    .collect::<String>()
            })
            .map(|s| s.trim_end().to_owned())
            .filter(|s| !s.is_empty());
        Self { state, status }
    }
}

/// Basic presence status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// Available.
    Online,
    /// Reachable but away or busy.
    Unavailable,
    /// Not reachable.
    Offline,
}

/// A change of membership in a remote group chat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipChange {
    /// Joined.
    Join,
    /// Left.
    Leave,
}

/// Something that happened on a remote network, to be bridged to Matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteEvent {
    /// The conversation it happened in.
    pub chat: RemoteChatId,
    /// Direct or group.
    pub chat_kind: ChatKind,
    /// For a direct chat: the Matrix user on this side (full user ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<String>,
    /// Who did it.
    pub sender: RemoteUserId,
    /// The sender's display name, when the network told it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_name: Option<String>,
    /// When it happened, milliseconds since the Unix epoch; `None` means now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<u64>,
    /// What happened.
    pub kind: RemoteEventKind,
    /// The Matrix user through whose own login the network told it; `None` when it came
    /// through the network's bridge-wide link. What a login told stops being known when that
    /// login goes down (a ghost's presence, for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl RemoteEvent {
    /// An event by remote user `contact` in the direct chat between `contact` and Matrix
    /// user `receiver` (the chat of a direct chat is the contact's ID).
    pub fn direct(contact: &str, receiver: &str, kind: RemoteEventKind) -> Self {
        Self {
            chat: RemoteChatId::new(contact),
            chat_kind: ChatKind::Direct,
            receiver: Some(receiver.to_owned()),
            sender: RemoteUserId::new(contact),
            sender_name: None,
            timestamp_ms: None,
            kind,
            via: None,
        }
    }

    /// An event by `sender` in group chat `chat`.
    pub fn group(chat: &str, sender: &str, kind: RemoteEventKind) -> Self {
        Self {
            chat: RemoteChatId::new(chat),
            chat_kind: ChatKind::Group,
            receiver: None,
            sender: RemoteUserId::new(sender),
            sender_name: None,
            timestamp_ms: None,
            kind,
            via: None,
        }
    }

    /// An event by remote user `sender` in fan-out chat `chat` (a Matrix room with members on
    /// a network without group chats).
    pub fn fanout(chat: &str, sender: &str, kind: RemoteEventKind) -> Self {
        Self {
            chat_kind: ChatKind::Fanout,
            ..Self::group(chat, sender, kind)
        }
    }

    /// With the sender's display name (`None` means unchanged).
    pub fn named(mut self, name: Option<String>) -> Self {
        self.sender_name = name;
        self
    }

    /// With the time it happened (`None` means now).
    pub fn at(mut self, timestamp_ms: Option<u64>) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// Told through the own login of Matrix user `user` (`None`: the bridge-wide link).
    pub fn via(mut self, user: Option<&str>) -> Self {
        self.via = user.map(str::to_owned);
        self
    }
}

/// What happened, with what it refers to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RemoteEventKind {
    /// A new message.
    Message {
        /// The network's ID of the message.
        id: RemoteMessageId,
        /// The content.
        content: MessageContent,
        /// The message it replies to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<RemoteMessageId>,
    },
    /// A new content for an earlier message.
    Edit {
        /// The original message.
        target: RemoteMessageId,
        /// The new content.
        content: MessageContent,
    },
    /// An earlier message was retracted.
    Redaction {
        /// The retracted message.
        target: RemoteMessageId,
    },
    /// A moderator of the group chat removed a message (anyone's); the sender is the chat.
    Moderation {
        /// The removed message.
        target: RemoteMessageId,
        /// Why, when the moderator said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A reaction was added or removed.
    Reaction {
        /// The message reacted to.
        target: RemoteMessageId,
        /// The emoji.
        key: String,
        /// Removed rather than added.
        remove: bool,
    },
    /// The sender started or stopped typing.
    Typing {
        /// Typing now.
        active: bool,
    },
    /// The sender read everything up to a message.
    Receipt {
        /// The last message read.
        up_to: RemoteMessageId,
    },
    /// The sender's presence changed.
    Presence(Presence),
    /// The chat's name or topic changed.
    ChatInfo {
        /// New name; `None` means unchanged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// New topic; `None` means unchanged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
    },
    /// Someone joined or left a group chat (the sender).
    Membership {
        /// Joined or left.
        change: MembershipChange,
    },
    /// The sender asks to see the receiver's presence (a contact request); the receiver answers
    /// with `accept` or `deny`.
    ContactRequest,
    /// The network also names message `target` by `alias` (a group chat's own ID for a
    /// message, say), so later references by either ID find it.
    MessageAlias {
        /// The ID the message is known by.
        target: RemoteMessageId,
        /// Its other ID.
        alias: RemoteMessageId,
    },
    /// The sender's profile changed or became known: `sender_name` is the name to show.
    Profile,
    /// The sender's picture changed or became known. `hash` names the picture as the
    /// network does (unchanged hash, nothing to do); `data` is the picture, `None` when the
    /// sender removed it.
    Avatar {
        /// The network's hash of the picture ("" when removed).
        hash: String,
        /// The picture's bytes.
        #[serde(
            default,
            with = "base64_bytes",
            skip_serializing_if = "Option::is_none"
        )]
        data: Option<Vec<u8>>,
    },
    /// The chat exists on the network (a direct chat with someone in the receiver's contact
    /// list, say): its portal is created when missing, with nothing posted in it.
    ChatExists,
    /// A message sent from Matrix could not be delivered (the network bounced it); the Matrix
    /// sender is told.
    DeliveryFailed {
        /// The message that bounced.
        target: RemoteMessageId,
        /// Why, in words for the user.
        reason: String,
    },
}

impl RemoteEventKind {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            RemoteEventKind::Message { .. } => "message",
            RemoteEventKind::Edit { .. } => "edit",
            RemoteEventKind::Redaction { .. } => "redaction",
            RemoteEventKind::Moderation { .. } => "moderation",
            RemoteEventKind::Reaction { .. } => "reaction",
            RemoteEventKind::Typing { .. } => "typing",
            RemoteEventKind::Receipt { .. } => "receipt",
            RemoteEventKind::Presence(_) => "presence",
            RemoteEventKind::ChatInfo { .. } => "chat_info",
            RemoteEventKind::Membership { .. } => "membership",
            RemoteEventKind::ContactRequest => "contact_request",
            RemoteEventKind::Profile => "profile",
            RemoteEventKind::ChatExists => "chat_exists",
            RemoteEventKind::Avatar { .. } => "avatar",
            RemoteEventKind::MessageAlias { .. } => "message_alias",
            RemoteEventKind::DeliveryFailed { .. } => "delivery_failed",
        }
    }
}

/// Bytes as base64 in the stored form of an event.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any status from Matrix becomes a line a network can carry: at most
        /// `MAX_STATUS_CHARS`, trimmed, none when empty, and a short one as it was.
        #[test]
        fn a_status_is_cut_to_one_short_line(status in ".{0,600}", pad in "[ \t\n]{0,3}") {
            let given = format!("{pad}{status}{pad}");
            let p = Presence::new(PresenceState::Online, Some(&given));
            prop_assert_eq!(p.state, PresenceState::Online);
            match &p.status {
                None => prop_assert!(given.trim().is_empty()),
                Some(s) => {
                    prop_assert!(s.chars().count() <= Presence::MAX_STATUS_CHARS);
                    prop_assert_eq!(s.trim(), s.as_str());
                    prop_assert!(given.trim().starts_with(s.as_str()));
                    if given.trim().chars().count() <= Presence::MAX_STATUS_CHARS {
                        prop_assert_eq!(s.as_str(), given.trim());
                    }
                }
            }
        }
    }

    #[test]
    fn a_long_status_is_cut_and_no_status_stays_none() {
        let long = "busy ".repeat(100_000);
        let p = Presence::new(PresenceState::Unavailable, Some(&long));
        assert_eq!(
            p.status.as_deref().map(|s| s.chars().count()),
            Some(Presence::MAX_STATUS_CHARS)
        );
        assert_eq!(Presence::new(PresenceState::Offline, None).status, None);
        assert_eq!(
            Presence::new(PresenceState::Offline, Some(" \n")).status,
            None
        );
    }
}
