//! Configuration: typed sections, loaded from YAML and validated before anything starts.
//!
//! The doc comments on the fields are the configuration reference (`docs/configuration.md`
//! follows them). Secrets can be written inline, or as `{file: PATH}` or `{env: NAME}`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Values that mark a setting as not filled in yet; `check-config` refuses them.
const PLACEHOLDERS: &[&str] = &["CHANGE_ME", "changeme", "generate", "REPLACE_ME"];

/// Everything wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not match the expected structure.
    #[error("config file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// YAML text does not match the expected structure (text given directly, no file).
    #[error("the configuration is not valid: {message}")]
    Syntax {
        /// The parser's message, with line and column.
        message: String,
    },
    /// A setting has a wrong value.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted path of the setting.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// The error for setting `key` with a wrong value; `message` says what is wrong and how to fix
/// it.
pub fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// A secret value: inline, read from a file, or read from an environment variable. Never
/// printed: its `Debug` output is `<redacted>`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Secret {
    /// Written in the config file.
    Inline(String),
    /// Read from a file (surrounding whitespace trimmed).
    File {
        /// Path of the file.
        file: PathBuf,
    },
    /// Read from an environment variable.
    Env {
        /// Name of the variable.
        env: String,
    },
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Secret(<redacted>)"),
            Secret::File { file } => write!(f, "Secret(file {})", file.display()),
            Secret::Env { env } => write!(f, "Secret(env {env})"),
        }
    }
}

impl Secret {
    /// Resolves the secret. `env` looks up environment variables (passed in so that only the
    /// application's edge reads the environment).
    pub fn resolve(
        &self,
        key: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, ConfigError> {
        let value = match self {
            Secret::Inline(s) => s.clone(),
            Secret::File { file } => std::fs::read_to_string(file)
                .map_err(|e| {
                    invalid(
                        key,
                        format!("cannot read secret file {}: {e}", file.display()),
                    )
                })?
                .trim()
                .to_owned(),
            Secret::Env { env: name } => env(name).ok_or_else(|| {
                invalid(
                    key,
                    format!("environment variable {name} is not set; set it or write the value in the file"),
                )
            })?,
        };
        if value.is_empty() {
            return Err(invalid(key, "is empty; give a value"));
        }
        if PLACEHOLDERS.iter().any(|p| value.eq_ignore_ascii_case(p)) {
            return Err(invalid(
                key,
                "still holds the example placeholder; put a long random value here (for example the output of `openssl rand -hex 32`)",
            ));
        }
        Ok(value)
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The homeserver the bridge registers with.
    pub homeserver: HomeserverConfig,
    /// The bridge's own appservice endpoint and identity.
    pub appservice: AppserviceConfig,
    /// Behaviour of the bridge core.
    #[serde(default)]
    pub bridge: BridgeConfig,
    /// The embedded database.
    pub database: DatabaseConfig,
    /// Logging.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Remote networks, one section per network under its key. A section is read and checked
    /// by its connector, not here (see `network::config`); unknown keys are refused there.
    #[serde(default)]
    pub networks: BTreeMap<String, serde_json::Value>,
}

/// `homeserver` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HomeserverConfig {
    /// URL the bridge uses to reach the homeserver's client-server API, e.g.
    /// `http://127.0.0.1:8008`.
    pub url: String,
    /// The homeserver's server name (the part after `:` in user IDs), e.g. `example.org`.
    pub domain: String,
    /// Most requests in flight towards the homeserver at once.
    #[serde(default = "default_hs_concurrency")]
    pub max_concurrency: usize,
    /// How often a failed homeserver request (429, 5xx, connection error) is retried.
    #[serde(default = "default_hs_retries")]
    pub max_retries: u32,
}

fn default_hs_concurrency() -> usize {
    64
}
fn default_hs_retries() -> u32 {
    6
}

/// `appservice` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppserviceConfig {
    /// Registration ID; never change it after registering.
    #[serde(default = "default_as_id")]
    pub id: String,
    /// Address the appservice HTTP server listens on.
    pub listen: SocketAddr,
    /// URL the homeserver uses to reach this bridge (written into the registration).
    pub url: String,
    /// Token the bridge uses towards the homeserver.
    pub as_token: Secret,
    /// Token the homeserver uses towards the bridge.
    pub hs_token: Secret,
    /// Localpart of the bridge bot.
    #[serde(default = "default_bot_localpart")]
    pub bot_localpart: String,
    /// Display name of the bridge bot.
    #[serde(default = "default_bot_displayname")]
    pub bot_displayname: String,
    /// Prefix of every user ID and alias the bridge owns; must start with `_`.
    #[serde(default = "default_namespace_prefix")]
    pub namespace_prefix: String,
    /// Largest transaction body accepted, in bytes. Never set this below what the homeserver
    /// may send: a refused transaction is retried by the homeserver forever.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Seconds a client has to send a request's head, counted from when the connection starts
    /// waiting for it (opened, or the previous response sent); so also how long a kept-alive
    /// connection may stay idle. A connection that misses it is closed.
    #[serde(default = "default_header_timeout")]
    pub request_header_timeout_secs: u64,
    /// Seconds a client has to send a request's body once its head arrived.
    #[serde(default = "default_body_timeout")]
    pub request_body_timeout_secs: u64,
    /// Connections open at once on the listener. When all are taken, idle connections are
    /// closed and new ones wait; kept below the process's open-files limit at start.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Accept the hs_token in the deprecated `access_token` query parameter.
    #[serde(default)]
    pub allow_query_token: bool,
    /// Ask for typing, receipts and presence (ephemeral events) in the registration.
    #[serde(default = "default_true")]
    pub receive_ephemeral: bool,
    /// Shared secret of the provisioning API (`/_matrix/provision/v3`); the API is off when
    /// unset.
    #[serde(default)]
    pub provisioning_secret: Option<Secret>,
}

