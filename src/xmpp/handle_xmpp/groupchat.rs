//! XMPP → bridge: group chats hosted elsewhere (XEP-0045) that Matrix users are in: the
//! primary puppet's copy of each message, occupants' presence, and the rejoin after the
//! link comes up.

use super::*;

impl Handler {
    /// A message in a group chat the bridge is in.
    pub(super) async fn muc_message(&self, msg: Message) {
        let (Some(from), Some(to)) = (msg.from.as_ref(), msg.to.as_ref()) else {
            return;
        };
        let room = from.to_bare();
        let room_str = room.to_string();
        let Some(user) = self.shared.addressing.matrix_user(&to.to_bare()) else {
            return;
        };
        if self.shared.rooms.primary(&room_str).as_deref() != Some(user.as_str()) {
            return; // another puppet's copy of the same message
        }
        let Some(nick) = from.resource().map(|r| r.as_str().to_owned()) else {
            // From the room itself: a moderator removed a message (XEP-0425).
            if let Some((target, reason)) = fidelity::moderation(&msg.payloads) {
                self.push(RemoteEvent::group(
                    &room_str,
                    &room_str,
                    RemoteEventKind::Moderation {
                        target: RemoteMessageId::new(target),
                        reason,
                    },
                ))
                .await;
            }
            return;
        };
        let room_id = payloads::stanza_id(&msg.payloads, &room);
        if self.shared.rooms.is_puppet_nick(&room_str, &nick) {
            // Our own message, reflected by the room: not bridged again, but the room's ID for
            // it is remembered, since XMPP clients reply and react to it by that ID.
            let ours =
                payloads::origin_id(&msg.payloads).or_else(|| msg.id.as_ref().map(|i| i.0.clone()));
            if let (Some(target), Some(alias)) = (ours, room_id) {
                // Retractions, reactions and replies in a group chat name a message by the
                // room's ID: remember it for the ones the bridge sends.
                if let Ok(store) = self.shared.store() {
                    let _ = store.put(
                        &muc::stanza_id_key(&room_str, &target),
                        &serde_json::Value::String(alias.clone()),
                    );
                }
                self.push(RemoteEvent::group(
                    &room_str,
                    &room_str,
                    RemoteEventKind::MessageAlias {
                        target: RemoteMessageId::new(target),
                        alias: RemoteMessageId::new(alias),
                    },
                ))
                .await;
            }
            return;
        }
        let real = self.shared.rooms.occupant_real(&room_str, &nick);
        let sender = muc::occupant_id(&room, &nick, real.as_deref());
        // History replayed on (re)join keeps its original time.
        let delayed = delay_ms(&msg);
        self.note_seen(&room_str, delayed.unwrap_or_else(crate::network::now_ms));
        let base = |kind| {
            RemoteEvent::group(&room_str, &sender, kind)
                .named(Some(nick.clone()))
                .at(delayed)
        };
        let nicks = self.shared.rooms.puppet_nicks(&room_str);
        let id = room_id
            .or_else(|| payloads::origin_id(&msg.payloads))
            .or_else(|| msg.id.as_ref().map(|i| format!("{nick}/{}", i.0)))
            .unwrap_or_else(|| format!("noid-{}", crate::network::now_ms()));
        if self
            .push_message(&base, &msg, &room_str, &sender, id.clone(), &nicks)
            .await
            .is_some()
        {
            // Corrections name the original by its `id`: remember that one too.
            if let Some(raw) = msg.id.as_ref().map(|i| i.0.clone())
                && raw != id
                && fidelity::classify(&msg.payloads).is_none()
            {
                self.push(base(RemoteEventKind::MessageAlias {
                    target: RemoteMessageId::new(id),
                    alias: RemoteMessageId::new(raw),
                }))
                .await;
            }
            return;
        }
        if let Some(subject) = msg.subjects.values().next() {
            self.push(base(RemoteEventKind::ChatInfo {
                name: None,
                topic: Some(subject.clone()),
            }))
            .await;
        }
    }

