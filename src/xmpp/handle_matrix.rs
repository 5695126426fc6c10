//! Bridge → XMPP: the gateway identity, which sends as any Matrix user from that user's
//! address on the component domain.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use xmpp_parsers::chatstates::ChatState;
use xmpp_parsers::displayed_markers::{Displayed, Markable};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Id, Lang, Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::nick::Nick;
use xmpp_parsers::oob::Oob;
use xmpp_parsers::receipts::Request;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_id::OriginId;

use super::Shared;
use super::component::Outgoing;
use super::handle_xmpp::{presence_stanza, subscription_stanza};
use super::{fidelity, hosted, muc};
use crate::network::contacts as roster;
use crate::network::kit::address::gateway_address;
use crate::network::{
    BridgeState, ChatKind, Contact, MatrixSender, MessageContent, NetworkClient, NetworkError,
    OutgoingMessage, PortalRef, Presence, RemoteMessageId, RemoteUserId,
};
use xmpp_parsers::presence::Type as PresenceType;

/// The bridge-wide identity on XMPP, which sends as any Matrix user from that user's gateway
/// address; or, with `own` set, one user's own account, which sends on that account's
/// connection.
pub(super) struct Gateway {
    pub shared: Arc<Shared>,
    pub out: mpsc::Sender<Outgoing>,
    pub state: watch::Receiver<BridgeState>,
    pub counter: AtomicU64,
    /// The own account this identity is, when it is one.
    pub own: Option<BareJid>,
}

impl Gateway {
    fn puppet(&self, sender: &MatrixSender) -> Result<Jid, NetworkError> {
        if let Some(own) = &self.own {
            return Ok(Jid::from(own.clone()));
        }
        self.puppet_bare(sender).map(Jid::from)
    }

    fn puppet_bare(&self, sender: &MatrixSender) -> Result<BareJid, NetworkError> {
        gateway_address(
            self.shared.addressing.puppet(&sender.user_id),
            &sender.user_id,
            super::NETWORK,
            None,
        )
    }

    fn room(portal: &PortalRef) -> Result<BareJid, NetworkError> {
        BareJid::from_str(portal.chat.as_str()).map_err(|e| {
            NetworkError::Internal(format!("stored group chat is not a JID: {e}").into())
        })
    }

    fn contact(portal: &PortalRef) -> Result<Jid, NetworkError> {
        if portal.kind != ChatKind::Direct {
            return Err(NetworkError::Unsupported("this in group chats"));
        }
        BareJid::from_str(portal.chat.as_str())
            .map(Jid::from)
            .map_err(|e| NetworkError::Internal(format!("stored contact is not a JID: {e}").into()))
    }

    fn new_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("isthmus-{:x}-{n}", crate::network::now_ms())
    }

    /// Writes a stanza and waits until it is on the wire.
    async fn send(&self, stanza: Stanza) -> Result<(), NetworkError> {
        if *self.state.borrow() != BridgeState::Connected {
            return Err(NetworkError::Down(match self.own {
                Some(_) => "the connection of the XMPP account is down".into(),
                None => "the XMPP component link is down".into(),
            }));
        }
        let (tx, rx) = oneshot::channel();
        self.out
            .send((stanza, Some(tx)))
            .await
            .map_err(|_| NetworkError::Down("the XMPP link is stopping".into()))?;
        match tokio::time::timeout(std::time::Duration::from_secs(30), rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            // The link failed while writing (it reconnects, and the stanza goes again then),
            // or this stanza cannot be written at all.
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(_)) => Err(NetworkError::Down(
                "the XMPP link dropped the stanza".into(),
            )),
            Err(_) => Err(NetworkError::Transient(
                "the XMPP link did not take the stanza within 30 s".into(),
            )),
        }
    }
}

/// An XMPP message ID derived from a Matrix event ID (FNV-1a, 64 bits).
fn stable_id(event_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in event_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("isthmus-{hash:016x}")
}

/// Shortest time between two presence broadcasts of one user.
const PRESENCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What to do with a presence change.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    /// Broadcast now.
    Now,
    /// Broadcast the latest presence after this delay.
    Later(std::time::Duration),
    /// A later broadcast is already scheduled; it will carry this change.
    Skip,
}

