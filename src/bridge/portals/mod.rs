//! [`Portals`]: the portals' records and rooms. A portal is a remote chat and the Matrix
//! room standing for it; this type keeps their records (looked up by chat or by room, and
//! written only on the portal's own queue), makes their rooms, describes them to clients
//! (the bridge info), runs their queues (`queues.rs`) and keeps the users' management rooms
//! (`management.rs`). What happens to a portal when an event arrives is the core's: the
//! [`super::Bridge`] handlers and the jobs of `portal_ops.rs` call in here.

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde_json::json;
use tracing::{error, info};

use self::queues::{Queues, on_queue_of};
use super::rooms::Rooms;
use super::{BridgeError, user_id};
use crate::config::Config;
use crate::matrix::RoomCreation;
use crate::network::{ChatKind, Connector, NetworkId};
use crate::store::{PortalKey, PortalRecord, Store, StoreError};

mod management;
pub(super) mod queues;

/// State event types that describe a bridged room (MSC2346 and its older name).
pub const BRIDGE_INFO_TYPES: [&str; 2] = ["m.bridge", "uk.half-shot.bridge"];

/// The portals: their records, their rooms, their queues, and the users' management rooms.
/// Holds its own handles on the store and on room administration.
pub(super) struct Portals {
    store: Store,
    rooms: Rooms,
    bot: OwnedUserId,
    /// The homeserver's server name, for aliases.
    server_name: String,
    /// `bridge.command_prefix`, named in a new management room's topic.
    command_prefix: String,
    /// The enabled networks, for the bridge info of their portals.
    networks: BTreeMap<NetworkId, Arc<dyn Connector>>,
    /// One ordered queue per portal.
    queues: Queues,
    /// Held while the bot opens a management room, so a user gets one.
    management_rooms: tokio::sync::Mutex<()>,
}

impl Portals {
    /// The portals of `networks`, stored in `store`, their rooms made through `rooms` by
    /// `bot`.
    pub(super) fn new(
        config: &Config,
        store: Store,
        rooms: Rooms,
        bot: OwnedUserId,
        networks: BTreeMap<NetworkId, Arc<dyn Connector>>,
    ) -> Self {
        Portals {
            store,
            rooms,
            bot,
            server_name: config.homeserver.domain.clone(),
            command_prefix: config.bridge.command_prefix.clone(),
            networks,
            queues: Queues::new(
                std::time::Duration::from_secs(config.bridge.portal_idle_seconds),
                config.bridge.quarantine_after_attempts,
            ),
            management_rooms: tokio::sync::Mutex::default(),
        }
    }

    /// The portals' queues.
    pub(super) fn queues(&self) -> &Queues {
        &self.queues
    }

    /// The portal of a remote chat, if it is bridged.
    pub(super) fn get(&self, key: &PortalKey) -> Result<Option<PortalRecord>, StoreError> {
        self.store.portal(key)
    }

    /// The main portal of a Matrix room (a direct chat or a group chat), if it has one.
    pub(super) fn by_room(&self, room: &str) -> Result<Option<PortalRecord>, StoreError> {
        self.store.portal_by_room(room)
    }

    /// The fan-out portals of a Matrix room, one per network whose users were invited.
    pub(super) fn fanouts(&self, room: &str) -> Result<Vec<PortalRecord>, StoreError> {
        self.store.fanout_portals(room)
    }

    /// Whether a Matrix room has fan-out portals.
    pub(super) fn has_fanout(&self, room: &str) -> bool {
        self.store.has_fanout(room)
    }

    /// Every portal of a room: the main one and the fan-out ones.
    pub(super) fn of_room(&self, room: &str) -> Result<Vec<PortalRecord>, StoreError> {
        let mut portals: Vec<PortalRecord> = self.by_room(room)?.into_iter().collect();
        if self.has_fanout(room) {
            portals.extend(self.fanouts(room)?);
        }
        Ok(portals)
    }

    /// Every portal.
    pub(super) fn all(&self) -> Result<Vec<PortalRecord>, StoreError> {
        self.store.list_portals()
    }

