//! Matrix → remote network.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use ruma::events::reaction::ReactionEventContent;
use ruma::events::room::member::{MembershipState, RoomMemberEventContent};
use ruma::events::room::message::{MessageFormat, MessageType, Relation, RoomMessageEventContent};
use ruma::events::room::redaction::RoomRedactionEventContent;
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::dispatch::Work;
use super::event::{EventKind, InvalidEvent, MatrixEvent};
use super::{Bridge, BridgeError, room_id, user_id};
use crate::config::PermissionLevel;
use crate::error::Reason;
use crate::network::{
    Capabilities, ChatKind, MatrixSender, MessageContent, MessageKind, NetworkClient, NetworkError,
    NetworkId, OutgoingMessage, PortalRef, Presence, PresenceState, RemoteUserId,
};
use crate::store::{MessageRecord, PortalKey, PortalRecord, UserRecord};

/// How long a Matrix user's display name, as the homeserver gave it, is used without asking
/// again (a member event of the user drops it sooner).
pub(super) const DISPLAY_NAME_TTL: std::time::Duration = std::time::Duration::from_secs(600);

impl Bridge {
    /// Bridges one Matrix timeline event, read already: one handler per kind.
    pub(super) async fn handle_matrix_event(
        &self,
        seq: u64,
        ev: &MatrixEvent,
    ) -> Result<(), BridgeError> {
        if self.in_namespace(&ev.sender) {
            // A ghost's message in a room shared with another network's members goes on to
            // them (Matrix is the hub); everything else from the bridge's own users is an echo.
            if let EventKind::Message(content) = &ev.kind
                && ev.sender != self.bot().as_str()
                && self.store.has_fanout(&ev.room_id)
            {
                return self.ghost_message(seq, ev, content).await;
            }
            return Ok(());
        }
        match &ev.kind {
            EventKind::Member(content) => self.handle_membership(seq, ev, content).await,
            EventKind::Message(content) => self.handle_message(seq, ev, content).await,
            EventKind::Reaction(content) => self.handle_reaction(seq, ev, content).await,
            EventKind::Redaction(content) => self.handle_redaction(seq, ev, content).await,
            EventKind::Encryption(_) => self.encryption_turned_on(seq, ev).await.map(drop),
            EventKind::Encrypted => self.encrypted_event(seq, ev).await,
            EventKind::Other(_) => Ok(()),
        }
    }

    async fn handle_membership(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        content: &RoomMemberEventContent,
    ) -> Result<(), BridgeError> {
        let Some(target) = ev.state_key.as_deref() else {
            return Ok(());
        };
        // A member event is how a change of display name reaches the bridge.
        self.display_names.forget(target);
        let membership = &content.membership;
        let is_direct = content.is_direct.unwrap_or(false);
        let gone = matches!(membership, MembershipState::Leave | MembershipState::Ban);
        if target == self.bot().as_str() {
            return match membership {
                MembershipState::Invite => self.bot_invited(seq, ev, is_direct).await,
                _ if gone => {
                    self.note_joined(target, &ev.room_id, false);
                    if let Some(mut u) = self.store.user_by_management_room(&ev.room_id)? {
                        u.management_room = None;
                        self.store.put_user(&u)?;
                    }
                    Ok(())
                }
                _ => Ok(()),
            };
        }
        if let Some((network, remote)) = self.parse_ghost(target) {
            return match membership {
                MembershipState::Invite => {
                    self.ghost_invited(seq, ev, target, &network, &remote, is_direct)
                        .await
                }
                _ if gone => {
                    self.note_joined(target, &ev.room_id, false);
                    self.fanout_member_left(&ev.room_id, &network, &remote)
                        .await
                }
                _ => Ok(()),
            };
        }
        let joined = *membership == MembershipState::Join;
        if joined
            && self
                .store
                .user(target)?
                .is_some_and(|u| u.management_room.as_deref() == Some(ev.room_id.as_str()))
        {
            // The user joined the management room the bot opened for them.
            self.show_pending_requests(target, &ev.room_id).await?;
            return Ok(());
        }
        if let Some(p) = self.store.portal_by_room(&ev.room_id)?
            && p.kind == ChatKind::Group
            && (joined || gone)
            && let Ok((client, false)) = self.client_for(&p, target)
        {
            let user = self.matrix_sender(target).await;
            let r = if joined {
                client.join_chat(&portal_ref(&p), &user).await
            } else {
                client.leave_chat(&portal_ref(&p), &user).await
            };
            if let Err(e) = r {
                if e.is_transient() {
                    return Err(BridgeError::Network {
                        network: p.key.network.clone(),
                        source: e,
                    });
                }
                warn!(room_id = %ev.room_id, user = target, error = %crate::error::chain(&e), "could not follow a membership change");
            }
        }
        if gone {
            if let Some(p) = self.store.portal_by_room(&ev.room_id)?
                && p.kind == ChatKind::Direct
                && p.key.receiver.as_deref() == Some(target)
            {
                info!(room_id = %ev.room_id, user = target, "user left a direct chat; removing the portal");
                self.remove_portal(&p.key, &ev.room_id, true).await?;
            }
            if let Some(mut u) = self.store.user(target)?
                && u.management_room.as_deref() == Some(ev.room_id.as_str())
            {
                u.management_room = None;
                self.store.put_user(&u)?;
            }
        }
        Ok(())
    }

