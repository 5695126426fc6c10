//! The embedded store (sled): every mapping the bridge keeps, and the durable inbox.
//!
//! Only this module imports `sled`. Each table lives in its own file with the methods that read
//! and write it; keys are built by `codec`. Values are JSON so that `export` and `import`
//! can dump and restore them, and so that fields can be added without a migration.
//!
//! Every inbox item and the data of every login are sealed with the store's [`LoginKey`]
//! (see `seal.rs`): passwords typed in a management room and credentials never reach a file
//! in clear, neither as live records nor as the old versions sled keeps until it compacts.
//! The store folder is owner-only (see `files.rs`).
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | `schema_version` | u32, big endian |
//! | `txns` | homeserver transaction ID | [`TxnRecord`] |
//! | `inbox` | u64 sequence, big endian | [`InboxItem`], sealed |
//! | `ghosts` | ghost user ID | [`GhostRecord`] |
//! | `portals` | [`PortalKey`] encoded | [`PortalRecord`] |
//! | `portal_rooms` | room ID (main portal); room ID, network (fan-out portals) | [`PortalKey`] encoded |
//! | `messages` | room ID, event ID | [`MessageRecord`] |
//! | `messages_remote` | portal key, remote message ID | room ID, event ID (also, under reserved prefixes: a fan-out delivery mark, empty; a message's progress in parts, JSON) |
//! | `users` | user ID | [`UserRecord`] |
//! | `logins` | user ID, network, login ID | [`crate::network::LoginData`], its `data` sealed |
//! | `connector_kv` | network, the connector's key | the connector's JSON value |
//! | `quarantine` | u64 sequence, big endian | the item's inbox bytes, unchanged |
//! | `quarantine_why` | u64 sequence, big endian | [`QuarantineRecord`] |

mod codec;
mod connector_kv;
mod files;
mod ghosts;
mod health;
mod inbox;
mod logins;
mod messages;
mod portals;
mod quarantine;
mod schema;
mod seal;
mod users;

use crate::error::{Reason, Retry};
use std::path::Path;

