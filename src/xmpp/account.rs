//! Own-account mode: a Matrix user logs in with their own XMPP account. The bridge keeps a
//! client connection for the account ([`super::c2s`]); the account's direct chats go out on
//! it, what its contacts write comes in on it, its roster becomes direct-chat portals, and
//! carbons (XEP-0280) show what the user wrote from other clients. Group chats keep going
//! through the gateway, so a login changes nothing there. The password lives in the login
//! data, which the core seals at rest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use xmpp_parsers::carbons;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, FullJid, Jid};
use xmpp_parsers::mam::{self, Fin};
use xmpp_parsers::message::Message;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::presence::{Presence as XmppPresence, Show, Type as PresenceType};
use xmpp_parsers::pubsub::{self, PubSub, pubsub::Items};
use xmpp_parsers::roster::Roster;
use xmpp_parsers::rsm::SetQuery;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::DefinedCondition;

use super::XmppConfig;
use super::c2s;
use super::component::{Inbound, Outgoing};
use super::handle_matrix::Gateway;
use super::handle_xmpp::{Handler, error_reply};
use super::{Shared, payloads};
use crate::error::Reason;
use crate::network::kit::login::{self, Field, Form, PasswordAccounts, Values};
use crate::network::kit::registry::Entry;
use crate::network::kit::state::StateCell;
use crate::network::{
    BridgeState, ChatKind, Contact, LoginData, MatrixSender, MessageContent, NetworkClient,
    NetworkError, OutgoingMessage, PortalRef, Presence, PresenceState, RemoteEvent,
    RemoteEventKind, RemoteMessageId, RemoteUserId,
};

const ROSTER: &str = "jabber:iq:roster";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const AVATAR_METADATA: &str = "urn:xmpp:avatar:metadata";
const AVATAR_DATA: &str = "urn:xmpp:avatar:data";
/// Largest published avatar fetched.
const MAX_AVATAR_BYTES: usize = 1 << 20;
/// Pages of archive asked for at most in one catch-up.
const MAM_PAGES: usize = 20;
/// Messages per archive page.
const MAM_PAGE: usize = 100;
/// Messages fetched from the archive at the first login.
const MAM_FIRST: usize = 20;
/// At most this many roster contacts get a portal at login; the rest get one when they write.
const ROSTER_PORTALS: usize = 100;

/// Why the TLS trust for own-account connections could not be set up.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Reason,
    },
    /// The CA file is not PEM.
    #[error("{} is not a PEM certificate file: {source}", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Reason,
    },
    /// The CA file holds no certificate.
    #[error("{} holds no certificate", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of the CA file was refused as a trust root.
    #[error("{}: {source}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Reason,
    },
    /// Neither the system nor the config gave a trusted certificate.
    #[error(
        "no trusted certificates: install the system's CA certificates or set networks.xmpp.accounts.ca_file"
    )]
    NoRoots,
    /// The TLS library refused the configuration.
    #[error("{0}")]
    Config(#[source] Reason),
}

/// Reads a PEM file of CA certificates.
pub fn load_ca_file(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Read {
            path: path.to_owned(),
            source: Reason::from_error(e),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NotPem {
            path: path.to_owned(),
            source: Reason::from_error(e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// What own-account connections share: TLS trust and limits.
pub(crate) struct ClientSettings {
    ca_file: Option<std::path::PathBuf>,
    allow_hosts: Vec<String>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, TlsError>>,
    max_stanza_bytes: usize,
    max_depth: usize,
}

impl ClientSettings {
    pub fn new(cfg: &XmppConfig) -> Self {
        Self {
            ca_file: cfg.accounts.ca_file.clone(),
            allow_hosts: cfg.accounts.allow_hosts.clone(),
            tls: OnceLock::new(),
            max_stanza_bytes: cfg.max_stanza_bytes,
            max_depth: cfg.max_depth,
        }
    }

    /// The TLS client configuration: the system's trust roots and the configured CA file.
    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, NetworkError> {
        self.tls
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if let Some(path) = &self.ca_file {
                    for cert in load_ca_file(path)? {
                        roots.add(cert).map_err(|e| TlsError::BadCertificate {
                            path: path.to_owned(),
                            source: Reason::from_error(e),
                        })?;
                    }
                }
                if roots.is_empty() {
                    return Err(TlsError::NoRoots);
                }
                debug!(system_roots = added, "TLS roots for XMPP accounts loaded");
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(Reason::from_error(e)))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                Ok(Arc::new(config))
            })
            .clone()
            .map_err(|e| NetworkError::Internal(Reason::from_error(e)))
    }
}

/// What a login stores (sealed by the core).
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct AccountData {
    /// The account, `user@domain`.
    pub jid: String,
    /// The password.
    pub password: String,
    /// The server to connect to, when not the account's domain on port 5222.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// TLS from the first byte instead of STARTTLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub direct_tls: bool,
}

impl std::fmt::Debug for AccountData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountData")
            .field("jid", &self.jid)
            .field("password", &"<redacted>")
            .field("server", &self.server)
            .field("direct_tls", &self.direct_tls)
            .finish()
    }
}

/// The parts of the connector an account works with.
#[derive(Clone)]
pub(super) struct Parts {
    pub shared: Arc<Shared>,
    pub handler: Arc<Handler>,
    pub gateway: Arc<Gateway>,
}

/// One Matrix user's own XMPP account.
pub(crate) struct Account {
    parts: Parts,
    user: String,
    jid: BareJid,
    data: AccountData,
    this: std::sync::Weak<Account>,
    /// The account as a sending identity (direct chats).
    direct: Gateway,
    out: mpsc::Sender<Outgoing>,
    /// What the identity sends, until the connection starts reading it.
    rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    state: StateCell,
    stop: watch::Sender<bool>,
    /// The roster: contact → name.
    roster: Mutex<BTreeMap<String, Option<String>>>,
    /// The last reason the connection gave for a failure, for the login step.
    last_problem: Mutex<Option<String>>,
    /// Whether an archive catch-up is under way or did not finish: live messages then do
    /// not move the archive position.
    catching_up: std::sync::atomic::AtomicBool,
    /// The roster and archive task of the current session.
    session_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// The connection's task, until the connector's shutdown waits for it.
    connection: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Contacts whose published avatar was asked for in this run (roster contacts only).
    pep_asked: Mutex<std::collections::HashSet<String>>,
    /// Per contact, the published avatar last tried in this run.
    pep_tried: Mutex<BTreeMap<String, String>>,
    /// The user's presence as last published on the account.
    presence: Mutex<Option<Presence>>,
    /// The first session's outcome, for the login step that waits on it.
    first: Mutex<Option<tokio::sync::oneshot::Sender<Result<(), NetworkError>>>>,
}

