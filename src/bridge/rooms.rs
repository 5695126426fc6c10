//! [`Rooms`]: the rooms the bridge makes and who it lets in or out of them. Room creation,
//! joins, leaves and invites, member lists, aliases, the room state the core reads
//! (encryption, power levels, creators, topic) and the latest events of a room go to the homeserver through here; what the bridge
//! posts into rooms goes through [`super::sender::RoomSender`], and ghosts' own joins and
//! profiles through [`super::ghosts::Ghosts`].

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use crate::matrix::{HomeserverClient, MatrixError, RoomCreation};

/// Room administration, as the bot or a ghost. Holds its own handle on the homeserver;
/// cheap to clone.
#[derive(Clone)]
pub(super) struct Rooms {
    hs: HomeserverClient,
}

impl Rooms {
    /// Room administration through `hs`.
    pub(super) fn new(hs: HomeserverClient) -> Self {
        Rooms { hs }
    }

    /// Creates a room as `creator` (the bot when `None`); returns its ID.
    pub(super) async fn create(
        &self,
        creator: Option<&UserId>,
        creation: &RoomCreation,
    ) -> Result<OwnedRoomId, MatrixError> {
        self.hs.create_room(creator, creation).await
    }

    /// The room an alias (`#local:server`) names, `None` when it names none.
    pub(super) async fn resolve_alias(
        &self,
        alias: &str,
    ) -> Result<Option<OwnedRoomId>, MatrixError> {
        self.hs.resolve_alias(alias).await
    }

    /// Adds the alias `alias` (`#local:server`) to `room`.
    pub(super) async fn add_alias(&self, alias: &str, room: &RoomId) -> Result<(), MatrixError> {
        self.hs.create_alias(alias, room).await
    }

    /// `as_user` (the bot when `None`) joins the room with this ID or alias; returns its ID.
    pub(super) async fn join(
        &self,
        as_user: Option<&UserId>,
        room_id_or_alias: &str,
    ) -> Result<OwnedRoomId, MatrixError> {
        self.hs.join(as_user, room_id_or_alias).await
    }

    /// `as_user` (the bot when `None`) leaves `room`, or rejects its invite there.
    pub(super) async fn leave(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
    ) -> Result<(), MatrixError> {
        self.hs.leave(as_user, room).await
    }

    /// `as_user` (the bot when `None`) invites `user` into `room`.
    pub(super) async fn invite(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        user: &UserId,
    ) -> Result<(), MatrixError> {
        self.hs.invite(as_user, room, user).await
    }

    /// Who is joined to `room`, asked as `as_user` (the bot when `None`), who must be in it.
    pub(super) async fn members(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
    ) -> Result<Vec<OwnedUserId>, MatrixError> {
        self.hs.joined_members(as_user, room).await
    }

    /// Whether encryption is on in `room`, read as `as_user` (the bot when `None`), who must
    /// be in the room.
    pub(super) async fn is_encrypted(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
    ) -> Result<bool, MatrixError> {
        let state = self
            .hs
            .get_state(as_user, room, "m.room.encryption", "")
            .await?;
        // A redacted or empty event turns nothing on.
        Ok(state.is_some_and(|c| c.get("algorithm").is_some()))
    }

    /// The content of `room`'s `m.room.power_levels` (empty when it has none), read as the
    /// bot.
    pub(super) async fn power_levels(&self, room: &RoomId) -> Result<Value, MatrixError> {
        Ok(self
            .hs
            .get_state(None, room, "m.room.power_levels", "")
            .await?
            .unwrap_or_default())
    }

    /// The creators of `room` (room version 12 on, they hold every power).
    pub(super) async fn creators(&self, room: &RoomId) -> Result<Vec<String>, MatrixError> {
        self.hs.room_creators(room).await
    }

    /// The latest timeline events of `room` that `keep` keeps, newest first, at most
    /// `limit` of them, read as the bot page by page; at most `scan` events are read, so
    /// a room full of other events (joins, state) costs a bounded number of requests.
    pub(super) async fn latest_events<T>(
        &self,
        room: &RoomId,
        limit: usize,
        scan: usize,
        mut keep: impl FnMut(&Value) -> Option<T>,
    ) -> Result<Vec<T>, MatrixError> {
        const PAGE: u32 = 100;
        let mut out = Vec::new();
        let mut from: Option<String> = None;
        let mut read = 0;
        while out.len() < limit && read < scan {
            let want = (limit - out.len()).max(10).min(PAGE as usize) as u32;
            let (events, next) = self
                .hs
                .timeline_page(None, room, from.as_deref(), want)
                .await?;
            read += events.len();
            for event in &events {
                if out.len() == limit {
                    break;
                }
                out.extend(keep(event));
            }
            match next {
                Some(n) => from = Some(n),
                None => break,
            }
        }
        Ok(out)
    }

    /// `room`'s topic, read as the bot; `None` when it has none.
    pub(super) async fn topic(&self, room: &RoomId) -> Result<Option<String>, MatrixError> {
        let state = self.hs.get_state(None, room, "m.room.topic", "").await?;
        Ok(state
            .and_then(|c| c.get("topic").and_then(Value::as_str).map(str::to_owned))
            .filter(|t| !t.is_empty()))
    }

    /// Whether the bot may redact other users' events in `room`.
    pub(super) async fn bot_can_redact(&self, room: &RoomId) -> Result<bool, MatrixError> {
        self.hs.can_redact(None, room).await
    }

    /// Asks the homeserver who the bot is: whether it answers and knows the bridge.
    pub(super) async fn check_bot(&self) -> Result<(), MatrixError> {
        self.hs.whoami(None).await.map(|_| ())
    }

    /// A file posted in a room, from the homeserver's media repository, with its content
    /// type.
    pub(super) async fn download(
        &self,
        server: &str,
        media_id: &str,
    ) -> Result<(Vec<u8>, Option<String>), MatrixError> {
        self.hs.download(server, media_id).await
    }
}
