//! `PUT /_matrix/app/v1/transactions/{txnId}`
//!
//! Spec: <https://spec.matrix.org/latest/application-service-api/#put_matrixappv1transactionstxnid>.
//! The handler parses the body, drops the bridge's own echoes, reads each timeline event once
//! ([`MatrixEvent`]), commits the transaction ID and the remaining events (as the JSON the
//! homeserver sent) to the inbox in one atomic, durable step, answers 200, and only then hands
//! the events, as read, to the portal queues. Replaying a transaction ID stores nothing.

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
use crate::bridge::Work;
use crate::bridge::event::{EphemeralEvent, EphemeralHead, Head as EventHead, MatrixEvent};
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

/// What a transaction carries, ready to commit.
struct Items {
    /// The inbox items, in the transaction's order.
    items: Vec<InboxItem>,
    /// For each item, what it reads as.
    read: Vec<Work>,
    /// Echoes and events without a room, dropped on purpose.
    dropped: usize,
    /// Events that could not be read, skipped with a warning.
    malformed: usize,
    /// What the transaction carries, independent of the fields a homeserver changes when it
    /// sends the same transaction again (`unsigned.age`, say): the IDs of its timeline events
    /// and the type, room and sender of its ephemeral events. Two transactions with one ID
    /// are the same only if this matches (homeservers may number transactions from 1 again
    /// after a restart).
    digest: [u8; 32],
}

/// Turns a transaction body into inbox items, dropping echoes and events without a room and
/// skipping, one by one, events that cannot be read (one bad event never rejects the others).
/// A timeline event whose content does not read is kept, as that item's own failure (its
/// sender is told); an ephemeral one is skipped with a warning (nobody could be told).
/// `echo` tells, by sender and room, the events of the bridge's own users (the bot and
/// ghosts) that are echoes; a ghost's message in a room shared with another network is not.
fn to_items(echo: &dyn Fn(&str, &str) -> bool, body: TxnBody) -> Items {
    let mut items = Vec::with_capacity(body.events.len());
    let mut read = Vec::with_capacity(body.events.len());
    let mut dropped = 0;
    let mut malformed = 0;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut mark = |part: &str| {
        digest.update(&(part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    };
    for raw in body.events {
        let head: EventHead = match serde_json::from_str(raw.get()) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "skipping an event that is not an event object");
                malformed += 1;
                continue;
            }
        };
        mark(head.event_id.as_deref().unwrap_or(""));
        let (Some(room), Some(sender), Some(_)) = (&head.room_id, &head.sender, &head.kind) else {
            dropped += 1;
            continue;
        };
        if echo(sender, room) {
            dropped += 1;
            continue;
        }
        let room_id = room.clone();
        items.push(InboxItem::Matrix {
            room_id,
            event: raw,
        });
        read.push(Work::matrix(MatrixEvent::from_head(head)));
    }
    let ephemeral = if body.ephemeral.is_empty() {
        body.ephemeral_unstable
    } else {
        body.ephemeral
    };
    for raw in ephemeral {
        let head: EphemeralHead = match serde_json::from_str(raw.get()) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "skipping an ephemeral event that is not an event object");
                malformed += 1;
                continue;
            }
        };
        for part in [&head.kind, &head.room_id, &head.sender] {
            mark(part.as_deref().unwrap_or(""));
        }
        if head.kind.is_none() || head.sender.as_deref().is_some_and(|s| echo(s, "")) {
            dropped += 1;
            continue;
        }
        let ev = match EphemeralEvent::from_head(&head) {
            Ok(ev) => ev,
            Err(e) => {
                warn!(kind = e.kind.as_deref().unwrap_or(""), error = %e, "skipping an ephemeral event that cannot be read");
                malformed += 1;
                continue;
            }
        };
        let room_id = head.room_id.map(Cow::into_owned);
        items.push(InboxItem::Ephemeral {
            room_id,
            event: raw,
        });
        read.push(Work::ephemeral(Ok(ev)));
    }
    let mut out = [0; 32];
    out.copy_from_slice(digest.finish().as_ref());
    Items {
        items,
        read,
        dropped,
        malformed,
        digest: out,
    }
}