/// A server setting that is not `host` or `host:port`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a server such as xmpp.example.org:5222")]
struct BadServer(String);

/// Splits `host:port` (IPv6 in brackets); a missing port is 5222.
fn host_port(s: &str) -> Result<(String, u16), BadServer> {
    let bad = || BadServer(s.to_owned());
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => 5222,
            None => return Err(bad()),
        };
        return Ok((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_owned(), p.parse().map_err(|_| bad())?)),
        Some(_) => Err(bad()),
        None => Ok((s.to_owned(), 5222)),
    }
    .and_then(|(h, p)| {
        if h.is_empty() || h.contains(['/', '@', ' ']) || p == 0 {
            Err(bad())
        } else {
            Ok((h, p))
        }
    })
}

impl Account {
    fn new(parts: Parts, user: &str, data: AccountData) -> Result<Arc<Self>, NetworkError> {
        let jid = BareJid::from_str(&data.jid).map_err(|e| {
            NetworkError::InvalidInput(format!("{:?} is not a JID: {e}", data.jid).into())
        })?;
        let (out, rx) = mpsc::channel(256);
        let state = StateCell::new(BridgeState::Connecting);
        let direct = Gateway {
            shared: parts.shared.clone(),
            out: out.clone(),
            state: state.subscribe(),
            counter: AtomicU64::new(0),
            own: Some(jid.clone()),
        };
        Ok(Arc::new_cyclic(|this| Self {
            this: this.clone(),
            parts,
            user: user.to_owned(),
            jid,
            data,
            direct,
            out,
            rx: Mutex::new(Some(rx)),
            state,
            stop: watch::channel(false).0,
            roster: Mutex::default(),
            last_problem: Mutex::default(),
            catching_up: std::sync::atomic::AtomicBool::new(true),
            session_task: Mutex::default(),
            connection: Mutex::default(),
            pep_asked: Mutex::default(),
            pep_tried: Mutex::default(),
            presence: Mutex::default(),
            first: Mutex::default(),
        }))
    }

    fn login_data(&self) -> LoginData {
        login::login_data("xmpp", &self.jid.to_string(), &self.data)
    }

