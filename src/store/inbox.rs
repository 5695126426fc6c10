//! Homeserver transaction dedup and the durable inbox of events waiting to be bridged.
//!
//! Every inbox value is sealed with the store's key: any Matrix message may be the answer to
//! a password prompt in a management room, and sled keeps the bytes of removed records in
//! its files until it compacts them, so nothing may be written in clear in the first place.
//! A sealed value is [`SEALED`] followed by nonce, ciphertext and tag; a value starting with
//! `{` is a plain one written before sealing existed, read as it is (the schema migration to
//! version 3 seals those).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sled::Transactional;

use super::{LoginKey, Store, StoreError, decode, encode};
use crate::network::{NetworkId, RemoteEvent};

/// What the store remembers of a homeserver transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    /// When it was committed, milliseconds since the Unix epoch.
    pub received_ms: u64,
    /// How many items it put in the inbox.
    pub items: u32,
    /// What the transaction carried (see the transaction handler), hex; a transaction with the
    /// same ID and another digest is a new one. Absent in records written before it existed,
    /// which match nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// The sequence number an inbox (or quarantine) key stands for.
pub(super) fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(key.try_into().map_err(|_| {
        StoreError::Decode {
            tree: "inbox",
            reason: "key is not a u64".into(),
        }
    })?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One unit of work waiting in the inbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxItem {
    /// A timeline event from the homeserver.
    Matrix {
        /// The room, used to pick the portal queue.
        room_id: String,
        /// The event as the homeserver sent it.
        event: Box<RawValue>,
    },
    /// An ephemeral event (typing, receipt, presence) from the homeserver.
    Ephemeral {
        /// The room, when the event has one.
        #[serde(default)]
        room_id: Option<String>,
        /// The event as the homeserver sent it.
        event: Box<RawValue>,
    },
    /// An event from a remote network.
    Remote {
        /// The network it came from.
        network: NetworkId,
        /// The event.
        event: Box<RemoteEvent>,
    },
}

/// Result of committing a homeserver transaction.
#[derive(Debug)]
pub enum TxnOutcome {
    /// New: the items are in the inbox under these sequence numbers.
    New(Vec<u64>),
    /// Seen before; nothing was stored.
    Duplicate,
}

/// The first bytes of a sealed inbox value (never the start of JSON).
const SEALED: &[u8] = b"\0sealed1";
/// Associated data of inbox seals. Not the sequence: `import` gives items fresh keys.
const INBOX_PLACE: &[u8] = b"isthmus inbox item";

/// `plain` (an encoded item) as the inbox stores it.
pub(super) fn seal_value(key: &LoginKey, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut out = SEALED.to_vec();
    out.extend_from_slice(&key.seal_bytes(INBOX_PLACE, plain)?);
    Ok(out)
}

/// Whether an inbox value is sealed.
pub(super) fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(SEALED)
}

/// The encoded item in an inbox value, sealed or (written before sealing) plain.
fn open_value(key: &LoginKey, value: &[u8]) -> Result<Vec<u8>, StoreError> {
    match value.strip_prefix(SEALED) {
        Some(sealed) => key.open_bytes(INBOX_PLACE, sealed),
        None => Ok(value.to_vec()),
    }
}

impl Store {
    fn seal_item(&self, item: &InboxItem) -> Result<Vec<u8>, StoreError> {
        seal_value(&self.key, &encode(item))
    }

    /// An item from its stored bytes (in the inbox or the quarantine).
    pub(super) fn open_item(&self, value: &[u8]) -> Result<InboxItem, StoreError> {
        decode("inbox", &open_value(&self.key, value)?)
    }

