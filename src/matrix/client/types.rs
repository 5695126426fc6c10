//! The values the client is configured with and that its calls take and give: [`HsConfig`],
//! [`RoomCreation`], [`Membership`].

use std::fmt;

use ruma::OwnedUserId;
use serde_json::Value as JsonValue;

/// Retries for transient failures when the configuration does not say otherwise.
pub const DEFAULT_MAX_RETRIES: u32 = 6;
/// Requests in flight towards the homeserver when the configuration does not say otherwise.
pub const DEFAULT_MAX_CONCURRENCY: usize = 32;

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

/// What [`HomeserverClient::create_room`](super::HomeserverClient::create_room) creates.
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
