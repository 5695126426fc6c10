//! [`HomeserverClient`]: every client-server API call the bridge makes, as the bot or as a
//! ghost (appservice identity assertion).
//!
//! All requests go through one private send path that adds the appservice token, the
//! `?user_id=` assertion, bounded concurrency, retries with jittered backoff, debug logging and
//! the latency histogram. Requests are built with ruma's endpoint types and successful
//! responses parsed with ruma's `IncomingResponse`; error bodies become
//! [`MatrixError::Api`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use prometheus::HistogramVec;
use ruma::api::auth_scheme::{AuthScheme, SendAccessToken};
use ruma::api::client::authenticated_media::{get_content as get_media, get_media_config};
use ruma::api::client::media::create_content;
use ruma::api::client::{
    account::{register, whoami},
    alias::{create_alias, get_alias},
    appservice::request_ping,
    discovery::{get_capabilities, get_supported_versions},
    membership::{invite_user, join_room_by_id_or_alias, joined_members, kick_user, leave_room},
    message::send_message_event,
    presence::{get_presence, set_presence},
    profile::{get_profile, set_profile_field},
    receipt::create_receipt,
    redact::redact_event,
    room::{create_room, get_room_event},
    state::{get_state_event_for_key, send_state_event},
    typing::create_typing_event,
};
use ruma::api::error::{ErrorBody, ErrorKind, LimitExceededErrorData, RetryAfter};
use ruma::api::path_builder::{PathBuilder, SinglePath, VersionHistory};
use ruma::api::{
    AppserviceUserIdentity, EndpointError, IncomingResponseExt, OutgoingRequest,
    OutgoingRequestAppserviceExt, SupportedVersions,
};
// ruma's own re-export, so the `http` types are exactly the ones ruma's traits take.
use ruma::exports::http;
use ruma::profile::ProfileFieldValue;
use ruma::serde::Raw;
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedMxcUri, OwnedRoomAliasId, OwnedRoomId,
    OwnedUserId, RoomAliasId, RoomId, RoomOrAliasId, RoomVersionId, UInt, UserId,
};
use serde_json::Value as JsonValue;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

pub use super::error::MatrixError;
use super::retry::{Attempt, RetryPolicy};
use crate::error::Reason;

/// Retries for transient failures when the configuration does not say otherwise.
pub const DEFAULT_MAX_RETRIES: u32 = 6;
/// Requests in flight towards the homeserver when the configuration does not say otherwise.
pub const DEFAULT_MAX_CONCURRENCY: usize = 32;
/// How long one HTTP attempt may take before it counts as a connection error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The spec version assumed until [`HomeserverClient::versions`] has been called.
const DEFAULT_SPEC_VERSION: &str = "v1.11";

/// How to reach the homeserver and who the bridge is there.
#[derive(Clone)]
pub struct HsConfig {
    /// Base URL of the client-server API, e.g. `http://127.0.0.1:8008`. A trailing slash is
    /// ignored.
    pub url: String,
    /// The homeserver's server name, the part after `:` in user IDs, e.g. `localhost`.
    pub server_name: String,
    /// The appservice token from the registration. Never logged.
    pub as_token: String,
    /// The appservice `id` from the registration (used by the ping endpoint).
    pub appservice_id: String,
    /// Localpart of the bridge bot (`sender_localpart` of the registration).
    pub bot_localpart: String,
    /// Most requests in flight towards the homeserver at once (at least 1 is used).
    pub max_concurrency: usize,
    /// Retries for 429, 5xx and connection errors; 0 disables retrying.
    pub max_retries: u32,
}

impl HsConfig {
    /// A configuration with [`DEFAULT_MAX_CONCURRENCY`] and [`DEFAULT_MAX_RETRIES`].
    pub fn new(
        url: impl Into<String>,
        server_name: impl Into<String>,
        as_token: impl Into<String>,
        appservice_id: impl Into<String>,
        bot_localpart: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            server_name: server_name.into(),
            as_token: as_token.into(),
            appservice_id: appservice_id.into(),
            bot_localpart: bot_localpart.into(),
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }
}

impl fmt::Debug for HsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsConfig")
            .field("url", &self.url)
            .field("server_name", &self.server_name)
            .field("as_token", &"<redacted>")
            .field("appservice_id", &self.appservice_id)
            .field("bot_localpart", &self.bot_localpart)
            .field("max_concurrency", &self.max_concurrency)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

