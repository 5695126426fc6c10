//! Telling senders what did not cross: a network's refusal of one item (a notice in the
//! room saying what to do), and an item that failed for good, is delayed or was set aside
//! (a notice in the room for a Matrix message, an error on the sender's own network for a
//! remote one).

use tracing::warn;

use crate::bridge::dispatch::Work;
use crate::bridge::event::InvalidEvent;
use crate::bridge::{Bridge, BridgeError};
use crate::network::NetworkError;
use crate::store::PortalRecord;

impl Bridge {
    /// Tells the Matrix side that something was not bridged; passes transient errors up for
    /// a retry.
    pub(super) async fn network_failure(
        &self,
        seq: u64,
        portal: &PortalRecord,
        what: &str,
        e: NetworkError,
    ) -> Result<(), BridgeError> {
        let network = portal.key.network.clone();
        let display = self
            .networks
            .get(&network)
            .map(|n| n.info().display_name.clone())
            .unwrap_or_else(|| network.to_string());
        if e.is_transient() {
            return Err(BridgeError::Network { network, source: e });
        }
        // A message in parts that stopped at a refused part: told as that part's refusal.
        let (result, text) = match e.failed_part() {
            NetworkError::Unsupported(thing) => (
                "unsupported",
                format!("⚠ {display} does not support {thing}; this was not bridged."),
            ),
            NetworkError::NotLoggedIn => (
                "not_logged_in",
                format!(
                    "⚠ Not delivered: you are not logged in to {display} and this room has no relay. Log in from your management room with `login {network}`."
                ),
            ),
            NetworkError::Undeliverable(why) => (
                "undeliverable",
                format!("⚠ Your {what} could not be delivered: {why}"),
            ),
            other => (
                "failed",
                format!("⚠ Your {what} could not be bridged: {other}"),
            ),
        };
        warn!(portal = %portal.key, what, error = %crate::error::chain(&e), "not bridged");
        self.metrics.event("to_remote", what, result);
        self.portal_notice(portal, &format!("isthmus.{seq}.failure"), &text)
            .await;
        Ok(())
    }

    /// The portal that speaks in a room for notices: the main one, else a fan-out one.
    fn notice_portal(&self, room_id: &str) -> Option<PortalRecord> {
        if let Ok(Some(p)) = self.portals.by_room(room_id) {
            return Some(p);
        }
        self.store
            .fanout_portals(room_id)
            .ok()
            .and_then(|v| v.into_iter().next())
    }

    /// Called when an item keeps failing with a passing error: tells the Matrix sender that
    /// delivery is delayed (once per item), where there is one.
    pub(in crate::bridge) async fn report_delay(&self, item: &Work, e: &BridgeError) {
        if let Work::Matrix(read) = item
            && let Ok(ev) = &**read
            && ev.message().is_some()
            && let Some(portal) = self.notice_portal(&ev.room_id)
        {
            let text = format!(
                "⏳ Delivery is delayed ({e}); the bridge keeps trying and sends it as soon as it can."
            );
            self.portal_notice(&portal, &format!("isthmus.delay.{}", ev.event_id), &text)
                .await;
        }
    }

    /// Called when an item failed for good: tells its sender, on Matrix or on the network.
    pub(in crate::bridge) async fn report_failure(&self, item: &Work, e: &BridgeError) {
        self.tell_sender(item, &format!("⚠ Your message could not be bridged: {e}"))
            .await;
        self.metrics.event("any", "item", "failed");
    }

    /// Called when an item was set aside after failing too often: tells its sender.
    pub(in crate::bridge) async fn report_quarantined(&self, item: &Work, e: &BridgeError) {
        self.tell_sender(
            item,
            &format!(
                "⚠ Your message could not be bridged after several tries ({e}). It is set aside, not lost: a bridge admin can send it again with the `quarantine` command."
            ),
        )
        .await;
        self.metrics.event("any", "item", "quarantined");
    }

    /// Tells the sender of `item` that it did not cross: a notice in the Matrix room for a
    /// Matrix message (also one that cannot be read), an error on the sender's own network
    /// for a remote message.
    async fn tell_sender(&self, item: &Work, text: &str) {
        match item {
            Work::Matrix(read) => {
                let (room, event_id) = match &**read {
                    Ok(ev) if ev.message().is_some() => (&ev.room_id, &ev.event_id),
                    Err(InvalidEvent {
                        room_id,
                        kind: Some(kind),
                        event_id: Some(event_id),
                        ..
                    }) if kind == "m.room.message" => (room_id, event_id),
                    _ => return,
                };
                if let Some(portal) = self.notice_portal(room) {
                    self.portal_notice(&portal, &format!("isthmus.fail.{event_id}"), text)
                        .await;
                }
            }
            Work::Remote { network, event } => {
                if let Some(connector) = self.networks.get(network) {
                    connector.undelivered(event, text).await;
                }
            }
            Work::Ephemeral(_) => {}
        }
    }
}
