//! The loopback network: an in-process network for tests and demonstrations.
//!
//! It has a bridge-wide identity (like a gateway) and a password login flow (like a personal
//! account), and it is driven over a control socket that speaks JSON lines on a loopback
//! address:
//!
//! - requests: `{"op": "inject", "event": RemoteEvent}` (answered once the bridge stored the
//!   event), `{"op": "sent"}` (every operation the bridge asked of the network since start),
//!   `{"op": "pause"}` / `{"op": "resume"}` (hold every send until resumed),
//!   `{"op": "slow", "ms": n}` (every message send from now on takes `n` ms, a slow network;
//!   each announced as it begins: `{"sending": {"op": "message", ...}}`),
//!   `{"op": "fail_next", "error": "undeliverable" | "transient" | "down", "message": "...",
//!   "count": n}` (the next `n` message sends fail, default 1) and
//!   `{"op": "state", "user": "@u:hs", "state": "BAD_CREDENTIALS"}`;
//! - answers: `{"reply": {...}}`; and, to every connected client, each operation as it
//!   happens: `{"sent": {"op": "message", ...}}` (a remote sender told that an event did not
//!   reach Matrix: `{"sent": {"op": "undelivered", "event": ..., "reason": "..."}}`).
//!
//! User IDs `name@group` share the per-domain limits of their group (`Connector::rate_key`).
//!
//! Logins: flow `password`, any username, the password `loopback-password`. A stored login
//! whose data has `"chats": "direct"` carries direct chats only (`NetworkClient::serves`),
//! like a personal account that cannot join group chats.

mod client;
mod connector;
mod control;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use self::client::LoopbackClient;
use crate::network::{
    Capabilities, Connector, EventSink, NetworkError, NetworkId, NetworkInfo, ThirdPartyField,
};

/// The password the loopback login flow accepts.
pub const PASSWORD: &str = "loopback-password";

/// `networks.loopback` section: an in-process network driven over a local control socket.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoopbackConfig {
    /// Address of the control socket (JSON lines); loopback addresses only.
    pub control: SocketAddr,
}

impl crate::network::config::NetworkConfig for LoopbackConfig {
    const KEY: &'static str = "loopback";

    fn validate(
        &self,
        _: &crate::network::config::ConfigContext<'_>,
    ) -> Result<(), crate::network::config::ConfigError> {
        if !self.control.ip().is_loopback() {
            return Err(crate::network::config::invalid(
                "networks.loopback.control",
                "must be a loopback address such as 127.0.0.1:29340",
            ));
        }
        Ok(())
    }

    fn connector(
        &self,
        _: &crate::network::config::ConfigContext<'_>,
    ) -> Result<Arc<dyn Connector>, crate::network::config::ConfigError> {
        Ok(Arc::new(Loopback::new(self.control)))
    }
}

struct Shared {
    sink: OnceLock<EventSink>,
    paused: watch::Sender<bool>,
    feed: broadcast::Sender<String>,
    log: Mutex<Vec<Value>>,
    counter: AtomicU64,
    /// Failures to answer the next sends with, first first.
    fail_next: Mutex<std::collections::VecDeque<NetworkError>>,
    /// How long each message send takes (`slow`).
    slow: Mutex<std::time::Duration>,
    stop: watch::Sender<bool>,
}

/// The loopback connector.
pub struct Loopback {
    info: NetworkInfo,
    control: SocketAddr,
    shared: Arc<Shared>,
    gateway: Arc<LoopbackClient>,
}

impl Loopback {
    /// A connector whose control socket will listen on `control`.
    pub fn new(control: SocketAddr) -> Self {
        let shared = Arc::new(Shared {
            sink: OnceLock::new(),
            paused: watch::channel(false).0,
            feed: broadcast::channel(4096).0,
            log: Mutex::default(),
            counter: AtomicU64::new(0),
            fail_next: Mutex::default(),
            slow: Mutex::default(),
            stop: watch::channel(false).0,
        });
        let field = |name: &str| ThirdPartyField {
            name: name.into(),
            regexp: r"[^\s]+".into(),
            placeholder: "bob".into(),
        };
        Self {
            info: NetworkInfo {
                id: NetworkId::new("loopback"),
                display_name: "Loopback".into(),
                protocol: "loopback".into(),
                capabilities: Capabilities::ALL,
                user_fields: vec![field("user")],
                location_fields: vec![field("room")],
                user_id_example: "bob".into(),
            },
            control,
            gateway: Arc::new(LoopbackClient {
                shared: Arc::clone(&shared),
                login: None,
                direct_only: false,
            }),
            shared,
        }
    }
}