/// What [`HomeserverClient::create_room`] creates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoomCreation {
    /// `m.room.name`, if any.
    pub name: Option<String>,
    /// `m.room.topic`, if any.
    pub topic: Option<String>,
    /// Localpart of an alias to create with the room (`room_alias_name`); the homeserver
    /// answers `M_ROOM_IN_USE` if it is taken.
    pub alias_localpart: Option<String>,
    /// Users invited as part of the creation.
    pub invite: Vec<OwnedUserId>,
    /// Marks the invites as direct-chat invites (`is_direct`).
    pub is_direct: bool,
    /// `true`: preset `private_chat` (invite only); `false`: preset `public_chat`. The room
    /// is never published in the room directory.
    pub preset_private: bool,
    /// Extra state events: (event type, state key, content).
    pub initial_state: Vec<(String, String, JsonValue)>,
    /// Users given a power level at creation; when empty the homeserver defaults apply.
    ///
    /// When non-empty, the creator is added at 100 (and keeps 100 even if listed lower). In
    /// room versions where creators are privileged without a power level (v12 and later) the
    /// creator is left out instead: the homeserver refuses a creator in `users` there.
    pub power_level_users: Vec<(OwnedUserId, i64)>,
}

/// A user's membership in a room (`m.room.member` `membership`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Membership {
    /// Invited, not yet joined.
    Invite,
    /// In the room.
    Join,
    /// Asked to join.
    Knock,
    /// Left, was kicked, or rejected an invite.
    Leave,
    /// Banned.
    Ban,
}

impl Membership {
    /// The spec string: `invite`, `join`, `knock`, `leave` or `ban`.
    pub fn as_str(self) -> &'static str {
        match self {
            Membership::Invite => "invite",
            Membership::Join => "join",
            Membership::Knock => "knock",
            Membership::Leave => "leave",
            Membership::Ban => "ban",
        }
    }

    /// Parses the spec string; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "invite" => Membership::Invite,
            "join" => Membership::Join,
            "knock" => Membership::Knock,
            "leave" => Membership::Leave,
            "ban" => Membership::Ban,
            _ => return None,
        })
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bridge's client for the homeserver's client-server API.
///
/// Cheap to clone (one `Arc`); clones share the connection pool, the concurrency limit and the
/// negotiated spec versions. Every method that acts as someone takes `as_user`: `None` is the
/// bridge bot, `Some(user)` asserts that identity with `?user_id=` (the user must be in the
/// appservice's namespace, or be the bot).
///
/// Transient failures (connection errors, 429, 5xx) are retried inside each call, so a
/// returned [`MatrixError::Http`] or 5xx [`MatrixError::Api`] means the homeserver stayed
/// unavailable through all retries. Calls that create things (`create_room`, `register_ghost`,
/// `invite`, `join`) are not idempotent on the homeserver; a retry after a lost response can
/// surface as `M_ROOM_IN_USE`, `M_USER_IN_USE` (treated as success) or a 403 "already in the
/// room".
#[derive(Clone)]
pub struct HomeserverClient {
    inner: Arc<Inner>,
}

struct Inner {
    base_url: String,
    as_token: String,
    appservice_id: String,
    bot: OwnedUserId,
    server_name: String,
    http: reqwest::Client,
    limiter: Semaphore,
    policy: RetryPolicy,
    versions: RwLock<SupportedVersions>,
    /// The homeserver's default room version, once read from `/capabilities`.
    default_room_version: RwLock<Option<RoomVersionId>>,
    metrics: Option<HistogramVec>,
}

impl fmt::Debug for HomeserverClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HomeserverClient")
            .field("url", &self.inner.base_url)
            .field("bot", &self.inner.bot)
            .finish_non_exhaustive()
    }
}

/// Which access-token mode a request uses.
#[derive(Debug, Clone, Copy)]
enum Token {
    /// Added where the endpoint needs it (the normal case).
    Appservice,
    /// Added even where the endpoint does not need it: profile and alias lookups, which some
    /// homeservers restrict to authenticated users.
    Always,
}

/// Picks a path for an endpoint from the negotiated spec versions.
trait PathInput: PathBuilder {
    fn input(versions: &SupportedVersions) -> Self::Input<'_>;
}

impl PathInput for VersionHistory {
    fn input(versions: &SupportedVersions) -> Cow<'_, SupportedVersions> {
        Cow::Borrowed(versions)
    }
}

impl PathInput for SinglePath {
    fn input(_versions: &SupportedVersions) {}
}

