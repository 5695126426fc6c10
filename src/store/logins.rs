//! Logins: a Matrix user's accounts on remote networks.

use super::{LoginKey, Store, StoreError, codec, decode, encode};
use crate::network::{LoginData, LoginId};

impl Store {
    /// The login as stored: its data sealed.
    fn sealed(&self, place: &[u8], login: &LoginData) -> Result<Vec<u8>, StoreError> {
        Ok(encode(&seal_login(&self.key, place, login)?))
    }

    /// The login as connectors see it: its data opened. Data that does not open (the key
    /// changed, a damaged record) is replaced by `{"unreadable": why}`, so one bad login
    /// neither stops the bridge nor blocks `logout`; the connector then refuses to load it.
    fn opened(&self, place: &[u8], bytes: &[u8]) -> Result<LoginData, StoreError> {
        let mut login: LoginData = decode("logins", bytes)?;
        match self.open_data(place, &login) {
            Ok(Some(data)) => login.data = data,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(login = %login.id, error = %crate::error::chain(&e), "stored login data does not open");
                login.data = serde_json::json!({ "unreadable": e.to_string() });
            }
        }
        Ok(login)
    }

    /// The opened data of a sealed login; `None` when it is not sealed (written by a version
    /// before every login was sealed; the schema migration seals those).
    fn open_data(
        &self,
        place: &[u8],
        login: &LoginData,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let Some(sealed) = login.data.get("sealed").and_then(|s| s.as_str()) else {
            return Ok(None);
        };
        let plain = self.key.open(place, sealed)?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| StoreError::Decode {
                tree: "logins",
                reason: crate::error::Reason::from_error(e),
            })
    }

    /// Inserts or replaces a login of `user_id` on `network`.
    pub fn put_login(
        &self,
        user_id: &str,
        network: &str,
        login: &LoginData,
    ) -> Result<(), StoreError> {
        let key = codec::key(&[user_id, network, login.id.as_str()]);
        let value = self.sealed(&key, login)?;
        self.logins.insert(key, value)?;
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
            out.push((network, self.opened(&k, &v)?));
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
            out.push((user, network, self.opened(&k, &v)?));
        }
        Ok(out)
    }
}

/// `login` with its data sealed for `place` (its key in `logins`).
pub(super) fn seal_login(
    key: &LoginKey,
    place: &[u8],
    login: &LoginData,
) -> Result<LoginData, StoreError> {
    let mut stored = login.clone();
    let plain = serde_json::to_vec(&login.data).expect("JSON values serialise");
    stored.data = serde_json::json!({ "sealed": key.seal(place, &plain)? });
    Ok(stored)
}

/// Whether the data of a stored login is sealed: `{"sealed": "<hex>"}` and nothing else.
pub(super) fn is_sealed(login: &LoginData) -> bool {
    login
        .data
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.get("sealed").is_some_and(|s| s.is_string()))
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

    #[test]
    fn login_data_is_sealed_at_rest() {
        let s = Store::temporary().unwrap();
        let l = LoginData {
            id: LoginId::new("bob"),
            remote_user: RemoteUserId::new("bob@x"),
            remote_name: "Bob".into(),
            data: serde_json::json!({"password": "hunter2-secret"}),
        };
        s.put_login("@alice:hs", "sip", &l).unwrap();
        let raw: Vec<u8> = s.logins.iter().values().next().unwrap().unwrap().to_vec();
        let raw = String::from_utf8(raw).unwrap();
        assert!(!raw.contains("hunter2"), "{raw}");
        assert!(raw.contains("sealed") && raw.contains("Bob"), "{raw}");
        assert_eq!(s.logins_of("@alice:hs").unwrap()[0].1, l);
        assert_eq!(s.all_logins().unwrap()[0].2, l);
        // With another key the data does not open: the login is listed, its data says why.
        let mut other = s.clone();
        other.key = std::sync::Arc::new(super::super::test_key());
        let listed = other.all_logins().unwrap();
        assert_eq!(listed[0].2.remote_name, "Bob");
        let why = listed[0].2.data["unreadable"].as_str().unwrap();
        assert!(why.contains("does not open"), "{why}");
        assert!(other.delete_login("@alice:hs", "sip", &l.id).unwrap());
    }
}
