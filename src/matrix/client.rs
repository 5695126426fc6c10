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
use ruma::api::client::{
    account::{register, whoami},
    alias::{create_alias, get_alias},
    appservice::request_ping,
    discovery::get_supported_versions,
    membership::{invite_user, join_room_by_id_or_alias, joined_members, kick_user, leave_room},
    message::send_message_event,
    presence::set_presence,
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
    /// Users given a power level at creation. When non-empty, the creator is added at 100
    /// (and keeps 100 even if listed lower); when empty the homeserver defaults apply.
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
    /// `metrics`, if given, must have exactly one label, `endpoint`; it records the latency
    /// of every HTTP attempt in seconds. Fails with [`MatrixError::InvalidId`] when the bot
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
            .map_err(|e| MatrixError::InvalidId(format!("bot user: {e}")))?;
        // reqwest is built without a default crypto provider; installing one twice fails
        // harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("isthmus/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| MatrixError::Http(error_chain(&e.without_url())))?;
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

    /// `GET /profile/{user}`: (display name, avatar URL). A user without a profile
    /// (`M_NOT_FOUND`) gives `(None, None)`; empty strings count as unset.
    pub async fn get_profile(
        &self,
        user: &UserId,
    ) -> Result<(Option<String>, Option<String>), MatrixError> {
        let req = get_profile::v3::Request::new(user.to_owned());
        let resp = match self.call("profile_get", None, Token::Always, req).await {
            Ok(r) => r,
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
            users.insert(creator.to_string(), 100.into());
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
        let target = RoomOrAliasId::parse(room_id_or_alias)
            .map_err(|e| MatrixError::InvalidId(format!("{room_id_or_alias:?}: {e}")))?;
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
                .map_err(|e| MatrixError::Decode(format!("state event: {e}"))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
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
            .map_err(|e| MatrixError::Decode(format!("event: {e}")))
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
            .map_err(|e| MatrixError::Decode(format!("could not encode request: {e}")))
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
            .map_err(|e| MatrixError::Decode(format!("{endpoint} response: {e}")))
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
            MatrixError::Decode(format!(
                "could not encode request: {}",
                error_chain(&e.without_url())
            ))
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
            if let Some(h) = &self.inner.metrics {
                h.with_label_values(&[endpoint])
                    .observe(elapsed.as_secs_f64());
            }
            (outcome, elapsed)
        };
        match outcome {
            (Err(e), elapsed) => {
                let error = error_chain(&e.without_url());
                debug!(%method, endpoint, path, elapsed_ms = elapsed.as_millis() as u64, error, "homeserver request failed");
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

/// An error and its sources, `: `-separated (reqwest's own message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// JSON into ruma's raw type.
fn raw<T>(value: &JsonValue) -> Result<Raw<T>, MatrixError> {
    serde_json::value::to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|e| MatrixError::Decode(format!("could not encode content: {e}")))
}

fn parse_alias(alias: &str) -> Result<OwnedRoomAliasId, MatrixError> {
    RoomAliasId::parse(alias).map_err(|e| MatrixError::InvalidId(format!("{alias:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// One request as the mock homeserver saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        /// Path and query, exactly as sent.
        target: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
        fn json(&self) -> JsonValue {
            serde_json::from_str(&self.body).expect("JSON body")
        }
    }

    /// A scripted answer: status, extra headers, body.
    type Script = (u16, Vec<(&'static str, String)>, String);

    fn reply(status: u16, body: JsonValue) -> Script {
        (status, Vec::new(), body.to_string())
    }

    /// A homeserver stand-in on 127.0.0.1:0 speaking raw HTTP/1.1: answers each request with
    /// the next scripted reply (then `200 {}`), records what it saw, and tracks how many
    /// requests were in flight at once.
    struct MockHs {
        url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
        max_in_flight: Arc<AtomicUsize>,
    }

    impl MockHs {
        async fn start(script: Vec<Script>) -> Self {
            Self::start_with_delay(script, Duration::ZERO).await
        }

        async fn start_with_delay(script: Vec<Script>, delay: Duration) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(Mutex::new(VecDeque::from(script)));
            let in_flight = Arc::new(AtomicUsize::new(0));
            let max_in_flight = Arc::new(AtomicUsize::new(0));
            let (seen2, max2) = (seen.clone(), max_in_flight.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (seen, script, in_flight, max) = (
                        seen2.clone(),
                        script.clone(),
                        in_flight.clone(),
                        max2.clone(),
                    );
                    tokio::spawn(async move {
                        serve(stream, seen, script, in_flight, max, delay).await;
                    });
                }
            });
            Self {
                url,
                seen,
                max_in_flight,
            }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    async fn serve(
        mut stream: TcpStream,
        seen: Arc<Mutex<Vec<Seen>>>,
        script: Arc<Mutex<VecDeque<Script>>>,
        in_flight: Arc<AtomicUsize>,
        max: Arc<AtomicUsize>,
        delay: Duration,
    ) {
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap().split(' ');
        let method = request_line.next().unwrap().to_owned();
        let target = request_line.next().unwrap().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(now, Ordering::SeqCst);
        seen.lock().unwrap().push(Seen {
            method,
            target,
            headers,
            body,
        });
        tokio::time::sleep(delay).await;
        let (status, extra, body) =
            script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or((200, Vec::new(), "{}".into()));
        let mut out = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (n, v) in extra {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&body);
        in_flight.fetch_sub(1, Ordering::SeqCst);
        let _ = stream.write_all(out.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    fn config(url: &str) -> HsConfig {
        HsConfig::new(
            url,
            "localhost",
            "as_secret_token",
            "isthmus",
            "_bridge_bot",
        )
    }

    /// A client against `url` whose backoff starts at 1 ms, so retry tests run fast.
    fn client(url: &str, max_retries: u32) -> HomeserverClient {
        let mut policy = RetryPolicy::new(max_retries);
        policy.base = Duration::from_millis(1);
        HomeserverClient::with_policy(config(url), None, policy).unwrap()
    }

    fn ghost() -> OwnedUserId {
        UserId::parse("@_x_alice:localhost").unwrap()
    }

    fn room() -> OwnedRoomId {
        RoomId::parse("!room:localhost").unwrap()
    }

    #[tokio::test]
    async fn send_message_as_ghost_asserts_identity_and_massages_timestamp() {
        let hs = MockHs::start(vec![reply(200, json!({"event_id": "$ev1"}))]).await;
        let c = client(&hs.url, 0);
        let content = json!({"msgtype": "m.text", "body": "hi"});
        let id = c
            .send_message(
                Some(&ghost()),
                &room(),
                "m.room.message",
                "isthmus.42",
                &content,
                Some(1_700_000_000_000),
            )
            .await
            .unwrap();
        assert_eq!(id.as_str(), "$ev1");
        let seen = hs.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "PUT");
        assert_eq!(
            seen[0].target,
            "/_matrix/client/v3/rooms/!room:localhost/send/m.room.message/isthmus.42\
             ?ts=1700000000000&user_id=%40_x_alice%3Alocalhost"
        );
        assert_eq!(
            seen[0].header("authorization"),
            Some("Bearer as_secret_token")
        );
        assert_eq!(seen[0].json(), content);
    }

    #[tokio::test]
    async fn bot_requests_carry_no_identity_assertion() {
        let hs = MockHs::start(vec![
            reply(200, json!({"user_id": "@_bridge_bot:localhost"})),
            reply(200, json!({"event_id": "$ev2"})),
        ])
        .await;
        let c = client(&hs.url, 0);
        assert_eq!(
            c.whoami(None).await.unwrap().as_str(),
            "@_bridge_bot:localhost"
        );
        // Path parameters are percent-encoded: a transaction ID cannot escape its segment.
        c.send_message(
            None,
            &room(),
            "m.room.message",
            "t/1?x",
            &json!({"body": "x"}),
            None,
        )
        .await
        .unwrap();
        let seen = hs.seen();
        assert_eq!(seen[0].target, "/_matrix/client/v3/account/whoami");
        assert_eq!(
            seen[1].target,
            "/_matrix/client/v3/rooms/!room:localhost/send/m.room.message/t%2F1%3Fx"
        );
    }

    #[tokio::test]
    async fn rate_limit_is_retried_after_retry_after_ms_with_the_same_transaction() {
        let hs = MockHs::start(vec![
            reply(
                429,
                json!({"errcode": "M_LIMIT_EXCEEDED", "error": "slow down", "retry_after_ms": 150}),
            ),
            reply(200, json!({"event_id": "$ev3"})),
        ])
        .await;
        let c = client(&hs.url, 6);
        let started = Instant::now();
        let id = c
            .send_message(
                Some(&ghost()),
                &room(),
                "m.room.message",
                "stable",
                &json!({"body": "x"}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(id.as_str(), "$ev3");
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        let seen = hs.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[0].target, seen[1].target,
            "a retry reuses the transaction ID"
        );
        assert_eq!(seen[0].body, seen[1].body);
    }

    #[tokio::test]
    async fn server_errors_are_retried_then_reported() {
        let html = (502, Vec::new(), "<html>Bad Gateway</html>".to_owned());
        let hs = MockHs::start(vec![html.clone(), html.clone(), html]).await;
        let c = client(&hs.url, 2);
        let err = c.leave(None, &room()).await.unwrap_err();
        assert_eq!(hs.seen().len(), 3, "one try plus two retries");
        match err {
            MatrixError::Api {
                status: 502,
                errcode,
                message,
            } => {
                assert_eq!(errcode, "");
                assert!(message.contains("Bad Gateway"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let hs = MockHs::start(vec![reply(
            403,
            json!({"errcode": "M_FORBIDDEN", "error": "not in room"}),
        )])
        .await;
        let c = client(&hs.url, 6);
        let err = c
            .invite(
                Some(&ghost()),
                &room(),
                &UserId::parse("@bob:localhost").unwrap(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            err,
            MatrixError::Api {
                status: 403,
                errcode: "M_FORBIDDEN".into(),
                message: "not in room".into()
            }
        );
        let seen = hs.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].target,
            "/_matrix/client/v3/rooms/!room:localhost/invite?user_id=%40_x_alice%3Alocalhost"
        );
        assert_eq!(seen[0].json(), json!({"user_id": "@bob:localhost"}));
    }

    #[tokio::test]
    async fn connection_errors_are_retried_then_reported_as_http() {
        // A port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = client(&format!("http://127.0.0.1:{port}"), 2);
        match c.whoami(None).await {
            Err(MatrixError::Http(msg)) => {
                assert!(!msg.contains("as_secret_token"));
                assert!(msg.to_lowercase().contains("connect"), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn register_ghost_treats_user_in_use_as_success() {
        let hs = MockHs::start(vec![
            reply(200, json!({"user_id": "@_x_alice:localhost"})),
            reply(400, json!({"errcode": "M_USER_IN_USE", "error": "taken"})),
            reply(400, json!({"errcode": "M_EXCLUSIVE", "error": "not yours"})),
        ])
        .await;
        let c = client(&hs.url, 0);
        c.register_ghost("_x_alice").await.unwrap();
        c.register_ghost("_x_alice").await.unwrap();
        assert_eq!(
            c.register_ghost("alice").await.unwrap_err().errcode(),
            Some("M_EXCLUSIVE")
        );
        let seen = hs.seen();
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].target, "/_matrix/client/v3/register");
        let body = seen[0].json();
        assert_eq!(body["type"], "m.login.application_service");
        assert_eq!(body["username"], "_x_alice");
        assert_eq!(body["inhibit_login"], true);
    }

    #[tokio::test]
    async fn profile_reads_and_writes() {
        let hs = MockHs::start(vec![
            reply(200, json!({"displayname": "Alice", "avatar_url": ""})),
            reply(
                404,
                json!({"errcode": "M_NOT_FOUND", "error": "no profile"}),
            ),
            reply(200, json!({})),
            reply(200, json!({})),
            reply(200, json!({})),
        ])
        .await;
        let c = client(&hs.url, 0);
        let bob = UserId::parse("@bob:localhost").unwrap();
        assert_eq!(
            c.get_profile(&bob).await.unwrap(),
            (Some("Alice".into()), None)
        );
        assert_eq!(c.get_profile(&bob).await.unwrap(), (None, None));
        c.set_displayname(Some(&ghost()), "Alice (XMPP)")
            .await
            .unwrap();
        c.set_avatar_url(Some(&ghost()), Some("mxc://localhost/abc"))
            .await
            .unwrap();
        c.set_avatar_url(Some(&ghost()), None).await.unwrap();
        let seen = hs.seen();
        assert_eq!(seen[0].target, "/_matrix/client/v3/profile/@bob:localhost");
        // Profile lookups authenticate even though the spec does not require it.
        assert_eq!(
            seen[0].header("authorization"),
            Some("Bearer as_secret_token")
        );
        assert_eq!(
            seen[2].target,
            "/_matrix/client/v3/profile/@_x_alice:localhost/displayname?user_id=%40_x_alice%3Alocalhost"
        );
        assert_eq!(seen[2].json(), json!({"displayname": "Alice (XMPP)"}));
        assert_eq!(seen[3].json(), json!({"avatar_url": "mxc://localhost/abc"}));
        assert_eq!(seen[4].json(), json!({"avatar_url": ""}));
    }

    #[tokio::test]
    async fn create_room_sends_state_power_levels_and_invites() {
        let hs = MockHs::start(vec![reply(200, json!({"room_id": "!new:localhost"}))]).await;
        let c = client(&hs.url, 0);
        let bob = UserId::parse("@bob:localhost").unwrap();
        let creation = RoomCreation {
            name: Some("Chat".into()),
            topic: None,
            alias_localpart: Some("_x_chat".into()),
            invite: vec![bob.clone()],
            is_direct: true,
            preset_private: true,
            initial_state: vec![(
                "m.bridge".into(),
                "isthmus://x".into(),
                json!({"protocol": {"id": "x"}}),
            )],
            power_level_users: vec![(bob, 100), (ghost(), 50)],
        };
        let id = c.create_room(Some(&ghost()), &creation).await.unwrap();
        assert_eq!(id.as_str(), "!new:localhost");
        let seen = hs.seen();
        assert_eq!(
            seen[0].target,
            "/_matrix/client/v3/createRoom?user_id=%40_x_alice%3Alocalhost"
        );
        let body = seen[0].json();
        assert_eq!(body["name"], "Chat");
        assert!(body.get("topic").is_none());
        assert_eq!(body["room_alias_name"], "_x_chat");
        assert_eq!(body["invite"], json!(["@bob:localhost"]));
        assert_eq!(body["is_direct"], true);
        assert_eq!(body["preset"], "private_chat");
        assert_eq!(
            body["initial_state"],
            json!([{"type": "m.bridge", "state_key": "isthmus://x", "content": {"protocol": {"id": "x"}}}])
        );
        // The creator keeps 100 even when listed lower.
        assert_eq!(
            body["power_level_content_override"],
            json!({"users": {"@bob:localhost": 100, "@_x_alice:localhost": 100}})
        );
    }

    #[tokio::test]
    async fn room_calls_build_the_right_paths() {
        let hs = MockHs::start(vec![
            reply(200, json!({"room_id": "!room:localhost"})),
            reply(200, json!({"event_id": "$st"})),
            reply(200, json!({"event_id": "$red"})),
            reply(200, json!({"joined": {"@a:localhost": {}, "@_x_alice:localhost": {"display_name": "A"}}})),
            reply(200, json!({})),
            reply(200, json!({})),
            reply(200, json!({})),
            reply(200, json!({})),
            reply(200, json!({"type": "m.room.message", "event_id": "$e", "sender": "@a:localhost", "room_id": "!room:localhost", "origin_server_ts": 1, "content": {"body": "x"}})),
            reply(200, json!({"membership": "invite"})),
            reply(404, json!({"errcode": "M_NOT_FOUND", "error": "no state"})),
        ])
        .await;
        let c = client(&hs.url, 0);
        let g = ghost();
        let r = room();
        let ev = EventId::parse("$target").unwrap();
        let bob = UserId::parse("@bob:localhost").unwrap();
        assert_eq!(c.join(Some(&g), "#_x_chat:localhost").await.unwrap(), r);
        assert_eq!(
            c.send_state(None, &r, "m.room.topic", "", &json!({"topic": "t"}))
                .await
                .unwrap()
                .as_str(),
            "$st"
        );
        assert_eq!(
            c.redact(Some(&g), &r, &ev, "red1", Some("oops"))
                .await
                .unwrap()
                .as_str(),
            "$red"
        );
        let mut members = c.joined_members(None, &r).await.unwrap();
        members.sort();
        assert_eq!(
            members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            ["@_x_alice:localhost", "@a:localhost"]
        );
        c.set_typing(Some(&g), &r, true, 30_000).await.unwrap();
        c.send_read_receipt(Some(&g), &r, &ev).await.unwrap();
        c.set_presence(Some(&g), "unavailable", Some("away"))
            .await
            .unwrap();
        c.kick(None, &r, &bob, Some("bye")).await.unwrap();
        assert_eq!(
            c.get_event(None, &r, &ev).await.unwrap()["content"]["body"],
            "x"
        );
        assert_eq!(
            c.membership(None, &r, &bob).await.unwrap(),
            Some(Membership::Invite)
        );
        assert_eq!(c.membership(None, &r, &bob).await.unwrap(), None);

        let seen = hs.seen();
        let lines: Vec<String> = seen
            .iter()
            .map(|s| format!("{} {}", s.method, s.target))
            .collect();
        let a = "user_id=%40_x_alice%3Alocalhost";
        assert_eq!(
            lines,
            [
                format!("POST /_matrix/client/v3/join/%23_x_chat:localhost?{a}"),
                "PUT /_matrix/client/v3/rooms/!room:localhost/state/m.room.topic/".to_owned(),
                format!("PUT /_matrix/client/v3/rooms/!room:localhost/redact/$target/red1?{a}"),
                "GET /_matrix/client/v3/rooms/!room:localhost/joined_members".to_owned(),
                format!(
                    "PUT /_matrix/client/v3/rooms/!room:localhost/typing/@_x_alice:localhost?{a}"
                ),
                format!("POST /_matrix/client/v3/rooms/!room:localhost/receipt/m.read/$target?{a}"),
                format!("PUT /_matrix/client/v3/presence/@_x_alice:localhost/status?{a}"),
                "POST /_matrix/client/v3/rooms/!room:localhost/kick".to_owned(),
                "GET /_matrix/client/v3/rooms/!room:localhost/event/$target".to_owned(),
                "GET /_matrix/client/v3/rooms/!room:localhost/state/m.room.member/@bob:localhost"
                    .to_owned(),
                "GET /_matrix/client/v3/rooms/!room:localhost/state/m.room.member/@bob:localhost"
                    .to_owned(),
            ]
        );
        assert_eq!(seen[1].json(), json!({"topic": "t"}));
        assert_eq!(seen[2].json(), json!({"reason": "oops"}));
        assert_eq!(seen[4].json(), json!({"typing": true, "timeout": 30000}));
        assert_eq!(
            seen[6].json(),
            json!({"presence": "unavailable", "status_msg": "away"})
        );
        assert_eq!(
            seen[7].json(),
            json!({"user_id": "@bob:localhost", "reason": "bye"})
        );
    }

    #[tokio::test]
    async fn aliases_ping_and_versions() {
        let hs = MockHs::start(vec![
            reply(
                200,
                json!({"versions": ["r0.6.1", "v1.1", "v1.12"], "unstable_features": {}}),
            ),
            reply(200, json!({})),
            reply(
                200,
                json!({"room_id": "!room:localhost", "servers": ["localhost"]}),
            ),
            reply(
                404,
                json!({"errcode": "M_NOT_FOUND", "error": "unknown alias"}),
            ),
            reply(200, json!({"duration_ms": 7})),
        ])
        .await;
        let c = client(&hs.url, 0);
        assert_eq!(c.versions().await.unwrap(), ["r0.6.1", "v1.1", "v1.12"]);
        c.create_alias("#_x_chat:localhost", &room()).await.unwrap();
        assert_eq!(
            c.resolve_alias("#_x_chat:localhost").await.unwrap(),
            Some(room())
        );
        assert_eq!(c.resolve_alias("#_x_gone:localhost").await.unwrap(), None);
        assert_eq!(
            c.ping_appservice("ping-1").await.unwrap(),
            Duration::from_millis(7)
        );
        assert!(matches!(
            c.resolve_alias("not an alias").await,
            Err(MatrixError::InvalidId(_))
        ));
        assert!(matches!(
            c.join(None, "bogus").await,
            Err(MatrixError::InvalidId(_))
        ));

        let seen = hs.seen();
        assert_eq!(seen[0].target, "/_matrix/client/versions");
        assert_eq!(seen[1].method, "PUT");
        assert_eq!(
            seen[1].target,
            "/_matrix/client/v3/directory/room/%23_x_chat:localhost"
        );
        assert_eq!(seen[1].json(), json!({"room_id": "!room:localhost"}));
        assert_eq!(
            seen[2].header("authorization"),
            Some("Bearer as_secret_token")
        );
        assert_eq!(seen[4].target, "/_matrix/client/v1/appservice/isthmus/ping");
        assert_eq!(seen[4].json(), json!({"transaction_id": "ping-1"}));
        assert_eq!(seen.len(), 5, "invalid IDs never reach the homeserver");
    }

    #[tokio::test]
    async fn unknown_spec_versions_keep_the_default_paths() {
        let hs = MockHs::start(vec![
            reply(200, json!({"versions": ["v9.99"]})),
            reply(200, json!({"user_id": "@_bridge_bot:localhost"})),
        ])
        .await;
        let c = client(&hs.url, 0);
        c.versions().await.unwrap();
        c.whoami(None).await.unwrap();
        assert_eq!(hs.seen()[1].target, "/_matrix/client/v3/account/whoami");
    }

    #[tokio::test]
    async fn concurrency_is_bounded_and_latency_recorded() {
        let hs = MockHs::start_with_delay(Vec::new(), Duration::from_millis(30)).await;
        let histogram =
            HistogramVec::new(prometheus::HistogramOpts::new("t", "t"), &["endpoint"]).unwrap();
        let mut cfg = config(&hs.url);
        cfg.max_concurrency = 2;
        let c = HomeserverClient::new(cfg, Some(histogram.clone())).unwrap();
        let calls = (0..6).map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                c.send_message(
                    None,
                    &room(),
                    "m.room.message",
                    &format!("t{i}"),
                    &json!({}),
                    None,
                )
                .await
            })
        });
        for call in calls.collect::<Vec<_>>() {
            // `{}` is not a valid send response; only the traffic matters here.
            let _ = call.await.unwrap();
        }
        assert_eq!(hs.seen().len(), 6);
        assert!(hs.max_in_flight.load(Ordering::SeqCst) <= 2);
        assert_eq!(histogram.with_label_values(&["send"]).get_sample_count(), 6);
    }

    #[tokio::test]
    async fn undecodable_success_is_a_decode_error() {
        let hs = MockHs::start(vec![reply(200, json!({"nope": true}))]).await;
        let c = client(&hs.url, 3);
        assert!(matches!(c.whoami(None).await, Err(MatrixError::Decode(_))));
        assert_eq!(hs.seen().len(), 1, "decode errors are not retried");
    }

    #[test]
    fn error_bodies_and_wait_hints() {
        let status = |s| http::StatusCode::from_u16(s).unwrap();
        let mut headers = http::HeaderMap::new();
        let body = br#"{"errcode":"M_LIMIT_EXCEEDED","error":"slow","retry_after_ms":1500}"#;
        let (err, hint) = api_error(status(429), &headers, body);
        assert_eq!(err.errcode(), Some("M_LIMIT_EXCEEDED"));
        assert_eq!(hint, Some(Duration::from_millis(1500)));

        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("3"),
        );
        let (_, hint) = api_error(status(429), &headers, body);
        assert_eq!(
            hint,
            Some(Duration::from_secs(3)),
            "the header takes precedence"
        );
        let (err, hint) = api_error(status(503), &headers, b"");
        assert_eq!(hint, Some(Duration::from_secs(3)));
        assert_eq!(
            err,
            MatrixError::Api {
                status: 503,
                errcode: String::new(),
                message: "Service Unavailable".into()
            }
        );

        let (err, _) = api_error(
            status(400),
            &http::HeaderMap::new(),
            br#"{"errcode":"M_WEIRD"}"#,
        );
        assert_eq!(err.errcode(), Some("M_WEIRD"));
        let (err, _) = api_error(
            status(400),
            &http::HeaderMap::new(),
            br#"{"errcode":"ORG_CUSTOM","error":"x"}"#,
        );
        assert_eq!(err.errcode(), Some("ORG_CUSTOM"));

        assert!(matches!(
            classify(status(500), http::HeaderMap::new(), Vec::new()),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(status(429), http::HeaderMap::new(), Vec::new()),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(status(404), http::HeaderMap::new(), Vec::new()),
            Attempt::Fail(_)
        ));
        assert!(matches!(
            classify(status(200), http::HeaderMap::new(), Vec::new()),
            Attempt::Done(_)
        ));
    }

    #[test]
    fn config_debug_hides_the_token() {
        let shown = format!("{:?}", config("http://x"));
        assert!(!shown.contains("as_secret_token"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn bad_bot_localpart_is_rejected() {
        let mut cfg = config("http://x");
        cfg.bot_localpart = "has space".into();
        // ruma accepts historical localparts, but not every string.
        cfg.server_name = "bad server".into();
        assert!(matches!(
            HomeserverClient::new(cfg, None),
            Err(MatrixError::InvalidId(_))
        ));
    }

    #[test]
    fn truncate_keeps_short_text_and_cuts_long_text() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(300);
        let cut = truncate(&long);
        assert_eq!(cut.chars().count(), 201);
        assert!(cut.ends_with('…'));
    }
}
