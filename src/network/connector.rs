//! [`Connector`]: a remote network plugged into the bridge.

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    BridgeState, EventSink, LoginData, LoginFlow, LoginProcess, NetworkClient, NetworkError,
    NetworkInfo, RemoteChatId, RemoteEvent, RemoteUserId,
};

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
    ///
    /// [`ChatKind::Fanout`]: super::ChatKind::Fanout
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