/// What [`to_items`] makes of a transaction body, as counts (items, dropped, malformed) and
/// each item's room; `None` when the body is not a transaction (the handler answers 400). For
/// the fuzz targets.
pub(crate) fn read_counts(
    echo: &dyn Fn(&str, &str) -> bool,
    body: &[u8],
) -> Option<(usize, usize, usize, Vec<Option<String>>)> {
    let parsed: TxnBody = serde_json::from_slice(body).ok()?;
    let out = to_items(echo, parsed);
    let rooms = out
        .items
        .iter()
        .map(|i| match i {
            InboxItem::Matrix { room_id, .. } => Some(room_id.clone()),
            InboxItem::Ephemeral { room_id, .. } => room_id.clone(),
            InboxItem::Remote { .. } => None,
        })
        .collect();
    Some((out.items.len(), out.dropped, out.malformed, rooms))
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
            .metrics()
            .txn_seconds
            .with_label_values(&[r])
            .observe(started.elapsed().as_secs_f64());
    };
    let parsed: TxnBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            warn!(txn_id, error = %crate::error::chain(&e), "transaction body is not valid JSON");
            result("bad_json");
            return matrix_error(
                StatusCode::BAD_REQUEST,
                "M_NOT_JSON",
                &format!("Body is not a valid transaction: {e}"),
            );
        }
    };
    let echo = |user: &str, room: &str| bridge.is_echo(user, room);
    let Items {
        items,
        read,
        dropped,
        malformed,
        digest,
    } = to_items(&echo, parsed);
    if malformed > 0 {
        warn!(
            txn_id,
            malformed, "transaction has events that cannot be read; the others go on"
        );
        bridge
            .metrics()
            .skipped_events
            .with_label_values(&["malformed"])
            .inc_by(malformed as u64);
    }
    match bridge.commit_transaction(&txn_id, &digest, &items).await {
        Ok(TxnOutcome::New(seqs)) => {
            debug!(
                txn_id,
                events = items.len(),
                dropped,
                "transaction committed"
            );
            // The stored JSON has done its part; the queue gets the event as read.
            for (seq, work) in seqs.into_iter().zip(read) {
                bridge.dispatch_work(seq, work);
            }
            result("ok");
        }
        Ok(TxnOutcome::Duplicate) => {
            debug!(
                txn_id,
                "transaction seen before with the same events; nothing to do"
            );
            result("duplicate");
        }
        Err(e) => {
            error!(txn_id, error = %crate::error::chain(&e), "could not store transaction; the homeserver will retry");
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
        let out = to_items(
            &|u: &str, room: &str| u.starts_with("@_") && room != "!hub:hs",
            parsed,
        );
        (out.items, out.dropped)
    }

    fn digest(body: &str) -> [u8; 32] {
        to_items(
            &|_: &str, _: &str| false,
            serde_json::from_str(body).unwrap(),
        )
        .digest
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
    fn unreadable_events_are_skipped_one_by_one() {
        let good = r#"{"type":"m.room.message","room_id":"!r:hs","sender":"@a:hs","event_id":"$g","content":{"body":"x"}}"#;
        for bad in [
            "42",
            "null",
            r#""text""#,
            "[]",
            r#"{"room_id":7}"#,
            r#"{"sender":["@a:hs"]}"#,
            r#"{"type":{"nested":true}}"#,
            r#"{"type":"m.typing","room_id":"!r:hs","content":{"user_ids":7}}"#,
            r#"{"type":"m.receipt","content":{}}"#,
            r#"{"type":"m.presence","sender":"@a:hs","content":{"presence":["online"]}}"#,
        ] {
            let body = format!(r#"{{"events":[{bad},{good},{bad}],"ephemeral":[{bad},{TYPING}]}}"#);
            let parsed: TxnBody = serde_json::from_str(&body).unwrap();
            let out = to_items(&|_: &str, _: &str| false, parsed);
            assert_eq!(out.items.len(), 2, "{bad}: the good events go on");
            assert_eq!(out.malformed + out.dropped, 3, "{bad}");
        }
    }

    #[test]
    fn the_digest_tells_reused_transaction_ids_apart() {
        let a = r#"{"events":[{"type":"m.room.message","room_id":"!r:hs","sender":"@a:hs","event_id":"$1","content":{},"unsigned":{"age":5}}]}"#;
        let a_again = r#"{"events":[{"type":"m.room.message","room_id":"!r:hs","sender":"@a:hs","event_id":"$1","content":{},"unsigned":{"age":900}}]}"#;
        let b = r#"{"events":[{"type":"m.room.message","room_id":"!r:hs","sender":"@a:hs","event_id":"$2","content":{}}]}"#;
        let typing = format!(r#"{{"ephemeral":[{TYPING}]}}"#);
        let empty = r#"{"events":[]}"#;
        assert_eq!(
            digest(a),
            digest(a_again),
            "a resend differs only in volatile fields"
        );
        let all = [digest(a), digest(b), digest(&typing), digest(empty)];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        // Where one event ends and the next starts is part of the digest.
        let ab = r#"{"events":[{"event_id":"$a"},{"event_id":"$b"}]}"#;
        let a_b = r#"{"events":[{"event_id":"$a$b"}]}"#;
        assert_ne!(digest(ab), digest(a_b));
    }

    /// Contents for the kinds the core reads, valid and not.
    fn content() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just(r#"{"msgtype":"m.text","body":"hi"}"#.to_owned()),
            Just(r#"{"msgtype":"m.text"}"#.to_owned()),
            Just(r#"{"msgtype":"org.example","body":"x","extra":[1]}"#.to_owned()),
            Just(r#"{"membership":"invite","is_direct":true}"#.to_owned()),
            Just(r#"{"membership":7}"#.to_owned()),
            Just(
                r#"{"m.relates_to":{"rel_type":"m.annotation","event_id":"$t","key":"k"}}"#
                    .to_owned()
            ),
            Just(r#"{"redacts":"$t"}"#.to_owned()),
            Just("{}".to_owned()),
            Just("null".to_owned()),
            "[a-z\\\"{}:,]{0,24}".prop_map(|s| format!("{s:?}")),
        ]
    }

    proptest::proptest! {
        /// Every timeline event that is kept is read once, as it enters; the read is what a
        /// replay makes of the stored JSON, and an unreadable content is that event's own
        /// error, never the transaction's.
        #[test]
        fn kept_events_are_read_as_a_replay_reads_them(
            events in proptest::collection::vec((
                proptest::sample::select(vec![
                    "m.room.message", "m.room.member", "m.reaction", "m.room.redaction",
                    "m.room.encryption", "m.room.encrypted", "m.room.name", "org.example",
                ]),
                proptest::option::of(proptest::sample::select(vec!["", "@b:hs"])),
                content(),
            ), 0..6),
        ) {
            let body: Vec<String> = events
                .iter()
                .enumerate()
                .map(|(i, (kind, state_key, content))| {
                    let state = state_key.map(|k| format!(r#","state_key":"{k}""#)).unwrap_or_default();
                    format!(r#"{{"type":"{kind}","room_id":"!r:hs","sender":"@a:hs","event_id":"$e{i}"{state},"content":{content}}}"#)
                })
                .collect();
            let body = format!(r#"{{"events":[{}]}}"#, body.join(","));
            let out = to_items(&|_: &str, _: &str| false, serde_json::from_str(&body).unwrap());
            proptest::prop_assert_eq!(out.items.len(), events.len());
            proptest::prop_assert_eq!(out.read.len(), events.len());
            for (item, read) in out.items.iter().zip(&out.read) {
                let InboxItem::Matrix { room_id, event } = item else {
                    panic!("not a timeline item");
                };
                let Work::Matrix(read) = read else {
                    panic!("timeline events are read as timeline events");
                };
                let replay = MatrixEvent::read(room_id, event);
                proptest::prop_assert_eq!(format!("{read:?}"), format!("{:?}", Box::new(replay)));
            }
        }

        /// Every ephemeral event is read once, as it enters: one that reads is kept and read
        /// as a replay reads it; one that does not is skipped alone, counted, and the others
        /// (timeline and ephemeral) go on.
        #[test]
        fn ephemeral_events_are_read_as_they_enter_or_skipped_alone(
            ephemeral in proptest::collection::vec((
                proptest::sample::select(vec!["m.typing", "m.receipt", "m.presence", "org.example"]),
                proptest::sample::select(vec![
                    r#","room_id":"!r:hs""#, r#","sender":"@a:hs""#, r#","room_id":"!r:hs","sender":"@a:hs""#, "",
                ]),
                proptest::sample::select(vec![
                    r#"{"user_ids":["@a:hs"]}"#, r#"{"user_ids":"@a:hs"}"#,
                    r#"{"$e":{"m.read":{"@a:hs":{"ts":1}}}}"#, r#"{"$e":[]}"#,
                    r#"{"presence":"online","status_msg":"hi"}"#, r#"{"presence":1}"#,
                    "{}", "null",
                ]),
            ), 0..8),
        ) {
            let good = r#"{"type":"m.room.message","room_id":"!r:hs","sender":"@a:hs","event_id":"$g","content":{"msgtype":"m.text","body":"x"}}"#;
            let eph: Vec<String> = ephemeral
                .iter()
                .map(|(kind, place, content)| format!(r#"{{"type":"{kind}"{place},"content":{content}}}"#))
                .collect();
            let body = format!(r#"{{"events":[{good}],"ephemeral":[{}]}}"#, eph.join(","));
            let out = to_items(&|_: &str, _: &str| false, serde_json::from_str(&body).unwrap());
            let readable: Vec<&String> = eph
                .iter()
                .filter(|e| EphemeralEvent::read(&RawValue::from_string((*e).clone()).unwrap()).is_ok())
                .collect();
            proptest::prop_assert_eq!(out.items.len(), 1 + readable.len());
            proptest::prop_assert_eq!(out.malformed, eph.len() - readable.len());
            proptest::prop_assert!(matches!(&out.read[0], Work::Matrix(r) if r.is_ok()));
            for ((item, read), json) in out.items[1..].iter().zip(&out.read[1..]).zip(readable) {
                let InboxItem::Ephemeral { event, .. } = item else {
                    panic!("not an ephemeral item");
                };
                proptest::prop_assert_eq!(event.get(), json.as_str(), "stored as sent");
                let Work::Ephemeral(read) = read else {
                    panic!("ephemeral events are read as ephemeral events");
                };
                let replay = EphemeralEvent::read(event).expect("a kept event reads again");
                proptest::prop_assert_eq!(format!("{:?}", read.as_ref().as_ref().unwrap()), format!("{replay:?}"));
            }
        }
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