/// A raw HTTP answer with a success status.
struct Reply {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl HomeserverClient {
    /// Builds the client. Does no I/O; call [`versions`](Self::versions) to negotiate spec
    /// versions (until then v1.11 is assumed).
    ///
    /// `metrics`, if given, must have exactly one label, `endpoint` (otherwise nothing is
    /// recorded); it records the latency of every HTTP attempt in seconds. Fails with [`MatrixError::InvalidId`] when the bot
    /// user ID cannot be formed and [`MatrixError::Http`] when the HTTP client cannot be built.
    pub fn new(cfg: HsConfig, metrics: Option<HistogramVec>) -> Result<Self, MatrixError> {
        let policy = RetryPolicy::new(cfg.max_retries);
        Self::with_policy(cfg, metrics, policy)
    }

    /// [`new`](Self::new) with an explicit retry policy (tests shorten the backoff).
    fn with_policy(
        cfg: HsConfig,
        metrics: Option<HistogramVec>,
        policy: RetryPolicy,
    ) -> Result<Self, MatrixError> {
        let bot = UserId::parse(format!("@{}:{}", cfg.bot_localpart, cfg.server_name))
            .map_err(|e| MatrixError::InvalidId(Reason::because("bot user", e)))?;
        // reqwest is built without a default crypto provider; installing one twice fails
        // harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("isthmus/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| MatrixError::Http(Reason::from_error(e.without_url())))?;
        let default_versions =
            SupportedVersions::from_parts(&[DEFAULT_SPEC_VERSION.to_owned()], &BTreeMap::new());
        Ok(Self {
            inner: Arc::new(Inner {
                base_url: cfg.url.trim_end_matches('/').to_owned(),
                as_token: cfg.as_token,
                appservice_id: cfg.appservice_id,
                bot,
                server_name: cfg.server_name,
                http,
                limiter: Semaphore::new(cfg.max_concurrency.max(1)),
                policy,
                versions: RwLock::new(default_versions),
                default_room_version: RwLock::new(None),
                metrics,
            }),
        })
    }

    /// The bridge bot's user ID (`@{bot_localpart}:{server_name}`).
    pub fn bot_user_id(&self) -> &UserId {
        &self.inner.bot
    }

    /// The homeserver's server name.
    pub fn server_name(&self) -> &str {
        &self.inner.server_name
    }

    // ----- discovery and appservice -----

    /// `GET /_matrix/client/versions`: the spec versions the homeserver supports. Later
    /// requests use the newest paths those versions allow.
    pub async fn versions(&self) -> Result<Vec<String>, MatrixError> {
        let resp = self
            .call(
                "versions",
                None,
                Token::Appservice,
                get_supported_versions::Request::new(),
            )
            .await?;
        let supported = SupportedVersions::from_parts(&resp.versions, &resp.unstable_features);
        if supported.versions.is_empty() {
            warn!(versions = ?resp.versions, "homeserver lists no spec version known to the bridge; assuming {DEFAULT_SPEC_VERSION}");
        } else {
            *self
                .inner
                .versions
                .write()
                .unwrap_or_else(PoisonError::into_inner) = supported;
        }
        Ok(resp.versions)
    }

    /// `GET /account/whoami`: who the homeserver thinks `as_user` is. A cheap way to check the
    /// token and the connection.
    pub async fn whoami(&self, as_user: Option<&UserId>) -> Result<OwnedUserId, MatrixError> {
        let resp = self
            .call(
                "whoami",
                as_user,
                Token::Appservice,
                whoami::v3::Request::new(),
            )
            .await?;
        Ok(resp.user_id)
    }

    /// `POST /_matrix/client/v1/appservice/{appservice_id}/ping`: asks the homeserver to ping
    /// the bridge's appservice endpoint with `txn_id`; returns the round trip the homeserver
    /// measured. A successful ping also makes the homeserver retry queued transactions now.
    pub async fn ping_appservice(&self, txn_id: &str) -> Result<Duration, MatrixError> {
        let mut req = request_ping::v1::Request::new(self.inner.appservice_id.clone());
        req.transaction_id = Some(txn_id.into());
        let resp = self.call("ping", None, Token::Appservice, req).await?;
        Ok(resp.duration)
    }

    // ----- users and profiles -----

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

