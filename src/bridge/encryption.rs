//! Encrypted rooms. The bridge cannot decrypt yet, so it never bridges a room with encryption
//! on and says so: `bridge` refuses such a room, a ghost invited into one explains and
//! leaves, and when encryption is turned on in a portal the portal is marked, the room and
//! the remote chat are told once, and each encrypted message that still arrives gets a
//! notice (at most one per room per [`NOTICE_INTERVAL`]).

use std::time::Duration;

use tracing::{info, warn};

use super::event::MatrixEvent;
use super::{Bridge, BridgeError, room_id, user_id};
use crate::network::{
    ChatKind, MatrixSender, MessageContent, MessageKind, NetworkClient, OutgoingMessage,
};
use crate::store::PortalRecord;

/// At most one "not bridged" notice per room in this time.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(300);

/// What a Matrix user reads when a room cannot be bridged because it is encrypted.
pub const REFUSAL: &str = "This room is encrypted, and the bridge cannot read encrypted messages yet, so it cannot bridge it. Use a room without encryption (in Element, turn encryption off when you create the room; it cannot be turned off later).";

impl Bridge {
    /// Whether encryption is on in `room`, read as `as_user` (the bot when `None`), who must
    /// be in the room.
    pub async fn room_is_encrypted(
        &self,
        as_user: Option<&str>,
        room: &str,
    ) -> Result<bool, BridgeError> {
        let as_user = as_user.map(user_id).transpose()?;
        Ok(self
            .rooms
            .is_encrypted(as_user.as_deref(), &room_id(room)?)
            .await?)
    }

    /// `m.room.encryption` was sent in a room, or an encrypted event arrived in a portal not
    /// marked yet: marks its portals and tells the room and each remote chat, once.
    pub(super) async fn encryption_turned_on(
        &self,
        seq: u64,
        ev: &MatrixEvent,
    ) -> Result<bool, BridgeError> {
        let mut newly = Vec::new();
        // The room's main portal is this queue's; its fan-out portals change on theirs.
        for portal in self.portals.of_room(&ev.room_id)? {
            if portal.encrypted {
                continue;
            }
            let marked = self
                .edit_portal(&portal.key, &ev.room_id, |p| {
                    let first = !p.encrypted;
                    p.encrypted = true;
                    first.then(|| p.clone())
                })
                .await?;
            if let Some(Some(p)) = marked {
                newly.push(p);
            }
        }
        let Some(first) = newly.first() else {
            return Ok(false);
        };
        info!(room_id = %ev.room_id, by = %ev.sender, "encryption turned on in a portal; it is no longer bridged");
        self.metrics
            .event("to_remote", "encryption", "portal_stopped");
        let text = format!(
            "🔒 Encryption was turned on in this room. The bridge cannot read encrypted messages yet, so messages no longer cross between this room and {}. To keep chatting across, use a room without encryption.",
            self.chat_label(first)
        );
        self.portal_notice(first, &format!("isthmus.{seq}.encryption"), &text)
            .await;
        for portal in &newly {
            self.remote_notice(
                portal,
                &ev.event_id,
                "The Matrix side of this chat turned on encryption, which the bridge cannot read yet: messages no longer cross between this chat and Matrix.",
            )
            .await;
        }
        Ok(true)
    }

    /// An `m.room.encrypted` event in a room: never sent to the network; the room is told
    /// (rate limited) that it was not bridged.
    pub(super) async fn encrypted_event(
        &self,
        seq: u64,
        ev: &MatrixEvent,
    ) -> Result<(), BridgeError> {
        let portals = self.portals.of_room(&ev.room_id)?;
        let Some(first) = portals.first() else {
            return Ok(());
        };
        self.metrics.event("to_remote", "encrypted", "not_bridged");
        if self.encryption_turned_on(seq, ev).await? {
            // The once-notice just said it all.
            return Ok(());
        }
        self.not_bridged_in_encrypted_room(seq, first, "An encrypted message")
            .await;
        Ok(())
    }

    /// Tells a room whose portal is encrypted that a message in it (`what`: "An encrypted
    /// message", "A message") did not reach the remote chat. At most one such notice per room
    /// every few minutes, so a busy room is not flooded; the metric counts every one.
    pub(super) async fn not_bridged_in_encrypted_room(
        &self,
        seq: u64,
        portal: &PortalRecord,
        what: &str,
    ) {
        if !self
            .sender
            .may_tell_encrypted(&portal.room_id, NOTICE_INTERVAL)
        {
            return;
        }
        let text = format!(
            "⚠ {what} was not bridged to {}: the bridge cannot read encrypted messages yet, and this room has encryption on. Start a new chat without encryption to reach them.",
            self.chat_label(portal)
        );
        self.portal_notice(portal, &format!("isthmus.{seq}.encrypted"), &text)
            .await;
    }

    /// How a notice names a portal's remote chat: "bob on XMPP".
    fn chat_label(&self, portal: &PortalRecord) -> String {
        let display = self
            .networks
            .get(&portal.key.network)
            .map(|n| n.info().display_name.clone())
            .unwrap_or_else(|| portal.key.network.to_string());
        match portal.kind {
            ChatKind::Fanout => format!("its {display} members"),
            _ => format!(
                "{} on {display}",
                portal.name.as_deref().unwrap_or(portal.key.chat.as_str())
            ),
        }
    }

    /// Sends a notice from the bridge to a portal's remote chat, best effort: in a direct
    /// chat through the user's own identity (the conversation the contact already has), in a
    /// group chat through the bridge-wide identity as the bridge bot, else through the relay.
    async fn remote_notice(&self, portal: &PortalRecord, event_id: &str, text: &str) {
        let network = &portal.key.network;
        let bot = MatrixSender {
            user_id: self.bot().to_string(),
            displayname: "bridge".into(),
        };
        let (client, sender): (Option<std::sync::Arc<dyn NetworkClient>>, MatrixSender) =
            match (&portal.kind, portal.key.receiver.as_deref()) {
                (ChatKind::Direct, Some(receiver)) => (
                    self.user_client(receiver, network),
                    self.matrix_sender(receiver).await,
                ),
                _ => match self.networks.get(network).and_then(|c| c.bridge_client()) {
                    Some(c) => (Some(c), bot),
                    None => match &portal.relay {
                        Some((owner, login)) => (
                            self.login_client(owner, network, login),
                            self.matrix_sender(owner).await,
                        ),
                        None => (None, bot),
                    },
                },
            };
        let Some(client) = client else {
            warn!(portal = %portal.key, "no identity to tell the remote chat that encryption stopped the bridging");
            return;
        };
        let message = OutgoingMessage {
            sender,
            event_id: format!("{event_id}.encryption"),
            content: MessageContent {
                kind: MessageKind::Notice,
                ..MessageContent::text(text)
            },
            reply_to: None,
            relayed: false,
            sent: Default::default(),
        };
        let portal_ref = super::matrix_events::portal_ref(portal);
        if let Err(e) = client.send_message(&portal_ref, &message).await {
            warn!(portal = %portal.key, error = %crate::error::chain(&e), "could not tell the remote chat that encryption stopped the bridging");
        }
    }
}