    /// Starts the connection; `first` learns how the first attempt went.
    fn start(
        self: &Arc<Self>,
        first: Option<tokio::sync::oneshot::Sender<Result<(), NetworkError>>>,
    ) -> Result<(), NetworkError> {
        let (host, port) = match &self.data.server {
            Some(s) => {
                host_port(s).map_err(|e| NetworkError::InvalidInput(Reason::from_error(e)))?
            }
            None => (self.jid.domain().to_string(), 5222),
        };
        let client = &self.parts.shared.client;
        let settings = c2s::Settings {
            jid: self.jid.clone(),
            password: self.data.password.clone(),
            allow_private: client
                .allow_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&host)),
            host,
            port,
            direct_tls: self.data.direct_tls,
            tls: client.tls()?,
            max_stanza_bytes: client.max_stanza_bytes,
            max_depth: client.max_depth,
            resource: format!("isthmus-{:08x}", rand::random::<u32>()),
        };
        let Some(rx) = self.rx.lock().expect("rx lock").take() else {
            return Err(NetworkError::Internal(
                "the XMPP account was started twice".into(),
            ));
        };
        *self.first.lock().expect("first lock") = first;
        let events: Arc<dyn c2s::Events> = self.clone();
        // It ends on `stop`, after its goodbye; a shutdown cuts it should the goodbye hang.
        let task = self.parts.shared.tasks()?.spawn_loop(c2s::run(
            settings,
            events,
            rx,
            self.stop.subscribe(),
        ));
        *self.connection.lock().expect("connection lock") = Some(task);
        Ok(())
    }

    /// The connection's task, for a shutdown to wait on once it has told the account to
    /// stop (the task then acknowledges what it handled, says it is unavailable and closes
    /// the stream).
    pub(super) fn take_connection(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.connection.lock().expect("connection lock").take()
    }

    /// Routes the account's traffic to this login once its session is up, and stops an
    /// earlier login of the same account (a `login` again after a password change, or
    /// another Matrix user's): one connection per account. Only an authenticated session
    /// takes over, so a wrong password never disturbs a working login.
    async fn track(&self) {
        let entry = Entry {
            user: self.user.clone(),
            stop: self.stop.clone(),
            account: self.this.clone(),
        };
        let Some(Entry {
            user: other,
            account: old,
            ..
        }) = self
            .parts
            .shared
            .accounts
            .track(&self.jid.to_string(), entry)
        else {
            return;
        };
        info!(jid = %self.jid, previous_user = other, user = self.user, "a new login of this XMPP account replaces the old one");
        if let Some(old) = old.upgrade() {
            old.state.set(BridgeState::LoggedOut);
            // The same user's new login reports its own state; another user is told.
            if other != self.user
                && let Some(sink) = self.parts.shared.sink.get()
            {
                sink.report_state(
                    Some(&other),
                    BridgeState::LoggedOut,
                    Some(format!(
                        "{} logged in with this account elsewhere",
                        self.user
                    )),
                )
                .await;
            }
        }
    }

    fn untrack(&self) {
        self.parts
            .shared
            .accounts
            .untrack(&self.jid.to_string(), &self.stop);
    }

    /// The identity that acts in `portal` for Matrix user `actor`: the account itself in
    /// direct chats; in group chats the owner's gateway address, and only for the owner. A
    /// relayed message arrives with the owner as its sender; anyone else would speak from
    /// their own gateway address, which their permission level may not allow.
    fn client_for(
        &self,
        portal: &PortalRef,
        actor: &MatrixSender,
    ) -> Result<&dyn NetworkClient, NetworkError> {
        if portal.kind == ChatKind::Direct {
            Ok(&self.direct)
        } else if actor.user_id == self.user {
            Ok(self.parts.gateway.as_ref())
        } else {
            warn!(account = %self.jid, actor = %actor.user_id, "refused to act in a group chat for someone else than the account's owner");
            Err(NetworkError::Internal(
                "an account acts in group chats only for its owner".into(),
            ))
        }
    }

    /// Fetches the roster and makes sure each contact has a portal.
    async fn sync_roster(self: Arc<Self>) {
        let query = Roster {
            ver: None,
            items: Vec::new(),
        }
        .into();
        let answer = self
            .parts
            .shared
            .request_via(&self.out, None, Jid::from(self.jid.clone()), false, query)
            .await;
        let items = match answer {
            Ok(Ok(Some(q))) => roster_items(&q),
            Ok(Ok(None)) => Vec::new(),
            Ok(Err(e)) => {
                warn!(jid = %self.jid, error = %crate::error::chain(&e), "the server refused the roster");
                return;
            }
            Err(e) => {
                warn!(jid = %self.jid, error = %crate::error::chain(&e), "no roster");
                return;
            }
        };
        info!(jid = %self.jid, contacts = items.len(), "roster received");
        self.apply_roster(items, true).await;
    }

    /// Records roster items; new contacts (up to a limit at login) get a portal.
    async fn apply_roster(&self, items: Vec<RosterItem>, full: bool) {
        let mut fresh = Vec::new();
        {
            let mut roster = self.roster.lock().expect("roster lock");
            if full {
                let keep: BTreeSet<&str> = items.iter().map(|i| i.jid.as_str()).collect();
                roster.retain(|k, _| keep.contains(k.as_str()));
            }
            for item in items {
                if item.removed {
                    roster.remove(&item.jid);
                    continue;
                }
                if roster.insert(item.jid.clone(), item.name.clone()).is_none() {
                    fresh.push(item);
                }
            }
        }
        let Some(sink) = self.parts.shared.sink.get() else {
            return;
        };
        if fresh.len() > ROSTER_PORTALS {
            info!(jid = %self.jid, contacts = fresh.len(), limit = ROSTER_PORTALS, "large roster: the other contacts get a portal when they write");
        }
        for item in fresh.into_iter().take(ROSTER_PORTALS) {
            if self.parts.shared.addressing.contact(&item.jid).is_err() {
                continue;
            }
            let ev = RemoteEvent::direct(&item.jid, &self.user, RemoteEventKind::ChatExists)
                .named(item.name);
            if let Err(e) = sink.push(ev).await {
                warn!(error = %crate::error::chain(&e), "could not store a roster contact");
            }
        }
    }

    /// The store key of the last archived message (XEP-0313) the bridge has seen.
    fn archive_key(&self) -> String {
        format!("mam:{}\u{1f}{}", self.user, self.jid)
    }

    /// Remembers the archive ID of a message handled live, so that the next catch-up
    /// starts after it.
    fn note_archived(&self, msg: &Message) {
        if self.catching_up.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Some(id) = payloads::stanza_id(&msg.payloads, &self.jid) else {
            return;
        };
        if let Ok(store) = self.parts.shared.store()
            && let Err(e) = store.put(&self.archive_key(), &serde_json::Value::from(id))
        {
            warn!(error = %crate::error::chain(&e), "could not store the archive position");
        }
    }

    /// Catches up from the account's archive (XEP-0313): every message after the last one
    /// the bridge saw, page by page; at the first login, the latest few. Results arrive as
    /// messages before the answer and are bridged as they come; the core drops what it
    /// already has, by message ID.
    async fn catch_up(self: Arc<Self>, position: Option<String>) {
        let Ok(store) = self.parts.shared.store() else {
            return;
        };
        let key = self.archive_key();
        let mut after = position;
        let mut fetched_latest = false;
        for _ in 0..MAM_PAGES {
            fetched_latest |= after.is_none();
            let query = archive_query(&format!("q{:x}", rand::random::<u64>()), after.as_deref());
            let answer = self
                .parts
                .shared
                .request_via(&self.out, None, Jid::from(self.jid.clone()), true, query)
                .await;
            let fin = match answer {
                Ok(Ok(Some(fin))) => fin,
                Ok(Ok(None)) => return,
                Ok(Err(e))
                    if after.is_some()
                        && !fetched_latest
                        && e.condition == DefinedCondition::ItemNotFound =>
                {
                    // The last message seen left the archive: start again from the latest.
                    warn!(jid = %self.jid, "the archive no longer has the last message seen; fetching the latest");
                    after = None;
                    continue;
                }
                Ok(Err(e)) => {
                    warn!(jid = %self.jid, error = %crate::error::chain(&e), "the server refused the archive query");
                    return;
                }
                Err(e) => {
                    warn!(jid = %self.jid, error = %crate::error::chain(&e), "no answer to the archive query");
                    return;
                }
            };
            // A `fin` the crate cannot read ends the catch-up, as one without a page would.
            let (complete, last) = match Fin::try_from(fin) {
                Ok(fin) => (fin.complete, fin.set.last),
                Err(_) => (false, None),
            };
            if let Some(last) = &last
                && let Err(e) = store.put(&key, &serde_json::Value::from(last.as_str()))
            {
                warn!(error = %crate::error::chain(&e), "could not store the archive position");
            }
            debug!(jid = %self.jid, complete, last = ?last, "archive page bridged");
            if complete || fetched_latest || last.is_none() {
                // Caught up: live messages move the position from now on.
                self.catching_up
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            after = last;
        }
        info!(jid = %self.jid, pages = MAM_PAGES, "archive catch-up stopped at its page limit");
    }

    /// A message from the account's archive: the copied message, at its archived time.
    async fn archived(&self, msg: &Message) -> bool {
        if !msg.payloads.iter().any(|p| p.is("result", ns::MAM)) {
            return false;
        }
        // Only the account's own archive answers to the account.
        if msg
            .from
            .as_ref()
            .is_some_and(|f| f != &Jid::from(self.jid.clone()))
        {
            warn!(from = ?msg.from, "archive result from someone else dropped");
            return true;
        }
        // The account's own server wrote the result (the sender is checked above).
        let Some(mam::Result_ { forwarded, .. }) =
            payloads::find::<mam::Result_>(&msg.payloads, "result", ns::MAM)
        else {
            return true;
        };
        let mut inner = forwarded.message;
        // The archive's time, vouched for by the account's server, replaces any the sender
        // claimed.
        inner.payloads.retain(|p| !p.is("delay", ns::DELAY));
        if let Some(at) = forwarded
            .delay
            .and_then(|d| u64::try_from(d.stamp.0.timestamp_millis()).ok())
        {
            inner
                .payloads
                .push(archive_delay(self.jid.domain().as_str(), at));
        }
        if !matches!(
            inner.type_,
            xmpp_parsers::message::MessageType::Chat | xmpp_parsers::message::MessageType::Normal
        ) {
            return true;
        }
        if inner.from.as_ref().is_some_and(|f| f.to_bare() == self.jid) {
            self.parts
                .handler
                .sent_elsewhere(inner, &self.jid, &self.user)
                .await;
        } else {
            // Receipts and the like were answered when the message was new.
            let _ = self.parts.handler.stanza(inner.into()).await;
        }
        true
    }

    /// Whether avatars published by `jid` are followed: the account's roster contacts only
    /// (never the account itself, the bridge's own addresses or strangers).
    fn avatar_source(&self, jid: &BareJid) -> bool {
        *jid != self.jid
            && self
                .parts
                .shared
                .addressing
                .contact(&jid.to_string())
                .is_ok()
            && self
                .roster
                .lock()
                .expect("roster lock")
                .contains_key(&jid.to_string())
    }

    /// Bridges a contact's published avatar (XEP-0084): the metadata (from a notification,
    /// else asked for), then the picture when its ID (its SHA-1) is new. An empty metadata
    /// means the avatar was removed.
    async fn pep_avatar(self: Arc<Self>, contact: BareJid, notified: Option<Element>) {
        let items = match notified {
            Some(items) => items,
            None => {
                let query = PubSub::Items(Items {
                    max_items: Some(1),
                    ..Items::new(AVATAR_METADATA)
                })
                .into();
                match self
                    .parts
                    .shared
                    .request_via(&self.out, None, Jid::from(contact.clone()), false, query)
                    .await
                {
                    Ok(Ok(Some(pubsub))) => match pubsub.get_child("items", PUBSUB) {
                        Some(items) => rename_items(items),
                        None => return,
                    },
                    // No avatar published, or not visible to the account.
                    _ => return,
                }
            }
        };
        let Some(item) = items.children().find(|c| c.name() == "item") else {
            return;
        };
        let Some(metadata) = item.children().find(|c| c.is("metadata", AVATAR_METADATA)) else {
            return;
        };
        // An avatar may be described by several infos; the one without a URL is in the data
        // node (XEP-0084 §4.2.1). Read by hand: the crate's `Metadata` refuses all infos for
        // one it cannot read (an ID that is not a SHA-1, a missing size), and its `Data`
        // decodes a picture before its size is checked.
        let info = metadata
            .children()
            .filter(|c| c.is("info", AVATAR_METADATA))
            .find(|i| i.attr("url").is_none());
        let chat = contact.to_string();
        let Some(sink) = self.parts.shared.sink.get() else {
            return;
        };
        let Some(info) = info else {
            // Metadata without info: the contact removed the avatar.
            let had = self
                .parts
                .shared
                .pep_avatars
                .lock()
                .expect("avatar lock")
                .insert(chat.clone(), String::new());
            if had.as_deref() != Some("") && !*self.stop.borrow() {
                let _ = sink
                    .push(RemoteEvent::direct(
                        &chat,
                        &self.user,
                        RemoteEventKind::Avatar {
                            hash: String::new(),
                            data: None,
                        },
                    ))
                    .await;
            }
            return;
        };
        let Some(id) = info.attr("id").map(str::to_owned) else {
            return;
        };
        // Each picture is tried once per run: a failure (too large, unreachable, not the
        // picture its ID names) is not retried at every notification.
        if self
            .pep_tried
            .lock()
            .expect("pep lock")
            .insert(chat.clone(), id.clone())
            .as_deref()
            == Some(id.as_str())
        {
            return;
        }
        // The picture must fit in one stanza of the connection (base64 grows it by a third),
        // or its answer would close the connection.
        let limit = MAX_AVATAR_BYTES
            .min((self.parts.shared.client.max_stanza_bytes / 4 * 3).saturating_sub(4096));
        match info.attr("bytes").and_then(|b| b.parse::<usize>().ok()) {
            Some(bytes) if bytes <= limit => {}
            bytes => {
                info!(contact = %contact, ?bytes, limit, "published avatar too large (or of unknown size); not fetched");
                return;
            }
        }
        let query = PubSub::Items(Items {
            items: vec![pubsub::pubsub::Item {
                id: Some(pubsub::ItemId(id.clone())),
                publisher: None,
                payload: None,
            }],
            ..Items::new(AVATAR_DATA)
        })
        .into();
        let answer = self
            .parts
            .shared
            .request_via(&self.out, None, Jid::from(contact.clone()), false, query)
            .await;
        let Ok(Ok(Some(pubsub))) = answer else {
            debug!(contact = %contact, "the published avatar could not be fetched");
            return;
        };
        let data = pubsub
            .get_child("items", PUBSUB)
            .and_then(|i| i.children().find(|c| c.name() == "item"))
            .and_then(|i| i.children().find(|c| c.is("data", AVATAR_DATA)))
            .map(|d| d.text());
        let Some(picture) = data.and_then(|d| super::avatar::decode(&d)) else {
            return;
        };
        // The ID is the picture's SHA-1 (XEP-0084 §4.2): anything else is not that picture.
        let hash = super::avatar::sha1_hex(&picture);
        if !hash.eq_ignore_ascii_case(&id) {
            warn!(contact = %contact, "published avatar does not match its ID; ignored");
            return;
        }
        self.parts
            .shared
            .pep_avatars
            .lock()
            .expect("avatar lock")
            .insert(chat.clone(), hash.clone());
        if *self.stop.borrow() {
            return;
        }
        let _ = sink
            .push(RemoteEvent::direct(
                &chat,
                &self.user,
                RemoteEventKind::Avatar {
                    hash,
                    data: Some(picture),
                },
            ))
            .await;
    }

    /// Answers IQs addressed to the account's connection.
    async fn iq(&self, iq: Iq) -> Vec<Stanza> {
        let own = Jid::from(self.jid.clone());
        match iq {
            Iq::Set {
                from, id, payload, ..
            } if payload.is("query", ROSTER) => {
                // Roster pushes come from the account itself (RFC 6121 §2.1.6); others
                // are forgeries.
                if from.as_ref().is_some_and(|f| f != &own) {
                    return vec![error_reply(from, None, id, DefinedCondition::Forbidden)];
                }
                self.apply_roster(roster_items(&payload), false).await;
                vec![
                    Iq::Result {
                        from: None,
                        to: from,
                        id,
                        payload: None,
                    }
                    .into(),
                ]
            }
            Iq::Get {
                from, id, payload, ..
            } if payload.is("ping", ns::PING) => vec![
                Iq::Result {
                    from: None,
                    to: from,
                    id,
                    payload: None,
                }
                .into(),
            ],
            Iq::Get {
                from, id, payload, ..
            } if payload.is("query", ns::DISCO_INFO)
                && payload
                    .attr("node")
                    .is_none_or(|n| n == payloads::account_caps_node()) =>
            {
                let node = payload.attr("node").map(str::to_owned);
                vec![
                    Iq::Result {
                        from: None,
                        to: from,
                        id,
                        payload: Some(payloads::account_disco(node).into()),
                    }
                    .into(),
                ]
            }
            Iq::Get { from, id, .. } | Iq::Set { from, id, .. } => {
                vec![error_reply(
                    from,
                    None,
                    id,
                    DefinedCondition::ServiceUnavailable,
                )]
            }
            answer @ (Iq::Result { .. } | Iq::Error { .. }) => {
                self.parts.handler.stanza(answer.into()).await
            }
        }
    }
}

