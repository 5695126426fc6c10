//! Whether a Matrix user can receive through the bridge, asked by networks before they accept
//! a message or a subscription request for that user (so nothing is created for a user who
//! does not exist). Answers are cached briefly: a flood of requests to the same address
//! reaches the homeserver once per [`TTL`].

use std::time::{Duration, Instant};

use tracing::debug;

use super::Bridge;
use crate::config::PermissionLevel;
use crate::network::MatrixUserStatus;

/// How long an answer of the homeserver is trusted.
pub const TTL: Duration = Duration::from_secs(60);
/// How long the homeserver may take to answer before the status is `Unknown`.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most answers kept.
pub const CAPACITY: usize = 10_000;

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
                debug!(user, error = %crate::error::chain(&e), "could not tell whether a Matrix user exists");
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
