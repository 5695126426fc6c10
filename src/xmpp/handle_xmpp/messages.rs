//! XMPP → bridge: message stanzas. Each is routed by its type (an error, a hosted room, a
//! group chat, a direct chat); a direct message becomes a message, an edit, a retraction,
//! reactions, a read marker or a typing notice for its Matrix user, with its receipt once
//! stored. What a message with content carries is read here for every kind of chat; copies of
//! what an own account sent from another client, and messages of ours that bounced, also come
//! through here.

use super::*;

impl Handler {
    /// Pushes what an inbound message with content carries: a correction, a retraction or a
    /// reaction set (diffed against the sender's previous set), else a new message (a reply
    /// when it says so, its fallback quote removed). Returns false when there was nothing to
    /// push (no body and no fidelity payload). `scope` names the conversation for the stored
    /// reaction sets.
    pub(super) async fn push_message(
        &self,
        base: &(dyn Fn(RemoteEventKind) -> RemoteEvent + Sync),
        msg: &Message,
        scope: &str,
        sender: &str,
        id: String,
        nicks: &[(String, String)],
    ) -> Option<bool> {
        let body = msg.bodies.values().next().cloned();
        let mut stored = true;
        match fidelity::classify(&msg.payloads) {
            Some(fidelity::Kind::Correction(target)) => {
                let body = body?;
                let content = convert::inbound_content(&body, &msg.payloads, nicks);
                stored &= self
                    .push(base(RemoteEventKind::Edit {
                        target: RemoteMessageId::new(target),
                        content,
                    }))
                    .await;
            }
            Some(fidelity::Kind::Retraction(target)) => {
                stored &= self
                    .push(base(RemoteEventKind::Redaction {
                        target: RemoteMessageId::new(target),
                    }))
                    .await;
            }
            Some(fidelity::Kind::Reactions(target, keys)) => {
                let Ok(store) = self.shared.store() else {
                    return Some(false);
                };
                let key = format!("rin:{scope}\u{1f}{sender}\u{1f}{target}");
                let (added, removed) = match fidelity::diff_reactions(store, &key, &keys) {
                    Ok(d) => d,
                    Err(e) => {
                        warn!(error = %crate::error::chain(&e), "could not store a reaction set");
                        return Some(false);
                    }
                };
                let changes = added
                    .into_iter()
                    .map(|k| (k, false))
                    .chain(removed.into_iter().map(|k| (k, true)));
                for (key, remove) in changes {
                    stored &= self
                        .push(base(RemoteEventKind::Reaction {
                            target: RemoteMessageId::new(target.clone()),
                            key,
                            remove,
                        }))
                        .await;
                }
            }
            None => {
                let body = body?;
                let reply_to = fidelity::reply_target(&msg.payloads).map(RemoteMessageId::new);
                let body = if reply_to.is_some() {
                    fidelity::strip_fallback(&body, &msg.payloads, fidelity::REPLY)
                } else {
                    body
                };
                let content = match convert::attachment(&body, &msg.payloads) {
                    Some((attachment, caption)) => MessageContent {
                        attachment: Some(attachment),
                        ..MessageContent::text(caption)
                    },
                    None => convert::inbound_content(&body, &msg.payloads, nicks),
                };
                stored &= self
                    .push(base(RemoteEventKind::Message {
                        id: RemoteMessageId::new(id),
                        content,
                        reply_to,
                    }))
                    .await;
            }
        }
        Some(stored)
    }

    /// A message of ours came back as an error: the Matrix sender is told.
    async fn bounced(&self, msg: &Message) {
        let (Some(from), Some(to), Some(id)) = (&msg.from, &msg.to, &msg.id) else {
            return;
        };
        let Some(user) = self.shared.user_of(&to.to_bare()) else {
            return;
        };
        let error = msg.payloads.iter().find(|p| p.name() == "error");
        let condition = error
            .and_then(|e| e.children().find(|c| c.name() != "text"))
            .map(|c| c.name().replace('-', " "))
            .unwrap_or_else(|| "unknown error".into());
        let text = error
            .and_then(|e| e.children().find(|c| c.name() == "text"))
            .map(|t| t.text())
            .filter(|t| !t.is_empty());
        let reason = match text {
            Some(t) => format!("{condition} ({t})"),
            None => condition,
        };
        info!(from = %from, user, reason, "an XMPP message bounced");
        let room = from.to_bare();
        let chat = room.to_string();
        let receiver = (!self.shared.rooms.is_room(&chat)).then_some(user);
        let kind = RemoteEventKind::DeliveryFailed {
            target: RemoteMessageId::new(id.0.clone()),
            reason,
        };
        let event = match receiver {
            Some(user) => RemoteEvent::direct(&chat, &user, kind),
            None => RemoteEvent::group(&chat, &chat, kind),
        };
        self.push(event).await;
    }