/// The account's presence for the Matrix user's: "offline" in Matrix keeps the connection
/// (else the server would stop delivering messages) and shows as extended away.
fn own_presence(presence: Option<&Presence>) -> Stanza {
    let mut p = XmppPresence::new(PresenceType::None);
    if let Some(presence) = presence {
        p.show = match presence.state {
            PresenceState::Online => None,
            PresenceState::Unavailable => Some(Show::Away),
            PresenceState::Offline => Some(Show::Xa),
        };
        if let Some(status) = &presence.status {
            p.statuses.insert(Default::default(), status.clone());
        }
    }
    p.payloads.push(payloads::account_caps().into());
    p.into()
}

/// The archive query (XEP-0313) for one page: the page after `after`, else the latest few.
fn archive_query(queryid: &str, after: Option<&str>) -> Element {
    let set = match after {
        Some(a) => SetQuery {
            max: Some(MAM_PAGE),
            after: Some(a.to_owned()),
            before: None,
            index: None,
        },
        None => SetQuery {
            max: Some(MAM_FIRST),
            after: None,
            before: Some(String::new()),
            index: None,
        },
    };
    mam::Query {
        queryid: Some(mam::QueryId(queryid.to_owned())),
        node: None,
        form: None,
        set: Some(set),
        flip_page: false,
    }
    .into()
}

