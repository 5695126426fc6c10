//! Matrix users as networks see them: their profile and presence, read from the homeserver
//! for users who may use the bridge.

use tracing::debug;

use super::Bridge;
use crate::network::NetworkId;

impl Bridge {
    /// The profile of a Matrix user who may use the bridge, avatar included when it is
    /// small enough, for networks that show it.
    pub async fn matrix_profile(&self, user: &str) -> Option<crate::network::MatrixProfile> {
        if self.in_namespace(user) || self.level(user) < super::PermissionLevel::User {
            return None;
        }
        let uid = ruma::UserId::parse(user).ok()?;
        let (displayname, avatar_url) = self.hs.get_profile(&uid).await.ok()?;
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
                        debug!(user, error = %crate::error::chain(&e), "could not download the avatar");
                        None
                    }
                }
            }
            None => None,
        };
        Some(crate::network::MatrixProfile {
            displayname,
            avatar,
        })
    }

    /// The current presence of a Matrix user who may use the bridge, read from the homeserver
    /// as the bot (so only for users who share a room with it). `None` when unknown.
    pub async fn matrix_presence(&self, user: &str) -> Option<crate::network::Presence> {
        self.matrix_presence_seen_by(user, None).await
    }

    /// [`Self::matrix_presence`], asked as `viewer` (a ghost sharing a room with the user)
    /// instead of the bot.
    pub async fn matrix_presence_seen_by(
        &self,
        user: &str,
        viewer: Option<&str>,
    ) -> Option<crate::network::Presence> {
        use crate::network::{Presence, PresenceState};
        if self.in_namespace(user) || self.level(user) < super::PermissionLevel::User {
            return None;
        }
        let uid = ruma::UserId::parse(user).ok()?;
        let viewer = match viewer {
            Some(v) => Some(ruma::UserId::parse(v).ok()?),
            None => None,
        };
        // Bounded: a connector may be waiting on this while handling its network's traffic.
        let asked = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.hs.get_presence(viewer.as_deref(), &uid),
        );
        let (state, status) = match asked.await {
            Ok(Ok(p)) => p,
            Err(_) => {
                debug!(user, "no answer about the user's presence in time");
                return None;
            }
            Ok(Err(e)) => {
                debug!(user, error = %crate::error::chain(&e), "could not read the user's presence");
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
            Ok(()) | Err(crate::network::NetworkError::Unsupported(_)) => {}
            Err(e) => {
                debug!(user, error = %crate::error::chain(&e), "could not publish the user's presence")
            }
        }
    }
}
