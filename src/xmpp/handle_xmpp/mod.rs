//! XMPP → bridge: messages, chat states, presence and IQs arriving on the component.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tracing::{debug, info, warn};
use xmpp_parsers::chatstates::ChatState;
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use xmpp_parsers::displayed_markers::Displayed;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::nick::Nick;
use xmpp_parsers::ns;
use xmpp_parsers::presence::{Presence, Show, Type as PresenceType};
use xmpp_parsers::receipts;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use xmpp_parsers::version::VersionResult;

mod contacts;
mod groupchat;
mod hosting;
mod queries;
mod undelivered;
mod vcards;

pub(super) use self::undelivered::{group_undelivered, undelivered_error};

use super::Shared;
use super::component::Inbound;
use super::presence::{presence_stanza, subscription_stanza};
use super::{avatar, convert, fidelity, hosted, muc, payloads};
use crate::network::contacts::{self as roster, Policy};
use crate::network::{
    BridgeState, MatrixUserStatus, MembershipChange, MessageContent, Presence as NetPresence,
    PresenceState, RemoteChatId, RemoteEvent, RemoteEventKind, RemoteMessageId,
};

/// Handles what the component receives.
pub(super) struct Handler {
    pub shared: Arc<Shared>,
    pub state: tokio::sync::watch::Sender<BridgeState>,
}

/// The error answer to an IQ (from its `to`, to its `from`).
pub(super) fn error_reply(
    iq_from: Option<Jid>,
    iq_to: Option<Jid>,
    id: String,
    condition: DefinedCondition,
) -> Stanza {
    let text = match condition {
        DefinedCondition::ServiceUnavailable | DefinedCondition::FeatureNotImplemented => {
            "not implemented by this gateway"
        }
        _ => "",
    };
    Iq::Error {
        from: iq_to,
        to: iq_from,
        id,
        error: StanzaError::new(ErrorType::Cancel, condition, "en", text),
        payload: None,
    }
    .into()
}

/// The error that tells the sender of `msg` that the bridge could not take it now (its
/// store cannot write): type `wait`, so a client may send it again later. `None` for a
/// message without a sender.
fn not_stored(msg: &Message) -> Option<Stanza> {
    msg.from.as_ref()?;
    Some(message_error(
        msg,
        ErrorType::Wait,
        DefinedCondition::ResourceConstraint,
        "the bridge cannot take messages right now; send it again in a moment",
    ))
}

/// The error answer to a message (RFC 6120 §8.3): from the address it was sent to, to its
/// sender, with its ID.
fn message_error(
    msg: &Message,
    type_: ErrorType,
    condition: DefinedCondition,
    text: &str,
) -> Stanza {
    let mut err = Message::new(msg.from.clone());
    err.type_ = MessageType::Error;
    err.from = msg.to.clone();
    err.id = msg.id.clone();
    err.payloads
        .push(StanzaError::new(type_, condition, "en", text).into());
    err.into()
}

/// What tells a sender that the homeserver cannot say now whether a user exists.
const TRY_LATER: &str = "the Matrix side cannot be reached right now; try again later";

/// How many contacts' last full JIDs are kept before the memory is cleared.
const RESOURCES_KEPT: usize = 10_000;

/// The full JID each contact last wrote a direct message from, in this run (bounded), so
/// that an error about that message reaches the client: servers drop errors sent to a bare
/// JID.
#[derive(Default)]
pub(super) struct Resources {
    last: Mutex<HashMap<String, Jid>>,
}

impl Resources {
    /// Contact `contact` wrote from `full`.
    pub fn note(&self, contact: &str, full: &Jid) {
        let mut last = self.last.lock().expect("resources lock");
        if last.len() >= RESOURCES_KEPT {
            last.clear();
        }
        last.insert(contact.to_owned(), full.clone());
    }

    /// The full JID `contact` last wrote from.
    pub fn of(&self, contact: &str) -> Option<Jid> {
        self.last
            .lock()
            .expect("resources lock")
            .get(contact)
            .cloned()
    }
}