/// The delay (XEP-0203) an archived message gets: the archive's time, stamped by `server`.
/// Built by hand: the crate writes UTC times without their milliseconds.
fn archive_delay(server: &str, at_ms: u64) -> Element {
    Element::builder("delay", ns::DELAY)
        .attr(xml_name("from"), server)
        .attr(xml_name("stamp"), super::time::rfc3339(at_ms))
        .build()
}

/// The `items` of a pubsub result in the event namespace, as notifications carry them.
fn rename_items(items: &Element) -> Element {
    super::c2s::rename_ns(items.clone(), PUBSUB, PUBSUB_EVENT)
}

fn xml_name(n: &str) -> xmpp_parsers::minidom::rxml::NcName {
    xmpp_parsers::minidom::rxml::NcName::try_from(n).expect("valid name")
}

struct RosterItem {
    jid: String,
    name: Option<String>,
    removed: bool,
}

/// The items of a roster result or push. Read by hand: the crate's `Roster` refuses the
/// whole roster for one item whose JID is not a bare JID, where this skips that item.
fn roster_items(query: &Element) -> Vec<RosterItem> {
    query
        .children()
        .filter(|c| c.is("item", ROSTER))
        .filter_map(|c| {
            let jid = BareJid::from_str(c.attr("jid")?).ok()?.to_string();
            let name = c.attr("name").and_then(crate::text::display_name);
            Some(RosterItem {
                jid,
                name,
                removed: c.attr("subscription") == Some("remove"),
            })
        })
        .collect()
}

/// Kind of carbon copy.
enum Carbon {
    Sent(Message),
    Received(Message),
}

/// Whether `msg` is a carbon copy (XEP-0280).
fn is_carbon(msg: &Message) -> bool {
    msg.payloads
        .iter()
        .any(|p| p.has_ns(ns::CARBONS) && matches!(p.name(), "sent" | "received"))
}

/// The copied message of a carbon, when `msg` is one from the account itself.
fn carbon(msg: &Message, own: &BareJid) -> Option<Carbon> {
    // Only the account's own server may send carbons (to the bare JID): anything else is
    // a forgery (CVE-2017-5589 style) and is dropped.
    if msg.from.as_ref() != Some(&Jid::from(own.clone())) {
        warn!(from = ?msg.from, "forged carbon copy dropped");
        return None;
    }
    let payloads = &msg.payloads;
    payloads::find::<carbons::Sent>(payloads, "sent", ns::CARBONS)
        .map(|c| Carbon::Sent(c.forwarded.message))
        .or_else(|| {
            payloads::find::<carbons::Received>(payloads, "received", ns::CARBONS)
                .map(|c| Carbon::Received(c.forwarded.message))
        })
}

