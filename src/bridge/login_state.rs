//! [`Logins`]: what the core keeps in memory about users' logins, behind locks it alone
//! holds: the live clients, the login flows in progress, the login links waiting on a page,
//! the last state each login or link reported, and which problems a user was told about.
//!
//! Every method takes its lock and lets go of it before it returns, so no lock of this type
//! is ever held across an `.await` of someone else's. What crosses to a network, the store
//! or the homeserver is the core's (`logins.rs`, `login_page.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::login_page::LoginPages;
use super::{LoginSession, StateReport, UserLogin};
use crate::network::{BridgeState, LoginField, LoginId, NetworkId};

/// A user and a network: whose login, where.
type Key = (String, NetworkId);

/// The login state of every user.
#[derive(Default)]
pub(super) struct Logins {
    /// Live clients of logins, by (Matrix user, network).
    live: Mutex<HashMap<Key, Vec<UserLogin>>>,
    /// Login flows in progress in a management room, by Matrix user.
    sessions: tokio::sync::Mutex<HashMap<String, LoginSession>>,
    /// Login flows waiting on a login page, by link token.
    pub(super) pages: LoginPages,
    /// Last reported state of each login or link, by (network, Matrix user or "").
    states: Mutex<HashMap<(NetworkId, String), StateReport>>,
    /// Logins whose problem the user was told about (so recovery is announced too).
    announced: Mutex<HashSet<(NetworkId, String)>>,
}

impl Logins {
    /// Live logins of `user` on `network`.
    pub(super) fn live(&self, user: &str, network: &NetworkId) -> Vec<UserLogin> {
        self.live
            .lock()
            .expect("logins lock")
            .get(&(user.to_owned(), network.clone()))
            .cloned()
            .unwrap_or_default()
    }

    /// Every live login of `user`, with its network, ordered by network and login ID.
    pub(super) fn all_live(&self, user: &str) -> Vec<(NetworkId, UserLogin)> {
        let map = self.live.lock().expect("logins lock");
        let mut out: Vec<_> = map
            .iter()
            .filter(|((u, _), _)| u == user)
            .flat_map(|((_, n), ls)| ls.iter().map(move |l| (n.clone(), l.clone())))
            .collect();
        out.sort_by(|a, b| (&a.0, a.1.id.as_str()).cmp(&(&b.0, b.1.id.as_str())));
        out
    }

    /// Makes `login` live for `user` on `network`, in place of one with the same ID.
    pub(super) fn register(&self, user: &str, network: &NetworkId, login: UserLogin) {
        let mut map = self.live.lock().expect("logins lock");
        let list = map.entry((user.to_owned(), network.clone())).or_default();
        list.retain(|l| l.id != login.id);
        list.push(login);
    }

    /// Takes out the live logins of `user` on `network` (only login `id`, when given) and
    /// returns them.
    pub(super) fn remove(
        &self,
        user: &str,
        network: &NetworkId,
        id: Option<&LoginId>,
    ) -> Vec<UserLogin> {
        let mut map = self.live.lock().expect("logins lock");
        let Some(list) = map.get_mut(&(user.to_owned(), network.clone())) else {
            return Vec::new();
        };
        let (gone, keep): (Vec<_>, Vec<_>) =
            list.drain(..).partition(|l| id.is_none_or(|i| &l.id == i));
        *list = keep;
        gone
    }

    /// The field `user`'s login in progress asks next.
    pub(super) async fn next_field(&self, user: &str) -> Option<LoginField> {
        self.sessions
            .lock()
            .await
            .get(user)
            .and_then(|s| s.next_field().cloned())
    }

    /// The fields still asked for in `user`'s login in progress, in order.
    pub(super) async fn remaining_fields(&self, user: &str) -> Vec<LoginField> {
        self.sessions
            .lock()
            .await
            .get(user)
            .map(|s| s.fields[s.values.len().min(s.fields.len())..].to_vec())
            .unwrap_or_default()
    }

    /// Takes out `user`'s login in progress (to go on with it, or to abandon it).
    pub(super) async fn take_session(&self, user: &str) -> Option<LoginSession> {
        self.sessions.lock().await.remove(user)
    }

    /// Takes out `user`'s login in progress if its current step, not yet answered, asks for
    /// a secret (it is then moved to a login page).
    pub(super) async fn take_session_asking_secret(&self, user: &str) -> Option<LoginSession> {
        let mut sessions = self.sessions.lock().await;
        let asks_secret = sessions
            .get(user)
            .is_some_and(|s| s.values.is_empty() && s.fields.iter().any(|f| f.secret));
        if asks_secret {
            sessions.remove(user)
        } else {
            None
        }
    }

