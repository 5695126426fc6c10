//! [`Joined`]: which users of the bridge (ghosts, the bot) are known to be in which rooms,
//! so that the homeserver is not asked to join them again. In memory only: after a restart
//! it is learnt again as rooms are used, and a join the homeserver already has is harmless.

use std::collections::HashSet;
use std::sync::Mutex;

/// (user, room) pairs known to be joined, behind a lock only this type holds.
#[derive(Default)]
pub(super) struct Joined(Mutex<HashSet<(String, String)>>);

impl Joined {
    /// Whether `user` is known to be in `room`.
    pub(super) fn contains(&self, user: &str, room: &str) -> bool {
        self.0
            .lock()
            .expect("joined lock")
            .contains(&(user.to_owned(), room.to_owned()))
    }

    /// Notes that `user` is in `room` (`joined`) or no longer is.
    pub(super) fn note(&self, user: &str, room: &str, joined: bool) {
        let key = (user.to_owned(), room.to_owned());
        let mut set = self.0.lock().expect("joined lock");
        if joined {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Joined;

    #[test]
    fn joins_are_known_per_user_and_room_until_a_leave() {
        let joined = Joined::default();
        assert!(!joined.contains("@g:hs", "!r:hs"));
        joined.note("@g:hs", "!r:hs", true);
        joined.note("@g:hs", "!r:hs", true);
        assert!(joined.contains("@g:hs", "!r:hs"));
        assert!(!joined.contains("@g:hs", "!s:hs"));
        assert!(!joined.contains("@h:hs", "!r:hs"));
        joined.note("@g:hs", "!r:hs", false);
        assert!(!joined.contains("@g:hs", "!r:hs"));
        // Leaving a room one was not known to be in changes nothing.
        joined.note("@h:hs", "!r:hs", false);
        assert!(!joined.contains("@h:hs", "!r:hs"));
    }
}
