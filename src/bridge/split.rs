//! Remote messages larger than the homeserver takes in one event.
//!
//! A homeserver refuses an event over its size limit (65,536 bytes for the whole event in
//! Synapse) with 413 `M_TOO_LARGE`. Remote networks allow more (an XMPP stanza may carry a
//! few hundred KiB), so such a message is sent as several events, in order, each a part of the
//! plain body, and nothing is dropped. The limit is learnt from the homeserver's answer: the
//! parts are halved until they pass, and the size that passed is kept for the next time.
//!
//! Each part's transaction ID is the message's and the part's byte offset, so a part posted
//! again is deduplicated by the homeserver; but the offsets depend on the part size, which
//! another message may teach meanwhile, and a homeserver forgets transaction IDs after a
//! while. So where a message in parts stands ([`SplitProgress`]) is stored after each part,
//! under the remote message's ID, until the last went out, and a retry (the failure model
//! retries the whole item, also after a restart or a release from the quarantine) goes on
//! from there with the same part size: no part is posted twice.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use ruma::{OwnedEventId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::info;

use super::BridgeError;
use super::sender::RoomSender;
use crate::error::Reason;
use crate::matrix::MatrixError;
use crate::network::RemoteMessageId;
use crate::store::PortalKey;

/// The smallest part tried; below it a refusal is not about the size of the body.
const MIN_PART: usize = 1024;

/// The largest body part the homeserver took, learnt at run time (0: not learnt yet).
#[derive(Debug, Default)]
pub(super) struct PartSize(AtomicUsize);

/// Whether the homeserver refused an event for its size.
fn too_large(e: &MatrixError) -> bool {
    e.status() == Some(413) || e.errcode() == Some("M_TOO_LARGE")
}

/// Where a message sent in parts stands: the body's bytes posted, the part size in use, and
/// the first part's event ID (which stands for the message).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitProgress {
    /// Bytes of the body posted, from the start.
    pub offset: usize,
    /// The part size in use.
    pub max: usize,
    /// The first part's event ID, once posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
}

