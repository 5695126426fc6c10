//! The core: portals, ghosts, users, logins, relay, and the ordered per-portal processing of
//! everything that reaches the bridge.
//!
//! Nothing here names a particular network. Remote networks are reached through
//! [`crate::network::Connector`] and [`crate::network::NetworkClient`]; the homeserver through
//! [`crate::matrix::HomeserverClient`]; state through [`crate::store::Store`].

mod dispatch;
mod encryption;
pub mod event;
mod facade;
mod ghosts;
mod keyed;
pub mod limits;
mod login_page;
mod login_state;
mod logins;
mod management;
mod matrix_events;
mod matrix_users;
mod media;
mod permissions;
mod portal;
mod portal_ops;
mod portals;
mod remote_events;
mod resume;
mod rooms;
mod sender;
mod sink;
pub mod split;
mod typing;

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

pub use self::dispatch::Work;
pub use self::encryption::REFUSAL as ENCRYPTED_ROOM_REFUSAL;
pub use self::event::{EventKind, InvalidEvent, MatrixEvent};
pub use self::login_page::{LINK_LIFETIME, LOGIN_PATH, LoginLink, PageView};
pub use self::logins::LoginProgress;
pub use self::logins::LoginSession;
pub use self::matrix_events::{message_content, portal_ref};
pub use self::permissions::Permissions;
pub use self::portal::PowerNeed;
pub use self::portal_ops::Bridged;
pub use self::portals::queues::{JobError, QueueKey};
pub use self::remote_events::matrix_content;
pub use self::sink::CoreSink;

use crate::config::{Config, PermissionLevel};
use crate::error::{Reason, Retry};
use crate::matrix::{HomeserverClient, MatrixError, escape};
use crate::metrics::Metrics;
use crate::network::{BridgeState, Connector, LoginId, NetworkClient, NetworkError, NetworkId};
use crate::store::{Store, StoreError};
use crate::tasks::Tasks;