/// The ID under which a message is remembered: its origin-id (XEP-0359), else its `id`
/// attribute, else the receiving server's stanza-id (the same in an archive's copy), else a
/// fresh one. An empty ID counts as none: every message without one would share it.
pub(crate) fn message_id(msg: &Message) -> String {
    payloads::origin_id(&msg.payloads)
        .filter(|id| !id.is_empty())
        .or_else(|| {
            msg.id
                .as_ref()
                .map(|i| i.0.clone())
                .filter(|id| !id.is_empty())
        })
        .or_else(|| {
            payloads::stanza_id(&msg.payloads, &msg.to.as_ref()?.to_bare())
                .filter(|id| !id.is_empty())
                .map(|id| format!("sid-{id}"))
        })
        .unwrap_or_else(|| format!("noid-{}", crate::network::now_ms()))
}

/// The original time of a delayed message (XEP-0203), in milliseconds, never later than now.
///
/// Read by hand: the crate's `Delay` refuses a whole delay whose `from` is not a JID, though
/// its stamp is still good.
pub(crate) fn delay_ms(msg: &Message) -> Option<u64> {
    msg.payloads
        .iter()
        .find(|p| p.is("delay", ns::DELAY))
        .and_then(|d| d.attr("stamp"))
        .and_then(super::time::parse)
        .map(|t| t.min(crate::network::now_ms()))
}

/// The original time of a delayed direct message, when `server` stamped the delay (the
/// account's own server: offline storage, an archive); a sender's own claim is not believed.
pub(crate) fn trusted_delay_ms(msg: &Message, server: &str) -> Option<u64> {
    let stamped_by = msg
        .payloads
        .iter()
        .find(|p| p.is("delay", ns::DELAY))?
        .attr("from")?;
    (stamped_by == server).then(|| delay_ms(msg)).flatten()
}

impl Handler {
    /// Pushes what an inbound message with content carries: a correction, a retraction or a
    /// reaction set (diffed against the sender's previous set), else a new message (a reply
    /// when it says so, its fallback quote removed). Returns false when there was nothing to
    /// push (no body and no fidelity payload). `scope` names the conversation for the stored
    /// reaction sets.
    async fn push_message(
        &self,
        base: &(dyn Fn(RemoteEventKind) -> RemoteEvent + Sync),
        msg: &Message,
        scope: &str,
        sender: &str,
        id: String,
        nicks: &[(String, String)],
    ) -> Option<bool> {
        let body = msg.bodies.values().next().cloned();
        let mut stored = true;
        match fidelity::classify(&msg.payloads) {
            Some(fidelity::Kind::Correction(target)) => {
                let body = body?;
                let content = convert::inbound_content(&body, &msg.payloads, nicks);
                stored &= self
                    .push(base(RemoteEventKind::Edit {
                        target: RemoteMessageId::new(target),
                        content,
                    }))
                    .await;
            }
            Some(fidelity::Kind::Retraction(target)) => {
                stored &= self
                    .push(base(RemoteEventKind::Redaction {
                        target: RemoteMessageId::new(target),
                    }))
                    .await;
            }
            Some(fidelity::Kind::Reactions(target, keys)) => {
                let Ok(store) = self.shared.store() else {
                    return Some(false);
                };
                let key = format!("rin:{scope}\u{1f}{sender}\u{1f}{target}");
                let (added, removed) = match fidelity::diff_reactions(store, &key, &keys) {
                    Ok(d) => d,
                    Err(e) => {
                        warn!(error = %crate::error::chain(&e), "could not store a reaction set");
                        return Some(false);
                    }
                };
                let changes = added
                    .into_iter()
                    .map(|k| (k, false))
                    .chain(removed.into_iter().map(|k| (k, true)));
                for (key, remove) in changes {
                    stored &= self
                        .push(base(RemoteEventKind::Reaction {
                            target: RemoteMessageId::new(target.clone()),
                            key,
                            remove,
                        }))
                        .await;
                }
            }
            None => {
                let body = body?;
                let reply_to = fidelity::reply_target(&msg.payloads).map(RemoteMessageId::new);
                let body = if reply_to.is_some() {
                    fidelity::strip_fallback(&body, &msg.payloads, fidelity::REPLY)
                } else {
                    body
                };
                let content = match convert::attachment(&body, &msg.payloads) {
                    Some((attachment, caption)) => MessageContent {
                        attachment: Some(attachment),
                        ..MessageContent::text(caption)
                    },
                    None => convert::inbound_content(&body, &msg.payloads, nicks),
                };
                stored &= self
                    .push(base(RemoteEventKind::Message {
                        id: RemoteMessageId::new(id),
                        content,
                        reply_to,
                    }))
                    .await;
            }
        }
        Some(stored)
    }

