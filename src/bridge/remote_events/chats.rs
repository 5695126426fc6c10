//! Remote network → Matrix: the portal of an event's chat (found, or created when the event
//! may create one), entering it, and the Matrix members of group chats.

use super::*;

impl Bridge {
    /// The portal of the event's chat, created when the event may create one.
    pub(super) async fn portal_of(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Step<(PortalKey, PortalRecord)>, BridgeError> {
        let key = portal_key(network, ev);
        if let Some(p) = self.portals.get(&key)? {
            return Ok(Ok((key, p)));
        }
        Ok(self
            .create_portal_for(&key, ev, taken)
            .await?
            .map(|p| (key, p)))
    }

    /// [`Bridge::portal_of`], unless its room is encrypted: nothing crosses into an encrypted
    /// room (it would arrive unencrypted), and the sender of a message is told why.
    pub(super) async fn open_portal(
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
    pub(super) async fn enter_chat(
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
            .ghosts
            .ensure(network, &ev.sender, ev.sender_name.as_deref())
            .await?;
        if !leaving {
            // In a direct chat, someone other than the contact (the user's own account,
            // writing from another device) is invited by the contact's ghost, who made the
            // room.
            let inviter = (portal.kind == ChatKind::Direct
                && ev.sender.as_str() != key.chat.as_str())
            .then(|| self.ghost_user_id(network, key.chat.as_str()));
            self.ghosts
                .ensure_joined_via(&ghost, &portal.room_id, inviter.as_deref())
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

    /// Creates the portal for an event that has none, when the event may create one; else
    /// says why not (the result for the metrics).
    pub(super) async fn create_portal_for(
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
                self.portals
                    .create_group_portal(key, None, None, Some(alias), vec![receiver.to_owned()])
                    .await?
            }
        };
        Ok(Ok(portal))
    }

    /// Makes an existing Matrix room (by alias) the portal of a group chat the network hosts
    /// for it: the bot joins, and the network learns who is already in the room.
    pub(super) async fn adopt_hosted_room(
        &self,
        key: &PortalKey,
        alias: &str,
    ) -> Result<PortalRecord, BridgeError> {
        let room = self.rooms.join(None, alias).await?;
        self.ghosts
            .note_joined(self.bot().as_str(), room.as_str(), true);
        let record = PortalRecord::new(key.clone(), room.as_str(), ChatKind::Group);
        self.portals.save(&record)?;
        if let Err(e) = self.write_bridge_info(&record, None).await {
            debug!(error = %crate::error::chain(&e), "could not write bridge info into a hosted room (the bot may lack power)");
        }
        self.join_members(&record).await?;
        tracing::info!(room_id = %room, alias, portal = %key, "hosted group chat bridged to its room");
        Ok(record)
    }

    /// The room group chat `chat` of `network` stands for: its portal's, else, for a chat
    /// the network hosts for a Matrix room, the room of its alias, which the bot joins to
    /// read it (the portal itself is still made on its queue, by the event of the remote
    /// user's join). `None` when there is no such room.
    async fn group_room(
        &self,
        network: &NetworkId,
        chat: &crate::network::RemoteChatId,
    ) -> Result<Option<String>, BridgeError> {
        let key = PortalKey::new(network.as_str(), chat.as_str(), None);
        if let Some(p) = self.portals.get(&key)? {
            return Ok(Some(p.room_id));
        }
        let Some(alias) = self.network(network)?.hosted_room_alias(chat) else {
            return Ok(None);
        };
        let room = self.rooms.join(None, &alias).await?;
        self.ghosts
            .note_joined(self.bot().as_str(), room.as_str(), true);
        Ok(Some(room.to_string()))
    }

    /// The Matrix members of the room group chat `chat` stands for, that the network's
    /// bridge-wide identity speaks for (see [`crate::network::RemoteEventHandler::group_members`]).
    pub async fn group_members(
        &self,
        network: &NetworkId,
        chat: &crate::network::RemoteChatId,
    ) -> Result<Vec<crate::network::MatrixSender>, BridgeError> {
        let Some(room) = self.group_room(network, chat).await? else {
            return Ok(Vec::new());
        };
        let key = PortalKey::new(network.as_str(), chat.as_str(), None);
        let record = PortalRecord::new(key, &room, ChatKind::Group);
        let mut out = Vec::new();
        for member in self.rooms.members(None, &room_id(&room)?).await? {
            if self.in_namespace(member.as_str()) {
                continue;
            }
            if let Ok((_, false)) = self.client_for(&record, member.as_str()) {
                out.push(self.matrix_sender(member.as_str()).await);
            }
        }
        Ok(out)
    }

    /// The topic and latest messages of the room group chat `chat` stands for (see
    /// [`crate::network::RemoteEventHandler::group_history`]). The bot's own notices are
    /// left out; so are edits (the history shows what was first sent), reactions, redacted
    /// events and kinds with no network form.
    pub async fn group_history(
        &self,
        network: &NetworkId,
        chat: &crate::network::RemoteChatId,
        limit: u32,
    ) -> Result<crate::network::RoomHistory, BridgeError> {
        let Some(room) = self.group_room(network, chat).await? else {
            return Ok(Default::default());
        };
        let rid = room_id(&room)?;
        let topic = self.rooms.topic(&rid).await?;
        let mut messages = Vec::new();
        if limit > 0 {
            let bot = self.bot();
            // Joins and other state come between the messages: read up to ten times as
            // many events as messages are wanted.
            let limit = limit as usize;
            let found = self
                .rooms
                .latest_events(&rid, limit, limit * 10, |event| {
                    let past = past_message(event, bot.as_str())?;
                    let content = self.outgoing_content(&past.msgtype)?;
                    Some((past, content))
                })
                .await?;
            for (past, content) in found.into_iter().rev() {
                messages.push(crate::network::PastMessage {
                    sender: self.matrix_sender(&past.sender).await,
                    event_id: past.event_id,
                    content,
                    timestamp_ms: past.sent_ms,
                });
            }
        }
        Ok(crate::network::RoomHistory { topic, messages })
    }

    /// Tells the network about the Matrix users already in a group portal's room (the network
    /// joins them to the group chat where it needs to).
    pub async fn join_members(&self, record: &PortalRecord) -> Result<(), BridgeError> {
        let members = self.rooms.members(None, &room_id(&record.room_id)?).await?;
        let portal = super::super::portal_ref(record);
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
    pub(super) async fn update_chat_info(
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
            self.sender
                .state(Some(&speaker), &rid, "m.room.name", "", &json!({"name": n}))
                .await?;
            updated.name = Some(n.to_owned());
        }
        if let Some(t) = topic
            && portal.topic.as_deref() != Some(t)
        {
            self.sender
                .state(
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
            self.portals.save(&updated)?;
        }
        Ok(())
    }
}

/// A message of a room's history, as read from the homeserver.
struct PastEvent {
    sender: String,
    event_id: String,
    msgtype: ruma::events::room::message::MessageType,
    sent_ms: u64,
}

/// What a timeline event read from the homeserver shows in a room's history; `None` for
/// anything else (state, reactions, edits, redacted events, the bot's notices, an event
/// that does not read).
fn past_message(event: &serde_json::Value, bot: &str) -> Option<PastEvent> {
    use ruma::events::room::message::{Relation, RoomMessageEventContent};
    #[derive(serde::Deserialize)]
    struct Timeline {
        #[serde(rename = "type")]
        kind: String,
        sender: String,
        event_id: String,
        origin_server_ts: u64,
        content: RoomMessageEventContent,
    }
    if event.get("type")?.as_str()? != "m.room.message" {
        return None;
    }
    let e: Timeline = serde_json::from_value(event.clone()).ok()?;
    if e.kind != "m.room.message"
        || e.sender == bot
        || matches!(e.content.relates_to, Some(Relation::Replacement(_)))
    {
        return None;
    }
    Some(PastEvent {
        sender: e.sender,
        event_id: e.event_id,
        msgtype: e.content.msgtype,
        sent_ms: e.origin_server_ts,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::past_message;

    #[test]
    fn only_messages_as_sent_make_history() {
        let text = |sender: &str, content: serde_json::Value| {
            json!({"type": "m.room.message", "sender": sender, "event_id": "$e",
                   "origin_server_ts": 5, "content": content})
        };
        let plain = text("@a:hs", json!({"msgtype": "m.text", "body": "hi"}));
        let past = past_message(&plain, "@bot:hs").expect("a text message");
        assert_eq!(
            (past.sender.as_str(), past.event_id.as_str(), past.sent_ms),
            ("@a:hs", "$e", 5)
        );
        let emote = text("@a:hs", json!({"msgtype": "m.emote", "body": "waves"}));
        assert!(past_message(&emote, "@bot:hs").is_some());
        let none = [
            // The bot's notices.
            text("@bot:hs", json!({"msgtype": "m.notice", "body": "bridged"})),
            // An edit.
            text(
                "@a:hs",
                json!({"msgtype": "m.text", "body": "* fixed", "m.new_content":
                       {"msgtype": "m.text", "body": "fixed"},
                       "m.relates_to": {"rel_type": "m.replace", "event_id": "$o"}}),
            ),
            // Redacted.
            text("@a:hs", json!({})),
            // Not a message.
            json!({"type": "m.reaction", "sender": "@a:hs", "event_id": "$r",
                   "origin_server_ts": 5, "content": {"m.relates_to":
                   {"rel_type": "m.annotation", "event_id": "$e", "key": "x"}}}),
            json!({"type": "m.room.topic", "sender": "@a:hs", "event_id": "$t",
                   "origin_server_ts": 5, "state_key": "", "content": {"topic": "t"}}),
            // Missing what a history line needs.
            json!({"type": "m.room.message", "sender": "@a:hs", "event_id": "$e",
                   "content": {"msgtype": "m.text", "body": "no time"}}),
        ];
        for event in none {
            assert!(past_message(&event, "@bot:hs").is_none(), "{event}");
        }
    }
}
