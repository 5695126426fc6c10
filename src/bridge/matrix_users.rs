//! [`MatrixUsers`]: Matrix users as networks see them — whether they exist, their display
//! name, profile and presence — read from the homeserver, the frequent answers cached
//! briefly (`cache.rs`). The [`Bridge`] methods below add who may be asked about: users of
//! the bridge, never its own users.

use std::time::{Duration, Instant};

use ruma::UserId;
use tracing::debug;

use self::cache::TtlCache;
use super::Bridge;
use crate::config::PermissionLevel;
use crate::matrix::HomeserverClient;
use crate::network::{
    MatrixProfile, MatrixUserStatus, NetworkError, NetworkId, Presence, PresenceState,
};

mod cache;

/// How long an answer of the homeserver about whether a user exists is trusted.
const EXISTENCE_TTL: Duration = Duration::from_secs(60);
/// How long a Matrix user's display name, as the homeserver gave it, is used without asking
/// again (a member event of the user drops it sooner).
const DISPLAY_NAME_TTL: Duration = Duration::from_secs(600);
/// Most answers kept, of each kind.
const CAPACITY: usize = 10_000;
/// How long the homeserver may take to answer whether a user exists, or their presence,
/// before the answer is unknown: a connector may be waiting on it while handling its
/// network's traffic.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the bridge reads about Matrix users, with its own handle on the homeserver and its
/// caches: a flood of requests to the same address reaches the homeserver once per minute,
/// a sender's name once per ten minutes.
pub(super) struct MatrixUsers {
    hs: HomeserverClient,
    /// Whether Matrix users exist, as the homeserver last said.
    existence: TtlCache<bool>,
    /// Display names of Matrix users, as the homeserver last said; forgotten when a member
    /// event of theirs arrives.
    display_names: TtlCache<Option<String>>,
}

impl MatrixUsers {
    /// Reads through `hs`, nothing cached yet.
    pub(super) fn new(hs: HomeserverClient) -> Self {
        MatrixUsers {
            hs,
            existence: TtlCache::new(EXISTENCE_TTL, CAPACITY),
            display_names: TtlCache::new(DISPLAY_NAME_TTL, CAPACITY),
        }
    }

    /// Whether `user` exists on the homeserver; a homeserver that fails or does not answer
    /// in time gives `Unknown`, never `NotFound`.
    async fn status(&self, user: &UserId) -> MatrixUserStatus {
        let status = |exists| {
            if exists {
                MatrixUserStatus::Reachable
            } else {
                MatrixUserStatus::NotFound
            }
        };
        if let Some(exists) = self.existence.get(user.as_str(), Instant::now()) {
            return status(exists);
        }
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.hs.user_exists(user)).await {
            Ok(Ok(exists)) => {
                self.existence.put(user.as_str(), exists, Instant::now());
                status(exists)
            }
            Ok(Err(e)) => {
                debug!(%user, error = %crate::error::chain(&e), "could not tell whether a Matrix user exists");
                MatrixUserStatus::Unknown
            }
            Err(_) => {
                debug!(
                    %user,
                    "the homeserver did not say in time whether a Matrix user exists"
                );
                MatrixUserStatus::Unknown
            }
        }
    }

    /// The display name of `user`, from the cache or the homeserver; `None` when they have
    /// none or the homeserver cannot tell (that is not cached: the next message asks again).
    pub(super) async fn display_name(&self, user: &str) -> Option<String> {
        let now = Instant::now();
        if let Some(name) = self.display_names.get(user, now) {
            return name;
        }
        let uid = UserId::parse(user).ok()?;
        let (name, _) = self.hs.get_profile(&uid).await.ok()?;
        self.display_names.put(user, name.clone(), now);
        name
    }

    /// Forgets the display name of `user` (a member event of theirs may carry a new one).
    pub(super) fn forget_name(&self, user: &str) {
        self.display_names.forget(user);
    }

    /// The profile of `user`, avatar included when it is a small enough image.
    async fn profile(&self, user: &UserId) -> Option<MatrixProfile> {
        let (displayname, avatar_url) = self.hs.get_profile(user).await.ok()?;
        let avatar = match avatar_url.as_deref().and_then(|u| u.strip_prefix("mxc://")) {
            Some(rest) => {
                let (server, id) = rest.split_once('/')?;
                match self.hs.download(server, id).await {
                    Ok((bytes, _)) if bytes.len() <= super::ghosts::AVATAR_MAX_BYTES => {
                        crate::media::sniff(&bytes)
                            .filter(|m| m.starts_with("image/"))
                            .map(|m| (m.to_owned(), bytes))
                    }
                    Ok(_) => None,
                    Err(e) => {
                        debug!(%user, error = %crate::error::chain(&e), "could not download the avatar");
                        None
                    }
                }
            }
            None => None,
        };
        Some(MatrixProfile {
            displayname,
            avatar,
        })
    }

    /// The current presence of `user`, asked as `viewer` (the bot when `None`), who must
    /// share a room with them. `None` when unknown.
    async fn presence(&self, user: &UserId, viewer: Option<&UserId>) -> Option<Presence> {
        let asked = tokio::time::timeout(LOOKUP_TIMEOUT, self.hs.get_presence(viewer, user));
        let (state, status) = match asked.await {
            Ok(Ok(p)) => p,
            Err(_) => {
                debug!(%user, "no answer about the user's presence in time");
                return None;
            }
            Ok(Err(e)) => {
                debug!(%user, error = %crate::error::chain(&e), "could not read the user's presence");
                return None;
            }
        };
        let state = match state.as_str() {
            "online" => PresenceState::Online,
            "unavailable" => PresenceState::Unavailable,
            _ => PresenceState::Offline,
        };
        Some(Presence::new(state, status.as_deref()))
    }
}

