//! [`LoopbackClient`]: an identity on the loopback network. Every operation is recorded and
//! announced on the control socket, honouring pauses, slowness and injected failures.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::Shared;
use crate::network::{
    BridgeState, ChatKind, MatrixSender, MessageContent, NetworkClient, NetworkError,
    OutgoingMessage, PortalRef, Presence, RemoteMessageId,
};

/// An identity on the loopback network: the bridge-wide one (`login` None) or a user's login.
pub(super) struct LoopbackClient {
    pub(super) shared: Arc<Shared>,
    pub(super) login: Option<String>,
    /// Carries direct chats only.
    pub(super) direct_only: bool,
}

impl LoopbackClient {
    /// Records an operation, honouring pause and injected failures.
    async fn record(&self, mut op: Value) -> Result<RemoteMessageId, NetworkError> {
        let mut paused = self.shared.paused.subscribe();
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                break;
            }
        }
        // Injected failures are for messages: presence, typing and receipts that happen
        // meanwhile must not take them.
        if op["op"] == "message"
            && let Some(e) = self.shared.fail_next.lock().expect("fail lock").pop_front()
        {
            return Err(e);
        }
        let slow = *self.shared.slow.lock().expect("slow lock");
        if op["op"] == "message" && !slow.is_zero() {
            let _ = self.shared.feed.send(json!({"sending": op}).to_string());
            tokio::time::sleep(slow).await;
        }
        let n = self.shared.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = format!("lb-{nanos:x}-{n}");
        op["remote_id"] = json!(id);
        op["via"] = json!(self.login.as_deref().unwrap_or("bridge"));
        self.shared.log.lock().expect("log lock").push(op.clone());
        let _ = self.shared.feed.send(json!({"sent": op}).to_string());
        Ok(RemoteMessageId::new(id))
    }
}

#[async_trait]
impl NetworkClient for LoopbackClient {
    fn state(&self) -> BridgeState {
        BridgeState::Connected
    }

    fn serves(&self, kind: ChatKind) -> bool {
        !self.direct_only || kind == ChatKind::Direct
    }

    async fn send_message(
        &self,
        portal: &PortalRef,
        message: &OutgoingMessage,
    ) -> Result<RemoteMessageId, NetworkError> {
        self.record(json!({"op": "message", "portal": portal, "message": message}))
            .await
    }

    async fn send_edit(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        target: &RemoteMessageId,
        content: &MessageContent,
    ) -> Result<(), NetworkError> {
        self.record(json!({"op": "edit", "portal": portal, "sender": sender, "target": target, "content": content}))
            .await
            .map(drop)
    }

    async fn send_redaction(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        target: &RemoteMessageId,
    ) -> Result<(), NetworkError> {
        self.record(
            json!({"op": "redaction", "portal": portal, "sender": sender, "target": target}),
        )
        .await
        .map(drop)
    }

    async fn send_reaction(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        target: &RemoteMessageId,
        key: &str,
        remove: bool,
    ) -> Result<(), NetworkError> {
        self.record(json!({"op": "reaction", "portal": portal, "sender": sender, "target": target, "key": key, "remove": remove}))
            .await
            .map(drop)
    }

    async fn send_typing(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        typing: bool,
    ) -> Result<(), NetworkError> {
        self.record(json!({"op": "typing", "portal": portal, "sender": sender, "typing": typing}))
            .await
            .map(drop)
    }

    async fn send_receipt(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        up_to: &RemoteMessageId,
    ) -> Result<(), NetworkError> {
        self.record(json!({"op": "receipt", "portal": portal, "sender": sender, "up_to": up_to}))
            .await
            .map(drop)
    }

    async fn set_presence(
        &self,
        sender: &MatrixSender,
        presence: &Presence,
    ) -> Result<(), NetworkError> {
        self.record(json!({"op": "presence", "sender": sender, "presence": presence}))
            .await
            .map(drop)
    }

    async fn logout(&self) -> Result<(), NetworkError> {
        self.record(json!({"op": "logout"})).await.map(drop)
    }
}
