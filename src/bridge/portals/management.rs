//! The management rooms: the direct chat between a user and the bot, where commands need
//! no prefix and the bot asks the user what only they can answer (contact requests). The
//! bot opens one itself when it has something to ask a user who has none; the user's record
//! says which room it is and which requests were shown there.

use tracing::info;

use super::Portals;
use crate::bridge::{BridgeError, user_id};
use crate::matrix::RoomCreation;
use crate::network::NetworkId;
use crate::store::{StoreError, UserRecord};

impl Portals {
    /// The record of `user`, a new one when the bridge has none.
    fn user_record(&self, user: &str) -> Result<UserRecord, StoreError> {
        Ok(self.store.user(user)?.unwrap_or(UserRecord {
            user_id: user.to_owned(),
            management_room: None,
            shown_requests: Vec::new(),
        }))
    }

    /// The management room of `user`, if the bot has one with them.
    pub(in crate::bridge) fn management_room_of(
        &self,
        user: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self.store.user(user)?.and_then(|u| u.management_room))
    }

    /// The user's management room; when they have none, the bot opens one (a direct chat it
    /// invites them to). Returns the room and whether it was opened now.
    pub(in crate::bridge) async fn management_room_or_open(
        &self,
        user: &str,
    ) -> Result<(String, bool), BridgeError> {
        // One room per user even when two requests arrive at once on different queues.
        let _guard = self.management_rooms.lock().await;
        let mut record = self.user_record(user)?;
        if let Some(room) = &record.management_room {
            return Ok((room.clone(), false));
        }
        let creation = RoomCreation {
            name: None,
            topic: Some(format!(
                "Your management room for the bridge: contact requests and commands (send `help`; elsewhere start commands with `{}`).",
                self.command_prefix
            )),
            alias_localpart: None,
            invite: vec![user_id(user)?],
            is_direct: true,
            preset_private: true,
            initial_state: Vec::new(),
            power_level_users: Vec::new(),
        };
        let room = self.rooms.create(None, &creation).await?;
        record.management_room = Some(room.to_string());
        record.shown_requests.clear();
        self.store.put_user(&record)?;
        info!(room_id = %room, user, "opened a management room for the user");
        Ok((room.to_string(), true))
    }

    /// Creates a direct chat between the bot (power 100) and `user`, where the bot can
    /// redact, and makes it the user's management room. Returns the room.
    pub(in crate::bridge) async fn open_login_room(
        &self,
        user: &str,
    ) -> Result<String, BridgeError> {
        let creation = RoomCreation {
            invite: vec![user_id(user)?],
            is_direct: true,
            preset_private: true,
            power_level_users: vec![(self.bot.clone(), 100)],
            ..Default::default()
        };
        let room = self.rooms.create(None, &creation).await?.to_string();
        let mut record = self.user_record(user)?;
        record.management_room = Some(room.clone());
        self.store.put_user(&record)?;
        info!(room_id = %room, user, "management room moved to a room where the bot can redact");
        Ok(room)
    }

    /// Makes `room` (a direct chat `user` invited the bot to) the user's management room;
    /// the requests shown in an earlier one are to be shown again.
    pub(in crate::bridge) fn set_management_room(
        &self,
        user: &str,
        room: &str,
    ) -> Result<(), StoreError> {
        let mut record = self.user_record(user)?;
        if record.management_room.as_deref() != Some(room) {
            record.shown_requests.clear();
        }
        record.management_room = Some(room.to_owned());
        self.store.put_user(&record)
    }

    /// `user` left `room`: if it was their management room, they have none now.
    pub(in crate::bridge) fn user_left(&self, user: &str, room: &str) -> Result<(), StoreError> {
        if let Some(mut u) = self.store.user(user)?
            && u.management_room.as_deref() == Some(room)
        {
            u.management_room = None;
            self.store.put_user(&u)?;
        }
        Ok(())
    }

    /// The bot left `room`: whoever had it as their management room has none now.
    pub(in crate::bridge) fn bot_left(&self, room: &str) -> Result<(), StoreError> {
        if let Some(mut u) = self.store.user_by_management_room(room)? {
            u.management_room = None;
            self.store.put_user(&u)?;
        }
        Ok(())
    }

    /// Records that the request of `contact` on `network` was shown in the user's current
    /// management room; false when it already was.
    pub(in crate::bridge) fn mark_request_shown(
        &self,
        user: &str,
        network: &NetworkId,
        contact: &str,
    ) -> Result<bool, StoreError> {
        let Some(mut record) = self.store.user(user)? else {
            return Ok(true);
        };
        let key = format!("{network}\u{1f}{contact}");
        if record.shown_requests.contains(&key) {
            return Ok(false);
        }
        record.shown_requests.push(key);
        self.store.put_user(&record)?;
        Ok(true)
    }
}
