//! Remote network → Matrix.

use serde_json::{Value, json};
use tracing::{debug, info, warn};

use std::time::Instant;

use super::limits::Limit;
use super::{Bridge, BridgeError, now_ms, room_id, user_id};
use crate::config::PermissionLevel;
use crate::error::Reason;
use crate::network::{
    ChatKind, MembershipChange, MessageContent, MessageKind, NetworkId, Presence, RemoteEvent,
    RemoteEventKind, RemoteMessageId, RemoteUserId,
};
use crate::store::{MessageRecord, PortalKey, PortalRecord};

/// The portal an event belongs to: per receiver for direct chats, shared for group chats.
pub(super) fn portal_key(network: &NetworkId, ev: &RemoteEvent) -> PortalKey {
    match ev.chat_kind {
        ChatKind::Direct => {
            PortalKey::new(network.as_str(), ev.chat.as_str(), ev.receiver.as_deref())
        }
        ChatKind::Group | ChatKind::Fanout => {
            PortalKey::new(network.as_str(), ev.chat.as_str(), None)
        }
    }
}

/// The Matrix content of a message.
pub fn matrix_content(c: &MessageContent) -> Value {
    let msgtype = match c.kind {
        MessageKind::Text => "m.text",
        MessageKind::Emote => "m.emote",
        MessageKind::Notice => "m.notice",
    };
    // `m.mentions` is always set, from real mentions only: text such as "@room" in a remote
    // message never pings anyone.
    let mut v = json!({"msgtype": msgtype, "body": c.body, "m.mentions": {}});
    if !c.mentions.is_empty() {
        v["m.mentions"] = json!({"user_ids": c.mentions});
    }
    if let Some(html) = &c.html {
        v["format"] = json!("org.matrix.custom.html");
        v["formatted_body"] = json!(html);
    }
    v
}

/// The Matrix content of an edit of the message `original` to `content`: the new content
/// in `m.new_content`, and a fallback marked with `* ` for clients that do not show edits.
fn edit_content(content: &MessageContent, original: &str) -> Value {
    let new = matrix_content(content);
    let mut c = new.clone();
    c["body"] = json!(format!("* {}", content.body));
    if let Some(html) = &content.html {
        c["formatted_body"] = json!(format!("* {html}"));
    }
    c["m.new_content"] = new;
    c["m.relates_to"] = json!({"rel_type": "m.replace", "event_id": original});
    c
}

/// What became of a remote event, for the metrics: `ok`, or why not (`unknown_target`,
/// `rate_limited`, `no_portal`, ...).
type Outcome = &'static str;

/// A step of handling a remote event: what the next step needs, or the event's
/// [`Outcome`] when it ends here.
type Step<T> = Result<T, Outcome>;

/// An event's chat and sender, ready: the portal, and the sender's ghost in its room.
struct InChat {
    /// The portal's key.
    key: PortalKey,
    /// The portal.
    portal: PortalRecord,
    /// The sender's ghost.
    ghost: String,
    /// The ghost, as a user ID.
    gid: ruma::OwnedUserId,
    /// The portal's room.
    rid: ruma::OwnedRoomId,
    /// The homeserver transaction ID of what the event sends (from its inbox sequence).
    txn: String,
}

/// Parses a stored event ID.
fn event_id(id: &str) -> Result<ruma::OwnedEventId, BridgeError> {
    ruma::EventId::parse(id)
        .map_err(|e| BridgeError::Invalid(Reason::because(format!("bad event ID {id}"), e)))
}

/// The ID under which a reaction is mapped: one per message, reacting user and key.
pub(super) fn reaction_id(target: &RemoteMessageId, sender: &str, key: &str) -> RemoteMessageId {
    RemoteMessageId::new(format!("{target}\u{1e}{sender}\u{1e}{key}"))
}

