//! Messages: to the room's main portal (edits and replies included, relayed for users
//! without a login), and fanned out to the room's members on networks without group chats.

use std::sync::Arc;
use std::time::Instant;

use ruma::events::room::message::{MessageType, RoomMessageEventContent};
use tracing::debug;

use super::content::{edit_of, is_notice, reply_target};
use super::portal_ref;
use crate::bridge::event::MatrixEvent;
use crate::bridge::resume::send_resuming;
use crate::bridge::{Bridge, BridgeError};
use crate::config::PermissionLevel;
use crate::network::{
    MatrixSender, MessageContent, MessageKind, NetworkClient, NetworkError, NetworkId,
    OutgoingMessage, PartsSent, RemoteMessageId,
};
use crate::store::{MessageRecord, PortalRecord};

impl Bridge {
    pub(super) async fn handle_message(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        content: &RoomMessageEventContent,
    ) -> Result<(), BridgeError> {
        let is_edit = edit_of(content).is_some();
        let management = self
            .store
            .user(&ev.sender)?
            .and_then(|u| u.management_room)
            .is_some_and(|r| r == ev.room_id);
        if !is_edit && let MessageType::Text(text) = &content.msgtype {
            let body = text.body.as_str();
            if management {
                return crate::commands::handle(self, seq, ev, body, true).await;
            }
            if let Some(rest) = body.strip_prefix(&self.config.bridge.command_prefix)
                && (rest.is_empty() || rest.starts_with(char::is_whitespace))
            {
                return crate::commands::handle(self, seq, ev, rest.trim_start(), false).await;
            }
        }
        if self.portals.has_fanout(&ev.room_id) && !is_edit {
            for f in self.portals.fanouts(&ev.room_id)? {
                self.fanout_message(seq, ev, content, &f, None).await?;
            }
        }
        let Some(portal) = self.portals.by_room(&ev.room_id)? else {
            return Ok(());
        };
        self.message_to_portal(seq, ev, content, &portal).await
    }

    /// Sends a Matrix message (or edit) to the room's main portal.
    async fn message_to_portal(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        message: &RoomMessageEventContent,
        portal: &PortalRecord,
    ) -> Result<(), BridgeError> {
        let portal = portal.clone();
        if portal.encrypted {
            // A client that still sends in clear into a room with encryption on: the
            // message is not bridged (the room's members expect it to stay encrypted), and
            // the room is told so.
            self.metrics.event("to_remote", "message", "room_encrypted");
            self.not_bridged_in_encrypted_room(seq, &portal, "A message")
                .await;
            return Ok(());
        }
        if self
            .store
            .message_by_event(&ev.room_id, &ev.event_id)?
            .is_some()
        {
            debug!(event_id = %ev.event_id, "already bridged");
            return Ok(());
        }
        if is_notice(message) && !self.config.bridge.bridge_notices {
            self.metrics.event("to_remote", "message", "notice_skipped");
            return Ok(());
        }
        // An edit carries the message as it is now in `m.new_content`.
        let edit = edit_of(message);
        let content_src = edit.map_or(&message.msgtype, |(_, new)| new);
        let Some(mut content) = self.outgoing_content(content_src) else {
            self.metrics.event("to_remote", "message", "unsupported");
            self.portal_notice(
                &portal,
                &format!("isthmus.{seq}.unsupported"),
                "⚠ This kind of message (files and media) is not bridged yet; it was not delivered.",
            )
            .await;
            return Ok(());
        };
        let (client, relayed) = match self.client_for(&portal, &ev.sender) {
            Ok(c) => c,
            Err(e) => return self.network_failure(seq, &portal, "message", e).await,
        };
        let sender = self.matrix_sender(&ev.sender).await;
        // A relayed message speaks as the relay's owner (the author's name is in the text):
        // the author's own identity on the network is not theirs to use at relay level.
        let sender = match self.relay_speaker(&portal, relayed).await {
            Some(owner) => {
                content = self.relay_format(&sender, content);
                owner
            }
            None => sender,
        };
        let portal_ref = portal_ref(&portal);
        let network = portal.key.network.clone();
        let started = Instant::now();
        if let Some((target, _)) = edit {
            let Some(orig) = self
                .store
                .message_by_event(&ev.room_id, target)?
                .filter(|o| o.sender == ev.sender)
            else {
                self.metrics.event("to_remote", "edit", "unknown_target");
                return Ok(());
            };
            let r = client
                .send_edit(&portal_ref, &sender, &orig.remote_id, &content)
                .await;
            self.observe(&network, "edit", started);
            return match r {
                Ok(()) => {
                    self.metrics.event("to_remote", "edit", "ok");
                    Ok(())
                }
                Err(e) => self.network_failure(seq, &portal, "edit", e).await,
            };
        }
        let reply_to = match reply_target(message) {
            // Looked up in this room only: a reply never pulls anything from another room.
            Some(target) => self
                .store
                .message_by_event(&ev.room_id, target)?
                .map(|m| m.remote_id),
            None => None,
        };
        let out = OutgoingMessage {
            sender,
            event_id: ev.event_id.clone(),
            content,
            reply_to,
            relayed,
            sent: PartsSent::default(),
        };
        let r = send_resuming(&self.store, client.as_ref(), &portal_ref, &portal.key, out).await?;
        self.observe(&network, "message", started);
        self.message_sent(seq, &portal, ev, r).await
    }

