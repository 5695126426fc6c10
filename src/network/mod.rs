//! The connector boundary: what a remote network implements to plug into the core.
//!
//! The shape follows the bridgev2 model: a [`Connector`] per network, a [`NetworkClient`] per
//! identity that can act on the network (a bridge-wide identity such as a gateway component or
//! trunk, or one login of one Matrix user), login flows as steps ([`LoginProcess`]), and
//! [`RemoteEvent`]s flowing into the core through an [`EventSink`].
//!
//! Contracts that hold for every connector:
//! - A connector never calls the homeserver and never touches the store. It reports what happens
//!   on its network through the [`EventSink`] and answers the calls the core makes.
//! - IDs ([`RemoteUserId`], [`RemoteChatId`], [`RemoteMessageId`]) are opaque to the core: only
//!   the connector that issued one parses it.
//! - Methods that send to the network may take as long as the network takes; the core calls them
//!   from the portal's own task, one at a time per portal, so they must not block the thread.

pub mod config;
pub mod contacts;
mod events;
mod ids;
pub mod kit;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Reason, Retry};

pub use self::events::*;
pub use self::ids::{LoginId, NetworkId, RemoteChatId, RemoteMessageId, RemoteUserId};

/// Milliseconds since the Unix epoch (shared by the core and the connectors).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a call into a connector failed. The variant carries the policy ([`NetworkError::retry`]):
/// whether it is worth a retry and whether the Matrix user is told. Each [`Reason`] holds the
/// words a user or a log sees and, where there is one, the error that caused it.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The network or this connector cannot do this at all; the user is told once, no retry.
    #[error("not supported by this network: {0}")]
    Unsupported(&'static str),
    /// There is no identity that could act for this user on this network.
    #[error("not logged in to this network")]
    NotLoggedIn,
    /// The network refused the credentials; the login needs `relogin`.
    #[error("bad credentials: {0}")]
    BadCredentials(#[source] Reason),
    /// What the user typed is not valid here (the message says what is expected).
    #[error("{0}")]
    InvalidInput(#[source] Reason),
    /// The network answered that the message cannot be delivered; certain, no retry.
    #[error("undeliverable: {0}")]
    Undeliverable(#[source] Reason),
    /// A passing failure of this operation (timeout, an error the network says is
    /// temporary); the core retries with backoff and, past a bound, sets the item aside.
    #[error("temporary failure: {0}")]
    Transient(#[source] Reason),
    /// The link or connection the operation needs is down; the core waits for it, holding
    /// the portal, without counting it against the item.
    #[error("link down: {0}")]
    Down(#[source] Reason),
    /// Anything else; logged, and the user sees a generic failure notice.
    #[error("internal error: {0}")]
    Internal(#[source] Reason),
    /// A message sent in parts stopped at a part: `sent` says which parts went out before
    /// it. The policy is the failed part's (`error`); the core keeps `sent` for the message,
    /// so that a retry sends only the parts after them ([`OutgoingMessage::sent`]).
    #[error("part {} of {}: {error}", .sent.parts + 1, .sent.total)]
    Partly {
        /// The parts delivered before the one that failed.
        sent: PartsSent,
        /// Why the part failed.
        #[source]
        error: Box<NetworkError>,
    },
}

impl NetworkError {
    /// What the failure model does with this error: `Transient` is a passing failure of
    /// the operation, `Down` an outage of the link, everything else permanent.
    pub fn retry(&self) -> Retry {
        match self {
            NetworkError::Transient(_) => Retry::Transient,
            NetworkError::Down(_) => Retry::Outage,
            NetworkError::Partly { error, .. } => error.retry(),
            _ => Retry::Never,
        }
    }

    /// The error of the failed part for [`NetworkError::Partly`], else this one.
    pub fn failed_part(&self) -> &NetworkError {
        match self {
            NetworkError::Partly { error, .. } => error.failed_part(),
            e => e,
        }
    }

    /// Whether the core should retry the same operation later.
    pub fn is_transient(&self) -> bool {
        self.retry().is_retried()
    }
}

/// What a network can carry. The core does not ask a network for what it cannot carry
/// (typing, receipts, presence), and every portal's bridge info lists these flags
/// (`net.isthmus.capabilities`) so that a client can say so before the user tries; a message
/// operation a network refuses all the same (`NetworkError::Unsupported`) is answered with a
/// notice in the room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Formatted (HTML) bodies.
    pub formatting: bool,
    /// Edits of earlier messages.
    pub edits: bool,
    /// Deleting (retracting) earlier messages.
    pub redactions: bool,
    /// Emoji reactions.
    pub reactions: bool,
    /// Replies that point at an earlier message.
    pub replies: bool,
    /// Typing notifications.
    pub typing: bool,
    /// Read receipts.
    pub receipts: bool,
    /// Presence of users.
    pub presence: bool,
    /// Group chats (more than two parties).
    pub group_chats: bool,
}

impl Capabilities {
    /// Every capability on.
    pub const ALL: Capabilities = Capabilities {
        formatting: true,
        edits: true,
        redactions: true,
        reactions: true,
        replies: true,
        typing: true,
        receipts: true,
        presence: true,
        group_chats: true,
    };
}

/// One field of a third-party lookup (Matrix `thirdparty` API).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThirdPartyField {
    /// Field name, such as `jid`.
    pub name: String,
    /// Regular expression a valid value matches.
    pub regexp: String,
    /// Placeholder shown to users.
    pub placeholder: String,
}

/// Static description of a network, shown to users and used for the `thirdparty` endpoints.
#[derive(Clone, Debug)]
pub struct NetworkInfo {
    /// Short ID used in ghost IDs and commands.
    pub id: NetworkId,
    /// Human-readable name ("XMPP").
    pub display_name: String,
    /// Protocol ID advertised to Matrix clients in the `thirdparty` API.
    pub protocol: String,
    /// What the network carries.
    pub capabilities: Capabilities,
    /// Fields that identify a user of this network in third-party lookups.
    pub user_fields: Vec<ThirdPartyField>,
    /// Fields that identify a group chat of this network in third-party lookups.
    pub location_fields: Vec<ThirdPartyField>,
    /// Example of a user ID, shown in help texts (`bob@example.org`).
    pub user_id_example: String,
}

/// Bridge-level state of a login or of a bridge-wide link, as mautrix bridges report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BridgeState {
    /// Not connected yet.
    Starting,
    /// Connecting or logging in.
    Connecting,
    /// Working.
    Connected,
    /// Lost the connection; reconnecting by itself.
    TransientDisconnect,
    /// The network refused the credentials; needs `relogin`.
    BadCredentials,
    /// Logged out (by the user or the network).
    LoggedOut,
    /// Failed for another reason; see the logs.
    UnknownError,
}

impl BridgeState {
    /// The state name as it appears in `status`, metrics and state events.
    pub fn as_str(self) -> &'static str {
        match self {
            BridgeState::Starting => "STARTING",
            BridgeState::Connecting => "CONNECTING",
            BridgeState::Connected => "CONNECTED",
            BridgeState::TransientDisconnect => "TRANSIENT_DISCONNECT",
            BridgeState::BadCredentials => "BAD_CREDENTIALS",
            BridgeState::LoggedOut => "LOGGED_OUT",
            BridgeState::UnknownError => "UNKNOWN_ERROR",
        }
    }

    /// All states, for metrics that show every state.
    pub const ALL: [BridgeState; 7] = [
        BridgeState::Starting,
        BridgeState::Connecting,
        BridgeState::Connected,
        BridgeState::TransientDisconnect,
        BridgeState::BadCredentials,
        BridgeState::LoggedOut,
        BridgeState::UnknownError,
    ];
}

/// A login as the store keeps it. `data` is the connector's own, opaque to the core.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoginData {
    /// Unique per network and Matrix user.
    pub id: LoginId,
    /// The remote account this login acts as.
    pub remote_user: RemoteUserId,
    /// A name for the account, shown in `logins`.
    pub remote_name: String,
    /// Whatever the connector needs to restore the session (may hold credentials).
    #[serde(default)]
    pub data: serde_json::Value,
}

/// One input a login step asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginField {
    /// Key under which the value is submitted.
    pub id: String,
    /// Label shown to the user.
    pub name: String,
    /// Whether the value is secret (the command message holding it is redacted).
    pub secret: bool,
}

