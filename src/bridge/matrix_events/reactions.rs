//! Reactions, and redactions: a user's retraction of their own message or reaction, and a
//! moderator's removal of someone else's message in a group chat.

use std::time::Instant;

use ruma::events::reaction::ReactionEventContent;
use ruma::events::room::redaction::RoomRedactionEventContent;

use super::portal_ref;
use crate::bridge::event::MatrixEvent;
use crate::bridge::{Bridge, BridgeError};
use crate::network::ChatKind;
use crate::store::MessageRecord;

impl Bridge {
    pub(super) async fn handle_reaction(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        content: &ReactionEventContent,
    ) -> Result<(), BridgeError> {
        let target = content.relates_to.event_id.as_str();
        let key = content.relates_to.key.as_str();
        let Some(portal) = self.portals.by_room(&ev.room_id)? else {
            return Ok(());
        };
        let Some(orig) = self.store.message_by_event(&ev.room_id, target)? else {
            self.metrics
                .event("to_remote", "reaction", "unknown_target");
            return Ok(());
        };
        let (client, relayed) = match self.client_for(&portal, &ev.sender) {
            Ok(c) => c,
            Err(e) => return self.network_failure(seq, &portal, "reaction", e).await,
        };
        if relayed {
            // A reaction carries no text to name its author in: it would speak as the
            // relay's owner, so it is not bridged.
            self.metrics
                .event("to_remote", "reaction", "relayed_skipped");
            return Ok(());
        }
        let sender = self.matrix_sender(&ev.sender).await;
        let started = Instant::now();
        let r = client
            .send_reaction(&portal_ref(&portal), &sender, &orig.remote_id, key, false)
            .await;
        self.observe(&portal.key.network, "reaction", started);
        match r {
            Ok(()) => {
                self.store.put_message(&MessageRecord {
                    portal: portal.key.clone(),
                    room_id: ev.room_id.clone(),
                    event_id: ev.event_id.clone(),
                    remote_id: crate::bridge::remote_events::reaction_id(
                        &orig.remote_id,
                        &ev.sender,
                        key,
                    ),
                    sender: ev.sender.clone(),
                    timestamp_ms: crate::bridge::now_ms(),
                    reaction: Some((orig.remote_id.clone(), key.to_owned())),
                })?;
                self.metrics.event("to_remote", "reaction", "ok");
                Ok(())
            }
            Err(e) => self.network_failure(seq, &portal, "reaction", e).await,
        }
    }

    pub(super) async fn handle_redaction(
        &self,
        seq: u64,
        ev: &MatrixEvent,
        content: &RoomRedactionEventContent,
    ) -> Result<(), BridgeError> {
        let Some(redacts) = content.redacts.as_deref().map(|e| e.as_str()) else {
            return Ok(());
        };
        let Some(portal) = self.portals.by_room(&ev.room_id)? else {
            return Ok(());
        };
        let Some(orig) = self.store.message_by_event(&ev.room_id, redacts)? else {
            self.metrics
                .event("to_remote", "redaction", "unknown_target");
            return Ok(());
        };
        if orig.sender != ev.sender {
            // Someone else's message: the homeserver accepted the redaction, so the redacter
            // has the power; in a group chat it becomes a moderation there.
            if portal.kind != ChatKind::Group || orig.reaction.is_some() {
                self.metrics.event("to_remote", "redaction", "not_own");
                return Ok(());
            }
            let Some(client) = self.chat_client(&ev.sender, &portal) else {
                self.metrics.event("to_remote", "moderation", "no_identity");
                return Ok(());
            };
            let moderator = self.matrix_sender(&ev.sender).await;
            let reason = content.reason.as_deref();
            let r = client
                .send_moderation(&portal_ref(&portal), &moderator, &orig.remote_id, reason)
                .await;
            return match r {
                Ok(()) => {
                    self.store.delete_message(&orig)?;
                    self.metrics.event("to_remote", "moderation", "ok");
                    Ok(())
                }
                Err(e) => self.network_failure(seq, &portal, "moderation", e).await,
            };
        }
        let (client, relayed) = match self.client_for(&portal, &ev.sender) {
            Ok(c) => c,
            Err(e) => return self.network_failure(seq, &portal, "redaction", e).await,
        };
        // A relayed message was sent by the relay's owner, who retracts it.
        let sender = match self.relay_speaker(&portal, relayed).await {
            Some(owner) => owner,
            None => self.matrix_sender(&ev.sender).await,
        };
        let started = Instant::now();
        let r = match &orig.reaction {
            Some((target, key)) => {
                client
                    .send_reaction(&portal_ref(&portal), &sender, target, key, true)
                    .await
            }
            None => {
                client
                    .send_redaction(&portal_ref(&portal), &sender, &orig.remote_id)
                    .await
            }
        };
        self.observe(&portal.key.network, "redaction", started);
        match r {
            Ok(()) => {
                self.store.delete_message(&orig)?;
                self.metrics.event("to_remote", "redaction", "ok");
                Ok(())
            }
            Err(e) => self.network_failure(seq, &portal, "redaction", e).await,
        }
    }
}