    /// A message of ours came back as an error: the Matrix sender is told.
    async fn bounced(&self, msg: &Message) {
        let (Some(from), Some(to), Some(id)) = (&msg.from, &msg.to, &msg.id) else {
            return;
        };
        let Some(user) = self.shared.user_of(&to.to_bare()) else {
            return;
        };
        let error = msg.payloads.iter().find(|p| p.name() == "error");
        let condition = error
            .and_then(|e| e.children().find(|c| c.name() != "text"))
            .map(|c| c.name().replace('-', " "))
            .unwrap_or_else(|| "unknown error".into());
        let text = error
            .and_then(|e| e.children().find(|c| c.name() == "text"))
            .map(|t| t.text())
            .filter(|t| !t.is_empty());
        let reason = match text {
            Some(t) => format!("{condition} ({t})"),
            None => condition,
        };
        info!(from = %from, user, reason, "an XMPP message bounced");
        let room = from.to_bare();
        let chat = room.to_string();
        let receiver = (!self.shared.rooms.is_room(&chat)).then_some(user);
        let kind = RemoteEventKind::DeliveryFailed {
            target: RemoteMessageId::new(id.0.clone()),
            reason,
        };
        let event = match receiver {
            Some(user) => RemoteEvent::direct(&chat, &user, kind),
            None => RemoteEvent::group(&chat, &chat, kind),
        };
        self.push(event).await;
    }