impl LoginField {
    /// A field asking for `id`, labelled `name`.
    pub fn new(id: &str, name: &str, secret: bool) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            secret,
        }
    }
}

/// The trimmed value submitted for `key`; `None` when missing, empty, or `-` (which login
/// steps offer as "the default").
pub fn login_value(input: &BTreeMap<String, String>, key: &str) -> Option<String> {
    input
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty() && *v != "-")
        .map(str::to_owned)
}

/// A login flow a connector offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginFlow {
    /// ID passed to [`Connector::start_login`].
    pub id: String,
    /// Name shown to the user.
    pub name: String,
    /// One line on what the flow does.
    pub description: String,
}

/// What a login process wants next.
pub enum LoginStep {
    /// Ask the user for these fields, with instructions.
    Input {
        /// Text shown before asking.
        instructions: String,
        /// The fields, asked one by one in the management room.
        fields: Vec<LoginField>,
    },
    /// Logged in: store `login` and use `client`.
    Complete {
        /// What to store.
        login: LoginData,
        /// The client, already connected or connecting.
        client: Arc<dyn NetworkClient>,
    },
}

/// A login in progress, driven step by step by the core.
#[async_trait]
pub trait LoginProcess: Send {
    /// The first step.
    fn first_step(&mut self) -> LoginStep;

