//! Items set aside after failing too often, so that they no longer hold their portal's queue.
//!
//! An item moves from the inbox to `quarantine` with its inbox bytes unchanged (however the
//! inbox stores them), under the same sequence number, and `quarantine_why` records why. An
//! admin lists them and sends them back to the inbox (`quarantine` bot command); nothing here
//! deletes an item.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, encode};
use crate::store::InboxItem;

/// Why an item was set aside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// The last error, as a user reads it.
    pub error: String,
    /// How many times handling it failed.
    pub attempts: u32,
    /// When it was set aside, milliseconds since the Unix epoch.
    pub since_ms: u64,
}

impl Store {
    /// Moves inbox item `seq` into the quarantine, atomically, and waits until it is on disk.
    /// An item no longer in the inbox is left alone.
    pub async fn quarantine(&self, seq: u64, why: &QuarantineRecord) -> Result<(), StoreError> {
        use sled::Transactional;
        let key = seq.to_be_bytes();
        let why = encode(why);
        (&self.inbox, &self.quarantine, &self.quarantine_why)
            .transaction(|(inbox, items, reasons)| {
                if let Some(bytes) = inbox.remove(&key)? {
                    items.insert(&key, bytes)?;
                    reasons.insert(&key, why.as_slice())?;
                }
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
                sled::transaction::TransactionError::Abort(()) => unreachable!("never aborts"),
            })?;
        self.flush().await
    }

    /// Every item in the quarantine, oldest first, with why it is there.
    pub fn quarantined(&self) -> Result<Vec<(u64, InboxItem, QuarantineRecord)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.quarantine.iter() {
            let (k, v) = kv?;
            let seq = super::inbox::seq_of(&k)?;
            let why = match self.quarantine_why.get(&k)? {
                Some(w) => decode("quarantine_why", &w)?,
                None => QuarantineRecord {
                    error: "unknown".into(),
                    attempts: 0,
                    since_ms: 0,
                },
            };
            out.push((seq, self.open_item(&v)?, why));
        }
        Ok(out)
    }

    /// How many items are in the quarantine.
    pub fn quarantine_len(&self) -> usize {
        self.quarantine.len()
    }

    /// Sends quarantined item `seq` back to the inbox under a new sequence number (so that it
    /// goes after what arrived meanwhile), atomically; returns the new number and the item,
    /// or `None` when there is no such item.
    pub async fn release(&self, seq: u64) -> Result<Option<(u64, InboxItem)>, StoreError> {
        use sled::Transactional;
        let key = seq.to_be_bytes();
        let Some(bytes) = self.quarantine.get(key)? else {
            return Ok(None);
        };
        let item = self.open_item(&bytes)?;
        let new = self.db.generate_id()?;
        (&self.inbox, &self.quarantine, &self.quarantine_why)
            .transaction(|(inbox, items, reasons)| {
                if let Some(bytes) = items.remove(&key)? {
                    inbox.insert(&new.to_be_bytes(), bytes)?;
                    reasons.remove(&key)?;
                }
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
                sled::transaction::TransactionError::Abort(()) => unreachable!("never aborts"),
            })?;
        self.flush().await?;
        Ok(Some((new, item)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn item(n: u32) -> InboxItem {
        InboxItem::Matrix {
            room_id: "!r:hs".into(),
            event: RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap(),
        }
    }

    #[tokio::test]
    async fn quarantined_items_are_kept_and_released_behind_newer_ones() {
        let s = Store::temporary().unwrap();
        let a = s.enqueue(&item(1)).await.unwrap();
        let why = QuarantineRecord {
            error: "boom".into(),
            attempts: 10,
            since_ms: 5,
        };
        s.quarantine(a, &why).await.unwrap();
        assert_eq!(s.inbox_len(), 0);
        let listed = s.quarantined().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].0, &listed[0].2), (a, &why));
        let b = s.enqueue(&item(2)).await.unwrap();
        let (new, back) = s.release(a).await.unwrap().expect("released");
        assert!(new > b, "a released item goes after what arrived meanwhile");
        assert!(matches!(back, InboxItem::Matrix { .. }));
        assert_eq!(s.quarantine_len(), 0);
        assert_eq!(s.inbox_len(), 2);
        assert!(s.release(a).await.unwrap().is_none());
    }
}