    /// Stores an event for the core; false when it could not be stored.
    async fn push(&self, event: RemoteEvent) -> bool {
        let Some(sink) = self.shared.sink.get() else {
            return false;
        };
        match sink.push(event).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "could not store an XMPP event");
                false
            }
        }
    }

    /// Whether the Matrix user behind address `to` can receive: asked of the core for
    /// gateway addresses; a user's own account always can (it is a login of that user).
    async fn user_status(&self, to: &Option<Jid>, user: &str) -> MatrixUserStatus {
        if to
            .as_ref()
            .is_some_and(|t| self.shared.is_account(&t.to_bare()))
        {
            return MatrixUserStatus::Reachable;
        }
        match self.shared.sink.get() {
            Some(sink) => sink.matrix_user_status(user).await,
            None => MatrixUserStatus::Unknown,
        }
    }

    /// The contact and Matrix user a stanza is between, when it is one we bridge.
    fn parties(&self, from: &Option<Jid>, to: &Option<Jid>) -> Option<(BareJid, String)> {
        let from = from.as_ref()?.to_bare();
        let to = to.as_ref()?.to_bare();
        // Loop prevention: an address on our own domain is a Matrix user, never a contact.
        let contact = self.shared.addressing.contact(&from.to_string()).ok()?;
        let user = self.shared.user_of(&to)?;
        Some((contact, user))
    }

    /// A message the user of own account `own` sent to a contact from another client (a
    /// carbon copy, XEP-0280): it appears in Matrix from the account's own puppet.
    pub(super) async fn sent_elsewhere(&self, msg: Message, own: &BareJid, user: &str) {
        if !matches!(msg.type_, MessageType::Chat | MessageType::Normal) {
            return;
        }
        let Some(contact) = msg.to.as_ref().and_then(|t| {
            self.shared
                .addressing
                .contact(&t.to_bare().to_string())
                .ok()
        }) else {
            return;
        };
        let me = own.to_string();
        // Archived copies carry their archive's time (stamped by the account's server).
        let sent_at = trusted_delay_ms(&msg, own.domain().as_str());
        let base = |kind| {
            let mut ev = RemoteEvent::direct(&contact.to_string(), user, kind).at(sent_at);
            ev.sender = crate::network::RemoteUserId::new(me.as_str());
            ev
        };
        let scope = format!("{user}\u{1f}{contact}");
        self.push_message(&base, &msg, &scope, &me, message_id(&msg), &[])
            .await;
    }

    async fn message(&self, msg: Message) -> Vec<Stanza> {
        if msg.type_ == MessageType::Error {
            self.bounced(&msg).await;
            return Vec::new();
        }
        if let Some(to) = &msg.to
            && to.node().is_some_and(|n| n.as_str().starts_with('#'))
        {
            return self.hosted_message(msg).await;
        }
        if msg.type_ == MessageType::Groupchat {
            self.muc_message(msg).await;
            return Vec::new();
        }
        if !matches!(msg.type_, MessageType::Chat | MessageType::Normal) {
            debug!(type_ = ?msg.type_, "message type not bridged yet");
            return Vec::new();
        }
        let Some((contact, user)) = self.parties(&msg.from, &msg.to) else {
            debug!(from = ?msg.from, to = ?msg.to, "message not between a contact and a Matrix user; ignored");
            return Vec::new();
        };
        // RFC 6121 §8.5.1: a message to a user who does not exist is answered
        // `service-unavailable`, and nothing is created for it.
        match self.user_status(&msg.to, &user).await {
            MatrixUserStatus::Reachable => {}
            MatrixUserStatus::NotFound => {
                info!(contact = %contact, user, "message to a Matrix user who does not exist");
                return vec![message_error(
                    &msg,
                    ErrorType::Cancel,
                    DefinedCondition::ServiceUnavailable,
                    "no such Matrix user",
                )];
            }
            MatrixUserStatus::Unknown => {
                return vec![message_error(
                    &msg,
                    ErrorType::Wait,
                    DefinedCondition::RemoteServerTimeout,
                    TRY_LATER,
                )];
            }
        }
        let nick = payloads::find::<Nick>(&msg.payloads, "nick", ns::NICK)
            .map(|n| n.0)
            .filter(|n| !n.trim().is_empty());
        // Offline storage and archives mark the original time (XEP-0203).
        let sent_at = msg
            .to
            .as_ref()
            .and_then(|to| trusted_delay_ms(&msg, to.domain().as_str()));
        let base = |kind| {
            RemoteEvent::direct(&contact.to_string(), &user, kind)
                .named(nick.clone())
                .at(sent_at)
        };
        if nick.is_none() {
            self.fetch_vcard(&contact, &user, false);
        }
        if let Some(from) = msg.from.as_ref().filter(|f| f.resource().is_some()) {
            self.shared.resources.note(&contact.to_string(), from);
        }
        let scope = format!("{user}\u{1f}{contact}");
        // Chat markers (XEP-0333): `displayed` is a read receipt.
        if let Some(Displayed { id }) =
            payloads::find::<Displayed>(&msg.payloads, "displayed", ns::DISPLAYED_MARKERS)
        {
            self.push(base(RemoteEventKind::Receipt {
                up_to: RemoteMessageId::new(id.0),
            }))
            .await;
            return Vec::new();
        }
        // A delivery receipt (XEP-0184) is asked for: given once the message is stored.
        let receipt_to =
            payloads::find::<receipts::Request>(&msg.payloads, "request", ns::RECEIPTS)
                .and(msg.id.clone())
                .map(|id| {
                    let mut r = Message::new(msg.from.clone());
                    r.type_ = MessageType::Chat;
                    r.from = msg.to.clone();
                    r.payloads.push(receipts::Received { id: id.0 }.into());
                    Stanza::from(r)
                });
        match self
            .push_message(
                &base,
                &msg,
                &scope,
                &contact.to_string(),
                message_id(&msg),
                &[],
            )
            .await
        {
            // The receipt only once the message is safely stored.
            Some(true) => return receipt_to.into_iter().collect(),
            // Not stored: the sender learns it may try again, instead of the message
            // vanishing.
            Some(false) => return not_stored(&msg).into_iter().collect(),
            None => {}
        }
        let chat_state = msg
            .payloads
            .iter()
            .filter(|p| p.has_ns(ns::CHATSTATES))
            .find_map(|p| ChatState::try_from(p.clone()).ok());
        match chat_state {
            Some(ChatState::Composing) => {
                self.push(base(RemoteEventKind::Typing { active: true }))
                    .await;
            }
            Some(ChatState::Paused | ChatState::Active | ChatState::Inactive | ChatState::Gone) => {
                self.push(base(RemoteEventKind::Typing { active: false }))
                    .await;
            }
            None => {}
        }
        Vec::new()
    }
}