    async fn bot_invited(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        is_direct: bool,
    ) -> Result<(), BridgeError> {
        let rid = room_id(&ev.room_id)?;
        if self.level(&ev.sender) < PermissionLevel::Relay {
            info!(room_id = %ev.room_id, inviter = %ev.sender, "refusing invite from a user without permission");
            self.hs.leave(None, &rid).await?;
            return Ok(());
        }
        self.hs.join(None, ev.room_id.as_str()).await?;
        self.note_joined(self.bot().as_str(), &ev.room_id, true);
        // A direct chat with the bot is the user's management room; in other rooms the bot
        // only answers prefixed commands.
        if is_direct {
            let mut user = self.store.user(&ev.sender)?.unwrap_or(UserRecord {
                user_id: ev.sender.clone(),
                management_room: None,
                shown_requests: Vec::new(),
            });
            if user.management_room.as_deref() != Some(ev.room_id.as_str()) {
                user.shown_requests.clear();
            }
            user.management_room = Some(ev.room_id.clone());
            self.store.put_user(&user)?;
            info!(room_id = %ev.room_id, user = %ev.sender, "management room set");
            let text = format!(
                "Hello! This is your management room for the isthmus bridge. Send `help` to see the commands; no prefix is needed here (elsewhere, start commands with `{}`).",
                self.config.bridge.command_prefix
            );
            self.send_notice(None, &ev.room_id, &format!("isthmus.{seq}.welcome"), &text)
                .await?;
            self.show_pending_requests(&ev.sender, &ev.room_id).await?;
        }
        Ok(())
    }

    async fn ghost_invited(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        ghost: &str,
        network: &NetworkId,
        remote: &str,
        is_direct: bool,
    ) -> Result<(), BridgeError> {
        let rid = room_id(&ev.room_id)?;
        let gid = user_id(ghost)?;
        let connector = self.network(network)?;
        let refuse = |why: String| {
            let gid = gid.clone();
            let rid = rid.clone();
            async move {
                info!(room_id = %ev.room_id, ghost, why, "refusing invite to a ghost");
                // Joining first lets the ghost say why; a failed join still rejects the invite.
                if self.hs.join(Some(&gid), ev.room_id.as_str()).await.is_ok() {
                    let _ = self
                        .send_notice(
                            Some(ghost),
                            &ev.room_id,
                            &format!("isthmus.{seq}.refuse"),
                            &why,
                        )
                        .await;
                }
                self.hs
                    .leave(Some(&gid), &rid)
                    .await
                    .map_err(BridgeError::from)
            }
        };
        if self.level(&ev.sender) < PermissionLevel::User {
            return refuse("You are not allowed to start chats through this bridge.".into()).await;
        }
        let remote_id = match connector.parse_user_id(remote) {
            Ok(r) => r,
            Err(e) => {
                return refuse(format!(
                    "This is not a valid {} address: {e}",
                    connector.info().display_name
                ))
                .await;
            }
        };
        if !is_direct {
            let main = self.store.portal_by_room(&ev.room_id)?;
            let own_chat = main.as_ref().is_some_and(|p| &p.key.network == network);
            if !own_chat && let Some(chat) = connector.fanout_chat(&ev.room_id) {
                self.ensure_ghost(network, &remote_id, None).await?;
                if self.ghost_sees_encryption(&gid, ghost, &ev.room_id).await? {
                    return refuse(super::encryption::REFUSAL.into()).await;
                }
                return self
                    .add_fanout_member(&ev.room_id, network, chat.as_str(), &remote_id, ghost)
                    .await;
            }
            return match main {
                Some(_) => {
                    self.ensure_ghost(network, &remote_id, None).await?;
                    self.ensure_joined(ghost, &ev.room_id).await
                }
                None => {
                    refuse("Invite me in a direct chat to talk to me, or bridge this room to a group chat first.".into())
                        .await
                }
            };
        }
        self.ensure_ghost(network, &remote_id, None).await?;
        let key = PortalKey::new(network.as_str(), remote_id.as_str(), Some(&ev.sender));
        let mut record = PortalRecord::new(key.clone(), &ev.room_id, ChatKind::Direct);
        let old = self.store.portal(&key)?;
        if let Some(old) = &old
            && old.room_id != ev.room_id
        {
            info!(old_room = %old.room_id, new_room = %ev.room_id, "direct chat moved to a new room");
            record.relay = old.relay.clone();
        }
        // The portal is stored before the ghost joins: the user may write as soon as the
        // ghost is in, and that message must find its portal (and its queue). This runs on
        // the portal's queue: `queue_key` sends a direct invite of a ghost there.
        self.save_portal(&record)?;
        if self.ghost_sees_encryption(&gid, ghost, &ev.room_id).await? {
            // Refused rather than joined silently: the user learns at once why this chat
            // cannot work, and can start one without encryption.
            match &old {
                // The contact's earlier room stays its portal.
                Some(old) => {
                    self.unindex_portal_room(&key, &ev.room_id)?;
                    self.save_portal(old)?;
                }
                None => self.forget_portal(&record)?,
            }
            return refuse(super::encryption::REFUSAL.into()).await;
        }
        self.note_joined(ghost, &ev.room_id, true);
        if let Err(e) = self.write_bridge_info(&record, Some(ghost)).await {
            debug!(error = %crate::error::chain(&e), "could not write bridge info into a user-created direct chat");
        }
        info!(room_id = %ev.room_id, portal = %key, "direct chat portal created by invite");
        self.publish_current_presence(&ev.sender, network, Some(ghost))
            .await;
        Ok(())
    }

