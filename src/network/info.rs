//! What a network is: its static description ([`NetworkInfo`]), what it can carry
//! ([`Capabilities`]) and the states its links and logins report ([`BridgeState`]).

use serde::{Deserialize, Serialize};

use super::NetworkId;

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