    /// A ghost's message in a room with fan-out members: on to the main portal when it is on
    /// another network, and to the fan-out members of every network but the sender.
    pub(super) async fn ghost_message(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        message: &RoomMessageEventContent,
    ) -> Result<(), BridgeError> {
        let Some((network, remote)) = self.parse_ghost(&ev.sender) else {
            return Ok(());
        };
        if is_notice(message) || edit_of(message).is_some() {
            return Ok(());
        }
        for f in self.portals.fanouts(&ev.room_id)? {
            let skip = (f.key.network == network).then_some(remote.as_str());
            self.fanout_message(seq, ev, message, &f, skip).await?;
        }
        let Some(portal) = self.portals.by_room(&ev.room_id)? else {
            return Ok(());
        };
        // The record of the event's arrival from the ghost's network does not count: only
        // one made by sending it to this portal does.
        if portal.key.network == network
            || self
                .store
                .message_by_event(&ev.room_id, &ev.event_id)?
                .is_some_and(|m| m.portal == portal.key)
        {
            return Ok(());
        }
        let Some(content) = self.outgoing_content(&message.msgtype) else {
            return Ok(());
        };
        let Some((client, out)) = self
            .bridge_wide_send(&portal.key.network, ev, content)
            .await
        else {
            return Ok(());
        };
        let pref = portal_ref(&portal);
        let r = send_resuming(&self.store, client.as_ref(), &pref, &portal.key, out).await?;
        self.message_sent(seq, &portal, ev, r).await
    }

    /// What became of `ev` sent to `portal`'s network: recorded under the remote ID the
    /// network gave it (edits, replies and redactions find it by that) and counted, or
    /// handed to the failure model.
    async fn message_sent(
        &self,
        seq: u64,
        portal: &PortalRecord,
        ev: &MatrixEvent,
        sent: Result<RemoteMessageId, NetworkError>,
    ) -> Result<(), BridgeError> {
        match sent {
            Ok(remote_id) => {
                self.store.put_message(&MessageRecord {
                    portal: portal.key.clone(),
                    room_id: ev.room_id.clone(),
                    event_id: ev.event_id.clone(),
                    remote_id,
                    sender: ev.sender.clone(),
                    timestamp_ms: crate::bridge::now_ms(),
                    reaction: None,
                })?;
                self.metrics.event("to_remote", "message", "ok");
                Ok(())
            }
            Err(e) => self.network_failure(seq, portal, "message", e).await,
        }
    }

    /// A network's bridge-wide identity, and `ev` as it sends it: from the event's sender
    /// under their own name (ghosts of other networks included), no reply, not relayed.
    /// `None` when the network has no bridge-wide identity.
    async fn bridge_wide_send(
        &self,
        network: &NetworkId,
        ev: &MatrixEvent,
        content: MessageContent,
    ) -> Option<(Arc<dyn NetworkClient>, OutgoingMessage)> {
        let client = self.networks.get(network)?.bridge_client()?;
        let out = OutgoingMessage {
            sender: self.matrix_sender(&ev.sender).await,
            event_id: ev.event_id.clone(),
            content,
            reply_to: None,
            relayed: false,
            sent: PartsSent::default(),
        };
        Some((client, out))
    }

    /// Sends a room message to the remote members of a fan-out portal, leaving out `skip`
    /// (the sender, when a member wrote it). Sent once per event, also across retries.
    async fn fanout_message(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        message: &RoomMessageEventContent,
        portal: &PortalRecord,
        skip: Option<&str>,
    ) -> Result<(), BridgeError> {
        if portal.encrypted {
            self.metrics.event("to_remote", "message", "room_encrypted");
            self.not_bridged_in_encrypted_room(seq, portal, "A message")
                .await;
            return Ok(());
        }
        if self.store.delivered(&portal.key, &ev.event_id)? {
            return Ok(());
        }
        if is_notice(message) && !self.config.bridge.bridge_notices {
            return Ok(());
        }
        if !self.in_namespace(&ev.sender) && self.level(&ev.sender) < PermissionLevel::Relay {
            return Ok(());
        }
        let mut pref = portal_ref(portal);
        pref.members.retain(|m| Some(m.as_str()) != skip);
        if pref.members.is_empty() {
            return Ok(());
        }
        let Some(content) = self.outgoing_content(&message.msgtype) else {
            if !self.in_namespace(&ev.sender) {
                self.portal_notice(
                    portal,
                    &format!("isthmus.{seq}.unsupported.{}", portal.key.network),
                    "⚠ Files and media are not bridged to members on other networks yet; this was not delivered to them.",
                )
                .await;
            }
            return Ok(());
        };
        let Some((client, out)) = self
            .bridge_wide_send(&portal.key.network, ev, content)
            .await
        else {
            return Ok(());
        };
        let started = Instant::now();
        let r = client.send_message(&pref, &out).await;
        self.observe(&portal.key.network, "message", started);
        match r {
            Ok(_) => {
                self.store.mark_delivered(&portal.key, &ev.event_id)?;
                self.metrics.event("to_remote", "message", "ok");
                Ok(())
            }
            Err(e) => self.network_failure(seq, portal, "message", e).await,
        }
    }

    fn relay_format(&self, sender: &MatrixSender, mut content: MessageContent) -> MessageContent {
        let fmt = &self.config.bridge.relay.message_format;
        let apply = |body: &str, name: &str| {
            fmt.replace("{sender}", name)
                .replace("{user_id}", &sender.user_id)
                .replace("{body}", body)
        };
        content.body = apply(&content.body, &sender.displayname);
        if let Some(html) = content.html.take() {
            content.html = Some(apply(
                &html,
                &crate::text::escape_markup(&sender.displayname),
            ));
        }
        if content.kind == MessageKind::Emote {
            content.kind = MessageKind::Text;
            content.body = format!("* {}", content.body);
        }
        content
    }
}