    // ----- rooms -----

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
    /// judged from the room's power levels and creators (see [`super::power::can_redact`]).
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
        Ok(super::power::can_redact(
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

    // ----- media -----

    /// `GET /_matrix/client/v1/media/config`: the largest upload the homeserver accepts.
    pub async fn media_upload_limit(&self) -> Result<Option<u64>, MatrixError> {
        let req = get_media_config::v1::Request::new();
        let resp = self.call("media_config", None, Token::Always, req).await?;
        Ok(Some(resp.upload_size.into()))
    }

    /// `POST /_matrix/media/v3/upload` as `as_user`: stores a file, returns its `mxc://` URI.
    pub async fn upload(
        &self,
        as_user: Option<&UserId>,
        bytes: Vec<u8>,
        content_type: &str,
        filename: &str,
    ) -> Result<String, MatrixError> {
        let mut req = create_content::v3::Request::new(bytes);
        req.content_type = Some(content_type.to_owned());
        req.filename = Some(filename.to_owned());
        let resp = self
            .call("media_upload", as_user, Token::Always, req)
            .await?;
        Ok(resp.content_uri.to_string())
    }

    /// `GET /_matrix/client/v1/media/download/{server}/{id}` (authenticated media): the file
    /// and its content type.
    pub async fn download(
        &self,
        server: &str,
        media_id: &str,
    ) -> Result<(Vec<u8>, Option<String>), MatrixError> {
        let server = ruma::OwnedServerName::try_from(server)
            .map_err(|e| MatrixError::InvalidId(Reason::because("media server name", e)))?;
        let req = get_media::v1::Request::new(media_id.to_owned(), server);
        let resp = self
            .call("media_download", None, Token::Always, req)
            .await?;
        Ok((resp.file, resp.content_type))
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

    // ----- aliases -----

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

    // ----- the send path -----

    /// The user a request acts as: `as_user`, or the bot.
    fn acting<'a>(&'a self, as_user: Option<&'a UserId>) -> &'a UserId {
        as_user.unwrap_or(&self.inner.bot)
    }

    /// Builds the HTTP request for a ruma endpoint: base URL, path for the negotiated
    /// versions, access token, and `?user_id=` when `as_user` is given.
    fn build<R>(
        &self,
        as_user: Option<&UserId>,
        token: Token,
        request: R,
    ) -> Result<http::Request<Vec<u8>>, MatrixError>
    where
        R: OutgoingRequest,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let token = match token {
            Token::Appservice => SendAccessToken::Appservice(&self.inner.as_token),
            Token::Always => SendAccessToken::Always(&self.inner.as_token),
        };
        let identity = as_user.map(AppserviceUserIdentity::new).unwrap_or_default();
        let versions = self
            .inner
            .versions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        request
            .try_into_http_request_with_identity(
                &self.inner.base_url,
                token,
                identity,
                R::PathBuilder::input(&versions),
            )
            .map_err(|e| MatrixError::Decode(Reason::because("could not encode request", e)))
    }

    /// Sends a ruma request (with retries) and parses the successful response.
    async fn call<R>(
        &self,
        endpoint: &'static str,
        as_user: Option<&UserId>,
        token: Token,
        request: R,
    ) -> Result<R::IncomingResponse, MatrixError>
    where
        R: OutgoingRequest,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let http_request = self.build(as_user, token, request)?;
        let reply = self.execute(endpoint, http_request).await?;
        let mut response = http::Response::new(reply.body.as_slice());
        *response.status_mut() = reply.status;
        *response.headers_mut() = reply.headers;
        R::IncomingResponse::try_from_http_response(response)
            .map_err(|e| MatrixError::Decode(format!("{endpoint} response: {e}").into()))
    }

    /// The one place that talks HTTP: sends `request` until it succeeds, fails permanently or
    /// runs out of retries. Each attempt holds a concurrency permit while in flight (not while
    /// backing off).
    async fn execute(
        &self,
        endpoint: &'static str,
        request: http::Request<Vec<u8>>,
    ) -> Result<Reply, MatrixError> {
        let request = reqwest::Request::try_from(request).map_err(|e| {
            MatrixError::Decode(Reason::because("could not encode request", e.without_url()))
        })?;
        self.inner
            .policy
            .run(endpoint, |_attempt| {
                let req = request.try_clone();
                async move {
                    match req {
                        Some(req) => self.attempt(endpoint, req).await,
                        None => Attempt::Fail(MatrixError::Decode(
                            "request body cannot be replayed".into(),
                        )),
                    }
                }
            })
            .await
    }

    /// One HTTP round trip, classified for the retry loop.
    async fn attempt(&self, endpoint: &'static str, req: reqwest::Request) -> Attempt<Reply> {
        let method = req.method().clone();
        // Only the path is logged: the query may carry identities, and never the token.
        let path = req.url().path().to_owned();
        let outcome = {
            let _permit = self
                .inner
                .limiter
                .acquire()
                .await
                .expect("the limiter is never closed");
            let started = Instant::now();
            let outcome = match self.inner.http.execute(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    resp.bytes()
                        .await
                        .map(|body| (status, headers, Vec::from(body)))
                }
                Err(e) => Err(e),
            };
            let elapsed = started.elapsed();
            // A histogram with other labels is ignored rather than panicking mid-request.
            if let Some(Ok(h)) = self
                .inner
                .metrics
                .as_ref()
                .map(|m| m.get_metric_with_label_values(&[endpoint]))
            {
                h.observe(elapsed.as_secs_f64());
            }
            (outcome, elapsed)
        };
        match outcome {
            (Err(e), elapsed) => {
                let error = Reason::from_error(e.without_url());
                debug!(%method, endpoint, path, elapsed_ms = elapsed.as_millis() as u64, %error, "homeserver request failed");
                Attempt::Retry {
                    error: MatrixError::Http(error),
                    after: None,
                }
            }
            (Ok((status, headers, body)), elapsed) => {
                debug!(%method, endpoint, path, status = status.as_u16(), elapsed_ms = elapsed.as_millis() as u64, "homeserver request");
                classify(status, headers, body)
            }
        }
    }
}

/// Success, transient failure (429, 5xx) or permanent failure, from a complete HTTP answer.
fn classify(status: http::StatusCode, headers: http::HeaderMap, body: Vec<u8>) -> Attempt<Reply> {
    if status.as_u16() < 400 {
        return Attempt::Done(Reply {
            status,
            headers,
            body,
        });
    }
    let (error, hint) = api_error(status, &headers, &body);
    if status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Attempt::Retry { error, after: hint }
    } else {
        Attempt::Fail(error)
    }
}