    /// Commits a homeserver transaction: records `txn_id` with the `digest` of what it carries
    /// and puts `items` into the inbox in one atomic step, then waits until it is on disk. A
    /// transaction seen before (same ID, same digest) stores nothing and returns
    /// [`TxnOutcome::Duplicate`]; the same ID with another digest is a new transaction (a
    /// homeserver that numbers its transactions from 1 again after a restart).
    pub async fn commit_transaction(
        &self,
        txn_id: &str,
        digest: &[u8],
        items: &[InboxItem],
        now_ms: u64,
    ) -> Result<TxnOutcome, StoreError> {
        let encoded: Vec<Vec<u8>> = items
            .iter()
            .map(|i| self.seal_item(i))
            .collect::<Result<_, _>>()?;
        let digest = hex(digest);
        let record = encode(&TxnRecord {
            received_ms: now_ms,
            items: items.len() as u32,
            digest: Some(digest.clone()),
        });
        let mut seqs = Vec::with_capacity(items.len());
        for _ in items {
            seqs.push(self.db.generate_id()?);
        }
        let result = (&self.txns, &self.inbox).transaction(|(txns, inbox)| {
            if let Some(seen) = txns.get(txn_id.as_bytes())? {
                let seen: Option<TxnRecord> = serde_json::from_slice(&seen).ok();
                if seen.and_then(|r| r.digest).as_deref() == Some(digest.as_str()) {
                    return Ok(false);
                }
            }
            txns.insert(txn_id.as_bytes(), record.as_slice())?;
            for (seq, value) in seqs.iter().zip(&encoded) {
                inbox.insert(&seq.to_be_bytes(), value.as_slice())?;
            }
            Ok(true)
        });
        let fresh = self.note(result.map_err(
            |e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
                sled::transaction::TransactionError::Abort(()) => unreachable!("never aborts"),
            },
        ))?;
        if !fresh {
            return Ok(TxnOutcome::Duplicate);
        }
        self.flush().await?;
        Ok(TxnOutcome::New(seqs))
    }

    /// What the store remembers of homeserver transaction `txn_id`.
    pub fn transaction(&self, txn_id: &str) -> Result<Option<TxnRecord>, StoreError> {
        self.txns
            .get(txn_id.as_bytes())?
            .map(|v| decode("txns", &v))
            .transpose()
    }

    /// Whether a homeserver transaction ID was committed before.
    pub fn has_transaction(&self, txn_id: &str) -> Result<bool, StoreError> {
        Ok(self.txns.contains_key(txn_id.as_bytes())?)
    }

    /// Puts one item into the inbox and waits until it is on disk; returns its sequence.
    pub async fn enqueue(&self, item: &InboxItem) -> Result<u64, StoreError> {
        let seq = self.enqueue_unflushed(item)?;
        self.flush().await?;
        Ok(seq)
    }

    /// Puts one item into the inbox without waiting for the disk; returns its sequence. The
    /// caller makes a batch of such items durable with one [`Store::flush`] before anything
    /// relies on them (group commit).
    pub fn enqueue_unflushed(&self, item: &InboxItem) -> Result<u64, StoreError> {
        let sealed = self.seal_item(item)?;
        let written = self
            .db
            .generate_id()
            .and_then(|seq| self.inbox.insert(seq.to_be_bytes(), sealed).map(|_| seq))
            .map_err(StoreError::from);
        self.note(written)
    }

    /// One inbox item, if it is still there.
    pub fn inbox_get(&self, seq: u64) -> Result<Option<InboxItem>, StoreError> {
        self.inbox
            .get(seq.to_be_bytes())?
            .map(|v| self.open_item(&v))
            .transpose()
    }

    /// Every item still in the inbox, oldest first.
    pub fn inbox_pending(&self) -> Result<Vec<(u64, InboxItem)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inbox.iter() {
            let (k, v) = kv?;
            out.push((seq_of(&k)?, self.open_item(&v)?));
        }
        Ok(out)
    }

    /// Removes a handled item.
    pub fn inbox_remove(&self, seq: u64) -> Result<(), StoreError> {
        self.inbox.remove(seq.to_be_bytes())?;
        Ok(())
    }

    /// Items waiting in the inbox.
    pub fn inbox_len(&self) -> usize {
        self.inbox.len()
    }

    /// Forgets transactions committed before `before_ms` whose items were all handled; the
    /// homeserver never retries a transaction that old.
    pub fn prune_transactions(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for kv in self.txns.iter() {
            let (k, v) = kv?;
            let rec: TxnRecord = decode("txns", &v)?;
            if rec.received_ms < before_ms {
                self.txns.remove(k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u32) -> InboxItem {
        InboxItem::Matrix {
            room_id: "!r:hs".into(),
            event: RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap(),
        }
    }

    #[tokio::test]
    async fn duplicate_transaction_stores_nothing() {
        let s = Store::temporary().unwrap();
        let TxnOutcome::New(seqs) = s
            .commit_transaction("1", b"a", &[item(1), item(2)], 5)
            .await
            .unwrap()
        else {
            panic!("first commit must be new");
        };
        assert_eq!(seqs.len(), 2);
        assert!(matches!(
            s.commit_transaction("1", b"a", &[item(3)], 6)
                .await
                .unwrap(),
            TxnOutcome::Duplicate
        ));
        assert_eq!(s.inbox_len(), 2);
        let pending = s.inbox_pending().unwrap();
        assert!(pending[0].0 < pending[1].0, "inbox keeps order");
        s.inbox_remove(seqs[0]).unwrap();
        assert_eq!(s.inbox_len(), 1);
    }

    #[tokio::test]
    async fn a_reused_id_with_other_events_is_a_new_transaction() {
        let s = Store::temporary().unwrap();
        s.commit_transaction("1", b"first", &[item(1)], 5)
            .await
            .unwrap();
        let TxnOutcome::New(seqs) = s
            .commit_transaction("1", b"after a restart", &[item(2)], 6)
            .await
            .unwrap()
        else {
            panic!("the same ID with other events must be new");
        };
        assert_eq!(seqs.len(), 1);
        assert_eq!(s.inbox_len(), 2);
        // The newer one is what a retry is compared with now.
        assert!(matches!(
            s.commit_transaction("1", b"after a restart", &[item(2)], 7)
                .await
                .unwrap(),
            TxnOutcome::Duplicate
        ));
    }

    #[tokio::test]
    async fn transaction_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::reopen(dir.path()).unwrap();
            s.commit_transaction("7", b"d", &[item(1)], 5)
                .await
                .unwrap();
        }
        let s = Store::reopen(dir.path()).unwrap();
        assert!(s.has_transaction("7").unwrap());
        assert_eq!(s.inbox_pending().unwrap().len(), 1);
        assert!(matches!(
            s.commit_transaction("7", b"d", &[item(1)], 6)
                .await
                .unwrap(),
            TxnOutcome::Duplicate
        ));
    }

    /// Every byte of every file under `dir`.
    fn all_file_bytes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(all_file_bytes(&p));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[tokio::test]
    async fn a_password_answer_never_reaches_a_file_in_clear() {
        const PASSWORD: &str = "correct-horse-battery-staple-7d1f";
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::reopen(dir.path()).unwrap();
            let answer = InboxItem::Matrix {
                room_id: "!management:hs".into(),
                event: RawValue::from_string(format!(
                    r#"{{"type":"m.room.message","sender":"@alice:hs","content":{{"msgtype":"m.text","body":"{PASSWORD}"}}}}"#
                ))
                .unwrap(),
            };
            let TxnOutcome::New(seqs) = s
                .commit_transaction("t1", b"t1", &[answer], 5)
                .await
                .unwrap()
            else {
                panic!("new transaction");
            };
            // Handled: read back (the handler sees the password), then removed.
            match s.inbox_get(seqs[0]).unwrap().unwrap() {
                InboxItem::Matrix { event, .. } => assert!(event.get().contains(PASSWORD)),
                other => panic!("unexpected {other:?}"),
            }
            s.enqueue(&InboxItem::Ephemeral {
                room_id: Some("!management:hs".into()),
                event: RawValue::from_string(format!(r#"{{"typing":"{PASSWORD}"}}"#)).unwrap(),
            })
            .await
            .unwrap();
            for (seq, _) in s.inbox_pending().unwrap() {
                s.inbox_remove(seq).unwrap();
            }
            s.flush().await.unwrap();
        }
        // Reopened and dropped again, so sled writes whatever it keeps at shutdown.
        drop(Store::reopen(dir.path()).unwrap());
        let files = all_file_bytes(dir.path());
        assert!(!files.is_empty());
        for (path, bytes) in files {
            assert!(
                !contains(&bytes, PASSWORD.as_bytes()),
                "{} holds the password in clear",
                path.display()
            );
        }
    }

    #[tokio::test]
    async fn plain_items_from_before_sealing_are_still_read() {
        let s = Store::temporary().unwrap();
        s.inbox
            .insert(1u64.to_be_bytes(), encode(&item(1)))
            .unwrap();
        let pending = s.inbox_pending().unwrap();
        assert!(
            matches!(&pending[0].1, InboxItem::Matrix { event, .. } if event.get() == r#"{"n":1}"#)
        );
        let sealed = s.enqueue(&item(2)).await.unwrap();
        let raw = s.inbox.get(sealed.to_be_bytes()).unwrap().unwrap();
        assert!(is_sealed(&raw) && !contains(&raw, br#""n":2"#));
    }

    #[tokio::test]
    async fn prune_forgets_old_transactions() {
        let s = Store::temporary().unwrap();
        s.commit_transaction("old", b"", &[], 10).await.unwrap();
        s.commit_transaction("new", b"", &[], 1000).await.unwrap();
        assert_eq!(s.prune_transactions(500).unwrap(), 1);
        assert!(!s.has_transaction("old").unwrap());
        assert!(s.has_transaction("new").unwrap());
    }
}
