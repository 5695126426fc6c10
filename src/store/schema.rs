//! Schema version and migrations.
//!
//! Each migration moves the store from version `n` to `n + 1` and is idempotent: the version key
//! is written only after the migration finished, so a crash in the middle runs it again from the
//! start on the next open, and running it twice leaves the same state.

use super::{LoginKey, PortalKey, StoreError, codec};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 4;

pub(super) const VERSION_KEY: &[u8] = b"schema_version";

type Migration = fn(&sled::Db, &LoginKey) -> Result<(), StoreError>;

/// `MIGRATIONS[n]` moves version `n` to `n + 1`.
const MIGRATIONS: [Migration; SCHEMA_VERSION as usize] = [v0_to_v1, v1_to_v2, v2_to_v3, v3_to_v4];

pub(super) fn read_version(meta: &sled::Tree) -> Result<u32, StoreError> {
    match meta.get(VERSION_KEY)? {
        None => Ok(0),
        Some(v) => {
            let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| StoreError::Decode {
                tree: "meta",
                reason: "schema_version is not 4 bytes".into(),
            })?;
            Ok(u32::from_be_bytes(bytes))
        }
    }
}

pub(super) fn write_version(meta: &sled::Tree, version: u32) -> Result<(), StoreError> {
    meta.insert(VERSION_KEY, &version.to_be_bytes())?;
    Ok(())
}

/// Brings the store to [`SCHEMA_VERSION`]; refuses a newer store.
pub(super) fn migrate(db: &sled::Db, key: &LoginKey) -> Result<(), StoreError> {
    let meta = db.open_tree("meta")?;
    let mut version = read_version(&meta)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    while version < SCHEMA_VERSION {
        tracing::info!(from = version, to = version + 1, "migrating store schema");
        MIGRATIONS[version as usize](db, key)?;
        version += 1;
        write_version(&meta, version)?;
        db.flush()?;
    }
    Ok(())
}

/// Version 1: the first layout. Nothing to convert; the trees are created on first use.
fn v0_to_v1(_db: &sled::Db, _key: &LoginKey) -> Result<(), StoreError> {
    Ok(())
}

/// Version 2 adds `portal_rooms`, the index from room ID to portal, built from `portals`.
fn v1_to_v2(db: &sled::Db, _key: &LoginKey) -> Result<(), StoreError> {
    let portals = db.open_tree("portals")?;
    let portal_rooms = db.open_tree("portal_rooms")?;
    for kv in portals.iter() {
        let (k, v) = kv?;
        let record: serde_json::Value = super::decode("portals", &v)?;
        if PortalKey::decode(&k).is_none() {
            return Err(StoreError::Decode {
                tree: "portals",
                reason: "a portal key has the wrong shape".into(),
            });
        }
        if let Some(room) = record.get("room_id").and_then(|r| r.as_str()) {
            portal_rooms.insert(codec::key(&[room]), k)?;
        }
    }
    Ok(())
}

/// Version 3 seals what earlier versions kept in clear: every inbox item, and the data of
/// logins stored without a key. Sealed values are left alone, so a rerun changes nothing.
/// The old plain bytes stay in sled's files until it compacts them; `export`, a fresh store
/// and `import` remove them at once.
fn v2_to_v3(db: &sled::Db, key: &LoginKey) -> Result<(), StoreError> {
    let inbox = db.open_tree("inbox")?;
    for kv in inbox.iter() {
        let (k, v) = kv?;
        if !super::inbox::is_sealed(&v) {
            inbox.insert(k, super::inbox::seal_value(key, &v)?)?;
        }
    }
    let logins = db.open_tree("logins")?;
    for kv in logins.iter() {
        let (k, v) = kv?;
        let login: crate::network::LoginData = super::decode("logins", &v)?;
        if !super::logins::is_sealed(&login) {
            let sealed = super::logins::seal_login(key, &k, &login)?;
            logins.insert(k, super::encode(&sealed))?;
        }
    }
    Ok(())
}

