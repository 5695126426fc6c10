//! [`NetworkClient`]: an identity that acts on a network, and what its calls take: the
//! sender, the conversation, the outgoing message and how far a message in parts got.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{
    BridgeState, ChatKind, MessageContent, NetworkError, Presence, RemoteChatId, RemoteMessageId,
    RemoteUserId,
};

/// The Matrix user on whose behalf something is sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixSender {
    /// Full Matrix user ID.
    pub user_id: String,
    /// Display name (falls back to the localpart).
    pub displayname: String,
}

/// What a group chat's Matrix room holds for someone who joins it from the network: its
/// topic and its latest messages ([`crate::network::RemoteEventHandler::group_history`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomHistory {
    /// The room's topic, if it has one.
    pub topic: Option<String>,
    /// The latest messages, oldest first.
    pub messages: Vec<PastMessage>,
}

/// A message already in a Matrix room, for the history shown to someone joining.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PastMessage {
    /// Who wrote it: a Matrix user, or a ghost of a remote user.
    pub sender: MatrixSender,
    /// The Matrix event.
    pub event_id: String,
    /// The content (a file as its link).
    pub content: super::MessageContent,
    /// When it was sent, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// The conversation a call is about, as the connector named it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalRef {
    /// The remote conversation.
    pub chat: RemoteChatId,
    /// Direct or group.
    pub kind: ChatKind,
    /// For a direct chat: the Matrix user on this side of it.
    pub receiver: Option<String>,
    /// For a fan-out chat: the remote users to deliver to (the sender left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<RemoteUserId>,
}

/// A Matrix message to send to the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutgoingMessage {
    /// Who speaks on the network: the Matrix author, or for a relayed message the relay's
    /// owner (the author's name is then in `content`). Connectors send as this user only.
    pub sender: MatrixSender,
    /// The Matrix event ID, for connectors that keep their own correlation.
    pub event_id: String,
    /// The content.
    pub content: MessageContent,
    /// The remote message this one replies to, when it is bridged.
    pub reply_to: Option<RemoteMessageId>,
    /// Sent through someone else's identity (relay): `sender` is the relay's owner and
    /// `content` already carries the author's name.
    pub relayed: bool,
    /// For a retry: the parts an earlier try delivered (from its [`NetworkError::Partly`]),
    /// which a connector sending in parts does not send again. Empty on a first try.
    #[serde(default, skip_serializing_if = "PartsSent::is_empty")]
    pub sent: PartsSent,
}

/// How far a message sent in parts got: the parts the network took, from the first, of how
/// many, and the ID the first part got (which stands for the message).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartsSent {
    /// Parts delivered, from the first.
    pub parts: usize,
    /// Parts the message was split into; a split that comes out otherwise starts again.
    pub total: usize,
    /// The network's ID of the first part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<RemoteMessageId>,
}

impl PartsSent {
    /// Whether no part was delivered.
    pub fn is_empty(&self) -> bool {
        self.parts == 0
    }
}

/// An identity that can act on a remote network: a bridge-wide identity that can speak for any
/// Matrix user (a gateway), or one Matrix user's own login.
///
/// The `send_*` methods must not return before the network accepted the operation or refused
/// it; a [`NetworkError::Transient`] makes the core retry later.
#[async_trait]
pub trait NetworkClient: Send + Sync {
    /// Current state of this identity.
    fn state(&self) -> BridgeState;

    /// Whether this identity carries chats of `kind`. The core acts through the network's
    /// bridge-wide identity ([`Connector::bridge_client`]) in chats a user's login does not
    /// carry, so a login never hands an operation on to another identity.
    ///
    /// [`Connector::bridge_client`]: super::Connector::bridge_client
    fn serves(&self, _kind: ChatKind) -> bool {
        true
    }

    /// Sends a message and returns the ID the network gave it.
    async fn send_message(
        &self,
        portal: &PortalRef,
        message: &OutgoingMessage,
    ) -> Result<RemoteMessageId, NetworkError>;