    /// The remote chats of `user`'s direct portals on `network`.
    pub(super) fn direct_chats(
        &self,
        network: &NetworkId,
        user: &str,
    ) -> Result<Vec<crate::network::RemoteChatId>, StoreError> {
        Ok(direct_chats_among(self.all()?, network, user))
    }

    /// The portal `key` as stored now, if it still stands for Matrix room `room`.
    pub(super) fn in_room(
        &self,
        key: &PortalKey,
        room: &str,
    ) -> Result<Option<PortalRecord>, StoreError> {
        Ok(self.get(key)?.filter(|p| p.room_id == room))
    }

    /// Stores a portal's record and its room index. Only on the portal's queue.
    pub(super) fn save(&self, record: &PortalRecord) -> Result<(), StoreError> {
        check_on_queue(&record.key, "stored");
        self.store.put_portal(record)
    }

    /// Forgets a portal's record, its room index and its message map (the room stays as it
    /// is). Only on the portal's queue.
    pub(super) fn forget(&self, record: &PortalRecord) -> Result<(), StoreError> {
        check_on_queue(&record.key, "forgotten");
        self.store.delete_portal(record)
    }

    /// Forgets that main room `room` stands for portal `key` (the record stays). Only on the
    /// portal's queue.
    pub(super) fn unindex_room(&self, key: &PortalKey, room: &str) -> Result<(), StoreError> {
        check_on_queue(key, "unindexed");
        self.store.unindex_room(room)
    }

    /// The content of the `m.bridge` state of a portal, and its state key.
    pub(super) fn bridge_info(
        &self,
        key: &PortalKey,
        name: Option<&str>,
    ) -> (String, serde_json::Value) {
        let network = self.networks.get(&key.network);
        let (protocol, display) = network
            .map(|n| (n.info().protocol.clone(), n.info().display_name.clone()))
            .unwrap_or_else(|| (key.network.to_string(), key.network.to_string()));
        let capabilities = network.map(|n| n.info().capabilities).unwrap_or_default();
        let state_key = format!("net.isthmus://{}/{}", key.network, key.chat);
        let content = json!({
            "bridgebot": self.bot.as_str(),
            "creator": self.bot.as_str(),
            "protocol": {"id": protocol, "displayname": display},
            "channel": {"id": key.chat.as_str(), "displayname": name.unwrap_or(key.chat.as_str())},
            // The bridge cannot read encrypted messages: its rooms are created unencrypted
            // and stop bridging if encryption is turned on.
            "net.isthmus.encryption": "unsupported: keep this room unencrypted; if encryption is turned on, messages stop crossing",
            // What crosses to this network and what does not, for clients that want to say
            // so before the user tries (the bot says so after, for what was not bridged).
            "net.isthmus.capabilities": capabilities,
        });
        (state_key, content)
    }

    /// The bridge info of a portal as state events: (type, state key, content), one per
    /// name of the type.
    pub(super) fn bridge_info_state(
        &self,
        key: &PortalKey,
        name: Option<&str>,
    ) -> Vec<(String, String, serde_json::Value)> {
        let (state_key, content) = self.bridge_info(key, name);
        BRIDGE_INFO_TYPES
            .iter()
            .map(|t| (t.to_string(), state_key.clone(), content.clone()))
            .collect()
    }

    /// Creates the room of direct chat `key` between Matrix user `receiver` and the
    /// contact's `ghost`: the ghost creates it and invites the user, so the room is a plain
    /// two-person DM. Only on the portal's queue.
    pub(super) async fn create_direct_room(
        &self,
        key: &PortalKey,
        ghost: &UserId,
        receiver: &UserId,
        contact_name: Option<&str>,
    ) -> Result<OwnedRoomId, BridgeError> {
        check_on_queue(key, "given a room");
        let creation = RoomCreation {
            name: None,
            topic: None,
            alias_localpart: None,
            invite: vec![receiver.to_owned()],
            is_direct: true,
            preset_private: true,
            initial_state: self.bridge_info_state(key, contact_name),
            power_level_users: vec![(receiver.to_owned(), 100)],
        };
        Ok(self.rooms.create(Some(ghost), &creation).await?)
    }

