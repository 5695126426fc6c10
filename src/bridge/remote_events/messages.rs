//! Remote network → Matrix: messages, edits, redactions, reactions, receipts, delivery
//! failures and contact requests, each in its portal.

use super::*;

impl Bridge {
    /// Records another ID of a bridged message.
    pub(super) fn message_alias(
        &self,
        key: &PortalKey,
        target: &RemoteMessageId,
        alias: &RemoteMessageId,
    ) -> Result<Outcome, BridgeError> {
        Ok(match self.store.message_by_remote(key, target)? {
            Some(m) => {
                self.store.put_remote_alias(&m, alias)?;
                "ok"
            }
            None => "unknown_target",
        })
    }

    /// A group chat's moderator removed a message: it is redacted, by whoever speaks for
    /// the bridge in the room (the bot in group chats), which needs the power to redact
    /// others' events.
    pub(super) async fn remote_moderation(
        &self,
        seq: u64,
        key: &PortalKey,
        portal: &PortalRecord,
        target: &RemoteMessageId,
        reason: Option<&str>,
    ) -> Result<Outcome, BridgeError> {
        let Some(orig) = self.store.message_by_remote(key, target)? else {
            return Ok("unknown_target");
        };
        let speaker = self.portal_speaker(portal);
        let display = self
            .networks
            .get(&key.network)
            .map(|n| n.info().display_name.clone())
            .unwrap_or_else(|| key.network.to_string());
        let why = match reason {
            Some(r) => format!("removed by a moderator on {display}: {r}"),
            None => format!("removed by a moderator on {display}"),
        };
        let r = self
            .sender
            .redact(
                Some(&user_id(&speaker)?),
                &room_id(&portal.room_id)?,
                &event_id(&orig.event_id)?,
                &format!("isthmus.{seq}"),
                Some(&why),
            )
            .await;
        match r {
            Ok(_) => {
                self.store.delete_message(&orig)?;
                Ok("ok")
            }
            Err(e) => {
                if e.is_transient() {
                    return Err(e);
                }
                warn!(room_id = %portal.room_id, error = %crate::error::chain(&e), "could not apply a remote moderation (the bridge may lack power in the room)");
                Ok("forbidden")
            }
        }
    }

    /// A new message, sent by the sender's ghost (in parts when too large for one event).
    pub(super) async fn remote_message(
        &self,
        at: &InChat,
        ev: &RemoteEvent,
        id: &RemoteMessageId,
        content: &MessageContent,
        reply_to: Option<&RemoteMessageId>,
    ) -> Result<Outcome, BridgeError> {
        if self.store.message_by_remote(&at.key, id)?.is_some() {
            debug!(remote_id = %id, "message already bridged");
            return Ok("duplicate");
        }
        let mut c = match &content.attachment {
            Some(att) => self.media_content(&at.gid, content, att).await,
            None => matrix_content(content),
        };
        if let Some(r) = reply_to
            && let Some(orig) = self.store.message_by_remote(&at.key, r)?
        {
            c["m.relates_to"] = json!({"m.in_reply_to": {"event_id": orig.event_id}});
        }
        let event_id = self
            .sender
            .message_in_parts(&at.key, id, &at.gid, &at.rid, &at.txn, &c, ev.timestamp_ms)
            .await?;
        self.store.put_message(&MessageRecord {
            portal: at.key.clone(),
            room_id: at.portal.room_id.clone(),
            event_id: event_id.to_string(),
            remote_id: id.clone(),
            sender: at.ghost.clone(),
            timestamp_ms: ev.timestamp_ms.unwrap_or_else(now_ms),
            reaction: None,
        })?;
        Ok("ok")
    }

    /// A new content for the sender's own earlier message, as a Matrix edit.
    pub(super) async fn remote_edit(
        &self,
        at: &InChat,
        ev: &RemoteEvent,
        target: &RemoteMessageId,
        content: &MessageContent,
    ) -> Result<Outcome, BridgeError> {
        let orig = match self.store.message_by_remote(&at.key, target)? {
            None => return Ok("unknown_target"),
            // Only the author edits a message.
            Some(orig) if orig.sender != at.ghost => return Ok("not_own"),
            Some(orig) => orig,
        };
        let c = edit_content(content, &orig.event_id);
        self.sender
            .event(
                Some(&at.gid),
                &at.rid,
                "m.room.message",
                &at.txn,
                &c,
                ev.timestamp_ms,
            )
            .await?;
        Ok("ok")
    }

    /// The sender retracted their own earlier message: it is redacted by their ghost.
    pub(super) async fn remote_redaction(
        &self,
        at: &InChat,
        target: &RemoteMessageId,
    ) -> Result<Outcome, BridgeError> {
        match self.store.message_by_remote(&at.key, target)? {
            None => Ok("unknown_target"),
            // Only the author retracts a message (a moderator's removal is a moderation).
            Some(orig) if orig.sender != at.ghost => Ok("not_own"),
            Some(orig) => {
                let eid = event_id(&orig.event_id)?;
                self.sender
                    .redact(Some(&at.gid), &at.rid, &eid, &at.txn, None)
                    .await?;
                self.store.delete_message(&orig)?;
                Ok("ok")
            }
        }
    }

