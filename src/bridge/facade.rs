//! What the rest of the crate (the transaction handler, the provisioning API, bot commands)
//! may ask of the core's store and homeserver client. Both are private to `bridge/`: a
//! caller outside gets a method named for what it does, not the handle, so everything that
//! writes a portal, a login or a user record stays in the core and on the portal's queue.

use ruma::EventId;

use super::{Bridge, BridgeError, room_id, user_id};
use crate::matrix::MatrixError;
use crate::network::LoginData;
use crate::store::{InboxItem, PortalKey, PortalRecord, StoreError, TxnOutcome};

impl Bridge {
    /// Commits a homeserver transaction to the inbox: its ID, what it carries (`digest`) and
    /// its items, in one durable step. Nothing of it is handled before this returns.
    pub async fn commit_transaction(
        &self,
        txn_id: &str,
        digest: &[u8],
        items: &[InboxItem],
    ) -> Result<TxnOutcome, StoreError> {
        self.store
            .commit_transaction(txn_id, digest, items, super::now_ms())
            .await
    }

    /// Whether an event of `sender` in `room` (`""`: no room) is the bridge's own echo: its
    /// bot's or a ghost's, except a ghost's in a room shared with another network, which goes
    /// on to that network.
    pub fn is_echo(&self, sender: &str, room: &str) -> bool {
        self.in_namespace(sender)
            && (room.is_empty() || sender == self.bot.as_str() || !self.portals.has_fanout(room))
    }

    /// Why the store cannot write now, or `None` while it can.
    pub fn store_failure(&self) -> Option<String> {
        self.store.failure()
    }

    /// How many items are set aside in the quarantine.
    pub fn quarantined_count(&self) -> usize {
        self.store.quarantine_len()
    }

    /// The portal of a Matrix room (its main portal, when fan-out portals share it).
    pub fn portal_of_room(&self, room: &str) -> Result<Option<PortalRecord>, StoreError> {
        self.portals.by_room(room)
    }

    /// The portal of a remote chat, if it is bridged.
    pub fn portal(&self, key: &PortalKey) -> Result<Option<PortalRecord>, StoreError> {
        self.portals.get(key)
    }

    /// Every portal.
    pub fn all_portals(&self) -> Result<Vec<PortalRecord>, StoreError> {
        self.portals.all()
    }

    /// The management room of `user`, if the bot has one with them.
    pub fn management_room_of(&self, user: &str) -> Result<Option<String>, StoreError> {
        self.portals.management_room_of(user)
    }

    /// The logins of `user` as stored, with their networks, whether or not they are live.
    pub fn stored_logins_of(&self, user: &str) -> Result<Vec<(String, LoginData)>, StoreError> {
        self.store.logins_of(user)
    }

    /// Makes sure the ghost of `remote` on `network` exists (a user query named it); returns
    /// its user ID.
    pub async fn ensure_ghost(
        &self,
        network: &crate::network::NetworkId,
        remote: &crate::network::RemoteUserId,
    ) -> Result<String, BridgeError> {
        self.ghosts.ensure(network, remote, None).await
    }

    /// Asks the homeserver who the bot is: whether it answers and knows the bridge.
    pub async fn check_homeserver(&self) -> Result<(), MatrixError> {
        self.rooms.check_bot().await
    }

    /// A Matrix file from the homeserver's media repository, with its content type.
    pub async fn download_media(
        &self,
        server: &str,
        media_id: &str,
    ) -> Result<(Vec<u8>, Option<String>), MatrixError> {
        self.rooms.download(server, media_id).await
    }

    /// Adds the alias `alias` (`#local:server`) to portal room `room`.
    pub async fn add_portal_alias(&self, alias: &str, room: &str) -> Result<(), BridgeError> {
        Ok(self.rooms.add_alias(alias, &room_id(room)?).await?)
    }

    /// Invites `user` into the room of `portal` as the portal's speaker (the contact's ghost
    /// in a direct chat, the bot in a group chat).
    pub async fn invite_to_portal(
        &self,
        portal: &PortalRecord,
        user: &str,
    ) -> Result<(), BridgeError> {
        let speaker = user_id(&self.portal_speaker(portal))?;
        let room = room_id(&portal.room_id)?;
        Ok(self
            .rooms
            .invite(Some(&speaker), &room, &user_id(user)?)
            .await?)
    }

    /// Invites `user` into `room` as the bot.
    pub async fn invite_as_bot(&self, room: &str, user: &str) -> Result<(), BridgeError> {
        Ok(self
            .rooms
            .invite(None, &room_id(room)?, &user_id(user)?)
            .await?)
    }

    /// Redacts event `event_id` of `room` as the bot (a message holding a secret); `txn` makes
    /// a retried request one redaction.
    pub async fn redact_as_bot(
        &self,
        room: &str,
        event_id: &str,
        txn: &str,
        reason: &str,
    ) -> Result<(), BridgeError> {
        let event = EventId::parse(event_id)
            .map_err(|e| BridgeError::Invalid(crate::error::Reason::because("event ID", e)))?;
        self.sender
            .redact(None, &room_id(room)?, &event, txn, Some(reason))
            .await?;
        Ok(())
    }

    /// Whether `user` may change what `room` is bridged to: a creator of the room (room
    /// version 12 on, creators hold every power), or a member whose power level reaches the
    /// one `m.bridge` needs (else `state_default`, else 50). Bridge admins are the caller's
    /// to let through.
    pub async fn may_change_bridging(&self, room: &str, user: &str) -> Result<bool, BridgeError> {
        let rid = room_id(room)?;
        if self.rooms.creators(&rid).await?.iter().any(|c| c == user) {
            return Ok(true);
        }
        let levels = self.rooms.power_levels(&rid).await?;
        Ok(may_bridge(&levels, user))
    }
}

/// Whether the power levels `levels` (the content of `m.room.power_levels`) let `user`
/// send `m.bridge`. Levels written as strings, as old rooms have them, count.
fn may_bridge(levels: &serde_json::Value, user: &str) -> bool {
    let int = |v: &serde_json::Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let user_level = levels
        .get("users")
        .and_then(|u| u.get(user))
        .and_then(int)
        .or_else(|| levels.get("users_default").and_then(int))
        .unwrap_or(0);
    let needed = levels
        .get("events")
        .and_then(|e| e.get("m.bridge"))
        .and_then(int)
        .or_else(|| levels.get("state_default").and_then(int))
        .unwrap_or(50);
    user_level >= needed
}

#[cfg(test)]
mod tests {
    use super::may_bridge;
    use serde_json::json;

    #[test]
    fn bridging_needs_the_power_of_m_bridge_or_of_state() {
        for (levels, user, may) in [
            (json!({}), "@a:hs", false),
            (json!({"users": {"@a:hs": 50}}), "@a:hs", true),
            (json!({"users": {"@a:hs": "50"}}), "@a:hs", true),
            (
                json!({"users_default": 10, "state_default": 10}),
                "@a:hs",
                true,
            ),
            (
                json!({"users": {"@a:hs": 50}, "events": {"m.bridge": 100}}),
                "@a:hs",
                false,
            ),
            (
                json!({"users": {"@a:hs": 50}, "events": {"m.bridge": 0}, "state_default": 100}),
                "@a:hs",
                true,
            ),
            (json!({"users": {"@b:hs": 100}}), "@a:hs", false),
        ] {
            assert_eq!(may_bridge(&levels, user), may, "{levels} {user}");
        }
    }
}