    /// Replaces the content of an earlier message, aimed at the original's ID.
    async fn send_edit(
        &self,
        _portal: &PortalRef,
        _sender: &MatrixSender,
        _target: &RemoteMessageId,
        _content: &MessageContent,
    ) -> Result<(), NetworkError> {
        Err(NetworkError::Unsupported("edits"))
    }

    /// Retracts an earlier message.
    async fn send_redaction(
        &self,
        _portal: &PortalRef,
        _sender: &MatrixSender,
        _target: &RemoteMessageId,
    ) -> Result<(), NetworkError> {
        Err(NetworkError::Unsupported("deleting messages"))
    }

    /// Removes someone else's message from a group chat as a moderator (the Matrix sender
    /// redacted it with the power to do so in the room).
    async fn send_moderation(
        &self,
        _portal: &PortalRef,
        _moderator: &MatrixSender,
        _target: &RemoteMessageId,
        _reason: Option<&str>,
    ) -> Result<(), NetworkError> {
        Err(NetworkError::Unsupported("moderation"))
    }

    /// Adds (`remove == false`) or removes a reaction.
    async fn send_reaction(
        &self,
        _portal: &PortalRef,
        _sender: &MatrixSender,
        _target: &RemoteMessageId,
        _key: &str,
        _remove: bool,
    ) -> Result<(), NetworkError> {
        Err(NetworkError::Unsupported("reactions"))
    }

    /// Starts or stops a typing notification.
    async fn send_typing(
        &self,
        _portal: &PortalRef,
        _sender: &MatrixSender,
        _typing: bool,
    ) -> Result<(), NetworkError> {
        Err(NetworkError::Unsupported("typing notifications"))
    }

    /// Marks everything up to `up_to` as read.
    async fn send_receipt(
        &self,
        _portal: &PortalRef,
        _sender: &MatrixSender,
        _up_to: &RemoteMessageId,
    ) -> Result<(), NetworkError> {
        Err(NetworkError::Unsupported("read receipts"))
    }

    /// Publishes a Matrix user's presence.
    async fn set_presence(
        &self,
        _sender: &MatrixSender,
        _presence: &Presence,
    ) -> Result<(), NetworkError> {
        Err(NetworkError::Unsupported("presence"))
    }

    /// A Matrix user joined a group portal: join the remote group chat for them, where the
    /// network needs each participant to join. The default does nothing.
    async fn join_chat(
        &self,
        _portal: &PortalRef,
        _user: &MatrixSender,
    ) -> Result<(), NetworkError> {
        Ok(())
    }

    /// The topic of a group portal's room changed on Matrix (`user` changed it; empty: no
    /// topic). The default does nothing; a network shows it where it can.
    async fn set_topic(
        &self,
        _portal: &PortalRef,
        _user: &MatrixSender,
        _topic: &str,
    ) -> Result<(), NetworkError> {
        Ok(())
    }

    /// A Matrix user left a group portal. The default does nothing.
    async fn leave_chat(
        &self,
        _portal: &PortalRef,
        _user: &MatrixSender,
    ) -> Result<(), NetworkError> {
        Ok(())
    }

    /// Answers a contact's request to see `user`'s presence (see
    /// [`RemoteEventKind::ContactRequest`]).
    ///
    /// [`RemoteEventKind::ContactRequest`]: super::RemoteEventKind::ContactRequest
    async fn answer_contact_request(
        &self,
        _user: &MatrixSender,
        _contact: &RemoteUserId,
        _accept: bool,
    ) -> Result<(), NetworkError> {
        Err(NetworkError::Unsupported("contact requests"))
    }

    /// The contacts of `user` on this network, with whether each may see the user's presence.
    async fn contacts(&self, _user: &MatrixSender) -> Result<Vec<Contact>, NetworkError> {
        Err(NetworkError::Unsupported("contact lists"))
    }

    /// Ends this session on the network. Called on `logout`.
    async fn logout(&self) -> Result<(), NetworkError> {
        Ok(())
    }
}

/// A contact of a Matrix user on a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The contact.
    pub id: RemoteUserId,
    /// The contact may see the user's presence.
    pub sees_presence: bool,
    /// The user asked to see the contact's presence.
    pub watched: bool,
    /// A request from the contact waits for `accept` or `deny`.
    pub pending: bool,
}
