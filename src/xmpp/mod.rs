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
//! | `handle_xmpp/` | XMPP → bridge: direct messages, contacts' presence, group chats, hosted rooms, IQs, vCards |
//! | `handle_matrix/` | bridge → XMPP: one `Client` per identity (the gateway, or a user's own account) |
//! | `iq.rs` | IQ requests waiting for their answer |
//! | `presence.rs` | Matrix users' presence as contacts see it, rate limited |
//! | `muc.rs` | group chats hosted elsewhere, and who is in them |
//! | `hosted.rs` | Matrix rooms hosted as group chats on the component |
//! | `avatar.rs` | vCard pictures, and what was learnt of contacts' pictures |
//! | `account/`, `c2s/` | own-account logins and their client connections |
//!
//! Each feature's state is one type in its module, behind one lock; `Shared` holds them.

mod account;
mod avatar;
pub(crate) mod c2s;
mod component;
mod config;
pub mod convert;
pub(crate) mod fidelity;
mod handle_matrix;
pub(crate) mod handle_xmpp;
mod hosted;
pub mod ids;
mod iq;
pub mod limits;
mod muc;
mod payloads;
mod presence;
mod scram;

pub(crate) mod time;
pub mod xml_safe;

use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use self::component::{LinkConfig, Outgoing};
pub use self::config::{XmppAccountsConfig, XmppComponentConfig, XmppConfig};
use self::handle_matrix::{Client, Identity};
use self::handle_xmpp::Handler;
use self::ids::Addressing;
pub(crate) use self::iq::IqRefused;
use crate::network::contacts as roster;
use crate::network::kit::{login, registry::Registry, state};
use crate::network::{
    BridgeState, Capabilities, ChatKind, Connector, ConnectorStore, EventSink, LoginData,
    LoginFlow, LoginProcess, NetworkClient, NetworkError, NetworkId, NetworkInfo, RemoteChatId,
    RemoteUserId, ThirdPartyField,
};

/// What the inbound handler and every identity share: the addressing, the link and each
/// feature's state.
pub(crate) struct Shared {
    addressing: Addressing,
    sink: OnceLock<EventSink>,
    policy: roster::SubscriptionPolicy,
    /// What contacts were told of each Matrix user's presence.
    presences: presence::Presences,
    /// Group chats the bridge is in.
    rooms: muc::Rooms,
    /// Stanzas to write on the link.
    out: mpsc::Sender<Outgoing>,
    /// Matrix rooms XMPP users may join as group chats on the component, and who is in them.
    hosted: hosted::HostedRooms,
    /// IQ requests the bridge sent and waits on.
    iqs: iq::PendingIqs,
    /// What is known of contacts' pictures in this run.
    avatars: avatar::Avatars,
    /// The full JID each contact last wrote a direct message from.
    resources: handle_xmpp::Resources,
    /// Own-account logins online, by account (bare JID).
    accounts: Registry<std::sync::Weak<account::Account>>,
    /// Settings for own-account connections.
    client: account::ClientSettings,
}

/// The network's name in what users and logs read.
const NETWORK: &str = "XMPP";

impl Shared {
    /// The connector's storage, once started.
    fn store(&self) -> Result<&dyn ConnectorStore, NetworkError> {
        state::store(&self.sink, NETWORK)
    }

    /// The bridge's background tasks, once started.
    fn tasks(&self) -> Result<&crate::tasks::Tasks, NetworkError> {
        state::tasks(&self.sink, NETWORK)
    }

    /// The alias of a hosted group chat address, when the config allows it.
    fn allowed_alias(&self, room: &xmpp_parsers::jid::BareJid) -> Option<String> {
        let alias = self.addressing.hosted_alias(room)?;
        self.hosted.allows(&alias).then_some(alias)
    }

    /// The Matrix user an address belongs to: a gateway address, or an own account online.
    fn user_of(&self, jid: &xmpp_parsers::jid::BareJid) -> Option<String> {
        self.addressing
            .matrix_user(jid)
            .or_else(|| self.accounts.user_of(&jid.to_string()))
    }

    /// Whether `jid` is an own account online through the bridge.
    fn is_account(&self, jid: &xmpp_parsers::jid::BareJid) -> bool {
        self.accounts.contains(&jid.to_string())
    }
}

/// The XMPP connector.
pub struct Xmpp {
    info: NetworkInfo,
    link: LinkConfig,
    handler: Arc<Handler>,
    /// The gateway component as an identity.
    gateway: Arc<Client>,
    outgoing: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    stop: watch::Sender<bool>,
}