/// The rate limit of one user's presence: `entry` is (last broadcast, trailing one scheduled).
fn presence_gate(entry: &mut (Option<std::time::Instant>, bool), now: std::time::Instant) -> Gate {
    match entry.0 {
        Some(sent) if now.duration_since(sent) < PRESENCE_INTERVAL => {
            if entry.1 {
                Gate::Skip
            } else {
                entry.1 = true;
                Gate::Later(PRESENCE_INTERVAL - now.duration_since(sent))
            }
        }
        _ => {
            *entry = (Some(now), false);
            Gate::Now
        }
    }
}

impl Gateway {
    /// How to name message `target` in `portal`: in an external group chat, by the room's
    /// stanza-id when the bridge knows it (XEP-0424, 0444 and 0461 ask for it there), else
    /// by its own ID.
    fn room_ref(&self, portal: &PortalRef, target: &RemoteMessageId) -> String {
        if portal.kind == ChatKind::Group
            && self.hosted(portal).is_none()
            && let Ok(store) = self.shared.store()
            && let Ok(Some(serde_json::Value::String(sid))) =
                store.get(&muc::stanza_id_key(portal.chat.as_str(), target.as_str()))
        {
            return sid;
        }
        target.as_str().to_owned()
    }

    /// Sends a message into the conversation of `portal` as `sender`, with `fill` adding the
    /// body and payloads: to the contact in a direct chat, to the room in a group chat (joining
    /// it first), to every occupant in a hosted room.
    async fn deliver(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        id: &str,
        fill: &(dyn Fn(&mut Message) + Sync),
    ) -> Result<(), NetworkError> {
        let origin_id = Element::from(OriginId { id: id.to_owned() });
        if let Some(room) = self.hosted(portal) {
            let nick = self.member_nick(&room, sender);
            let targets: Vec<Jid> = self
                .shared
                .hosted
                .lock()
                .expect("hosted lock")
                .get(&room.to_string())
                .map(|r| {
                    r.occupants
                        .keys()
                        .filter_map(|j| Jid::from_str(j).ok())
                        .collect()
                })
                .unwrap_or_default();
            let from = Jid::from_str(&format!("{room}/{nick}"))
                .map_err(|e| NetworkError::Undeliverable(format!("nick {nick:?}: {e}").into()))?;
            for to in targets {
                let mut m = Message::new(Some(to));
                m.type_ = MessageType::Groupchat;
                m.from = Some(from.clone());
                m.id = Some(Id(id.to_owned()));
                fill(&mut m);
                m.payloads.push(origin_id.clone());
                self.send(m.into()).await?;
            }
            return Ok(());
        }
        let mut m = if portal.kind == ChatKind::Group {
            self.join_chat(portal, sender).await?;
            let mut m = Message::new(Some(Jid::from(Self::room(portal)?)));
            m.type_ = MessageType::Groupchat;
            m.from = Some(muc::puppet_full(&self.puppet_bare(sender)?));
            m
        } else {
            let mut m = Message::new(Some(Self::contact(portal)?));
            m.type_ = MessageType::Chat;
            m.from = Some(self.puppet(sender)?);
            m
        };
        m.id = Some(Id(id.to_owned()));
        fill(&mut m);
        m.payloads.push(origin_id);
        self.send(m.into()).await
    }

    /// The hosted group chat a portal is, if it is one.
    fn hosted(&self, portal: &PortalRef) -> Option<BareJid> {
        if portal.kind != ChatKind::Group {
            return None;
        }
        let room = BareJid::from_str(portal.chat.as_str()).ok()?;
        self.shared.allowed_alias(&room).map(|_| room)
    }

    /// The nick of a Matrix member in a hosted room (recorded on join, else from the name).
    fn member_nick(&self, room: &BareJid, user: &MatrixSender) -> String {
        self.shared
            .hosted
            .lock()
            .expect("hosted lock")
            .get(&room.to_string())
            .and_then(|r| r.members.get(&user.user_id).cloned())
            .unwrap_or_else(|| muc::nick_for(&user.displayname, &user.user_id))
    }

