//! Matrix users' presence as XMPP contacts see it: the last presence published per user, at
//! most one broadcast per user every two seconds (changes in between are coalesced into one
//! trailing broadcast of the latest), and the stanzas that carry presence and subscriptions.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::presence::{Presence as XmppPresence, Show, Type as PresenceType};
use xmpp_parsers::stanza::Stanza;

use super::Shared;
use crate::network::contacts as roster;
use crate::network::{NetworkError, Presence, PresenceState};

/// Shortest time between two presence broadcasts of one user.
const PRESENCE_INTERVAL: Duration = Duration::from_secs(2);

/// What to do with a presence change.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    /// Broadcast now.
    Now,
    /// Broadcast the latest presence after this delay.
    Later(Duration),
    /// A later broadcast is already scheduled; it will carry this change.
    Skip,
}

/// What is known of one Matrix user's presence on XMPP.
#[derive(Debug, Default)]
struct Published {
    /// The presence last published.
    last: Option<Presence>,
    /// When it was last broadcast.
    sent_at: Option<Instant>,
    /// Whether a trailing broadcast is scheduled.
    trailing: bool,
}

impl Published {
    /// The rate limit: whether a change at `now` goes out now, later or with the trailing
    /// broadcast already scheduled.
    fn gate(&mut self, now: Instant) -> Gate {
        match self.sent_at {
            Some(sent) if now.duration_since(sent) < PRESENCE_INTERVAL => {
                if self.trailing {
                    Gate::Skip
                } else {
                    self.trailing = true;
                    Gate::Later(PRESENCE_INTERVAL - now.duration_since(sent))
                }
            }
            _ => {
                self.sent_at = Some(now);
                self.trailing = false;
                Gate::Now
            }
        }
    }
}

/// The presence bookkeeping of every Matrix user, behind one lock.
#[derive(Debug, Default)]
pub(super) struct Presences {
    users: Mutex<HashMap<String, Published>>,
}

impl Presences {
    /// The presence last published for `user`.
    pub fn last(&self, user: &str) -> Option<Presence> {
        self.users
            .lock()
            .expect("presence lock")
            .get(user)
            .and_then(|p| p.last.clone())
    }

    /// Records `presence` as `user`'s latest; true when it differs from the one before.
    pub fn record(&self, user: &str, presence: &Presence) -> bool {
        let mut users = self.users.lock().expect("presence lock");
        let entry = users.entry(user.to_owned()).or_default();
        let changed = entry.last.as_ref() != Some(presence);
        entry.last = Some(presence.clone());
        changed
    }

    /// Records a change to `presence` and says when to broadcast it; `None` when nothing
    /// changed or a scheduled broadcast will carry it.
    fn change(&self, user: &str, presence: &Presence, now: Instant) -> Option<Gate> {
        let mut users = self.users.lock().expect("presence lock");
        let entry = users.entry(user.to_owned()).or_default();
        if entry.last.as_ref() == Some(presence) {
            return None;
        }
        entry.last = Some(presence.clone());
        match entry.gate(now) {
            Gate::Skip => None,
            gate => Some(gate),
        }
    }

    /// The trailing broadcast of `user` goes out at `now`.
    fn trailing_sent(&self, user: &str, now: Instant) {
        if let Some(e) = self.users.lock().expect("presence lock").get_mut(user) {
            e.sent_at = Some(now);
            e.trailing = false;
        }
    }
}

/// A presence stanza from a gateway address: `None` means plain available.
pub(super) fn presence_stanza(from: Jid, to: Jid, p: Option<&Presence>) -> Stanza {
    let mut out = match p.map(|p| p.state) {
        Some(PresenceState::Offline) => XmppPresence::new(PresenceType::Unavailable),
        _ => XmppPresence::new(PresenceType::None),
    };
    if let Some(p) = p {
        if p.state == PresenceState::Unavailable {
            out.show = Some(Show::Away);
        }
        if let Some(status) = &p.status {
            out.statuses.insert(Default::default(), status.clone());
        }
    }
    out.from = Some(from);
    out.to = Some(to);
    out.into()
}

/// A subscription-handshake stanza.
pub(super) fn subscription_stanza(from: Jid, to: Jid, type_: PresenceType) -> Stanza {
    let mut out = XmppPresence::new(type_);
    out.from = Some(from);
    out.to = Some(to);
    out.into()
}

impl Shared {
    /// Publishes a Matrix user's presence from the user's gateway address: at once, or (when
    /// the last broadcast was less than two seconds ago) in one trailing broadcast of the
    /// latest presence. Nothing is sent when the presence did not change.
    pub(super) async fn publish_presence(
        self: &Arc<Self>,
        user: &str,
        presence: &Presence,
    ) -> Result<(), NetworkError> {
        match self.presences.change(user, presence, Instant::now()) {
            None | Some(Gate::Skip) => Ok(()),
            Some(Gate::Now) => self.broadcast_presence(user).await,
            Some(Gate::Later(delay)) => {
                let shared = Arc::clone(self);
                let user = user.to_owned();
                // A trailing update: a shutdown may drop it.
                self.tasks()?.spawn_loop(async move {
                    tokio::time::sleep(delay).await;
                    shared.presences.trailing_sent(&user, Instant::now());
                    if let Err(e) = shared.broadcast_presence(&user).await {
                        tracing::debug!(user, error = %crate::error::chain(&e), "trailing presence broadcast failed");
                    }
                });
                Ok(())
            }
        }
    }

