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

/// Splits `text` into parts of at most `max` bytes, at a line break or a space in the last
/// quarter of a part where there is one, else at a character boundary. Joined, the parts are
/// `text` again.
pub fn split(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(4);
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let window = &rest[..cut];
        let floor = cut - cut / 4;
        let near_end = |c: char| window.rfind(c).filter(|&at| at >= floor);
        if let Some(at) = near_end('\n').or_else(|| near_end(' ')) {
            cut = at + 1;
        }
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest);
    }
    parts
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
            let part = split(&body[offset..], max)[0];
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parts_are_small_enough_and_join_back(text in any::<String>(), max in 4usize..64) {
            let parts = split(&text, max);
            prop_assert_eq!(parts.concat(), text.clone());
            for p in &parts {
                prop_assert!(p.len() <= max, "{} > {}", p.len(), max);
            }
            if !text.is_empty() {
                prop_assert!(parts.iter().all(|p| !p.is_empty()));
            }
        }
    }

    #[test]
    fn splits_at_a_line_or_a_space_near_the_end() {
        assert_eq!(split("aaaa bbbb cccc", 10), ["aaaa bbbb ", "cccc"]);
        assert_eq!(split("aaaa\nbbbb cccc", 12), ["aaaa\nbbbb ", "cccc"]);
        // A break too early would make tiny parts: cut in the middle instead.
        assert_eq!(split("a bbbbbbbbbbbbbbb", 8), ["a bbbbbb", "bbbbbbbb", "b"]);
        // Characters are never cut.
        assert_eq!(split("ééééé", 5), ["éé", "éé", "é"]);
    }
}