impl Xmpp {
    /// A connector for the component described by `cfg`, with its resolved secret, bridging
    /// for the homeserver `homeserver`.
    pub fn new(cfg: &XmppConfig, secret: String, homeserver: &str) -> Self {
        let client = account::ClientSettings::new(cfg);
        let (state_tx, state_rx) = watch::channel(BridgeState::Starting);
        let (out_tx, out_rx) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            addressing: Addressing::new(&cfg.component.domain, homeserver),
            sink: OnceLock::new(),
            policy: cfg.subscriptions.clone(),
            presences: presence::Presences::default(),
            rooms: muc::Rooms::default(),
            out: out_tx.clone(),
            hosted: hosted::HostedRooms::new(cfg.hosted_rooms.clone()),
            iqs: iq::PendingIqs::default(),
            avatars: avatar::Avatars::default(),
            resources: handle_xmpp::Resources::default(),
            accounts: Registry::default(),
            client,
        });
        Self {
            info: NetworkInfo {
                id: NetworkId::new("xmpp"),
                display_name: "XMPP".into(),
                protocol: "xmpp".into(),
                capabilities: Capabilities::ALL,
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
            gateway: Arc::new(Client {
                shared,
                identity: Identity::Gateway,
                out: out_tx,
                state: state_rx,
                counter: AtomicU64::new(0),
            }),
            outgoing: Mutex::new(Some(out_rx)),
            stop: watch::channel(false).0,
        }
    }
}

impl Xmpp {
    fn parts(&self) -> account::Parts {
        account::Parts {
            shared: self.handler.shared.clone(),
            handler: self.handler.clone(),
        }
    }
}

pub use account::load_ca_file;

/// How long a shutdown waits for own-account sessions to say goodbye.
const SESSIONS_END: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the component link may take to write what it holds once stopped: well inside
/// the bridge's shutdown bound.
const LINK_END: std::time::Duration = std::time::Duration::from_secs(3);

#[async_trait]
impl Connector for Xmpp {
    fn info(&self) -> &NetworkInfo {
        &self.info
    }

    async fn start(&self, sink: EventSink) -> Result<(), NetworkError> {
        let _ = self.handler.shared.sink.set(sink.clone());
        let Some(outgoing) = self.outgoing.lock().expect("outgoing lock").take() else {
            return Err(NetworkError::Internal(
                "the XMPP connector was started twice".into(),
            ));
        };
        let inbound: Arc<dyn component::Inbound> = self.handler.clone();
        let tasks = sink.tasks().clone();
        // The link ends on `stop`, after writing what it holds; a server that does not read
        // holds it no longer than `LINK_END` (stanzas not written are answered as not sent
        // when the link is dropped, and their items wait in the inbox).
        let link = component::run(self.link.clone(), inbound, outgoing, self.stop.subscribe());
        let mut stopping = self.stop.subscribe();
        tasks.spawn(async move {
            tokio::pin!(link);
            tokio::select! {
                () = &mut link => {}
                () = async {
                    let _ = stopping.wait_for(|stop| *stop).await;
                    tokio::time::sleep(LINK_END).await;
                } => {
                    tracing::warn!(bound_secs = LINK_END.as_secs(), "the XMPP component link did not end in time after the stop; dropped");
                }
            }
        });
        let shared = self.handler.shared.clone();
        tasks.spawn_loop(async move { shared.refresh_watched().await });
        Ok(())
    }

    async fn stop(&self) {
        self.stop.send_replace(true);
        // Own accounts end their sessions cleanly, so that their servers deliver to the
        // users' other clients (or store) instead of holding messages for a session that
        // will not come back.
        let accounts = self.handler.shared.accounts.stop_all();
        let sessions: Vec<_> = accounts
            .iter()
            .filter_map(|e| e.account.upgrade()?.take_connection())
            .collect();
        // Each session ends as soon as its goodbye is written; a server that does not read
        // it does not hold the shutdown longer than this.
        let ending = futures::future::join_all(sessions);
        if tokio::time::timeout(SESSIONS_END, ending).await.is_err() {
            tracing::warn!(
                accounts = accounts.len(),
                "own-account sessions did not end in time; stopping without them"
            );
        }
    }

    fn bridge_client(&self) -> Option<Arc<dyn NetworkClient>> {
        Some(self.gateway.clone())
    }

