//! Users' own accounts in use, by account.
//!
//! A login is known by its stop switch (a `watch::Sender<bool>` its background work ends on):
//! one account has one login at a time; a newer login of the same account (a `login` again
//! after a password change, or another Matrix user's) takes the account over and the older
//! one is stopped; a logout removes the account only while it is still that login's.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// One login in use.
#[derive(Clone, Debug)]
pub struct Entry<A> {
    /// The Matrix user who logged in.
    pub user: String,
    /// The switch that stops the login's background work.
    pub stop: watch::Sender<bool>,
    /// What the connector keeps besides (a handle on the account, or nothing).
    pub account: A,
}

/// The logins in use, by account key (the connector's choice: an address, the user part of
/// a registered contact). Never held across an `.await`.
#[derive(Debug)]
pub struct Registry<A> {
    entries: Mutex<HashMap<String, Entry<A>>>,
}

impl<A> Default for Registry<A> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<A: Clone> Registry<A> {
    /// Routes `key` to `entry`. An earlier login of the key (another stop switch) is stopped
    /// and returned, for the connector to tell whom it concerns; tracking the same login
    /// again (a reconnection) changes nothing and returns `None`.
    pub fn track(&self, key: &str, entry: Entry<A>) -> Option<Entry<A>> {
        let stop = entry.stop.clone();
        let previous = self.lock().insert(key.to_owned(), entry)?;
        if previous.stop.same_channel(&stop) {
            return None;
        }
        previous.stop.send_replace(true);
        Some(previous)
    }

    /// Removes `key` when it is still the login with switch `stop`: a newer login of the
    /// same account keeps its own entry. Returns whether it was removed.
    pub fn untrack(&self, key: &str, stop: &watch::Sender<bool>) -> bool {
        let mut entries = self.lock();
        if entries.get(key).is_some_and(|e| e.stop.same_channel(stop)) {
            entries.remove(key);
            true
        } else {
            false
        }
    }

    /// The Matrix user whose login `key` is.
    pub fn user_of(&self, key: &str) -> Option<String> {
        self.lock().get(key).map(|e| e.user.clone())
    }

    /// What the connector keeps for login `key` while it is `user`'s (an account another
    /// user's newer login took over, or one logged out, is nobody's handle for `user`).
    pub fn account_of(&self, key: &str, user: &str) -> Option<A> {
        self.lock()
            .get(key)
            .filter(|e| e.user == user)
            .map(|e| e.account.clone())
    }

    /// Whether `key` is in use.
    pub fn contains(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    /// Every login in use (in no particular order).
    pub fn entries(&self) -> Vec<Entry<A>> {
        self.lock().values().cloned().collect()
    }

    /// Stops every login (for a shutdown) and returns them; they stay listed, so that what
    /// arrives while they end still finds its user.
    pub fn stop_all(&self) -> Vec<Entry<A>> {
        let entries = self.entries();
        for e in &entries {
            e.stop.send_replace(true);
        }
        entries
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<A>>> {
        self.entries.lock().expect("registry lock")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(user: &str, n: u32) -> Entry<u32> {
        Entry {
            user: user.to_owned(),
            stop: watch::channel(false).0,
            account: n,
        }
    }

    #[test]
    fn a_newer_login_stops_the_older() {
        let r = Registry::default();
        let first = entry("@a:hs", 1);
        assert!(r.track("acct", first.clone()).is_none());
        // A reconnection of the same login: nothing happens.
        assert!(r.track("acct", first.clone()).is_none());
        assert!(!*first.stop.borrow());
        let second = entry("@b:hs", 2);
        let old = r.track("acct", second.clone()).expect("the older login");
        assert_eq!((old.user.as_str(), old.account), ("@a:hs", 1));
        assert!(*first.stop.borrow(), "the older login is stopped");
        assert!(!*second.stop.borrow());
        assert_eq!(r.user_of("acct").as_deref(), Some("@b:hs"));
        // Its handle is the newer login's user's only.
        assert_eq!(r.account_of("acct", "@b:hs"), Some(2));
        assert_eq!(r.account_of("acct", "@a:hs"), None);
        // The older login's logout leaves the newer alone.
        assert!(!r.untrack("acct", &first.stop));
        assert!(r.contains("acct"));
        assert!(r.untrack("acct", &second.stop));
        assert!(!r.contains("acct"));
        assert_eq!(r.user_of("acct"), None);
        assert_eq!(r.account_of("acct", "@b:hs"), None);
    }

    #[test]
    fn a_shutdown_stops_everyone_and_keeps_the_routes() {
        let r = Registry::default();
        let (a, b) = (entry("@a:hs", 1), entry("@b:hs", 2));
        r.track("x", a.clone());
        r.track("y", b.clone());
        let mut stopped: Vec<u32> = r.stop_all().iter().map(|e| e.account).collect();
        stopped.sort();
        assert_eq!(stopped, [1, 2]);
        assert!(*a.stop.borrow() && *b.stop.borrow());
        assert_eq!(r.user_of("x").as_deref(), Some("@a:hs"));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Login(u8, u8),
        Relogin(u8),
        Logout(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3u8, 0..3u8).prop_map(|(k, u)| Op::Login(k, u)),
            (0..3u8).prop_map(Op::Relogin),
            (0..3u8).prop_map(Op::Logout),
        ]
    }

    proptest! {
        /// Whatever the order of logins, reconnections and logouts: each account is routed
        /// to its latest login until that login logs out, and exactly the logins that were
        /// replaced are stopped.
        #[test]
        fn the_latest_login_owns_the_account(ops in proptest::collection::vec(op(), 0..40)) {
            let r = Registry::default();
            // Per account: every login made, the latest last; whether the latest logged out.
            let mut logins: Vec<Vec<Entry<u32>>> = vec![Vec::new(); 3];
            let mut out = [false; 3];
            let mut n = 0;
            for op in ops {
                match op {
                    Op::Login(k, u) => {
                        n += 1;
                        let e = entry(&format!("@{u}:hs"), n);
                        let replaced = r.track(&k.to_string(), e.clone());
                        let k = usize::from(k);
                        let expect = logins[k].last().filter(|_| !out[k]).map(|l| l.account);
                        prop_assert_eq!(replaced.map(|p| p.account), expect);
                        logins[k].push(e);
                        out[k] = false;
                    }
                    Op::Relogin(k) => {
                        let k = usize::from(k);
                        if let Some(latest) = logins[k].last() && !out[k] {
                            prop_assert!(r.track(&k.to_string(), latest.clone()).is_none());
                        }
                    }
                    Op::Logout(k) => {
                        let k = usize::from(k);
                        if let Some(latest) = logins[k].last() {
                            let removed = r.untrack(&k.to_string(), &latest.stop);
                            prop_assert_eq!(removed, !out[k]);
                            // A logout stops its own login, as connectors do.
                            latest.stop.send_replace(true);
                            out[k] = true;
                        }
                    }
                }
            }
            for (k, ls) in logins.iter().enumerate() {
                let key = k.to_string();
                match ls.last() {
                    Some(latest) if !out[k] => {
                        prop_assert_eq!(r.user_of(&key), Some(latest.user.clone()));
                        prop_assert!(!*latest.stop.borrow());
                    }
                    _ => prop_assert!(!r.contains(&key)),
                }
                for older in ls.iter().rev().skip(1) {
                    prop_assert!(*older.stop.borrow(), "a replaced login is stopped");
                }
            }
        }
    }
}
