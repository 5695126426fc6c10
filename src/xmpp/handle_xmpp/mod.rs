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
mod messages;
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
