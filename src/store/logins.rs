//! Logins: a Matrix user's accounts on remote networks.

use super::{Store, StoreError, codec, decode, encode};
use crate::network::{LoginData, LoginId};

impl Store {
    /// Inserts or replaces a login of `user_id` on `network`.
    pub fn put_login(
        &self,
        user_id: &str,
        network: &str,
        login: &LoginData,
    ) -> Result<(), StoreError> {
        self.logins.insert(
            codec::key(&[user_id, network, login.id.as_str()]),
            encode(login),
        )?;
        Ok(())
    }

    /// Removes a login.
    pub fn delete_login(
        &self,
        user_id: &str,
        network: &str,
        id: &LoginId,
    ) -> Result<bool, StoreError> {
        Ok(self
            .logins
            .remove(codec::key(&[user_id, network, id.as_str()]))?
            .is_some())
    }

    /// Logins of a user, as (network, login).
    pub fn logins_of(&self, user_id: &str) -> Result<Vec<(String, LoginData)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.logins.scan_prefix(codec::prefix(&[user_id])) {
            let (k, v) = kv?;
            let network = k
                .split(|b| *b == codec::SEP)
                .nth(1)
                .and_then(|n| std::str::from_utf8(n).ok())
                .unwrap_or_default()
                .to_owned();
            out.push((network, decode("logins", &v)?));
        }
        Ok(out)
    }

    /// Every login, as (user, network, login).
    pub fn all_logins(&self) -> Result<Vec<(String, String, LoginData)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.logins.iter() {
            let (k, v) = kv?;
            let mut parts = k
                .split(|b| *b == codec::SEP)
                .map(|p| String::from_utf8_lossy(p).into_owned());
            let user = parts.next().unwrap_or_default();
            let network = parts.next().unwrap_or_default();
            out.push((user, network, decode("logins", &v)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::RemoteUserId;

    #[test]
    fn logins_are_per_user() {
        let s = Store::temporary().unwrap();
        let l = LoginData {
            id: LoginId::new("bob"),
            remote_user: RemoteUserId::new("bob"),
            remote_name: "Bob".into(),
            data: serde_json::json!({}),
        };
        s.put_login("@alice:hs", "loopback", &l).unwrap();
        s.put_login("@alice:hs2", "loopback", &l).unwrap();
        assert_eq!(
            s.logins_of("@alice:hs").unwrap(),
            vec![("loopback".to_owned(), l.clone())]
        );
        assert_eq!(s.all_logins().unwrap().len(), 2);
        assert!(s.delete_login("@alice:hs", "loopback", &l.id).unwrap());
        assert!(s.logins_of("@alice:hs").unwrap().is_empty());
    }
}
