//! The XMPP network: the bridge as a gateway component (XEP-0114) of the organisation's XMPP
//! server. Any XMPP user can reach the organisation's Matrix users at addresses on the
//! component domain, and XMPP contacts appear on Matrix as ghosts. No XMPP passwords are
//! needed.
//!
//! | file | role |
//! |---|---|
//! | `component.rs` | the link: connect, authenticate, reconnect with backoff |
//! | `limits.rs` | inbound limits enforced before the XML parser |
//! | `ids.rs` | addressing both ways |
//! | `handle_xmpp.rs` | XMPP → bridge |
//! | `handle_matrix.rs` | bridge → XMPP |

mod component;
pub mod convert;
mod handle_matrix;
mod handle_xmpp;
mod hosted;
pub mod ids;
pub mod limits;
mod muc;
pub mod roster;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use self::component::{LinkConfig, Outgoing};
use self::handle_matrix::Gateway;
use self::handle_xmpp::Handler;
use self::ids::Addressing;
use crate::config::XmppConfig;
use crate::network::{
    BridgeState, Capabilities, Connector, ConnectorStore, EventSink, NetworkClient, NetworkError,
    NetworkId, NetworkInfo, Presence, RemoteChatId, RemoteUserId, ThirdPartyField,
};

/// What the inbound handler and the gateway identity share.
pub(crate) struct Shared {
    addressing: Addressing,
    sink: OnceLock<EventSink>,
    policy: roster::SubscriptionPolicy,
    /// Last presence published per Matrix user, to skip repeats.
    presence: Mutex<HashMap<String, Presence>>,
    /// Group chats the bridge is in, by room JID.
    rooms: Mutex<HashMap<String, muc::Room>>,
    /// Stanzas to write on the link.
    out: mpsc::Sender<Outgoing>,
    /// Room aliases XMPP users may join as hosted group chats.
    hosted_allowed: Vec<String>,
    /// Hosted group chats in use, by room JID.
    hosted: Mutex<HashMap<String, hosted::Room>>,
}

impl Shared {
    /// The connector's storage, once started.
    fn store(&self) -> Result<&dyn ConnectorStore, NetworkError> {
        self.sink
            .get()
            .map(|s| s.store())
            .ok_or_else(|| NetworkError::Transient("the XMPP connector is not started".into()))
    }

    /// The alias of a hosted group chat address, when the config allows it.
    fn allowed_alias(&self, room: &xmpp_parsers::jid::BareJid) -> Option<String> {
        let alias = self.addressing.hosted_alias(room)?;
        self.hosted_allowed.contains(&alias).then_some(alias)
    }

    /// The presence last published for a Matrix user.
    fn presence_of(&self, user: &str) -> Option<Presence> {
        self.presence
            .lock()
            .expect("presence lock")
            .get(user)
            .cloned()
    }
}

/// The XMPP connector.
pub struct Xmpp {
    info: NetworkInfo,
    link: LinkConfig,
    handler: Arc<Handler>,
    gateway: Arc<Gateway>,
    outgoing: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    stop: watch::Sender<bool>,
}

impl Xmpp {
    /// A connector for the component described by `cfg`, with its resolved secret, bridging
    /// for the homeserver `homeserver`.
    pub fn new(cfg: &XmppConfig, secret: String, homeserver: &str) -> Self {
        let (state_tx, state_rx) = watch::channel(BridgeState::Starting);
        let (out_tx, out_rx) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            addressing: Addressing::new(&cfg.component.domain, homeserver),
            sink: OnceLock::new(),
            policy: cfg.subscriptions.clone(),
            presence: Mutex::default(),
            rooms: Mutex::default(),
            out: out_tx.clone(),
            hosted_allowed: cfg.hosted_rooms.clone(),
            hosted: Mutex::default(),
        });
        Self {
            info: NetworkInfo {
                id: NetworkId::new("xmpp"),
                display_name: "XMPP".into(),
                protocol: "xmpp".into(),
                capabilities: Capabilities {
                    formatting: false,
                    edits: false,
                    redactions: false,
                    reactions: false,
                    replies: false,
                    typing: true,
                    receipts: false,
                    presence: true,
                    group_chats: true,
                },
                user_fields: vec![ThirdPartyField {
                    name: "jid".into(),
                    regexp: r"[^@/\s]+@[^@/\s]+".into(),
                    placeholder: "bob@example.org".into(),
                }],
                location_fields: vec![ThirdPartyField {
                    name: "muc".into(),
                    regexp: r"[^@/\s]+@[^@/\s]+".into(),
                    placeholder: "room@conference.example.org".into(),
                }],
                user_id_example: "bob@example.org".into(),
            },
            link: LinkConfig {
                host: cfg.component.host.clone(),
                port: cfg.component.port,
                domain: cfg.component.domain.clone(),
                secret,
                max_stanza_bytes: cfg.max_stanza_bytes,
                max_depth: cfg.max_depth,
            },
            handler: Arc::new(Handler {
                shared: shared.clone(),
                state: state_tx,
            }),
            gateway: Arc::new(Gateway {
                shared,
                out: out_tx,
                state: state_rx,
                counter: AtomicU64::new(0),
            }),
            outgoing: Mutex::new(Some(out_rx)),
            stop: watch::channel(false).0,
        }
    }
}

#[async_trait]
impl Connector for Xmpp {
    fn info(&self) -> &NetworkInfo {
        &self.info
    }

    async fn start(&self, sink: EventSink) -> Result<(), NetworkError> {
        let _ = self.handler.shared.sink.set(sink);
        let Some(outgoing) = self.outgoing.lock().expect("outgoing lock").take() else {
            return Err(NetworkError::Internal(
                "the XMPP connector was started twice".into(),
            ));
        };
        let inbound: Arc<dyn component::Inbound> = self.handler.clone();
        tokio::spawn(component::run(
            self.link.clone(),
            inbound,
            outgoing,
            self.stop.subscribe(),
        ));
        Ok(())
    }

    async fn stop(&self) {
        self.stop.send_replace(true);
    }

    fn bridge_client(&self) -> Option<Arc<dyn NetworkClient>> {
        Some(self.gateway.clone())
    }

    fn parse_user_id(&self, raw: &str) -> Result<RemoteUserId, NetworkError> {
        self.gateway
            .shared
            .addressing
            .contact(raw)
            .map(|j| RemoteUserId::new(j.to_string()))
            .map_err(NetworkError::InvalidInput)
    }

    fn parse_group_chat_id(&self, raw: &str) -> Result<Option<RemoteChatId>, NetworkError> {
        self.gateway
            .shared
            .addressing
            .contact(raw)
            .map(|j| Some(RemoteChatId::new(j.to_string())))
            .map_err(|_| {
                NetworkError::InvalidInput(
                    "a group chat address looks like room@conference.example.org".into(),
                )
            })
    }

    fn hosted_room_alias(&self, chat: &RemoteChatId) -> Option<String> {
        let jid = xmpp_parsers::jid::BareJid::from_str(chat.as_str()).ok()?;
        self.gateway.shared.allowed_alias(&jid)
    }

    fn status(&self) -> Vec<(String, BridgeState)> {
        vec![(
            format!(
                "component {} via {}:{}",
                self.link.domain, self.link.host, self.link.port
            ),
            *self.gateway.state.borrow(),
        )]
    }
}