    /// A Matrix member arrives in (or leaves) a hosted room: the XMPP occupants see it.
    async fn hosted_membership(
        &self,
        room: &BareJid,
        user: &MatrixSender,
        leaving: bool,
    ) -> Result<(), NetworkError> {
        let (nick, targets) = {
            let mut rooms = self.shared.hosted.lock().expect("hosted lock");
            let r = rooms.entry(room.to_string()).or_default();
            let nick = if leaving {
                match r.members.remove(&user.user_id) {
                    Some(n) => n,
                    None => return Ok(()),
                }
            } else {
                let mut nick = muc::nick_for(&user.displayname, &user.user_id);
                if r.occupants.values().any(|n| n == &nick) {
                    nick = format!("{nick} (Matrix)");
                }
                if r.members.get(&user.user_id) == Some(&nick) {
                    return Ok(());
                }
                r.members.insert(user.user_id.clone(), nick.clone());
                nick
            };
            let targets: Vec<Jid> = r
                .occupants
                .keys()
                .filter_map(|j| Jid::from_str(j).ok())
                .collect();
            (nick, targets)
        };
        for to in targets {
            if let Some(p) = hosted::occupant_presence(room, &nick, &to, leaving, false, None) {
                self.send(p).await?;
            }
        }
        Ok(())
    }

    /// After the first message to a contact, asks to see the contact's presence on the user's
    /// behalf (once; the contact's client asks its user).
    async fn ask_presence_once(&self, sender: &MatrixSender, portal: &PortalRef) {
        let Ok(store) = self.shared.store() else {
            return;
        };
        let contact = portal.chat.as_str();
        let Ok(sub) = roster::get(store, &sender.user_id, contact) else {
            return;
        };
        if sub.asked_out || sub.to {
            return;
        }
        let (Ok(from), Ok(to)) = (self.puppet(sender), Self::contact(portal)) else {
            return;
        };
        if self
            .send(subscription_stanza(from, to, PresenceType::Subscribe))
            .await
            .is_ok()
        {
            let _ = roster::update(store, &sender.user_id, contact, |s| s.asked_out = true);
        }
    }
}

/// The payloads of a new message in a direct chat: the sender is active (XEP-0085), the
/// message may be marked displayed (XEP-0333) and asks for a delivery receipt (XEP-0184),
/// and carries the sender's name (XEP-0172).
fn direct_payloads(displayname: &str) -> [Element; 4] {
    [
        ChatState::Active.into(),
        Markable.into(),
        Request.into(),
        Nick(displayname.to_owned()).into(),
    ]
}

/// A file's out-of-band data (XEP-0066): its link, without a description.
fn oob(url: &str) -> Element {
    Oob {
        url: url.to_owned(),
        desc: None,
    }
    .into()
}

/// The read marker (XEP-0333) up to message `id`.
fn displayed(id: &str) -> Element {
    Displayed {
        id: Id(id.to_owned()),
    }
    .into()
}

#[async_trait]
impl NetworkClient for Gateway {
    fn state(&self) -> BridgeState {
        *self.state.borrow()
    }

    fn is_bridge_wide(&self) -> bool {
        true
    }

    async fn send_message(
        &self,
        portal: &PortalRef,
        message: &OutgoingMessage,
    ) -> Result<RemoteMessageId, NetworkError> {
        // Derived from the Matrix event, so a retry or a replay sends the same ID.
        let id = stable_id(&message.event_id);
        // A file goes as its link in the body and as XEP-0066 out-of-band data, which
        // clients show inline; a caption goes as a message of its own before it.
        let attachment = message.content.attachment.clone();
        let body = match &attachment {
            Some(a) => a.url.clone(),
            None => super::convert::outbound_body(&message.content),
        };
        if let Some(a) = &attachment
            && !message.content.body.is_empty()
            && message.content.body != a.name
        {
            let caption = message.content.body.clone();
            let caption_id = format!("{id}-caption");
            self.deliver(portal, &message.sender, &caption_id, &|m: &mut Message| {
                m.bodies.insert(Lang::default(), caption.clone());
            })
            .await?;
        }
        let direct = portal.kind == ChatKind::Direct;
        let displayname = message.sender.displayname.clone();
        let reply_to = message.reply_to.as_ref().map(|t| self.room_ref(portal, t));
        self.deliver(portal, &message.sender, &id, &|m: &mut Message| {
            m.bodies.insert(Lang::default(), body.clone());
            if let Some(a) = &attachment {
                m.payloads.push(oob(&a.url));
            }
            if let Some(target) = &reply_to {
                m.payloads.push(fidelity::reply(target));
            }
            if direct {
                m.payloads.extend(direct_payloads(&displayname));
            }
        })
        .await?;
        if direct {
            self.ask_presence_once(&message.sender, portal).await;
        }
        Ok(RemoteMessageId::new(id))
    }

