//! Portals as the core handles them: a new portal's room made with its ghost and presence,
//! bridge info written, notices, clean-up. The records and rooms themselves are
//! [`super::portals::Portals`]'s.

use tracing::{info, warn};

use super::{Bridge, BridgeError, room_id, user_id};
use crate::network::{ChatKind, RemoteUserId};
use crate::store::{PortalKey, PortalRecord};

/// Something the bridge does in a room that needs power there.
#[derive(Clone, Copy, Debug)]
pub enum PowerNeed<'a> {
    /// Sending state of this type.
    State(&'a str),
    /// Redacting others' events.
    Redact,
}

/// The power level `need` takes, and the level `user` has, by a room's `m.room.power_levels`
/// content (`None` when the room has none: the spec's defaults apply).
pub fn power_levels_for(
    levels: Option<&serde_json::Value>,
    user: &str,
    need: PowerNeed<'_>,
) -> (i64, i64) {
    let int = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
    };
    let Some(pl) = levels else {
        // Without a power-levels event the creator has 100 and everyone else 0; state needs 0.
        return (0, 0);
    };
    let needed = match need {
        PowerNeed::State(t) => int(pl.pointer(&format!(
            "/events/{}",
            t.replace('~', "~0").replace('/', "~1")
        )))
        .or_else(|| int(pl.get("state_default")))
        .unwrap_or(50),
        PowerNeed::Redact => int(pl.get("redact")).unwrap_or(50),
    };
    let has = int(pl.get("users").and_then(|u| u.get(user)))
        .or_else(|| int(pl.get("users_default")))
        .unwrap_or(0);
    (needed, has)
}

