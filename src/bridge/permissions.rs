//! Who may do what: levels keyed by `*`, a server name, or a full user ID.

use std::collections::BTreeMap;

use crate::config::PermissionLevel;

/// The permission map from the config.
#[derive(Clone, Debug)]
pub struct Permissions {
    map: BTreeMap<String, PermissionLevel>,
}

impl Permissions {
    /// Wraps the config map.
    pub fn new(map: BTreeMap<String, PermissionLevel>) -> Self {
        Self { map }
    }

    /// The level of `user_id`: its own entry, else its server's, else `*`, else none.
    pub fn level(&self, user_id: &str) -> PermissionLevel {
        if let Some(l) = self.map.get(user_id) {
            return *l;
        }
        if let Some((_, server)) = user_id.split_once(':')
            && let Some(l) = self.map.get(server)
        {
            return *l;
        }
        self.map.get("*").copied().unwrap_or(PermissionLevel::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_wins() {
        let p = Permissions::new(BTreeMap::from([
            ("*".into(), PermissionLevel::Relay),
            ("example.org".into(), PermissionLevel::User),
            ("@boss:example.org".into(), PermissionLevel::Admin),
            ("@banned:example.org".into(), PermissionLevel::None),
        ]));
        assert_eq!(p.level("@boss:example.org"), PermissionLevel::Admin);
        assert_eq!(p.level("@alice:example.org"), PermissionLevel::User);
        assert_eq!(p.level("@banned:example.org"), PermissionLevel::None);
        assert_eq!(p.level("@eve:elsewhere.net"), PermissionLevel::Relay);
        // A server name with a port is matched whole.
        assert_eq!(p.level("@x:example.org:8448"), PermissionLevel::Relay);
        let empty = Permissions::new(BTreeMap::new());
        assert_eq!(empty.level("@alice:example.org"), PermissionLevel::None);
    }
}
