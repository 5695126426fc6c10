//! The SIP/SIMPLE network: the bridge as a SIP endpoint for a gateway domain next to the
//! organisation's SIP proxy (the proxy routes `sip:*@<gateway domain>` to the bridge). SIP
//! users reach Matrix users at addresses on that domain and appear on Matrix as ghosts; no
//! SIP passwords are needed. See `docs/sip.md`.
//!
//! | file | role |
//! |---|---|
//! | `endpoint.rs` | listeners, requests through the proxy (the transaction layer) |
//! | `dialog.rs` | hand-kept dialogs, serialisable so subscriptions survive a restart |
//! | `headers.rs` | header values read and written by hand: name-addrs, lists, compact names |
//! | `ids.rs` | addressing both ways |
//! | `config.rs` | the `networks.sip` section, its checks and defaults |
//! | `body.rs` | PIDF, typing notifications, HTML to text, splitting |
//! | `handle_sip.rs` | SIP → bridge |
//! | `handle_matrix.rs` | bridge → SIP |
//! | `presence/` | presence subscriptions both ways, kept across restarts |
//! | `account/` | users' own SIP accounts: REGISTER with digest, refresh, messages as the account; the login form and flow (`password.rs`) |

mod account;
pub(crate) mod body;
mod config;
mod dialog;
mod endpoint;
mod handle_matrix;
mod handle_sip;
pub(crate) mod headers;
pub mod ids;
mod presence;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

pub use self::config::{SipConfig, SipTlsConfig, SipTransport};
use self::endpoint::Endpoint;
use self::handle_matrix::Gateway;
use self::ids::Addressing;
use crate::backoff::Policy;
use crate::error::Reason;
use crate::network::contacts::SubscriptionPolicy;
use crate::network::kit::{login, registry::Registry, state};
use crate::network::{
    BridgeState, Capabilities, Connector, ConnectorStore, EventSink, LoginData, LoginFlow,
    LoginProcess, NetworkClient, NetworkError, NetworkId, NetworkInfo, Presence, RemoteChatId,
    RemoteUserId, ThirdPartyField,
};

/// The network's name in what users and logs read.
const NETWORK: &str = "SIP";

/// What the inbound handler, the gateway identity and the timers share.
pub(crate) struct Shared {
    addressing: Addressing,
    sink: OnceLock<EventSink>,
    endpoint: OnceLock<Endpoint>,
    policy: SubscriptionPolicy,
    /// Source addresses accepted besides the proxy's.
    trusted: Vec<IpAddr>,
    proxy: std::net::SocketAddr,
    transport: SipTransport,
    subscription_seconds: u32,
    register_seconds: u32,
    /// Own accounts by the user part of their registered contact, with the stop switch of
    /// their registration loops.
    accounts: Registry<Arc<presence::OwnAccount>>,
    state: state::StateCell,
    /// Last presence published per Matrix user.
    presence: Mutex<HashMap<String, Presence>>,
    /// Serialises changes to the stored subscriptions.
    subscriptions: tokio::sync::Mutex<()>,
    /// (Matrix user, contact, own account or `None` for the gateway address) whose contact
    /// refused a presence subscription in this run: not asked again on every message.
    refused: Mutex<std::collections::HashSet<(String, String, Option<String>)>>,
}

impl Shared {
    /// The connector's storage, once started.
    fn store(&self) -> Result<&dyn ConnectorStore, NetworkError> {
        state::store(&self.sink, NETWORK)
    }

    /// The bridge's background tasks, once started.
    fn tasks(&self) -> Result<&crate::tasks::Tasks, NetworkError> {
        state::tasks(&self.sink, NETWORK)
    }

    /// The endpoint, once started.
    fn endpoint(&self) -> Result<&Endpoint, NetworkError> {
        state::started(&self.endpoint, NETWORK)
    }

    /// Largest text body of one MESSAGE: RFC 3428 keeps a MESSAGE over UDP under 1300
    /// bytes when the path MTU is unknown (about 700 bytes go to headers); over TCP a body
    /// may be much larger.
    fn max_body(&self) -> usize {
        match self.transport {
            SipTransport::Udp => 700,
            SipTransport::Tcp | SipTransport::Tls => 60_000,
        }
    }