/// Turns an error answer into [`MatrixError::Api`] plus the homeserver's wait hint
/// (`retry_after_ms` of `M_LIMIT_EXCEEDED`, else the `Retry-After` header).
fn api_error(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> (MatrixError, Option<Duration>) {
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();
    let parsed = ruma::api::error::Error::from_http_response(response);
    let mut hint = None;
    let (errcode, message) = match parsed.body {
        ErrorBody::Standard(standard) => {
            if let ErrorKind::LimitExceeded(LimitExceededErrorData { retry_after, .. }) =
                &standard.kind
            {
                hint = retry_after.as_ref().map(retry_after_duration);
            }
            (
                standard.kind.errcode().as_str().to_owned(),
                standard.message,
            )
        }
        ErrorBody::Json(json) => {
            let errcode = json
                .get("errcode")
                .and_then(JsonValue::as_str)
                .unwrap_or_default()
                .to_owned();
            let message = match json.get("error").and_then(JsonValue::as_str) {
                Some(m) => m.to_owned(),
                None => truncate(&json.to_string()),
            };
            (errcode, message)
        }
        ErrorBody::NotJson { bytes, .. } => {
            let text = truncate(String::from_utf8_lossy(&bytes).trim());
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("no body").to_owned()
            } else {
                text
            };
            (String::new(), message)
        }
    };
    if hint.is_none() {
        hint = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| RetryAfter::try_from(v).ok())
            .as_ref()
            .map(retry_after_duration);
    }
    (
        MatrixError::Api {
            status: status.as_u16(),
            errcode,
            message,
        },
        hint,
    )
}

fn retry_after_duration(r: &RetryAfter) -> Duration {
    match r {
        RetryAfter::Delay(d) => *d,
        RetryAfter::DateTime(t) => t.duration_since(SystemTime::now()).unwrap_or_default(),
    }
}

/// At most 200 characters of a body, for error messages.
fn truncate(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// JSON into ruma's raw type.
fn raw<T>(value: &JsonValue) -> Result<Raw<T>, MatrixError> {
    serde_json::value::to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|e| MatrixError::Decode(Reason::because("could not encode content", e)))
}

fn parse_alias(alias: &str) -> Result<OwnedRoomAliasId, MatrixError> {
    RoomAliasId::parse(alias)
        .map_err(|e| MatrixError::InvalidId(Reason::because(format!("{alias:?}"), e)))
}

#[cfg(test)]
mod tests;