#[async_trait]
impl Inbound for Handler {
    async fn stanza(&self, stanza: Stanza) -> Vec<Stanza> {
        match stanza {
            Stanza::Message(m) => self.message(m).await,
            Stanza::Presence(p) => self.presence(p).await,
            Stanza::Iq(iq) => self.iq(iq),
        }
    }

    async fn stanzas(&self, batch: Vec<Stanza>) -> Vec<Stanza> {
        let Some(sink) = self.shared.sink.get() else {
            let mut answers = Vec::new();
            for stanza in batch {
                answers.extend(self.stanza(stanza).await);
            }
            return answers;
        };
        // Who is told to try again, should the batch not be stored: the senders of its
        // messages with a body (their addresses and IDs, kept before the stanzas are used).
        let senders: Vec<Message> = batch
            .iter()
            .filter_map(|s| match s {
                Stanza::Message(m) if m.type_ != MessageType::Error && !m.bodies.is_empty() => {
                    let mut head = Message::new(m.to.clone());
                    head.from = m.from.clone();
                    head.id = m.id.clone();
                    head.type_ = m.type_.clone();
                    Some(head)
                }
                _ => None,
            })
            .collect();
        let mut answers = Vec::new();
        let stored = sink
            .push_batch(Box::pin(async {
                for stanza in batch {
                    answers.extend(self.stanza(stanza).await);
                }
            }))
            .await;
        match stored {
            Ok(()) => answers,
            Err(e) => {
                // The receipts would claim what the store could not keep.
                warn!(error = %crate::error::chain(&e), stanzas = senders.len(), "could not store XMPP events; their senders are told to try again");
                senders.iter().filter_map(not_stored).collect()
            }
        }
    }

    async fn state(&self, state: BridgeState, detail: Option<String>) {
        self.state.send_replace(state);
        if state == BridgeState::Connected {
            self.rejoin_rooms();
        }
        if let Some(sink) = self.shared.sink.get() {
            sink.report_state(None, state, detail).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use xmpp_parsers::minidom::Element;

    fn message(xml: &str) -> Message {
        Message::try_from(Element::from_str(xml).unwrap()).unwrap()
    }

    #[test]
    fn empty_ids_are_no_ids() {
        // Found by the fuzz target `xmpp_inbound_stanzas_are_handled`: every message with
        // `id=''` was remembered under the same empty ID.
        let m = message("<message xmlns='jabber:component:accept' to='me@gw' id=''/>");
        assert!(message_id(&m).starts_with("noid-"));
        let m = message(
            "<message xmlns='jabber:component:accept' to='me@gw' id='a'><origin-id xmlns='urn:xmpp:sid:0' id=''/></message>",
        );
        assert_eq!(message_id(&m), "a");
        let m = message(
            "<message xmlns='jabber:component:accept' to='me@gw'><stanza-id xmlns='urn:xmpp:sid:0' by='me@gw' id=''/></message>",
        );
        assert!(message_id(&m).starts_with("noid-"));
    }
}