    /// Submits the values for the fields of the last `Input` step.
    async fn submit(&mut self, input: BTreeMap<String, String>) -> Result<LoginStep, NetworkError>;
}

/// The Matrix user on whose behalf something is sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixSender {
    /// Full Matrix user ID.
    pub user_id: String,
    /// Display name (falls back to the localpart).
    pub displayname: String,
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

/// A remote network plugged into the bridge.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// Static description.
    fn info(&self) -> &NetworkInfo;

    /// Starts the connector's background work (connections, listeners). Must return once the
    /// work is spawned, in `sink.tasks()` (never a bare `tokio::spawn`); events go to `sink`.
    async fn start(&self, sink: EventSink) -> Result<(), NetworkError>;

    /// Stops the background work; idempotent. Called at shutdown before the bridge's tasks
    /// are cancelled, so goodbyes can still be said; the tasks must end soon after it.
    async fn stop(&self);

    /// The bridge-wide identity, if this network has one (a gateway component, a trunk).
    fn bridge_client(&self) -> Option<Arc<dyn NetworkClient>> {
        None
    }

    /// Login flows a Matrix user can use; empty when the network has no per-user logins.
    fn login_flows(&self) -> Vec<LoginFlow> {
        Vec::new()
    }

    /// Begins a login for Matrix user `user_id` with flow `flow_id`.
    async fn start_login(
        &self,
        _user_id: &str,
        _flow_id: &str,
    ) -> Result<Box<dyn LoginProcess>, NetworkError> {
        Err(NetworkError::Unsupported("logging in"))
    }

    /// Restores a stored login at start-up (or after `relogin`).
    async fn load_login(
        &self,
        _user_id: &str,
        _login: &LoginData,
    ) -> Result<Arc<dyn NetworkClient>, NetworkError> {
        Err(NetworkError::Unsupported("logging in"))
    }

    /// Parses what a user typed (or what a ghost user ID decodes to) into a user ID of this
    /// network, normalised; an error says what a valid ID looks like.
    fn parse_user_id(&self, raw: &str) -> Result<RemoteUserId, NetworkError>;

    /// Tells the remote sender of `event` that it did not reach Matrix, with `reason` as a
    /// user reads it (an error reply on the sender's own network). Called once per event that
    /// failed for good or was set aside; must not block for long. Events that are not
    /// messages may be ignored.
    async fn undelivered(&self, event: &RemoteEvent, reason: &str);

    /// Parses a group chat address; `Ok(None)` when the network has no group chats.
    fn parse_group_chat_id(&self, _raw: &str) -> Result<Option<RemoteChatId>, NetworkError> {
        Ok(None)
    }

    /// Whether a group chat exists on the network (asked before its portal is created, so a
    /// mistyped address gets a clear "not found"). The default trusts the address.
    async fn group_chat_exists(&self, _chat: &RemoteChatId) -> Result<bool, NetworkError> {
        Ok(true)
    }

    /// For networks without group chats of their own: the chat that stands for Matrix room
    /// `room_id` when users of this network are invited into it (see [`ChatKind::Fanout`]).
    /// `None` (the default) when the network's users cannot join Matrix rooms that way.
    fn fanout_chat(&self, _room_id: &str) -> Option<RemoteChatId> {
        None
    }

    /// When `chat` is a group chat this network hosts for a Matrix room (the room is on Matrix,
    /// the network's users join it), the room's alias. The core then bridges the chat into
    /// that room instead of creating one.
    fn hosted_room_alias(&self, _chat: &RemoteChatId) -> Option<String> {
        None
    }

    /// The group `user` belongs to for the per-domain limits of `bridge.limits`: usually the
    /// user's domain or server, as this network addresses it (the core never parses remote
    /// IDs). The default makes each user a group of its own.
    fn rate_key(&self, user: &RemoteUserId) -> String {
        user.as_str().to_owned()
    }

    /// A display name for a remote user the core has no name for yet.
    fn default_display_name(&self, user: &RemoteUserId) -> String {
        user.as_str().to_owned()
    }

    /// Lines for `status`: the state of bridge-wide links, with a short detail each.
    fn status(&self) -> Vec<(String, BridgeState)> {
        Vec::new()
    }
}

