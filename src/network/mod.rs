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
mod client;
pub mod config;
mod connector;
pub mod contacts;
mod error;
mod events;
mod ids;
mod info;
pub mod kit;
mod login;
mod sink;

pub use self::client::{
    Contact, MatrixSender, NetworkClient, OutgoingMessage, PartsSent, PastMessage, PortalRef,
    RoomHistory,
};
pub use self::connector::Connector;
pub use self::error::{NetworkError, SinkError};
pub use self::events::*;
pub use self::ids::{LoginId, NetworkId, RemoteChatId, RemoteMessageId, RemoteUserId};
pub use self::info::{BridgeState, Capabilities, NetworkInfo, ThirdPartyField};
pub use self::login::{LoginData, LoginField, LoginFlow, LoginProcess, LoginStep, login_value};
pub use self::sink::{
    ConnectorStore, EventSink, MatrixProfile, MatrixUserStatus, RemoteEventHandler,
};

/// Milliseconds since the Unix epoch (shared by the core and the connectors).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
