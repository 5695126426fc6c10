//! Ephemeral events: typing, read receipts and presence, sent only to networks that carry
//! them, never retried (a late typing notice is worse than none).

use std::collections::HashSet;

use ruma::events::presence::PresenceEvent;
use ruma::events::receipt::{ReceiptEventContent, ReceiptType};
use ruma::events::typing::TypingEventContent;
use ruma::presence::PresenceState as MatrixPresence;
use tracing::debug;

use super::portal_ref;
use crate::bridge::event::EphemeralEvent;
use crate::bridge::{Bridge, BridgeError};
use crate::config::PermissionLevel;
use crate::network::{Capabilities, NetworkError, NetworkId, Presence, PresenceState};

impl Bridge {
    /// An ephemeral event: one handler per kind; kinds the bridge does not carry are
    /// accepted and dropped.
    pub(in crate::bridge) async fn handle_ephemeral(
        &self,
        ev: &EphemeralEvent,
    ) -> Result<(), BridgeError> {
        match ev {
            EphemeralEvent::Typing { room_id, content } => self.on_typing(room_id, content).await,
            EphemeralEvent::Receipt { room_id, content } => self.on_receipt(room_id, content).await,
            EphemeralEvent::Presence(presence) => {
                self.on_presence(presence).await;
                Ok(())
            }
            EphemeralEvent::Other { .. } => Ok(()),
        }
    }

    /// `m.typing` lists who types in a room now; the networks are told who started and who
    /// stopped since the room's previous list (the bridge's own users left out).
    async fn on_typing(&self, room: &str, content: &TypingEventContent) -> Result<(), BridgeError> {
        let now: HashSet<String> = content
            .user_ids
            .iter()
            .map(|u| u.as_str())
            .filter(|u| !self.in_namespace(u))
            .map(str::to_owned)
            .collect();
        let changes = self.typing.replace(room, now);
        let Some(portal) = self.portals.by_room(room)? else {
            return Ok(());
        };
        if !self.capable(&portal.key.network, |c| c.typing) {
            self.metrics.event("to_remote", "typing", "unsupported");
            return Ok(());
        }
        for (user, active) in changes {
            let Ok((client, false)) = self.client_for(&portal, &user) else {
                continue;
            };
            let sender = self.matrix_sender(&user).await;
            let r = client
                .send_typing(&portal_ref(&portal), &sender, active)
                .await;
            self.count_ephemeral("typing", r);
        }
        Ok(())
    }

    /// `m.receipt`: each public read receipt of a bridged message becomes a read marker on
    /// the message's network, sent as the reader (private receipts stay private).
    async fn on_receipt(
        &self,
        room: &str,
        content: &ReceiptEventContent,
    ) -> Result<(), BridgeError> {
        let Some(portal) = self.portals.by_room(room)? else {
            return Ok(());
        };
        if !self.capable(&portal.key.network, |c| c.receipts) {
            self.metrics.event("to_remote", "receipt", "unsupported");
            return Ok(());
        }
        for (event_id, receipts) in &content.0 {
            let Some(readers) = receipts.get(&ReceiptType::Read) else {
                continue;
            };
            let Some(msg) = self.store.message_by_event(room, event_id.as_str())? else {
                continue;
            };
            for user in readers
                .keys()
                .map(|u| u.as_str())
                .filter(|u| !self.in_namespace(u))
            {
                let Ok((client, false)) = self.client_for(&portal, user) else {
                    continue;
                };
                let sender = self.matrix_sender(user).await;
                let r = client
                    .send_receipt(&portal_ref(&portal), &sender, &msg.remote_id)
                    .await;
                self.count_ephemeral("receipt", r);
            }
        }
        Ok(())
    }

    /// `m.presence` of a bridge user goes to every network that carries presence and where
    /// the user has a client.
    async fn on_presence(&self, ev: &PresenceEvent) {
        let user = ev.sender.as_str();
        if self.in_namespace(user) || self.level(user) < PermissionLevel::User {
            return;
        }
        let presence = Presence::new(
            presence_state(&ev.content.presence),
            ev.content.status_msg.as_deref(),
        );
        let sender = self.matrix_sender(user).await;
        let networks = self
            .networks
            .keys()
            .filter(|n| self.capable(n, |c| c.presence));
        for network in networks {
            if let Some(client) = self.user_client(user, network) {
                let r = client.set_presence(&sender, &presence).await;
                self.count_ephemeral("presence", r);
            }
        }
    }

    /// Whether `network` carries what `has` picks from its capabilities: what it cannot
    /// carry is not asked of it (an ephemeral event is counted as unsupported; the room's
    /// bridge info lists the capabilities for clients).
    fn capable(&self, network: &NetworkId, has: impl Fn(&Capabilities) -> bool) -> bool {
        self.networks
            .get(network)
            .is_some_and(|n| has(&n.info().capabilities))
    }

    fn count_ephemeral(&self, kind: &str, r: Result<(), NetworkError>) {
        let result = match r {
            Ok(()) => "ok",
            Err(NetworkError::Unsupported(_)) => "unsupported",
            Err(e) => {
                debug!(kind, error = %crate::error::chain(&e), "ephemeral event not bridged");
                "failed"
            }
        };
        self.metrics.event("to_remote", kind, result);
    }
}

/// A Matrix presence state as the networks know it; a state this version does not know is
/// offline, as an absent one was.
fn presence_state(state: &MatrixPresence) -> PresenceState {
    match state {
        MatrixPresence::Online => PresenceState::Online,
        MatrixPresence::Unavailable => PresenceState::Unavailable,
        _ => PresenceState::Offline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_states_map_to_the_networks_states() {
        for (matrix, state) in [
            ("online", PresenceState::Online),
            ("unavailable", PresenceState::Unavailable),
            ("offline", PresenceState::Offline),
            ("busy", PresenceState::Offline),
        ] {
            assert_eq!(
                presence_state(&MatrixPresence::from(matrix)),
                state,
                "{matrix}"
            );
        }
    }
}
