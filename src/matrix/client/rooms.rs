//! Rooms: creating them, membership changes (invite, join, leave, kick, who is in) and
//! aliases.

use std::sync::PoisonError;

use ruma::api::client::{
    alias::{create_alias, get_alias},
    discovery::get_capabilities,
    membership::{invite_user, join_room_by_id_or_alias, joined_members, kick_user, leave_room},
    room::create_room,
};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomOrAliasId, UserId};
use tracing::warn;

use super::send::{Token, parse_alias, raw};
use super::{HomeserverClient, MatrixError, RoomCreation};
use crate::error::Reason;

impl HomeserverClient {
    /// `POST /createRoom` as `as_user`, who becomes the room's creator. Returns the new room.
    pub async fn create_room(
        &self,
        as_user: Option<&UserId>,
        creation: &RoomCreation,
    ) -> Result<OwnedRoomId, MatrixError> {
        let creator = self.acting(as_user);
        let mut req = create_room::v3::Request::new();
        req.name = creation.name.clone();
        req.topic = creation.topic.clone();
        req.room_alias_name = creation.alias_localpart.clone();
        req.invite = creation.invite.clone();
        req.is_direct = creation.is_direct;
        req.preset = Some(if creation.preset_private {
            create_room::v3::RoomPreset::PrivateChat
        } else {
            create_room::v3::RoomPreset::PublicChat
        });
        req.initial_state = creation
            .initial_state
            .iter()
            .map(|(event_type, state_key, content)| {
                raw(&serde_json::json!({"type": event_type, "state_key": state_key, "content": content}))
            })
            .collect::<Result<_, _>>()?;
        if !creation.power_level_users.is_empty() {
            let mut users = serde_json::Map::new();
            for (user, level) in &creation.power_level_users {
                users.insert(user.to_string(), (*level).into());
            }
            if self.creators_privileged().await {
                users.remove(creator.as_str());
            } else {
                users.insert(creator.to_string(), 100.into());
            }
            req.power_level_content_override = Some(raw(&serde_json::json!({"users": users}))?);
        }
        let resp = self
            .call("create_room", as_user, Token::Appservice, req)
            .await?;
        Ok(resp.room_id)
    }

    /// `POST /rooms/{room}/invite`: `as_user` invites `user`.
    pub async fn invite(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        user: &UserId,
    ) -> Result<(), MatrixError> {
        let recipient = invite_user::v3::InviteUserId::new(user.to_owned()).into();
        let req = invite_user::v3::Request::new(room.to_owned(), recipient);
        self.call("invite", as_user, Token::Appservice, req).await?;
        Ok(())
    }

    /// `POST /join/{room_id_or_alias}`: `as_user` joins (accepting an invite if there is one).
    /// Returns the room's ID, useful when joining by alias.
    pub async fn join(
        &self,
        as_user: Option<&UserId>,
        room_id_or_alias: &str,
    ) -> Result<OwnedRoomId, MatrixError> {
        let target = RoomOrAliasId::parse(room_id_or_alias).map_err(|e| {
            MatrixError::InvalidId(Reason::because(format!("{room_id_or_alias:?}"), e))
        })?;
        let req = join_room_by_id_or_alias::v3::Request::new(target);
        let resp = self.call("join", as_user, Token::Appservice, req).await?;
        Ok(resp.room_id)
    }

    /// `POST /rooms/{room}/leave`: `as_user` leaves the room (or rejects an invite).
    pub async fn leave(&self, as_user: Option<&UserId>, room: &RoomId) -> Result<(), MatrixError> {
        let req = leave_room::v3::Request::new(room.to_owned());
        self.call("leave", as_user, Token::Appservice, req).await?;
        Ok(())
    }

    /// `POST /rooms/{room}/kick`: `as_user` removes `user` from the room.
    pub async fn kick(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<(), MatrixError> {
        let mut req = kick_user::v3::Request::new(room.to_owned(), user.to_owned());
        req.reason = reason.map(str::to_owned);
        self.call("kick", as_user, Token::Appservice, req).await?;
        Ok(())
    }

    /// `GET /rooms/{room}/joined_members`, as seen by `as_user` (who must be in the room).
    pub async fn joined_members(
        &self,
        as_user: Option<&UserId>,
        room: &RoomId,
    ) -> Result<Vec<OwnedUserId>, MatrixError> {
        let req = joined_members::v3::Request::new(room.to_owned());
        let resp = self
            .call("joined_members", as_user, Token::Appservice, req)
            .await?;
        Ok(resp.joined.into_keys().collect())
    }

    /// `PUT /directory/room/{alias}`: points the alias (`#local:server`, in the appservice's
    /// namespace) at `room_id`, as the bot.
    pub async fn create_alias(
        &self,
        room_alias: &str,
        room_id: &RoomId,
    ) -> Result<(), MatrixError> {
        let req = create_alias::v3::Request::new(parse_alias(room_alias)?, room_id.to_owned());
        self.call("alias_create", None, Token::Appservice, req)
            .await?;
        Ok(())
    }

    /// `GET /directory/room/{alias}`: the room an alias points at, `None` if the alias does
    /// not exist.
    pub async fn resolve_alias(&self, alias: &str) -> Result<Option<OwnedRoomId>, MatrixError> {
        let req = get_alias::v3::Request::new(parse_alias(alias)?);
        match self.call("alias_get", None, Token::Always, req).await {
            Ok(resp) => Ok(Some(resp.room_id)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether rooms created now give their creator power without a power level (room
    /// version 12 and later), judged by the homeserver's default room version. Read from
    /// `/capabilities` once; if that fails, `false` (the pre-v12 rules).
    async fn creators_privileged(&self) -> bool {
        let cached = self
            .inner
            .default_room_version
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let version = match cached {
            Some(v) => v,
            None => {
                let req = get_capabilities::v3::Request::new();
                match self
                    .call("capabilities", None, Token::Appservice, req)
                    .await
                {
                    Ok(resp) => {
                        let v = resp.capabilities.room_versions.default;
                        *self
                            .inner
                            .default_room_version
                            .write()
                            .unwrap_or_else(PoisonError::into_inner) = Some(v.clone());
                        v
                    }
                    Err(e) => {
                        warn!(error = %crate::error::chain(&e), "could not read the default room version; assuming creators need a power level");
                        return false;
                    }
                }
            }
        };
        // A version newer than ruma knows is assumed to keep the v12 rule.
        version
            .rules()
            .is_none_or(|r| r.authorization.explicitly_privilege_room_creators)
    }
}