fn default_as_id() -> String {
    "isthmus".into()
}
fn default_bot_localpart() -> String {
    "_isthmus_bot".into()
}
fn default_bot_displayname() -> String {
    "isthmus bridge bot".into()
}
fn default_namespace_prefix() -> String {
    "_".into()
}
fn default_header_timeout() -> u64 {
    20
}
fn default_body_timeout() -> u64 {
    60
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_body() -> usize {
    32 << 20
}
fn default_true() -> bool {
    true
}

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

/// `bridge.limits` section: token buckets on what remote senders can make the bridge create.
/// Only new things are counted; portals and ghosts that exist never consult the limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// New portals one remote sender may open (over it, the sender is told on its network).
    #[serde(default = "default_portals_per_sender")]
    pub portals_per_sender: RateLimit,
    /// New portals the senders of one remote domain (as the network groups its users) may open.
    #[serde(default = "default_portals_per_domain")]
    pub portals_per_domain: RateLimit,
    /// New chats opened from the networks that invite one Matrix user.
    #[serde(default = "default_invites_per_user")]
    pub invites_per_user: RateLimit,
    /// New ghosts that joins, presence and profile changes of one remote domain may create;
    /// over it they are dropped quietly (the ghost comes with the sender's first message).
    #[serde(default = "default_ghosts_per_domain")]
    pub ghosts_per_domain: RateLimit,
    /// New ghosts that messages of one remote domain may create (a larger budget, so that
    /// messages from new group chat occupants still arrive).
    #[serde(default = "default_message_ghosts_per_domain")]
    pub message_ghosts_per_domain: RateLimit,
}

/// One token bucket: `burst` at once, then `rate` more every `per_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// How many are refilled every `per_seconds`.
    pub rate: u32,
    /// The refill period, in seconds.
    pub per_seconds: u32,
    /// How many may come at once (the bucket's size).
    pub burst: u32,
}

