//! Own-account mode: a Matrix user logs in with their own XMPP account. The bridge keeps a
//! client connection for the account ([`super::c2s`]); the account's direct chats go out on
//! it, what its contacts write comes in on it, its roster becomes direct-chat portals, and
//! carbons (XEP-0280) show what the user wrote from other clients. The account's client
//! carries direct chats only: in group chats the core uses the gateway, so a login changes
//! nothing there. The password lives in the login data, which the core seals at rest.

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

mod archive;
mod pep;
mod session;
mod tls;

use self::session::own_presence;
pub(crate) use self::tls::ClientSettings;
pub use self::tls::load_ca_file;

use super::XmppConfig;
use super::c2s;
use super::component::{Inbound, Outgoing};
use super::handle_matrix::{Client, Identity};
use super::handle_xmpp::{Handler, error_reply};
use super::{Shared, payloads};
use crate::error::Reason;
use crate::network::kit::login::{self, Field, Form, PasswordAccounts, Values};
use crate::network::kit::registry::Entry;
use crate::network::kit::state::StateCell;
use crate::network::{
    BridgeState, Contact, LoginData, NetworkClient, NetworkError, Presence, PresenceState,
    RemoteEvent, RemoteEventKind, RemoteUserId,
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
}

/// One Matrix user's own XMPP account.
pub(crate) struct Account {
    parts: Parts,
    user: String,
    jid: BareJid,
    data: AccountData,
    this: std::sync::Weak<Account>,
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
    /// While the connection's batch of stanzas is being stored: the archive position its
    /// messages reached (`Some(None)`: none yet), written once the batch is stored.
    batch_position: Mutex<Option<Option<String>>>,
    /// The roster and archive task of the current session.
    session_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// The connection's task, until the connector's shutdown waits for it.
    connection: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Which contacts' published avatars were asked for and tried in this run.
    pep: pep::PepSeen,
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
        Ok(Arc::new_cyclic(|this| Self {
            this: this.clone(),
            parts,
            user: user.to_owned(),
            jid,
            data,
            out,
            rx: Mutex::new(Some(rx)),
            state,
            stop: watch::channel(false).0,
            roster: Mutex::default(),
            last_problem: Mutex::default(),
            catching_up: std::sync::atomic::AtomicBool::new(true),
            batch_position: Mutex::default(),
            session_task: Mutex::default(),
            connection: Mutex::default(),
            pep: pep::PepSeen::default(),
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

    /// The account as the identity of its login: it carries the user's direct chats.
    fn client(self: &Arc<Self>) -> Arc<Client> {
        Arc::new(Client {
            shared: self.parts.shared.clone(),
            identity: Identity::Own(self.clone()),
            out: self.out.clone(),
            state: self.state.subscribe(),
            counter: AtomicU64::new(0),
        })
    }

    /// The account's address.
    pub(super) fn jid(&self) -> &BareJid {
        &self.jid
    }

    /// Shows the Matrix user's presence on the account (when it changed).
    pub(super) async fn publish_presence(&self, presence: &Presence) {
        let changed = self
            .presence
            .lock()
            .expect("presence lock")
            .replace(presence.clone())
            .is_none_or(|old| &old != presence);
        if changed && self.state.get() == BridgeState::Connected {
            let _ = self.out.send((own_presence(Some(presence)), None)).await;
        }
    }

    /// The account's roster, as contacts.
    pub(super) fn contacts(&self) -> Vec<Contact> {
        self.roster
            .lock()
            .expect("roster lock")
            .keys()
            .map(|c| Contact {
                id: RemoteUserId::new(c.as_str()),
                sees_presence: false,
                watched: false,
                pending: false,
            })
            .collect()
    }

    /// Ends the login: the connection closes and the account's traffic goes nowhere.
    pub(super) fn logout(&self) {
        self.untrack();
        self.stop.send_replace(true);
        if let Some(task) = self.session_task.lock().expect("task lock").take() {
            task.abort();
        }
        info!(user = %self.user, jid = %self.jid, "XMPP account logged out");
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
        Ok((account.login_data(), account.client()))
    }

    /// Restores a stored account: connects in the background and reports the state.
    fn restore(
        &self,
        user: &str,
        data: AccountData,
    ) -> Result<Arc<dyn NetworkClient>, NetworkError> {
        let account = Account::new(self.clone(), user, data)?;
        account.start(None)?;
        Ok(account.client())
    }
}

#[cfg(test)]
mod tests;