impl Bridge {
    /// Bridges one remote event to Matrix. `seq` is the event's inbox sequence, from which
    /// homeserver transaction IDs are derived so that a retry never duplicates.
    pub(super) async fn handle_remote_event(
        &self,
        seq: u64,
        network: &NetworkId,
        ev: &RemoteEvent,
    ) -> Result<(), BridgeError> {
        // What the limits admitted for this event; given back when handling fails, so that
        // retries of one item do not use up the budget.
        let mut taken = Vec::new();
        let result = self.bridge_remote_event(seq, network, ev, &mut taken).await;
        if result.is_err() && !taken.is_empty() {
            let asks: Vec<(Limit, &str)> = taken.iter().map(|(l, k)| (*l, k.as_str())).collect();
            self.limits.refund(&asks, Instant::now());
        }
        result
    }

    /// One handler per kind of event. Each says what became of the event (`ok`,
    /// `unknown_target`, `rate_limited`, ...), counted here once.
    async fn bridge_remote_event(
        &self,
        seq: u64,
        network: &NetworkId,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<(), BridgeError> {
        use RemoteEventKind as K;
        let result = match &ev.kind {
            K::Presence(p) => self.remote_presence(network, ev, p, taken).await?,
            K::Profile => self.remote_profile(network, ev, taken).await?,
            K::Avatar { hash, data } => {
                self.remote_avatar(network, ev, hash, data.as_deref(), taken)
                    .await?
            }
            K::ContactRequest => self.contact_request(seq, network, ev).await?,
            K::ChatExists => match self.portal_of(network, ev, taken).await? {
                Ok(_) => "ok",
                Err(outcome) => outcome,
            },
            K::MessageAlias { target, alias } => {
                match self.open_portal(network, ev, taken).await? {
                    Ok((key, _)) => self.message_alias(&key, target, alias)?,
                    Err(outcome) => outcome,
                }
            }
            K::Moderation { target, reason } => match self.open_portal(network, ev, taken).await? {
                Ok((key, portal)) => {
                    self.remote_moderation(seq, &key, &portal, target, reason.as_deref())
                        .await?
                }
                Err(outcome) => outcome,
            },
            K::DeliveryFailed { target, reason } => {
                match self.open_portal(network, ev, taken).await? {
                    Ok((key, portal)) => {
                        self.delivery_failed(seq, &key, &portal, target, reason)
                            .await?
                    }
                    Err(outcome) => outcome,
                }
            }
            K::Message {
                id,
                content,
                reply_to,
            } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => {
                    self.remote_message(&at, ev, id, content, reply_to.as_ref())
                        .await?
                }
                Err(outcome) => outcome,
            },
            K::Edit { target, content } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => self.remote_edit(&at, ev, target, content).await?,
                Err(outcome) => outcome,
            },
            K::Redaction { target } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => self.remote_redaction(&at, target).await?,
                Err(outcome) => outcome,
            },
            K::Reaction {
                target,
                key,
                remove,
            } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => self.remote_reaction(&at, ev, target, key, *remove).await?,
                Err(outcome) => outcome,
            },
            K::Typing { active } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => {
                    self.hs
                        .set_typing(Some(&at.gid), &at.rid, *active, 30_000)
                        .await?;
                    "ok"
                }
                Err(outcome) => outcome,
            },
            K::Receipt { up_to } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => self.remote_receipt(&at, up_to).await?,
                Err(outcome) => outcome,
            },
            K::ChatInfo { name, topic } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => {
                    self.update_chat_info(&at.portal, name.as_deref(), topic.as_deref())
                        .await?;
                    "ok"
                }
                Err(outcome) => outcome,
            },
            K::Membership { change } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => {
                    if *change == MembershipChange::Leave {
                        self.ghost_leave(&at.ghost, &at.portal.room_id).await?;
                    }
                    "ok"
                }
                Err(outcome) => outcome,
            },
        };
        self.metrics.event("to_matrix", ev.kind.name(), result);
        Ok(())
    }

    /// Whether the sender of a presence, profile or picture event may have a ghost (one
    /// without a ghost gets one: within the limits only, and quietly not at all over them).
    async fn admit_quietly(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Step<()>, BridgeError> {
        if let Err(limit) = self.admit_ghost(network, ev, taken)? {
            self.rate_limited(network, ev, limit, false).await;
            return Ok(Err("rate_limited"));
        }
        Ok(Ok(()))
    }

    /// The sender's presence, on their ghost.
    async fn remote_presence(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        presence: &Presence,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Outcome, BridgeError> {
        if let Err(outcome) = self.admit_quietly(network, ev, taken).await? {
            return Ok(outcome);
        }
        let ghost = self
            .ensure_ghost(network, &ev.sender, ev.sender_name.as_deref())
            .await?;
        self.set_ghost_presence(&ghost, presence.state, presence.status.as_deref())
            .await?;
        Ok("ok")
    }

    /// The sender's name, on their ghost.
    async fn remote_profile(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Outcome, BridgeError> {
        if let Err(outcome) = self.admit_quietly(network, ev, taken).await? {
            return Ok(outcome);
        }
        self.ensure_ghost(network, &ev.sender, ev.sender_name.as_deref())
            .await?;
        Ok("ok")
    }

    /// The sender's picture, on their ghost.
    async fn remote_avatar(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        hash: &str,
        data: Option<&[u8]>,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Outcome, BridgeError> {
        if let Err(outcome) = self.admit_quietly(network, ev, taken).await? {
            return Ok(outcome);
        }
        self.set_ghost_avatar(network, &ev.sender, ev.sender_name.as_deref(), hash, data)
            .await
    }

    /// The portal of the event's chat, created when the event may create one.
    async fn portal_of(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Step<(PortalKey, PortalRecord)>, BridgeError> {
        let key = portal_key(network, ev);
        if let Some(p) = self.store.portal(&key)? {
            return Ok(Ok((key, p)));
        }
        Ok(self
            .create_portal_for(&key, ev, taken)
            .await?
            .map(|p| (key, p)))
    }

    /// [`Bridge::portal_of`], unless its room is encrypted: nothing crosses into an encrypted
    /// room (it would arrive unencrypted), and the sender of a message is told why.
    async fn open_portal(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Step<(PortalKey, PortalRecord)>, BridgeError> {
        let (key, portal) = match self.portal_of(network, ev, taken).await? {
            Ok(p) => p,
            Err(outcome) => return Ok(Err(outcome)),
        };
        if portal.encrypted {
            if matches!(ev.kind, RemoteEventKind::Message { .. }) {
                self.network(network)?
                    .undelivered(
                        ev,
                        "the Matrix room of this chat is encrypted, which the bridge cannot handle yet; this message was not delivered",
                    )
                    .await;
            }
            return Ok(Err("room_encrypted"));
        }
        Ok(Ok((key, portal)))
    }

    /// What an event of the sender in a chat needs: the chat's open portal, and the sender's
    /// ghost in its room (made within the limits, and joined, unless the sender leaves).
    async fn enter_chat(
        &self,
        seq: u64,
        network: &NetworkId,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Step<InChat>, BridgeError> {
        let (key, portal) = match self.open_portal(network, ev, taken).await? {
            Ok(p) => p,
            Err(outcome) => return Ok(Err(outcome)),
        };
        if portal.kind == ChatKind::Fanout
            && !portal.members.iter().any(|m| m == ev.sender.as_str())
        {
            info!(portal = %key, sender = %ev.sender, "event from someone who is not a member of the room; dropped");
            return Ok(Err("not_member"));
        }
        let leaving = matches!(
            ev.kind,
            RemoteEventKind::Membership {
                change: MembershipChange::Leave
            }
        );
        if let Err(limit) = self.admit_ghost(network, ev, taken)? {
            // Over the limit: a message is refused and its sender told; joins and the like
            // are dropped quietly (the ghost comes with the sender's first message).
            let message = matches!(ev.kind, RemoteEventKind::Message { .. });
            self.rate_limited(network, ev, limit, message).await;
            return Ok(Err("rate_limited"));
        }
        if leaving && !self.ghost_exists(network, &ev.sender)? {
            // Someone whose ghost was never made leaves: nothing to do.
            return Ok(Err("no_ghost"));
        }
        let ghost = self
            .ensure_ghost(network, &ev.sender, ev.sender_name.as_deref())
            .await?;
        if !leaving {
            // In a direct chat, someone other than the contact (the user's own account,
            // writing from another device) is invited by the contact's ghost, who made the
            // room.
            let inviter = (portal.kind == ChatKind::Direct
                && ev.sender.as_str() != key.chat.as_str())
            .then(|| self.ghost_user_id(network, key.chat.as_str()));
            self.ensure_joined_via(&ghost, &portal.room_id, inviter.as_deref())
                .await?;
        }
        Ok(Ok(InChat {
            gid: user_id(&ghost)?,
            rid: room_id(&portal.room_id)?,
            txn: format!("isthmus.{seq}"),
            key,
            portal,
            ghost,
        }))
    }

    /// Records another ID of a bridged message.
    fn message_alias(
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
    async fn remote_moderation(
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
            .hs
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
                let e = BridgeError::from(e);
                if e.is_transient() {
                    return Err(e);
                }
                warn!(room_id = %portal.room_id, error = %crate::error::chain(&e), "could not apply a remote moderation (the bridge may lack power in the room)");
                Ok("forbidden")
            }
        }
    }

    /// A new message, sent by the sender's ghost (in parts when too large for one event).
    async fn remote_message(
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
            .send_message_parts(&at.gid, &at.rid, &at.txn, &c, ev.timestamp_ms)
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
    async fn remote_edit(
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
        self.hs
            .send_message(
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
    async fn remote_redaction(
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
                self.hs
                    .redact(Some(&at.gid), &at.rid, &eid, &at.txn, None)
                    .await?;
                self.store.delete_message(&orig)?;
                Ok("ok")
            }
        }
    }

    /// A reaction added (an `m.reaction` by the ghost) or removed (that event redacted).
    async fn remote_reaction(
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
                self.hs
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
                    .hs
                    .send_message(
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
    async fn remote_receipt(
        &self,
        at: &InChat,
        up_to: &RemoteMessageId,
    ) -> Result<Outcome, BridgeError> {
        let Some(m) = self.store.message_by_remote(&at.key, up_to)? else {
            return Ok("unknown_target");
        };
        let eid = event_id(&m.event_id)?;
        self.hs
            .send_read_receipt(Some(&at.gid), &at.rid, &eid)
            .await?;
        Ok("ok")
    }

    /// Tells the Matrix sender, as a reply to their message, that the network bounced it.
    async fn delivery_failed(
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
        self.hs
            .send_message(
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
    async fn contact_request(
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
        let text = super::management::request_text(&who, &display, network, ev.sender.as_str());
        self.mark_request_shown(user, network, ev.sender.as_str())?;
        self.send_notice(None, &room, &format!("isthmus.{seq}.contact"), &text)
            .await?;
        if opened {
            // Requests that waited while the user had no management room.
            self.show_pending_requests(user, &room).await?;
        }
        Ok("ok")
    }

    /// Creates the portal for an event that has none, when the event may create one; else
    /// says why not (the result for the metrics).
    async fn create_portal_for(
        &self,
        key: &PortalKey,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Step<PortalRecord>, BridgeError> {
        const NO_PORTAL: Step<PortalRecord> = Err("no_portal");
        if ev.chat_kind == ChatKind::Group
            && let Some(alias) = self.network(&key.network)?.hosted_room_alias(&key.chat)
        {
            return self.adopt_hosted_room(key, &alias).await.map(Ok);
        }
        if ev.chat_kind == ChatKind::Fanout {
            // Fan-out chats exist only once a Matrix user invited someone into the room.
            info!(portal = %key, sender = %ev.sender, "event for a room that has no such remote members; dropped");
            return Ok(NO_PORTAL);
        }
        let direct_exists =
            ev.chat_kind == ChatKind::Direct && matches!(ev.kind, RemoteEventKind::ChatExists);
        if !matches!(ev.kind, RemoteEventKind::Message { .. }) && !direct_exists {
            debug!(portal = %key, kind = ev.kind.name(), "no portal for this event; dropped");
            return Ok(NO_PORTAL);
        }
        let Some(receiver) = ev.receiver.as_deref() else {
            warn!(portal = %key, "event for a chat without portal names no Matrix user; dropped");
            return Ok(NO_PORTAL);
        };
        if self.in_namespace(receiver) || self.level(receiver) < PermissionLevel::User {
            warn!(portal = %key, receiver, "receiver may not use the bridge; message dropped");
            return Ok(NO_PORTAL);
        }
        // A remote sender's message opening a chat counts against the limits; a chat the
        // user's own contact list holds (`ChatExists`) does not.
        if !direct_exists && let Err(limit) = self.admit_portal(&key.network, ev, receiver, taken) {
            self.rate_limited(&key.network, ev, limit, true).await;
            return Ok(Err("rate_limited"));
        }
        // Networks ask before accepting; this holds for every network and for events stored
        // before the check existed: no room is made for a user who does not exist.
        match self.matrix_user_status(receiver).await {
            crate::network::MatrixUserStatus::Reachable => {}
            crate::network::MatrixUserStatus::NotFound => {
                warn!(portal = %key, receiver, "receiver does not exist; message dropped");
                return Ok(NO_PORTAL);
            }
            crate::network::MatrixUserStatus::Unknown => {
                return Err(BridgeError::Matrix(crate::matrix::MatrixError::Http(
                    "could not tell whether the receiver exists".into(),
                )));
            }
        }
        let portal = match ev.chat_kind {
            ChatKind::Direct => {
                self.create_dm_portal(key, receiver, ev.sender_name.as_deref())
                    .await?
            }
            ChatKind::Fanout => return Ok(NO_PORTAL),
            ChatKind::Group => {
                let alias = self.alias_localpart(&key.network, key.chat.as_str());
                self.create_group_portal(key, None, None, Some(alias), vec![receiver.to_owned()])
                    .await?
            }
        };
        Ok(Ok(portal))
    }

    /// Whether the ghost of `user` exists (registered on the homeserver).
    fn ghost_exists(&self, network: &NetworkId, user: &RemoteUserId) -> Result<bool, BridgeError> {
        let mxid = self.ghost_user_id(network, user.as_str());
        Ok(self.store.ghost(&mxid)?.is_some_and(|g| g.registered))
    }

    /// The key of the bucket of `user`'s domain, as the network groups its users.
    fn domain_key(&self, network: &NetworkId, user: &RemoteUserId) -> String {
        let group = self
            .networks
            .get(network)
            .map(|c| c.rate_key(user))
            .unwrap_or_else(|| user.to_string());
        format!("{network}\u{1f}{group}")
    }

    /// Whether the sender of `ev` may have a ghost: always when it has one; else when the
    /// limit of new ghosts of the sender's domain admits one (messages draw on a larger
    /// budget than joins, presence and profiles). A leave never creates a ghost.
    fn admit_ghost(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Result<(), Limit>, BridgeError> {
        let leaving = matches!(
            ev.kind,
            RemoteEventKind::Membership {
                change: MembershipChange::Leave
            }
        );
        if leaving || self.ghost_exists(network, &ev.sender)? {
            return Ok(Ok(()));
        }
        let limit = match ev.kind {
            RemoteEventKind::Message { .. } => Limit::MessageGhostsPerDomain,
            _ => Limit::GhostsPerDomain,
        };
        let domain = self.domain_key(network, &ev.sender);
        let admitted = self.limits.admit(&[(limit, &domain)], Instant::now());
        if admitted.is_ok() {
            taken.push((limit, domain));
        }
        Ok(admitted)
    }

    /// Whether the message `ev` may open a new chat for `receiver`: the limits of its sender,
    /// its sender's domain and the receiver's invites must all admit it.
    fn admit_portal(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        receiver: &str,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<(), Limit> {
        let sender = format!("{network}\u{1f}{}", ev.sender);
        let domain = self.domain_key(network, &ev.sender);
        self.limits.admit(
            &[
                (Limit::PortalsPerSender, &sender),
                (Limit::PortalsPerDomain, &domain),
                (Limit::InvitesPerUser, receiver),
            ],
            Instant::now(),
        )?;
        taken.extend([
            (Limit::PortalsPerSender, sender),
            (Limit::PortalsPerDomain, domain),
            (Limit::InvitesPerUser, receiver.to_owned()),
        ]);
        Ok(())
    }

    /// Counts a refusal by `limit`; with `tell`, the remote sender learns why on its network.
    async fn rate_limited(&self, network: &NetworkId, ev: &RemoteEvent, limit: Limit, tell: bool) {
        self.metrics
            .rate_limited
            .with_label_values(&[limit.name()])
            .inc();
        debug!(network = %network, sender = %ev.sender, chat = %ev.chat, limit = limit.name(), "over a rate limit; nothing created");
        if tell && let Some(connector) = self.networks.get(network) {
            connector.undelivered(ev, limit.reason()).await;
        }
    }

    /// Makes an existing Matrix room (by alias) the portal of a group chat the network hosts
    /// for it: the bot joins, and the network learns who is already in the room.
    async fn adopt_hosted_room(
        &self,
        key: &PortalKey,
        alias: &str,
    ) -> Result<PortalRecord, BridgeError> {
        let room = self.hs.join(None, alias).await?;
        self.note_joined(self.bot().as_str(), room.as_str(), true);
        let record = PortalRecord::new(key.clone(), room.as_str(), ChatKind::Group);
        self.save_portal(&record)?;
        if let Err(e) = self.write_bridge_info(&record, None).await {
            debug!(error = %crate::error::chain(&e), "could not write bridge info into a hosted room (the bot may lack power)");
        }
        self.join_members(&record).await?;
        tracing::info!(room_id = %room, alias, portal = %key, "hosted group chat bridged to its room");
        Ok(record)
    }

    /// The Matrix members of the room group chat `chat` stands for, that the network's
    /// bridge-wide identity speaks for (see [`crate::network::RemoteEventHandler::group_members`]).
    /// A hosted room without a portal yet is joined by the bot to read them; the portal
    /// itself is still made on its queue, by the event of the remote user's join.
    pub async fn group_members(
        &self,
        network: &NetworkId,
        chat: &crate::network::RemoteChatId,
    ) -> Result<Vec<crate::network::MatrixSender>, BridgeError> {
        let key = PortalKey::new(network.as_str(), chat.as_str(), None);
        let room = match self.store.portal(&key)? {
            Some(p) => p.room_id,
            None => {
                let Some(alias) = self.network(network)?.hosted_room_alias(chat) else {
                    return Ok(Vec::new());
                };
                let room = self.hs.join(None, &alias).await?;
                self.note_joined(self.bot().as_str(), room.as_str(), true);
                room.to_string()
            }
        };
        let record = PortalRecord::new(key, &room, ChatKind::Group);
        let mut out = Vec::new();
        for member in self.hs.joined_members(None, &room_id(&room)?).await? {
            if self.in_namespace(member.as_str()) {
                continue;
            }
            if let Ok((_, false)) = self.client_for(&record, member.as_str()) {
                out.push(self.matrix_sender(member.as_str()).await);
            }
        }
        Ok(out)
    }

    /// Tells the network about the Matrix users already in a group portal's room (the network
    /// joins them to the group chat where it needs to).
    pub async fn join_members(&self, record: &PortalRecord) -> Result<(), BridgeError> {
        let members = self
            .hs
            .joined_members(None, &room_id(&record.room_id)?)
            .await?;
        let portal = super::portal_ref(record);
        for member in members.iter().filter(|m| !self.in_namespace(m.as_str())) {
            if let Ok((client, false)) = self.client_for(record, member.as_str()) {
                let sender = self.matrix_sender(member.as_str()).await;
                if let Err(e) = client.join_chat(&portal, &sender).await {
                    warn!(user = %member, error = %crate::error::chain(&e), "could not join a member to the group chat");
                }
            }
        }
        Ok(())
    }

    /// Writes a changed name or topic into a portal room.
    async fn update_chat_info(
        &self,
        portal: &PortalRecord,
        name: Option<&str>,
        topic: Option<&str>,
    ) -> Result<(), BridgeError> {
        let speaker = user_id(&self.portal_speaker(portal))?;
        let rid = room_id(&portal.room_id)?;
        let mut updated = portal.clone();
        if let Some(n) = name
            && portal.name.as_deref() != Some(n)
        {
            self.hs
                .send_state(Some(&speaker), &rid, "m.room.name", "", &json!({"name": n}))
                .await?;
            updated.name = Some(n.to_owned());
        }
        if let Some(t) = topic
            && portal.topic.as_deref() != Some(t)
        {
            self.hs
                .send_state(
                    Some(&speaker),
                    &rid,
                    "m.room.topic",
                    "",
                    &json!({"topic": t}),
                )
                .await?;
            updated.topic = Some(t.to_owned());
        }
        if &updated != portal {
            self.save_portal(&updated)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(body: &str, html: Option<&str>) -> MessageContent {
        MessageContent {
            kind: MessageKind::Text,
            body: body.into(),
            html: html.map(str::to_owned),
            mentions: Vec::new(),
            attachment: None,
        }
    }

    #[test]
    fn matrix_content_never_mentions_what_is_not_a_mention() {
        for (kind, msgtype) in [
            (MessageKind::Text, "m.text"),
            (MessageKind::Emote, "m.emote"),
            (MessageKind::Notice, "m.notice"),
        ] {
            let c = matrix_content(&MessageContent {
                kind,
                ..text("@room hi", None)
            });
            assert_eq!(
                c,
                json!({"msgtype": msgtype, "body": "@room hi", "m.mentions": {}})
            );
        }
        let mut m = text("hi", Some("<b>hi</b>"));
        m.mentions = vec!["@a:hs".into()];
        assert_eq!(
            matrix_content(&m),
            json!({"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": ["@a:hs"]},
                "format": "org.matrix.custom.html", "formatted_body": "<b>hi</b>"})
        );
    }

    #[test]
    fn an_edit_carries_the_new_content_and_a_marked_fallback() {
        for (body, html) in [("new", None), ("new", Some("<i>new</i>")), ("", None)] {
            let c = edit_content(&text(body, html), "$orig");
            assert_eq!(c["m.new_content"], matrix_content(&text(body, html)));
            assert_eq!(c["body"], json!(format!("* {body}")));
            assert_eq!(
                c["formatted_body"],
                html.map_or(Value::Null, |h| json!(format!("* {h}")))
            );
            assert_eq!(
                c["m.relates_to"],
                json!({"rel_type": "m.replace", "event_id": "$orig"})
            );
            // What Matrix clients read back is an edit of that event.
            let read: ruma::events::room::message::RoomMessageEventContent =
                serde_json::from_value(c).expect("a valid edit");
            assert!(matches!(
                read.relates_to,
                Some(ruma::events::room::message::Relation::Replacement(r)) if r.event_id == "$orig"
            ));
        }
    }
}