    /// Keeps `session` as `user`'s login in progress.
    pub(super) async fn keep_session(&self, user: &str, session: LoginSession) {
        self.sessions.lock().await.insert(user.to_owned(), session);
    }

    /// Records the state a login (`user` Some) or a network's link reported; returns the
    /// state before.
    pub(super) fn record_state(
        &self,
        network: &NetworkId,
        user: Option<&str>,
        state: BridgeState,
        message: Option<String>,
    ) -> Option<BridgeState> {
        let key = (network.clone(), user.unwrap_or_default().to_owned());
        self.states
            .lock()
            .expect("states lock")
            .insert(key, (state, message))
            .map(|(s, _)| s)
    }

    /// The state a login or link reported last.
    pub(super) fn state_of(&self, network: &NetworkId, user: Option<&str>) -> Option<StateReport> {
        self.states
            .lock()
            .expect("states lock")
            .get(&(network.clone(), user.unwrap_or_default().to_owned()))
            .cloned()
    }

    /// Notes that `user` was told about a problem of their login on `network`; returns
    /// whether they had not been told yet.
    pub(super) fn announce(&self, network: &NetworkId, user: &str) -> bool {
        self.announced
            .lock()
            .expect("announced lock")
            .insert((network.clone(), user.to_owned()))
    }

    /// Forgets that `user` was told about a problem on `network` (it is over); returns
    /// whether they had been told, so the recovery is worth telling too.
    pub(super) fn recovered(&self, network: &NetworkId, user: &str) -> bool {
        self.announced
            .lock()
            .expect("announced lock")
            .remove(&(network.clone(), user.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::network::kit::testing::IdleClient as Client;

    fn login(id: &str) -> UserLogin {
        UserLogin {
            id: LoginId::new(id),
            remote_name: format!("{id}@remote"),
            client: Arc::new(Client),
        }
    }

    #[test]
    fn live_logins_are_kept_per_user_and_network() {
        let logins = Logins::default();
        let (a, b) = (NetworkId::new("a"), NetworkId::new("b"));
        logins.register("@u:hs", &a, login("1"));
        logins.register("@u:hs", &a, login("2"));
        logins.register("@u:hs", &b, login("3"));
        logins.register("@v:hs", &a, login("4"));
        // A login registered again replaces itself.
        logins.register("@u:hs", &a, login("1"));
        let ids = |v: Vec<UserLogin>| v.into_iter().map(|l| l.id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(logins.live("@u:hs", &a)), ["2", "1"]);
        let all: Vec<_> = logins
            .all_live("@u:hs")
            .into_iter()
            .map(|(n, l)| format!("{n}:{}", l.id))
            .collect();
        assert_eq!(all, ["a:1", "a:2", "b:3"]);
        assert_eq!(
            ids(logins.remove("@u:hs", &a, Some(&LoginId::new("2")))),
            ["2"]
        );
        assert_eq!(ids(logins.live("@u:hs", &a)), ["1"]);
        assert_eq!(ids(logins.remove("@u:hs", &a, None)), ["1"]);
        assert!(logins.live("@u:hs", &a).is_empty());
        assert!(logins.remove("@w:hs", &a, None).is_empty());
        assert_eq!(ids(logins.live("@v:hs", &a)), ["4"]);
    }

    #[test]
    fn states_and_announcements_are_per_login() {
        let logins = Logins::default();
        let n = NetworkId::new("n");
        assert_eq!(
            logins.record_state(&n, None, BridgeState::Connected, None),
            None
        );
        assert_eq!(
            logins.record_state(
                &n,
                Some("@u:hs"),
                BridgeState::BadCredentials,
                Some("no".into())
            ),
            None
        );
        assert_eq!(
            logins.record_state(&n, None, BridgeState::TransientDisconnect, None),
            Some(BridgeState::Connected)
        );
        assert_eq!(
            logins.state_of(&n, Some("@u:hs")),
            Some((BridgeState::BadCredentials, Some("no".into())))
        );
        assert!(!logins.recovered(&n, "@u:hs"), "nothing was announced");
        assert!(logins.announce(&n, "@u:hs"));
        assert!(!logins.announce(&n, "@u:hs"), "announced once");
        assert!(logins.recovered(&n, "@u:hs"));
        assert!(!logins.recovered(&n, "@u:hs"));
    }
}