    /// A reaction added (an `m.reaction` by the ghost) or removed (that event redacted).
    pub(super) async fn remote_reaction(
        &self,
        at: &InChat,
        ev: &RemoteEvent,
        target: &RemoteMessageId,
        emoji: &str,
        remove: bool,
    ) -> Result<Outcome, BridgeError> {
        let rid_key = reaction_id(target, &at.ghost, emoji);
        let existing = self.store.message_by_remote(&at.key, &rid_key)?;
        match (remove, existing) {
            (true, Some(r)) => {
                let eid = event_id(&r.event_id)?;
                self.sender
                    .redact(Some(&at.gid), &at.rid, &eid, &at.txn, None)
                    .await?;
                self.store.delete_message(&r)?;
                Ok("ok")
            }
            (true, None) | (false, Some(_)) => Ok("unchanged"),
            (false, None) => {
                let Some(orig) = self.store.message_by_remote(&at.key, target)? else {
                    return Ok("unknown_target");
                };
                let c = json!({"m.relates_to": {
                    "rel_type": "m.annotation", "event_id": orig.event_id, "key": emoji}});
                let event_id = self
                    .sender
                    .event(
                        Some(&at.gid),
                        &at.rid,
                        "m.reaction",
                        &at.txn,
                        &c,
                        ev.timestamp_ms,
                    )
                    .await?;
                self.store.put_message(&MessageRecord {
                    portal: at.key.clone(),
                    room_id: at.portal.room_id.clone(),
                    event_id: event_id.to_string(),
                    remote_id: rid_key,
                    sender: at.ghost.clone(),
                    timestamp_ms: now_ms(),
                    reaction: Some((target.clone(), emoji.to_owned())),
                })?;
                Ok("ok")
            }
        }
    }

    /// The sender read everything up to a message: a read receipt of their ghost.
    pub(super) async fn remote_receipt(
        &self,
        at: &InChat,
        up_to: &RemoteMessageId,
    ) -> Result<Outcome, BridgeError> {
        let Some(m) = self.store.message_by_remote(&at.key, up_to)? else {
            return Ok("unknown_target");
        };
        let eid = event_id(&m.event_id)?;
        self.sender.read_receipt(&at.gid, &at.rid, &eid).await?;
        Ok("ok")
    }

    /// Tells the Matrix sender, as a reply to their message, that the network bounced it.
    pub(super) async fn delivery_failed(
        &self,
        seq: u64,
        key: &PortalKey,
        portal: &PortalRecord,
        target: &RemoteMessageId,
        reason: &str,
    ) -> Result<Outcome, BridgeError> {
        let Some(orig) = self.store.message_by_remote(key, target)? else {
            return Ok("unknown_target");
        };
        let c = json!({
            "msgtype": "m.notice",
            "body": format!("⚠ Your message could not be delivered: {reason}"),
            "m.mentions": {},
            "m.relates_to": {"m.in_reply_to": {"event_id": orig.event_id}},
        });
        let speaker = user_id(&self.portal_speaker(portal))?;
        self.sender
            .event(
                Some(&speaker),
                &room_id(&portal.room_id)?,
                "m.room.message",
                &format!("isthmus.{seq}"),
                &c,
                None,
            )
            .await?;
        Ok("ok")
    }

    /// Tells the receiver, in the management room, that a contact asks to see their presence.
    pub(super) async fn contact_request(
        &self,
        seq: u64,
        network: &NetworkId,
        ev: &RemoteEvent,
    ) -> Result<&'static str, BridgeError> {
        let Some(user) = ev.receiver.as_deref() else {
            return Ok("no_receiver");
        };
        if self.in_namespace(user) || self.level(user) < PermissionLevel::User {
            return Ok("not_a_user");
        }
        // A user who has no management room gets one: the request must not wait unseen.
        let (room, opened) = self.management_room_or_open(user).await?;
        let display = self.network(network)?.info().display_name.clone();
        let who = match &ev.sender_name {
            Some(n) => format!("{n} ({})", ev.sender),
            None => ev.sender.to_string(),
        };
        let text =
            super::super::management::request_text(&who, &display, network, ev.sender.as_str());
        self.portals
            .mark_request_shown(user, network, ev.sender.as_str())?;
        self.send_notice(None, &room, &format!("isthmus.{seq}.contact"), &text)
            .await?;
        if opened {
            // Requests that waited while the user had no management room.
            self.show_pending_requests(user, &room).await?;
        }
        Ok("ok")
    }
}
