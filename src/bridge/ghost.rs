//! Ghosts: Matrix users standing for remote users. Registered on first use, profile written
//! only when it changed.

use tracing::{debug, info, warn};

use super::{Bridge, BridgeError, room_id, user_id};
use crate::network::{NetworkId, RemoteUserId};
use crate::store::{AvatarUpload, GhostRecord};

/// Largest remote avatar the bridge uploads.
const AVATAR_MAX_BYTES: usize = 1 << 20;

impl Bridge {
    /// Makes sure the ghost of `remote` exists on the homeserver with an up-to-date display
    /// name; returns its user ID. `name` is the remote display name; `None` means unchanged
    /// (a new ghost then gets the network's default name).
    ///
    /// A ghost is shared by every portal its remote user speaks in, and portals run on
    /// queues of their own: changes to its record are made under the ghost's lock, so that
    /// one portal's write never undoes another's (a name written over a new avatar, say).
    pub async fn ensure_ghost(
        &self,
        network: &NetworkId,
        remote: &RemoteUserId,
        name: Option<&str>,
    ) -> Result<String, BridgeError> {
        let mxid = self.ghost_user_id(network, remote.as_str());
        // The hot path: a known ghost whose name has not changed takes no lock.
        if let Some(record) = self.store.ghost(&mxid)?
            && record.registered
            && self.wanted_name(&record, network, remote, name)?.is_none()
        {
            return Ok(mxid);
        }
        let _ghost = self.ghost_locks.lock(&mxid).await;
        self.ensure_ghost_locked(&mxid, network, remote, name)
            .await
            .map(drop)?;
        Ok(mxid)
    }

    /// [`Bridge::ensure_ghost`] with the ghost's lock held; returns the ghost's record as
    /// stored.
    async fn ensure_ghost_locked(
        &self,
        mxid: &str,
        network: &NetworkId,
        remote: &RemoteUserId,
        name: Option<&str>,
    ) -> Result<GhostRecord, BridgeError> {
        let existing = self.store.ghost(mxid)?;
        let mut record = existing.clone().unwrap_or_else(|| GhostRecord {
            user_id: mxid.to_owned(),
            network: network.to_string(),
            remote_id: remote.to_string(),
            displayname: None,
            avatar_url: None,
            avatar_hash: None,
            avatar_upload: None,
            registered: false,
        });
        if !record.registered {
            let local = mxid
                .strip_prefix('@')
                .and_then(|s| s.split_once(':'))
                .map(|(l, _)| l)
                .unwrap_or_default();
            self.hs.register_ghost(local).await?;
            record.registered = true;
            info!(ghost = %mxid, network = %network, "registered ghost");
        }
        if let Some(displayname) = self.wanted_name(&record, network, remote, name)? {
            let uid = user_id(mxid)?;
            self.hs.set_displayname(Some(&uid), &displayname).await?;
            debug!(ghost = %mxid, name = %displayname, "updated ghost display name");
            record.displayname = Some(displayname);
        }
        if existing.as_ref() != Some(&record) {
            self.store.put_ghost(&record)?;
        }
        Ok(record)
    }

    /// The display name the ghost should get, or `None` when the one it has is right: the
    /// remote name in the configured template; without a remote name, the name the ghost has
    /// (it may have come from a profile), else the network's default for the user.
    fn wanted_name(
        &self,
        record: &GhostRecord,
        network: &NetworkId,
        remote: &RemoteUserId,
        name: Option<&str>,
    ) -> Result<Option<String>, BridgeError> {
        let base_name = match name {
            Some(n) if !n.trim().is_empty() => n.trim().to_owned(),
            _ if record.displayname.is_some() => return Ok(None),
            _ => self.network(network)?.default_display_name(remote),
        };
        let displayname = self
            .config
            .bridge
            .ghost_displayname_template
            .replace("{name}", &base_name)
            .replace("{network}", &self.network(network)?.info().display_name);
        Ok((record.displayname.as_deref() != Some(displayname.as_str())).then_some(displayname))
    }