impl RateLimit {
    const fn new(rate: u32, per_seconds: u32, burst: u32) -> Self {
        Self {
            rate,
            per_seconds,
            burst,
        }
    }
}

fn default_portals_per_sender() -> RateLimit {
    RateLimit::new(5, 60, 10)
}
fn default_portals_per_domain() -> RateLimit {
    RateLimit::new(20, 60, 30)
}
fn default_invites_per_user() -> RateLimit {
    RateLimit::new(60, 3600, 20)
}
fn default_ghosts_per_domain() -> RateLimit {
    RateLimit::new(30, 60, 100)
}
fn default_message_ghosts_per_domain() -> RateLimit {
    RateLimit::new(120, 60, 300)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            portals_per_sender: default_portals_per_sender(),
            portals_per_domain: default_portals_per_domain(),
            invites_per_user: default_invites_per_user(),
            ghosts_per_domain: default_ghosts_per_domain(),
            message_ghosts_per_domain: default_message_ghosts_per_domain(),
        }
    }
}

impl LimitsConfig {
    /// Every limit with its key below `bridge.limits`.
    pub fn all(&self) -> [(&'static str, RateLimit); 5] {
        [
            ("portals_per_sender", self.portals_per_sender),
            ("portals_per_domain", self.portals_per_domain),
            ("invites_per_user", self.invites_per_user),
            ("ghosts_per_domain", self.ghosts_per_domain),
            ("message_ghosts_per_domain", self.message_ghosts_per_domain),
        ]
    }
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

/// `database` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Folder of the embedded store; created when missing, owner-only.
    pub path: PathBuf,
    /// Most memory the store's cache takes, in MiB (1 to 4096). The store's memory use stays
    /// near this however large the transactions are.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
}

fn default_cache_mb() -> u64 {
    crate::store::DEFAULT_CACHE_BYTES / (1024 * 1024)
}

impl DatabaseConfig {
    /// The cache size in bytes.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_mb * 1024 * 1024
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `logging` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// Filter in `tracing` syntax, e.g. `info` or `isthmus=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Output format.
    #[serde(default)]
    pub format: LogFormat,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

/// The secrets of a configuration, resolved.
#[derive(Clone)]
pub struct ResolvedSecrets {
    /// Token towards the homeserver.
    pub as_token: String,
    /// Token from the homeserver.
    pub hs_token: String,
    /// The provisioning API secret, when the API is on.
    pub provisioning_secret: Option<String>,
    /// The login sealing secret, when configured.
    pub login_key: Option<String>,
}

impl fmt::Debug for ResolvedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResolvedSecrets(<redacted>)")
    }
}