    /// A message the user of own account `own` sent to a contact from another client (a
    /// carbon copy, XEP-0280): it appears in Matrix from the account's own puppet.
    pub(in crate::xmpp) async fn sent_elsewhere(&self, msg: Message, own: &BareJid, user: &str) {
        if !matches!(msg.type_, MessageType::Chat | MessageType::Normal) {
            return;
        }
        let Some(contact) = msg.to.as_ref().and_then(|t| {
            self.shared
                .addressing
                .contact(&t.to_bare().to_string())
                .ok()
        }) else {
            return;
        };
        let me = own.to_string();
        // Archived copies carry their archive's time (stamped by the account's server).
        let sent_at = trusted_delay_ms(&msg, own.domain().as_str());
        let base = |kind| {
            let mut ev = RemoteEvent::direct(&contact.to_string(), user, kind).at(sent_at);
            ev.sender = crate::network::RemoteUserId::new(me.as_str());
            ev
        };
        let scope = format!("{user}\u{1f}{contact}");
        self.push_message(&base, &msg, &scope, &me, message_id(&msg), &[])
            .await;
    }

    pub(super) async fn message(&self, msg: Message) -> Vec<Stanza> {
        if msg.type_ == MessageType::Error {
            self.bounced(&msg).await;
            return Vec::new();
        }
        if let Some(to) = &msg.to
            && to.node().is_some_and(|n| n.as_str().starts_with('#'))
        {
            return self.hosted_message(msg).await;
        }
        if msg.type_ == MessageType::Groupchat {
            self.muc_message(msg).await;
            return Vec::new();
        }
        if !matches!(msg.type_, MessageType::Chat | MessageType::Normal) {
            debug!(type_ = ?msg.type_, "message type not bridged yet");
            return Vec::new();
        }
        let Some((contact, user)) = self.parties(&msg.from, &msg.to) else {
            debug!(from = ?msg.from, to = ?msg.to, "message not between a contact and a Matrix user; ignored");
            return Vec::new();
        };
        // RFC 6121 §8.5.1: a message to a user who does not exist is answered
        // `service-unavailable`, and nothing is created for it.
        match self.user_status(&msg.to, &user).await {
            MatrixUserStatus::Reachable => {}
            MatrixUserStatus::NotFound => {
                info!(contact = %contact, user, "message to a Matrix user who does not exist");
                return vec![message_error(
                    &msg,
                    ErrorType::Cancel,
                    DefinedCondition::ServiceUnavailable,
                    "no such Matrix user",
                )];
            }
            MatrixUserStatus::Unknown => {
                return vec![message_error(
                    &msg,
                    ErrorType::Wait,
                    DefinedCondition::RemoteServerTimeout,
                    TRY_LATER,
                )];
            }
        }
        let nick = payloads::find::<Nick>(&msg.payloads, "nick", ns::NICK)
            .map(|n| n.0)
            .filter(|n| !n.trim().is_empty());
        // Offline storage and archives mark the original time (XEP-0203).
        let sent_at = msg
            .to
            .as_ref()
            .and_then(|to| trusted_delay_ms(&msg, to.domain().as_str()));
        let base = |kind| {
            RemoteEvent::direct(&contact.to_string(), &user, kind)
                .named(nick.clone())
                .at(sent_at)
        };
        if nick.is_none() {
            self.fetch_vcard(&contact, &user, false);
        }
        if let Some(from) = msg.from.as_ref().filter(|f| f.resource().is_some()) {
            self.shared.resources.note(&contact.to_string(), from);
        }
        let scope = format!("{user}\u{1f}{contact}");
        // Chat markers (XEP-0333): `displayed` is a read receipt.
        if let Some(Displayed { id }) =
            payloads::find::<Displayed>(&msg.payloads, "displayed", ns::DISPLAYED_MARKERS)
        {
            self.push(base(RemoteEventKind::Receipt {
                up_to: RemoteMessageId::new(id.0),
            }))
            .await;
            return Vec::new();
        }
        // A delivery receipt (XEP-0184) is asked for: given once the message is stored.
        let receipt_to =
            payloads::find::<receipts::Request>(&msg.payloads, "request", ns::RECEIPTS)
                .and(msg.id.clone())
                .map(|id| {
                    let mut r = Message::new(msg.from.clone());
                    r.type_ = MessageType::Chat;
                    r.from = msg.to.clone();
                    r.payloads.push(receipts::Received { id: id.0 }.into());
                    Stanza::from(r)
                });
        match self
            .push_message(
                &base,
                &msg,
                &scope,
                &contact.to_string(),
                message_id(&msg),
                &[],
            )
            .await
        {
            // The receipt only once the message is safely stored.
            Some(true) => return receipt_to.into_iter().collect(),
            // Not stored: the sender learns it may try again, instead of the message
            // vanishing.
            Some(false) => return not_stored(&msg).into_iter().collect(),
            None => {}
        }
        let chat_state = msg
            .payloads
            .iter()
            .filter(|p| p.has_ns(ns::CHATSTATES))
            .find_map(|p| ChatState::try_from(p.clone()).ok());
        match chat_state {
            Some(ChatState::Composing) => {
                self.push(base(RemoteEventKind::Typing { active: true }))
                    .await;
            }
            Some(ChatState::Paused | ChatState::Active | ChatState::Inactive | ChatState::Gone) => {
                self.push(base(RemoteEventKind::Typing { active: false }))
                    .await;
            }
            None => {}
        }
        Vec::new()
    }
}
