//! Ephemeral events: typing, read receipts and presence, sent only to networks that carry
//! them, never retried (a late typing notice is worse than none).

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;
use tracing::debug;

use super::portal_ref;
use crate::bridge::{Bridge, BridgeError};
use crate::config::PermissionLevel;
use crate::error::Reason;
use crate::network::{Capabilities, NetworkError, NetworkId, Presence, PresenceState};

impl Bridge {
    /// Ephemeral events: typing, receipts, presence.
    pub(in crate::bridge) async fn handle_ephemeral(&self, json: &str) -> Result<(), BridgeError> {
        #[derive(Deserialize)]
        struct Eph {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            room_id: Option<String>,
            #[serde(default)]
            sender: Option<String>,
            #[serde(default)]
            content: Value,
        }
        let ev: Eph = serde_json::from_str(json).map_err(|e| {
            BridgeError::Invalid(Reason::because("ephemeral event does not parse", e))
        })?;
        match ev.kind.as_str() {
            "m.typing" => {
                let Some(room) = ev.room_id else {
                    return Ok(());
                };
                let now: HashSet<String> = ev
                    .content
                    .get("user_ids")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .filter(|u| !self.in_namespace(u))
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                let before = {
                    let mut typing = self.typing.lock().expect("typing lock");
                    typing.insert(room.clone(), now.clone()).unwrap_or_default()
                };
                let Some(portal) = self.store.portal_by_room(&room)? else {
                    return Ok(());
                };
                if !self.capable(&portal.key.network, |c| c.typing) {
                    self.metrics.event("to_remote", "typing", "unsupported");
                    return Ok(());
                }
                let changes = now
                    .difference(&before)
                    .map(|u| (u.clone(), true))
                    .chain(before.difference(&now).map(|u| (u.clone(), false)));
                for (user, active) in changes.collect::<Vec<_>>() {
                    let Ok((client, false)) = self.client_for(&portal, &user) else {
                        continue;
                    };
                    let sender = self.matrix_sender(&user).await;
                    let r = client
                        .send_typing(&portal_ref(&portal), &sender, active)
                        .await;
                    self.count_ephemeral("typing", r);
                }
            }
            "m.receipt" => {
                let Some(room) = ev.room_id else {
                    return Ok(());
                };
                let Some(portal) = self.store.portal_by_room(&room)? else {
                    return Ok(());
                };
                if !self.capable(&portal.key.network, |c| c.receipts) {
                    self.metrics.event("to_remote", "receipt", "unsupported");
                    return Ok(());
                }
                let Some(events) = ev.content.as_object() else {
                    return Ok(());
                };
                for (event_id, receipt) in events {
                    let Some(readers) = receipt.get("m.read").and_then(Value::as_object) else {
                        continue;
                    };
                    let Some(msg) = self.store.message_by_event(&room, event_id)? else {
                        continue;
                    };
                    for user in readers.keys().filter(|u| !self.in_namespace(u)) {
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
            }
            "m.presence" => {
                let Some(user) = ev.sender.filter(|u| !self.in_namespace(u)) else {
                    return Ok(());
                };
                if self.level(&user) < PermissionLevel::User {
                    return Ok(());
                }
                let state = match ev.content.get("presence").and_then(Value::as_str) {
                    Some("online") => PresenceState::Online,
                    Some("unavailable") => PresenceState::Unavailable,
                    _ => PresenceState::Offline,
                };
                let presence = Presence {
                    state,
                    status: ev
                        .content
                        .get("status_msg")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                };
                let sender = self.matrix_sender(&user).await;
                let networks = self
                    .networks
                    .keys()
                    .filter(|n| self.capable(n, |c| c.presence));
                for network in networks {
                    if let Some(client) = self.user_client(&user, network) {
                        let r = client.set_presence(&sender, &presence).await;
                        self.count_ephemeral("presence", r);
                    }
                }
            }
            _ => {}
        }
        Ok(())
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
