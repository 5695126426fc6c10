//! Bridge → SIP: the gateway identity, which speaks for every Matrix user at their address
//! on the gateway domain.

use std::sync::Arc;

use async_trait::async_trait;
use rsipstack::sip::{Header, Method};
use tracing::debug;

use super::Shared;
use super::body;
use super::endpoint::{Answer, Outgoing, SendError};
use super::headers;
use super::ids;
use super::presence;
use crate::network::contacts;
use crate::network::kit::address::gateway_address;
use crate::network::kit::send::{fan_out, send_parts};
use crate::network::{
    BridgeState, ChatKind, Contact, MatrixSender, MessageKind, NetworkClient, NetworkError,
    OutgoingMessage, PartsSent, PortalRef, Presence, RemoteMessageId, RemoteUserId,
};

/// The bridge-wide SIP identity.
pub(crate) struct Gateway {
    pub(super) shared: Arc<Shared>,
}

/// What a final answer means for the Matrix sender.
pub(super) fn outcome(answer: Result<Answer, SendError>) -> Result<(), NetworkError> {
    match answer {
        Ok(a) if (200..300).contains(&a.code) => Ok(()),
        Ok(a) => {
            let what = format!("{} {}", a.code, a.reason);
            match a.code {
                // Timeouts, busy, offline for now, server trouble: worth another try.
                408 | 480 | 486 | 500 | 502..=504 | 580 => {
                    Err(NetworkError::Transient(what.into()))
                }
                401 | 407 => Err(NetworkError::Undeliverable(
                    format!(
                        "{what}: the SIP proxy does not trust the bridge (add it as a trusted peer)"
                    )
                    .into(),
                )),
                _ => Err(NetworkError::Undeliverable(what.into())),
            }
        }
        Err(SendError::Transport(e)) => Err(NetworkError::Down(e)),
        // The bridge is stopping: the item waits in the inbox for the next start.
        Err(e @ SendError::Stopped) => Err(NetworkError::Down(crate::error::Reason::from_error(e))),
        Err(SendError::Invalid(e)) => Err(NetworkError::Internal(e)),
    }
}

impl Gateway {
    fn puppet_uri(&self, sender: &MatrixSender) -> Result<String, NetworkError> {
        gateway_address(
            self.shared.addressing.puppet_uri(&sender.user_id),
            &sender.user_id,
            super::NETWORK,
            Some("only lowercase Matrix IDs have one"),
        )
    }

    /// Sends `text` from `from` (name-addr with tag) to `to_uri`, split into as many MESSAGEs
    /// as the transport's size rule needs, after the ones `resume` says went out already;
    /// returns the first one's Call-ID.
    async fn send_text(
        &self,
        from: &str,
        to_uri: &str,
        text: &str,
        resume: &PartsSent,
    ) -> Result<RemoteMessageId, NetworkError> {
        let ep = self.shared.endpoint()?;
        let first = send_parts(
            body::split(text, self.shared.max_body()),
            resume,
            |part| async move {
                let call_id = ep.call_id();
                let out = Outgoing {
                    method: Method::Message,
                    uri: to_uri,
                    from: from.to_owned(),
                    to: format!("<{to_uri}>"),
                    call_id: Some(call_id.clone()),
                    cseq: 1,
                    headers: vec![Header::ContentType("text/plain;charset=UTF-8".into())],
                    body: part.into_bytes(),
                    credential: None,
                    proxy: None,
                };
                outcome(ep.send(out).await).map(|()| RemoteMessageId::new(call_id))
            },
        )
        .await?;
        Ok(first.unwrap_or_else(|| RemoteMessageId::new("")))
    }

    /// Sends a notice `text` from the gateway address `from_uri` to `to_uri`.
    pub(super) async fn tell(
        &self,
        from_uri: &str,
        to_uri: &str,
        text: &str,
    ) -> Result<(), NetworkError> {
        let from = self.sender_header("isthmus", from_uri)?;
        self.send_text(&from, to_uri, text, &PartsSent::default())
            .await
            .map(|_| ())
    }

    fn sender_header(&self, display: &str, uri: &str) -> Result<String, NetworkError> {
        let tag = self.shared.endpoint()?.tag();
        Ok(format!("{} <{uri}>;tag={tag}", headers::quoted(display)))
    }
}