impl Config {
    /// Reads and parses `path` (no validation).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Syntax { message } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses YAML text (no validation); the error holds the parser's message, with line
    /// and column.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
            message: e.to_string(),
        })
    }

    /// The files the config reads secrets from, with the key naming each: they must be
    /// readable by the owner only.
    pub fn secret_files(&self) -> Vec<(&'static str, PathBuf)> {
        let mut out = Vec::new();
        let mut add = |key: &'static str, s: Option<&Secret>| {
            if let Some(Secret::File { file }) = s {
                out.push((key, file.clone()));
            }
        };
        add("appservice.as_token", Some(&self.appservice.as_token));
        add("appservice.hs_token", Some(&self.appservice.hs_token));
        add(
            "appservice.provisioning_secret",
            self.appservice.provisioning_secret.as_ref(),
        );
        add("bridge.login_key", self.bridge.login_key.as_ref());
        out
    }

    /// Checks every setting and resolves the secrets. The first problem found is returned,
    /// naming the key and saying how to fix it.
    pub fn validate(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ResolvedSecrets, ConfigError> {
        let hs = &self.homeserver;
        if !(hs.url.starts_with("http://") || hs.url.starts_with("https://")) {
            return Err(invalid(
                "homeserver.url",
                "must start with http:// or https://",
            ));
        }
        check_placeholder("homeserver.url", &hs.url)?;
        if hs.domain.is_empty() || hs.domain.contains(['/', '@', ' ']) {
            return Err(invalid(
                "homeserver.domain",
                "must be the server name only, such as example.org",
            ));
        }
        check_placeholder("homeserver.domain", &hs.domain)?;
        if hs.max_concurrency == 0 {
            return Err(invalid("homeserver.max_concurrency", "must be at least 1"));
        }
        let asc = &self.appservice;
        if asc.id.is_empty() {
            return Err(invalid("appservice.id", "must not be empty"));
        }
        if !(asc.url.starts_with("http://") || asc.url.starts_with("https://")) {
            return Err(invalid(
                "appservice.url",
                "must be the http(s) URL where the homeserver reaches the bridge",
            ));
        }
        check_placeholder("appservice.url", &asc.url)?;
        if !asc.namespace_prefix.starts_with('_') {
            return Err(invalid(
                "appservice.namespace_prefix",
                "must start with `_` so that it cannot collide with normal users",
            ));
        }
        if !asc.bot_localpart.starts_with(&asc.namespace_prefix) {
            return Err(invalid(
                "appservice.bot_localpart",
                format!(
                    "must start with the namespace prefix `{}`",
                    asc.namespace_prefix
                ),
            ));
        }
        if asc.request_header_timeout_secs == 0 || asc.request_body_timeout_secs == 0 {
            return Err(invalid(
                "appservice.request_header_timeout_secs",
                "the request timeouts must be at least 1 second",
            ));
        }
        if asc.max_connections < 16 {
            return Err(invalid(
                "appservice.max_connections",
                "must be at least 16 so that the homeserver always gets a connection",
            ));
        }
        if asc.max_body_bytes < (1 << 20) {
            return Err(invalid(
                "appservice.max_body_bytes",
                "must be at least 1 MiB (16 MiB or more recommended): a refused transaction is retried forever",
            ));
        }
        let b = &self.bridge;
        for (key, tpl) in [
            (
                "bridge.ghost_localpart_template",
                &b.ghost_localpart_template,
            ),
            (
                "bridge.alias_localpart_template",
                &b.alias_localpart_template,
            ),
        ] {
            if !tpl.contains("{network}") || !tpl.contains("{id}") {
                return Err(invalid(key, "must contain both {network} and {id}"));
            }
            if !tpl.starts_with(&asc.namespace_prefix) {
                return Err(invalid(
                    key,
                    format!(
                        "must start with the namespace prefix `{}`",
                        asc.namespace_prefix
                    ),
                ));
            }
        }
        if !b.ghost_displayname_template.contains("{name}") {
            return Err(invalid(
                "bridge.ghost_displayname_template",
                "must contain {name}",
            ));
        }
        if b.quarantine_after_attempts == 0 {
            return Err(invalid(
                "bridge.quarantine_after_attempts",
                "must be at least 1 (10 sets an item aside after about five minutes of failures)",
            ));
        }
        for (key, limit) in b.limits.all() {
            if limit.rate == 0 || limit.per_seconds == 0 || limit.burst == 0 {
                return Err(invalid(
                    &format!("bridge.limits.{key}"),
                    "rate, per_seconds and burst must each be at least 1 (set large values to relax a limit)",
                ));
            }
        }
        if b.permissions.is_empty() {
            return Err(invalid(
                "bridge.permissions",
                "is empty, so nobody could use the bridge; add for example `example.org: user` and `@you:example.org: admin`",
            ));
        }
        for key in b.permissions.keys() {
            let ok = key == "*"
                || (key.starts_with('@') && key.contains(':'))
                || (!key.is_empty() && !key.contains(['@', ':', ' ', '/']));
            if !ok {
                return Err(invalid(
                    &format!("bridge.permissions.{key}"),
                    "keys are `*`, a server name, or a full user ID such as @you:example.org",
                ));
            }
            check_placeholder(&format!("bridge.permissions.{key}"), key)?;
        }
        if !b.command_prefix.starts_with('!') || b.command_prefix.contains(char::is_whitespace) {
            return Err(invalid(
                "bridge.command_prefix",
                "must start with `!` and contain no spaces",
            ));
        }
        let as_token = asc.as_token.resolve("appservice.as_token", env)?;
        let hs_token = asc.hs_token.resolve("appservice.hs_token", env)?;
        if as_token == hs_token {
            return Err(invalid(
                "appservice.hs_token",
                "must differ from appservice.as_token",
            ));
        }
        let provisioning_secret = asc
            .provisioning_secret
            .as_ref()
            .map(|s| s.resolve("appservice.provisioning_secret", env))
            .transpose()?;
        for (key, url) in [
            ("bridge.public_url", &self.bridge.public_url),
            ("bridge.media.public_url", &self.bridge.media.public_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(invalid(
                    key,
                    "must be an http:// or https:// URL, such as https://bridge.example.org",
                ));
            }
        }
        if !(1..=4096).contains(&self.database.cache_mb) {
            return Err(invalid(
                "database.cache_mb",
                "must be between 1 and 4096 (MiB); 16 suits most bridges",
            ));
        }
        let login_key = self
            .bridge
            .login_key
            .as_ref()
            .map(|s| s.resolve("bridge.login_key", env))
            .transpose()?;
        if let Some(k) = &login_key
            && let Err(why) = crate::store::LoginKey::from_secret(k)
        {
            return Err(invalid("bridge.login_key", why.to_string()));
        }
        Ok(ResolvedSecrets {
            login_key,
            as_token,
            hs_token,
            provisioning_secret,
        })
    }
}

