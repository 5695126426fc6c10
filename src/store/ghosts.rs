//! Ghosts: Matrix users that stand for remote users.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, encode};

/// A ghost as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GhostRecord {
    /// The ghost's Matrix user ID.
    pub user_id: String,
    /// The network of the remote user.
    pub network: String,
    /// The remote user ID.
    pub remote_id: String,
    /// Display name last written to the homeserver.
    #[serde(default)]
    pub displayname: Option<String>,
    /// Avatar last written to the homeserver.
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// The network's hash of that avatar, so an unchanged picture is not uploaded again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_hash: Option<String>,
    /// A picture uploaded for the ghost whose setting has not been confirmed yet: a retry
    /// sets this file rather than uploading the same picture again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_upload: Option<AvatarUpload>,
    /// Registered on the homeserver.
    #[serde(default)]
    pub registered: bool,
}

/// A ghost's picture uploaded to the homeserver, not yet confirmed as its avatar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvatarUpload {
    /// The network's hash of the picture.
    pub hash: String,
    /// The uploaded file (`mxc://`).
    pub url: String,
}

impl Store {
    /// The ghost with this Matrix user ID.
    pub fn ghost(&self, user_id: &str) -> Result<Option<GhostRecord>, StoreError> {
        self.ghosts
            .get(user_id.as_bytes())?
            .map(|v| decode("ghosts", &v))
            .transpose()
    }

    /// Inserts or replaces a ghost.
    pub fn put_ghost(&self, ghost: &GhostRecord) -> Result<(), StoreError> {
        self.ghosts
            .insert(ghost.user_id.as_bytes(), encode(ghost))?;
        Ok(())
    }

    /// Number of ghosts.
    pub fn ghost_count(&self) -> usize {
        self.ghosts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_get() {
        let s = Store::temporary().unwrap();
        let g = GhostRecord {
            user_id: "@_loopback_bob:hs".into(),
            network: "loopback".into(),
            remote_id: "bob".into(),
            displayname: None,
            avatar_url: None,
            avatar_hash: Some("da39a3ee".into()),
            avatar_upload: None,
            registered: false,
        };
        assert_eq!(s.ghost(&g.user_id).unwrap(), None);
        s.put_ghost(&g).unwrap();
        assert_eq!(s.ghost(&g.user_id).unwrap(), Some(g));
        assert_eq!(s.ghost_count(), 1);
    }
}
