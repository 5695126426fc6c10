//! XMPP → bridge: messages, chat states, presence and IQs arriving on the component.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use async_trait::async_trait;
use tracing::{debug, info, warn};
use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::presence::{Presence, Show, Type as PresenceType};
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use xmpp_parsers::version::VersionResult;

use super::component::Inbound;
use super::ids::Addressing;
use crate::network::{
    BridgeState, ChatKind, EventSink, MessageContent, MessageKind, Presence as NetPresence,
    PresenceState, RemoteChatId, RemoteEvent, RemoteEventKind, RemoteMessageId, RemoteUserId,
};

/// The features the gateway advertises: exactly what it implements.
pub(super) const FEATURES: [&str; 5] = [
    ns::DISCO_INFO,
    ns::DISCO_ITEMS,
    ns::VERSION,
    ns::PING,
    ns::CHATSTATES,
];

/// Handles what the component receives.
pub(super) struct Handler {
    pub addressing: Addressing,
    pub sink: OnceLock<EventSink>,
    pub state: tokio::sync::watch::Sender<BridgeState>,
}

fn error_reply(
    iq_from: Option<Jid>,
    iq_to: Option<Jid>,
    id: String,
    condition: DefinedCondition,
) -> Stanza {
    Iq::Error {
        from: iq_to,
        to: iq_from,
        id,
        error: StanzaError::new(
            ErrorType::Cancel,
            condition,
            "en",
            "not implemented by this gateway",
        ),
        payload: None,
    }
    .into()
}

impl Handler {
    async fn push(&self, event: RemoteEvent) {
        let Some(sink) = self.sink.get() else { return };
        if let Err(e) = sink.push(event).await {
            warn!(error = %e, "could not store an XMPP event");
        }
    }

    /// The contact and Matrix user a stanza is between, when it is one we bridge.
    fn parties(&self, from: &Option<Jid>, to: &Option<Jid>) -> Option<(BareJid, String)> {
        let from = from.as_ref()?.to_bare();
        let to = to.as_ref()?.to_bare();
        // Loop prevention: an address on our own domain is a Matrix user, never a contact.
        let contact = self.addressing.contact(&from.to_string()).ok()?;
        let user = self.addressing.matrix_user(&to)?;
        Some((contact, user))
    }

    async fn message(&self, msg: Message) {
        if msg.type_ == MessageType::Error {
            info!(from = ?msg.from, "XMPP message bounced with an error");
            return;
        }
        if !matches!(msg.type_, MessageType::Chat | MessageType::Normal) {
            debug!(type_ = ?msg.type_, "message type not bridged yet");
            return;
        }
        let Some((contact, user)) = self.parties(&msg.from, &msg.to) else {
            debug!(from = ?msg.from, to = ?msg.to, "message not between a contact and a Matrix user; ignored");
            return;
        };
        let nick = msg
            .payloads
            .iter()
            .find(|p| p.is("nick", ns::NICK))
            .map(Element::text)
            .filter(|n| !n.trim().is_empty());
        let base = |kind| RemoteEvent {
            chat: RemoteChatId::new(contact.to_string()),
            chat_kind: ChatKind::Direct,
            receiver: Some(user.clone()),
            sender: RemoteUserId::new(contact.to_string()),
            sender_name: nick.clone(),
            timestamp_ms: None,
            kind,
        };
        let body = msg.bodies.values().next().cloned();
        if let Some(body) = body {
            let id = msg
                .payloads
                .iter()
                .find(|p| p.is("origin-id", ns::SID))
                .and_then(|p| p.attr("id").map(str::to_owned))
                .or_else(|| msg.id.as_ref().map(|i| i.0.clone()))
                .unwrap_or_else(|| format!("noid-{}", crate::bridge::now_ms()));
            let (kind, body) = match body.strip_prefix("/me ") {
                Some(rest) => (MessageKind::Emote, rest.to_owned()),
                None => (MessageKind::Text, body),
            };
            self.push(base(RemoteEventKind::Message {
                id: RemoteMessageId::new(id),
                content: MessageContent {
                    kind,
                    body,
                    html: None,
                },
                reply_to: None,
            }))
            .await;
            return;
        }
        let chat_state = msg
            .payloads
            .iter()
            .find(|p| p.has_ns(ns::CHATSTATES))
            .map(|p| p.name().to_owned());
        match chat_state.as_deref() {
            Some("composing") => {
                self.push(base(RemoteEventKind::Typing { active: true }))
                    .await
            }
            Some("paused" | "active" | "inactive" | "gone") => {
                self.push(base(RemoteEventKind::Typing { active: false }))
                    .await
            }
            _ => {}
        }
    }

    async fn presence(&self, p: Presence) -> Vec<Stanza> {
        let Some((contact, user)) = self.parties(&p.from, &p.to) else {
            return Vec::new();
        };
        let puppet = p.to.clone().map(|j| Jid::from(j.to_bare()));
        let contact_jid = Jid::from(contact.clone());
        let from_puppet = |type_| {
            let mut out = Presence::new(type_);
            out.from = puppet.clone();
            out.to = Some(contact_jid.clone());
            Stanza::from(out)
        };
        let state = match p.type_ {
            PresenceType::None => {
                let state = match p.show {
                    None | Some(Show::Chat) => PresenceState::Online,
                    Some(_) => PresenceState::Unavailable,
                };
                Some(state)
            }
            PresenceType::Unavailable => Some(PresenceState::Offline),
            PresenceType::Subscribe => {
                // Contacts may see a Matrix user's presence; the user is told in a later version.
                info!(contact = %contact, user, "presence subscription accepted");
                return vec![
                    from_puppet(PresenceType::Subscribed),
                    from_puppet(PresenceType::None),
                ];
            }
            PresenceType::Probe => return vec![from_puppet(PresenceType::None)],
            _ => None,
        };
        if let Some(state) = state {
            let status = p
                .statuses
                .values()
                .next()
                .cloned()
                .filter(|s| !s.is_empty());
            self.push(RemoteEvent {
                chat: RemoteChatId::new(contact.to_string()),
                chat_kind: ChatKind::Direct,
                receiver: Some(user),
                sender: RemoteUserId::new(contact.to_string()),
                sender_name: None,
                timestamp_ms: None,
                kind: RemoteEventKind::Presence(NetPresence { state, status }),
            })
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
            Iq::Result { .. } | Iq::Error { .. } => return Vec::new(),
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
        if payload.is("query", ns::DISCO_INFO) && payload.attr("node").is_none() {
            let identity = if to_component {
                Identity::new("gateway", "matrix", "en", "isthmus Matrix gateway")
            } else {
                Identity::new_anonymous::<_, _, String, String>("client", "pc")
            };
            let info = DiscoInfoResult {
                node: None,
                identities: vec![identity],
                features: FEATURES
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<BTreeSet<_>>(),
                extensions: Vec::new(),
            };
            return vec![result(Some(info.into()))];
        }
        if payload.is("query", ns::DISCO_ITEMS) && payload.attr("node").is_none() {
            let items = DiscoItemsResult {
                node: None,
                items: Vec::new(),
                rsm: None,
            };
            return vec![result(Some(items.into()))];
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
            Stanza::Message(m) => {
                self.message(m).await;
                Vec::new()
            }
            Stanza::Presence(p) => self.presence(p).await,
            Stanza::Iq(iq) => self.iq(iq),
        }
    }

    async fn state(&self, state: BridgeState, detail: Option<String>) {
        let _ = self.state.send(state);
        if let Some(sink) = self.sink.get() {
            sink.report_state(None, state, detail).await;
        }
    }
}
