//! Matrix users of the bridge.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, encode};

/// A Matrix user the bridge knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Full user ID.
    pub user_id: String,
    /// The DM with the bridge bot used for commands.
    #[serde(default)]
    pub management_room: Option<String>,
    /// Contact requests (`network` U+001F `contact`) already shown in the current management
    /// room, so that opening or joining it again does not repeat them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shown_requests: Vec<String>,
}

impl Store {
    /// A user.
    pub fn user(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.users
            .get(user_id.as_bytes())?
            .map(|v| decode("users", &v))
            .transpose()
    }

    /// Inserts or replaces a user.
    pub fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        self.users.insert(user.user_id.as_bytes(), encode(user))?;
        Ok(())
    }

    /// The user whose management room this is.
    pub fn user_by_management_room(&self, room_id: &str) -> Result<Option<UserRecord>, StoreError> {
        for v in self.users.iter().values() {
            let u: UserRecord = decode("users", &v?)?;
            if u.management_room.as_deref() == Some(room_id) {
                return Ok(Some(u));
            }
        }
        Ok(None)
    }
}
