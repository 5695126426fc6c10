//! Answers of the homeserver kept for a while, so that a hot path does not ask again: whether
//! a user exists, a sender's display name ([`super::MatrixUsers`]). Bounded: past its
//! capacity, expired answers are dropped, then all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Answers by key (a user ID), each trusted for `ttl`.
pub struct TtlCache<V> {
    entries: Mutex<HashMap<String, (Instant, V)>>,
    ttl: Duration,
    capacity: usize,
}

impl<V: Clone> TtlCache<V> {
    /// An empty cache of at most `capacity` answers, each kept for `ttl`.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: Mutex::default(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// The answer for `key`, when it is younger than the time to live at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<V> {
        let entries = self.entries.lock().expect("cache lock");
        entries
            .get(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, v)| v.clone())
    }

    /// Remembers an answer.
    pub fn put(&self, key: &str, value: V, now: Instant) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key.to_owned(), (now, value));
    }

    /// Drops the answer for `key` (it changed), so the next [`TtlCache::get`] misses.
    pub fn forget(&self, key: &str) {
        self.entries.lock().expect("cache lock").remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn answers_expire_and_can_be_forgotten() {
        let cache = TtlCache::new(TTL, 10);
        let t0 = Instant::now();
        assert_eq!(cache.get("@a:x", t0), None);
        cache.put("@a:x", false, t0);
        cache.put("@b:x", true, t0);
        assert_eq!(cache.get("@a:x", t0 + Duration::from_secs(1)), Some(false));
        assert_eq!(cache.get("@b:x", t0 + Duration::from_secs(1)), Some(true));
        assert_eq!(cache.get("@a:x", t0 + TTL), None);
        cache.forget("@b:x");
        assert_eq!(cache.get("@b:x", t0), None);
    }

    #[test]
    fn stays_bounded() {
        let capacity = 100;
        let cache = TtlCache::new(TTL, capacity);
        let t0 = Instant::now();
        for i in 0..capacity + 10 {
            cache.put(&format!("@u{i}:x"), false, t0);
        }
        assert!(cache.len() <= capacity);
        // The newest answer is kept.
        let last = format!("@u{}:x", capacity + 9);
        assert_eq!(cache.get(&last, t0), Some(false));
        // Expired answers go first: the fresh ones stay.
        let cache = TtlCache::new(TTL, 4);
        cache.put("@old1:x", 1, t0);
        cache.put("@old2:x", 2, t0);
        let later = t0 + TTL + Duration::from_secs(1);
        cache.put("@new1:x", 3, later);
        cache.put("@new2:x", 4, later);
        cache.put("@new3:x", 5, later);
        assert_eq!(cache.get("@new1:x", later), Some(3));
        assert_eq!(cache.get("@new3:x", later), Some(5));
    }
}