    /// Joins `ghost` to `room` (it was invited) and tells whether encryption is on there.
    async fn ghost_sees_encryption(
        &self,
        gid: &ruma::UserId,
        ghost: &str,
        room: &str,
    ) -> Result<bool, BridgeError> {
        self.hs.join(Some(gid), room).await?;
        self.room_is_encrypted(Some(ghost), room).await
    }

    async fn handle_message(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        content: &RoomMessageEventContent,
    ) -> Result<(), BridgeError> {
        let is_edit = edit_target(content).is_some();
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
        if self.store.has_fanout(&ev.room_id) && !is_edit {
            for f in self.store.fanout_portals(&ev.room_id)? {
                self.fanout_message(seq, ev, content, &f, None).await?;
            }
        }
        let Some(portal) = self.store.portal_by_room(&ev.room_id)? else {
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
        let edit = match &message.relates_to {
            Some(Relation::Replacement(r)) => Some((r.event_id.as_str(), &r.new_content.msgtype)),
            _ => None,
        };
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
        };
        let r = client.send_message(&portal_ref, &out).await;
        self.observe(&network, "message", started);
        match r {
            Ok(remote_id) => {
                self.store.put_message(&MessageRecord {
                    portal: portal.key.clone(),
                    room_id: ev.room_id.clone(),
                    event_id: ev.event_id.clone(),
                    remote_id,
                    sender: ev.sender.clone(),
                    timestamp_ms: super::now_ms(),
                    reaction: None,
                })?;
                self.metrics.event("to_remote", "message", "ok");
                Ok(())
            }
            Err(e) => self.network_failure(seq, &portal, "message", e).await,
        }
    }

