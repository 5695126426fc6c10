//! Room events: messages, redactions, reading one event, and the ephemeral typing
//! notifications and read receipts.

use std::time::Duration;

use ruma::api::client::{
    message::get_message_events, message::send_message_event, receipt::create_receipt,
    redact::redact_event, room::get_room_event, typing::create_typing_event,
};
use ruma::{EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, UInt, UserId};
use serde_json::Value as JsonValue;
use tracing::warn;

use super::send::{Token, raw};
use super::{HomeserverClient, MatrixError};
use crate::error::Reason;

impl HomeserverClient {
    /// `PUT /rooms/{room}/send/{type}/{txn_id}`: sends a message-like event as `as_user`.
    ///
    /// `txn_id` must be derived from something stable (the remote message ID, the inbox
    /// sequence number): the homeserver deduplicates by (sender, txn_id), so a retried call
    /// never posts twice. `ts` (milliseconds since the epoch) sets the event's
    /// `origin_server_ts` through the appservice `?ts=` parameter.
    pub async fn send_message(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        event_type: &str,
        txn_id: &str,
        content: &JsonValue,
        ts: Option<u64>,
    ) -> Result<OwnedEventId, MatrixError> {
        let mut req = send_message_event::v3::Request::new_raw(
            room.to_owned(),
            txn_id.into(),
            event_type.into(),
            raw(content)?,
        );
        req.timestamp = ts.and_then(|ms| match UInt::new(ms) {
            Some(ms) => Some(MilliSecondsSinceUnixEpoch(ms)),
            None => {
                warn!(ts = ms, "timestamp out of range, sending without it");
                None
            }
        });
        let resp = self.call("send", as_user, Token::Appservice, req).await?;
        Ok(resp.event_id)
    }

    /// `PUT /rooms/{room}/redact/{event_id}/{txn_id}`: redacts an event as `as_user`;
    /// returns the redaction's event ID. `txn_id` follows the same rule as in
    /// [`send_message`](Self::send_message).
    pub async fn redact(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        event_id: &EventId,
        txn_id: &str,
        reason: Option<&str>,
    ) -> Result<OwnedEventId, MatrixError> {
        let mut req =
            redact_event::v3::Request::new(room.to_owned(), event_id.to_owned(), txn_id.into());
        req.reason = reason.map(str::to_owned);
        let resp = self.call("redact", as_user, Token::Appservice, req).await?;
        Ok(resp.event_id)
    }

    /// `GET /rooms/{room}/event/{event_id}`: one event as raw JSON, as seen by `as_user`.
    pub async fn get_event(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        event_id: &EventId,
    ) -> Result<JsonValue, MatrixError> {
        let req = get_room_event::v3::Request::new(room.to_owned(), event_id.to_owned());
        let resp = self.call("event", as_user, Token::Appservice, req).await?;
        serde_json::from_str(resp.event.json().get())
            .map_err(|e| MatrixError::Decode(Reason::because("event", e)))
    }

    /// `GET /rooms/{room}/messages?dir=b&limit={limit}&from={from}`: one page of the room's
    /// timeline as raw JSON, newest first, from the latest event (or from `from`, a token
    /// an earlier page ended with), as seen by `as_user` (the bot when `None`); with the
    /// token where the next older page starts, `None` at the room's start.
    pub async fn timeline_page(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        from: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<JsonValue>, Option<String>), MatrixError> {
        let mut req = get_message_events::v3::Request::backward(room.to_owned())
            .from(from.map(str::to_owned));
        req.limit = UInt::from(limit);
        let resp = self
            .call("messages", as_user, Token::Appservice, req)
            .await?;
        let events = resp
            .chunk
            .iter()
            .map(|e| {
                serde_json::from_str(e.json().get())
                    .map_err(|e| MatrixError::Decode(Reason::because("timeline event", e)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // An empty page also means the start was reached.
        let next = resp.end.filter(|_| !events.is_empty());
        Ok((events, next))
    }

    // ----- ephemeral -----

    /// `PUT /rooms/{room}/typing/{user}`: starts (for `timeout_ms`) or stops `as_user`'s
    /// typing notification.
    pub async fn set_typing(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        typing: bool,
        timeout_ms: u64,
    ) -> Result<(), MatrixError> {
        use create_typing_event::v3::{Typing, TypingInfo};
        let state = if typing {
            Typing::Yes(TypingInfo::new(Duration::from_millis(timeout_ms)))
        } else {
            Typing::No
        };
        let req = create_typing_event::v3::Request::new(
            self.acting(as_user).to_owned(),
            room.to_owned(),
            state,
        );
        self.call("typing", as_user, Token::Appservice, req).await?;
        Ok(())
    }

    /// `POST /rooms/{room}/receipt/m.read/{event_id}`: marks `event_id` (and everything
    /// before it) as read by `as_user`.
    pub async fn send_read_receipt(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        event_id: &EventId,
    ) -> Result<(), MatrixError> {
        let req = create_receipt::v3::Request::new(
            room.to_owned(),
            create_receipt::v3::ReceiptType::Read,
            event_id.to_owned(),
        );
        self.call("receipt", as_user, Token::Appservice, req)
            .await?;
        Ok(())
    }
}
