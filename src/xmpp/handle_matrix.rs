//! Bridge → XMPP: the gateway identity, which sends as any Matrix user from that user's
//! address on the component domain.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Id, Lang, Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::stanza::Stanza;

use super::component::Outgoing;
use super::ids::Addressing;
use crate::network::{
    BridgeState, ChatKind, MatrixSender, MessageKind, NetworkClient, NetworkError, OutgoingMessage,
    PortalRef, RemoteMessageId,
};

/// The bridge-wide identity on XMPP.
pub(super) struct Gateway {
    pub addressing: Addressing,
    pub out: mpsc::Sender<Outgoing>,
    pub state: watch::Receiver<BridgeState>,
    pub counter: AtomicU64,
}

impl Gateway {
    fn puppet(&self, sender: &MatrixSender) -> Result<Jid, NetworkError> {
        self.addressing
            .puppet(&sender.user_id)
            .map(Jid::from)
            .ok_or_else(|| {
                NetworkError::Undeliverable(format!("{} has no XMPP address", sender.user_id))
            })
    }

    fn contact(portal: &PortalRef) -> Result<Jid, NetworkError> {
        if portal.kind != ChatKind::Direct {
            return Err(NetworkError::Unsupported("group chats on XMPP yet"));
        }
        BareJid::from_str(portal.chat.as_str())
            .map(Jid::from)
            .map_err(|e| NetworkError::Internal(format!("stored contact is not a JID: {e}")))
    }

    fn new_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("isthmus-{:x}-{n}", crate::bridge::now_ms())
    }

    /// Writes a stanza and waits until it is on the wire.
    async fn send(&self, stanza: Stanza) -> Result<(), NetworkError> {
        if *self.state.borrow() != BridgeState::Connected {
            return Err(NetworkError::Transient(
                "the XMPP component link is down".into(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.out
            .send((stanza, Some(tx)))
            .await
            .map_err(|_| NetworkError::Transient("the XMPP link is stopping".into()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NetworkError::Transient(e)),
            Err(_) => Err(NetworkError::Transient(
                "the XMPP link dropped the stanza".into(),
            )),
        }
    }
}

fn chat_state(name: &str) -> Element {
    Element::builder(name, ns::CHATSTATES).build()
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
        let to = Self::contact(portal)?;
        let from = self.puppet(&message.sender)?;
        let id = self.new_id();
        let body = match message.content.kind {
            MessageKind::Emote => format!("/me {}", message.content.body),
            _ => message.content.body.clone(),
        };
        let mut msg = Message::new(Some(to));
        msg.type_ = MessageType::Chat;
        msg.from = Some(from);
        msg.id = Some(Id(id.clone()));
        msg.bodies.insert(Lang::default(), body);
        msg.payloads.push(
            Element::builder("origin-id", ns::SID)
                .attr(
                    xmpp_parsers::minidom::rxml::xml_ncname!("id").to_owned(),
                    id.clone(),
                )
                .build(),
        );
        msg.payloads.push(chat_state("active"));
        msg.payloads.push(
            Element::builder("nick", ns::NICK)
                .append(message.sender.displayname.clone())
                .build(),
        );
        self.send(msg.into()).await?;
        Ok(RemoteMessageId::new(id))
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
        msg.payloads
            .push(chat_state(if typing { "composing" } else { "paused" }));
        self.send(msg.into()).await
    }
}
