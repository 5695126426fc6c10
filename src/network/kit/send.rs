//! Sending what takes more than one send: a message in parts, a room message to each member.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::network::{ConnectorStore, NetworkError, PartsSent, RemoteMessageId, RemoteUserId};

/// Sends `parts` in order with `send`, after those an earlier try delivered (`resume`, from
/// that try's [`NetworkError::Partly`]; a resume for another number of parts is not one),
/// stopping at the first failure, and returns the first part's ID (`None` without parts).
///
/// A failure among several parts is a [`NetworkError::Partly`] saying which parts went out
/// (the verdict stays the failed part's), so that the retry the core makes sends only the
/// rest; a single part's failure is returned as it is.
pub async fn send_parts<P, F, Fut>(
    parts: Vec<P>,
    resume: &PartsSent,
    mut send: F,
) -> Result<Option<RemoteMessageId>, NetworkError>
where
    F: FnMut(P) -> Fut,
    Fut: Future<Output = Result<RemoteMessageId, NetworkError>>,
{
    let total = parts.len();
    let mut sent = if resume.total == total && resume.parts <= total {
        resume.clone()
    } else {
        if !resume.is_empty() {
            warn!(
                parts = total,
                earlier = resume.total,
                "the message splits otherwise than on its earlier try; sending it whole again"
            );
        }
        PartsSent {
            total,
            ..PartsSent::default()
        }
    };
    for part in parts.into_iter().skip(sent.parts) {
        match send(part).await {
            Ok(id) => {
                sent.first.get_or_insert(id);
                sent.parts += 1;
            }
            Err(e) if total == 1 => return Err(e),
            Err(e) => {
                return Err(NetworkError::Partly {
                    sent,
                    error: Box::new(e),
                });
            }
        }
    }
    Ok(sent.first)
}

/// The store key of room message `event_id`'s delivery record ([`Progress`]).
fn record_key(event_id: &str) -> String {
    format!("fan:{event_id}")
}

/// Who has room message `event_id` so far, kept in the store only between tries: written
/// once when a try ends with members still to do, read once at the start of the next try,
/// removed once the message reached everyone it could.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    /// The members who got the whole message.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    delivered: BTreeSet<String>,
    /// The members who got some of its parts, and which.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    parts: BTreeMap<String, PartsSent>,
}

impl Progress {
    /// The record, from its stored form; a record that does not read is none (its members
    /// get the message again rather than never).
    fn read(value: serde_json::Value) -> Self {
        serde_json::from_value(value).unwrap_or_else(|e| {
            warn!(error = %e, "a room message's delivery record does not read; sending to every member");
            Self::default()
        })
    }
}

/// Runs the blocking store call `f` (a write that waits for the disk) without holding up the
/// runtime's other tasks: on a multi-threaded runtime the worker hands its tasks over first.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Delivers room message `event_id` to each of `members` with `send`, so that a retry goes
/// only to those still missing it; a member's delivery in parts that stopped part-way is
/// resumed, and `send` gets how far it got (the second argument).
///
/// Who got it is kept in memory during the try; the store is read once at the start (a
/// record of an earlier try, if any), written once (one flush) only when the try ends with
/// members still to do, and the record removed at the end only if there is one. A message
/// that reaches everyone at once costs one read.
///
/// While any member failed passingly ([`NetworkError::is_transient`]) the outcome is
/// [`NetworkError::Transient`] naming them ("not yet delivered to ..."), and the deliveries
/// made are remembered for the retry. Once none is pending, the record is removed, and the
/// outcome is [`NetworkError::Undeliverable`] naming the members who refused it for good
/// ("not delivered to ..."), else what the first send of this call returned (`None` when
/// everyone had it already). When the deliveries of a try cannot be remembered for the
/// retry, the call fails (an internal error), as the store is then broken.
pub async fn fan_out<T, F, Fut>(
    store: &dyn ConnectorStore,
    event_id: &str,
    members: &[RemoteUserId],
    mut send: F,
) -> Result<Option<T>, NetworkError>
where
    F: FnMut(&RemoteUserId, PartsSent) -> Fut,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let key = record_key(event_id);
    let earlier = match store.get(&key) {
        Ok(v) => v.map(Progress::read),
        Err(e) => {
            warn!(error = %crate::error::chain(&e), "could not read a room message's delivery record; sending to every member");
            None
        }
    };
    let stored = earlier.is_some();
    let mut progress = earlier.unwrap_or_default();
    let mut first = None;
    let mut failed = Vec::new();
    let mut passing = Vec::new();
    for member in members {
        if progress.delivered.contains(member.as_str()) {
            continue;
        }
        let resume = progress.parts.remove(member.as_str()).unwrap_or_default();
        match send(member, resume).await {
            Ok(id) => {
                first.get_or_insert(id);
                progress.delivered.insert(member.as_str().to_owned());
            }
            Err(e) if e.is_transient() => {
                if let NetworkError::Partly { sent, .. } = &e {
                    progress
                        .parts
                        .insert(member.as_str().to_owned(), sent.clone());
                }
                debug!(%member, error = %crate::error::chain(&e), "room message delayed for a member");
                passing.push(format!("{member} ({e})"));
            }
            Err(e) => {
                warn!(%member, error = %crate::error::chain(&e), "room message not delivered to a member");
                failed.push(format!("{member} ({e})"));
            }
        }
    }
    if !passing.is_empty() {
        let value = serde_json::to_value(&progress).unwrap_or_default();
        blocking(|| store.put(&key, &value))?;
        return Err(NetworkError::Transient(
            format!("not yet delivered to {}", passing.join(", ")).into(),
        ));
    }
    if stored {
        let _ = store.delete(&key);
    }
    if !failed.is_empty() {
        return Err(NetworkError::Undeliverable(
            format!("not delivered to {}", failed.join(", ")).into(),
        ));
    }
    Ok(first)
}

#[cfg(test)]
mod tests;
