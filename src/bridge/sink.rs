//! The sink connectors report to: remote events stored durably (one flush per batch a
//! connector reads), then scheduled on their portal's queue; login states passed on.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use tracing::info;

use super::Bridge;
use crate::network::{BridgeState, NetworkId, RemoteEvent, RemoteEventHandler, SinkError};
use crate::store::InboxItem;

/// The core side of [`crate::network::EventSink`]: stores remote events durably, then
/// schedules them on their portal's queue.
pub struct CoreSink {
    bridge: Weak<Bridge>,
}

impl CoreSink {
    /// A sink feeding `bridge`.
    pub fn new(bridge: &Arc<Bridge>) -> Arc<Self> {
        Arc::new(Self {
            bridge: Arc::downgrade(bridge),
        })
    }
}

/// The pushes of the batch a connector is running ([`RemoteEventHandler::push_batch`]).
#[derive(Default)]
struct Batch {
    /// Stored, waiting for the batch's flush before they are scheduled.
    stored: Vec<(u64, InboxItem)>,
    /// Why a push of the batch could not be stored: then none of the batch is kept.
    failed: Option<crate::error::Reason>,
}

tokio::task_local! {
    static BATCH: std::cell::RefCell<Batch>;
}

#[async_trait]
impl RemoteEventHandler for CoreSink {
    async fn push(&self, network: &NetworkId, event: RemoteEvent) -> Result<(), SinkError> {
        let bridge = self
            .bridge
            .upgrade()
            .ok_or_else(|| SinkError("the bridge is stopping".into()))?;
        let item = InboxItem::Remote {
            network: network.clone(),
            event: Box::new(event),
        };
        if BATCH.try_with(|_| ()).is_ok() {
            // Within a batch: stored now, made durable and scheduled when the batch ends.
            let stored = bridge
                .store
                .enqueue_unflushed(&item)
                .map_err(|e| SinkError(crate::error::Reason::from_error(e)));
            BATCH.with(|b| {
                let mut b = b.borrow_mut();
                match &stored {
                    Ok(seq) => b.stored.push((*seq, item)),
                    Err(e) => {
                        b.failed.get_or_insert_with(|| e.0.clone());
                    }
                }
            });
            return stored.map(|_| ());
        }
        let seq = bridge
            .store
            .enqueue(&item)
            .await
            .map_err(|e| SinkError(crate::error::Reason::from_error(e)))?;
        bridge.dispatch(seq, item);
        Ok(())
    }

    async fn push_batch(&self, work: futures::future::BoxFuture<'_, ()>) -> Result<(), SinkError> {
        let Batch {
            stored: pending,
            failed,
        } = BATCH
            .scope(std::cell::RefCell::new(Batch::default()), async {
                work.await;
                BATCH.with(|b| std::mem::take(&mut *b.borrow_mut()))
            })
            .await;
        if pending.is_empty() && failed.is_none() {
            return Ok(());
        }
        let bridge = self
            .bridge
            .upgrade()
            .ok_or_else(|| SinkError("the bridge is stopping".into()))?;
        // A push that could not be stored fails the whole batch: the connector acknowledges
        // a batch as a whole.
        let flushed = match failed {
            Some(why) => Err(SinkError(why)),
            None => bridge
                .store
                .flush()
                .await
                .map_err(|e| SinkError(crate::error::Reason::from_error(e))),
        };
        match flushed {
            Ok(()) => {
                for (seq, item) in pending {
                    bridge.dispatch(seq, item);
                }
                Ok(())
            }
            Err(e) => {
                // Not durable: nothing of the batch is kept, so that the senders, told to
                // try again, are not bridged twice after a restart.
                for (seq, _) in &pending {
                    let _ = bridge.store.inbox_remove(*seq);
                }
                Err(e)
            }
        }
    }

    async fn matrix_profile(&self, user_id: &str) -> Option<crate::network::MatrixProfile> {
        let bridge = self.bridge.upgrade()?;
        bridge.matrix_profile(user_id).await
    }

