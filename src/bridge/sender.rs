//! [`RoomSender`]: what the bridge posts into Matrix rooms, as a ghost or as the bot —
//! messages (in parts when one event is too large, `split.rs`), notices, edits, reactions,
//! redactions, read receipts, typing and uploaded files — with what it learnt while doing
//! so: the largest part the homeserver took, its upload limit, and which rooms were already
//! told something once (missing power, messages an encrypted room keeps from the bridge).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ruma::{EventId, OwnedEventId, OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};
use tracing::warn;

use super::portal::{PowerNeed, power_levels_for};
use super::split::PartSize;
use super::{BridgeError, room_id, user_id};
use crate::matrix::HomeserverClient;
use crate::store::Store;

/// The sender of the bridge's events into rooms. Holds its own handles on the homeserver
/// and the store (for where a message in parts stands).
pub(super) struct RoomSender {
    pub(super) hs: HomeserverClient,
    pub(super) store: Store,
    bot: OwnedUserId,
    /// The largest message body part the homeserver took, once one was too large.
    pub(super) part_size: PartSize,
    /// The homeserver's upload limit, once read.
    upload_limit: OnceLock<u64>,
    /// (room, need) pairs whose missing power the room was told about.
    power_told: Mutex<HashSet<(String, String)>>,
    /// When each encrypted portal room was last told that a message was not bridged, by
    /// room ID.
    encrypted_notices: Mutex<HashMap<String, Instant>>,
}

impl RoomSender {
    /// A sender acting as `bot` or the ghosts through `hs`.
    pub(super) fn new(hs: HomeserverClient, store: Store, bot: OwnedUserId) -> Self {
        RoomSender {
            hs,
            store,
            bot,
            part_size: PartSize::default(),
            upload_limit: OnceLock::new(),
            power_told: Mutex::default(),
            encrypted_notices: Mutex::default(),
        }
    }

    /// Sends an event of `event_type` with `content` into `room` as `as_user` (the bot when
    /// `None`), at `ts` when given; `txn` makes a retry one event. Returns its ID.
    pub(super) async fn event(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        event_type: &str,
        txn: &str,
        content: &Value,
        ts: Option<u64>,
    ) -> Result<OwnedEventId, BridgeError> {
        Ok(self
            .hs
            .send_message(as_user, room, event_type, txn, content, ts)
            .await?)
    }

    /// Sets state `event_type`/`state_key` of `room` to `content`, as `as_user` (the bot when
    /// `None`).
    pub(super) async fn state(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        event_type: &str,
        state_key: &str,
        content: &Value,
    ) -> Result<(), BridgeError> {
        self.hs
            .send_state(as_user, room, event_type, state_key, content)
            .await?;
        Ok(())
    }

    /// Sends an `m.notice` as `sender` (the bot when `None`).
    pub(super) async fn notice(
        &self,
        sender: Option<&str>,
        room: &str,
        txn: &str,
        text: &str,
    ) -> Result<(), BridgeError> {
        let rid = room_id(room)?;
        let as_user = sender.map(user_id).transpose()?;
        let content = json!({"msgtype": "m.notice", "body": text});
        self.event(
            as_user.as_deref(),
            &rid,
            "m.room.message",
            txn,
            &content,
            None,
        )
        .await?;
        Ok(())
    }

    /// Redacts `event` of `room` as `as_user` (the bot when `None`).
    pub(super) async fn redact(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        event: &EventId,
        txn: &str,
        reason: Option<&str>,
    ) -> Result<(), BridgeError> {
        self.hs.redact(as_user, room, event, txn, reason).await?;
        Ok(())
    }

    /// A read receipt of `as_user` up to `event`.
    pub(super) async fn read_receipt(
        &self,
        as_user: &UserId,
        room: &RoomId,
        event: &EventId,
    ) -> Result<(), BridgeError> {
        Ok(self
            .hs
            .send_read_receipt(Some(as_user), room, event)
            .await?)
    }

    /// Shows `as_user` typing in `room` (for 30 s at most), or no longer.
    pub(super) async fn typing(
        &self,
        as_user: &UserId,
        room: &RoomId,
        active: bool,
    ) -> Result<(), BridgeError> {
        const TYPING_MS: u64 = 30_000;
        Ok(self
            .hs
            .set_typing(Some(as_user), room, active, TYPING_MS)
            .await?)
    }

    /// Stores a file on the homeserver as `as_user`; returns its `mxc://` URL.
    pub(super) async fn upload(
        &self,
        as_user: &UserId,
        bytes: Vec<u8>,
        mimetype: &str,
        name: &str,
    ) -> Result<String, crate::matrix::MatrixError> {
        self.hs.upload(Some(as_user), bytes, mimetype, name).await
    }

    /// The homeserver's upload limit, read once; `None` while it cannot be told.
    pub(super) async fn upload_limit(&self) -> Option<u64> {
        if let Some(limit) = self.upload_limit.get() {
            return Some(*limit);
        }
        match self.hs.media_upload_limit().await {
            Ok(Some(limit)) => Some(*self.upload_limit.get_or_init(|| limit)),
            _ => None,
        }
    }

    /// After the homeserver refused `speaker` (the bot when `None`) something in `room` for
    /// lack of power: says so in the room, once per room and need while the bridge runs, with
    /// the power level it takes, so a room admin can fix it. Other failures are only logged.
    pub(super) async fn tell_missing_power(
        &self,
        room: &str,
        speaker: Option<&str>,
        need: PowerNeed<'_>,
        doing: &str,
        error: &BridgeError,
    ) {
        let BridgeError::Matrix(e) = error else {
            return;
        };
        if e.errcode() != Some("M_FORBIDDEN") {
            return;
        }
        let what = match need {
            PowerNeed::State(t) => t.to_owned(),
            PowerNeed::Redact => "redact".to_owned(),
        };
        let first = self
            .power_told
            .lock()
            .expect("power_told lock")
            .insert((room.to_owned(), what.clone()));
        if !first {
            return;
        }
        let who = speaker.map_or_else(|| self.bot.to_string(), str::to_owned);
        let (Ok(rid), Ok(as_user)) = (room_id(room), speaker.map(user_id).transpose()) else {
            return;
        };
        let levels = self
            .hs
            .get_state(as_user.as_deref(), &rid, "m.room.power_levels", "")
            .await
            .ok()
            .flatten();
        let (needed, has) = power_levels_for(levels.as_ref(), &who, need);
        warn!(room_id = room, speaker = %who, need = %what, needed, has, "missing power in a room");
        let text = format!(
            "⚠ I could not {doing} in this room: it needs power level {needed} and I ({who}) have {has}. A room admin can give me power level {needed} or more in the room settings."
        );
        let txn = format!("isthmus.power.{}.{what}", super::now_ms());
        if let Err(e) = self.notice(speaker, room, &txn, &text).await {
            warn!(room_id = room, error = %crate::error::chain(&e), "could not say that power is missing");
        }
    }

    /// Whether `room` may be told now that a message was not bridged because it is
    /// encrypted: not when it was told less than `interval` ago. A yes counts as told.
    pub(super) fn may_tell_encrypted(&self, room: &str, interval: Duration) -> bool {
        let now = Instant::now();
        let mut last = self.encrypted_notices.lock().expect("notices lock");
        if last
            .get(room)
            .is_some_and(|t| now.saturating_duration_since(*t) < interval)
        {
            return false;
        }
        last.insert(room.to_owned(), now);
        true
    }
}