#[async_trait]
impl c2s::Events for Account {
    async fn stanza(&self, stanza: Stanza) -> Vec<Stanza> {
        match stanza {
            Stanza::Message(msg) => {
                if is_carbon(&msg) {
                    match carbon(&msg, &self.jid) {
                        Some(Carbon::Sent(inner)) => {
                            self.parts
                                .handler
                                .sent_elsewhere(inner, &self.jid, &self.user)
                                .await;
                        }
                        Some(Carbon::Received(inner)) => {
                            // Another client of the user got it; it answers receipts.
                            let _ = self.parts.handler.stanza(inner.into()).await;
                        }
                        None => {}
                    }
                    return Vec::new();
                }
                if self.archived(&msg).await {
                    return Vec::new();
                }
                if let Some(items) = msg
                    .payloads
                    .iter()
                    .find(|p| p.is("event", PUBSUB_EVENT))
                    .and_then(|e| e.get_child("items", PUBSUB_EVENT))
                {
                    // A contact published a new avatar (XEP-0084 notification).
                    if items.attr("node") == Some(AVATAR_METADATA)
                        && let Some(contact) = msg.from.as_ref().map(|f| f.to_bare())
                        && self.avatar_source(&contact)
                        && let Some(me) = self.this.upgrade()
                        && let Ok(tasks) = self.parts.shared.tasks()
                    {
                        tasks.spawn_loop(me.pep_avatar(contact, Some(items.clone())));
                    }
                    return Vec::new();
                }
                if msg.from.as_ref().is_some_and(|f| f.to_bare() == self.jid) {
                    return Vec::new();
                }
                if msg.type_ == xmpp_parsers::message::MessageType::Groupchat {
                    return Vec::new();
                }
                let answers = self.parts.handler.stanza(msg.clone().into()).await;
                self.note_archived(&msg);
                answers
            }
            Stanza::Presence(p) => {
                // The account's other clients, and group chats joined from them.
                if p.from.as_ref().is_none_or(|f| f.to_bare() == self.jid) {
                    return Vec::new();
                }
                if p.payloads.iter().any(|e| e.has_ns(ns::MUC_USER)) {
                    return Vec::new();
                }
                // A contact seen online for the first time in this run: its published avatar
                // (XEP-0084) is asked for once; later changes come as notifications.
                if p.type_ == PresenceType::None
                    && let Some(contact) = p.from.as_ref().map(|f| f.to_bare())
                    && self.avatar_source(&contact)
                    && self
                        .pep_asked
                        .lock()
                        .expect("pep lock")
                        .insert(contact.to_string())
                    && let Some(me) = self.this.upgrade()
                    && let Ok(tasks) = self.parts.shared.tasks()
                {
                    tasks.spawn_loop(me.pep_avatar(contact, None));
                }
                self.parts.handler.stanza(p.into()).await
            }
            Stanza::Iq(iq) => self.iq(iq).await,
        }
    }

    async fn online(&self, jid: &FullJid, resumed: bool) -> Vec<Stanza> {
        debug!(jid = %jid, resumed, "XMPP account session ready");
        let presence = self.presence.lock().expect("presence lock").clone();
        if resumed {
            // A presence change made while the connection was down.
            return vec![own_presence(presence.as_ref())];
        }
        // The archive position before anything of the new session arrives: offline messages
        // come live right after the initial presence and must not move it past the gap.
        self.catching_up
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let position = self
            .parts
            .shared
            .store()
            .ok()
            .and_then(|s| s.get(&self.archive_key()).ok().flatten())
            .and_then(|v| v.as_str().map(str::to_owned));
        if let Some(me) = self.this.upgrade()
            && let Ok(tasks) = self.parts.shared.tasks()
        {
            // The initial presence waits for the catch-up: the server then delivers stored
            // offline messages after the archive's, so everything arrives in order (the
            // repeats are dropped by ID), and nothing addressed to the account in between
            // is lost (it goes to the user's other clients or to offline storage). A
            // shutdown may cut it: the archive position is stored only for what was stored.
            let task = tasks.spawn_loop(async move {
                me.clone().sync_roster().await;
                me.clone().catch_up(position).await;
                let presence = me.presence.lock().expect("presence lock").clone();
                let _ = me.out.send((own_presence(presence.as_ref()), None)).await;
            });
            if let Some(old) = self
                .session_task
                .lock()
                .expect("task lock")
                .replace(task.abort_handle())
            {
                old.abort();
            }
        }
        let carbons = Iq::Set {
            from: None,
            to: None,
            id: format!("carbons-{}", crate::network::now_ms()),
            payload: carbons::Enable.into(),
        };
        vec![carbons.into()]
    }

    async fn state(&self, state: BridgeState, detail: Option<String>) {
        if *self.stop.borrow() {
            // Logged out or replaced: nothing more to report.
            return;
        }
        if state == BridgeState::Connected {
            self.track().await;
        }
        if let Some(d) = &detail {
            *self.last_problem.lock().expect("problem lock") = Some(d.clone());
        }
        let changed = self.state.set(state);
        if state == BridgeState::Connected
            && let Some(first) = self.first.lock().expect("first lock").take()
        {
            let _ = first.send(Ok(()));
        }
        if state == BridgeState::BadCredentials
            && let Some(first) = self.first.lock().expect("first lock").take()
        {
            let _ = first.send(Err(NetworkError::BadCredentials(
                detail
                    .clone()
                    .unwrap_or_else(|| "the server refused the login".into())
                    .into(),
            )));
            return;
        }
        if changed && let Some(sink) = self.parts.shared.sink.get() {
            sink.report_state(Some(&self.user), state, detail).await;
        }
    }
}

#[async_trait]
impl NetworkClient for Account {
    fn state(&self) -> BridgeState {
        self.state.get()
    }

