//! Bridge → XMPP: a `Client` acts for Matrix users as one `Identity`, chosen when it is made:
//! the gateway component, which sends as any Matrix user from that user's address on the
//! component domain, or one user's own account, which sends direct messages on the
//! account's connection. Which of them acts in a chat is the core's choice
//! (`NetworkClient::serves`); a client never hands an operation on to another.

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

mod deliver;

use self::deliver::{direct_payloads, displayed, oob};
use super::Shared;
use super::account::Account;
use super::component::Outgoing;
use super::ids::stable_id;
use super::presence::{presence_stanza, subscription_stanza};
use super::{fidelity, hosted, muc};
use crate::network::contacts as roster;
use crate::network::kit::address::gateway_address;
use crate::network::{
    BridgeState, ChatKind, Contact, MatrixSender, MessageContent, NetworkClient, NetworkError,
    OutgoingMessage, PortalRef, Presence, RemoteMessageId, RemoteUserId,
};
use xmpp_parsers::presence::Type as PresenceType;

/// Who a client speaks as on XMPP, chosen once when the client is made.
pub(super) enum Identity {
    /// The gateway component: any Matrix user, from that user's address on the component
    /// domain. Carries every kind of chat.
    Gateway,
    /// One Matrix user's own account, on the account's connection. Carries direct chats only;
    /// the core acts through the gateway in the others.
    Own(Arc<Account>),
}

/// An identity on XMPP and the link it writes on: the gateway component's, or an own
/// account's connection.
pub(super) struct Client {
    pub shared: Arc<Shared>,
    pub identity: Identity,
    pub out: mpsc::Sender<Outgoing>,
    pub state: watch::Receiver<BridgeState>,
    pub counter: AtomicU64,
}

impl Client {
    /// The address `sender` speaks from in a direct chat.
    fn puppet(&self, sender: &MatrixSender) -> Result<Jid, NetworkError> {
        match &self.identity {
            Identity::Own(account) => Ok(Jid::from(account.jid().clone())),
            Identity::Gateway => self.puppet_bare(sender).map(Jid::from),
        }
    }

    /// Refuses a group chat to an own account: the core never asks one for it
    /// ([`NetworkClient::serves`]), and the account's connection must not join rooms.
    fn group_chats(&self) -> Result<(), NetworkError> {
        match self.identity {
            Identity::Gateway => Ok(()),
            Identity::Own(_) => Err(NetworkError::Internal(
                "an own XMPP account carries direct chats only".into(),
            )),
        }
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
            return Err(NetworkError::Down(match self.identity {
                Identity::Own(_) => "the connection of the XMPP account is down".into(),
                Identity::Gateway => "the XMPP component link is down".into(),
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

#[async_trait]
impl NetworkClient for Client {
    fn state(&self) -> BridgeState {
        *self.state.borrow()
    }

    fn serves(&self, kind: ChatKind) -> bool {
        match self.identity {
            Identity::Gateway => true,
            Identity::Own(_) => kind == ChatKind::Direct,
        }
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
        self.group_chats()?;
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

    async fn set_topic(
        &self,
        portal: &PortalRef,
        user: &MatrixSender,
        topic: &str,
    ) -> Result<(), NetworkError> {
        // A hosted room's occupants see the new subject from the nick of who set it
        // (XEP-0045 §8.1). A group chat hosted elsewhere keeps its own subject.
        let Some(room) = self.hosted(portal) else {
            return Ok(());
        };
        let nick = self.member_nick(&room, user);
        for to in self.shared.hosted.occupants(room.as_str()) {
            if let Some(stanza) = hosted::subject_change(&room, &nick, &to, topic) {
                self.send(stanza).await?;
            }
        }
        Ok(())
    }

    async fn join_chat(&self, portal: &PortalRef, user: &MatrixSender) -> Result<(), NetworkError> {
        self.group_chats()?;
        if let Some(room) = self.hosted(portal) {
            return self.hosted_membership(&room, user, false).await;
        }
        let room = Self::room(portal)?;
        let room_str = room.to_string();
        let nick = muc::nick_for(&user.displayname, &user.user_id);
        let already = self.shared.rooms.puppet_nick(&room_str, &user.user_id);
        if already.as_deref() == Some(nick.as_str()) {
            return Ok(());
        }
        let from = muc::puppet_full(&self.puppet_bare(user)?);
        // The bridge's first join of a room brings its recent history into the new portal;
        // later joins ask for none (the room's traffic is already bridged).
        let first = muc::last_seen(self.shared.store()?, &room_str).is_none()
            && !self.shared.rooms.has_puppets(&room_str);
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
            .add_puppet(&room_str, &user.user_id, &nick);
        if let Err(e) = self.send(stanza).await {
            // Not joined: a retry must send the join again.
            self.shared
                .rooms
                .undo_add_puppet(&room_str, &user.user_id, before);
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
        self.group_chats()?;
        if let Some(room) = self.hosted(portal) {
            // The XMPP occupants see the Matrix member leave.
            return self.hosted_membership(&room, user, true).await;
        }
        let room = Self::room(portal)?;
        let room_str = room.to_string();
        let Some(nick) = self.shared.rooms.remove_puppet(&room_str, &user.user_id) else {
            return Ok(());
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
        if let Identity::Own(account) = &self.identity {
            account.publish_presence(presence).await;
        }
        // Gateway contacts and group chats see the user's gateway address, logged in or not.
        self.shared
            .publish_presence(&sender.user_id, presence)
            .await
    }

    async fn answer_contact_request(
        &self,
        user: &MatrixSender,
        contact: &RemoteUserId,
        accept: bool,
    ) -> Result<(), NetworkError> {
        // An own account's roster lives on its server; the gateway's is kept here.
        if let Identity::Gateway = self.identity {
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
        match &self.identity {
            Identity::Own(account) => Ok(account.contacts()),
            Identity::Gateway => Ok(roster::list(self.shared.store()?, &user.user_id)?),
        }
    }

    async fn logout(&self) -> Result<(), NetworkError> {
        if let Identity::Own(account) = &self.identity {
            account.logout();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
