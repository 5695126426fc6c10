//! The Matrix side's sections: `homeserver` (where the bridge reaches it) and `appservice`
//! (the bridge's own endpoint and identity).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Secret;

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
