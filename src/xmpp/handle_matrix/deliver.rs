//! How a client puts a Matrix user's message into a conversation: to the contact, into an
//! external group chat (joining it first) or to every occupant of a hosted room; and the
//! payloads a direct message carries.

use super::*;

impl Client {
    /// How to name message `target` in `portal`: in an external group chat, by the room's
    /// stanza-id when the bridge knows it (XEP-0424, 0444 and 0461 ask for it there), else
    /// by its own ID.
    pub(super) fn room_ref(&self, portal: &PortalRef, target: &RemoteMessageId) -> String {
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
    pub(super) async fn deliver(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        id: &str,
        fill: &(dyn Fn(&mut Message) + Sync),
    ) -> Result<(), NetworkError> {
        let origin_id = Element::from(OriginId { id: id.to_owned() });
        if portal.kind != ChatKind::Direct {
            self.group_chats()?;
        }
        if let Some(room) = self.hosted(portal) {
            let nick = self.member_nick(&room, sender);
            let targets = self.shared.hosted.occupants(room.as_str());
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
    pub(super) fn hosted(&self, portal: &PortalRef) -> Option<BareJid> {
        if portal.kind != ChatKind::Group {
            return None;
        }
        let room = BareJid::from_str(portal.chat.as_str()).ok()?;
        self.shared.allowed_alias(&room).map(|_| room)
    }

    /// The nick of a Matrix member in a hosted room (recorded on join, else from the name).
    pub(super) fn member_nick(&self, room: &BareJid, user: &MatrixSender) -> String {
        self.shared
            .hosted
            .member_nick(room.as_str(), &user.user_id)
            .unwrap_or_else(|| muc::nick_for(&user.displayname, &user.user_id))
    }

    /// A Matrix member arrives in (or leaves) a hosted room: the XMPP occupants see it.
    pub(super) async fn hosted_membership(
        &self,
        room: &BareJid,
        user: &MatrixSender,
        leaving: bool,
    ) -> Result<(), NetworkError> {
        let nick = muc::nick_for(&user.displayname, &user.user_id);
        let Some((nick, targets)) =
            self.shared
                .hosted
                .member_change(room.as_str(), &user.user_id, nick, leaving)
        else {
            return Ok(());
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
    pub(super) async fn ask_presence_once(&self, sender: &MatrixSender, portal: &PortalRef) {
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
pub(super) fn direct_payloads(displayname: &str) -> [Element; 4] {
    [
        ChatState::Active.into(),
        Markable.into(),
        Request.into(),
        Nick(displayname.to_owned()).into(),
    ]
}

/// A file's out-of-band data (XEP-0066): its link, without a description.
pub(super) fn oob(url: &str) -> Element {
    Oob {
        url: url.to_owned(),
        desc: None,
    }
    .into()
}

/// The read marker (XEP-0333) up to message `id`.
pub(super) fn displayed(id: &str) -> Element {
    Displayed {
        id: Id(id.to_owned()),
    }
    .into()
}
