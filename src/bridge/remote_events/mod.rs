//! Remote network → Matrix.

mod chats;
mod ghosts;
mod messages;

use serde_json::{Value, json};
use tracing::{debug, info, warn};

use std::time::Instant;

use super::limits::Limit;
use super::{Bridge, BridgeError, now_ms, room_id, user_id};
use crate::config::PermissionLevel;
use crate::error::Reason;
use crate::network::{
    ChatKind, MembershipChange, MessageContent, MessageKind, NetworkId, Presence, RemoteEvent,
    RemoteEventKind, RemoteMessageId, RemoteUserId,
};
use crate::store::{MessageRecord, PortalKey, PortalRecord};

/// The portal an event belongs to: per receiver for direct chats, shared for group chats.
pub(super) fn portal_key(network: &NetworkId, ev: &RemoteEvent) -> PortalKey {
    match ev.chat_kind {
        ChatKind::Direct => {
            PortalKey::new(network.as_str(), ev.chat.as_str(), ev.receiver.as_deref())
        }
        ChatKind::Group | ChatKind::Fanout => {
            PortalKey::new(network.as_str(), ev.chat.as_str(), None)
        }
    }
}

/// The Matrix content of a message.
pub fn matrix_content(c: &MessageContent) -> Value {
    let msgtype = match c.kind {
        MessageKind::Text => "m.text",
        MessageKind::Emote => "m.emote",
        MessageKind::Notice => "m.notice",
    };
    // `m.mentions` is always set, from real mentions only: text such as "@room" in a remote
    // message never pings anyone.
    let mut v = json!({"msgtype": msgtype, "body": c.body, "m.mentions": {}});
    if !c.mentions.is_empty() {
        v["m.mentions"] = json!({"user_ids": c.mentions});
    }
    if let Some(html) = &c.html {
        v["format"] = json!("org.matrix.custom.html");
        v["formatted_body"] = json!(html);
    }
    v
}

/// The Matrix content of an edit of the message `original` to `content`: the new content
/// in `m.new_content`, and a fallback marked with `* ` for clients that do not show edits.
fn edit_content(content: &MessageContent, original: &str) -> Value {
    let new = matrix_content(content);
    let mut c = new.clone();
    c["body"] = json!(format!("* {}", content.body));
    if let Some(html) = &content.html {
        c["formatted_body"] = json!(format!("* {html}"));
    }
    c["m.new_content"] = new;
    c["m.relates_to"] = json!({"rel_type": "m.replace", "event_id": original});
    c
}

/// What became of a remote event, for the metrics: `ok`, or why not (`unknown_target`,
/// `rate_limited`, `no_portal`, ...).
type Outcome = &'static str;

/// A step of handling a remote event: what the next step needs, or the event's
/// [`Outcome`] when it ends here.
type Step<T> = Result<T, Outcome>;

/// An event's chat and sender, ready: the portal, and the sender's ghost in its room.
struct InChat {
    /// The portal's key.
    key: PortalKey,
    /// The portal.
    portal: PortalRecord,
    /// The sender's ghost.
    ghost: String,
    /// The ghost, as a user ID.
    gid: ruma::OwnedUserId,
    /// The portal's room.
    rid: ruma::OwnedRoomId,
    /// The homeserver transaction ID of what the event sends (from its inbox sequence).
    txn: String,
}

/// Parses a stored event ID.
fn event_id(id: &str) -> Result<ruma::OwnedEventId, BridgeError> {
    ruma::EventId::parse(id)
        .map_err(|e| BridgeError::Invalid(Reason::because(format!("bad event ID {id}"), e)))
}

/// The ID under which a reaction is mapped: one per message, reacting user and key.
pub(super) fn reaction_id(target: &RemoteMessageId, sender: &str, key: &str) -> RemoteMessageId {
    RemoteMessageId::new(format!("{target}\u{1e}{sender}\u{1e}{key}"))
}

impl Bridge {
    /// Bridges one remote event to Matrix. `seq` is the event's inbox sequence, from which
    /// homeserver transaction IDs are derived so that a retry never duplicates.
    pub(super) async fn handle_remote_event(
        &self,
        seq: u64,
        network: &NetworkId,
        ev: &RemoteEvent,
    ) -> Result<(), BridgeError> {
        // What the limits admitted for this event; given back when handling fails, so that
        // retries of one item do not use up the budget.
        let mut taken = Vec::new();
        let result = self.bridge_remote_event(seq, network, ev, &mut taken).await;
        if result.is_err() && !taken.is_empty() {
            let asks: Vec<(Limit, &str)> = taken.iter().map(|(l, k)| (*l, k.as_str())).collect();
            self.limits.refund(&asks, Instant::now());
        }
        result
    }

