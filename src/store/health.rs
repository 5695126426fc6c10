//! Whether the store takes writes, and the probe that finds out again.
//!
//! A failed write marks the store as failing (health and readiness answer 503, the
//! `bridge_store_healthy` metric drops to 0, `status` says so); the transaction handler then
//! answers 5xx so the homeserver retries, and connectors answer their senders with a temporary
//! error, so nothing is acknowledged that was not stored. A probe (a small write and a flush)
//! clears the mark once writes work again. sled can keep failing after an I/O error even once
//! the disk is fine again; the watchdog in `app/watch.rs` then ends the process so that the service
//! manager starts it again, and the inbox replays what was stored.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Store, StoreError};

/// The store's health, shared by every handle.
#[derive(Debug, Default)]
pub(super) struct Health {
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Store {
    /// Whether the last write (or probe) succeeded.
    pub fn is_healthy(&self) -> bool {
        !self.health.failing.load(Ordering::Relaxed)
    }

    /// The error of the last failed write, while the store is failing.
    pub fn failure(&self) -> Option<String> {
        if self.is_healthy() {
            return None;
        }
        self.health.last_error.lock().expect("health lock").clone()
    }

    /// Passes `result` through, marking the store as failing when it is a storage error.
    pub(super) fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Db(e)) = &result {
            *self.health.last_error.lock().expect("health lock") = Some(e.to_string());
            self.health.failing.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Writes and flushes a small record; clears the failing mark when that works.
    pub async fn probe(&self, now_ms: u64) -> Result<(), StoreError> {
        let write = self
            .meta
            .insert(b"probe", &now_ms.to_be_bytes())
            .map(|_| ())
            .map_err(StoreError::from);
        self.note(write)?;
        self.flush().await?;
        self.health.failing.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the store's folder takes a new file (written, synced and removed): tells a disk
    /// that is writable again from a store that stays broken. True for a store in memory.
    pub fn folder_writable(&self) -> bool {
        let Some(dir) = &self.path else {
            return true;
        };
        let probe = dir.join(".write-probe");
        let ok = std::fs::File::create(&probe)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, b"probe")?;
                f.sync_all()
            })
            .is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_storage_error_marks_the_store_until_a_probe_works() {
        let s = Store::temporary().unwrap();
        assert!(s.is_healthy());
        let failed: Result<(), StoreError> = Err(StoreError::Db(sled::Error::Io(
            std::io::Error::other("disk full"),
        )));
        assert!(s.note(failed).is_err());
        assert!(!s.is_healthy());
        assert!(s.failure().unwrap().contains("disk full"));
        // Other handles see it too.
        assert!(!s.clone().is_healthy());
        s.probe(1).await.unwrap();
        assert!(s.is_healthy());
        assert_eq!(s.failure(), None);
    }

    #[tokio::test]
    async fn decode_errors_are_not_storage_failures() {
        let s = Store::temporary().unwrap();
        let bad: Result<(), StoreError> = Err(StoreError::Decode {
            tree: "inbox",
            reason: "x".into(),
        });
        assert!(s.note(bad).is_err());
        assert!(s.is_healthy());
    }
}