    /// Presence of an occupant of a group chat the bridge is in.
    pub(super) async fn muc_presence(&self, p: Presence) {
        let (Some(from), Some(to)) = (p.from.as_ref(), p.to.as_ref()) else {
            return;
        };
        let room = from.to_bare();
        let room_str = room.to_string();
        let Some(nick) = from.resource().map(|r| r.as_str().to_owned()) else {
            return;
        };
        let Some(user) = self.shared.addressing.matrix_user(&to.to_bare()) else {
            return;
        };
        let own = p
            .payloads
            .iter()
            .filter(|x| x.is("x", ns::MUC_USER))
            .flat_map(|x| x.children())
            .any(|c| c.name() == "status" && c.attr("code") == Some("110"));
        if p.type_ == PresenceType::Error || (own && p.type_ == PresenceType::Unavailable) {
            // Our join failed (nick taken, members only, banned) or we were removed: the
            // puppet is out, so the next one becomes the room's primary, and a later message
            // from the user joins again.
            warn!(room = %room_str, nick, user, error = p.type_ == PresenceType::Error, "a Matrix user's puppet is not in the group chat");
            self.forget_puppet(&room_str, &user);
            return;
        }
        if own {
            // The room confirms (or changes, status 210) the nick it gave the puppet.
            if let Some(old) = self.shared.rooms.puppet_renamed(&room_str, &user, &nick) {
                info!(room = %room_str, user, old = %old, new = %nick, "the group chat changed a puppet's nick");
                if let Ok(store) = self.shared.store() {
                    let _ = muc::remember(store, &room_str, &user, &nick);
                }
            }
            return;
        }
        if self.shared.rooms.primary(&room_str).as_deref() != Some(user.as_str())
            || self.shared.rooms.is_puppet_nick(&room_str, &nick)
        {
            return;
        }
        let real = p
            .payloads
            .iter()
            .find(|x| x.is("x", ns::MUC_USER))
            .and_then(|x| x.children().find(|c| c.name() == "item"))
            .and_then(|item| item.attr("jid"))
            .and_then(|j| Jid::from_str(j).ok())
            .map(|j| j.to_bare().to_string().to_lowercase());
        let leaving = p.type_ == PresenceType::Unavailable;
        self.shared
            .rooms
            .occupant_seen(&room_str, &nick, real.clone(), leaving);
        let change = if leaving {
            MembershipChange::Leave
        } else {
            MembershipChange::Join
        };
        let occupant = muc::occupant_id(&room, &nick, real.as_deref());
        self.push(
            RemoteEvent::group(&room_str, &occupant, RemoteEventKind::Membership { change })
                .named(Some(nick)),
        )
        .await;
    }

    /// Remembers that the room had traffic at `ms`, persisted at most every 30 s (the rejoin
    /// after a restart asks for history from there).
    pub(super) fn note_seen(&self, room: &str, ms: u64) {
        let due = self.shared.rooms.note_seen(room, ms);
        if due && let Ok(store) = self.shared.store() {
            let _ = muc::remember_seen(store, room, ms);
        }
    }

    /// Forgets that a Matrix user's puppet is in a group chat.
    pub(super) fn forget_puppet(&self, room: &str, user: &str) {
        self.shared.rooms.remove_puppet(room, user);
        if let Ok(store) = self.shared.store() {
            let _ = muc::forget(store, room, user);
        }
    }

    /// Joins again every group chat the bridge was in (after the link came up).
    pub(super) fn rejoin_rooms(&self) {
        let Ok(store) = self.shared.store() else {
            return;
        };
        let joined = match muc::all_joined(store) {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "could not read the group chats to rejoin");
                return;
            }
        };
        let mut stanzas = Vec::new();
        for (room, user, nick) in joined {
            let (Ok(room_jid), Some(puppet)) = (
                BareJid::from_str(&room),
                self.shared.addressing.puppet(&user),
            ) else {
                continue;
            };
            self.shared.rooms.add_puppet(&room, &user, &nick);
            // Ask for what was said since the bridge last saw the room (a little before,
            // the overlap is dropped by message ID).
            let since = muc::last_seen(store, &room).map(|t| t.saturating_sub(5_000));
            if let Some(s) =
                muc::join_presence_since(muc::puppet_full(&puppet), &room_jid, &nick, false, since)
            {
                stanzas.push(s);
            }
        }
        if stanzas.is_empty() {
            return;
        }
        info!(count = stanzas.len(), "rejoining group chats");
        let out = self.shared.out.clone();
        let Ok(tasks) = self.shared.tasks() else {
            return;
        };
        tasks.spawn_loop(async move {
            for s in stanzas {
                if out.send((s, None)).await.is_err() {
                    break;
                }
            }
        });
    }
}
