//! The management room: the direct chat between a user and the bot, where commands need no
//! prefix and the bot asks the user what only they can answer (contact requests). The bot
//! opens one itself when it has something to ask a user who has none.

use tracing::info;

use super::{Bridge, BridgeError, user_id};
use crate::matrix::RoomCreation;
use crate::network::NetworkId;
use crate::store::UserRecord;

/// What a user reads about a contact's request to see their presence.
pub(super) fn request_text(
    who: &str,
    network_name: &str,
    network: &NetworkId,
    contact: &str,
) -> String {
    format!(
        "{who} on {network_name} wants to see your presence and add you as a contact. Send `accept {network} {contact}` or `deny {network} {contact}`."
    )
}

impl Bridge {
    /// The user's management room; when they have none, the bot opens one (a direct chat it
    /// invites them to). Returns the room and whether it was opened now.
    pub(super) async fn management_room_or_open(
        &self,
        user: &str,
    ) -> Result<(String, bool), BridgeError> {
        // One room per user even when two requests arrive at once on different queues.
        let _guard = self.management_rooms.lock().await;
        let mut record = self.store.user(user)?.unwrap_or(UserRecord {
            user_id: user.to_owned(),
            management_room: None,
            shown_requests: Vec::new(),
        });
        if let Some(room) = &record.management_room {
            return Ok((room.clone(), false));
        }
        let creation = RoomCreation {
            name: None,
            topic: Some(format!(
                "Your management room for the bridge: contact requests and commands (send `help`; elsewhere start commands with `{}`).",
                self.config.bridge.command_prefix
            )),
            alias_localpart: None,
            invite: vec![user_id(user)?],
            is_direct: true,
            preset_private: true,
            initial_state: Vec::new(),
            power_level_users: Vec::new(),
        };
        let room = self.hs.create_room(None, &creation).await?;
        self.ghosts
            .note_joined(self.bot().as_str(), room.as_str(), true);
        record.management_room = Some(room.to_string());
        record.shown_requests.clear();
        self.store.put_user(&record)?;
        info!(room_id = %room, user, "opened a management room for the user");
        Ok((room.to_string(), true))
    }

    /// Records that the request of `contact` on `network` was shown in the user's current
    /// management room; false when it already was.
    pub(super) fn mark_request_shown(
        &self,
        user: &str,
        network: &NetworkId,
        contact: &str,
    ) -> Result<bool, BridgeError> {
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

    /// Shows in `room`, the user's management room, every contact request still waiting for
    /// an answer that was not shown there yet (a request that arrived while the user had no
    /// management room, or before they joined it).
    pub(super) async fn show_pending_requests(
        &self,
        user: &str,
        room: &str,
    ) -> Result<(), BridgeError> {
        let sender = self.matrix_sender(user).await;
        for (network, connector) in &self.networks {
            let Some(client) = self.user_client(user, network) else {
                continue;
            };
            let Ok(list) = client.contacts(&sender).await else {
                continue;
            };
            for c in list.into_iter().filter(|c| c.pending) {
                if !self.mark_request_shown(user, network, c.id.as_str())? {
                    continue;
                }
                let text = request_text(
                    c.id.as_str(),
                    &connector.info().display_name,
                    network,
                    c.id.as_str(),
                );
                let txn = format!("isthmus.request.{network}.{}", c.id);
                self.send_notice(None, room, &txn, &text).await?;
            }
        }
        Ok(())
    }
}
