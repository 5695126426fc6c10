//! Ghost presence, kept alive. Homeservers time out the presence of users who do not sync
//! (Synapse: 30 s after the last update), and ghosts never sync: a remote contact shown
//! online would turn offline half a minute later although the network still says it is
//! there. So the bridge remembers which ghosts are online or away and sets their presence
//! again every `bridge.presence_refresh_seconds`, until the network says they left.
//!
//! A change and a refresh of one ghost are made under the ghost's lock, so a refresh that
//! read "online" cannot land after the change to "offline" that came from the network. Each
//! presence is kept with where it was learnt: the network's bridge-wide link, or a user's own
//! login on it. When that link or login goes down, what it said is no longer known: those
//! ghosts are no longer refreshed, and the homeserver times them out to offline.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use tracing::debug;

use super::Ghosts;
use crate::bridge::{BridgeError, user_id};
use crate::network::{NetworkId, PresenceState};

/// Ghosts refreshed at once.
const CONCURRENCY: usize = 4;

/// The presence of the ghosts whose remote users are online or away, by ghost user ID.
#[derive(Default)]
pub(super) struct LivePresence {
    by_ghost: Mutex<HashMap<String, Shown>>,
}

/// A presence as the homeserver should show it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shown {
    network: NetworkId,
    /// The Matrix user whose own login told it; `None`: the bridge-wide link.
    via: Option<String>,
    state: &'static str,
    status: Option<String>,
}

impl LivePresence {
    fn get(&self, ghost: &str) -> Option<Shown> {
        self.by_ghost
            .lock()
            .expect("presence lock")
            .get(ghost)
            .cloned()
    }

    fn set(&self, ghost: &str, shown: Option<Shown>) {
        let mut by_ghost = self.by_ghost.lock().expect("presence lock");
        match shown {
            Some(s) => by_ghost.insert(ghost.to_owned(), s),
            None => by_ghost.remove(ghost),
        };
    }

    /// Stops refreshing the ghosts whose presence `network` told through `via` (a user's own
    /// login, or the bridge-wide link for `None`).
    fn forget(&self, network: &NetworkId, via: Option<&str>) {
        let mut by_ghost = self.by_ghost.lock().expect("presence lock");
        by_ghost.retain(|_, s| !(&s.network == network && s.via.as_deref() == via));
    }

    fn ghosts(&self) -> Vec<String> {
        let by_ghost = self.by_ghost.lock().expect("presence lock");
        by_ghost.keys().cloned().collect()
    }
}

/// The Matrix name of a presence state.
fn matrix_state(state: PresenceState) -> &'static str {
    match state {
        PresenceState::Online => "online",
        PresenceState::Unavailable => "unavailable",
        PresenceState::Offline => "offline",
    }
}

impl Ghosts {
    /// Shows `state` (with `status`) as the presence of `ghost`, and keeps showing it while it
    /// is not offline and the link or login it came through (`via`: the Matrix user whose own
    /// login told it) stays up.
    pub(in crate::bridge) async fn set_presence(
        &self,
        network: &NetworkId,
        via: Option<&str>,
        ghost: &str,
        state: PresenceState,
        status: Option<&str>,
    ) -> Result<(), BridgeError> {
        let _ghost = self.locks.lock(ghost).await;
        let shown = Shown {
            network: network.clone(),
            via: via.map(str::to_owned),
            state: matrix_state(state),
            status: status.map(str::to_owned),
        };
        self.hs
            .set_presence(Some(&user_id(ghost)?), shown.state, status)
            .await?;
        self.presence
            .set(ghost, (state != PresenceState::Offline).then_some(shown));
        Ok(())
    }

    /// Stops refreshing the presence of the ghosts that `network` told through `via` (the
    /// own login of that Matrix user, or the bridge-wide link for `None`): what it said of
    /// its users is no longer known, as it went down.
    pub(in crate::bridge) fn forget_presence_on(&self, network: &NetworkId, via: Option<&str>) {
        self.presence.forget(network, via);
    }

    /// Sets again, every `every`, the presence of the ghosts shown online or away. Runs until
    /// the task is dropped.
    pub(in crate::bridge) async fn keep_presence(&self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            futures::stream::iter(self.presence.ghosts())
                .for_each_concurrent(CONCURRENCY, |ghost| self.refresh_presence(ghost))
                .await;
        }
    }

    async fn refresh_presence(&self, ghost: String) {
        let _ghost = self.locks.lock(&ghost).await;
        // Read under the lock: a change made meanwhile is what is shown now.
        let Some(shown) = self.presence.get(&ghost) else {
            return;
        };
        let Ok(uid) = user_id(&ghost) else {
            self.presence.set(&ghost, None);
            return;
        };
        let result = match self
            .hs
            .set_presence(Some(&uid), shown.state, shown.status.as_deref())
            .await
        {
            Ok(()) => "ok",
            Err(e) => {
                debug!(ghost, error = %crate::error::chain(&e), "presence not refreshed; next time");
                "failed"
            }
        };
        self.metrics.event("to_matrix", "presence_refresh", result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(network: &str, state: &'static str, status: Option<&str>) -> Shown {
        Shown {
            network: NetworkId::new(network),
            via: None,
            state,
            status: status.map(str::to_owned),
        }
    }

    #[test]
    fn offline_ghosts_are_forgotten_and_the_others_kept_as_last_set() {
        let live = LivePresence::default();
        live.set("@a:x", Some(shown("n", "online", Some("here"))));
        live.set("@b:x", Some(shown("n", "online", Some("here"))));
        live.set("@b:x", Some(shown("n", "unavailable", None)));
        live.set("@a:x", None);
        assert_eq!(live.ghosts(), vec!["@b:x".to_owned()]);
        assert_eq!(live.get("@b:x"), Some(shown("n", "unavailable", None)));
        assert_eq!(live.get("@a:x"), None);
    }

    #[test]
    fn a_network_going_down_forgets_only_its_own_ghosts() {
        let live = LivePresence::default();
        for (ghost, network) in [("@a:x", "one"), ("@b:x", "two"), ("@c:x", "one")] {
            live.set(ghost, Some(shown(network, "online", None)));
        }
        live.forget(&NetworkId::new("one"), None);
        assert_eq!(live.ghosts(), vec!["@b:x".to_owned()]);
    }

    /// What each source told is forgotten when that source goes down, and nothing else:
    /// every pair of (network, source) going down against ghosts learnt from every pair.
    #[test]
    fn a_login_going_down_forgets_only_what_it_told() {
        let networks = ["one", "two"];
        let sources = [None, Some("@alice:x"), Some("@bob:x")];
        let mut all = Vec::new();
        for network in networks {
            for via in sources {
                all.push((
                    network,
                    via,
                    format!(
                        "@{network}_{}:x",
                        via.unwrap_or("gw")
                            .trim_start_matches('@')
                            .replace(':', "_")
                    ),
                ));
            }
        }
        for down_network in networks {
            for down_via in sources {
                let live = LivePresence::default();
                for (network, via, ghost) in &all {
                    let mut s = shown(network, "online", None);
                    s.via = via.map(str::to_owned);
                    live.set(ghost, Some(s));
                }
                live.forget(&NetworkId::new(down_network), down_via);
                let mut kept = live.ghosts();
                kept.sort();
                let mut want: Vec<String> = all
                    .iter()
                    .filter(|(n, v, _)| !(*n == down_network && *v == down_via))
                    .map(|(_, _, g)| g.clone())
                    .collect();
                want.sort();
                assert_eq!(kept, want, "{down_network} through {down_via:?} went down");
            }
        }
    }
}