    async fn undelivered(&self, event: &crate::network::RemoteEvent, reason: &str) {
        let shared = &self.handler.shared;
        let told = match event.chat_kind {
            ChatKind::Direct => {
                let full = shared.resources.of(event.sender.as_str());
                handle_xmpp::undelivered_error(&shared.addressing, event, full, reason)
            }
            ChatKind::Group => handle_xmpp::group_undelivered(shared, event, reason),
            ChatKind::Fanout => None,
        };
        if let Some(stanza) = told {
            // Best effort: the link may be down, and then there is nobody to tell now.
            let _ = shared.out.try_send((stanza, None));
        }
    }

    fn login_flows(&self) -> Vec<LoginFlow> {
        vec![login::password_flow(
            "XMPP account",
            "Log in with your own XMPP address and password; your direct chats then go through your account.",
        )]
    }

    async fn start_login(
        &self,
        user_id: &str,
        flow_id: &str,
    ) -> Result<Box<dyn LoginProcess>, NetworkError> {
        login::start(self.parts(), user_id, flow_id)
    }

    async fn load_login(
        &self,
        user_id: &str,
        login: &LoginData,
    ) -> Result<Arc<dyn NetworkClient>, NetworkError> {
        login::load(&self.parts(), user_id, login)
    }

    fn parse_user_id(&self, raw: &str) -> Result<RemoteUserId, NetworkError> {
        self.gateway
            .shared
            .addressing
            .contact(raw)
            .map(|j| RemoteUserId::new(j.to_string()))
            .map_err(|e| NetworkError::InvalidInput(crate::error::Reason::from_error(e)))
    }

