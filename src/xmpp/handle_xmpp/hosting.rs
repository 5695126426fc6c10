//! XMPP → bridge: XMPP users joining, leaving and writing in Matrix rooms hosted as group
//! chats on the component.

use super::*;

impl Handler {
    /// An XMPP user joins, changes presence in, or leaves a hosted group chat.
    pub(super) async fn hosted_presence(&self, p: Presence) -> Vec<Stanza> {
        let (Some(from), Some(to)) = (p.from.clone(), p.to.clone()) else {
            return Vec::new();
        };
        let room = to.to_bare();
        let room_str = room.to_string();
        let Some(nick) = to.resource().map(|r| r.as_str().to_owned()) else {
            return Vec::new();
        };
        let Some(_alias) = self.shared.allowed_alias(&room) else {
            return vec![hosted::join_error(
                &to,
                &from,
                DefinedCondition::ItemNotFound,
                "no such group chat",
            )];
        };
        let Ok(contact) = self.shared.addressing.contact(&from.to_bare().to_string()) else {
            return vec![hosted::join_error(
                &to,
                &from,
                DefinedCondition::NotAllowed,
                "Matrix users join the Matrix room itself",
            )];
        };
        let leaving = p.type_ == PresenceType::Unavailable;
        if p.type_ != PresenceType::None && !leaving {
            return Vec::new();
        }
        // The first joiner's occupant list must hold the room's Matrix members: when none are
        // known yet (the room has no portal, or the bridge started since), ask the core.
        if !leaving
            && self.shared.hosted.is_unknown(&room_str)
            && let Some(sink) = self.shared.sink.get()
        {
            let chat = RemoteChatId::new(room_str.clone());
            let asked = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                sink.group_members(&chat),
            );
            let members = asked.await.unwrap_or_default();
            self.shared.hosted.add_members(
                &room_str,
                members.into_iter().map(|m| {
                    let nick = muc::nick_for(&m.displayname, &m.user_id);
                    (m.user_id, nick)
                }),
            );
        }
        let contact_str = contact.to_string();
        let (joined, out) =
            match self
                .shared
                .hosted
                .occupant_change(&room, &from, &nick, &contact_str, leaving)
            {
                hosted::Occupancy::Changed { joined, out } => (joined, out),
                hosted::Occupancy::Unchanged => return Vec::new(),
                hosted::Occupancy::NickTaken => {
                    return vec![hosted::join_error(
                        &to,
                        &from,
                        DefinedCondition::Conflict,
                        "that nick is taken",
                    )];
                }
            };
        info!(room = %room_str, nick, joined, "hosted group chat membership");
        let change = if joined {
            MembershipChange::Join
        } else {
            MembershipChange::Leave
        };
        self.push(
            RemoteEvent::group(
                &room_str,
                &contact.to_string(),
                RemoteEventKind::Membership { change },
            )
            .named(Some(nick)),
        )
        .await;
        if !joined {
            return out;
        }
        self.end_join(p, room, from, out)
    }

    /// Ends a join (XEP-0045 §7.2): after the occupant list, the room's latest messages as
    /// the join asked for them, then its subject, both read from the Matrix room. In the
    /// background, so that the link reads on meanwhile; everything goes out on the link's
    /// one queue, so the order holds.
    fn end_join(&self, p: Presence, room: BareJid, to: Jid, mut out: Vec<Stanza>) -> Vec<Stanza> {
        let (count, since) = hosted::history_wanted(&p, crate::network::now_ms());
        let (Ok(tasks), Some(sink)) = (self.shared.tasks(), self.shared.sink.get()) else {
            out.push(hosted::subject_message(&room, &to, ""));
            return out;
        };
        let shared = Arc::clone(&self.shared);
        let sink = sink.clone();
        tasks.spawn_loop(async move {
            let chat = RemoteChatId::new(room.to_string());
            let history = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                sink.group_history(&chat, count),
            )
            .await
            .unwrap_or_default();
            for m in history.messages.iter().filter(|m| m.timestamp_ms >= since) {
                let nick = shared
                    .hosted
                    .member_nick(room.as_str(), &m.sender.user_id)
                    .unwrap_or_else(|| muc::nick_for(&m.sender.displayname, &m.sender.user_id));
                let body = match &m.content.attachment {
                    Some(a) => a.url.clone(),
                    None => convert::outbound_body(&m.content),
                };
                let id = super::super::ids::stable_id(&m.event_id);
                out.extend(hosted::history_message(
                    &room,
                    &to,
                    &nick,
                    &id,
                    body,
                    m.timestamp_ms,
                ));
            }
            let topic = history.topic.as_deref().unwrap_or("");
            out.push(hosted::subject_message(&room, &to, topic));
            for stanza in out {
                if shared.out.send((stanza, None)).await.is_err() {
                    return;
                }
            }
        });
        Vec::new()
    }

    /// A message from an XMPP occupant to a hosted group chat: reflected to every occupant
    /// and bridged to the Matrix room.
    pub(super) async fn hosted_message(&self, msg: Message) -> Vec<Stanza> {
        let (Some(from), Some(to)) = (msg.from.clone(), msg.to.clone()) else {
            return Vec::new();
        };
        let room = to.to_bare();
        let room_str = room.to_string();
        if msg.type_ != MessageType::Groupchat {
            return Vec::new(); // private messages to occupants are not supported yet
        }
        let (nick, targets, nicks) = match self.shared.hosted.speaker(&room_str, &from) {
            hosted::Speaker::NoRoom => return Vec::new(),
            hosted::Speaker::Outsider => {
                let mut err = Message::new(Some(from.clone()));
                err.type_ = MessageType::Error;
                err.from = Some(Jid::from(room.clone()));
                err.payloads.push(
                    StanzaError::new(
                        ErrorType::Modify,
                        DefinedCondition::NotAcceptable,
                        "en",
                        "join the group chat first",
                    )
                    .into(),
                );
                return vec![err.into()];
            }
            hosted::Speaker::Occupant {
                nick,
                targets,
                members,
            } => (nick, targets, members),
        };
        let id = message_id(&msg);
        // Reflected to every occupant as the room shows it: from the sender's nick.
        let Ok(from_nick) = Jid::from_str(&format!("{room}/{nick}")) else {
            return Vec::new();
        };
        let out: Vec<Stanza> = targets
            .into_iter()
            .map(|t| {
                let mut copy = msg.clone();
                copy.from = Some(from_nick.clone());
                copy.to = Some(t);
                copy.into()
            })
            .collect();
        let Ok(contact) = self.shared.addressing.contact(&from.to_bare().to_string()) else {
            return out;
        };
        let sender = contact.to_string();
        let base = |kind| RemoteEvent::group(&room_str, &sender, kind).named(Some(nick.clone()));
        self.push_message(&base, &msg, &room_str, &sender, id, &nicks)
            .await;
        out
    }
}