pub use self::codec::PortalKey;
pub use self::connector_kv::ConnectorKv;
pub use self::files::{loose_permissions, prepare_dir};
pub use self::ghosts::{AvatarUpload, GhostRecord};
pub use self::inbox::{InboxItem, TxnOutcome, TxnRecord};
pub use self::messages::MessageRecord;
pub use self::portals::PortalRecord;
pub use self::quarantine::QuarantineRecord;
pub use self::schema::SCHEMA_VERSION;
pub use self::seal::{KeyError, LoginKey};
pub use self::users::UserRecord;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an I/O or corruption error.
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    /// A stored value could not be decoded.
    #[error("stored value in `{tree}` could not be decoded: {reason}")]
    Decode {
        /// The tree.
        tree: &'static str,
        /// Why.
        #[source]
        reason: Reason,
    },
    /// The store was written by a newer version of the bridge.
    #[error(
        "the database has schema version {found}, newer than this bridge understands ({supported}); run a newer isthmus or restore a backup"
    )]
    NewerSchema {
        /// Version in the database.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// An import file is not a valid dump.
    #[error("invalid dump: {0}")]
    InvalidDump(#[source] Reason),
    /// Sealed data (an inbox item, a login's data) could not be sealed or opened.
    #[error("sealed data: {0}")]
    Sealed(#[source] Reason),
    /// A file or folder of the store could not be created or made owner-only.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl StoreError {
    /// What the failure model does with this error: a database that cannot read or write
    /// is an outage (every item fails alike until it is fixed); the rest is permanent.
    pub fn retry(&self) -> Retry {
        match self {
            StoreError::Db(_) => Retry::Outage,
            _ => Retry::Never,
        }
    }
}

/// Handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    txns: sled::Tree,
    inbox: sled::Tree,
    ghosts: sled::Tree,
    portals: sled::Tree,
    portal_rooms: sled::Tree,
    messages: sled::Tree,
    messages_remote: sled::Tree,
    users: sled::Tree,
    logins: sled::Tree,
    connector_kv: sled::Tree,
    quarantine: sled::Tree,
    quarantine_why: sled::Tree,
    /// Seals inbox items and the data of logins.
    key: std::sync::Arc<LoginKey>,
    /// The folder, for a store on disk.
    path: Option<std::sync::Arc<Path>>,
    /// Whether writes work, shared by every handle.
    health: std::sync::Arc<health::Health>,
}

/// The store's cache when the config names none: 16 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Names of every tree, in export order.
const TREES: [&str; 13] = [
    "meta",
    "txns",
    "inbox",
    "ghosts",
    "portals",
    "portal_rooms",
    "messages",
    "messages_remote",
    "users",
    "logins",
    "connector_kv",
    "quarantine",
    "quarantine_why",
];

impl Store {
    /// Opens (or creates, owner-only) the store in folder `path`, sealing with `key` and
    /// caching at most `cache_bytes` in memory, and migrates it to the current schema. The
    /// key must be the one the store was written with, or sealed data does not open.
    pub fn open(path: &Path, key: LoginKey, cache_bytes: u64) -> Result<Store, StoreError> {
        files::prepare_dir(path)?;
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(cache_bytes)
            .open()?;
        files::restrict(path)?;
        let mut store = Self::from_db(db, key)?;
        store.path = Some(path.into());
        // Migrations may have written new files.
        store.restrict_files()?;
        Ok(store)
    }

    /// Opens a store that another handle in this process just dropped: sled releases its file
    /// lock from a background thread, so the first attempts may find it still held.
    #[cfg(test)]
    pub(crate) fn reopen(path: &Path) -> Result<Store, StoreError> {
        let mut last = None;
        for _ in 0..100 {
            match Self::open(path, test_key(), DEFAULT_CACHE_BYTES) {
                Ok(s) => return Ok(s),
                Err(e @ StoreError::Db(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(last.expect("tried at least once"))
    }

    /// A store in memory that disappears when dropped, for tests and benchmarks. It seals
    /// with a random key of its own: sled may still spill it to a temporary file.
    pub fn temporary() -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(DEFAULT_CACHE_BYTES)
            .open()?;
        let key = LoginKey::ephemeral().map_err(|e| StoreError::Sealed(Reason::from_error(e)))?;
        Self::from_db(db, key)
    }

    fn from_db(db: sled::Db, key: LoginKey) -> Result<Store, StoreError> {
        schema::migrate(&db, &key)?;
        let t = |name: &str| db.open_tree(name);
        Ok(Store {
            meta: t("meta")?,
            txns: t("txns")?,
            inbox: t("inbox")?,
            ghosts: t("ghosts")?,
            portals: t("portals")?,
            portal_rooms: t("portal_rooms")?,
            messages: t("messages")?,
            messages_remote: t("messages_remote")?,
            users: t("users")?,
            logins: t("logins")?,
            connector_kv: t("connector_kv")?,
            quarantine: t("quarantine")?,
            quarantine_why: t("quarantine_why")?,
            key: std::sync::Arc::new(key),
            path: None,
            health: Default::default(),
            db,
        })
    }

    /// Makes the store folder and every file in it owner-only again (sled may have created
    /// files since it opened, with the umask's mode, although inside the owner-only folder).
    pub fn restrict_files(&self) -> Result<(), StoreError> {
        match &self.path {
            Some(path) => files::restrict(path),
            None => Ok(()),
        }
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let flushed = self
            .db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(StoreError::from);
        self.note(flushed)
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The schema version the store is at.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        schema::read_version(&self.meta)
    }

    fn tree(&self, name: &str) -> &sled::Tree {
        match name {
            "meta" => &self.meta,
            "txns" => &self.txns,
            "inbox" => &self.inbox,
            "ghosts" => &self.ghosts,
            "portals" => &self.portals,
            "portal_rooms" => &self.portal_rooms,
            "messages" => &self.messages,
            "messages_remote" => &self.messages_remote,
            "users" => &self.users,
            "logins" => &self.logins,
            "connector_kv" => &self.connector_kv,
            "quarantine" => &self.quarantine,
            "quarantine_why" => &self.quarantine_why,
            _ => unreachable!("unknown tree {name}"),
        }
    }

    /// Dumps every tree as JSON: `{"format": "isthmus-dump", "schema_version": N, "trees":
    /// {"name": [[key, value], ...]}}`. Keys and values that are UTF-8 are written as strings;
    /// others as `hex:` followed by hex digits.
    pub fn export(&self) -> Result<serde_json::Value, StoreError> {
        let mut trees = serde_json::Map::new();
        for name in TREES {
            let mut rows = Vec::new();
            for kv in self.tree(name).iter() {
                let (k, v) = kv?;
                rows.push(serde_json::json!([
                    codec::dump_bytes(&k),
                    codec::dump_bytes(&v)
                ]));
            }
            trees.insert(name.to_owned(), serde_json::Value::Array(rows));
        }
        Ok(serde_json::json!({
            "format": "isthmus-dump",
            "schema_version": self.schema_version()?,
            "trees": trees,
        }))
    }

    /// Replaces the whole content of the store with a dump made by [`Store::export`], then
    /// migrates it to the current schema. Refuses a dump from a newer schema.
    pub async fn import(&self, dump: &serde_json::Value) -> Result<(), StoreError> {
        if dump.get("format").and_then(|f| f.as_str()) != Some("isthmus-dump") {
            return Err(StoreError::InvalidDump(
                "not an isthmus dump (missing \"format\": \"isthmus-dump\")".into(),
            ));
        }
        let version = dump
            .get("schema_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| StoreError::InvalidDump("missing schema_version".into()))?
            as u32;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let trees = dump
            .get("trees")
            .and_then(|t| t.as_object())
            .ok_or_else(|| StoreError::InvalidDump("missing trees".into()))?;
        // Decode everything before touching the store, so a broken dump changes nothing.
        let mut decoded = Vec::new();
        for (name, rows) in trees {
            if !TREES.contains(&name.as_str()) {
                return Err(StoreError::InvalidDump(
                    format!("unknown tree {name}").into(),
                ));
            }
            let rows = rows.as_array().ok_or_else(|| {
                StoreError::InvalidDump(format!("tree {name} is not a list").into())
            })?;
            let mut batch = sled::Batch::default();
            for row in rows {
                let pair = row.as_array().filter(|p| p.len() == 2).ok_or_else(|| {
                    StoreError::InvalidDump(
                        format!("a row of {name} is not a [key, value] pair").into(),
                    )
                })?;
                let k = codec::undump_bytes(&pair[0])
                    .map_err(|e| StoreError::InvalidDump(Reason::from_error(e)))?;
                let v = codec::undump_bytes(&pair[1])
                    .map_err(|e| StoreError::InvalidDump(Reason::from_error(e)))?;
                if (name == "inbox" || name == "quarantine") && inbox::is_sealed(&v) {
                    self.open_item(&v).map_err(|_| {
                        StoreError::InvalidDump(
                            "its inbox was sealed with another key: put the login.key (or bridge.login_key) that went with the store in place first".into(),
                        )
                    })?;
                }
                batch.insert(k, v);
            }
            decoded.push((name.clone(), batch));
        }
        for name in TREES {
            self.tree(name).clear()?;
        }
        for (name, batch) in decoded {
            self.tree(&name).apply_batch(batch)?;
        }
        // Inbox keys come from this store's ID counter, which a dump does not carry: give the
        // imported items fresh keys, in their order, so new items never overwrite them.
        let imported: Vec<(sled::IVec, sled::IVec)> =
            self.inbox.iter().collect::<Result<_, _>>()?;
        self.inbox.clear()?;
        for (_, value) in imported {
            self.inbox
                .insert(self.db.generate_id()?.to_be_bytes(), value)?;
        }
        if self.meta.get(schema::VERSION_KEY)?.is_none() {
            schema::write_version(&self.meta, version)?;
        }
        schema::migrate(&self.db, &self.key)?;
        self.flush().await
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
        tree,
        reason: Reason::from_error(e),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records always serialise")
}

/// The fixed key unit tests open stores with, so a reopened store reads what it wrote.
#[cfg(test)]
pub(crate) fn test_key() -> LoginKey {
    LoginKey::from_secret("a key for unit tests only, 32+ chars").expect("long enough")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn export_import_round_trip() {
        let a = Store::temporary().unwrap();
        a.put_ghost(&GhostRecord {
            user_id: "@_loopback_bob:hs".into(),
            network: "loopback".into(),
            remote_id: "bob".into(),
            displayname: Some("Bob".into()),
            avatar_url: None,
            avatar_hash: None,
            avatar_upload: None,
            registered: true,
        })
        .unwrap();
        let key = PortalKey::new("loopback", "bob", Some("@alice:hs"));
        a.put_portal(&PortalRecord::new(
            key.clone(),
            "!r:hs",
            crate::network::ChatKind::Direct,
        ))
        .unwrap();
        let dump = a.export().unwrap();
        let b = Store::temporary().unwrap();
        b.import(&dump).await.unwrap();
        assert_eq!(b.export().unwrap(), dump);
        assert_eq!(b.portal_by_room("!r:hs").unwrap().unwrap().key, key);
        assert_eq!(
            b.ghost("@_loopback_bob:hs").unwrap().unwrap().remote_id,
            "bob"
        );
    }

    #[tokio::test]
    async fn imported_inbox_items_are_not_overwritten_by_new_ones() {
        let a = Store::temporary().unwrap();
        let item = |n: u32| InboxItem::Matrix {
            room_id: "!r:hs".into(),
            event: serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap(),
        };
        for n in 0..5 {
            a.enqueue(&item(n)).await.unwrap();
        }
        let dump = a.export().unwrap();
        let other = Store::temporary().unwrap();
        assert!(
            matches!(other.import(&dump).await, Err(StoreError::InvalidDump(m)) if m.to_string().contains("key")),
            "a store with another key refuses the sealed inbox"
        );
        let mut b = Store::temporary().unwrap();
        b.key = a.key.clone();
        b.import(&dump).await.unwrap();
        b.enqueue(&item(99)).await.unwrap();
        let pending = b.inbox_pending().unwrap();
        assert_eq!(pending.len(), 6, "nothing imported was overwritten");
        match &pending[5].1 {
            InboxItem::Matrix { event, .. } => {
                assert_eq!(event.get(), r#"{"n":99}"#, "the new item comes last")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn import_refuses_garbage_and_keeps_data() {
        let a = Store::temporary().unwrap();
        a.put_user(&UserRecord {
            user_id: "@alice:hs".into(),
            management_room: Some("!m:hs".into()),
            shown_requests: Vec::new(),
        })
        .unwrap();
        let bad = serde_json::json!({"format": "isthmus-dump", "schema_version": 1, "trees": {"users": [["k"]]}});
        assert!(matches!(
            a.import(&bad).await,
            Err(StoreError::InvalidDump(_))
        ));
        assert!(a.user("@alice:hs").unwrap().is_some());
        let newer =
            serde_json::json!({"format": "isthmus-dump", "schema_version": 999, "trees": {}});
        assert!(matches!(
            a.import(&newer).await,
            Err(StoreError::NewerSchema { .. })
        ));
    }
}
