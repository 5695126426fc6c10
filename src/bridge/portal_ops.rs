//! Changes to portals, each made on the portal's own queue.
//!
//! A portal's record (and the room it stands for) changes only on the portal's queue, so that
//! every change is ordered with the portal's remote events: a remote message and a
//! `start-chat` for the same contact cannot both find no portal and create a room each. The
//! handlers of a portal's own items write through `Portals::save` and its siblings
//! (`portals/mod.rs`), which check where they run; everything else (commands, the provisioning API, alias
//! queries, the Matrix events of a room about another portal of that room) calls the
//! operations below, which hand the change to the portal's queue as a job
//! ([`Bridge::on_portal_queue`]) and wait for its answer. A job reads the record again on the
//! queue: what its caller saw before may have changed meanwhile.

use tracing::warn;

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
            if let Some(p) = b.portals.get(&key)? {
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
            if let Some(p) = b.portals.get(&key)? {
                return Ok((p, false));
            }
            let p = b
                .portals
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
            if let Some(existing) = b.portals.get(&job_key)? {
                return Ok(Bridged::Already {
                    room_id: existing.room_id,
                });
            }
            let record = PortalRecord::new(job_key, &room, crate::network::ChatKind::Group);
            b.portals.save(&record)?;
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
            let Some(before) = b.portals.in_room(&job_key, &room)? else {
                return Ok(None);
            };
            let mut after = before.clone();
            let answer = edit(&mut after);
            if after != before {
                b.portals.save(&after)?;
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
            let Some(portal) = b.portals.in_room(&job_key, &room)? else {
                return Ok(false);
            };
            if leave {
                b.delete_portal(&portal).await?;
            } else {
                b.portals.forget(&portal)?;
            }
            Ok(true)
        })
        .await
    }
}
