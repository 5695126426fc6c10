//! Portals: remote chats and the Matrix rooms that stand for them.

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::{PortalKey, Store, StoreError, codec, decode, encode};
use crate::network::{ChatKind, LoginId};

/// A portal as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalRecord {
    /// Which remote chat.
    pub key: PortalKey,
    /// The Matrix room.
    pub room_id: String,
    /// Direct or group.
    pub kind: ChatKind,
    /// Room name last set.
    #[serde(default)]
    pub name: Option<String>,
    /// Room topic last set.
    #[serde(default)]
    pub topic: Option<String>,
    /// The login that relays messages of users without their own, when relay mode is on:
    /// (Matrix user, login).
    #[serde(default)]
    pub relay: Option<(String, LoginId)>,
    /// For a fan-out portal: the remote users in the room.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// Encryption was turned on in the room: nothing crosses any more (the bridge cannot
    /// read encrypted messages).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

impl PortalRecord {
    /// A new portal record with no name, topic or relay.
    pub fn new(key: PortalKey, room_id: &str, kind: ChatKind) -> Self {
        Self {
            key,
            room_id: room_id.to_owned(),
            kind,
            name: None,
            topic: None,
            relay: None,
            members: Vec::new(),
            encrypted: false,
        }
    }
}

fn storage(e: sled::transaction::TransactionError<()>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
        sled::transaction::TransactionError::Abort(()) => unreachable!("never aborts"),
    }
}

impl Store {
    /// The portal for a remote chat.
    pub fn portal(&self, key: &PortalKey) -> Result<Option<PortalRecord>, StoreError> {
        self.portals
            .get(key.encode())?
            .map(|v| decode("portals", &v))
            .transpose()
    }

    /// The portal bridged to a room.
    pub fn portal_by_room(&self, room_id: &str) -> Result<Option<PortalRecord>, StoreError> {
        match self.portal_rooms.get(codec::key(&[room_id]))? {
            None => Ok(None),
            Some(k) => self
                .portals
                .get(k)?
                .map(|v| decode("portals", &v))
                .transpose(),
        }
    }

    /// The fan-out portals in a room (one per network at most).
    pub fn fanout_portals(&self, room_id: &str) -> Result<Vec<PortalRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.portal_rooms.scan_prefix(codec::prefix(&[room_id])) {
            let (_, k) = entry?;
            if let Some(v) = self.portals.get(k)? {
                out.push(decode("portals", &v)?);
            }
        }
        Ok(out)
    }

    /// Whether a room has a fan-out portal (its ghosts' events are bridged to the others).
    pub fn has_fanout(&self, room_id: &str) -> bool {
        self.portal_rooms
            .scan_prefix(codec::prefix(&[room_id]))
            .next()
            .is_some()
    }

    /// Inserts or replaces a portal and its room index, atomically. A room has one main
    /// portal (indexed by room ID) and any number of fan-out portals (indexed by room ID and
    /// network).
    pub fn put_portal(&self, portal: &PortalRecord) -> Result<(), StoreError> {
        let key = portal.key.encode();
        let value = encode(portal);
        let index = |p: &PortalRecord| match p.kind {
            ChatKind::Fanout => codec::key(&[&p.room_id, p.key.network.as_str()]),
            _ => codec::key(&[&p.room_id]),
        };
        let room = index(portal);
        (&self.portals, &self.portal_rooms)
            .transaction(|(portals, rooms)| {
                if let Some(old) = portals.insert(key.as_slice(), value.as_slice())?
                    && let Ok(old) = serde_json::from_slice::<PortalRecord>(&old)
                    && old.room_id != portal.room_id
                {
                    rooms.remove(index(&old))?;
                }
                rooms.insert(room.as_slice(), key.as_slice())?;
                Ok(())
            })
            .map_err(storage)
    }

    /// Forgets which portal main room `room_id` stands for (the portal itself stays).
    pub fn unindex_room(&self, room_id: &str) -> Result<(), StoreError> {
        self.portal_rooms.remove(codec::key(&[room_id]))?;
        Ok(())
    }

    /// Removes a portal, its room index and its message map.
    pub fn delete_portal(&self, portal: &PortalRecord) -> Result<(), StoreError> {
        let key = portal.key.encode();
        let room = match portal.kind {
            ChatKind::Fanout => codec::key(&[&portal.room_id, portal.key.network.as_str()]),
            _ => codec::key(&[&portal.room_id]),
        };
        (&self.portals, &self.portal_rooms)
            .transaction(|(portals, rooms)| {
                portals.remove(key.as_slice())?;
                rooms.remove(room.as_slice())?;
                Ok(())
            })
            .map_err(storage)?;
        self.delete_messages_of_portal(portal)
    }

    /// Every portal.
    pub fn list_portals(&self) -> Result<Vec<PortalRecord>, StoreError> {
        self.portals
            .iter()
            .values()
            .map(|v| decode("portals", &v?))
            .collect()
    }

    /// Number of portals.
    pub fn portal_count(&self) -> usize {
        self.portals.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_index_follows_changes() {
        let s = Store::temporary().unwrap();
        let key = PortalKey::new("loopback", "grp", None);
        let mut p = PortalRecord::new(key.clone(), "!a:hs", ChatKind::Group);
        s.put_portal(&p).unwrap();
        assert_eq!(s.portal_by_room("!a:hs").unwrap().unwrap().key, key);
        p.room_id = "!b:hs".into();
        s.put_portal(&p).unwrap();
        assert!(s.portal_by_room("!a:hs").unwrap().is_none());
        assert!(s.portal_by_room("!b:hs").unwrap().is_some());
        assert_eq!(s.list_portals().unwrap().len(), 1);
        s.delete_portal(&p).unwrap();
        assert!(s.portal(&key).unwrap().is_none());
        assert!(s.portal_by_room("!b:hs").unwrap().is_none());
        assert_eq!(s.portal_count(), 0);
    }

    #[test]
    fn fanout_portals_sit_beside_the_main_portal() {
        let s = Store::temporary().unwrap();
        let main = PortalRecord::new(
            PortalKey::new("xmpp", "r@x", None),
            "!a:hs",
            ChatKind::Group,
        );
        let fan = PortalRecord::new(
            PortalKey::new("sip", "~r.x", None),
            "!a:hs",
            ChatKind::Fanout,
        );
        s.put_portal(&main).unwrap();
        assert!(!s.has_fanout("!a:hs"));
        s.put_portal(&fan).unwrap();
        assert_eq!(s.portal_by_room("!a:hs").unwrap().unwrap().key, main.key);
        assert_eq!(s.fanout_portals("!a:hs").unwrap(), vec![fan.clone()]);
        assert!(s.has_fanout("!a:hs"));
        assert!(s.fanout_portals("!a:h").unwrap().is_empty());
        s.delete_portal(&fan).unwrap();
        assert!(!s.has_fanout("!a:hs"));
        assert!(s.portal_by_room("!a:hs").unwrap().is_some());
    }
}
