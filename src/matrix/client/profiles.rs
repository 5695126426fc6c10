//! Users: registering ghosts, profiles (display name, avatar) and presence.

use ruma::api::client::{
    account::register,
    presence::{get_presence, set_presence},
    profile::{get_profile, set_profile_field},
};
use ruma::profile::ProfileFieldValue;
use ruma::{OwnedMxcUri, UserId};
use serde_json::Value as JsonValue;

use super::send::Token;
use super::{HomeserverClient, MatrixError};

impl HomeserverClient {
    /// `POST /register` (`m.login.application_service`, `inhibit_login`): creates the ghost
    /// `@{localpart}:{server_name}`. Already existing (`M_USER_IN_USE`) counts as success.
    pub async fn register_ghost(&self, localpart: &str) -> Result<(), MatrixError> {
        let mut req = register::v3::Request::new();
        req.username = Some(localpart.to_owned());
        req.inhibit_login = true;
        req.login_type = Some(register::LoginType::ApplicationService);
        match self.call("register", None, Token::Appservice, req).await {
            Ok(_) => Ok(()),
            Err(e) if e.errcode() == Some("M_USER_IN_USE") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `PUT /profile/{user}/displayname`: sets `as_user`'s display name.
    pub async fn set_displayname(
        &self,
        as_user: Option<&UserId>,
        name: &str,
    ) -> Result<(), MatrixError> {
        let user = self.acting(as_user);
        let req = set_profile_field::v3::Request::new(
            user.to_owned(),
            ProfileFieldValue::DisplayName(name.to_owned()),
        );
        self.call("profile_set", as_user, Token::Appservice, req)
            .await?;
        Ok(())
    }

    /// `PUT /profile/{user}/avatar_url`: sets `as_user`'s avatar to the `mxc://` URI, or
    /// removes it with `None`.
    pub async fn set_avatar_url(
        &self,
        as_user: Option<&UserId>,
        mxc: Option<&str>,
    ) -> Result<(), MatrixError> {
        let user = self.acting(as_user);
        // An empty string is how clients (and Synapse) spell "no avatar".
        let uri = OwnedMxcUri::from(mxc.unwrap_or(""));
        let req =
            set_profile_field::v3::Request::new(user.to_owned(), ProfileFieldValue::AvatarUrl(uri));
        self.call("profile_set", as_user, Token::Appservice, req)
            .await?;
        Ok(())
    }

    /// `GET /profile/{user}`: (display name, avatar URL). A user without a profile (any 404)
    /// gives `(None, None)`; empty strings count as unset.
    pub async fn get_profile(
        &self,
        user: &UserId,
    ) -> Result<(Option<String>, Option<String>), MatrixError> {
        let req = get_profile::v3::Request::new(user.to_owned());
        let resp = match self.call("profile_get", None, Token::Always, req).await {
            Ok(r) => r,
            // Synapse answers 404 `M_UNKNOWN` "No row found" for a user without a profile row.
            Err(e) if e.is_not_found() => return Ok((None, None)),
            Err(e) => return Err(e),
        };
        let field = |name: &str| {
            resp.data
                .get(name)
                .and_then(JsonValue::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Ok((field("displayname"), field("avatar_url")))
    }

    /// `GET /profile/{user}`, asked only whether the user exists: `false` when the homeserver
    /// answers "not found" (Synapse: 404 for a user it does not know), an error when it could
    /// not tell.
    pub async fn user_exists(&self, user: &UserId) -> Result<bool, MatrixError> {
        let req = get_profile::v3::Request::new(user.to_owned());
        match self.call("profile_get", None, Token::Always, req).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `PUT /presence/{user}/status`: sets `as_user`'s presence (`online`, `unavailable` or
    /// `offline`) and status message.
    pub async fn set_presence(
        &self,
        as_user: Option<&UserId>,
        presence: &str,
        status_msg: Option<&str>,
    ) -> Result<(), MatrixError> {
        let mut req =
            set_presence::v3::Request::new(self.acting(as_user).to_owned(), presence.into());
        req.status_msg = status_msg.map(str::to_owned);
        self.call("presence", as_user, Token::Appservice, req)
            .await?;
        Ok(())
    }

    /// `GET /presence/{user}/status`, as `as_user`: `user`'s current presence (`online`,
    /// `unavailable` or `offline`) and status message. The homeserver answers only about users
    /// who share a room with the asker (403 otherwise).
    pub async fn get_presence(
        &self,
        as_user: Option<&UserId>,
        user: &UserId,
    ) -> Result<(String, Option<String>), MatrixError> {
        let req = get_presence::v3::Request::new(user.to_owned());
        let resp = self
            .call("presence_get", as_user, Token::Appservice, req)
            .await?;
        Ok((
            resp.presence.as_str().to_owned(),
            resp.status_msg.filter(|s| !s.is_empty()),
        ))
    }
}