    /// Records the link state and reports changes.
    async fn set_state(&self, state: BridgeState, message: Option<String>) {
        let detail = message.clone();
        if self
            .state
            .report(self.sink.get(), None, state, message)
            .await
        {
            tracing::info!(state = state.as_str(), ?detail, "SIP link state");
        }
    }
}

/// The SIP connector.
pub struct Sip {
    info: NetworkInfo,
    listen: std::net::SocketAddr,
    tls: Option<SipTlsConfig>,
    shared: Arc<Shared>,
    gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
}

impl Sip {
    /// A connector for the gateway described by `cfg`, bridging for homeserver `homeserver`.
    pub fn new(cfg: &SipConfig, homeserver: &str) -> Self {
        let shared = Arc::new(Shared {
            addressing: Addressing::new(&cfg.domain, homeserver),
            sink: OnceLock::new(),
            endpoint: OnceLock::new(),
            policy: cfg.subscriptions.clone(),
            trusted: cfg.trusted.clone(),
            proxy: cfg.proxy,
            transport: cfg.transport,
            subscription_seconds: cfg.subscription_seconds,
            register_seconds: cfg.register_seconds,
            accounts: Registry::default(),
            state: state::StateCell::new(BridgeState::Starting),
            presence: Mutex::default(),
            subscriptions: tokio::sync::Mutex::new(()),
            refused: Mutex::default(),
        });
        Self {
            info: NetworkInfo {
                id: NetworkId::new("sip"),
                display_name: "SIP".into(),
                protocol: "sip".into(),
                capabilities: Capabilities {
                    typing: true,
                    presence: true,
                    ..Capabilities::default()
                },
                user_fields: vec![ThirdPartyField {
                    name: "uri".into(),
                    regexp: r"(sips?:)?[^@\s]+@[^@\s]+".into(),
                    placeholder: "sip:bob@example.org".into(),
                }],
                location_fields: Vec::new(),
                user_id_example: "sip:bob@example.org".into(),
            },
            listen: cfg.listen,
            tls: cfg.tls.clone(),
            gateway: Arc::new(Gateway {
                shared: shared.clone(),
            }),
            shared,
            stop: watch::channel(false).0,
        }
    }
}

#[async_trait]
impl Connector for Sip {
    fn info(&self) -> &NetworkInfo {
        &self.info
    }

    async fn undelivered(&self, event: &crate::network::RemoteEvent, reason: &str) {
        // The MESSAGE was answered 200 once stored; the sender learns of the failure from a
        // MESSAGE back from the address it wrote to.
        if !matches!(event.kind, crate::network::RemoteEventKind::Message { .. })
            || event.chat_kind != crate::network::ChatKind::Direct
        {
            return;
        }
        let Some(from) = event
            .receiver
            .as_deref()
            .and_then(|r| self.shared.addressing.puppet_uri(r))
        else {
            return;
        };
        if let Err(e) = self
            .gateway
            .tell(&from, event.sender.as_str(), reason)
            .await
        {
            tracing::debug!(error = %crate::error::chain(&e), "could not tell the SIP sender of a failed message");
        }
    }

    async fn start(&self, sink: EventSink) -> Result<(), NetworkError> {
        let tasks = sink.tasks().clone();
        let _ = self.shared.sink.set(sink);
        let (endpoint, incoming) = Endpoint::start(
            self.listen,
            self.shared.proxy,
            self.shared.transport,
            self.tls.as_ref(),
            concat!("isthmus/", env!("CARGO_PKG_VERSION")),
            &tasks,
        )
        .await
        .map_err(|e| NetworkError::Internal(Reason::from_error(e)))?;
        if self.shared.endpoint.set(endpoint).is_err() {
            return Err(NetworkError::Internal(
                "the SIP connector was started twice".into(),
            ));
        }
        tracing::info!(listen = %self.listen, proxy = %self.shared.proxy, domain = self.shared.addressing.domain(), transport = transport_name(self.shared.transport), "SIP endpoint listening");
        self.shared.set_state(BridgeState::Connecting, None).await;
        tasks.spawn(handle_sip::serve(
            self.shared.clone(),
            incoming,
            tasks.cancelled(),
        ));
        // Neither holds acknowledged work: a shutdown may cut them at any wait (an OPTIONS
        // or SUBSCRIBE without an answer waits for its transaction timeout).
        tasks.spawn_loop(keepalive(self.shared.clone(), self.stop.subscribe()));
        tasks.spawn_loop(presence::maintain(
            self.shared.clone(),
            self.stop.subscribe(),
        ));
        Ok(())
    }