    fn rate_key(&self, user: &RemoteUserId) -> String {
        // A contact's bare JID or a group chat occupant's `room@service/nick`: the server is
        // the JID's domain (the group chat service for occupants).
        xmpp_parsers::jid::Jid::from_str(user.as_str())
            .map(|j| j.domain().to_string())
            .unwrap_or_else(|_| user.as_str().to_owned())
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

    async fn group_chat_exists(&self, chat: &RemoteChatId) -> Result<bool, NetworkError> {
        let room = xmpp_parsers::jid::BareJid::from_str(chat.as_str())
            .map_err(|e| NetworkError::InvalidInput(crate::error::Reason::from_error(e)))?;
        if room.domain().as_str() == self.gateway.shared.addressing.component() {
            return Ok(self.gateway.shared.allowed_alias(&room).is_some());
        }
        let query = xmpp_parsers::disco::DiscoInfoQuery { node: None }.into();
        // The answer is read by hand: the crate's `DiscoInfoResult` refuses a whole answer
        // for one extension form it cannot read, and rooms add forms of their own.
        match self.gateway.shared.query(room.into(), query).await? {
            Ok(Some(info)) => Ok(info
                .children()
                .any(|c| c.name() == "identity" && c.attr("category") == Some("conference"))),
            Ok(None) => Ok(false),
            Err(refused) => {
                tracing::info!(room = %chat, condition = %refused, "group chat not found");
                Ok(false)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{MessageContent, RemoteEvent, RemoteEventKind, RemoteMessageId};
    use xmpp_parsers::jid::Jid;
    use xmpp_parsers::minidom::Element;

    const HOSTED: &str = "#lobby@matrix.example.org";
    const EXTERNAL: &str = "lobby@conference.example.net";

    fn connector() -> (Xmpp, mpsc::Receiver<Outgoing>) {
        let cfg: XmppConfig = serde_json::from_value(serde_json::json!({
            "component": {"domain": "matrix.example.org", "secret": "s"},
            "hosted_rooms": ["#lobby:example.org"],
        }))
        .unwrap();
        let xmpp = Xmpp::new(&cfg, "s".into(), "example.org");
        let rx = xmpp.outgoing.lock().unwrap().take().unwrap();
        (xmpp, rx)
    }

    fn group_message(chat: &str, sender: &str, nick: &str) -> RemoteEvent {
        RemoteEvent::group(
            chat,
            sender,
            RemoteEventKind::Message {
                id: RemoteMessageId::new("m1"),
                content: MessageContent::text("hello there"),
                reply_to: None,
            },
        )
        .named(Some(nick.to_owned()))
    }

    /// What the connector tells about `event`, as written on the link; `None` when nothing.
    async fn told(
        xmpp: &Xmpp,
        rx: &mut mpsc::Receiver<Outgoing>,
        event: &RemoteEvent,
    ) -> Option<Element> {
        xmpp.undelivered(event, "the reason").await;
        rx.try_recv().ok().map(|(s, _)| Element::from(s))
    }

    fn join_hosted(xmpp: &Xmpp, full: &str, nick: &str) {
        xmpp.handler.shared.hosted.add_occupant(HOSTED, full, nick);
    }

    #[tokio::test]
    async fn a_hosted_rooms_sender_gets_an_error_at_the_address_it_wrote_from() {
        let (xmpp, mut rx) = connector();
        let ev = group_message(HOSTED, "carol@example.net", "carol");
        // Not in the room, never seen: the bare JID.
        let el = told(&xmpp, &mut rx, &ev).await.expect("an error");
        assert_eq!(el.attr("to"), Some("carol@example.net"));
        assert_eq!(el.attr("from"), Some(HOSTED));
        assert_eq!(el.attr("type"), Some("error"));
        assert_eq!(el.attr("id"), Some("m1"));
        assert!(String::from(&el).contains("the reason"));
        // Last seen writing a direct message from a resource: that one.
        xmpp.handler.shared.resources.note(
            "carol@example.net",
            &Jid::from_str("carol@example.net/pc").unwrap(),
        );
        let el = told(&xmpp, &mut rx, &ev).await.unwrap();
        assert_eq!(el.attr("to"), Some("carol@example.net/pc"));
        // In the room: the occupant's own full JID.
        join_hosted(&xmpp, "bob@example.net/x", "carol2");
        join_hosted(&xmpp, "carol@example.net/phone", "carol");
        let el = told(&xmpp, &mut rx, &ev).await.unwrap();
        assert_eq!(el.attr("to"), Some("carol@example.net/phone"));
    }

    #[tokio::test]
    async fn an_external_rooms_sender_gets_a_private_message_from_the_primary_puppet() {
        let (xmpp, mut rx) = connector();
        let odd = format!("{EXTERNAL}/a/b @c");
        let ev = group_message(EXTERNAL, &odd, "a/b @c");
        // The bridge is not in the room: nobody to tell from.
        assert!(told(&xmpp, &mut rx, &ev).await.is_none());
        {
            let rooms = &xmpp.handler.shared.rooms;
            rooms.add_puppet(EXTERNAL, "@zed:example.org", "zed");
            rooms.add_puppet(EXTERNAL, "@alice:example.org", "alice");
            rooms.occupant_seen(EXTERNAL, "a/b @c", None, false);
            rooms.occupant_seen(EXTERNAL, "bobby", Some("bob@example.net".into()), false);
        }
        let el = told(&xmpp, &mut rx, &ev).await.expect("a private message");
        assert_eq!(el.attr("type"), Some("chat"));
        assert_eq!(el.attr("from"), Some("alice@matrix.example.org/isthmus"));
        assert_eq!(el.attr("to"), Some(odd.as_str()));
        let xml = String::from(&el);
        assert!(
            xml.contains("the reason") && xml.contains("&gt; hello there"),
            "{xml}"
        );
        // Known by real JID, since renamed: the current nick.
        let ev = group_message(EXTERNAL, "bob@example.net", "bob");
        let el = told(&xmpp, &mut rx, &ev).await.unwrap();
        assert_eq!(el.attr("to"), Some(format!("{EXTERNAL}/bobby").as_str()));
        // Gone from the room: nobody to tell.
        let ev = group_message(EXTERNAL, &format!("{EXTERNAL}/gone"), "gone");
        assert!(told(&xmpp, &mut rx, &ev).await.is_none());
    }

    #[tokio::test]
    async fn only_group_messages_are_told() {
        let (xmpp, mut rx) = connector();
        join_hosted(&xmpp, "carol@example.net/phone", "carol");
        let typing = RemoteEvent::group(
            HOSTED,
            "carol@example.net",
            RemoteEventKind::Typing { active: true },
        );
        assert!(told(&xmpp, &mut rx, &typing).await.is_none());
        // A direct message still gets its error from the Matrix user's address.
        let direct = RemoteEvent::direct(
            "carol@example.net",
            "@alice:example.org",
            RemoteEventKind::Message {
                id: RemoteMessageId::new("d1"),
                content: MessageContent::text("hi"),
                reply_to: None,
            },
        );
        let el = told(&xmpp, &mut rx, &direct).await.unwrap();
        assert_eq!(el.attr("from"), Some("alice@matrix.example.org"));
        assert_eq!(el.attr("id"), Some("d1"));
    }
}
