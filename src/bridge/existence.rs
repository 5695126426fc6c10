//! Whether a Matrix user can receive through the bridge, asked by networks before they accept
//! a message or a subscription request for that user (so nothing is created for a user who
//! does not exist). Answers are cached briefly: a flood of requests to the same address
//! reaches the homeserver once per [`TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::debug;

use super::Bridge;
use crate::config::PermissionLevel;
use crate::network::MatrixUserStatus;

/// How long an answer of the homeserver is trusted.
pub const TTL: Duration = Duration::from_secs(60);
/// How long the homeserver may take to answer before the status is `Unknown`.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most answers kept; past it, expired ones are dropped, then all.
const CAPACITY: usize = 10_000;

/// Cached existence answers by user ID.
#[derive(Default)]
pub struct ExistenceCache {
    entries: Mutex<HashMap<String, (Instant, bool)>>,
}

impl ExistenceCache {
    /// The cached answer for `user`, when it is younger than [`TTL`] at `now`.
    pub fn get(&self, user: &str, now: Instant) -> Option<bool> {
        let entries = self.entries.lock().expect("existence lock");
        entries
            .get(user)
            .filter(|(at, _)| now.saturating_duration_since(*at) < TTL)
            .map(|(_, exists)| *exists)
    }

    /// Remembers an answer of the homeserver.
    pub fn put(&self, user: &str, exists: bool, now: Instant) {
        let mut entries = self.entries.lock().expect("existence lock");
        if entries.len() >= CAPACITY && !entries.contains_key(user) {
            entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < TTL);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(user.to_owned(), (now, exists));
    }
}

impl Bridge {
    /// Whether `user` exists and may use the bridge; see
    /// [`crate::network::RemoteEventHandler::matrix_user_status`]. The bridge's own users and
    /// users below the `user` level are `NotFound` without asking the homeserver; a homeserver
    /// that fails or does not answer in time gives `Unknown`, never `NotFound`.
    pub async fn matrix_user_status(&self, user: &str) -> MatrixUserStatus {
        if self.in_namespace(user) || self.level(user) < PermissionLevel::User {
            return MatrixUserStatus::NotFound;
        }
        let Ok(uid) = ruma::UserId::parse(user) else {
            return MatrixUserStatus::NotFound;
        };
        let status = |exists| {
            if exists {
                MatrixUserStatus::Reachable
            } else {
                MatrixUserStatus::NotFound
            }
        };
        if let Some(exists) = self.existence.get(user, Instant::now()) {
            return status(exists);
        }
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.hs.user_exists(&uid)).await {
            Ok(Ok(exists)) => {
                self.existence.put(user, exists, Instant::now());
                status(exists)
            }
            Ok(Err(e)) => {
                debug!(user, error = %e, "could not tell whether a Matrix user exists");
                MatrixUserStatus::Unknown
            }
            Err(_) => {
                debug!(
                    user,
                    "the homeserver did not say in time whether a Matrix user exists"
                );
                MatrixUserStatus::Unknown
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire() {
        let cache = ExistenceCache::default();
        let t0 = Instant::now();
        assert_eq!(cache.get("@a:x", t0), None);
        cache.put("@a:x", false, t0);
        cache.put("@b:x", true, t0);
        assert_eq!(cache.get("@a:x", t0 + Duration::from_secs(1)), Some(false));
        assert_eq!(cache.get("@b:x", t0 + Duration::from_secs(1)), Some(true));
        assert_eq!(cache.get("@a:x", t0 + TTL), None);
    }

    #[test]
    fn stays_bounded() {
        let cache = ExistenceCache::default();
        let t0 = Instant::now();
        for i in 0..CAPACITY + 10 {
            cache.put(&format!("@u{i}:x"), false, t0);
        }
        assert!(cache.entries.lock().unwrap().len() <= CAPACITY);
        // The newest answer is kept.
        let last = format!("@u{}:x", CAPACITY + 9);
        assert_eq!(cache.get(&last, t0), Some(false));
    }
}