/// The text of a Matrix message as a SIP user reads it.
pub(super) fn text_of(message: &OutgoingMessage) -> String {
    if let Some(a) = &message.content.attachment {
        let caption = message.content.body.trim();
        return if caption.is_empty() || caption == a.name {
            format!("{}: {}", a.name, a.url)
        } else {
            format!("{caption}\n{}: {}", a.name, a.url)
        };
    }
    let body = message.content.body.trim_end();
    match message.content.kind {
        MessageKind::Emote => format!("* {} {body}", message.sender.displayname),
        _ => body.to_owned(),
    }
}

#[async_trait]
impl NetworkClient for Gateway {
    fn state(&self) -> BridgeState {
        self.shared.state.get()
    }

    async fn send_message(
        &self,
        portal: &PortalRef,
        message: &OutgoingMessage,
    ) -> Result<RemoteMessageId, NetworkError> {
        let text = text_of(message);
        match portal.kind {
            ChatKind::Direct => {
                let from_uri = self.puppet_uri(&message.sender)?;
                let from = self.sender_header(&message.sender.displayname, &from_uri)?;
                let contact = portal.chat.as_str();
                let id = self
                    .send_text(&from, &ids::contact_uri(contact), &text, &message.sent)
                    .await?;
                // After the first message, ask to see the contact's presence. Cancellable at
                // any wait: the subscription is stored before its SUBSCRIBE goes out, and one
                // never confirmed is sent again by the refresh loop (at the next start too).
                let shared = self.shared.clone();
                let (user, contact) = (message.sender.user_id.clone(), contact.to_owned());
                if let Ok(tasks) = self.shared.tasks() {
                    tasks.spawn_loop(async move {
                        if let Err(e) = presence::watch(&shared, &user, &contact, None).await {
                            debug!(error = %crate::error::chain(&e), %contact, "could not subscribe to a contact's presence");
                        }
                    });
                }
                Ok(id)
            }
            ChatKind::Fanout => {
                // SIP has no group chats: each SIP member gets the room's message from the
                // room's address, with the sender's name.
                let room_uri = self.shared.addressing.room_uri(portal.chat.as_str());
                let from = self.sender_header(&message.sender.displayname, &room_uri)?;
                let line = match message.content.kind {
                    MessageKind::Emote => text,
                    _ => format!("{}: {text}", message.sender.displayname),
                };
                // Each member's delivery is remembered until the message reached everyone, so
                // a retry after a passing failure goes only to those still missing it.
                let store = self.shared.store()?;
                let first = fan_out(
                    store,
                    &message.event_id,
                    &portal.members,
                    |member, resume| {
                        let to = ids::contact_uri(member.as_str());
                        let (from, line) = (&from, &line);
                        async move { self.send_text(from, &to, line, &resume).await }
                    },
                )
                .await?;
                Ok(first.unwrap_or_else(|| RemoteMessageId::new("")))
            }
            ChatKind::Group => Err(NetworkError::Unsupported("group chats")),
        }
    }

    async fn send_typing(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        typing: bool,
    ) -> Result<(), NetworkError> {
        if portal.kind != ChatKind::Direct {
            return Ok(());
        }
        let ep = self.shared.endpoint()?;
        let from_uri = self.puppet_uri(sender)?;
        let to_uri = ids::contact_uri(portal.chat.as_str());
        let out = Outgoing {
            method: Method::Message,
            uri: &to_uri,
            from: self.sender_header(&sender.displayname, &from_uri)?,
            to: format!("<{to_uri}>"),
            call_id: None,
            cseq: 1,
            headers: vec![Header::ContentType(body::ISCOMPOSING.into())],
            body: body::iscomposing(typing),
            credential: None,
            proxy: None,
        };
        outcome(ep.send(out).await)
    }

    async fn set_presence(
        &self,
        sender: &MatrixSender,
        presence: &Presence,
    ) -> Result<(), NetworkError> {
        presence::publish(&self.shared, &sender.user_id, presence).await
    }

    async fn answer_contact_request(
        &self,
        user: &MatrixSender,
        contact: &RemoteUserId,
        accept: bool,
    ) -> Result<(), NetworkError> {
        presence::answer(&self.shared, &user.user_id, contact.as_str(), accept).await
    }

    async fn contacts(&self, user: &MatrixSender) -> Result<Vec<Contact>, NetworkError> {
        Ok(contacts::list(self.shared.store()?, &user.user_id)?)
    }
}
