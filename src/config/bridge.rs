//! The `bridge` section: the core's behaviour, with its `relay` and `media` parts, and the
//! permission levels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{LimitsConfig, Secret};

/// Permission level of a Matrix user on the bridge, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PermissionLevel {
    /// May not use the bridge at all.
    None,
    /// May talk in portals where relay mode is on; messages go out through the relay.
    Relay,
    /// May log in, start chats and use the bridge.
    User,
    /// Everything, including other users' portals and admin commands.
    Admin,
}

/// `bridge` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Command prefix in rooms other than the management room.
    #[serde(default = "default_command_prefix")]
    pub command_prefix: String,
    /// Template of ghost user localparts; `{network}` and `{id}` (the escaped remote ID) are
    /// replaced. Must start with the namespace prefix and contain both placeholders.
    #[serde(default = "default_ghost_template")]
    pub ghost_localpart_template: String,
    /// Template of ghost display names; `{name}` and `{network}` are replaced.
    #[serde(default = "default_displayname_template")]
    pub ghost_displayname_template: String,
    /// Template of room alias localparts for group chats; `{network}` and `{id}` replaced.
    #[serde(default = "default_ghost_template")]
    pub alias_localpart_template: String,
    /// Who may do what: keys are `*`, a server name, or a full user ID; the most specific wins.
    #[serde(default = "default_permissions")]
    pub permissions: BTreeMap<String, PermissionLevel>,
    /// Relay mode.
    #[serde(default)]
    pub relay: RelayConfig,
    /// Bridge `m.notice` messages to remote networks.
    #[serde(default)]
    pub bridge_notices: bool,
    /// How long an idle portal's queue task stays in memory, in seconds. Starting one again is
    /// cheap; keeping one costs a few KB, so a bridge with many quiet chats holds tasks only
    /// for the chats with recent work.
    #[serde(default = "default_portal_idle")]
    pub portal_idle_seconds: u64,
    /// How often the presence of ghosts whose remote users are online or away is set again,
    /// in seconds; 0: never. Homeservers time out the presence of users who do not sync
    /// (Synapse: 30 s after the last update), and ghosts never sync, so without this a
    /// contact shown online would turn offline half a minute later.
    #[serde(default = "default_presence_refresh")]
    pub presence_refresh_seconds: u64,
    /// How long a login must stay disconnected before its user is told, in seconds.
    #[serde(default = "default_state_notice_delay")]
    pub state_notice_delay_seconds: u64,
    /// How many passing failures of one item (while the homeserver, the store and the network
    /// are reachable) set it aside in the quarantine, so that it no longer holds its portal;
    /// its sender is told, and an admin can retry it (`quarantine` command). Failures while
    /// the homeserver or a network link is down do not count: then the portal waits.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after_attempts: u32,
    /// The secret (at least 32 characters) that seals stored login credentials. Unset: a
    /// random one is generated into `login.key` in the database folder on first start.
    #[serde(default)]
    pub login_key: Option<Secret>,
    /// Where Matrix users' browsers reach the bridge's HTTP listener (`appservice.listen`),
    /// such as `https://bridge.example.org` (use HTTPS: passwords are posted to it). When set,
    /// `login` answers with a one-time link to a login page under it, so that passwords never
    /// enter Matrix; it is also the default of `bridge.media.public_url`. Unset: logins ask
    /// for each value in the management room.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Files and media between Matrix and the networks.
    #[serde(default)]
    pub media: MediaConfig,
    /// How fast remote senders may make the bridge create new portals, ghosts and invites.
    #[serde(default)]
    pub limits: LimitsConfig,
}

impl BridgeConfig {
    /// The base of links to Matrix files: `media.public_url`, else `public_url`.
    pub fn media_public_url(&self) -> Option<&str> {
        self.media
            .public_url
            .as_deref()
            .or(self.public_url.as_deref())
    }
}

/// `bridge.media` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Where remote users can reach the bridge's HTTP listener (`appservice.listen`), such as
    /// `https://bridge.example.org`. Matrix files go to networks as links under it, signed and
    /// expiring. Unset: `bridge.public_url`; when both are unset, Matrix files are not sent to
    /// networks (the sender is told).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Largest file bridged either way, in bytes (the homeserver's upload limit also applies).
    #[serde(default = "default_media_max")]
    pub max_bytes: u64,
    /// Hosts whose files may be fetched although they resolve to loopback, private or
    /// link-local addresses (by default those are refused, also after redirects).
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// How long a link to a Matrix file stays valid, in seconds.
    #[serde(default = "default_link_lifetime")]
    pub link_lifetime_seconds: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            max_bytes: default_media_max(),
            allow_hosts: Vec::new(),
            link_lifetime_seconds: default_link_lifetime(),
        }
    }
}

fn default_media_max() -> u64 {
    50 * 1024 * 1024
}
fn default_link_lifetime() -> u64 {
    7 * 24 * 3600
}

fn default_command_prefix() -> String {
    "!isthmus".into()
}
fn default_ghost_template() -> String {
    "_{network}_{id}".into()
}
fn default_displayname_template() -> String {
    "{name} ({network})".into()
}
fn default_permissions() -> BTreeMap<String, PermissionLevel> {
    BTreeMap::new()
}
fn default_portal_idle() -> u64 {
    10
}
fn default_presence_refresh() -> u64 {
    20
}
fn default_state_notice_delay() -> u64 {
    30
}
fn default_quarantine_after() -> u32 {
    10
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            command_prefix: default_command_prefix(),
            ghost_localpart_template: default_ghost_template(),
            ghost_displayname_template: default_displayname_template(),
            alias_localpart_template: default_ghost_template(),
            permissions: default_permissions(),
            relay: RelayConfig::default(),
            bridge_notices: false,
            portal_idle_seconds: default_portal_idle(),
            presence_refresh_seconds: default_presence_refresh(),
            state_notice_delay_seconds: default_state_notice_delay(),
            quarantine_after_attempts: default_quarantine_after(),
            login_key: None,
            public_url: None,
            media: MediaConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// `bridge.relay` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Allow `set-relay` in portals.
    #[serde(default)]
    pub enabled: bool,
    /// Format of a relayed message: `{sender}` (display name), `{user_id}` and `{body}` are
    /// replaced.
    #[serde(default = "default_relay_format")]
    pub message_format: String,
}

fn default_relay_format() -> String {
    "{sender}: {body}".into()
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            message_format: default_relay_format(),
        }
    }
}