    async fn send_moderation(
        &self,
        portal: &PortalRef,
        moderator: &MatrixSender,
        target: &RemoteMessageId,
        reason: Option<&str>,
    ) -> Result<(), NetworkError> {
        if portal.kind != ChatKind::Group || self.hosted(portal).is_some() {
            return Err(NetworkError::Unsupported("moderation in this chat"));
        }
        let room = Self::room(portal)?;
        // The moderator's puppet asks, so the room checks the moderator's own role.
        self.join_chat(portal, moderator).await?;
        let from = muc::puppet_full(&self.puppet_bare(moderator)?);
        let answer = self
            .shared
            .request(
                from,
                room.into(),
                true,
                fidelity::moderate(target.as_str(), reason),
            )
            .await?;
        match answer {
            Ok(_) => Ok(()),
            Err(refused)
                if matches!(
                    refused.condition,
                    xmpp_parsers::stanza_error::DefinedCondition::Forbidden
                        | xmpp_parsers::stanza_error::DefinedCondition::NotAllowed
                ) =>
            {
                Err(NetworkError::Undeliverable(
                    "you are not a moderator of the XMPP group chat".into(),
                ))
            }
            Err(refused) => Err(NetworkError::Undeliverable(
                format!("the XMPP group chat refused the moderation ({refused})").into(),
            )),
        }
    }

    async fn send_edit(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        target: &RemoteMessageId,
        content: &MessageContent,
    ) -> Result<(), NetworkError> {
        let body = super::convert::outbound_body(content);
        let id = self.new_id();
        self.deliver(portal, sender, &id, &|m: &mut Message| {
            m.bodies.insert(Lang::default(), body.clone());
            m.payloads.push(fidelity::replace(target.as_str()));
        })
        .await
    }

    async fn send_redaction(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        target: &RemoteMessageId,
    ) -> Result<(), NetworkError> {
        let target = self.room_ref(portal, target);
        let id = self.new_id();
        self.deliver(portal, sender, &id, &|m: &mut Message| {
            m.bodies
                .insert(Lang::default(), fidelity::RETRACT_FALLBACK.to_owned());
            m.payloads.extend(fidelity::retract(&target));
        })
        .await
    }

    async fn send_receipt(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        up_to: &RemoteMessageId,
    ) -> Result<(), NetworkError> {
        if portal.kind != ChatKind::Direct {
            return Err(NetworkError::Unsupported("read markers in group chats"));
        }
        let mut m = Message::new(Some(Self::contact(portal)?));
        m.type_ = MessageType::Chat;
        m.from = Some(self.puppet(sender)?);
        m.payloads.push(displayed(up_to.as_str()));
        self.send(m.into()).await
    }

    async fn send_reaction(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        target: &RemoteMessageId,
        key: &str,
        remove: bool,
    ) -> Result<(), NetworkError> {
        // XMPP carries the full set of a user's reactions to a message: keep it, change one
        // key, send the set.
        let store = self.shared.store()?;
        let set_key = format!("rout:{}\u{1f}{}", sender.user_id, target);
        let mut set: std::collections::BTreeSet<String> = store
            .get(&set_key)?
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        if remove {
            set.remove(key);
        } else {
            set.insert(key.to_owned());
        }
        let id = self.new_id();
        let payload = fidelity::reactions(&self.room_ref(portal, target), &set);
        self.deliver(portal, sender, &id, &|m: &mut Message| {
            m.payloads.push(payload.clone());
        })
        .await?;
        fidelity::diff_reactions(store, &set_key, &set)?;
        Ok(())
    }

