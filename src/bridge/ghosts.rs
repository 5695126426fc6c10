//! [`Ghosts`]: the Matrix users standing for remote users, and everything the bridge keeps
//! about them. A ghost is registered on first use and its profile written only when it
//! changed; which rooms it (or the bot) is in is remembered, and its presence kept alive
//! (`presence.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::{BridgeError, keyed, room_id, user_id};
use crate::config::Config;
use crate::matrix::{HomeserverClient, escape};
use crate::metrics::Metrics;
use crate::network::{Connector, NetworkId, RemoteUserId};
use crate::store::{AvatarUpload, GhostRecord, Store};

mod joined;
mod presence;

/// Largest remote avatar the bridge uploads (and largest Matrix avatar handed to a network).
pub(super) const AVATAR_MAX_BYTES: usize = 1 << 20;

/// The ghosts: their names, records, profiles, room memberships and presence. Holds its own
/// handles on the store and the homeserver, so the core's event handlers ask it by name
/// (`self.ghosts.ensure(..)`) and nothing else writes a ghost.
pub(super) struct Ghosts {
    store: Store,
    hs: HomeserverClient,
    metrics: Metrics,
    /// The enabled networks, for their default names and display names.
    networks: BTreeMap<NetworkId, Arc<dyn Connector>>,
    /// `bridge.ghost_localpart_template`.
    localpart_template: String,
    /// `bridge.ghost_displayname_template`.
    displayname_template: String,
    /// The homeserver's server name.
    server_name: String,
    /// One lock per ghost, held while its record or presence is changed (portals share
    /// ghosts).
    locks: keyed::KeyedLocks,
    /// Which ghosts (and the bot) are known to be in which rooms, to avoid repeating joins.
    joined: joined::Joined,
    /// Ghosts shown online or away, whose presence is set again before it lapses.
    presence: presence::LivePresence,
}

impl Ghosts {
    /// The ghosts of `networks`, named and shown as `config` says.
    pub(super) fn new(
        config: &Config,
        hs: HomeserverClient,
        store: Store,
        metrics: Metrics,
        networks: BTreeMap<NetworkId, Arc<dyn Connector>>,
    ) -> Self {
        Ghosts {
            store,
            hs,
            metrics,
            networks,
            localpart_template: config.bridge.ghost_localpart_template.clone(),
            displayname_template: config.bridge.ghost_displayname_template.clone(),
            server_name: config.homeserver.domain.clone(),
            locks: keyed::KeyedLocks::default(),
            joined: joined::Joined::default(),
            presence: presence::LivePresence::default(),
        }
    }

    /// The Matrix user ID of the ghost of `remote` on `network`.
    pub(super) fn user_id(&self, network: &NetworkId, remote: &str) -> String {
        let local = self
            .localpart_template
            .replace("{network}", network.as_str())
            .replace("{id}", &escape::escape_localpart(remote));
        format!("@{}:{}", local, self.server_name)
    }

    /// The network and remote ID a ghost user ID stands for, if it is one of ours.
    pub(super) fn parse(&self, user_id: &str) -> Option<(NetworkId, String)> {
        let (local, server) = user_id.strip_prefix('@')?.split_once(':')?;
        if server != self.server_name {
            return None;
        }
        super::parse_template(&self.localpart_template, local, &self.networks)
    }

    /// Whether `user_id` is shaped like a ghost of an enabled network. Cheaper than
    /// [`Ghosts::parse`] (no unescaping).
    pub(super) fn in_namespace(&self, user_id: &str) -> bool {
        let Some((local, server)) = user_id.strip_prefix('@').and_then(|u| u.split_once(':'))
        else {
            return false;
        };
        server == self.server_name
            && self.networks.keys().any(|n| {
                let t = self.localpart_template.replace("{network}", n.as_str());
                t.split_once("{id}").is_some_and(|(before, after)| {
                    local.len() > before.len() + after.len()
                        && local.starts_with(before)
                        && local.ends_with(after)
                })
            })
    }

    /// The connector of `network`.
    fn network(&self, network: &NetworkId) -> Result<&Arc<dyn Connector>, BridgeError> {
        self.networks.get(network).ok_or_else(|| {
            BridgeError::Invalid(
                format!("the network {network} is not enabled on this bridge").into(),
            )
        })
    }

    /// Makes sure the ghost of `remote` exists on the homeserver with an up-to-date display
    /// name; returns its user ID. `name` is the remote display name; `None` means unchanged
    /// (a new ghost then gets the network's default name).
    ///
    /// A ghost is shared by every portal its remote user speaks in, and portals run on
    /// queues of their own: changes to its record are made under the ghost's lock, so that
    /// one portal's write never undoes another's (a name written over a new avatar, say).
    pub(super) async fn ensure(
        &self,
        network: &NetworkId,
        remote: &RemoteUserId,
        name: Option<&str>,
    ) -> Result<String, BridgeError> {
        let mxid = self.user_id(network, remote.as_str());
        // The hot path: a known ghost whose name has not changed takes no lock.
        if let Some(record) = self.store.ghost(&mxid)?
            && record.registered
            && self.wanted_name(&record, network, remote, name)?.is_none()
        {
            return Ok(mxid);
        }
        let _ghost = self.locks.lock(&mxid).await;
        self.ensure_locked(&mxid, network, remote, name)
            .await
            .map(drop)?;
        Ok(mxid)
    }

    /// [`Ghosts::ensure`] with the ghost's lock held; returns the ghost's record as
    /// stored.
    async fn ensure_locked(
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
            .displayname_template
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
    pub(super) async fn set_avatar(
        &self,
        network: &NetworkId,
        remote: &RemoteUserId,
        name: Option<&str>,
        hash: &str,
        data: Option<&[u8]>,
    ) -> Result<&'static str, BridgeError> {
        let mxid = self.user_id(network, remote.as_str());
        let _ghost = self.locks.lock(&mxid).await;
        let mut record = self.ensure_locked(&mxid, network, remote, name).await?;
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

    /// Joins `ghost` to `room` unless it is known to be there already.
    pub(super) async fn ensure_joined(&self, ghost: &str, room: &str) -> Result<(), BridgeError> {
        self.ensure_joined_via(ghost, room, None).await
    }

    /// Makes `ghost` join `room`; when it was not invited, `inviter` (a member with the
    /// power to invite, such as the ghost that created a direct chat) or else the bot invites
    /// it first.
    pub(super) async fn ensure_joined_via(
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

    /// Makes `ghost` (or the bot) leave `room`.
    pub(super) async fn leave(&self, ghost: &str, room: &str) -> Result<(), BridgeError> {
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
