//! Changes to portals, each made on the portal's own queue.
//!
//! A portal's record (and the room it stands for) changes only on the portal's queue, so that
//! every change is ordered with the portal's remote events: a remote message and a
//! `start-chat` for the same contact cannot both find no portal and create a room each. The
//! handlers of a portal's own items write through [`Bridge::save_portal`] and its siblings,
//! which check where they run; everything else (commands, the provisioning API, alias
//! queries, the Matrix events of a room about another portal of that room) calls the
//! operations below, which hand the change to the portal's queue as a job
//! ([`Bridge::on_portal_queue`]) and wait for its answer. A job reads the record again on the
//! queue: what its caller saw before may have changed meanwhile.

use tracing::{error, warn};

use super::dispatch::on_queue_of;
use super::{Bridge, BridgeError};
use crate::network::{NetworkId, RemoteUserId};
use crate::store::{PortalKey, PortalRecord};

/// What [`Bridge::bridge_room`] did.
#[derive(Debug)]
pub enum Bridged {
    /// The room is bridged to the chat now.
    Now(PortalRecord),
    /// The chat is bridged to another room already; nothing changed.
    Already {
        /// That room.
        room_id: String,
    },
}

impl Bridge {
    /// Stores a portal's record and its room index. Only on the portal's queue.
    pub(super) fn save_portal(&self, record: &PortalRecord) -> Result<(), BridgeError> {
        self.check_on_queue(&record.key, "stored");
        self.store.put_portal(record)?;
        Ok(())
    }

    /// Forgets a portal's record, its room index and its message map (the room stays as it
    /// is). Only on the portal's queue.
    pub(super) fn forget_portal(&self, record: &PortalRecord) -> Result<(), BridgeError> {
        self.check_on_queue(&record.key, "forgotten");
        self.store.delete_portal(record)?;
        Ok(())
    }

    /// Forgets that main room `room` stands for portal `key` (the record stays). Only on the
    /// portal's queue.
    pub(super) fn unindex_portal_room(
        &self,
        key: &PortalKey,
        room: &str,
    ) -> Result<(), BridgeError> {
        self.check_on_queue(key, "unindexed");
        self.store.unindex_room(room)?;
        Ok(())
    }

    /// Logs (and in debug builds, panics on) a change of portal `key` made off its queue: a
    /// bug that lets a concurrent event of the portal create a second room or undo the change.
    fn check_on_queue(&self, key: &PortalKey, what: &str) {
        let on_queue = on_queue_of(key);
        if !on_queue {
            error!(portal = %key, what, "a portal changed off its queue");
        }
        debug_assert!(on_queue, "portal {key} {what} off its queue");
    }

    /// The portal `key` as stored now, if it still stands for Matrix room `room`.
    fn portal_in_room(
        &self,
        key: &PortalKey,
        room: &str,
    ) -> Result<Option<PortalRecord>, BridgeError> {
        Ok(self.store.portal(key)?.filter(|p| p.room_id == room))
    }

    /// The direct chat between Matrix user `receiver` and remote `contact`, its room created
    /// if missing; and whether it was created now.
    pub async fn open_direct_chat(
        &self,
        network: &NetworkId,
        contact: &RemoteUserId,
        receiver: &str,
    ) -> Result<(PortalRecord, bool), BridgeError> {
        let key = PortalKey::new(network.as_str(), contact.as_str(), Some(receiver));
        let receiver = receiver.to_owned();
        self.on_portal_queue(&key.clone(), move |b| async move {
            if let Some(p) = b.store.portal(&key)? {
                return Ok((p, false));
            }
            Ok((b.create_dm_portal(&key, &receiver, None).await?, true))
        })
        .await
    }

    /// The portal of group chat `key`, its room created if missing (named `name`, public
    /// under the alias `#alias_localpart:server`); and whether it was created now.
    pub async fn open_group_chat(
        &self,
        key: &PortalKey,
        name: Option<String>,
        alias_localpart: String,
    ) -> Result<(PortalRecord, bool), BridgeError> {
        let job_key = key.clone();
        self.on_portal_queue(key, move |b| async move {
            let key = job_key;
            if let Some(p) = b.store.portal(&key)? {
                return Ok((p, false));
            }
            let p = b
                .create_group_portal(
                    &key,
                    name.as_deref(),
                    None,
                    Some(alias_localpart),
                    Vec::new(),
                )
                .await?;
            Ok((p, true))
        })
        .await
    }

    /// Bridges Matrix room `room` to group chat `key`: the network learns the room's members
    /// and the room gets the bridge info (both best effort).
    pub async fn bridge_room(&self, key: &PortalKey, room: &str) -> Result<Bridged, BridgeError> {
        let job_key = key.clone();
        let room = room.to_owned();
        self.on_portal_queue(key, move |b| async move {
            if let Some(existing) = b.store.portal(&job_key)? {
                return Ok(Bridged::Already {
                    room_id: existing.room_id,
                });
            }
            let record = PortalRecord::new(job_key, &room, crate::network::ChatKind::Group);
            b.save_portal(&record)?;
            if let Err(e) = b.join_members(&record).await {
                warn!(error = %crate::error::chain(&e), "could not join the room's members to the group chat");
            }
            if let Err(e) = b.write_bridge_info(&record, None).await {
                warn!(error = %crate::error::chain(&e), "could not write bridge info (the bot may lack power in this room)");
            }
            Ok(Bridged::Now(record))
        })
        .await
    }

    /// Changes portal `key` with `edit` if it still stands for Matrix room `room`, and stores
    /// it when `edit` changed it; `None` when the portal no longer stands for the room.
    pub async fn edit_portal<T, F>(
        &self,
        key: &PortalKey,
        room: &str,
        edit: F,
    ) -> Result<Option<T>, BridgeError>
    where
        T: Send + 'static,
        F: FnOnce(&mut PortalRecord) -> T + Send + 'static,
    {
        let job_key = key.clone();
        let room = room.to_owned();
        self.on_portal_queue(key, move |b| async move {
            let Some(before) = b.portal_in_room(&job_key, &room)? else {
                return Ok(None);
            };
            let mut after = before.clone();
            let answer = edit(&mut after);
            if after != before {
                b.save_portal(&after)?;
            }
            Ok(Some(answer))
        })
        .await
    }

    /// Removes portal `key` if it still stands for Matrix room `room`. With `leave`, its
    /// ghosts and the bot leave the room too (`Bridge::delete_portal`); without, only the
    /// bridge forgets it and the room stays as it is. Returns whether there was such a portal.
    pub async fn remove_portal(
        &self,
        key: &PortalKey,
        room: &str,
        leave: bool,
    ) -> Result<bool, BridgeError> {
        let job_key = key.clone();
        let room = room.to_owned();
        self.on_portal_queue(key, move |b| async move {
            let Some(portal) = b.portal_in_room(&job_key, &room)? else {
                return Ok(false);
            };
            if leave {
                b.delete_portal(&portal).await?;
            } else {
                b.forget_portal(&portal)?;
            }
            Ok(true)
        })
        .await
    }
}