    async fn send_message(
        &self,
        portal: &PortalRef,
        message: &OutgoingMessage,
    ) -> Result<RemoteMessageId, NetworkError> {
        self.client_for(portal, &message.sender)?
            .send_message(portal, message)
            .await
    }

    async fn send_edit(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        target: &RemoteMessageId,
        content: &MessageContent,
    ) -> Result<(), NetworkError> {
        self.client_for(portal, sender)?
            .send_edit(portal, sender, target, content)
            .await
    }

    async fn send_redaction(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        target: &RemoteMessageId,
    ) -> Result<(), NetworkError> {
        self.client_for(portal, sender)?
            .send_redaction(portal, sender, target)
            .await
    }

    async fn send_moderation(
        &self,
        portal: &PortalRef,
        moderator: &MatrixSender,
        target: &RemoteMessageId,
        reason: Option<&str>,
    ) -> Result<(), NetworkError> {
        self.client_for(portal, moderator)?
            .send_moderation(portal, moderator, target, reason)
            .await
    }

    async fn send_reaction(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        target: &RemoteMessageId,
        key: &str,
        remove: bool,
    ) -> Result<(), NetworkError> {
        self.client_for(portal, sender)?
            .send_reaction(portal, sender, target, key, remove)
            .await
    }

    async fn send_typing(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        typing: bool,
    ) -> Result<(), NetworkError> {
        self.client_for(portal, sender)?
            .send_typing(portal, sender, typing)
            .await
    }

    async fn send_receipt(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        up_to: &RemoteMessageId,
    ) -> Result<(), NetworkError> {
        self.client_for(portal, sender)?
            .send_receipt(portal, sender, up_to)
            .await
    }

    async fn set_presence(
        &self,
        sender: &MatrixSender,
        presence: &Presence,
    ) -> Result<(), NetworkError> {
        let changed = self
            .presence
            .lock()
            .expect("presence lock")
            .replace(presence.clone())
            .is_none_or(|old| &old != presence);
        if changed && self.state.get() == BridgeState::Connected {
            let _ = self.out.send((own_presence(Some(presence)), None)).await;
        }
        // Gateway contacts and group chats see the gateway address.
        self.parts.gateway.set_presence(sender, presence).await
    }

    async fn join_chat(&self, portal: &PortalRef, user: &MatrixSender) -> Result<(), NetworkError> {
        self.client_for(portal, user)?.join_chat(portal, user).await
    }

    async fn leave_chat(
        &self,
        portal: &PortalRef,
        user: &MatrixSender,
    ) -> Result<(), NetworkError> {
        self.client_for(portal, user)?
            .leave_chat(portal, user)
            .await
    }

    async fn answer_contact_request(
        &self,
        user: &MatrixSender,
        contact: &RemoteUserId,
        accept: bool,
    ) -> Result<(), NetworkError> {
        self.direct
            .answer_contact_request(user, contact, accept)
            .await
    }

    async fn contacts(&self, _user: &MatrixSender) -> Result<Vec<Contact>, NetworkError> {
        Ok(self
            .roster
            .lock()
            .expect("roster lock")
            .keys()
            .map(|c| Contact {
                id: RemoteUserId::new(c.as_str()),
                sees_presence: false,
                watched: false,
                pending: false,
            })
            .collect())
    }

    async fn logout(&self) -> Result<(), NetworkError> {
        self.untrack();
        self.stop.send_replace(true);
        if let Some(task) = self.session_task.lock().expect("task lock").take() {
            task.abort();
        }
        info!(user = %self.user, jid = %self.jid, "XMPP account logged out");
        Ok(())
    }
}

/// The login form: JID, password, server.
const FORM: Form = Form {
    instructions: "Log in with your own XMPP account. Send `-` for an optional value to use the default.",
    fields: &[
        Field::required("jid", "XMPP address (you@example.org)", "the JID"),
        Field::secret("password", "password", "the password"),
        Field::optional(
            "server",
            "server host:port (`-`: the address's domain on port 5222; `tls:host:port` for direct TLS)",
        ),
    ],
};

/// Reads the values of a login into account data.
fn parse_input(parts: &Parts, values: &Values) -> Result<AccountData, NetworkError> {
    let raw = values.required("jid")?;
    let raw = raw.strip_prefix("xmpp:").unwrap_or(raw);
    let jid = BareJid::from_str(raw)
        .ok()
        .filter(|j| j.node().is_some())
        .ok_or_else(|| {
            NetworkError::InvalidInput(
                format!("{raw:?} is not an account such as you@example.org").into(),
            )
        })?;
    // A gateway address is a Matrix user, not an account.
    if jid.domain().as_str() == parts.shared.addressing.component() {
        return Err(NetworkError::InvalidInput(
            format!("{jid} is your address through the bridge, not an XMPP account").into(),
        ));
    }
    let password = values.required("password")?.to_owned();
    let (server, direct_tls) = match values.optional("server") {
        None => (None, false),
        Some(s) => {
            let (direct, rest) = match s.strip_prefix("tls:") {
                Some(r) => (true, r),
                None => (false, s),
            };
            host_port(rest).map_err(|e| NetworkError::InvalidInput(Reason::from_error(e)))?;
            (Some(rest.to_owned()), direct)
        }
    };
    Ok(AccountData {
        jid: jid.to_string(),
        password,
        server,
        direct_tls,
    })
}

#[async_trait]
impl PasswordAccounts for Parts {
    const NETWORK: &'static str = super::NETWORK;
    type Data = AccountData;

    fn form(&self) -> Form {
        FORM
    }

    async fn log_in(
        &self,
        user: &str,
        values: &Values,
    ) -> Result<(LoginData, Arc<dyn NetworkClient>), NetworkError> {
        let data = parse_input(self, values)?;
        let account = Account::new(self.clone(), user, data)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        account.start(Some(tx))?;
        let outcome = tokio::time::timeout(Duration::from_secs(30), rx).await;
        let failed = match outcome {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(e),
            Ok(Err(_)) => Some(NetworkError::Transient("the connection stopped".into())),
            Err(_) => Some(NetworkError::Transient(
                match account.last_problem.lock().expect("problem lock").clone() {
                    Some(why) => format!("could not log in within 30 s: {why}").into(),
                    None => "could not log in within 30 s (is the server reachable?)".into(),
                },
            )),
        };
        if let Some(e) = failed {
            account.untrack();
            account.stop.send_replace(true);
            return Err(e);
        }
        info!(user = %user, jid = %account.jid, "XMPP account logged in");
        Ok((account.login_data(), account))
    }