    async fn join_chat(&self, portal: &PortalRef, user: &MatrixSender) -> Result<(), NetworkError> {
        if let Some(room) = self.hosted(portal) {
            return self.hosted_membership(&room, user, false).await;
        }
        let room = Self::room(portal)?;
        let room_str = room.to_string();
        let nick = muc::nick_for(&user.displayname, &user.user_id);
        let already = self
            .shared
            .rooms
            .lock()
            .expect("rooms lock")
            .get(&room_str)
            .and_then(|r| r.puppets.get(&user.user_id).cloned());
        if already.as_deref() == Some(nick.as_str()) {
            return Ok(());
        }
        let from = muc::puppet_full(&self.puppet_bare(user)?);
        // The bridge's first join of a room brings its recent history into the new portal;
        // later joins ask for none (the room's traffic is already bridged).
        let first = muc::last_seen(self.shared.store()?, &room_str).is_none()
            && self
                .shared
                .rooms
                .lock()
                .expect("rooms lock")
                .get(&room_str)
                .is_none_or(|r| r.puppets.is_empty());
        let stanza = if first {
            muc::join_presence_backfill(from, &room, &nick)
        } else {
            muc::join_presence(from, &room, &nick, false)
        }
        .ok_or_else(|| {
            NetworkError::InvalidInput(format!("{nick:?} is not a usable nick").into())
        })?;
        // The puppet is in the room's record before its join goes out: the room answers at
        // once (occupants' presence, history), and only rooms with a puppet take that in.
        let before = self
            .shared
            .rooms
            .lock()
            .expect("rooms lock")
            .entry(room_str.clone())
            .or_default()
            .puppets
            .insert(user.user_id.clone(), nick.clone());
        if let Err(e) = self.send(stanza).await {
            // Not joined: a retry must send the join again.
            let mut rooms = self.shared.rooms.lock().expect("rooms lock");
            if let Some(r) = rooms.get_mut(&room_str) {
                match before {
                    Some(old) => {
                        r.puppets.insert(user.user_id.clone(), old);
                    }
                    None => {
                        r.puppets.remove(&user.user_id);
                    }
                }
                if r.puppets.is_empty() {
                    rooms.remove(&room_str);
                }
            }
            return Err(e);
        }
        muc::remember(self.shared.store()?, &room_str, &user.user_id, &nick)?;
        Ok(())
    }

    async fn leave_chat(
        &self,
        portal: &PortalRef,
        user: &MatrixSender,
    ) -> Result<(), NetworkError> {
        if let Some(room) = self.hosted(portal) {
            // The XMPP occupants see the Matrix member leave.
            return self.hosted_membership(&room, user, true).await;
        }
        let room = Self::room(portal)?;
        let room_str = room.to_string();
        let nick = {
            let mut rooms = self.shared.rooms.lock().expect("rooms lock");
            let Some(r) = rooms.get_mut(&room_str) else {
                return Ok(());
            };
            let nick = r.puppets.remove(&user.user_id);
            if r.puppets.is_empty() {
                rooms.remove(&room_str);
            }
            nick
        };
        muc::forget(self.shared.store()?, &room_str, &user.user_id)?;
        let Some(nick) = nick else { return Ok(()) };
        let from = muc::puppet_full(&self.puppet_bare(user)?);
        if let Some(stanza) = muc::join_presence(from, &room, &nick, true) {
            self.send(stanza).await?;
        }
        Ok(())
    }

    async fn send_typing(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        typing: bool,
    ) -> Result<(), NetworkError> {
        let to = Self::contact(portal)?;
        let mut msg = Message::new(Some(to));
        msg.type_ = MessageType::Chat;
        msg.from = Some(self.puppet(sender)?);
        msg.payloads.push(
            if typing {
                ChatState::Composing
            } else {
                ChatState::Paused
            }
            .into(),
        );
        self.send(msg.into()).await
    }

