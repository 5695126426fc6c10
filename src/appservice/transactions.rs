//! `PUT /_matrix/app/v1/transactions/{txnId}`
//!
//! Spec: <https://spec.matrix.org/latest/application-service-api/#put_matrixappv1transactionstxnid>.
//! The handler parses the body, drops the bridge's own echoes, commits the transaction ID and
//! the remaining events to the inbox in one atomic, durable step, answers 200, and only then
//! hands the events to the portal queues. Replaying a transaction ID stores nothing.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{debug, error, warn};

use super::{AppState, matrix_error};
use crate::bridge::now_ms;
use crate::store::{InboxItem, TxnOutcome};

/// The body of a transaction, events kept raw.
#[derive(Deserialize)]
struct TxnBody {
    #[serde(default)]
    events: Vec<Box<RawValue>>,
    #[serde(default)]
    ephemeral: Vec<Box<RawValue>>,
    /// The unstable name of `ephemeral` (MSC2409), still sent by some homeservers.
    #[serde(default, rename = "de.sorunome.msc2409.ephemeral")]
    ephemeral_unstable: Vec<Box<RawValue>>,
}

/// The fields of an event needed to route it.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default, borrow)]
    room_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    sender: Option<Cow<'a, str>>,
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
}

/// Turns a transaction body into inbox items, dropping echoes and events without a room.
/// Returns the items and how many events were dropped.
/// `echo` tells, by sender and room, the events of the bridge's own users (the bot and
/// ghosts) that are echoes; a ghost's message in a room shared with another network is not.
fn to_items(
    echo: &dyn Fn(&str, &str) -> bool,
    body: TxnBody,
) -> Result<(Vec<InboxItem>, usize), String> {
    let mut items = Vec::with_capacity(body.events.len());
    let mut dropped = 0;
    for raw in body.events {
        let head: Head = serde_json::from_str(raw.get())
            .map_err(|e| format!("an event is not an object: {e}"))?;
        let (Some(room), Some(sender), Some(_)) = (head.room_id, head.sender, head.kind) else {
            dropped += 1;
            continue;
        };
        if echo(&sender, &room) {
            dropped += 1;
            continue;
        }
        let room_id = room.into_owned();
        items.push(InboxItem::Matrix {
            room_id,
            event: raw,
        });
    }
    let ephemeral = if body.ephemeral.is_empty() {
        body.ephemeral_unstable
    } else {
        body.ephemeral
    };
    for raw in ephemeral {
        let head: Head = serde_json::from_str(raw.get())
            .map_err(|e| format!("an ephemeral event is not an object: {e}"))?;
        if head.sender.as_deref().is_some_and(|s| echo(s, "")) {
            dropped += 1;
            continue;
        }
        let room_id = head.room_id.map(Cow::into_owned);
        items.push(InboxItem::Ephemeral {
            room_id,
            event: raw,
        });
    }
    Ok((items, dropped))
}

