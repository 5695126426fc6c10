//! [`Typing`]: who types in each room, as the homeserver's last `m.typing` said, so that a
//! new list becomes the changes networks are told (who started, who stopped).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// The users typing per room, behind a lock only this type holds.
#[derive(Default)]
pub(super) struct Typing(Mutex<HashMap<String, HashSet<String>>>);

impl Typing {
    /// Takes `now` as who types in `room`; returns who started (`true`) and who stopped
    /// (`false`) since the room's previous list.
    pub(super) fn replace(&self, room: &str, now: HashSet<String>) -> Vec<(String, bool)> {
        let before = self
            .0
            .lock()
            .expect("typing lock")
            .insert(room.to_owned(), now.clone())
            .unwrap_or_default();
        let mut changes: Vec<(String, bool)> =
            now.difference(&before).map(|u| (u.clone(), true)).collect();
        changes.extend(before.difference(&now).map(|u| (u.clone(), false)));
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(users: &[&str]) -> HashSet<String> {
        users.iter().map(|u| (*u).to_owned()).collect()
    }

    #[test]
    fn a_new_list_is_told_as_who_started_and_who_stopped_per_room() {
        let typing = Typing::default();
        assert_eq!(
            typing.replace("!r", set(&["@a"])),
            vec![("@a".into(), true)]
        );
        // The same list again changes nothing; another room is its own.
        assert!(typing.replace("!r", set(&["@a"])).is_empty());
        assert_eq!(
            typing.replace("!s", set(&["@a"])),
            vec![("@a".into(), true)]
        );
        let mut changes = typing.replace("!r", set(&["@b"]));
        changes.sort();
        assert_eq!(changes, vec![("@a".into(), false), ("@b".into(), true)]);
        assert_eq!(typing.replace("!r", set(&[])), vec![("@b".into(), false)]);
    }
}
