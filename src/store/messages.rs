//! The message map: Matrix event ID ↔ remote message ID, per portal.

use serde::{Deserialize, Serialize};

use super::{PortalKey, PortalRecord, Store, StoreError, codec, decode, encode};
use crate::network::RemoteMessageId;

/// One bridged message (or edit, or reaction), as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The portal.
    pub portal: PortalKey,
    /// The Matrix room.
    pub room_id: String,
    /// The Matrix event.
    pub event_id: String,
    /// The remote message.
    pub remote_id: RemoteMessageId,
    /// The Matrix user (or ghost) that sent it.
    pub sender: String,
    /// When it was bridged, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// For a reaction: the message reacted to and the key (emoji).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<(RemoteMessageId, String)>,
}

impl Store {
    /// Records a bridged message in both directions of the map.
    ///
    /// Two plain inserts: each is atomic, and the record is on the hot path of every message.
    /// (A sled batch or transaction would take sled's process-wide write lock, stopping every
    /// other reader and writer, and write the log to disk twice on its own.)
    pub fn put_message(&self, m: &MessageRecord) -> Result<(), StoreError> {
        let by_event = codec::key(&[&m.room_id, &m.event_id]);
        self.messages.insert(&by_event, encode(m))?;
        self.messages_remote
            .insert(remote_key(&m.portal, &m.remote_id), by_event)?;
        Ok(())
    }

    /// The bridged message for a Matrix event.
    pub fn message_by_event(
        &self,
        room_id: &str,
        event_id: &str,
    ) -> Result<Option<MessageRecord>, StoreError> {
        self.messages
            .get(codec::key(&[room_id, event_id]))?
            .map(|v| decode("messages", &v))
            .transpose()
    }

    /// The bridged message for a remote message in a portal.
    pub fn message_by_remote(
        &self,
        portal: &PortalKey,
        remote_id: &RemoteMessageId,
    ) -> Result<Option<MessageRecord>, StoreError> {
        match self.messages_remote.get(remote_key(portal, remote_id))? {
            None => Ok(None),
            Some(k) => self
                .messages
                .get(k)?
                .map(|v| decode("messages", &v))
                .transpose(),
        }
    }

    /// Makes `alias` a second remote ID of an already bridged message.
    pub fn put_remote_alias(
        &self,
        m: &MessageRecord,
        alias: &RemoteMessageId,
    ) -> Result<(), StoreError> {
        self.messages_remote.insert(
            remote_key(&m.portal, alias),
            codec::key(&[&m.room_id, &m.event_id]),
        )?;
        Ok(())
    }

    /// Forgets a bridged message.
    pub fn delete_message(&self, m: &MessageRecord) -> Result<(), StoreError> {
        self.messages
            .remove(codec::key(&[&m.room_id, &m.event_id]))?;
        self.messages_remote
            .remove(remote_key(&m.portal, &m.remote_id))?;
        Ok(())
    }

    /// Remembers that Matrix event `event_id` reached `portal`, where there is no remote
    /// message to map it to (a fan-out chat's members each get their own copy).
    pub fn mark_delivered(&self, portal: &PortalKey, event_id: &str) -> Result<(), StoreError> {
        self.messages_remote
            .insert(delivered_key(portal, event_id), &[] as &[u8])?;
        Ok(())
    }

    /// Whether [`Store::mark_delivered`] was called for this event and portal.
    pub fn delivered(&self, portal: &PortalKey, event_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .messages_remote
            .contains_key(delivered_key(portal, event_id))?)
    }

    /// How far message `id` (a Matrix event ID, or `remote:` and a remote message ID) got in
    /// `portal` when it was sent in parts and a try stopped part-way: what the sender needs
    /// to go on after the parts delivered. Kept until the message went out whole (or failed
    /// for good).
    pub fn parts_progress<T: serde::de::DeserializeOwned>(
        &self,
        portal: &PortalKey,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        self.messages_remote
            .get(parts_key(portal, id))?
            .map(|v| decode("messages_remote", &v))
            .transpose()
    }

    /// Records how far message `id` got in `portal` (see [`Store::parts_progress`]).
    pub fn put_parts_progress<T: Serialize>(
        &self,
        portal: &PortalKey,
        id: &str,
        progress: &T,
    ) -> Result<(), StoreError> {
        self.messages_remote
            .insert(parts_key(portal, id), encode(progress))?;
        Ok(())
    }

    /// Forgets how far message `id` got in `portal`.
    pub fn delete_parts_progress(&self, portal: &PortalKey, id: &str) -> Result<(), StoreError> {
        self.messages_remote.remove(parts_key(portal, id))?;
        Ok(())
    }

    pub(super) fn delete_messages_of_portal(&self, p: &PortalRecord) -> Result<(), StoreError> {
        // Only this portal's records: a room may hold other portals (fan-out ones) too.
        for kv in self.messages.scan_prefix(codec::prefix(&[&p.room_id])) {
            let (k, v) = kv?;
            if decode::<MessageRecord>("messages", &v).is_ok_and(|m| m.portal == p.key) {
                self.messages.remove(k)?;
            }
        }
        let mut portal_prefix = p.key.encode();
        portal_prefix.push(codec::SEP);
        for kv in self.messages_remote.scan_prefix(portal_prefix) {
            let (k, _) = kv?;
            self.messages_remote.remove(k)?;
        }
        Ok(())
    }
}

