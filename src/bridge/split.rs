//! Remote messages larger than the homeserver takes in one event.
//!
//! A homeserver refuses an event over its size limit (65,536 bytes for the whole event in
//! Synapse) with 413 `M_TOO_LARGE`. Remote networks allow more (an XMPP stanza may carry a
//! few hundred KiB), so such a message is sent as several events, in order, each a part of the
//! plain body, and nothing is dropped. The limit is learnt from the homeserver's answer: the
//! parts are halved until they pass, and the size that passed is kept for the next time.

use std::sync::atomic::{AtomicUsize, Ordering};

use ruma::{OwnedEventId, RoomId, UserId};
use serde_json::{Value, json};
use tracing::info;

use super::{Bridge, BridgeError};
use crate::matrix::MatrixError;

/// The smallest part tried; below it a refusal is not about the size of the body.
const MIN_PART: usize = 1024;

/// The largest body part the homeserver took, learnt at run time (0: not learnt yet).
#[derive(Debug, Default)]
pub(super) struct PartSize(AtomicUsize);

/// Whether the homeserver refused an event for its size.
fn too_large(e: &MatrixError) -> bool {
    e.status() == Some(413) || e.errcode() == Some("M_TOO_LARGE")
}

impl Bridge {
    /// Sends message `content` as `ghost`; when the homeserver refuses it for its size, sends
    /// its plain body in parts instead (see the module). Returns the first event's ID, which
    /// stands for the message. `txn` is the stable transaction ID of the message; parts use
    /// `txn` and their byte offset, so a retry does not post a part twice.
    pub(super) async fn send_message_parts(
        &self,
        ghost: &UserId,
        room: &RoomId,
        txn: &str,
        content: &Value,
        ts: Option<u64>,
    ) -> Result<OwnedEventId, BridgeError> {
        let error = match self
            .hs
            .send_message(Some(ghost), room, "m.room.message", txn, content, ts)
            .await
        {
            Ok(id) => return Ok(id),
            Err(e) if too_large(&e) => e,
            Err(e) => return Err(e.into()),
        };
        let body = content.get("body").and_then(Value::as_str).unwrap_or("");
        let msgtype = content
            .get("msgtype")
            .and_then(Value::as_str)
            .unwrap_or("m.text");
        let learnt = self.part_size.0.load(Ordering::Relaxed);
        let mut max = if learnt > 0 && learnt < body.len() {
            learnt
        } else {
            body.len() / 2
        };
        let mut offset = 0;
        let mut first = None;
        while offset < body.len() {
            if max < MIN_PART {
                return Err(error.into());
            }
            let part = crate::text::split_parts(&body[offset..], max)[0];
            let c = json!({"msgtype": msgtype, "body": part});
            match self
                .hs
                .send_message(
                    Some(ghost),
                    room,
                    "m.room.message",
                    &format!("{txn}.{offset}"),
                    &c,
                    ts,
                )
                .await
            {
                Ok(id) => {
                    first.get_or_insert(id);
                    offset += part.len();
                }
                Err(e) if too_large(&e) => max /= 2,
                Err(e) => return Err(e.into()),
            }
        }
        self.part_size.0.store(max, Ordering::Relaxed);
        info!(
            bytes = body.len(),
            part_bytes = max,
            "a message too large for one event was sent in parts"
        );
        first.ok_or_else(|| error.into())
    }
}