    /// Sends a Matrix user's latest presence to every contact allowed to see it.
    async fn broadcast_presence(&self, user: &str) -> Result<(), NetworkError> {
        let Some(presence) = self.presences.last(user) else {
            return Ok(());
        };
        let Some(from) = self.addressing.puppet(user) else {
            return Ok(());
        };
        let store = self.store()?;
        let contacts = roster::of_user(store, user)
            .map_err(|e| NetworkError::Internal(crate::error::Reason::from_error(e)))?;
        for (contact, _) in contacts.into_iter().filter(|(_, s)| s.from) {
            let Ok(to) = BareJid::from_str(&contact) else {
                continue;
            };
            let stanza = presence_stanza(from.clone().into(), to.into(), Some(&presence));
            self.out
                .send((stanza, None))
                .await
                .map_err(|_| NetworkError::Transient("the XMPP link is stopping".into()))?;
        }
        Ok(())
    }

    /// A Matrix user's current presence read again through the core (the homeserver's), kept
    /// as the last published; what was known before when the core cannot say. Used when a
    /// contact is let in, so that the first presence it gets is true.
    pub(super) async fn fresh_presence(&self, user: &str) -> Option<Presence> {
        if let Some(sink) = self.sink.get()
            && let Some(p) = sink.matrix_presence(user).await
        {
            self.presences.record(user, &p);
            return Some(p);
        }
        self.presences.last(user)
    }

    /// After a start: reads the presence of every Matrix user whose presence contacts may see
    /// and sends it to them (nothing was published while the bridge was down).
    pub(super) async fn refresh_watched(&self) {
        let Ok(store) = self.store() else { return };
        let users = match roster::users_seen_by_contacts(store) {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %crate::error::chain(&e), "could not list users with contacts");
                return;
            }
        };
        for user in users {
            let Some(sink) = self.sink.get() else { return };
            let Some(p) = sink.matrix_presence(&user).await else {
                continue;
            };
            if self.presences.record(&user, &p)
                && let Err(e) = self.broadcast_presence(&user).await
            {
                tracing::debug!(error = %crate::error::chain(&e), "could not send a Matrix user's presence after a start");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online() -> Presence {
        Presence {
            state: PresenceState::Online,
            status: None,
        }
    }

    fn away(status: &str) -> Presence {
        Presence {
            state: PresenceState::Unavailable,
            status: Some(status.to_owned()),
        }
    }

    #[test]
    fn presence_changes_are_rate_limited_and_coalesced() {
        let t0 = Instant::now();
        let mut entry = Published::default();
        assert_eq!(entry.gate(t0), Gate::Now);
        assert_eq!(
            entry.gate(t0 + Duration::from_millis(500)),
            Gate::Later(Duration::from_millis(1500))
        );
        assert_eq!(entry.gate(t0 + Duration::from_millis(600)), Gate::Skip);
        // The trailing broadcast ran and reset the entry.
        entry.sent_at = Some(t0 + Duration::from_secs(2));
        entry.trailing = false;
        assert_eq!(entry.gate(t0 + Duration::from_secs(5)), Gate::Now);
    }

    #[test]
    fn only_changes_are_broadcast() {
        let p = Presences::default();
        let t0 = Instant::now();
        assert_eq!(p.change("@a:hs", &online(), t0), Some(Gate::Now));
        // The same presence again: nothing to send.
        assert_eq!(p.change("@a:hs", &online(), t0), None);
        // A change soon after: one trailing broadcast, which later changes join.
        let soon = t0 + Duration::from_millis(500);
        assert_eq!(
            p.change("@a:hs", &away("lunch"), soon),
            Some(Gate::Later(Duration::from_millis(1500)))
        );
        assert_eq!(p.change("@a:hs", &away("meeting"), soon), None);
        assert_eq!(p.last("@a:hs"), Some(away("meeting")));
        // Another user is limited on their own.
        assert_eq!(p.change("@b:hs", &online(), soon), Some(Gate::Now));
        // After the trailing broadcast, a change two seconds later goes at once.
        p.trailing_sent("@a:hs", t0 + Duration::from_secs(2));
        assert_eq!(
            p.change("@a:hs", &online(), t0 + Duration::from_secs(5)),
            Some(Gate::Now)
        );
    }

    #[test]
    fn recording_says_whether_it_changed() {
        let p = Presences::default();
        assert!(p.record("@a:hs", &online()));
        assert!(!p.record("@a:hs", &online()));
        assert!(p.record("@a:hs", &away("x")));
        assert_eq!(p.last("@b:hs"), None);
    }
}