impl Bridge {
    /// `user` as a user ID, when networks may learn about them: a user of the bridge (at
    /// the `user` level), not one of the bridge's own.
    fn askable(&self, user: &str) -> Option<ruma::OwnedUserId> {
        if self.in_namespace(user) || self.level(user) < PermissionLevel::User {
            return None;
        }
        UserId::parse(user).ok()
    }

    /// Whether `user` exists and may use the bridge; see
    /// [`crate::network::RemoteEventHandler::matrix_user_status`]. The bridge's own users and
    /// users below the `user` level are `NotFound` without asking the homeserver; a homeserver
    /// that fails or does not answer in time gives `Unknown`, never `NotFound`.
    pub async fn matrix_user_status(&self, user: &str) -> MatrixUserStatus {
        match self.askable(user) {
            Some(uid) => self.matrix_users.status(&uid).await,
            None => MatrixUserStatus::NotFound,
        }
    }

    /// The profile of a Matrix user who may use the bridge, avatar included when it is
    /// small enough, for networks that show it.
    pub async fn matrix_profile(&self, user: &str) -> Option<MatrixProfile> {
        let uid = self.askable(user)?;
        self.matrix_users.profile(&uid).await
    }

    /// The current presence of a Matrix user who may use the bridge, read from the homeserver
    /// as the bot (so only for users who share a room with it). `None` when unknown.
    pub async fn matrix_presence(&self, user: &str) -> Option<Presence> {
        self.matrix_presence_seen_by(user, None).await
    }

    /// [`Self::matrix_presence`], asked as `viewer` (a ghost sharing a room with the user)
    /// instead of the bot.
    pub async fn matrix_presence_seen_by(
        &self,
        user: &str,
        viewer: Option<&str>,
    ) -> Option<Presence> {
        let uid = self.askable(user)?;
        let viewer = match viewer {
            Some(v) => Some(UserId::parse(v).ok()?),
            None => None,
        };
        self.matrix_users.presence(&uid, viewer.as_deref()).await
    }

    /// Hands `user`'s current presence (read from the homeserver as `viewer`) to the identity
    /// that speaks for them on `network`, through the same path as presence pushes; called
    /// when a portal is created, so the contact does not see a guess until the next change.
    pub async fn publish_current_presence(
        &self,
        user: &str,
        network: &NetworkId,
        viewer: Option<&str>,
    ) {
        let Some(client) = self.user_client(user, network) else {
            return;
        };
        let Some(presence) = self.matrix_presence_seen_by(user, viewer).await else {
            return;
        };
        let sender = self.matrix_sender(user).await;
        match client.set_presence(&sender, &presence).await {
            Ok(()) | Err(NetworkError::Unsupported(_)) => {}
            Err(e) => {
                debug!(user, error = %crate::error::chain(&e), "could not publish the user's presence")
            }
        }
    }
}