    async fn matrix_user_status(&self, user_id: &str) -> crate::network::MatrixUserStatus {
        match self.bridge.upgrade() {
            Some(bridge) => bridge.matrix_user_status(user_id).await,
            None => crate::network::MatrixUserStatus::Unknown,
        }
    }

    async fn group_members(
        &self,
        network: &NetworkId,
        chat: &crate::network::RemoteChatId,
    ) -> Vec<crate::network::MatrixSender> {
        let Some(bridge) = self.bridge.upgrade() else {
            return Vec::new();
        };
        match bridge.group_members(network, chat).await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %crate::error::chain(&e), chat = %chat, "could not list a group chat's Matrix members");
                Vec::new()
            }
        }
    }

    async fn group_history(
        &self,
        network: &NetworkId,
        chat: &crate::network::RemoteChatId,
        limit: u32,
    ) -> crate::network::RoomHistory {
        let Some(bridge) = self.bridge.upgrade() else {
            return Default::default();
        };
        match bridge.group_history(network, chat, limit).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %crate::error::chain(&e), chat = %chat, "could not read a group chat's history");
                Default::default()
            }
        }
    }

    async fn direct_chats(
        &self,
        network: &NetworkId,
        user_id: &str,
    ) -> Vec<crate::network::RemoteChatId> {
        let Some(bridge) = self.bridge.upgrade() else {
            return Vec::new();
        };
        match bridge.portals.direct_chats(network, user_id) {
            Ok(chats) => chats,
            Err(e) => {
                tracing::debug!(error = %crate::error::chain(&e), user = user_id, "could not list a user's direct chats");
                Vec::new()
            }
        }
    }

    async fn matrix_presence(&self, user_id: &str) -> Option<crate::network::Presence> {
        let bridge = self.bridge.upgrade()?;
        bridge.matrix_presence(user_id).await
    }

    async fn report_state(
        &self,
        network: &NetworkId,
        user_id: Option<&str>,
        state: BridgeState,
        message: Option<String>,
    ) {
        let Some(bridge) = self.bridge.upgrade() else {
            return;
        };
        let previous = bridge.set_state(network, user_id, state, message.clone());
        if previous == Some(state) {
            return;
        }
        info!(network = %network, user = user_id.unwrap_or("(bridge)"), state = state.as_str(), "state changed");
        let Some(user) = user_id else { return };
        match state {
            BridgeState::BadCredentials | BridgeState::LoggedOut | BridgeState::UnknownError => {
                bridge.logins.announce(network, user);
                bridge.state_notice(network, user, state, message).await;
            }
            BridgeState::TransientDisconnect => {
                // Debounced: only a disconnection that lasts is worth a notice.
                let delay =
                    std::time::Duration::from_secs(bridge.config.bridge.state_notice_delay_seconds);
                let network = network.clone();
                let user = user.to_owned();
                // Dropped at shutdown: the next start reports the state afresh.
                let tasks = bridge.tasks.clone();
                tasks.spawn_loop(async move {
                    tokio::time::sleep(delay).await;
                    let still = bridge.state_of(&network, Some(&user)).map(|(s, _)| s)
                        == Some(BridgeState::TransientDisconnect);
                    // A blip and a disconnection right after it each started a timer: the
                    // first to fire while the link is still down announces it, the other
                    // finds it announced (a recovery clears the mark).
                    let first = still && bridge.logins.announce(&network, &user);
                    if first {
                        bridge
                            .state_notice(
                                &network,
                                &user,
                                BridgeState::TransientDisconnect,
                                message,
                            )
                            .await;
                    }
                });
            }
            // "Back" only after a problem the user was told about.
            BridgeState::Connected if bridge.logins.recovered(network, user) => {
                bridge.state_notice(network, user, state, None).await;
            }
            _ => {}
        }
    }
}