/// Refuses a value that still holds one of the example file's placeholders.
pub fn check_placeholder(key: &str, value: &str) -> Result<(), ConfigError> {
    if PLACEHOLDERS
        .iter()
        .any(|p| value.to_ascii_lowercase().contains(&p.to_ascii_lowercase()))
    {
        return Err(invalid(
            key,
            "still holds the example placeholder; put your real value here",
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid configuration of the core's sections, with no network (the tests of the
    /// networks' sections add theirs).
    pub(crate) const GOOD: &str = r#"
homeserver:
  url: http://127.0.0.1:8008
  domain: localhost
appservice:
  listen: 127.0.0.1:29331
  url: http://127.0.0.1:29331
  as_token: as_secret_value_1
  hs_token: {env: HS_TOKEN}
database:
  path: /tmp/x
bridge:
  permissions:
    "*": relay
    localhost: user
    "@admin:localhost": admin
"#;

    fn env(name: &str) -> Option<String> {
        (name == "HS_TOKEN").then(|| "hs_secret_value_2".to_owned())
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn err_key(cfg: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
        match Config::parse(cfg).unwrap().validate(env) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn good_config_resolves_secrets_from_env() {
        let cfg = Config::parse(GOOD).unwrap();
        let s = cfg.validate(&env).unwrap();
        assert_eq!(s.as_token, "as_secret_value_1");
        assert_eq!(s.hs_token, "hs_secret_value_2");
        assert_eq!(cfg.appservice.max_body_bytes, 32 << 20);
    }

    #[test]
    fn store_cache_is_bounded_and_named() {
        let cfg = Config::parse(GOOD).unwrap();
        assert_eq!(cfg.database.cache_mb, 16, "small by default");
        assert_eq!(cfg.database.cache_bytes(), 16 << 20);
        let with = |mb: &str| {
            GOOD.replace(
                "  path: /tmp/x\n",
                &format!("  path: /tmp/x\n  cache_mb: {mb}\n"),
            )
        };
        assert_eq!(Config::parse(&with("64")).unwrap().database.cache_mb, 64);
        assert_eq!(err_key(&with("0"), &env), "database.cache_mb");
        assert_eq!(err_key(&with("100000"), &env), "database.cache_mb");
    }

    #[test]
    fn missing_env_secret_names_the_key() {
        assert_eq!(err_key(GOOD, &no_env), "appservice.hs_token");
    }

    #[test]
    fn secret_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hs");
        std::fs::write(&f, "from_file_secret\n").unwrap();
        let s = Secret::File { file: f.clone() };
        assert_eq!(s.resolve("k", &no_env).unwrap(), "from_file_secret");
        let missing = Secret::File {
            file: dir.path().join("nope"),
        };
        assert!(missing.resolve("k", &no_env).is_err());
    }

    #[test]
    fn placeholders_are_refused() {
        let cfg = GOOD.replace("as_secret_value_1", "CHANGE_ME");
        assert_eq!(err_key(&cfg, &env), "appservice.as_token");
        let cfg = GOOD.replace("domain: localhost", "domain: CHANGE_ME.example");
        assert_eq!(err_key(&cfg, &env), "homeserver.domain");
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            err_key(
                &GOOD.replace("http://127.0.0.1:8008", "127.0.0.1:8008"),
                &env
            ),
            "homeserver.url"
        );
        let no_perms = GOOD.replace(
            "  permissions:\n    \"*\": relay\n    localhost: user\n    \"@admin:localhost\": admin\n",
            "  permissions: {}\n",
        );
        assert_eq!(err_key(&no_perms, &env), "bridge.permissions");
        let bad_tpl = format!("{GOOD}  ghost_localpart_template: \"_x_{{id}}\"\n");
        assert_eq!(err_key(&bad_tpl, &env), "bridge.ghost_localpart_template");
        let same = GOOD.replace("as_secret_value_1", "hs_secret_value_2");
        assert_eq!(err_key(&same, &env), "appservice.hs_token");
    }

    #[test]
    fn unknown_keys_are_refused_with_position() {
        let err = Config::parse(&format!("{GOOD}bogus: 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn example_config_parses_and_its_placeholders_are_refused() {
        let example = include_str!("../config.example.yaml");
        let cfg = Config::parse(example).expect("the example config parses");
        let env = |_: &str| Some("a_real_secret_from_env".to_owned());
        match cfg.validate(&env) {
            Err(ConfigError::Invalid { key, message }) => {
                assert_eq!(key, "homeserver.domain");
                assert!(message.contains("placeholder"), "{message}");
            }
            other => panic!("the example must be refused, got {other:?}"),
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::Inline("topsecret".into());
        assert!(!format!("{s:?}").contains("topsecret"));
        let cfg = Config::parse(GOOD).unwrap();
        assert!(!format!("{cfg:?}").contains("as_secret_value_1"));
    }

    #[test]
    fn limits_default_and_a_zero_is_refused_with_its_key() {
        let cfg = Config::parse(GOOD).unwrap();
        assert_eq!(
            cfg.bridge.limits.portals_per_sender,
            RateLimit::new(5, 60, 10)
        );
        let low = GOOD.replace(
            "bridge:\n",
            "bridge:\n  limits:\n    portals_per_domain: {rate: 1, per_seconds: 60, burst: 2}\n",
        );
        let cfg = Config::parse(&low).unwrap();
        cfg.validate(&env).unwrap();
        assert_eq!(
            cfg.bridge.limits.portals_per_domain,
            RateLimit::new(1, 60, 2)
        );
        assert_eq!(
            cfg.bridge.limits.invites_per_user,
            default_invites_per_user()
        );
        let zero = GOOD.replace(
            "bridge:\n",
            "bridge:\n  limits:\n    invites_per_user: {rate: 0, per_seconds: 60, burst: 2}\n",
        );
        assert_eq!(err_key(&zero, &env), "bridge.limits.invites_per_user");
    }
}