    async fn set_presence(
        &self,
        sender: &MatrixSender,
        presence: &Presence,
    ) -> Result<(), NetworkError> {
        {
            let mut last = self.shared.presence.lock().expect("presence lock");
            if last.get(&sender.user_id) == Some(presence) {
                return Ok(());
            }
            last.insert(sender.user_id.clone(), presence.clone());
        }
        // Rate limit: at most one broadcast per user per interval; changes in between are
        // coalesced into one trailing broadcast of the latest presence.
        let wait = {
            let mut limit = self
                .shared
                .presence_limit
                .lock()
                .expect("presence limit lock");
            let entry = limit.entry(sender.user_id.clone()).or_insert((None, false));
            match presence_gate(entry, std::time::Instant::now()) {
                Gate::Now => None,
                Gate::Later(delay) => Some(delay),
                Gate::Skip => return Ok(()),
            }
        };
        match wait {
            None => self.shared.broadcast_presence(&sender.user_id).await,
            Some(delay) => {
                let shared = Arc::clone(&self.shared);
                let user = sender.user_id.clone();
                // A trailing update: a shutdown may drop it.
                self.shared.tasks()?.spawn_loop(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(e) = shared
                        .presence_limit
                        .lock()
                        .expect("presence limit lock")
                        .get_mut(&user)
                    {
                        *e = (Some(std::time::Instant::now()), false);
                    }
                    if let Err(e) = shared.broadcast_presence(&user).await {
                        tracing::debug!(user, error = %crate::error::chain(&e), "trailing presence broadcast failed");
                    }
                });
                Ok(())
            }
        }
    }

    async fn answer_contact_request(
        &self,
        user: &MatrixSender,
        contact: &RemoteUserId,
        accept: bool,
    ) -> Result<(), NetworkError> {
        // An own account's roster lives on its server; the gateway's is kept here.
        if self.own.is_none() {
            let store = self.shared.store()?;
            roster::update(store, &user.user_id, contact.as_str(), |s| {
                s.from = accept;
                s.pending_in = false;
            })?;
        }
        let from = self.puppet(user)?;
        let to = Jid::from(
            BareJid::from_str(contact.as_str())
                .map_err(|e| NetworkError::InvalidInput(crate::error::Reason::from_error(e)))?,
        );
        if accept {
            self.send(subscription_stanza(
                from.clone(),
                to.clone(),
                PresenceType::Subscribed,
            ))
            .await?;
            let now = self.shared.fresh_presence(&user.user_id).await;
            self.send(presence_stanza(from, to, now.as_ref())).await
        } else {
            self.send(subscription_stanza(from, to, PresenceType::Unsubscribed))
                .await
        }
    }

    async fn contacts(&self, user: &MatrixSender) -> Result<Vec<Contact>, NetworkError> {
        Ok(roster::list(self.shared.store()?, &user.user_id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use super::super::payloads::wire;

    fn id_attr() -> xmpp_parsers::minidom::rxml::NcName {
        xmpp_parsers::minidom::rxml::xml_ncname!("id").to_owned()
    }

    /// Text as a Matrix user may send it, markup and control characters included.
    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex("[ -~\\u{1}<>&'\"é😀]{0,16}").unwrap()
    }

    proptest::proptest! {
        /// The crate's payloads are the elements the bridge built by hand before: the same
        /// names, namespaces, attributes and text.
        #[test]
        fn typed_payloads_keep_the_wire_shape(id in text(), name in text(), url in text()) {
            use xmpp_parsers::ns;
            let origin = Element::from(OriginId { id: id.clone() });
            proptest::prop_assert_eq!(
                origin,
                Element::builder("origin-id", ns::SID).attr(id_attr(), id.as_str()).build()
            );
            let built = [
                Element::builder("active", ns::CHATSTATES).build(),
                Element::builder("markable", "urn:xmpp:chat-markers:0").build(),
                Element::builder("request", ns::RECEIPTS).build(),
                Element::builder("nick", ns::NICK).append(name.clone()).build(),
            ];
            proptest::prop_assert_eq!(direct_payloads(&name).map(|e| wire(&e)), built.map(|e| wire(&e)));
            proptest::prop_assert_eq!(
                wire(&oob(&url)),
                wire(&Element::builder("x", "jabber:x:oob")
                    .append(Element::builder("url", "jabber:x:oob").append(url.clone()))
                    .build())
            );
            proptest::prop_assert_eq!(
                displayed(&id),
                Element::builder("displayed", "urn:xmpp:chat-markers:0")
                    .attr(id_attr(), id.as_str())
                    .build()
            );
        }
    }

    #[test]
    fn typing_states_keep_their_names() {
        for (state, name) in [
            (ChatState::Composing, "composing"),
            (ChatState::Paused, "paused"),
        ] {
            let el = Element::from(state);
            assert!(el.is(name, xmpp_parsers::ns::CHATSTATES));
            assert!(el.attrs().is_empty());
            assert_eq!(el.nodes().count(), 0);
        }
    }

    #[test]
    fn message_ids_are_stable_per_event() {
        assert_eq!(stable_id("$abc:hs"), stable_id("$abc:hs"));
        assert_ne!(stable_id("$abc:hs"), stable_id("$abd:hs"));
        assert!(stable_id("$x").starts_with("isthmus-"));
    }

    #[test]
    fn presence_changes_are_rate_limited_and_coalesced() {
        let t0 = Instant::now();
        let mut entry = (None, false);
        assert_eq!(presence_gate(&mut entry, t0), Gate::Now);
        assert_eq!(
            presence_gate(&mut entry, t0 + Duration::from_millis(500)),
            Gate::Later(Duration::from_millis(1500))
        );
        assert_eq!(
            presence_gate(&mut entry, t0 + Duration::from_millis(600)),
            Gate::Skip
        );
        // The trailing broadcast ran and reset the entry.
        entry = (Some(t0 + Duration::from_secs(2)), false);
        assert_eq!(
            presence_gate(&mut entry, t0 + Duration::from_secs(5)),
            Gate::Now
        );
    }
}