    /// Restores a stored account: connects in the background and reports the state.
    fn restore(
        &self,
        user: &str,
        data: AccountData,
    ) -> Result<Arc<dyn NetworkClient>, NetworkError> {
        let account = Account::new(self.clone(), user, data)?;
        account.start(None)?;
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSM: &str = "http://jabber.org/protocol/rsm";

    /// The archive query as the bridge built it by hand before the crate's types.
    fn built_archive_query(queryid: &str, after: Option<&str>) -> Element {
        let set = match after {
            Some(a) => Element::builder("set", RSM)
                .append(
                    Element::builder("max", RSM)
                        .append(MAM_PAGE.to_string())
                        .build(),
                )
                .append(Element::builder("after", RSM).append(a).build())
                .build(),
            None => Element::builder("set", RSM)
                .append(
                    Element::builder("max", RSM)
                        .append(MAM_FIRST.to_string())
                        .build(),
                )
                .append(Element::builder("before", RSM).build())
                .build(),
        };
        Element::builder("query", ns::MAM)
            .attr(xml_name("queryid"), queryid)
            .append(set)
            .build()
    }

    use super::payloads::wire;

    proptest::proptest! {
        /// The typed archive query is the one the bridge sent before.
        #[test]
        fn archive_query_keeps_the_wire_shape(
            queryid in "q[0-9a-f]{1,16}",
            after in proptest::option::of("[ -~é]{0,16}"),
        ) {
            let typed = archive_query(&queryid, after.as_deref());
            let built = built_archive_query(&queryid, after.as_deref());
            proptest::prop_assert_eq!(wire(&typed), wire(&built));
        }

        /// A carbon copy is read from the account's own server, and only from it, whatever
        /// else the copy carries.
        #[test]
        fn carbons_are_read(body in "[a-zA-Z0-9 ]{1,16}", extra in "[a-z]{1,8}", sent in proptest::bool::ANY) {
            let own = BareJid::from_str("me@example.org").unwrap();
            let kind = if sent { "sent" } else { "received" };
            let xml = format!(
                "<message xmlns='jabber:component:accept' from='me@example.org' to='me@example.org/isthmus'>\
                 <{kind} xmlns='urn:xmpp:carbons:2' x-{extra}='1'><forwarded xmlns='urn:xmpp:forward:0'>\
                 <message xmlns='jabber:component:accept' from='me@example.org/phone' to='friend@example.org' type='chat'>\
                 <body>{body}</body><{extra} xmlns='urn:example'/></message></forwarded></{kind}></message>"
            );
            let msg = Message::try_from(Element::from_str(&xml).unwrap()).unwrap();
            proptest::prop_assert!(is_carbon(&msg));
            let inner = match carbon(&msg, &own) {
                Some(Carbon::Sent(m)) if sent => m,
                Some(Carbon::Received(m)) if !sent => m,
                _ => return Err(proptest::test_runner::TestCaseError::fail("not read")),
            };
            proptest::prop_assert_eq!(inner.bodies.values().next(), Some(&body));
            let forged = Message::try_from(
                Element::from_str(&xml.replacen("from='me@example.org'", "from='evil@example.org'", 1)).unwrap(),
            )
            .unwrap();
            proptest::prop_assert!(carbon(&forged, &own).is_none());
        }
    }

    #[test]
    fn requests_keep_the_wire_shape() {
        let roster: Element = Roster {
            ver: None,
            items: Vec::new(),
        }
        .into();
        assert_eq!(roster, Element::builder("query", ROSTER).build());
        let enable: Element = carbons::Enable.into();
        assert_eq!(enable, Element::builder("enable", ns::CARBONS).build());
        let metadata: Element = PubSub::Items(Items {
            max_items: Some(1),
            ..Items::new(AVATAR_METADATA)
        })
        .into();
        assert_eq!(
            metadata,
            Element::builder("pubsub", PUBSUB)
                .append(
                    Element::builder("items", PUBSUB)
                        .attr(xml_name("node"), AVATAR_METADATA)
                        .attr(xml_name("max_items"), "1")
                        .build(),
                )
                .build()
        );
        let data: Element = PubSub::Items(Items {
            items: vec![pubsub::pubsub::Item {
                id: Some(pubsub::ItemId("abc".into())),
                publisher: None,
                payload: None,
            }],
            ..Items::new(AVATAR_DATA)
        })
        .into();
        assert_eq!(
            data,
            Element::builder("pubsub", PUBSUB)
                .append(
                    Element::builder("items", PUBSUB)
                        .attr(xml_name("node"), AVATAR_DATA)
                        .append(
                            Element::builder("item", PUBSUB)
                                .attr(xml_name("id"), "abc")
                                .build(),
                        )
                        .build(),
                )
                .build()
        );
    }

    #[test]
    fn archived_times_keep_their_milliseconds() {
        let d = archive_delay("example.org", 1_795_728_662_123);
        assert_eq!(d.attr("stamp"), Some("2026-11-26T21:31:02.123Z"));
        assert_eq!(d.attr("from"), Some("example.org"));
        assert!(d.is("delay", ns::DELAY));
    }

    #[test]
    fn servers_parse() {
        assert_eq!(
            host_port("xmpp.example.org").unwrap(),
            ("xmpp.example.org".into(), 5222)
        );
        assert_eq!(
            host_port("127.0.0.1:15222").unwrap(),
            ("127.0.0.1".into(), 15222)
        );
        assert_eq!(host_port("[::1]:5223").unwrap(), ("::1".into(), 5223));
        assert!(host_port("a:b").is_err());
        assert!(host_port("::1").is_err());
        assert!(host_port(":5222").is_err());
        assert!(host_port("x@y:1").is_err());
        assert!(host_port("h:0").is_err());
    }
}