    async fn stop(&self) {
        self.stop.send_replace(true);
        if let Some(e) = self.shared.endpoint.get() {
            e.stop();
        }
    }

    fn bridge_client(&self) -> Option<Arc<dyn NetworkClient>> {
        Some(self.gateway.clone())
    }

    fn login_flows(&self) -> Vec<LoginFlow> {
        vec![login::password_flow(
            "SIP account",
            "Log in with your own SIP address and password; the bridge registers for you.",
        )]
    }

    async fn start_login(
        &self,
        user_id: &str,
        flow_id: &str,
    ) -> Result<Box<dyn LoginProcess>, NetworkError> {
        let process = login::start(account::Accounts(self.shared.clone()), user_id, flow_id)?;
        self.shared.endpoint()?;
        Ok(process)
    }

    async fn load_login(
        &self,
        user_id: &str,
        login: &LoginData,
    ) -> Result<Arc<dyn NetworkClient>, NetworkError> {
        login::load(&account::Accounts(self.shared.clone()), user_id, login)
    }

    fn parse_user_id(&self, raw: &str) -> Result<RemoteUserId, NetworkError> {
        self.shared
            .addressing
            .contact(raw)
            .map(RemoteUserId::new)
            .map_err(|e| NetworkError::InvalidInput(Reason::from_error(e)))
    }

    fn fanout_chat(&self, room_id: &str) -> Option<RemoteChatId> {
        Some(RemoteChatId::new(ids::room_chat(room_id)))
    }

    fn rate_key(&self, user: &RemoteUserId) -> String {
        // Users are `user@host`: the host is the domain.
        user.as_str()
            .rsplit_once('@')
            .map(|(_, host)| host.to_owned())
            .unwrap_or_else(|| user.as_str().to_owned())
    }

    fn default_display_name(&self, user: &RemoteUserId) -> String {
        // The user part reads best ("bob" for bob@corp.example).
        user.as_str()
            .rsplit_once('@')
            .map(|(u, _)| u.to_owned())
            .unwrap_or_else(|| user.as_str().to_owned())
    }

    fn status(&self) -> Vec<(String, BridgeState)> {
        vec![(
            format!(
                "gateway {} via proxy {} ({})",
                self.shared.addressing.domain(),
                self.shared.proxy,
                transport_name(self.shared.transport)
            ),
            self.shared.state.get(),
        )]
    }
}

fn transport_name(t: SipTransport) -> &'static str {
    match t {
        SipTransport::Udp => "udp",
        SipTransport::Tcp => "tcp",
        SipTransport::Tls => "tls",
    }
}

/// How often the proxy is asked while it answers.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How often it is asked while it does not.
const KEEPALIVE_RETRY: Policy = Policy::constant(Duration::from_secs(5));

/// Asks the proxy for OPTIONS every 30 s (every 5 s while it does not answer): an answer
/// means the link is up, whatever its status code.
async fn keepalive(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut retry = KEEPALIVE_RETRY.start();
    loop {
        let up = match shared.endpoint() {
            Ok(ep) => {
                let uri = format!("sip:{}", shared.proxy);
                let from = format!(
                    "<sip:isthmus@{}>;tag={}",
                    shared.addressing.domain(),
                    ep.tag()
                );
                let out = endpoint::Outgoing::options(&uri, from);
                match ep.send(out).await {
                    // A locally generated 408 means no answer came.
                    Ok(a) if a.code != 408 => Ok(()),
                    Ok(a) => Err(format!("the proxy did not answer ({})", a.reason)),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let wait = match up {
            Ok(()) => {
                retry.reset();
                shared.set_state(BridgeState::Connected, None).await;
                KEEPALIVE_INTERVAL
            }
            Err(e) => {
                shared
                    .set_state(BridgeState::TransientDisconnect, Some(e))
                    .await;
                retry.next_delay().unwrap_or(KEEPALIVE_RETRY.cap())
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}