/// Why handling an event failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The homeserver refused or could not be reached.
    #[error("homeserver: {0}")]
    Matrix(#[from] MatrixError),
    /// The remote network failed.
    #[error("{network}: {source}")]
    Network {
        /// Which network.
        network: NetworkId,
        /// What it said.
        source: NetworkError,
    },
    /// Something in the event is not valid.
    #[error("invalid event: {0}")]
    Invalid(#[source] Reason),
    /// A change handed to a portal's queue got no answer.
    #[error(transparent)]
    Queue(#[from] JobError),
}

impl BridgeError {
    /// What the failure model does with this error (`dispatch.rs`, `process`): the verdict
    /// of the error underneath. An outage of something every item needs (the homeserver
    /// cannot be reached, the store cannot write, a network link is down) holds the portal
    /// until it ends without counting towards setting the item aside; a passing failure of
    /// this item is retried and counted; anything else is permanent.
    pub fn retry(&self) -> Retry {
        match self {
            BridgeError::Network { source, .. } => source.retry(),
            BridgeError::Matrix(e) => e.retry(),
            BridgeError::Store(e) => e.retry(),
            // Asked again, the portal's queue (started anew) answers.
            BridgeError::Queue(JobError::Ended(_)) => Retry::Transient,
            BridgeError::Queue(JobError::Circular(_)) | BridgeError::Invalid(_) => Retry::Never,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.retry().is_retried()
    }
}

/// A client registered for a Matrix user on a network.
#[derive(Clone)]
pub struct UserLogin {
    /// The login's ID.
    pub id: LoginId,
    /// The remote account's name.
    pub remote_name: String,
    /// The client.
    pub client: Arc<dyn NetworkClient>,
}

/// The bridge core. Shared as `Arc<Bridge>`.
pub struct Bridge {
    /// The validated configuration.
    config: Arc<Config>,
    /// The store; callers outside `bridge/` ask through `facade.rs`.
    store: Store,
    /// Metrics.
    metrics: Metrics,
    /// Connectors by network ID.
    networks: BTreeMap<NetworkId, Arc<dyn Connector>>,
    /// Who may do what.
    permissions: Permissions,
    bot: OwnedUserId,
    /// Users' logins: live clients, flows in progress, login links, reported states.
    logins: login_state::Logins,
    /// The ghosts: names, records, profiles, room memberships, presence.
    ghosts: ghosts::Ghosts,
    /// Users currently typing per room, to turn Matrix typing lists into start/stop changes.
    typing: typing::Typing,
    /// What the bridge posts into rooms, and what it learnt doing so.
    sender: sender::RoomSender,
    /// The portals: records, rooms, queues, management rooms.
    portals: portals::Portals,
    /// The rooms the bridge makes, and who it lets in or out.
    rooms: rooms::Rooms,
    /// Downloads files that networks send.
    fetcher: crate::media::Fetcher,
    /// Signs links to Matrix files for networks, when `bridge.media.public_url` is set.
    links: std::sync::OnceLock<crate::media::Links>,
    /// This bridge, for work started from a `&self` (queues need an `Arc`).
    me: Weak<Bridge>,
    /// The background tasks (portal queues among them), which a shutdown waits for.
    tasks: Tasks,
    /// The process's open-files limit (soft, hard) after start-up raised it.
    open_files: std::sync::OnceLock<(u64, u64)>,
    /// What the bridge reads about Matrix users (existence, names, profiles, presence).
    matrix_users: matrix_users::MatrixUsers,
    /// Rate limits on what remote senders can make the bridge create.
    limits: limits::Limits,
}

/// A reported state and its optional detail.
pub type StateReport = (BridgeState, Option<String>);

pub use crate::network::now_ms;

impl Bridge {
    /// Builds the core. Connectors are started by the caller (`app::run`), with an `EventSink` each.
    pub fn new(
        config: Arc<Config>,
        hs: HomeserverClient,
        store: Store,
        metrics: Metrics,
        connectors: Vec<Arc<dyn Connector>>,
        tasks: Tasks,
    ) -> Result<Arc<Bridge>, BridgeError> {
        let bot = user_id(&format!(
            "@{}:{}",
            config.appservice.bot_localpart, config.homeserver.domain
        ))?;
        let networks: BTreeMap<NetworkId, Arc<dyn Connector>> = connectors
            .into_iter()
            .map(|c| (c.info().id.clone(), c))
            .collect();
        let permissions = Permissions::new(config.bridge.permissions.clone());
        for l in limits::Limit::ALL {
            metrics.rate_limited.with_label_values(&[l.name()]);
        }
        let ghosts = ghosts::Ghosts::new(
            &config,
            hs.clone(),
            store.clone(),
            metrics.clone(),
            networks.clone(),
        );
        let sender = sender::RoomSender::new(hs.clone(), store.clone(), bot.clone());
        let matrix_users = matrix_users::MatrixUsers::new(hs.clone());
        let rooms = rooms::Rooms::new(hs);
        let portals = portals::Portals::new(
            &config,
            store.clone(),
            rooms.clone(),
            bot.clone(),
            networks.clone(),
        );
        Ok(Arc::new_cyclic(|me| Bridge {
            me: me.clone(),
            tasks,
            store,
            metrics,
            networks,
            permissions,
            bot,
            logins: login_state::Logins::default(),
            ghosts,
            typing: typing::Typing::default(),
            sender,
            portals,
            rooms,
            matrix_users,
            fetcher: crate::media::Fetcher::new(&config.bridge.media.allow_hosts),
            links: std::sync::OnceLock::new(),
            open_files: std::sync::OnceLock::new(),
            limits: limits::Limits::new(&config.bridge.limits),
            config,
        }))
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The metrics the bridge counts.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The enabled networks' connectors, in the order of their IDs.
    pub fn connectors(&self) -> impl Iterator<Item = (&NetworkId, &Arc<dyn Connector>)> {
        self.networks.iter()
    }

    /// The connector of `network`, when it is enabled.
    pub fn connector(&self, network: &NetworkId) -> Option<&Arc<dyn Connector>> {
        self.networks.get(network)
    }

    /// The IDs of the enabled networks, in order.
    pub fn network_ids(&self) -> impl Iterator<Item = &NetworkId> {
        self.networks.keys()
    }

    /// The network, when exactly one is enabled (a command need not name it then).
    pub fn only_network(&self) -> Option<&NetworkId> {
        let mut ids = self.networks.keys();
        ids.next().filter(|_| ids.next().is_none())
    }

    /// Starts serving Matrix files to networks through signed links (`bridge.media.public_url`);
    /// the first call counts.
    pub fn serve_file_links(&self, links: crate::media::Links) {
        let _ = self.links.set(links);
    }

    /// The signer of links to Matrix files, when they are served.
    pub fn file_links(&self) -> Option<&crate::media::Links> {
        self.links.get()
    }

    /// Records the process's open-files limit (soft, hard) after start-up raised it.
    pub fn record_open_files(&self, soft: u64, hard: u64) {
        let _ = self.open_files.set((soft, hard));
    }

    /// The process's open-files limit (soft, hard), when start-up could read it.
    pub fn open_files(&self) -> Option<(u64, u64)> {
        self.open_files.get().copied()
    }

    /// The background tasks: what the core starts runs here, and a shutdown waits for it.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// The bridge bot's user ID.
    pub fn bot(&self) -> &UserId {
        &self.bot
    }

    /// The homeserver's server name.
    pub fn server_name(&self) -> &str {
        &self.config.homeserver.domain
    }

    /// Permission level of a Matrix user.
    pub fn level(&self, user_id: &str) -> PermissionLevel {
        self.permissions.level(user_id)
    }

    /// Whether a user ID belongs to the bridge (the bot or a ghost of any network).
    pub fn is_bridge_user(&self, user_id: &str) -> bool {
        user_id == self.bot.as_str() || self.parse_ghost(user_id).is_some()
    }

    /// Whether a user ID is in the bridge's exclusive namespace: the bot, or anything shaped
    /// like a ghost of an enabled network. Cheaper than [`Bridge::parse_ghost`] (no
    /// unescaping); used to drop the bridge's own echoes.
    pub fn in_namespace(&self, user_id: &str) -> bool {
        user_id == self.bot.as_str() || self.ghosts.in_namespace(user_id)
    }

    /// The Matrix user ID of the ghost of `remote` on `network`.
    pub fn ghost_user_id(&self, network: &NetworkId, remote: &str) -> String {
        self.ghosts.user_id(network, remote)
    }

    /// The network and remote ID a ghost user ID stands for, if it is one of ours.
    pub fn parse_ghost(&self, user_id: &str) -> Option<(NetworkId, String)> {
        self.ghosts.parse(user_id)
    }

    /// Sets again, every `every`, the presence of the ghosts shown online or away, which the
    /// homeserver would otherwise time out. Runs until the task is dropped.
    pub async fn keep_presence(self: Arc<Self>, every: Duration) {
        self.ghosts.keep_presence(every).await;
    }

    /// The room alias localpart for a remote group chat.
    pub fn alias_localpart(&self, network: &NetworkId, chat: &str) -> String {
        self.config
            .bridge
            .alias_localpart_template
            .replace("{network}", network.as_str())
            .replace("{id}", &escape::escape_localpart(chat))
    }

    /// The network and remote chat a room alias localpart stands for.
    pub fn parse_alias_localpart(&self, local: &str) -> Option<(NetworkId, String)> {
        parse_template(
            &self.config.bridge.alias_localpart_template,
            local,
            &self.networks,
        )
    }

    /// The connector of a network.
    pub fn network(&self, id: &NetworkId) -> Result<&Arc<dyn Connector>, BridgeError> {
        self.networks.get(id).ok_or_else(|| {
            BridgeError::Invalid(format!("the network {id} is not enabled on this bridge").into())
        })
    }

    /// Records the state of a login (`user_id` Some) or bridge-wide link and updates metrics.
    pub fn set_state(
        &self,
        network: &NetworkId,
        user_id: Option<&str>,
        state: BridgeState,
        message: Option<String>,
    ) -> Option<BridgeState> {
        let previous = self.logins.record_state(network, user_id, state, message);
        if matches!(
            state,
            BridgeState::TransientDisconnect
                | BridgeState::BadCredentials
                | BridgeState::LoggedOut
                | BridgeState::UnknownError
        ) {
            // What the network said of its users' presence through this link (the bridge-wide
            // one, or this user's own login) is no longer known.
            self.ghosts.forget_presence_on(network, user_id);
        }
        if previous != Some(state) {
            if let Some(p) = previous {
                self.metrics
                    .logins
                    .with_label_values(&[network.as_str(), p.as_str()])
                    .dec();
            }
            self.metrics
                .logins
                .with_label_values(&[network.as_str(), state.as_str()])
                .inc();
        }
        previous
    }

    /// Last reported state of a login or link.
    pub fn state_of(
        &self,
        network: &NetworkId,
        user_id: Option<&str>,
    ) -> Option<(BridgeState, Option<String>)> {
        self.logins.state_of(network, user_id)
    }

    /// Refreshes the gauges that mirror the store. Counting a sled tree walks it, so this
    /// runs when metrics are read (`/metrics`), never per item on a hot path.
    pub fn refresh_gauges(&self) {
        self.metrics.portals.set(self.store.portal_count() as i64);
        self.metrics.ghosts.set(self.store.ghost_count() as i64);
        self.metrics.inbox_depth.set(self.store.inbox_len() as i64);
        self.metrics
            .store_size_bytes
            .set(self.store.size_on_disk() as i64);
        self.metrics
            .store_healthy
            .set(i64::from(self.store.is_healthy()));
    }
}

/// Splits `local` according to a `{network}`/`{id}` template; the network must be enabled and
/// the ID must unescape.
pub(super) fn parse_template(
    template: &str,
    local: &str,
    networks: &BTreeMap<NetworkId, Arc<dyn Connector>>,
) -> Option<(NetworkId, String)> {
    for network in networks.keys() {
        let with_net = template.replace("{network}", network.as_str());
        let (before, after) = with_net.split_once("{id}")?;
        if let Some(rest) = local.strip_prefix(before)
            && let Some(escaped) = rest.strip_suffix(after)
            && !escaped.is_empty()
            && let Some(id) = escape::unescape_localpart(escaped)
        {
            return Some((network.clone(), id));
        }
    }
    None
}

/// Parses a user ID, as a bridge error.
pub fn user_id(s: &str) -> Result<OwnedUserId, BridgeError> {
    UserId::parse(s)
        .map_err(|e| BridgeError::Invalid(Reason::because(format!("bad user ID {s}"), e)))
}

/// Parses a room ID, as a bridge error.
pub fn room_id(s: &str) -> Result<OwnedRoomId, BridgeError> {
    RoomId::parse(s)
        .map_err(|e| BridgeError::Invalid(Reason::because(format!("bad room ID {s}"), e)))
}

#[cfg(test)]
mod tests;
