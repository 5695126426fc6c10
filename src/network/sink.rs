//! The way back into the core: [`EventSink`], a connector's handle bound to its network, the
//! [`RemoteEventHandler`] the core implements behind it, and [`ConnectorStore`], a
//! connector's small persistent storage.

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    BridgeState, MatrixSender, NetworkId, Presence, RemoteChatId, RemoteEvent, RoomHistory,
    SinkError,
};

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
    /// `Ok`. A push within `work` that fails fails the whole batch. On `Err` nothing of the
    /// batch is kept, and the connector tells the senders to try again (or, where the remote
    /// side resends what is not acknowledged, does not acknowledge it). The default stores
    /// each push on its own.
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

    /// The topic and the latest `limit` messages (text, notices, emotes and files; not
    /// edits, reactions or redacted events) of the room that group chat `chat` of `network`
    /// stands for, for someone who joins the chat from the network. Empty when there is no
    /// such room or the homeserver does not answer.
    async fn group_history(
        &self,
        _network: &NetworkId,
        _chat: &RemoteChatId,
        _limit: u32,
    ) -> RoomHistory {
        RoomHistory::default()
    }

    /// The direct chats Matrix user `user_id` has on `network` (the remote chat of each of
    /// their direct portals there): for a login that, once connected, follows the user's
    /// contacts (their presence, say). Empty when the store cannot tell.
    async fn direct_chats(&self, _network: &NetworkId, _user_id: &str) -> Vec<RemoteChatId> {
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

    /// A group chat's room topic and latest messages; see
    /// [`RemoteEventHandler::group_history`].
    pub async fn group_history(&self, chat: &RemoteChatId, limit: u32) -> RoomHistory {
        self.handler.group_history(&self.network, chat, limit).await
    }

    /// A Matrix user's direct chats; see [`RemoteEventHandler::direct_chats`].
    pub async fn direct_chats(&self, user_id: &str) -> Vec<RemoteChatId> {
        self.handler.direct_chats(&self.network, user_id).await
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