/// Where a connector delivers what happens on its network. Implemented by the core.
///
/// `push` returns once the event is stored durably, so a connector may acknowledge the remote
/// side afterwards and nothing is lost if the bridge stops.
#[async_trait]
pub trait RemoteEventHandler: Send + Sync {
    /// Stores and schedules one event.
    async fn push(&self, network: &NetworkId, event: RemoteEvent) -> Result<(), SinkError>;

    /// Runs `work`, in which the connector pushes events, as one batch (group commit): each
    /// event is stored as it is pushed, one flush at the end makes them all durable, and
    /// only then are they scheduled. Within `work`, a successful push means "stored, not yet
    /// durable"; the connector acknowledges what it read (receipts) only once this returns
    /// `Ok`. On `Err` nothing of the batch is kept, and the connector tells the senders to
    /// try again. The default stores each push on its own.
    async fn push_batch(&self, work: futures::future::BoxFuture<'_, ()>) -> Result<(), SinkError> {
        work.await;
        Ok(())
    }

    /// The profile of Matrix user `user_id` as networks may show it (to contacts who ask):
    /// `None` when the user may not use the bridge or the homeserver does not answer.
    async fn matrix_profile(&self, _user_id: &str) -> Option<MatrixProfile> {
        None
    }

    /// Whether Matrix user `user_id` can receive through the bridge, asked before a message
    /// or a subscription request to them is accepted. Answers are cached briefly by the core,
    /// so a flood does not reach the homeserver. Handlers that cannot tell answer
    /// [`MatrixUserStatus::Reachable`] (the default).
    async fn matrix_user_status(&self, _user_id: &str) -> MatrixUserStatus {
        MatrixUserStatus::Reachable
    }

    /// The current presence of Matrix user `user_id`, read from the homeserver: for a
    /// watcher just accepted, or after a restart, when no pushed presence is known yet.
    /// `None` when the user may not use the bridge or the homeserver does not say.
    async fn matrix_presence(&self, _user_id: &str) -> Option<Presence> {
        None
    }

    /// The Matrix members of the room that group chat `chat` of `network` stands for, as
    /// the network shows them (those the bridge speaks for there). For a chat the network
    /// hosts for a Matrix room that has no portal yet, the room is looked up by its alias;
    /// so a network can list the members to the first remote user who joins. Empty when
    /// there is no such room or the homeserver does not answer.
    async fn group_members(&self, _network: &NetworkId, _chat: &RemoteChatId) -> Vec<MatrixSender> {
        Vec::new()
    }

    /// Reports the state of a login (`Some`) or of the bridge-wide link (`None`).
    async fn report_state(
        &self,
        network: &NetworkId,
        user_id: Option<&str>,
        state: BridgeState,
        message: Option<String>,
    );
}

/// Whether a Matrix user can be reached through the bridge (see
/// [`RemoteEventHandler::matrix_user_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatrixUserStatus {
    /// The user exists and may use the bridge.
    Reachable,
    /// No such user, one of the bridge's own users (the bot, a ghost), or a user who may not
    /// use the bridge: the network answers "not found" and nothing is created.
    NotFound,
    /// The homeserver could not tell (down or slow): the network answers with a temporary
    /// error so the sender tries again later.
    Unknown,
}

/// A Matrix user's profile, for networks that show one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MatrixProfile {
    /// Display name.
    pub displayname: Option<String>,
    /// The avatar: content type and bytes (small pictures only).
    pub avatar: Option<(String, Vec<u8>)>,
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

/// Small persistent storage for a connector's own state (presence subscriptions and the
/// like), kept by the core in its store and namespaced per network. Keys and values are the
/// connector's; keep them small.
pub trait ConnectorStore: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &str) -> Result<Option<serde_json::Value>, SinkError>;
    /// Stores `value` under `key` (durable once it returns).
    fn put(&self, key: &str, value: &serde_json::Value) -> Result<(), SinkError>;
    /// Removes `key`.
    fn delete(&self, key: &str) -> Result<(), SinkError>;
    /// Every key starting with `prefix`, with its value, in key order.
    fn scan(&self, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, SinkError>;
}