impl Bridge {
    /// Writes the bridge info state into an existing portal room, as `sender`.
    pub async fn write_bridge_info(
        &self,
        portal: &PortalRecord,
        sender: Option<&str>,
    ) -> Result<(), BridgeError> {
        let rid = room_id(&portal.room_id)?;
        let as_user = sender.map(user_id).transpose()?;
        for (t, key, content) in self
            .portals
            .bridge_info_state(&portal.key, portal.name.as_deref())
        {
            let sent = self
                .sender
                .state(as_user.as_deref(), &rid, &t, &key, &content)
                .await;
            if let Err(e) = sent {
                // The bot asks for the power it lacks; a ghost in a direct chat a user made
                // (where it has none) does without bridge info, silently.
                if sender.is_none() {
                    self.tell_missing_power(
                        &portal.room_id,
                        None,
                        PowerNeed::State(&t),
                        &format!("mark this room as bridged (the `{t}` state)"),
                        &e,
                    )
                    .await;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// After the homeserver refused `speaker` (the bot when `None`) something in `room` for
    /// lack of power: says so in the room, once per room and need while the bridge runs, with
    /// the power level it takes, so a room admin can fix it. Other failures are only logged.
    pub async fn tell_missing_power(
        &self,
        room: &str,
        speaker: Option<&str>,
        need: PowerNeed<'_>,
        doing: &str,
        error: &BridgeError,
    ) {
        self.sender
            .tell_missing_power(room, speaker, need, doing, error)
            .await;
    }

    /// The user who speaks for the bridge in a portal: the contact's ghost in a direct chat
    /// (the bot is not in those rooms), the bot in a group chat.
    pub fn portal_speaker(&self, portal: &PortalRecord) -> String {
        match portal.kind {
            ChatKind::Direct => self.ghost_user_id(&portal.key.network, portal.key.chat.as_str()),
            ChatKind::Group => self.bot().to_string(),
            // The bot may not be in a room a user opened to remote members; a member is.
            ChatKind::Fanout => match portal.members.first() {
                Some(m) => self.ghost_user_id(&portal.key.network, m),
                None => self.bot().to_string(),
            },
        }
    }

    /// Creates the room of a direct chat between Matrix user `receiver` and the remote contact
    /// the portal key names. The ghost creates the room and invites the user, so the room is a
    /// plain two-person DM. Only on the portal's queue.
    pub(super) async fn create_dm_portal(
        &self,
        key: &PortalKey,
        receiver: &str,
        contact_name: Option<&str>,
    ) -> Result<PortalRecord, BridgeError> {
        let ghost = self
            .ghosts
            .ensure(
                &key.network,
                &RemoteUserId::new(key.chat.as_str()),
                contact_name,
            )
            .await?;
        let room = self
            .portals
            .create_direct_room(key, &user_id(&ghost)?, &user_id(receiver)?, contact_name)
            .await?;
        self.ghosts.note_joined(&ghost, room.as_str(), true);
        let mut record = PortalRecord::new(key.clone(), room.as_str(), ChatKind::Direct);
        record.name = contact_name.map(str::to_owned);
        self.portals.save(&record)?;
        info!(room_id = %room, portal = %key, "created direct chat portal");
        self.publish_current_presence(receiver, &key.network, None)
            .await;
        Ok(record)
    }

    /// Sends an `m.notice` into a portal as its speaker. Failures are logged, not returned:
    /// a notice is best effort.
    pub async fn portal_notice(&self, portal: &PortalRecord, txn_id: &str, text: &str) {
        let speaker = self.portal_speaker(portal);
        if let Err(e) = self
            .send_notice(Some(&speaker), &portal.room_id, txn_id, text)
            .await
        {
            warn!(room_id = %portal.room_id, error = %crate::error::chain(&e), "could not send notice");
        }
    }

    /// Sends an `m.notice` as `sender` (the bot when `None`).
    pub async fn send_notice(
        &self,
        sender: Option<&str>,
        room: &str,
        txn_id: &str,
        text: &str,
    ) -> Result<(), BridgeError> {
        self.sender.notice(sender, room, txn_id, text).await
    }

    /// Removes a portal: every ghost and the bot leave the room, and the store forgets it.
    /// Only on the portal's queue.
    pub(super) async fn delete_portal(&self, portal: &PortalRecord) -> Result<(), BridgeError> {
        let rid = room_id(&portal.room_id)?;
        let members = match self.rooms.members(Some(self.bot()), &rid).await {
            Ok(m) => m,
            Err(_) => {
                // The bot is not in DM rooms: ask as the contact's ghost.
                let speaker = user_id(&self.portal_speaker(portal))?;
                self.rooms
                    .members(Some(&speaker), &rid)
                    .await
                    .unwrap_or_default()
            }
        };
        for m in members
            .iter()
            .filter(|m| self.parse_ghost(m.as_str()).is_some())
        {
            self.ghosts.leave(m.as_str(), &portal.room_id).await?;
        }
        if members.iter().any(|m| m.as_str() == self.bot().as_str()) {
            self.ghosts
                .leave(self.bot().as_str(), &portal.room_id)
                .await?;
        }
        self.portals.forget(portal)?;
        info!(room_id = %portal.room_id, portal = %portal.key, "deleted portal");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn power_needed_and_held_follow_the_room_levels() {
        let pl = json!({
            "users": {"@bot:hs": 10, "@admin:hs": 100},
            "users_default": 0,
            "state_default": 50,
            "events": {"m.bridge": 75},
            "redact": "60"
        });
        assert_eq!(
            power_levels_for(Some(&pl), "@bot:hs", PowerNeed::State("m.bridge")),
            (75, 10)
        );
        assert_eq!(
            power_levels_for(
                Some(&pl),
                "@bot:hs",
                PowerNeed::State("uk.half-shot.bridge")
            ),
            (50, 10)
        );
        assert_eq!(
            power_levels_for(Some(&pl), "@other:hs", PowerNeed::Redact),
            (60, 0)
        );
        assert_eq!(power_levels_for(None, "@bot:hs", PowerNeed::Redact), (0, 0));
    }
}
