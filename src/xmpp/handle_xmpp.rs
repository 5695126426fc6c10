//! XMPP → bridge: messages, chat states, presence and IQs arriving on the component.

use std::str::FromStr;
use std::sync::Arc;

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

use super::Shared;
use super::component::Inbound;
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

/// A presence stanza from a gateway address: `None` means plain available.
pub(super) fn presence_stanza(from: Jid, to: Jid, p: Option<&NetPresence>) -> Stanza {
    let mut out = match p.map(|p| p.state) {
        Some(PresenceState::Offline) => Presence::new(PresenceType::Unavailable),
        _ => Presence::new(PresenceType::None),
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
    let mut out = Presence::new(type_);
    out.from = Some(from);
    out.to = Some(to);
    out.into()
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

/// The error message that tells the XMPP sender of `event` that it did not reach Matrix
/// (RFC 6120 §8.3: a message of type `error` with the original ID, from the address it was
/// sent to). `None` for what is not a direct message, or when the addresses cannot be made.
pub(super) fn undelivered_error(
    addressing: &super::ids::Addressing,
    event: &crate::network::RemoteEvent,
    full: Option<Jid>,
    reason: &str,
) -> Option<Stanza> {
    let crate::network::RemoteEventKind::Message { id, .. } = &event.kind else {
        return None;
    };
    if event.chat_kind != crate::network::ChatKind::Direct {
        return None;
    }
    let from = addressing.puppet(event.receiver.as_deref()?)?;
    let bare = Jid::from_str(event.sender.as_str()).ok()?;
    // To the client that wrote, when known: servers drop errors sent to a bare JID.
    let to = full
        .filter(|f| f.to_bare() == bare.to_bare())
        .unwrap_or(bare);
    Some(hosted::undelivered_error(
        Jid::from(from),
        to,
        id.as_str(),
        reason,
    ))
}

/// What tells the XMPP sender of group chat message `event` that it did not reach Matrix.
/// In a room the gateway hosts: the error message of RFC 6120 §8.3 from the room, to the
/// address the occupant wrote from (their full JID while they are in the room, else the one
/// last seen, else their bare JID). In a group chat hosted elsewhere: a private message
/// (XEP-0045 §7.5) from the room's primary puppet to the sender's nick, quoting the
/// message's beginning. `None` for what is not a group message, and when nobody can be
/// addressed (the bridge or the sender left the room).
pub(super) fn group_undelivered(
    shared: &Shared,
    event: &crate::network::RemoteEvent,
    reason: &str,
) -> Option<Stanza> {
    let RemoteEventKind::Message { id, content, .. } = &event.kind else {
        return None;
    };
    if event.chat_kind != crate::network::ChatKind::Group {
        return None;
    }
    let room = BareJid::from_str(event.chat.as_str()).ok()?;
    let nick = event.sender_name.as_deref();
    if room.domain().as_str() == shared.addressing.component() {
        let sender = BareJid::from_str(event.sender.as_str()).ok()?;
        let present = shared
            .hosted
            .lock()
            .expect("hosted lock")
            .get(room.as_str())
            .and_then(|r| hosted::occupant_address(&r.occupants, &sender, nick));
        let to = present
            .or_else(|| {
                shared
                    .resources
                    .lock()
                    .expect("resources lock")
                    .get(sender.as_str())
                    .filter(|f| f.to_bare() == sender)
                    .cloned()
            })
            .unwrap_or_else(|| Jid::from(sender));
        return Some(hosted::undelivered_error(
            Jid::from(room),
            to,
            id.as_str(),
            reason,
        ));
    }
    let Some(occupant) = shared
        .rooms
        .lock()
        .expect("rooms lock")
        .get(room.as_str())
        .and_then(|r| muc::occupant_nick(&room, &r.occupants, event.sender.as_str(), nick))
    else {
        debug!(room = %room, sender = %event.sender, "the sender of an undelivered group message, or the bridge, is not in the room; nobody to tell");
        return None;
    };
    let puppet = shared
        .primary(room.as_str())
        .and_then(|user| shared.addressing.puppet(&user))?;
    muc::undelivered_notice(
        muc::puppet_full(&puppet),
        &room,
        &occupant,
        &content.body,
        reason,
    )
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

/// The error answer to a presence stanza, from the address it was sent to.
fn presence_error(
    p: &Presence,
    type_: ErrorType,
    condition: DefinedCondition,
    text: &str,
) -> Stanza {
    let mut err = Presence::new(PresenceType::Error);
    err.from = p.to.clone();
    err.to = p.from.clone();
    err.id = p.id.clone();
    err.payloads
        .push(StanzaError::new(type_, condition, "en", text).into());
    err.into()
}

/// What tells a sender that the homeserver cannot say now whether a user exists.
const TRY_LATER: &str = "the Matrix side cannot be reached right now; try again later";

/// How many contacts' last full JIDs are kept before the memory is cleared.
const RESOURCES_KEPT: usize = 10_000;

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

    /// Asks a contact's server for the contact's vCard (XEP-0054) once per run (or again
    /// when `again`: the contact announced a new picture), in the background; a full name
    /// becomes the ghost's display name and a picture its avatar.
    fn fetch_vcard(&self, contact: &BareJid, receiver: &str, again: bool) {
        let first = self
            .shared
            .vcards_asked
            .lock()
            .expect("vcard lock")
            .insert(contact.to_string());
        if !first && !again {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let contact = contact.clone();
        let receiver = receiver.to_owned();
        let Ok(tasks) = self.shared.tasks() else {
            return;
        };
        tasks.spawn_loop(async move {
            let query = xmpp_parsers::vcard::VCardQuery.into();
            let Ok(Ok(Some(card))) = shared.query(Jid::from(contact.clone()), query).await else {
                return;
            };
            let name = card
                .children()
                .find(|c| c.name() == "FN")
                .map(|f| f.text())
                .or_else(|| {
                    card.children()
                        .find(|c| c.name() == "NICKNAME")
                        .map(|n| n.text())
                })
                .and_then(|n| crate::text::display_name(&n));
            let Some(sink) = shared.sink.get() else {
                return;
            };
            let chat = contact.to_string();
            if let Some(name) = &name {
                let _ = sink
                    .push(
                        RemoteEvent::direct(&chat, &receiver, RemoteEventKind::Profile)
                            .named(Some(name.clone())),
                    )
                    .await;
            }
            // A published avatar (XEP-0084) takes precedence over the vCard's.
            let published = shared
                .pep_avatars
                .lock()
                .expect("avatar lock")
                .contains_key(&chat);
            if let Some(picture) = avatar::photo(&card).filter(|_| !published) {
                let hash = avatar::sha1_hex(&picture);
                let known = shared
                    .avatar_hashes
                    .lock()
                    .expect("avatar lock")
                    .insert(chat.clone(), hash.clone());
                if known.as_deref() != Some(hash.as_str()) {
                    let _ = sink
                        .push(
                            RemoteEvent::direct(
                                &chat,
                                &receiver,
                                RemoteEventKind::Avatar {
                                    hash,
                                    data: Some(picture),
                                },
                            )
                            .named(name),
                        )
                        .await;
                }
            }
        });
    }

    /// A contact's presence announced its picture (XEP-0153): fetch it when it changed.
    async fn picture_announced(&self, contact: &BareJid, user: &str, hash: String) {
        let chat = contact.to_string();
        // A published avatar (XEP-0084) takes precedence over the vCard's.
        if self
            .shared
            .pep_avatars
            .lock()
            .expect("avatar lock")
            .contains_key(&chat)
        {
            return;
        }
        let known = self
            .shared
            .avatar_hashes
            .lock()
            .expect("avatar lock")
            .get(&chat)
            .cloned();
        if known.as_deref() == Some(hash.as_str()) {
            return;
        }
        if hash.is_empty() {
            self.shared
                .avatar_hashes
                .lock()
                .expect("avatar lock")
                .insert(chat.clone(), hash.clone());
            self.push(RemoteEvent::direct(
                &chat,
                user,
                RemoteEventKind::Avatar { hash, data: None },
            ))
            .await;
        } else {
            self.fetch_vcard(contact, user, true);
        }
    }

    /// Answers a vCard request to a Matrix user's gateway address with the user's name and
    /// avatar, in the background (the profile comes from the homeserver).
    fn answer_vcard(&self, from: Option<Jid>, to: Option<Jid>, id: String, user: String) {
        let shared = Arc::clone(&self.shared);
        let Ok(tasks) = self.shared.tasks() else {
            return;
        };
        tasks.spawn_loop(async move {
            let Some(sink) = shared.sink.get() else {
                return;
            };
            let answer: Stanza = match sink.matrix_profile(&user).await {
                Some(profile) => Iq::Result {
                    from: to,
                    to: from,
                    id,
                    payload: Some(avatar::vcard(
                        profile.displayname.as_deref(),
                        profile
                            .avatar
                            .as_ref()
                            .map(|(m, b)| (m.as_str(), b.as_slice())),
                    )),
                }
                .into(),
                None => error_reply(from, to, id, DefinedCondition::ItemNotFound),
            };
            let _ = shared.out.send((answer, None)).await;
        });
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
        let receiver = (!self.shared.is_room(&chat)).then_some(user);
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
            let mut resources = self.shared.resources.lock().expect("resources lock");
            if resources.len() >= RESOURCES_KEPT {
                resources.clear();
            }
            resources.insert(contact.to_string(), from.clone());
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

    /// A message in a group chat the bridge is in.
    async fn muc_message(&self, msg: Message) {
        let (Some(from), Some(to)) = (msg.from.as_ref(), msg.to.as_ref()) else {
            return;
        };
        let room = from.to_bare();
        let room_str = room.to_string();
        let Some(user) = self.shared.addressing.matrix_user(&to.to_bare()) else {
            return;
        };
        if self.shared.primary(&room_str).as_deref() != Some(user.as_str()) {
            return; // another puppet's copy of the same message
        }
        let Some(nick) = from.resource().map(|r| r.as_str().to_owned()) else {
            // From the room itself: a moderator removed a message (XEP-0425).
            if let Some((target, reason)) = fidelity::moderation(&msg.payloads) {
                self.push(RemoteEvent::group(
                    &room_str,
                    &room_str,
                    RemoteEventKind::Moderation {
                        target: RemoteMessageId::new(target),
                        reason,
                    },
                ))
                .await;
            }
            return;
        };
        let room_id = payloads::stanza_id(&msg.payloads, &room);
        if self.shared.is_puppet_nick(&room_str, &nick) {
            // Our own message, reflected by the room: not bridged again, but the room's ID for
            // it is remembered, since XMPP clients reply and react to it by that ID.
            let ours =
                payloads::origin_id(&msg.payloads).or_else(|| msg.id.as_ref().map(|i| i.0.clone()));
            if let (Some(target), Some(alias)) = (ours, room_id) {
                // Retractions, reactions and replies in a group chat name a message by the
                // room's ID: remember it for the ones the bridge sends.
                if let Ok(store) = self.shared.store() {
                    let _ = store.put(
                        &muc::stanza_id_key(&room_str, &target),
                        &serde_json::Value::String(alias.clone()),
                    );
                }
                self.push(RemoteEvent::group(
                    &room_str,
                    &room_str,
                    RemoteEventKind::MessageAlias {
                        target: RemoteMessageId::new(target),
                        alias: RemoteMessageId::new(alias),
                    },
                ))
                .await;
            }
            return;
        }
        let real = self
            .shared
            .rooms
            .lock()
            .expect("rooms lock")
            .get(&room_str)
            .and_then(|r| r.occupants.get(&nick).cloned().flatten());
        let sender = muc::occupant_id(&room, &nick, real.as_deref());
        // History replayed on (re)join keeps its original time.
        let delayed = delay_ms(&msg);
        self.note_seen(&room_str, delayed.unwrap_or_else(crate::network::now_ms));
        let base = |kind| {
            RemoteEvent::group(&room_str, &sender, kind)
                .named(Some(nick.clone()))
                .at(delayed)
        };
        let nicks: Vec<(String, String)> = self
            .shared
            .rooms
            .lock()
            .expect("rooms lock")
            .get(&room_str)
            .map(|r| {
                r.puppets
                    .iter()
                    .map(|(u, n)| (n.clone(), u.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let id = room_id
            .or_else(|| payloads::origin_id(&msg.payloads))
            .or_else(|| msg.id.as_ref().map(|i| format!("{nick}/{}", i.0)))
            .unwrap_or_else(|| format!("noid-{}", crate::network::now_ms()));
        if self
            .push_message(&base, &msg, &room_str, &sender, id.clone(), &nicks)
            .await
            .is_some()
        {
            // Corrections name the original by its `id`: remember that one too.
            if let Some(raw) = msg.id.as_ref().map(|i| i.0.clone())
                && raw != id
                && fidelity::classify(&msg.payloads).is_none()
            {
                self.push(base(RemoteEventKind::MessageAlias {
                    target: RemoteMessageId::new(id),
                    alias: RemoteMessageId::new(raw),
                }))
                .await;
            }
            return;
        }
        if let Some(subject) = msg.subjects.values().next() {
            self.push(base(RemoteEventKind::ChatInfo {
                name: None,
                topic: Some(subject.clone()),
            }))
            .await;
        }
    }

    /// Presence of an occupant of a group chat the bridge is in.
    async fn muc_presence(&self, p: Presence) {
        let (Some(from), Some(to)) = (p.from.as_ref(), p.to.as_ref()) else {
            return;
        };
        let room = from.to_bare();
        let room_str = room.to_string();
        let Some(nick) = from.resource().map(|r| r.as_str().to_owned()) else {
            return;
        };
        let Some(user) = self.shared.addressing.matrix_user(&to.to_bare()) else {
            return;
        };
        let own = p
            .payloads
            .iter()
            .filter(|x| x.is("x", ns::MUC_USER))
            .flat_map(|x| x.children())
            .any(|c| c.name() == "status" && c.attr("code") == Some("110"));
        if p.type_ == PresenceType::Error || (own && p.type_ == PresenceType::Unavailable) {
            // Our join failed (nick taken, members only, banned) or we were removed: the
            // puppet is out, so the next one becomes the room's primary, and a later message
            // from the user joins again.
            warn!(room = %room_str, nick, user, error = p.type_ == PresenceType::Error, "a Matrix user's puppet is not in the group chat");
            self.forget_puppet(&room_str, &user);
            return;
        }
        if own {
            // The room confirms (or changes, status 210) the nick it gave the puppet.
            let mut rooms = self.shared.rooms.lock().expect("rooms lock");
            if let Some(n) = rooms
                .get_mut(&room_str)
                .and_then(|r| r.puppets.get_mut(&user))
                && *n != nick
            {
                info!(room = %room_str, user, old = %n, new = %nick, "the group chat changed a puppet's nick");
                *n = nick.clone();
                if let Ok(store) = self.shared.store() {
                    let _ = muc::remember(store, &room_str, &user, &nick);
                }
            }
            return;
        }
        if self.shared.primary(&room_str).as_deref() != Some(user.as_str())
            || self.shared.is_puppet_nick(&room_str, &nick)
        {
            return;
        }
        let real = p
            .payloads
            .iter()
            .find(|x| x.is("x", ns::MUC_USER))
            .and_then(|x| x.children().find(|c| c.name() == "item"))
            .and_then(|item| item.attr("jid"))
            .and_then(|j| Jid::from_str(j).ok())
            .map(|j| j.to_bare().to_string().to_lowercase());
        let leaving = p.type_ == PresenceType::Unavailable;
        {
            let mut rooms = self.shared.rooms.lock().expect("rooms lock");
            if let Some(r) = rooms.get_mut(&room_str) {
                if leaving {
                    r.occupants.remove(&nick);
                } else {
                    r.occupants.insert(nick.clone(), real.clone());
                }
            }
        }
        let change = if leaving {
            MembershipChange::Leave
        } else {
            MembershipChange::Join
        };
        let occupant = muc::occupant_id(&room, &nick, real.as_deref());
        self.push(
            RemoteEvent::group(&room_str, &occupant, RemoteEventKind::Membership { change })
                .named(Some(nick)),
        )
        .await;
    }

    /// An XMPP user joins, changes presence in, or leaves a hosted group chat.
    async fn hosted_presence(&self, p: Presence) -> Vec<Stanza> {
        let (Some(from), Some(to)) = (p.from.clone(), p.to.clone()) else {
            return Vec::new();
        };
        let room = to.to_bare();
        let room_str = room.to_string();
        let Some(nick) = to.resource().map(|r| r.as_str().to_owned()) else {
            return Vec::new();
        };
        let Some(_alias) = self.shared.allowed_alias(&room) else {
            return vec![hosted::join_error(
                &to,
                &from,
                DefinedCondition::ItemNotFound,
                "no such group chat",
            )];
        };
        let Ok(contact) = self.shared.addressing.contact(&from.to_bare().to_string()) else {
            return vec![hosted::join_error(
                &to,
                &from,
                DefinedCondition::NotAllowed,
                "Matrix users join the Matrix room itself",
            )];
        };
        let who = from.to_string();
        let leaving = p.type_ == PresenceType::Unavailable;
        if p.type_ != PresenceType::None && !leaving {
            return Vec::new();
        }
        // The first joiner's occupant list must hold the room's Matrix members: when none are
        // known yet (the room has no portal, or the bridge started since), ask the core.
        let unknown = !leaving
            && self
                .shared
                .hosted
                .lock()
                .expect("hosted lock")
                .get(&room_str)
                .is_none_or(|r| r.members.is_empty() && r.occupants.is_empty());
        if unknown && let Some(sink) = self.shared.sink.get() {
            let chat = RemoteChatId::new(room_str.clone());
            let asked = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                sink.group_members(&chat),
            );
            let members = asked.await.unwrap_or_default();
            let mut rooms = self.shared.hosted.lock().expect("hosted lock");
            let r = rooms.entry(room_str.clone()).or_default();
            for m in members {
                let nick = muc::nick_for(&m.displayname, &m.user_id);
                r.members.entry(m.user_id).or_insert(nick);
            }
        }
        let mut out = Vec::new();
        let joined = {
            let mut rooms = self.shared.hosted.lock().expect("hosted lock");
            let r = rooms.entry(room_str.clone()).or_default();
            if leaving {
                let Some(nick) = r.occupants.remove(&who) else {
                    return Vec::new();
                };
                out.extend(hosted::occupant_presence(
                    &room, &nick, &from, true, true, None,
                ));
                for other in r.occupants.keys().filter_map(|j| Jid::from_str(j).ok()) {
                    out.extend(hosted::occupant_presence(
                        &room,
                        &nick,
                        &other,
                        true,
                        false,
                        Some(&contact.to_string()),
                    ));
                }
                false
            } else if r.occupants.contains_key(&who) {
                return Vec::new(); // a presence update of someone already in
            } else if r.nick_taken(&nick, &who) {
                return vec![hosted::join_error(
                    &to,
                    &from,
                    DefinedCondition::Conflict,
                    "that nick is taken",
                )];
            } else {
                for (member, mnick) in &r.members {
                    let _ = member;
                    out.extend(hosted::occupant_presence(
                        &room, mnick, &from, false, false, None,
                    ));
                }
                for (jid, onick) in &r.occupants {
                    let real = Jid::from_str(jid).ok().map(|j| j.to_bare().to_string());
                    out.extend(hosted::occupant_presence(
                        &room,
                        onick,
                        &from,
                        false,
                        false,
                        real.as_deref(),
                    ));
                    if let Ok(other) = Jid::from_str(jid) {
                        out.extend(hosted::occupant_presence(
                            &room,
                            &nick,
                            &other,
                            false,
                            false,
                            Some(&contact.to_string()),
                        ));
                    }
                }
                out.extend(hosted::occupant_presence(
                    &room,
                    &nick,
                    &from,
                    false,
                    true,
                    Some(&contact.to_string()),
                ));
                out.push(hosted::subject_message(&room, &from, ""));
                r.occupants.insert(who.clone(), nick.clone());
                true
            }
        };
        info!(room = %room_str, nick, joined, "hosted group chat membership");
        let change = if joined {
            MembershipChange::Join
        } else {
            MembershipChange::Leave
        };
        self.push(
            RemoteEvent::group(
                &room_str,
                &contact.to_string(),
                RemoteEventKind::Membership { change },
            )
            .named(Some(nick)),
        )
        .await;
        out
    }

    /// A message from an XMPP occupant to a hosted group chat: reflected to every occupant
    /// and bridged to the Matrix room.
    async fn hosted_message(&self, msg: Message) -> Vec<Stanza> {
        let (Some(from), Some(to)) = (msg.from.clone(), msg.to.clone()) else {
            return Vec::new();
        };
        let room = to.to_bare();
        let room_str = room.to_string();
        if msg.type_ != MessageType::Groupchat {
            return Vec::new(); // private messages to occupants are not supported yet
        }
        let (nick, targets, nicks) = {
            let rooms = self.shared.hosted.lock().expect("hosted lock");
            let Some(r) = rooms.get(&room_str) else {
                return Vec::new();
            };
            let Some(nick) = r.occupants.get(&from.to_string()).cloned() else {
                let mut err = Message::new(Some(from.clone()));
                err.type_ = MessageType::Error;
                err.from = Some(Jid::from(room.clone()));
                err.payloads.push(
                    StanzaError::new(
                        ErrorType::Modify,
                        DefinedCondition::NotAcceptable,
                        "en",
                        "join the group chat first",
                    )
                    .into(),
                );
                return vec![err.into()];
            };
            (
                nick,
                r.occupants
                    .keys()
                    .filter_map(|j| Jid::from_str(j).ok())
                    .collect::<Vec<_>>(),
                r.members
                    .iter()
                    .map(|(u, n)| (n.clone(), u.clone()))
                    .collect::<Vec<_>>(),
            )
        };
        let id = message_id(&msg);
        // Reflected to every occupant as the room shows it: from the sender's nick.
        let Ok(from_nick) = Jid::from_str(&format!("{room}/{nick}")) else {
            return Vec::new();
        };
        let out: Vec<Stanza> = targets
            .into_iter()
            .map(|t| {
                let mut copy = msg.clone();
                copy.from = Some(from_nick.clone());
                copy.to = Some(t);
                copy.into()
            })
            .collect();
        let Ok(contact) = self.shared.addressing.contact(&from.to_bare().to_string()) else {
            return out;
        };
        let sender = contact.to_string();
        let base = |kind| RemoteEvent::group(&room_str, &sender, kind).named(Some(nick.clone()));
        self.push_message(&base, &msg, &room_str, &sender, id, &nicks)
            .await;
        out
    }

    /// Remembers that the room had traffic at `ms`, persisted at most every 30 s (the rejoin
    /// after a restart asks for history from there).
    fn note_seen(&self, room: &str, ms: u64) {
        let due = {
            let mut seen = self.shared.seen.lock().expect("seen lock");
            let last = seen.entry(room.to_owned()).or_insert(0);
            if ms >= last.saturating_add(30_000) {
                *last = ms;
                true
            } else {
                false
            }
        };
        if due && let Ok(store) = self.shared.store() {
            let _ = muc::remember_seen(store, room, ms);
        }
    }

    /// Forgets that a Matrix user's puppet is in a group chat.
    fn forget_puppet(&self, room: &str, user: &str) {
        {
            let mut rooms = self.shared.rooms.lock().expect("rooms lock");
            if let Some(r) = rooms.get_mut(room) {
                r.puppets.remove(user);
                if r.puppets.is_empty() {
                    rooms.remove(room);
                }
            }
        }
        if let Ok(store) = self.shared.store() {
            let _ = muc::forget(store, room, user);
        }
    }

    /// Joins again every group chat the bridge was in (after the link came up).
    fn rejoin_rooms(&self) {
        let Ok(store) = self.shared.store() else {
            return;
        };
        let joined = match muc::all_joined(store) {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "could not read the group chats to rejoin");
                return;
            }
        };
        let mut stanzas = Vec::new();
        {
            let mut rooms = self.shared.rooms.lock().expect("rooms lock");
            for (room, user, nick) in joined {
                let (Ok(room_jid), Some(puppet)) = (
                    BareJid::from_str(&room),
                    self.shared.addressing.puppet(&user),
                ) else {
                    continue;
                };
                rooms
                    .entry(room.clone())
                    .or_default()
                    .puppets
                    .insert(user, nick.clone());
                // Ask for what was said since the bridge last saw the room (a little before,
                // the overlap is dropped by message ID).
                let since = muc::last_seen(store, &room).map(|t| t.saturating_sub(5_000));
                if let Some(s) = muc::join_presence_since(
                    muc::puppet_full(&puppet),
                    &room_jid,
                    &nick,
                    false,
                    since,
                ) {
                    stanzas.push(s);
                }
            }
        }
        if stanzas.is_empty() {
            return;
        }
        info!(count = stanzas.len(), "rejoining group chats");
        let out = self.shared.out.clone();
        let Ok(tasks) = self.shared.tasks() else {
            return;
        };
        tasks.spawn_loop(async move {
            for s in stanzas {
                if out.send((s, None)).await.is_err() {
                    break;
                }
            }
        });
    }

    async fn presence(&self, p: Presence) -> Vec<Stanza> {
        if let Some(to) = &p.to
            && to.node().is_some_and(|n| n.as_str().starts_with('#'))
        {
            return self.hosted_presence(p).await;
        }
        if let Some(from) = &p.from
            && self.shared.is_room(&from.to_bare().to_string())
        {
            self.muc_presence(p).await;
            return Vec::new();
        }
        let Some((contact, user)) = self.parties(&p.from, &p.to) else {
            return Vec::new();
        };
        let Some(puppet) = p.to.clone().map(|j| Jid::from(j.to_bare())) else {
            return Vec::new();
        };
        // An own account's server keeps its roster and answers probes: only requests reach
        // the user, who answers them (never a policy: the account is the user's own).
        let own = self.shared.is_account(&puppet.to_bare());
        if own && p.type_ == PresenceType::Subscribe {
            info!(contact = %contact, user, "presence subscription request to an own account");
            self.push(RemoteEvent::direct(
                &contact.to_string(),
                &user,
                RemoteEventKind::ContactRequest,
            ))
            .await;
            return Vec::new();
        }
        if own && !matches!(p.type_, PresenceType::None | PresenceType::Unavailable) {
            return Vec::new();
        }
        if !own {
            // RFC 6121 §8.5.1: presence to a user who does not exist is ignored, and a
            // subscription request is answered `unsubscribed`; nothing is stored for it.
            match self.user_status(&p.to, &user).await {
                MatrixUserStatus::Reachable => {}
                MatrixUserStatus::NotFound => {
                    info!(contact = %contact, user, type_ = ?p.type_, "presence to a Matrix user who does not exist");
                    return match p.type_ {
                        PresenceType::Subscribe => vec![subscription_stanza(
                            puppet.clone(),
                            Jid::from(contact.clone()),
                            PresenceType::Unsubscribed,
                        )],
                        _ => Vec::new(),
                    };
                }
                MatrixUserStatus::Unknown => {
                    return match p.type_ {
                        PresenceType::Subscribe => vec![presence_error(
                            &p,
                            ErrorType::Wait,
                            DefinedCondition::RemoteServerTimeout,
                            TRY_LATER,
                        )],
                        _ => Vec::new(),
                    };
                }
            }
        }
        let contact_jid = Jid::from(contact.clone());
        let contact_str = contact.to_string();
        let handshake = |t| subscription_stanza(puppet.clone(), contact_jid.clone(), t);
        let Ok(store) = self.shared.store() else {
            return Vec::new();
        };
        let update = |f: &dyn Fn(&mut roster::Subscription)| {
            roster::update(store, &user, &contact_str, f).map_err(
                |e| warn!(error = %crate::error::chain(&e), "could not store a subscription"),
            )
        };
        let state = match p.type_ {
            PresenceType::None => {
                if let Some(hash) = avatar::announced(&p) {
                    self.picture_announced(&contact, &user, hash).await;
                }
                let state = match p.show {
                    None | Some(Show::Chat) => PresenceState::Online,
                    Some(_) => PresenceState::Unavailable,
                };
                Some(state)
            }
            PresenceType::Unavailable => Some(PresenceState::Offline),
            PresenceType::Subscribe => {
                let current = roster::get(store, &user, &contact_str).unwrap_or_default();
                let policy = if current.from {
                    Policy::Accept
                } else {
                    self.shared.policy.for_contact(&contact_str)
                };
                info!(contact = %contact, user, ?policy, "presence subscription request");
                return match policy {
                    Policy::Accept => {
                        let _ = update(&|s| {
                            s.from = true;
                            s.pending_in = false;
                        });
                        let now = self.shared.fresh_presence(&user).await;
                        vec![
                            handshake(PresenceType::Subscribed),
                            presence_stanza(puppet.clone(), contact_jid.clone(), now.as_ref()),
                        ]
                    }
                    Policy::Deny => vec![handshake(PresenceType::Unsubscribed)],
                    Policy::Ask => {
                        let _ = update(&|s| s.pending_in = true);
                        self.push(RemoteEvent::direct(
                            &contact_str,
                            &user,
                            RemoteEventKind::ContactRequest,
                        ))
                        .await;
                        Vec::new()
                    }
                };
            }
            PresenceType::Unsubscribe => {
                let _ = update(&|s| {
                    s.from = false;
                    s.pending_in = false;
                });
                return vec![handshake(PresenceType::Unsubscribed)];
            }
            PresenceType::Subscribed => {
                let _ = update(&|s| s.to = true);
                return Vec::new();
            }
            PresenceType::Unsubscribed => {
                let _ = update(&|s| s.to = false);
                return Vec::new();
            }
            PresenceType::Probe => {
                let sub = roster::get(store, &user, &contact_str).unwrap_or_default();
                return if sub.from {
                    let now = self.shared.presence_of(&user);
                    vec![presence_stanza(
                        puppet.clone(),
                        contact_jid.clone(),
                        now.as_ref(),
                    )]
                } else {
                    Vec::new()
                };
            }
            _ => None,
        };
        if let Some(state) = state {
            let status = p
                .statuses
                .values()
                .next()
                .cloned()
                .filter(|s| !s.is_empty());
            self.push(RemoteEvent::direct(
                &contact.to_string(),
                &user,
                RemoteEventKind::Presence(NetPresence { state, status }),
            ))
            .await;
        }
        Vec::new()
    }

    fn iq(&self, iq: Iq) -> Vec<Stanza> {
        let (from, to, id, payload) = match iq {
            Iq::Get {
                from,
                to,
                id,
                payload,
            } => (from, to, id, payload),
            Iq::Set { from, to, id, .. } => {
                return vec![error_reply(
                    from,
                    to,
                    id,
                    DefinedCondition::ServiceUnavailable,
                )];
            }
            Iq::Result {
                id, payload, from, ..
            } => {
                self.shared.answer(&id, from.as_ref(), Ok(payload));
                return Vec::new();
            }
            Iq::Error {
                id, error, from, ..
            } => {
                self.shared.answer(
                    &id,
                    from.as_ref(),
                    Err(super::IqRefused {
                        condition: error.defined_condition,
                    }),
                );
                return Vec::new();
            }
        };
        let to_component = to.as_ref().is_some_and(|t| t.node().is_none());
        let result = |payload: Option<Element>| -> Stanza {
            Iq::Result {
                from: to.clone(),
                to: from.clone(),
                id: id.clone(),
                payload,
            }
            .into()
        };
        let hosting = !self.shared.hosted_allowed.is_empty();
        let hosted_room = to
            .as_ref()
            .filter(|t| t.node().is_some_and(|n| n.as_str().starts_with('#')))
            .and_then(|t| self.shared.allowed_alias(&t.to_bare()));
        if payload.is("query", ns::DISCO_INFO) && payload.attr("node").is_none() {
            let mut identities = Vec::new();
            let mut features = payloads::features(payloads::Side::Gateway);
            if let Some(alias) = &hosted_room {
                identities.push(Identity::new("conference", "text", "en", alias.clone()));
                features = [
                    ns::DISCO_INFO,
                    ns::MUC,
                    "muc_open",
                    "muc_nonanonymous",
                    "muc_unmoderated",
                    "muc_public",
                ]
                .iter()
                .map(|f| f.to_string())
                .collect();
            } else if to_component {
                identities.push(Identity::new(
                    "gateway",
                    "matrix",
                    "en",
                    "isthmus Matrix gateway",
                ));
                if hosting {
                    identities.push(Identity::new("conference", "text", "en", "Matrix rooms"));
                    features.insert(ns::MUC.to_owned());
                }
            } else {
                identities.push(Identity::new_anonymous::<_, _, String, String>(
                    "client", "pc",
                ));
            }
            let info = DiscoInfoResult {
                node: None,
                identities,
                features,
                extensions: Vec::new(),
            };
            return vec![result(Some(info.into()))];
        }
        if payload.is("query", ns::DISCO_ITEMS) && payload.attr("node").is_none() {
            let items = if to_component {
                self.shared
                    .hosted_allowed
                    .iter()
                    .filter_map(|alias| {
                        let jid = self.shared.addressing.hosted_room(alias)?;
                        Some(xmpp_parsers::disco::Item {
                            jid: Jid::from(jid),
                            node: None,
                            name: Some(alias.clone()),
                        })
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let items = DiscoItemsResult {
                node: None,
                items,
                rsm: None,
            };
            return vec![result(Some(items.into()))];
        }
        if payload.is("vCard", avatar::VCARD) {
            let user = to
                .as_ref()
                .filter(|t| t.node().is_some())
                .and_then(|t| self.shared.addressing.matrix_user(&t.to_bare()));
            return match user {
                Some(user) => {
                    self.answer_vcard(from, to, id, user);
                    Vec::new()
                }
                None => vec![error_reply(from, to, id, DefinedCondition::ItemNotFound)],
            };
        }
        if payload.is("query", ns::VERSION) {
            let v = VersionResult {
                name: "isthmus".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                os: None,
            };
            return vec![result(Some(v.into()))];
        }
        if payload.is("ping", ns::PING) {
            // A self-ping (XEP-0410) to a hosted room's occupant address: only a joined
            // occupant gets a result, so clients notice they must rejoin (after a restart).
            if let (Some(room), Some(t)) = (&hosted_room, &to)
                && t.resource().is_some()
            {
                let joined = from.as_ref().is_some_and(|f| {
                    self.shared
                        .hosted
                        .lock()
                        .expect("hosted lock")
                        .get(&t.to_bare().to_string())
                        .is_some_and(|r| r.occupants.contains_key(&f.to_string()))
                });
                if !joined {
                    tracing::debug!(room, "self-ping from someone not in the hosted room");
                    return vec![error_reply(from, to, id, DefinedCondition::NotAcceptable)];
                }
            }
            return vec![result(None)];
        }
        vec![error_reply(
            from,
            to,
            id,
            DefinedCondition::ServiceUnavailable,
        )]
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
