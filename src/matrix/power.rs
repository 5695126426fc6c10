//! Power levels: what a user may do in a room, read from `m.room.power_levels` as the
//! authorization rules of the client-server spec define it
//! (<https://spec.matrix.org/latest/client-server-api/#mroompower_levels>).

use serde_json::Value;

/// The power level a room gives `user`: its entry in `users`, else `users_default`, else 0.
/// Levels written as strings (older rooms) are read too.
pub fn user_level(power_levels: &Value, user: &str) -> i64 {
    power_levels
        .get("users")
        .and_then(|u| u.get(user))
        .and_then(level)
        .or_else(|| power_levels.get("users_default").and_then(level))
        .unwrap_or(0)
}

/// Whether `user` may redact other users' events in a room with these power levels (`None`:
/// the room has no `m.room.power_levels` event). `creators` are the users the room version
/// privileges as creators (room version 12 and later), who may do anything.
///
/// Redacting someone else's event needs both the `redact` level (default 50) and the level to
/// send `m.room.redaction` events (`events`, else `events_default`, default 0).
pub fn can_redact(power_levels: Option<&Value>, user: &str, creators: &[String]) -> bool {
    if creators.iter().any(|c| c == user) {
        return true;
    }
    // Without power levels only the creator has power, and older room versions do not
    // tell us who that is here: assume the worst.
    let Some(pl) = power_levels else {
        return false;
    };
    let mine = user_level(pl, user);
    let redact = pl.get("redact").and_then(level).unwrap_or(50);
    let send = pl
        .get("events")
        .and_then(|e| e.get("m.room.redaction"))
        .and_then(level)
        .or_else(|| pl.get("events_default").and_then(level))
        .unwrap_or(0);
    mine >= redact && mine >= send
}

fn level(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BOT: &str = "@bot:hs";

    #[test]
    fn the_redact_level_decides() {
        let pl = json!({"users": {"@alice:hs": 100}, "users_default": 0, "redact": 50});
        assert!(!can_redact(Some(&pl), BOT, &[]));
        assert!(can_redact(Some(&pl), "@alice:hs", &[]));
        let pl = json!({"users": {BOT: 50}});
        assert!(can_redact(Some(&pl), BOT, &[]));
        let pl = json!({"users": {BOT: "100"}, "redact": "100"});
        assert!(can_redact(Some(&pl), BOT, &[]));
        let pl = json!({"users_default": 60});
        assert!(can_redact(Some(&pl), BOT, &[]));
    }

    #[test]
    fn sending_the_redaction_needs_its_event_level_too() {
        let pl = json!({"users": {BOT: 50}, "events": {"m.room.redaction": 75}});
        assert!(!can_redact(Some(&pl), BOT, &[]));
        let pl = json!({"users": {BOT: 50}, "events_default": 51});
        assert!(!can_redact(Some(&pl), BOT, &[]));
    }

    #[test]
    fn creators_may_always_and_missing_levels_are_doubted() {
        assert!(can_redact(Some(&json!({})), BOT, &[BOT.to_owned()]));
        assert!(!can_redact(None, BOT, &[]));
        assert!(can_redact(None, BOT, &[BOT.to_owned()]));
    }
}