/// The event sink failed to store an event (the store is broken or the bridge is stopping).
/// The reason carries the store's own error.
#[derive(Debug, thiserror::Error)]
#[error("could not store remote event: {0}")]
pub struct SinkError(#[source] pub Reason);

/// A connector's own storage failing is an internal error of the operation that needed it.
impl From<SinkError> for NetworkError {
    fn from(e: SinkError) -> Self {
        NetworkError::Internal(Reason::from_error(e))
    }
}

/// A connector's handle on the core, bound to its network: where events go, the
/// connector's own storage, and the bridge's background tasks.
#[derive(Clone)]
pub struct EventSink {
    network: NetworkId,
    handler: Arc<dyn RemoteEventHandler>,
    store: Arc<dyn ConnectorStore>,
    tasks: crate::tasks::Tasks,
}

impl EventSink {
    /// Binds `handler` and `store` to `network`; the connector starts its background work
    /// in `tasks`.
    pub fn new(
        network: NetworkId,
        handler: Arc<dyn RemoteEventHandler>,
        store: Arc<dyn ConnectorStore>,
        tasks: crate::tasks::Tasks,
    ) -> Self {
        Self {
            network,
            handler,
            store,
            tasks,
        }
    }

    /// Where the connector runs its background work: every task it starts goes here, so
    /// that a shutdown waits for it; a long-lived loop ends when [`Tasks::cancelled`]
    /// resolves (or is started with [`Tasks::spawn_loop`]).
    ///
    /// [`Tasks::cancelled`]: crate::tasks::Tasks::cancelled
    /// [`Tasks::spawn_loop`]: crate::tasks::Tasks::spawn_loop
    pub fn tasks(&self) -> &crate::tasks::Tasks {
        &self.tasks
    }

    /// The connector's own storage.
    pub fn store(&self) -> &dyn ConnectorStore {
        self.store.as_ref()
    }

    /// Stores and schedules one event; see [`RemoteEventHandler::push`].
    pub async fn push(&self, event: RemoteEvent) -> Result<(), SinkError> {
        self.handler.push(&self.network, event).await
    }

    /// Runs `work` as one batch of pushes; see [`RemoteEventHandler::push_batch`].
    pub async fn push_batch(
        &self,
        work: futures::future::BoxFuture<'_, ()>,
    ) -> Result<(), SinkError> {
        self.handler.push_batch(work).await
    }

    /// A Matrix user's profile; see [`RemoteEventHandler::matrix_profile`].
    pub async fn matrix_profile(&self, user_id: &str) -> Option<MatrixProfile> {
        self.handler.matrix_profile(user_id).await
    }

    /// Whether a Matrix user can receive; see [`RemoteEventHandler::matrix_user_status`].
    pub async fn matrix_user_status(&self, user_id: &str) -> MatrixUserStatus {
        self.handler.matrix_user_status(user_id).await
    }

    /// A Matrix user's current presence; see [`RemoteEventHandler::matrix_presence`].
    pub async fn matrix_presence(&self, user_id: &str) -> Option<Presence> {
        self.handler.matrix_presence(user_id).await
    }

    /// The Matrix members of a group chat's room; see [`RemoteEventHandler::group_members`].
    pub async fn group_members(&self, chat: &RemoteChatId) -> Vec<MatrixSender> {
        self.handler.group_members(&self.network, chat).await
    }

    /// Reports a state change.
    pub async fn report_state(
        &self,
        user_id: Option<&str>,
        state: BridgeState,
        message: Option<String>,
    ) {
        self.handler
            .report_state(&self.network, user_id, state, message)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variant_is_the_verdict() {
        assert_eq!(
            NetworkError::Transient("x".into()).retry(),
            Retry::Transient
        );
        assert_eq!(NetworkError::Down("x".into()).retry(), Retry::Outage);
        assert_eq!(
            NetworkError::Undeliverable("x".into()).retry(),
            Retry::Never
        );
        assert_eq!(NetworkError::Internal("x".into()).retry(), Retry::Never);
        assert!(NetworkError::Down("x".into()).is_transient());
        assert!(!NetworkError::NotLoggedIn.is_transient());
    }

    #[test]
    fn a_storage_failure_keeps_its_words_and_its_cause() {
        let io = std::io::Error::other("disk full");
        let sink = SinkError(Reason::because("write", io));
        let e = NetworkError::from(sink);
        assert_eq!(
            e.to_string(),
            "internal error: could not store remote event: write: disk full"
        );
        assert_eq!(e.retry(), Retry::Never);
        let mut causes = 0;
        let mut at: &dyn std::error::Error = &e;
        while let Some(next) = at.source() {
            causes += 1;
            at = next;
        }
        assert!(causes >= 3, "the chain reaches the I/O error");
        assert_eq!(at.to_string(), "disk full");
    }
}
