//! Membership: invites of the bot (management rooms) and of ghosts (direct chats, members of
//! a room on networks without group chats), and Matrix users joining and leaving portal
//! rooms.

use ruma::events::room::member::{MembershipState, RoomMemberEventContent};
use tracing::{debug, info, warn};

use super::portal_ref;
use crate::bridge::event::MatrixEvent;
use crate::bridge::{Bridge, BridgeError, room_id, user_id};
use crate::config::PermissionLevel;
use crate::network::{ChatKind, NetworkId, RemoteUserId};
use crate::store::{PortalKey, PortalRecord};

impl Bridge {
    pub(super) async fn handle_membership(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        content: &RoomMemberEventContent,
    ) -> Result<(), BridgeError> {
        let Some(target) = ev.state_key.as_deref() else {
            return Ok(());
        };
        // A member event is how a change of display name reaches the bridge.
        self.matrix_users.forget_name(target);
        let membership = &content.membership;
        let is_direct = content.is_direct.unwrap_or(false);
        let gone = matches!(membership, MembershipState::Leave | MembershipState::Ban);
        if target == self.bot().as_str() {
            return match membership {
                MembershipState::Invite => self.bot_invited(seq, ev, is_direct).await,
                _ if gone => {
                    self.ghosts.note_joined(target, &ev.room_id, false);
                    self.portals.bot_left(&ev.room_id)?;
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
                    self.ghosts.note_joined(target, &ev.room_id, false);
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
        if let Some(p) = self.portals.by_room(&ev.room_id)?
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
            if let Some(p) = self.portals.by_room(&ev.room_id)?
                && p.kind == ChatKind::Direct
                && p.key.receiver.as_deref() == Some(target)
            {
                info!(room_id = %ev.room_id, user = target, "user left a direct chat; removing the portal");
                self.remove_portal(&p.key, &ev.room_id, true).await?;
            }
            self.portals.user_left(target, &ev.room_id)?;
        }
        Ok(())
    }

    /// A group portal's topic changed on Matrix: the network shows the new one where it
    /// can (see [`NetworkClient::set_topic`]), said by the user who changed it.
    pub(super) async fn topic_changed(
        &self,
        ev: &MatrixEvent,
        topic: &str,
    ) -> Result<(), BridgeError> {
        let Some(p) = self.portals.by_room(&ev.room_id)? else {
            return Ok(());
        };
        if p.kind != ChatKind::Group {
            return Ok(());
        }
        let Ok((client, false)) = self.client_for(&p, &ev.sender) else {
            return Ok(());
        };
        let user = self.matrix_sender(&ev.sender).await;
        match client.set_topic(&portal_ref(&p), &user, topic).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_transient() => Err(BridgeError::Network {
                network: p.key.network.clone(),
                source: e,
            }),
            Err(e) => {
                debug!(room_id = %ev.room_id, error = %crate::error::chain(&e), "a change of topic was not bridged");
                Ok(())
            }
        }
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
            self.rooms.leave(None, &rid).await?;
            return Ok(());
        }
        self.rooms.join(None, ev.room_id.as_str()).await?;
        self.ghosts
            .note_joined(self.bot().as_str(), &ev.room_id, true);
        // A direct chat with the bot is the user's management room; in other rooms the bot
        // only answers prefixed commands.
        if is_direct {
            self.portals.set_management_room(&ev.sender, &ev.room_id)?;
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
                if self
                    .rooms
                    .join(Some(&gid), ev.room_id.as_str())
                    .await
                    .is_ok()
                {
                    let _ = self
                        .send_notice(
                            Some(ghost),
                            &ev.room_id,
                            &format!("isthmus.{seq}.refuse"),
                            &why,
                        )
                        .await;
                }
                self.rooms
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
            let main = self.portals.by_room(&ev.room_id)?;
            let own_chat = main.as_ref().is_some_and(|p| &p.key.network == network);
            if !own_chat && let Some(chat) = connector.fanout_chat(&ev.room_id) {
                self.ghosts.ensure(network, &remote_id, None).await?;
                if self.ghost_sees_encryption(&gid, ghost, &ev.room_id).await? {
                    return refuse(crate::bridge::encryption::REFUSAL.into()).await;
                }
                return self
                    .add_fanout_member(&ev.room_id, network, chat.as_str(), &remote_id, ghost)
                    .await;
            }
            return match main {
                Some(_) => {
                    self.ghosts.ensure(network, &remote_id, None).await?;
                    self.ghosts.ensure_joined(ghost, &ev.room_id).await
                }
                None => {
                    refuse("Invite me in a direct chat to talk to me, or bridge this room to a group chat first.".into())
                        .await
                }
            };
        }
        self.ghosts.ensure(network, &remote_id, None).await?;
        let key = PortalKey::new(network.as_str(), remote_id.as_str(), Some(&ev.sender));
        let mut record = PortalRecord::new(key.clone(), &ev.room_id, ChatKind::Direct);
        let old = self.portals.get(&key)?;
        if let Some(old) = &old
            && old.room_id != ev.room_id
        {
            info!(old_room = %old.room_id, new_room = %ev.room_id, "direct chat moved to a new room");
            record.relay = old.relay.clone();
        }
        // The portal is stored before the ghost joins: the user may write as soon as the
        // ghost is in, and that message must find its portal (and its queue). This runs on
        // the portal's queue: `queue_key` sends a direct invite of a ghost there.
        self.portals.save(&record)?;
        if self.ghost_sees_encryption(&gid, ghost, &ev.room_id).await? {
            // Refused rather than joined silently: the user learns at once why this chat
            // cannot work, and can start one without encryption.
            match &old {
                // The contact's earlier room stays its portal.
                Some(old) => {
                    self.portals.unindex_room(&key, &ev.room_id)?;
                    self.portals.save(old)?;
                }
                None => self.portals.forget(&record)?,
            }
            return refuse(crate::bridge::encryption::REFUSAL.into()).await;
        }
        self.ghosts.note_joined(ghost, &ev.room_id, true);
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
        self.rooms.join(Some(gid), room).await?;
        self.room_is_encrypted(Some(ghost), room).await
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
        self.ghosts.ensure(network, remote, None).await?;
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
        let mut record = match self.portals.get(key)? {
            Some(p) if p.room_id == room => p,
            Some(p) => {
                // Chat IDs are derived from room IDs; another room holding this one is a
                // collision, never silently taken over.
                warn!(room_id = room, other_room = %p.room_id, portal = %key, "fan-out chat already belongs to another room; invite refused");
                let gid = user_id(ghost)?;
                self.rooms.leave(Some(&gid), &room_id(room)?).await?;
                return Ok(());
            }
            None => PortalRecord::new(key.clone(), room, ChatKind::Fanout),
        };
        if !record.members.iter().any(|m| m == remote.as_str()) {
            record.members.push(remote.as_str().to_owned());
        }
        self.portals.save(&record)?;
        self.rooms.join(Some(&user_id(ghost)?), room).await?;
        self.ghosts.note_joined(ghost, room, true);
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
        for p in self.portals.fanouts(room)? {
            if &p.key.network != network {
                continue;
            }
            let (room, remote, normalised) =
                (room.to_owned(), remote.to_owned(), normalised.clone());
            let key = p.key;
            self.on_portal_queue(&key.clone(), move |b| async move {
                let Some(mut p) = b.portals.get(&key)?.filter(|p| p.room_id == room) else {
                    return Ok(());
                };
                let before = p.members.len();
                p.members.retain(|m| *m != remote && *m != normalised);
                if p.members.len() == before {
                    return Ok(());
                }
                info!(room_id = room, portal = %p.key, member = remote, "remote member left a room");
                if p.members.is_empty() {
                    b.portals.forget(&p)?;
                } else {
                    b.portals.save(&p)?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}