/// The handler.
pub(super) async fn push(
    State(state): State<Arc<AppState>>,
    Path(txn_id): Path<String>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let bridge = &state.bridge;
    let result = |r: &str| {
        bridge
            .metrics
            .txn_seconds
            .with_label_values(&[r])
            .observe(started.elapsed().as_secs_f64());
    };
    let parsed: TxnBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            warn!(txn_id, error = %e, "transaction body is not valid JSON");
            result("bad_json");
            return matrix_error(
                StatusCode::BAD_REQUEST,
                "M_NOT_JSON",
                &format!("Body is not a valid transaction: {e}"),
            );
        }
    };
    let echo = |user: &str, room: &str| {
        bridge.in_namespace(user)
            && (room.is_empty() || user == bridge.bot().as_str() || !bridge.store.has_fanout(room))
    };
    let (items, dropped) = match to_items(&echo, parsed) {
        Ok(x) => x,
        Err(e) => {
            warn!(txn_id, error = %e, "transaction has malformed events");
            result("bad_json");
            return matrix_error(StatusCode::BAD_REQUEST, "M_BAD_JSON", &e);
        }
    };
    match bridge
        .store
        .commit_transaction(&txn_id, &items, now_ms())
        .await
    {
        Ok(TxnOutcome::New(seqs)) => {
            debug!(
                txn_id,
                events = items.len(),
                dropped,
                "transaction committed"
            );
            for (seq, item) in seqs.into_iter().zip(items) {
                bridge.dispatch(seq, item);
            }
            bridge
                .metrics
                .inbox_depth
                .set(bridge.store.inbox_len() as i64);
            result("ok");
        }
        Ok(TxnOutcome::Duplicate) => {
            debug!(txn_id, "transaction seen before; nothing to do");
            result("duplicate");
        }
        Err(e) => {
            error!(txn_id, error = %e, "could not store transaction; the homeserver will retry");
            result("error");
            return matrix_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                "Could not store the transaction",
            );
        }
    }
    (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(body: &str) -> (Vec<InboxItem>, usize) {
        let parsed: TxnBody = serde_json::from_str(body).unwrap();
        // `!hub:hs` has members on another network: ghost events there are not echoes.
        to_items(
            &|u: &str, room: &str| u.starts_with("@_") && room != "!hub:hs",
            parsed,
        )
        .unwrap()
    }

    const TYPING: &str =
        r#"{"type":"m.typing","room_id":"!r:hs","content":{"user_ids":["@a:hs"]}}"#;

    #[test]
    fn ephemeral_is_read_under_both_keys() {
        for key in ["ephemeral", "de.sorunome.msc2409.ephemeral"] {
            let (items, _) = items(&format!(r#"{{"events":[],"{key}":[{TYPING}]}}"#));
            assert_eq!(items.len(), 1, "key {key}");
            assert!(
                matches!(&items[0], InboxItem::Ephemeral { room_id: Some(r), .. } if r == "!r:hs")
            );
        }
        // Both keys with the same events: taken once.
        let (items, _) = items(&format!(
            r#"{{"ephemeral":[{TYPING}],"de.sorunome.msc2409.ephemeral":[{TYPING}]}}"#
        ));
        assert_eq!(items.len(), 1);
    }

    #[test]
    fn echoes_and_roomless_events_are_dropped() {
        let body = r#"{"events":[
            {"type":"m.room.message","room_id":"!r:hs","sender":"@_ghost:hs","content":{}},
            {"type":"m.room.message","sender":"@a:hs","content":{}},
            {"type":"m.room.message","room_id":"!r:hs","sender":"@a:hs","content":{"body":"x"}}
        ],"ephemeral":[{"type":"m.presence","sender":"@_ghost:hs","content":{}}]}"#;
        let (items, dropped) = items(body);
        assert_eq!((items.len(), dropped), (1, 3));
        match &items[0] {
            InboxItem::Matrix { room_id, event } => {
                assert_eq!(room_id, "!r:hs");
                assert!(
                    event.get().contains(r#""body":"x""#),
                    "raw event kept as sent"
                );
            }
            other => panic!("unexpected item {other:?}"),
        }
    }

    #[test]
    fn non_object_event_is_an_error() {
        let parsed: TxnBody = serde_json::from_str(r#"{"events":[42]}"#).unwrap();
        assert!(to_items(&|_: &str, _: &str| false, parsed).is_err());
    }

    #[test]
    fn ghost_messages_in_shared_rooms_are_kept() {
        let body = r#"{"events":[
            {"type":"m.room.message","room_id":"!hub:hs","sender":"@_ghost:hs","content":{}}
        ],"ephemeral":[{"type":"m.typing","room_id":"!hub:hs","sender":"@_ghost:hs","content":{}}]}"#;
        let (items, dropped) = items(body);
        assert_eq!((items.len(), dropped), (1, 1));
    }
}