/// Posts `body` in parts from where `at` stands, each with `send(part, offset)`, halving the
/// part size while `too_large` says the homeserver refused a part for its size (not below
/// 1,024 bytes), and calling `keep` after each part posted. Returns where it ended: all of
/// the body posted. Stops at the first other failure, or at a failure of `keep`.
pub async fn post_parts<E, S, Fut>(
    body: &str,
    mut at: SplitProgress,
    mut send: S,
    too_large: impl Fn(&E) -> bool,
    mut keep: impl FnMut(&SplitProgress) -> Result<(), E>,
) -> Result<SplitProgress, E>
where
    S: FnMut(&str, usize) -> Fut,
    Fut: Future<Output = Result<String, E>>,
{
    while at.offset < body.len() {
        let part = crate::text::split_parts(&body[at.offset..], at.max)[0];
        match send(part, at.offset).await {
            Ok(id) => {
                at.first.get_or_insert(id);
                at.offset += part.len();
                keep(&at)?;
            }
            Err(e) if too_large(&e) && at.max / 2 >= MIN_PART => at.max /= 2,
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

impl RoomSender {
    /// Sends message `content` as `ghost` into `portal`'s room; when the homeserver refuses
    /// it for its size, sends its plain body in parts instead (see the module), going on
    /// where an earlier try of remote message `remote_id` stopped (also when the try had
    /// another transaction ID: a message the quarantine sends again gets a new one). Returns
    /// the first event's ID, which stands for the message. `txn` is the stable transaction
    /// ID of the message; parts use `txn` and their byte offset.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn message_in_parts(
        &self,
        portal: &PortalKey,
        remote_id: &RemoteMessageId,
        ghost: &UserId,
        room: &RoomId,
        txn: &str,
        content: &Value,
        ts: Option<u64>,
    ) -> Result<OwnedEventId, BridgeError> {
        let body = content.get("body").and_then(Value::as_str).unwrap_or("");
        let msgtype = content
            .get("msgtype")
            .and_then(Value::as_str)
            .unwrap_or("m.text");
        let record = format!("remote:{remote_id}");
        let stored = self
            .store
            .parts_progress::<SplitProgress>(portal, &record)?
            // Only where it fits this body: a record is never reused for another one.
            .filter(|at| {
                at.offset <= body.len() && body.is_char_boundary(at.offset) && at.max >= MIN_PART
            });
        let at = match stored {
            // The whole message was refused before, and parts went out: go on after them.
            Some(at) => at,
            None => {
                let error = match self
                    .hs
                    .send_message(Some(ghost), room, "m.room.message", txn, content, ts)
                    .await
                {
                    Ok(id) => return Ok(id),
                    Err(e) if too_large(&e) => e,
                    Err(e) => return Err(e.into()),
                };
                let learnt = self.part_size.0.load(Ordering::Relaxed);
                let max = if learnt > 0 && learnt < body.len() {
                    learnt
                } else {
                    body.len() / 2
                };
                if max < MIN_PART {
                    return Err(error.into());
                }
                SplitProgress {
                    offset: 0,
                    max,
                    first: None,
                }
            }
        };
        let done = post_parts(
            body,
            at,
            |part, offset| {
                let c = json!({"msgtype": msgtype, "body": part});
                let txn = format!("{txn}.{offset}");
                async move {
                    self.hs
                        .send_message(Some(ghost), room, "m.room.message", &txn, &c, ts)
                        .await
                        .map(|id| id.to_string())
                        .map_err(BridgeError::from)
                }
            },
            |e| matches!(e, BridgeError::Matrix(m) if too_large(m)),
            |at| {
                self.store
                    .put_parts_progress(portal, &record, at)
                    .map_err(BridgeError::from)
            },
        )
        .await?;
        self.store.delete_parts_progress(portal, &record)?;
        self.part_size.0.store(done.max, Ordering::Relaxed);
        info!(
            bytes = body.len(),
            part_bytes = done.max,
            "a message too large for one event was sent in parts"
        );
        done.first
            .and_then(|id| OwnedEventId::try_from(id).ok())
            .ok_or_else(|| {
                BridgeError::Invalid(Reason::new("a message sent in parts had no first part"))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use proptest::prelude::*;

    use super::*;

    /// What the fake homeserver answers a part with.
    #[derive(Debug, PartialEq)]
    enum Refusal {
        TooLarge,
        Busy,
    }

    proptest! {
        /// A body posted in parts to a homeserver that refuses parts over its limit and
        /// fails some posts passingly, retried from where the stored progress stands, with
        /// the part size the bridge learnt changing between tries (another message taught
        /// it): every byte is posted exactly once, in order, and a retry posts no part
        /// again.
        #[test]
        fn each_part_is_posted_once_across_retries(
            body in "[a-zé€]{1024,6000}",
            limit in 1024usize..5000,
            failures in proptest::collection::vec(0usize..12, 0..5),
            learnt in proptest::collection::vec(1024usize..8000, 1..6),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            // Part offset → how often it was posted and what it said.
            let posted: Mutex<BTreeMap<usize, (usize, String)>> = Mutex::default();
            let posts = Mutex::new(0usize);
            let mut stored: Option<SplitProgress> = None;
            let mut tries = 0;
            let done = loop {
                tries += 1;
                prop_assert!(tries <= 12, "no end to the retries");
                let at = stored.clone().unwrap_or(SplitProgress {
                    offset: 0,
                    max: learnt[(tries - 1) % learnt.len()].max(MIN_PART),
                    first: None,
                });
                let r = rt.block_on(post_parts(
                    &body,
                    at,
                    |part, offset| {
                        let n = {
                            let mut p = posts.lock().unwrap();
                            *p += 1;
                            *p - 1
                        };
                        let answer = if part.len() > limit && part.len() > MIN_PART {
                            Err(Refusal::TooLarge)
                        } else if failures.contains(&n) {
                            Err(Refusal::Busy)
                        } else {
                            let mut posted = posted.lock().unwrap();
                            let e = posted.entry(offset).or_insert((0, part.to_owned()));
                            e.0 += 1;
                            Ok(format!("$part{offset}"))
                        };
                        async move { answer }
                    },
                    |e| *e == Refusal::TooLarge,
                    |at| {
                        stored = Some(at.clone());
                        Ok(())
                    },
                ));
                match r {
                    Ok(done) => break done,
                    Err(Refusal::Busy) => continue,
                    // Parts at the smallest size still too large: not this test's case.
                    Err(Refusal::TooLarge) => return Ok(()),
                }
            };
            let posted = posted.lock().unwrap();
            prop_assert!(posted.values().all(|(n, _)| *n == 1), "a part was posted twice: {:?}", posted.keys());
            let joined: String = posted.values().map(|(_, p)| p.as_str()).collect();
            prop_assert_eq!(joined, body.clone());
            prop_assert_eq!(done.offset, body.len());
            prop_assert_eq!(done.first.as_deref(), Some("$part0"));
        }
    }
}