    /// Creates group chat `key`: its room, owned by the bot, optionally with an alias and
    /// inviting `invite` (who get moderator power), and its record. A room with an alias is
    /// public, so anyone on the homeserver can join it through the alias; without one it is
    /// private. Only on the portal's queue.
    pub(super) async fn create_group_portal(
        &self,
        key: &PortalKey,
        name: Option<&str>,
        topic: Option<&str>,
        alias_localpart: Option<String>,
        invite: Vec<String>,
    ) -> Result<PortalRecord, BridgeError> {
        let room = self
            .create_group_room(key, name, topic, alias_localpart, invite)
            .await?;
        let mut record = PortalRecord::new(key.clone(), room.as_str(), ChatKind::Group);
        record.name = name.map(str::to_owned);
        record.topic = topic.map(str::to_owned);
        self.save(&record)?;
        info!(room_id = %room, portal = %key, "created group chat portal");
        Ok(record)
    }

    /// The room of a new group chat (see [`Portals::create_group_portal`]).
    async fn create_group_room(
        &self,
        key: &PortalKey,
        name: Option<&str>,
        topic: Option<&str>,
        alias_localpart: Option<String>,
        invite: Vec<String>,
    ) -> Result<OwnedRoomId, BridgeError> {
        check_on_queue(key, "given a room");
        let invite = invite
            .iter()
            .map(|u| user_id(u))
            .collect::<Result<Vec<_>, _>>()?;
        let creation = RoomCreation {
            name: name.map(str::to_owned),
            topic: topic.map(str::to_owned),
            preset_private: alias_localpart.is_none(),
            alias_localpart,
            // The users the chat is bridged for moderate the room (and may manage its bridging).
            power_level_users: invite.iter().map(|u| (u.clone(), 50)).collect(),
            invite,
            is_direct: false,
            initial_state: self.bridge_info_state(key, name),
        };
        let alias = creation
            .alias_localpart
            .as_ref()
            .map(|l| format!("#{l}:{}", self.server_name));
        match self.rooms.create(None, &creation).await {
            Ok(room) => Ok(room),
            // An earlier attempt created the room but its answer was lost: adopt that room.
            Err(e) if e.errcode() == Some("M_ROOM_IN_USE") && alias.is_some() => {
                let alias = alias.expect("checked");
                let room = self.rooms.resolve_alias(&alias).await?.ok_or(e)?;
                self.rooms.join(None, room.as_str()).await?;
                info!(room_id = %room, alias, "adopted the room an earlier attempt created");
                Ok(room)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Logs (and in debug builds, panics on) a change of portal `key` made off its queue: a bug
/// that lets a concurrent event of the portal create a second room or undo the change.
fn check_on_queue(key: &PortalKey, what: &str) {
    let on_queue = on_queue_of(key);
    if !on_queue {
        error!(portal = %key, what, "a portal changed off its queue");
    }
    debug_assert!(on_queue, "portal {key} {what} off its queue");
}

/// The remote chats of `user`'s direct portals on `network` among `portals`.
fn direct_chats_among(
    portals: Vec<PortalRecord>,
    network: &NetworkId,
    user: &str,
) -> Vec<crate::network::RemoteChatId> {
    portals
        .into_iter()
        .filter(|p| {
            p.kind == ChatKind::Direct
                && &p.key.network == network
                && p.key.receiver.as_deref() == Some(user)
        })
        .map(|p| p.key.chat)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_direct_chats_are_their_direct_portals_on_the_network() {
        let alice = "@alice:localhost";
        let portals = [
            ("sip", "bob@x", Some(alice), ChatKind::Direct),
            ("sip", "bob@x", Some("@dave:localhost"), ChatKind::Direct),
            ("xmpp", "erin@x", Some(alice), ChatKind::Direct),
            ("sip", "room", None, ChatKind::Fanout),
            ("sip", "carol@x", Some(alice), ChatKind::Direct),
        ]
        .into_iter()
        .map(|(network, chat, receiver, kind)| {
            PortalRecord::new(
                PortalKey::new(network, chat, receiver),
                "!r:localhost",
                kind,
            )
        })
        .collect();
        let chats: Vec<String> = direct_chats_among(portals, &NetworkId::new("sip"), alice)
            .into_iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        assert_eq!(chats, ["bob@x", "carol@x"]);
    }
}