/// Version 4 keeps the connector kit's fan-out bookkeeping (who got a room message that is
/// waiting for a retry) as one record per message in `connector_kv`, `fan:{event}` holding
/// `{"delivered": [member, ...], "parts": {member: parts sent}}`, where earlier versions kept
/// one key per member: `fo:{event}` SEP `{member}` (delivered) and `fp:{event}` SEP `{member}`
/// (parts sent). The old keys are folded into the records and removed in one atomic batch,
/// so a rerun finds nothing left to fold.
fn v3_to_v4(db: &sled::Db, _key: &LoginKey) -> Result<(), StoreError> {
    let tree = db.open_tree("connector_kv")?;
    let mut records: std::collections::BTreeMap<Vec<u8>, serde_json::Value> = Default::default();
    let mut batch = sled::Batch::default();
    for kv in tree.iter() {
        let (k, v) = kv?;
        let Some(split) = k.iter().position(|&b| b == codec::SEP) else {
            continue;
        };
        let (network, own) = (&k[..=split], &k[split + 1..]);
        let (parts, rest) = match own {
            [b'f', b'o', b':', rest @ ..] => (false, rest),
            [b'f', b'p', b':', rest @ ..] => (true, rest),
            _ => continue,
        };
        let Some(sep) = rest.iter().position(|&b| b == codec::SEP) else {
            continue;
        };
        let (event, member) = (&rest[..sep], &rest[sep + 1..]);
        let member = String::from_utf8_lossy(member).into_owned();
        let mut record_key = network.to_vec();
        record_key.extend_from_slice(b"fan:");
        record_key.extend_from_slice(event);
        let record = records
            .entry(record_key)
            .or_insert_with(|| serde_json::json!({}));
        if parts {
            let sent: serde_json::Value = super::decode("connector_kv", &v)?;
            record["parts"][member] = sent;
        } else {
            match record["delivered"].as_array_mut() {
                Some(list) => list.push(member.into()),
                None => record["delivered"] = serde_json::json!([member]),
            }
        }
        batch.remove(k);
    }
    for (k, record) in records {
        batch.insert(k, super::encode(&record));
    }
    tree.apply_batch(batch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{InboxItem, Store, test_key};

    /// Opens the raw database, waiting while the previous handle's lock is released.
    fn open_raw(dir: &std::path::Path) -> sled::Db {
        for _ in 0..100 {
            if let Ok(db) = sled::open(dir) {
                return db;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        sled::open(dir).expect("the database opens once the lock is released")
    }

    fn v1_store(dir: &std::path::Path) {
        let db = open_raw(dir);
        let meta = db.open_tree("meta").unwrap();
        write_version(&meta, 1).unwrap();
        let portals = db.open_tree("portals").unwrap();
        let key = PortalKey::new("loopback", "bob", Some("@alice:hs"));
        portals
            .insert(
                key.encode(),
                serde_json::to_vec(&serde_json::json!({
                    "key": key, "room_id": "!room:hs", "kind": "direct"
                }))
                .unwrap(),
            )
            .unwrap();
        db.flush().unwrap();
    }

    #[test]
    fn fresh_store_is_at_current_version() {
        let s = Store::temporary().unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn v1_store_migrates_and_builds_room_index() {
        let dir = tempfile::tempdir().unwrap();
        v1_store(dir.path());
        let s = Store::reopen(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let p = s.portal_by_room("!room:hs").unwrap().expect("index built");
        assert_eq!(p.key.chat.as_str(), "bob");
    }

    #[test]
    fn migration_interrupted_before_version_write_reruns() {
        let dir = tempfile::tempdir().unwrap();
        v1_store(dir.path());
        {
            // Simulate a crash after the migration body ran but before the version was bumped.
            let db = open_raw(dir.path());
            v1_to_v2(&db, &test_key()).unwrap();
            db.flush().unwrap();
        }
        let s = Store::reopen(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert!(s.portal_by_room("!room:hs").unwrap().is_some());
    }

    #[test]
    fn v2_store_gets_its_inbox_and_logins_sealed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_raw(dir.path());
            write_version(&db.open_tree("meta").unwrap(), 2).unwrap();
            let item = r#"{"matrix":{"room_id":"!m:hs","event":{"body":"old-plain-secret"}}}"#;
            db.open_tree("inbox")
                .unwrap()
                .insert(7u64.to_be_bytes(), item.as_bytes())
                .unwrap();
            let login = r#"{"id":"bob","remote_user":"bob","remote_name":"Bob","data":{"password":"old-login-secret"}}"#;
            db.open_tree("logins")
                .unwrap()
                .insert(codec::key(&["@a:hs", "loopback", "bob"]), login.as_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let s = Store::reopen(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let dump = s.export().unwrap().to_string();
        assert!(!dump.contains("old-plain-secret"), "{dump}");
        assert!(!dump.contains("old-login-secret"), "{dump}");
        match &s.inbox_pending().unwrap()[0].1 {
            InboxItem::Matrix { event, .. } => assert!(event.get().contains("old-plain-secret")),
            other => panic!("unexpected {other:?}"),
        }
        let login = &s.logins_of("@a:hs").unwrap()[0].1;
        assert_eq!(login.data["password"], "old-login-secret");
    }

    /// A store with the per-member fan-out keys of version 3, for a message waiting for its
    /// retry: the member who got it is not sent it again, the one part-way through resumes.
    #[tokio::test]
    async fn v3_fan_out_keys_become_one_record() {
        use crate::network::kit::send::fan_out;
        use crate::network::{ConnectorStore, PartsSent, RemoteUserId};
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_raw(dir.path());
            write_version(&db.open_tree("meta").unwrap(), 3).unwrap();
            let kv = db.open_tree("connector_kv").unwrap();
            let put = |key: &str, value: &str| {
                let mut k = codec::prefix(&["sip"]);
                k.extend_from_slice(key.as_bytes());
                kv.insert(k, value.as_bytes()).unwrap();
            };
            put("fo:$e\u{1f}a@x", "true");
            put("fp:$e\u{1f}b@x", r#"{"parts":1,"total":2,"first":"id-1"}"#);
            put("sub:a@x", "1");
            db.flush().unwrap();
        }
        let s = Store::reopen(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let kv = s.connector_kv("sip");
        let keys: Vec<String> = kv.scan("").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["fan:$e", "sub:a@x"]);
        let members = ["a@x", "b@x", "c@x"].map(RemoteUserId::new);
        let asked = std::sync::Mutex::new(Vec::new());
        let first = fan_out(&kv, "$e", &members, |m, resume| {
            asked.lock().unwrap().push((m.as_str().to_owned(), resume));
            async { Ok::<_, crate::network::NetworkError>(()) }
        })
        .await
        .unwrap();
        assert_eq!(first, Some(()));
        let resumed = PartsSent {
            parts: 1,
            total: 2,
            first: Some(crate::network::RemoteMessageId::new("id-1")),
        };
        assert_eq!(
            *asked.lock().unwrap(),
            [
                ("b@x".to_owned(), resumed),
                ("c@x".to_owned(), PartsSent::default())
            ]
        );
        assert_eq!(kv.get("fan:$e").unwrap(), None);
        // Run again (as after a crash before the version was written): nothing changes.
        kv.put("fan:$f", &serde_json::json!({"delivered": ["a@x"]}))
            .unwrap();
        v3_to_v4(&s.db, &test_key()).unwrap();
        let again: Vec<_> = kv.scan("").unwrap();
        assert_eq!(
            again,
            [
                (
                    "fan:$f".to_owned(),
                    serde_json::json!({"delivered": ["a@x"]})
                ),
                ("sub:a@x".to_owned(), serde_json::json!(1))
            ]
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_raw(dir.path());
            write_version(&db.open_tree("meta").unwrap(), SCHEMA_VERSION + 1).unwrap();
            db.flush().unwrap();
        }
        match Store::reopen(dir.path()) {
            Err(StoreError::NewerSchema { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("opened a newer store"),
        }
    }
}