    /// A ghost's message in a room with fan-out members: on to the main portal when it is on
    /// another network, and to the fan-out members of every network but the sender.
    async fn ghost_message(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        message: &RoomMessageEventContent,
    ) -> Result<(), BridgeError> {
        let Some((network, remote)) = self.parse_ghost(&ev.sender) else {
            return Ok(());
        };
        if is_notice(message) || edit_target(message).is_some() {
            return Ok(());
        }
        for f in self.store.fanout_portals(&ev.room_id)? {
            let skip = (f.key.network == network).then_some(remote.as_str());
            self.fanout_message(seq, ev, message, &f, skip).await?;
        }
        let Some(portal) = self.store.portal_by_room(&ev.room_id)? else {
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
        match client.send_message(&portal_ref(&portal), &out).await {
            Ok(remote_id) => {
                self.store.put_message(&MessageRecord {
                    portal: portal.key.clone(),
                    room_id: ev.room_id.clone(),
                    event_id: ev.event_id.clone(),
                    remote_id,
                    sender: ev.sender.clone(),
                    timestamp_ms: super::now_ms(),
                    reaction: None,
                })?;
                self.metrics.event("to_remote", "message", "ok");
                Ok(())
            }
            Err(e) => self.network_failure(seq, &portal, "message", e).await,
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

    /// Adds a remote user to a room's fan-out portal (creating it), and joins their ghost, on
    /// the fan-out portal's queue (the invite came on the room's).
    async fn add_fanout_member(
        &self,
        room: &str,
        network: &NetworkId,
        chat: &str,
        remote: &RemoteUserId,
        ghost: &str,
    ) -> Result<(), BridgeError> {
        self.ensure_ghost(network, remote, None).await?;
        let key = PortalKey::new(network.as_str(), chat, None);
        let (room, remote, ghost) = (room.to_owned(), remote.clone(), ghost.to_owned());
        self.on_portal_queue(&key.clone(), move |b| async move {
            b.join_fanout(&key, &room, &remote, &ghost).await
        })
        .await
    }

    /// [`Bridge::add_fanout_member`], on the fan-out portal's queue.
    async fn join_fanout(
        &self,
        key: &PortalKey,
        room: &str,
        remote: &RemoteUserId,
        ghost: &str,
    ) -> Result<(), BridgeError> {
        let mut record = match self.store.portal(key)? {
            Some(p) if p.room_id == room => p,
            Some(p) => {
                // Chat IDs are derived from room IDs; another room holding this one is a
                // collision, never silently taken over.
                warn!(room_id = room, other_room = %p.room_id, portal = %key, "fan-out chat already belongs to another room; invite refused");
                let gid = user_id(ghost)?;
                self.hs.leave(Some(&gid), &room_id(room)?).await?;
                return Ok(());
            }
            None => PortalRecord::new(key.clone(), room, ChatKind::Fanout),
        };
        if !record.members.iter().any(|m| m == remote.as_str()) {
            record.members.push(remote.as_str().to_owned());
        }
        self.save_portal(&record)?;
        self.hs.join(Some(&user_id(ghost)?), room).await?;
        self.note_joined(ghost, room, true);
        info!(room_id = room, portal = %key, member = %remote, members = record.members.len(), "remote member added to a room");
        Ok(())
    }

    /// A remote member's ghost left a room: it no longer gets the room's messages. Each
    /// fan-out portal of the room on the ghost's network changes on its own queue.
    async fn fanout_member_left(
        &self,
        room: &str,
        network: &NetworkId,
        remote: &str,
    ) -> Result<(), BridgeError> {
        // Members are stored normalised; a ghost ID may hold another spelling.
        let normalised = self
            .networks
            .get(network)
            .and_then(|c| c.parse_user_id(remote).ok())
            .map(|r| r.as_str().to_owned())
            .unwrap_or_else(|| remote.to_owned());
        for p in self.store.fanout_portals(room)? {
            if &p.key.network != network {
                continue;
            }
            let (room, remote, normalised) =
                (room.to_owned(), remote.to_owned(), normalised.clone());
            let key = p.key;
            self.on_portal_queue(&key.clone(), move |b| async move {
                let Some(mut p) = b.store.portal(&key)?.filter(|p| p.room_id == room) else {
                    return Ok(());
                };
                let before = p.members.len();
                p.members.retain(|m| *m != remote && *m != normalised);
                if p.members.len() == before {
                    return Ok(());
                }
                info!(room_id = room, portal = %p.key, member = remote, "remote member left a room");
                if p.members.is_empty() {
                    b.forget_portal(&p)?;
                } else {
                    b.save_portal(&p)?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    async fn handle_reaction(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        content: &ReactionEventContent,
    ) -> Result<(), BridgeError> {
        let target = content.relates_to.event_id.as_str();
        let key = content.relates_to.key.as_str();
        let Some(portal) = self.store.portal_by_room(&ev.room_id)? else {
            return Ok(());
        };
        let Some(orig) = self.store.message_by_event(&ev.room_id, target)? else {
            self.metrics
                .event("to_remote", "reaction", "unknown_target");
            return Ok(());
        };
        let (client, relayed) = match self.client_for(&portal, &ev.sender) {
            Ok(c) => c,
            Err(e) => return self.network_failure(seq, &portal, "reaction", e).await,
        };
        if relayed {
            // A reaction carries no text to name its author in: it would speak as the
            // relay's owner, so it is not bridged.
            self.metrics
                .event("to_remote", "reaction", "relayed_skipped");
            return Ok(());
        }
        let sender = self.matrix_sender(&ev.sender).await;
        let started = Instant::now();
        let r = client
            .send_reaction(&portal_ref(&portal), &sender, &orig.remote_id, key, false)
            .await;
        self.observe(&portal.key.network, "reaction", started);
        match r {
            Ok(()) => {
                self.store.put_message(&MessageRecord {
                    portal: portal.key.clone(),
                    room_id: ev.room_id.clone(),
                    event_id: ev.event_id.clone(),
                    remote_id: super::remote_events::reaction_id(&orig.remote_id, &ev.sender, key),
                    sender: ev.sender.clone(),
                    timestamp_ms: super::now_ms(),
                    reaction: Some((orig.remote_id.clone(), key.to_owned())),
                })?;
                self.metrics.event("to_remote", "reaction", "ok");
                Ok(())
            }
            Err(e) => self.network_failure(seq, &portal, "reaction", e).await,
        }
    }

    async fn handle_redaction(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        content: &RoomRedactionEventContent,
    ) -> Result<(), BridgeError> {
        let Some(redacts) = content.redacts.as_deref().map(|e| e.as_str()) else {
            return Ok(());
        };
        let Some(portal) = self.store.portal_by_room(&ev.room_id)? else {
            return Ok(());
        };
        let Some(orig) = self.store.message_by_event(&ev.room_id, redacts)? else {
            self.metrics
                .event("to_remote", "redaction", "unknown_target");
            return Ok(());
        };
        if orig.sender != ev.sender {
            // Someone else's message: the homeserver accepted the redaction, so the redacter
            // has the power; in a group chat it becomes a moderation there.
            if portal.kind != ChatKind::Group || orig.reaction.is_some() {
                self.metrics.event("to_remote", "redaction", "not_own");
                return Ok(());
            }
            let Some(client) = self.user_client(&ev.sender, &portal.key.network) else {
                self.metrics.event("to_remote", "moderation", "no_identity");
                return Ok(());
            };
            let moderator = self.matrix_sender(&ev.sender).await;
            let reason = content.reason.as_deref();
            let r = client
                .send_moderation(&portal_ref(&portal), &moderator, &orig.remote_id, reason)
                .await;
            return match r {
                Ok(()) => {
                    self.store.delete_message(&orig)?;
                    self.metrics.event("to_remote", "moderation", "ok");
                    Ok(())
                }
                Err(e) => self.network_failure(seq, &portal, "moderation", e).await,
            };
        }
        let (client, relayed) = match self.client_for(&portal, &ev.sender) {
            Ok(c) => c,
            Err(e) => return self.network_failure(seq, &portal, "redaction", e).await,
        };
        // A relayed message was sent by the relay's owner, who retracts it.
        let sender = match self.relay_speaker(&portal, relayed).await {
            Some(owner) => owner,
            None => self.matrix_sender(&ev.sender).await,
        };
        let started = Instant::now();
        let r = match &orig.reaction {
            Some((target, key)) => {
                client
                    .send_reaction(&portal_ref(&portal), &sender, target, key, true)
                    .await
            }
            None => {
                client
                    .send_redaction(&portal_ref(&portal), &sender, &orig.remote_id)
                    .await
            }
        };
        self.observe(&portal.key.network, "redaction", started);
        match r {
            Ok(()) => {
                self.store.delete_message(&orig)?;
                self.metrics.event("to_remote", "redaction", "ok");
                Ok(())
            }
            Err(e) => self.network_failure(seq, &portal, "redaction", e).await,
        }
    }

    /// Ephemeral events: typing, receipts, presence.
    pub(super) async fn handle_ephemeral(&self, json: &str) -> Result<(), BridgeError> {
        #[derive(Deserialize)]
        struct Eph {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            room_id: Option<String>,
            #[serde(default)]
            sender: Option<String>,
            #[serde(default)]
            content: Value,
        }
        let ev: Eph = serde_json::from_str(json).map_err(|e| {
            BridgeError::Invalid(Reason::because("ephemeral event does not parse", e))
        })?;
        match ev.kind.as_str() {
            "m.typing" => {
                let Some(room) = ev.room_id else {
                    return Ok(());
                };
                let now: HashSet<String> = ev
                    .content
                    .get("user_ids")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .filter(|u| !self.in_namespace(u))
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                let before = {
                    let mut typing = self.typing.lock().expect("typing lock");
                    typing.insert(room.clone(), now.clone()).unwrap_or_default()
                };
                let Some(portal) = self.store.portal_by_room(&room)? else {
                    return Ok(());
                };
                if !self.capable(&portal.key.network, |c| c.typing) {
                    self.metrics.event("to_remote", "typing", "unsupported");
                    return Ok(());
                }
                let changes = now
                    .difference(&before)
                    .map(|u| (u.clone(), true))
                    .chain(before.difference(&now).map(|u| (u.clone(), false)));
                for (user, active) in changes.collect::<Vec<_>>() {
                    let Ok((client, false)) = self.client_for(&portal, &user) else {
                        continue;
                    };
                    let sender = self.matrix_sender(&user).await;
                    let r = client
                        .send_typing(&portal_ref(&portal), &sender, active)
                        .await;
                    self.count_ephemeral("typing", r);
                }
            }
            "m.receipt" => {
                let Some(room) = ev.room_id else {
                    return Ok(());
                };
                let Some(portal) = self.store.portal_by_room(&room)? else {
                    return Ok(());
                };
                if !self.capable(&portal.key.network, |c| c.receipts) {
                    self.metrics.event("to_remote", "receipt", "unsupported");
                    return Ok(());
                }
                let Some(events) = ev.content.as_object() else {
                    return Ok(());
                };
                for (event_id, receipt) in events {
                    let Some(readers) = receipt.get("m.read").and_then(Value::as_object) else {
                        continue;
                    };
                    let Some(msg) = self.store.message_by_event(&room, event_id)? else {
                        continue;
                    };
                    for user in readers.keys().filter(|u| !self.in_namespace(u)) {
                        let Ok((client, false)) = self.client_for(&portal, user) else {
                            continue;
                        };
                        let sender = self.matrix_sender(user).await;
                        let r = client
                            .send_receipt(&portal_ref(&portal), &sender, &msg.remote_id)
                            .await;
                        self.count_ephemeral("receipt", r);
                    }
                }
            }
            "m.presence" => {
                let Some(user) = ev.sender.filter(|u| !self.in_namespace(u)) else {
                    return Ok(());
                };
                if self.level(&user) < PermissionLevel::User {
                    return Ok(());
                }
                let state = match ev.content.get("presence").and_then(Value::as_str) {
                    Some("online") => PresenceState::Online,
                    Some("unavailable") => PresenceState::Unavailable,
                    _ => PresenceState::Offline,
                };
                let presence = Presence {
                    state,
                    status: ev
                        .content
                        .get("status_msg")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                };
                let sender = self.matrix_sender(&user).await;
                let networks = self
                    .networks
                    .keys()
                    .filter(|n| self.capable(n, |c| c.presence));
                for network in networks {
                    if let Some(client) = self.user_client(&user, network) {
                        let r = client.set_presence(&sender, &presence).await;
                        self.count_ephemeral("presence", r);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether `network` carries what `has` picks from its capabilities: what it cannot
    /// carry is not asked of it (an ephemeral event is counted as unsupported; the room's
    /// bridge info lists the capabilities for clients).
    fn capable(&self, network: &NetworkId, has: impl Fn(&Capabilities) -> bool) -> bool {
        self.networks
            .get(network)
            .is_some_and(|n| has(&n.info().capabilities))
    }

    fn count_ephemeral(&self, kind: &str, r: Result<(), NetworkError>) {
        let result = match r {
            Ok(()) => "ok",
            Err(NetworkError::Unsupported(_)) => "unsupported",
            Err(e) => {
                debug!(kind, error = %crate::error::chain(&e), "ephemeral event not bridged");
                "failed"
            }
        };
        self.metrics.event("to_remote", kind, result);
    }

    fn observe(&self, network: &NetworkId, op: &str, started: Instant) {
        self.metrics
            .remote_request_seconds
            .with_label_values(&[network.as_str(), op])
            .observe(started.elapsed().as_secs_f64());
    }

    /// The identity that sends for `user` in `portal`, and whether it relays.
    pub fn client_for(
        &self,
        portal: &PortalRecord,
        user: &str,
    ) -> Result<(Arc<dyn NetworkClient>, bool), NetworkError> {
        let level = self.level(user);
        if level >= PermissionLevel::User
            && let Some(c) = self.user_client(user, &portal.key.network)
        {
            return Ok((c, false));
        }
        if level >= PermissionLevel::Relay
            && self.config.bridge.relay.enabled
            && let Some((relay_user, login_id)) = &portal.relay
            && let Some(c) = self.login_client(relay_user, &portal.key.network, login_id)
        {
            return Ok((c, true));
        }
        Err(NetworkError::NotLoggedIn)
    }

    /// For a relayed operation (`relayed`), the relay's owner as the network sees the
    /// sender: the only identity a relayed message may speak as.
    async fn relay_speaker(&self, portal: &PortalRecord, relayed: bool) -> Option<MatrixSender> {
        let (owner, _) = portal.relay.as_ref().filter(|_| relayed)?;
        Some(self.matrix_sender(owner).await)
    }

    /// The user's own login on a network, else the network's bridge-wide identity.
    pub fn user_client(&self, user: &str, network: &NetworkId) -> Option<Arc<dyn NetworkClient>> {
        if self.level(user) < PermissionLevel::User {
            return None;
        }
        if let Some(l) = self.logins_of(user, network).into_iter().next() {
            return Some(l.client);
        }
        self.networks.get(network).and_then(|c| c.bridge_client())
    }

    /// The sender as networks see it: user ID and display name. The name comes from the
    /// homeserver once per [`DISPLAY_NAME_TTL`] or after a member event of the user (which
    /// is how a change of name reaches the bridge), not once per message.
    pub async fn matrix_sender(&self, user: &str) -> MatrixSender {
        let now = std::time::Instant::now();
        let displayname = match self.display_names.get(user, now) {
            Some(name) => name,
            None => match ruma::UserId::parse(user) {
                Ok(uid) => match self.hs.get_profile(&uid).await {
                    Ok((name, _)) => {
                        self.display_names.put(user, name.clone(), now);
                        name
                    }
                    // Not cached: the next message asks again.
                    Err(_) => None,
                },
                Err(_) => None,
            },
        };
        let fallback = user
            .strip_prefix('@')
            .and_then(|u| u.split(':').next())
            .unwrap_or(user)
            .to_owned();
        MatrixSender {
            user_id: user.to_owned(),
            displayname: displayname.unwrap_or(fallback),
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

    /// Tells the Matrix side that something was not bridged; passes transient errors up for
    /// a retry.
    async fn network_failure(
        &self,
        seq: u64,
        portal: &PortalRecord,
        what: &str,
        e: NetworkError,
    ) -> Result<(), BridgeError> {
        let network = portal.key.network.clone();
        let display = self
            .networks
            .get(&network)
            .map(|n| n.info().display_name.clone())
            .unwrap_or_else(|| network.to_string());
        let (result, text) = match &e {
            NetworkError::Transient(_) | NetworkError::Down(_) => {
                return Err(BridgeError::Network { network, source: e });
            }
            NetworkError::Unsupported(thing) => (
                "unsupported",
                format!("⚠ {display} does not support {thing}; this was not bridged."),
            ),
            NetworkError::NotLoggedIn => (
                "not_logged_in",
                format!(
                    "⚠ Not delivered: you are not logged in to {display} and this room has no relay. Log in from your management room with `login {network}`."
                ),
            ),
            NetworkError::Undeliverable(why) => (
                "undeliverable",
                format!("⚠ Your {what} could not be delivered: {why}"),
            ),
            other => (
                "failed",
                format!("⚠ Your {what} could not be bridged: {other}"),
            ),
        };
        warn!(portal = %portal.key, what, error = %crate::error::chain(&e), "not bridged");
        self.metrics.event("to_remote", what, result);
        self.portal_notice(portal, &format!("isthmus.{seq}.failure"), &text)
            .await;
        Ok(())
    }

    /// The portal that speaks in a room for notices: the main one, else a fan-out one.
    fn notice_portal(&self, room_id: &str) -> Option<PortalRecord> {
        if let Ok(Some(p)) = self.store.portal_by_room(room_id) {
            return Some(p);
        }
        self.store
            .fanout_portals(room_id)
            .ok()
            .and_then(|v| v.into_iter().next())
    }

    /// Called when an item keeps failing with a passing error: tells the Matrix sender that
    /// delivery is delayed (once per item), where there is one.
    pub(super) async fn report_delay(&self, item: &Work, e: &BridgeError) {
        if let Work::Matrix(read) = item
            && let Ok(ev) = &**read
            && ev.message().is_some()
            && let Some(portal) = self.notice_portal(&ev.room_id)
        {
            let text = format!(
                "⏳ Delivery is delayed ({e}); the bridge keeps trying and sends it as soon as it can."
            );
            self.portal_notice(&portal, &format!("isthmus.delay.{}", ev.event_id), &text)
                .await;
        }
    }

    /// Called when an item failed for good: tells its sender, on Matrix or on the network.
    pub(super) async fn report_failure(&self, item: &Work, e: &BridgeError) {
        self.tell_sender(item, &format!("⚠ Your message could not be bridged: {e}"))
            .await;
        self.metrics.event("any", "item", "failed");
    }

    /// Called when an item was set aside after failing too often: tells its sender.
    pub(super) async fn report_quarantined(&self, item: &Work, e: &BridgeError) {
        self.tell_sender(
            item,
            &format!(
                "⚠ Your message could not be bridged after several tries ({e}). It is set aside, not lost: a bridge admin can send it again with the `quarantine` command."
            ),
        )
        .await;
        self.metrics.event("any", "item", "quarantined");
    }

    /// Tells the sender of `item` that it did not cross: a notice in the Matrix room for a
    /// Matrix message (also one that cannot be read), an error on the sender's own network
    /// for a remote message.
    async fn tell_sender(&self, item: &Work, text: &str) {
        match item {
            Work::Matrix(read) => {
                let (room, event_id) = match &**read {
                    Ok(ev) if ev.message().is_some() => (&ev.room_id, &ev.event_id),
                    Err(InvalidEvent {
                        room_id,
                        kind: Some(kind),
                        event_id: Some(event_id),
                        ..
                    }) if kind == "m.room.message" => (room_id, event_id),
                    _ => return,
                };
                if let Some(portal) = self.notice_portal(room) {
                    self.portal_notice(&portal, &format!("isthmus.fail.{event_id}"), text)
                        .await;
                }
            }
            Work::Remote { network, event } => {
                if let Some(connector) = self.networks.get(network) {
                    connector.undelivered(event, text).await;
                }
            }
            Work::Ephemeral { .. } => {}
        }
    }
}

/// The event an edit replaces, when `content` is an edit (`m.replace`).
fn edit_target(content: &RoomMessageEventContent) -> Option<&str> {
    match &content.relates_to {
        Some(Relation::Replacement(r)) => Some(r.event_id.as_str()),
        _ => None,
    }
}

/// The event `content` answers (`m.in_reply_to`), whatever the relation around it: a plain
/// reply, or a thread message naming the message it follows.
fn reply_target(content: &RoomMessageEventContent) -> Option<&str> {
    match &content.relates_to {
        Some(Relation::Reply(r)) => Some(r.in_reply_to.event_id.as_str()),
        Some(Relation::Thread(t)) => t.in_reply_to.as_ref().map(|r| r.event_id.as_str()),
        _ => None,
    }
}

/// Whether `content` is a notice (`m.notice`).
fn is_notice(content: &RoomMessageEventContent) -> bool {
    matches!(content.msgtype, MessageType::Notice(_))
}

/// The network-neutral content of a Matrix message; `None` for kinds not bridged (media).
pub fn message_content(msgtype: &MessageType) -> Option<MessageContent> {
    let (kind, body, formatted) = match msgtype {
        MessageType::Text(c) => (MessageKind::Text, &c.body, &c.formatted),
        MessageType::Emote(c) => (MessageKind::Emote, &c.body, &c.formatted),
        MessageType::Notice(c) => (MessageKind::Notice, &c.body, &c.formatted),
        _ => return None,
    };
    let html = formatted
        .as_ref()
        .filter(|f| f.format == MessageFormat::Html)
        .map(|f| strip_html_reply_fallback(&f.body));
    Some(MessageContent {
        kind,
        body: strip_reply_fallback(body),
        html,
        mentions: Vec::new(),
        attachment: None,
    })
}

/// Removes the `> <@user> quoted` lines older clients put before a reply's text.
fn strip_reply_fallback(body: &str) -> String {
    if !body.starts_with("> <") {
        return body.to_owned();
    }
    let mut lines = body.lines().skip_while(|l| l.starts_with('>'));
    let mut out: Vec<&str> = Vec::new();
    if let Some(first) = lines.next()
        && !first.is_empty()
    {
        out.push(first);
    }
    out.extend(lines);
    out.join("\n")
}

fn strip_html_reply_fallback(html: &str) -> String {
    match (html.find("<mx-reply>"), html.find("</mx-reply>")) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{}", &html[..a], &html[b + "</mx-reply>".len()..])
        }
        _ => html.to_owned(),
    }
}

/// How a connector sees a portal.
pub fn portal_ref(p: &PortalRecord) -> PortalRef {
    PortalRef {
        chat: p.key.chat.clone(),
        kind: p.kind,
        receiver: p.key.receiver.clone(),
        members: p.members.iter().map(RemoteUserId::new).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(content: serde_json::Value) -> RoomMessageEventContent {
        serde_json::from_value(content).expect("message content")
    }

    #[test]
    fn content_conversion() {
        let c = message_content(&message(json!({"msgtype": "m.emote", "body": "waves"})).msgtype)
            .unwrap();
        assert_eq!(c.kind, MessageKind::Emote);
        let image = message(json!({"msgtype": "m.image", "body": "x.png", "url": "mxc://hs/x"}));
        assert!(message_content(&image.msgtype).is_none());
        let c = message_content(
            &message(json!({
                "msgtype": "m.text", "body": "> <@a:hs> old\n> more\n\nnew text",
                "format": "org.matrix.custom.html",
                "formatted_body": "<mx-reply><blockquote>old</blockquote></mx-reply><b>new</b> text"
            }))
            .msgtype,
        )
        .unwrap();
        assert_eq!(c.body, "new text");
        assert_eq!(c.html.as_deref(), Some("<b>new</b> text"));
    }

    #[test]
    fn relations_are_read_by_kind() {
        let edit = message(json!({"msgtype": "m.text", "body": "* b",
            "m.new_content": {"msgtype": "m.text", "body": "b"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$a"}}));
        assert_eq!(edit_target(&edit), Some("$a"));
        assert_eq!(reply_target(&edit), None);
    }
}
