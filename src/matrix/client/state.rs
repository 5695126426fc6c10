//! Room state: reading and writing state events, memberships, power to redact and a room's
//! creators.

use ruma::api::client::state::{get_state_event_for_key, send_state_event};
use ruma::{OwnedEventId, RoomId, UserId};
use serde_json::Value as JsonValue;

use super::send::{Token, raw};
use super::{HomeserverClient, MatrixError, Membership};
use crate::error::Reason;

impl HomeserverClient {
    /// `user`'s membership in `room` as seen by `as_user`, read from the room state. `None`
    /// when the user never had a membership event.
    pub async fn membership(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        user: &UserId,
    ) -> Result<Option<Membership>, MatrixError> {
        let content = self
            .get_state(as_user, room, "m.room.member", user.as_str())
            .await?;
        Ok(content.and_then(|c| {
            c.get("membership")
                .and_then(JsonValue::as_str)
                .and_then(Membership::parse)
        }))
    }

    /// `GET /rooms/{room}/state/{type}/{state_key}`: the content of one state event, `None`
    /// when there is no such state (`M_NOT_FOUND`).
    pub async fn get_state(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<JsonValue>, MatrixError> {
        let req = get_state_event_for_key::v3::Request::new(
            room.to_owned(),
            event_type.into(),
            state_key.to_owned(),
        );
        match self
            .call("state_get", as_user, Token::Appservice, req)
            .await
        {
            Ok(resp) => serde_json::from_str(resp.event_or_content.get())
                .map(Some)
                .map_err(|e| MatrixError::Decode(Reason::because("state event", e))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `as_user` (the bot when `None`) may redact other users' events in `room`,
    /// judged from the room's power levels and creators (see [`crate::matrix::power::can_redact`]).
    pub async fn can_redact(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
    ) -> Result<bool, MatrixError> {
        let user = self.acting(as_user).to_owned();
        let levels = self
            .get_state(as_user, room, "m.room.power_levels", "")
            .await?;
        let creators = self.room_creators(room).await?;
        Ok(crate::matrix::power::can_redact(
            levels.as_ref(),
            user.as_str(),
            &creators,
        ))
    }

    /// The users a room's version privileges as creators (room version 12 and later: the
    /// create event's sender and its `additional_creators`); empty for older versions, where
    /// power comes from the power levels alone.
    pub async fn room_creators(&self, room: &RoomId) -> Result<Vec<String>, MatrixError> {
        let mut req = get_state_event_for_key::v3::Request::new(
            room.to_owned(),
            "m.room.create".into(),
            String::new(),
        );
        req.format = get_state_event_for_key::v3::StateEventFormat::Event;
        let resp = match self.call("state_get", None, Token::Appservice, req).await {
            Ok(resp) => resp,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let event: JsonValue = serde_json::from_str(resp.event_or_content.get())
            .map_err(|e| MatrixError::Decode(Reason::because("create event", e)))?;
        let content = event.get("content").unwrap_or(&event);
        let version = content
            .get("room_version")
            .and_then(JsonValue::as_str)
            .unwrap_or("1");
        let privileged = ruma::RoomVersionId::try_from(version)
            .ok()
            .and_then(|v| {
                v.rules()
                    .map(|r| r.authorization.explicitly_privilege_room_creators)
            })
            .unwrap_or(true);
        if !privileged {
            return Ok(Vec::new());
        }
        let mut creators: Vec<String> = event
            .get("sender")
            .and_then(JsonValue::as_str)
            .map(str::to_owned)
            .into_iter()
            .collect();
        if let Some(more) = content
            .get("additional_creators")
            .and_then(JsonValue::as_array)
        {
            creators.extend(more.iter().filter_map(JsonValue::as_str).map(str::to_owned));
        }
        Ok(creators)
    }

    /// `PUT /rooms/{room}/state/{type}/{state_key}`: sets a state event as `as_user`.
    pub async fn send_state(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        event_type: &str,
        state_key: &str,
        content: &JsonValue,
    ) -> Result<OwnedEventId, MatrixError> {
        let req = send_state_event::v3::Request::new_raw(
            room.to_owned(),
            event_type.into(),
            state_key.to_owned(),
            raw(content)?,
        );
        let resp = self.call("state", as_user, Token::Appservice, req).await?;
        Ok(resp.event_id)
    }
}