    /// Sets the avatar of the ghost of `remote` from the network's picture, unless the ghost
    /// already shows the picture with this hash. Returns what happened, for the metrics.
    ///
    /// Made under the ghost's lock, so two portals that learn of the same picture at once
    /// upload it once. The uploaded file is recorded before the profile is changed: when the
    /// change fails after the homeserver applied it (a timeout, say) and the event is tried
    /// again, the retry sets the same file instead of uploading the picture a second time.
    pub async fn set_ghost_avatar(
        &self,
        network: &NetworkId,
        remote: &RemoteUserId,
        name: Option<&str>,
        hash: &str,
        data: Option<&[u8]>,
    ) -> Result<&'static str, BridgeError> {
        let mxid = self.ghost_user_id(network, remote.as_str());
        let _ghost = self.ghost_locks.lock(&mxid).await;
        let mut record = self
            .ensure_ghost_locked(&mxid, network, remote, name)
            .await?;
        if record.avatar_hash.as_deref() == Some(hash) {
            return Ok("unchanged");
        }
        let uid = user_id(&mxid)?;
        let url = match data {
            None => None,
            Some(_)
                if record
                    .avatar_upload
                    .as_ref()
                    .is_some_and(|u| u.hash == hash) =>
            {
                record.avatar_upload.as_ref().map(|u| u.url.clone())
            }
            Some(bytes) => {
                if bytes.len() > AVATAR_MAX_BYTES {
                    warn!(ghost = %mxid, bytes = bytes.len(), "avatar too large; not set");
                    return Ok("too_large");
                }
                let Some(mimetype) = crate::media::sniff(bytes).filter(|m| m.starts_with("image/"))
                else {
                    warn!(ghost = %mxid, "avatar is not a known image format; not set");
                    return Ok("not_an_image");
                };
                let url = self
                    .hs
                    .upload(Some(&uid), bytes.to_vec(), mimetype, "avatar")
                    .await?;
                record.avatar_upload = Some(AvatarUpload {
                    hash: hash.to_owned(),
                    url: url.clone(),
                });
                self.store.put_ghost(&record)?;
                Some(url)
            }
        };
        self.hs.set_avatar_url(Some(&uid), url.as_deref()).await?;
        debug!(ghost = %mxid, avatar = ?url, "updated ghost avatar");
        record.avatar_url = url;
        record.avatar_hash = Some(hash.to_owned());
        record.avatar_upload = None;
        self.store.put_ghost(&record)?;
        Ok("ok")
    }

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
                    Ok((bytes, _)) if bytes.len() <= AVATAR_MAX_BYTES => {
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

    /// Joins `ghost` to `room` unless it is known to be there already.
    pub async fn ensure_joined(&self, ghost: &str, room: &str) -> Result<(), BridgeError> {
        self.ensure_joined_via(ghost, room, None).await
    }

    /// Makes `ghost` join `room`; when it was not invited, `inviter` (a member with the
    /// power to invite, such as the ghost that created a direct chat) or else the bot invites
    /// it first.
    pub async fn ensure_joined_via(
        &self,
        ghost: &str,
        room: &str,
        inviter: Option<&str>,
    ) -> Result<(), BridgeError> {
        if self.joined.contains(ghost, room) {
            return Ok(());
        }
        let uid = user_id(ghost)?;
        match self.hs.join(Some(&uid), room).await {
            Ok(_) => {}
            Err(e) if e.errcode() == Some("M_FORBIDDEN") => {
                // A private room the ghost was not invited to: the bot invites it, when the
                // bot is in the room (group portals).
                debug!(ghost, room, inviter, "ghost not invited; inviting it");
                let by = inviter.map(user_id).transpose()?;
                let rid = room_id(room)?;
                match self.hs.invite(by.as_deref(), &rid, &uid).await {
                    // The inviter may have left or lost the power: the bot tries.
                    Err(e) if by.is_some() && e.errcode() == Some("M_FORBIDDEN") => {
                        debug!(ghost, room, error = %crate::error::chain(&e), "the inviter could not invite; the bot tries");
                        self.hs.invite(None, &rid, &uid).await?;
                    }
                    r => r?,
                }
                self.hs.join(Some(&uid), room).await?;
            }
            Err(e) => return Err(e.into()),
        }
        self.joined.note(ghost, room, true);
        Ok(())
    }

    /// Remembers that `user` is in `room` (or no longer is).
    pub(super) fn note_joined(&self, user: &str, room: &str, joined: bool) {
        self.joined.note(user, room, joined);
    }

    /// Makes `ghost` leave `room`.
    pub async fn ghost_leave(&self, ghost: &str, room: &str) -> Result<(), BridgeError> {
        let uid = user_id(ghost)?;
        let rid = room_id(room)?;
        self.note_joined(ghost, room, false);
        match self.hs.leave(Some(&uid), &rid).await {
            Ok(()) => Ok(()),
            Err(e) if e.errcode() == Some("M_FORBIDDEN") || e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