/// A delivery mark lives beside the remote IDs, under a prefix no remote ID starts with.
fn delivered_key(portal: &PortalKey, event_id: &str) -> Vec<u8> {
    remote_key(
        portal,
        &RemoteMessageId::new(format!("\u{1e}delivered\u{1e}{event_id}")),
    )
}

/// A message's progress in parts lives there too, under a prefix of its own.
fn parts_key(portal: &PortalKey, id: &str) -> Vec<u8> {
    remote_key(
        portal,
        &RemoteMessageId::new(format!("\u{1e}parts\u{1e}{id}")),
    )
}

fn remote_key(portal: &PortalKey, remote_id: &RemoteMessageId) -> Vec<u8> {
    let mut k = portal.encode();
    k.push(codec::SEP);
    k.extend_from_slice(remote_id.as_str().as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::ChatKind;

    #[test]
    fn deleting_a_fanout_portal_keeps_the_rooms_other_messages() {
        let s = Store::temporary().unwrap();
        let main = PortalRecord::new(PortalKey::new("a", "chat", None), "!r:hs", ChatKind::Group);
        let fan = PortalRecord::new(PortalKey::new("b", "~r", None), "!r:hs", ChatKind::Fanout);
        s.put_message(&MessageRecord {
            portal: main.key.clone(),
            room_id: "!r:hs".into(),
            event_id: "$e1".into(),
            remote_id: RemoteMessageId::new("m1"),
            sender: "@u:hs".into(),
            timestamp_ms: 1,
            reaction: None,
        })
        .unwrap();
        assert!(!s.delivered(&fan.key, "$e1").unwrap());
        s.mark_delivered(&fan.key, "$e1").unwrap();
        assert!(s.delivered(&fan.key, "$e1").unwrap());
        assert!(!s.delivered(&main.key, "$e1").unwrap());
        s.delete_messages_of_portal(&fan).unwrap();
        assert!(!s.delivered(&fan.key, "$e1").unwrap());
        assert!(s.message_by_event("!r:hs", "$e1").unwrap().is_some());
        assert!(
            s.message_by_remote(&main.key, &RemoteMessageId::new("m1"))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn both_directions_and_portal_cleanup() {
        let s = Store::temporary().unwrap();
        let key = PortalKey::new("loopback", "bob", Some("@alice:hs"));
        let m = MessageRecord {
            portal: key.clone(),
            room_id: "!r:hs".into(),
            event_id: "$e1".into(),
            remote_id: RemoteMessageId::new("lb-1"),
            sender: "@alice:hs".into(),
            timestamp_ms: 1,
            reaction: None,
        };
        s.put_message(&m).unwrap();
        assert_eq!(s.message_by_event("!r:hs", "$e1").unwrap(), Some(m.clone()));
        assert_eq!(
            s.message_by_remote(&key, &RemoteMessageId::new("lb-1"))
                .unwrap(),
            Some(m.clone())
        );
        // Another portal with the same chat but another receiver does not see it.
        let other = PortalKey::new("loopback", "bob", Some("@carol:hs"));
        assert!(
            s.message_by_remote(&other, &RemoteMessageId::new("lb-1"))
                .unwrap()
                .is_none()
        );
        s.put_remote_alias(&m, &RemoteMessageId::new("stanza-1"))
            .unwrap();
        assert_eq!(
            s.message_by_remote(&key, &RemoteMessageId::new("stanza-1"))
                .unwrap(),
            Some(m.clone()),
            "an alias finds the same message"
        );
        s.delete_portal(&PortalRecord::new(key.clone(), "!r:hs", ChatKind::Direct))
            .unwrap();
        assert!(s.message_by_event("!r:hs", "$e1").unwrap().is_none());
        assert!(
            s.message_by_remote(&key, &RemoteMessageId::new("lb-1"))
                .unwrap()
                .is_none()
        );
    }
}
