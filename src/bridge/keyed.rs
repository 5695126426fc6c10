//! One async lock per key, for records that several portal queues may change at once (a
//! ghost is shared by every portal its remote user speaks in, and each portal has its own
//! queue). A key's lock exists while someone holds or waits for it; the map is swept of the
//! others as it grows, so it stays as large as the number of keys in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

/// Locks by key.
#[derive(Default)]
pub struct KeyedLocks {
    locks: Mutex<Locks>,
}

#[derive(Default)]
struct Locks {
    by_key: HashMap<String, Weak<tokio::sync::Mutex<()>>>,
    /// Size of the map after the last sweep: the next sweep comes when it has doubled.
    swept: usize,
}

impl KeyedLocks {
    /// Waits for the lock of `key`; it is released when the guard is dropped.
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().expect("keyed locks");
            if locks.by_key.len() >= (2 * locks.swept).max(64) {
                locks.by_key.retain(|_, l| l.strong_count() > 0);
                locks.swept = locks.by_key.len();
            }
            match locks.by_key.get(key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    locks.by_key.insert(key.to_owned(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }

    /// How many keys the map holds (locks in use, and unused ones not swept yet).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().expect("keyed locks").by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_holder_per_key_and_keys_do_not_wait_for_each_other() {
        let locks = Arc::new(KeyedLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (locks, inside, most) = (locks.clone(), inside.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock("same").await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            1,
            "two holders of one key at once"
        );

        // Another key is free while one is held.
        let held = locks.lock("a").await;
        let other = tokio::time::timeout(Duration::from_secs(5), locks.lock("b")).await;
        assert!(other.is_ok(), "key b waited for key a");
        drop(held);
    }

    #[tokio::test]
    async fn unused_keys_are_swept() {
        let locks = KeyedLocks::default();
        for i in 0..10_000 {
            drop(locks.lock(&format!("k{i}")).await);
        }
        assert!(locks.len() <= 128, "{} keys kept", locks.len());
        let held: Vec<_> = futures::future::join_all((0..200).map(|i| {
            let key = format!("h{i}");
            let locks = &locks;
            async move { locks.lock(&key).await }
        }))
        .await;
        for i in 0..1_000 {
            drop(locks.lock(&format!("x{i}")).await);
        }
        assert!(locks.len() >= 200, "a held lock was swept");
        drop(held);
    }
}