    /// One handler per kind of event. Each says what became of the event (`ok`,
    /// `unknown_target`, `rate_limited`, ...), counted here once.
    async fn bridge_remote_event(
        &self,
        seq: u64,
        network: &NetworkId,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<(), BridgeError> {
        use RemoteEventKind as K;
        let result = match &ev.kind {
            K::Presence(p) => self.remote_presence(network, ev, p, taken).await?,
            K::Profile => self.remote_profile(network, ev, taken).await?,
            K::Avatar { hash, data } => {
                self.remote_avatar(network, ev, hash, data.as_deref(), taken)
                    .await?
            }
            K::ContactRequest => self.contact_request(seq, network, ev).await?,
            K::ChatExists => match self.portal_of(network, ev, taken).await? {
                Ok(_) => "ok",
                Err(outcome) => outcome,
            },
            K::MessageAlias { target, alias } => {
                match self.open_portal(network, ev, taken).await? {
                    Ok((key, _)) => self.message_alias(&key, target, alias)?,
                    Err(outcome) => outcome,
                }
            }
            K::Moderation { target, reason } => match self.open_portal(network, ev, taken).await? {
                Ok((key, portal)) => {
                    self.remote_moderation(seq, &key, &portal, target, reason.as_deref())
                        .await?
                }
                Err(outcome) => outcome,
            },
            K::DeliveryFailed { target, reason } => {
                match self.open_portal(network, ev, taken).await? {
                    Ok((key, portal)) => {
                        self.delivery_failed(seq, &key, &portal, target, reason)
                            .await?
                    }
                    Err(outcome) => outcome,
                }
            }
            K::Message {
                id,
                content,
                reply_to,
            } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => {
                    self.remote_message(&at, ev, id, content, reply_to.as_ref())
                        .await?
                }
                Err(outcome) => outcome,
            },
            K::Edit { target, content } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => self.remote_edit(&at, ev, target, content).await?,
                Err(outcome) => outcome,
            },
            K::Redaction { target } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => self.remote_redaction(&at, target).await?,
                Err(outcome) => outcome,
            },
            K::Reaction {
                target,
                key,
                remove,
            } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => self.remote_reaction(&at, ev, target, key, *remove).await?,
                Err(outcome) => outcome,
            },
            K::Typing { active } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => {
                    self.sender.typing(&at.gid, &at.rid, *active).await?;
                    "ok"
                }
                Err(outcome) => outcome,
            },
            K::Receipt { up_to } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => self.remote_receipt(&at, up_to).await?,
                Err(outcome) => outcome,
            },
            K::ChatInfo { name, topic } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => {
                    self.update_chat_info(&at.portal, name.as_deref(), topic.as_deref())
                        .await?;
                    "ok"
                }
                Err(outcome) => outcome,
            },
            K::Membership { change } => match self.enter_chat(seq, network, ev, taken).await? {
                Ok(at) => {
                    if *change == MembershipChange::Leave {
                        self.ghosts.leave(&at.ghost, &at.portal.room_id).await?;
                    }
                    "ok"
                }
                Err(outcome) => outcome,
            },
        };
        self.metrics.event("to_matrix", ev.kind.name(), result);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(body: &str, html: Option<&str>) -> MessageContent {
        MessageContent {
            kind: MessageKind::Text,
            body: body.into(),
            html: html.map(str::to_owned),
            mentions: Vec::new(),
            attachment: None,
        }
    }

    #[test]
    fn matrix_content_never_mentions_what_is_not_a_mention() {
        for (kind, msgtype) in [
            (MessageKind::Text, "m.text"),
            (MessageKind::Emote, "m.emote"),
            (MessageKind::Notice, "m.notice"),
        ] {
            let c = matrix_content(&MessageContent {
                kind,
                ..text("@room hi", None)
            });
            assert_eq!(
                c,
                json!({"msgtype": msgtype, "body": "@room hi", "m.mentions": {}})
            );
        }
        let mut m = text("hi", Some("<b>hi</b>"));
        m.mentions = vec!["@a:hs".into()];
        assert_eq!(
            matrix_content(&m),
            json!({"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": ["@a:hs"]},
                "format": "org.matrix.custom.html", "formatted_body": "<b>hi</b>"})
        );
    }

    #[test]
    fn an_edit_carries_the_new_content_and_a_marked_fallback() {
        for (body, html) in [("new", None), ("new", Some("<i>new</i>")), ("", None)] {
            let c = edit_content(&text(body, html), "$orig");
            assert_eq!(c["m.new_content"], matrix_content(&text(body, html)));
            assert_eq!(c["body"], json!(format!("* {body}")));
            assert_eq!(
                c["formatted_body"],
                html.map_or(Value::Null, |h| json!(format!("* {h}")))
            );
            assert_eq!(
                c["m.relates_to"],
                json!({"rel_type": "m.replace", "event_id": "$orig"})
            );
            // What Matrix clients read back is an edit of that event.
            let read: ruma::events::room::message::RoomMessageEventContent =
                serde_json::from_value(c).expect("a valid edit");
            assert!(matches!(
                read.relates_to,
                Some(ruma::events::room::message::Relation::Replacement(r)) if r.event_id == "$orig"
            ));
        }
    }
}
