//! Presence subscriptions between Matrix users' gateway addresses and remote contacts, kept in
//! a connector's storage, and the per-domain policy for incoming requests (like a Lync
//! federation partner list). Shared by the networks that have contact lists.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::network::{ConnectorStore, Contact, RemoteUserId, SinkError};

/// What to do with a contact's request to see a Matrix user's presence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Ask the Matrix user (`accept` / `deny` in the management room).
    #[default]
    Ask,
    /// Accept without asking.
    Accept,
    /// Refuse without asking.
    Deny,
}

/// A network's `subscriptions` setting: the default policy and exceptions per contact domain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPolicy {
    /// For domains not listed.
    #[serde(default)]
    pub default: Policy,
    /// Per contact domain (exact match, lowercase).
    #[serde(default)]
    pub domains: BTreeMap<String, Policy>,
}

impl SubscriptionPolicy {
    /// The policy for a contact address (`user@domain`).
    pub fn for_contact(&self, contact: &str) -> Policy {
        let domain = contact.rsplit_once('@').map(|(_, d)| d).unwrap_or(contact);
        self.domains.get(domain).copied().unwrap_or(self.default)
    }
}

/// The subscription state between one Matrix user and one contact.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The contact may see the user's presence.
    #[serde(default)]
    pub from: bool,
    /// The user sees the contact's presence (the contact approved).
    #[serde(default)]
    pub to: bool,
    /// The contact asked and waits for an answer.
    #[serde(default)]
    pub pending_in: bool,
    /// The bridge asked the contact on the user's behalf.
    #[serde(default)]
    pub asked_out: bool,
    /// The user refused the contact's request; later requests are refused without asking.
    #[serde(default)]
    pub denied: bool,
}

fn key(user: &str, contact: &str) -> String {
    format!("sub:{user}\u{1f}{contact}")
}

/// Reads a subscription (default when none).
pub fn get(
    store: &dyn ConnectorStore,
    user: &str,
    contact: &str,
) -> Result<Subscription, SinkError> {
    Ok(store
        .get(&key(user, contact))?
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default())
}

/// Changes a subscription with `f`; stores it only when it changed. Returns the new state.
pub fn update(
    store: &dyn ConnectorStore,
    user: &str,
    contact: &str,
    f: impl FnOnce(&mut Subscription),
) -> Result<Subscription, SinkError> {
    let old = get(store, user, contact)?;
    let mut new = old.clone();
    f(&mut new);
    if new != old {
        if new == Subscription::default() {
            store.delete(&key(user, contact))?;
        } else {
            let v = serde_json::to_value(&new)
                .map_err(|e| SinkError(crate::error::Reason::from_error(e)))?;
            store.put(&key(user, contact), &v)?;
        }
    }
    Ok(new)
}

/// Every contact of a user with its state.
pub fn of_user(
    store: &dyn ConnectorStore,
    user: &str,
) -> Result<Vec<(String, Subscription)>, SinkError> {
    let prefix = format!("sub:{user}\u{1f}");
    Ok(store
        .scan(&prefix)?
        .into_iter()
        .filter_map(|(k, v)| {
            let contact = k.strip_prefix(&prefix)?.to_owned();
            Some((contact, serde_json::from_value(v).ok()?))
        })
        .collect())
}

/// A user's contact list as the core shows it (`NetworkClient::contacts`): each contact with
/// whether it sees the user's presence, the user sees its, and its request waits.
pub fn list(store: &dyn ConnectorStore, user: &str) -> Result<Vec<Contact>, SinkError> {
    Ok(of_user(store, user)?
        .into_iter()
        .map(|(contact, s)| Contact {
            id: RemoteUserId::new(contact),
            sees_presence: s.from,
            watched: s.to,
            pending: s.pending_in,
        })
        .collect())
}

/// Every user at least one contact may see the presence of.
pub fn users_seen_by_contacts(store: &dyn ConnectorStore) -> Result<Vec<String>, SinkError> {
    let mut users: Vec<String> = store
        .scan("sub:")?
        .into_iter()
        .filter_map(|(k, v)| {
            let s: Subscription = serde_json::from_value(v).ok()?;
            let (user, _) = k.strip_prefix("sub:")?.split_once('\u{1f}')?;
            s.from.then(|| user.to_owned())
        })
        .collect();
    users.dedup();
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn policy_by_domain() {
        let p = SubscriptionPolicy {
            default: Policy::Ask,
            domains: BTreeMap::from([
                ("partner.example".into(), Policy::Accept),
                ("spam.example".into(), Policy::Deny),
            ]),
        };
        assert_eq!(p.for_contact("bob@partner.example"), Policy::Accept);
        assert_eq!(p.for_contact("eve@spam.example"), Policy::Deny);
        assert_eq!(p.for_contact("carol@elsewhere.org"), Policy::Ask);
    }

    #[test]
    fn subscriptions_persist_and_list() {
        let s = Store::temporary().unwrap();
        let kv = s.connector_kv("xmpp");
        update(&kv, "@a:hs", "bob@x.org", |s| s.pending_in = true).unwrap();
        update(&kv, "@a:hs", "carol@x.org", |s| s.from = true).unwrap();
        update(&kv, "@b:hs", "bob@x.org", |s| s.to = true).unwrap();
        let list = of_user(&kv, "@a:hs").unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.iter().any(|(c, s)| c == "bob@x.org" && s.pending_in));
        // Back to the default state: the record is gone.
        update(&kv, "@a:hs", "bob@x.org", |s| s.pending_in = false).unwrap();
        assert_eq!(of_user(&kv, "@a:hs").unwrap().len(), 1);
        let shown = super::list(&kv, "@a:hs").unwrap();
        assert_eq!(
            shown,
            [Contact {
                id: RemoteUserId::new("carol@x.org"),
                sees_presence: true,
                watched: false,
                pending: false,
            }]
        );
        update(&kv, "@b:hs", "dan@x.org", |s| s.pending_in = true).unwrap();
        let shown = super::list(&kv, "@b:hs").unwrap();
        assert_eq!(shown.len(), 2);
        assert!(
            shown
                .iter()
                .any(|c| c.id.as_str() == "bob@x.org" && c.watched && !c.pending)
        );
        assert!(
            shown
                .iter()
                .any(|c| c.id.as_str() == "dan@x.org" && c.pending && !c.sees_presence)
        );
        assert!(get(&kv, "@b:hs", "bob@x.org").unwrap().to);
        update(&kv, "@a:hs", "dan@x.org", |s| s.from = true).unwrap();
        assert_eq!(users_seen_by_contacts(&kv).unwrap(), ["@a:hs"]);
    }
}
