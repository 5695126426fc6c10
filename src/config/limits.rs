//! The `bridge.limits` section: token buckets on what remote senders can make the bridge
//! create.

use serde::{Deserialize, Serialize};

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
    pub(super) const fn new(rate: u32, per_seconds: u32, burst: u32) -> Self {
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
pub(super) fn default_invites_per_user() -> RateLimit {
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
