//! The management room: the direct chat between a user and the bot, where commands need no
//! prefix and the bot asks the user what only they can answer (contact requests). Its record
//! is kept by `Portals` (`portals/management.rs`); here the bot opens it and shows what
//! waits there.

use super::{Bridge, BridgeError};
use crate::network::NetworkId;

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
        let (room, opened) = self.portals.management_room_or_open(user).await?;
        if opened {
            self.ghosts.note_joined(self.bot().as_str(), &room, true);
        }
        Ok((room, opened))
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
                if !self
                    .portals
                    .mark_request_shown(user, network, c.id.as_str())?
                {
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
