//! Client connections (RFC 6120) for own-account logins: TLS (STARTTLS, or direct TLS on
//! request), SASL SCRAM (PLAIN only inside TLS and only when no SCRAM is offered), resource
//! binding, and stream management (XEP-0198) with resumption, so that a dropped connection
//! loses no stanza in either direction. Reconnects with the component link's backoff.
//!
//! Stanzas cross this module as the connector's [`Stanza`] type. The parsers are built for
//! the component namespace (`jabber:component:accept`), so stanzas are renamed from and to
//! `jabber:client` at this boundary.
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | the session loop: connect, serve, reconnect with backoff, stop |
//! | `negotiate.rs` | TLS, SASL (with `scram.rs`) and resource binding |
//! | `session.rs` | stream management (XEP-0198): resuming a session or binding a new one |
//! | `wire.rs` | stanzas renamed between namespaces; elements read and written |

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, BufStream};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_xmpp::xmlstream::{
    PendingFeaturesRecv, ReadError, StreamHeader, Timeouts, XmlStream, initiate_stream,
};
use tracing::{debug, info, warn};
use xmpp_parsers::bind::{BindQuery, BindResponse};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, FullJid};
use xmpp_parsers::minidom::{Element, Node};
use xmpp_parsers::ping::Ping;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stream_features::StreamFeatures;
use xmpp_parsers::{sasl, sm, starttls};

mod negotiate;
mod session;
mod wire;

use self::negotiate::{authenticate, bind};
use self::session::{Sm, ack, connect};
pub(crate) use self::wire::from_client;
pub(super) use self::wire::{element, rename_ns, to_client};
use self::wire::{header, is_stanza, limited, read, recv_features, send, skipped, timeouts};
use super::component::{LinkError, Outgoing, RECONNECT};
use super::limits::{Guard, Limited};
use super::scram::{Hash, Scram};
use crate::error::Reason;
use crate::network::BridgeState;

const CLIENT_NS: &str = "jabber:client";
const COMPONENT_NS: &str = "jabber:component:accept";
const SASL_NS: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const BIND_NS: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const SM_NS: &str = "urn:xmpp:sm:3";
const STREAMS_NS: &str = "http://etherx.jabber.org/streams";

/// Any byte stream the session runs on (plain TCP before STARTTLS, TLS after).
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

type Io = BufStream<Limited<Box<dyn Conn>>>;
type Xml = XmlStream<Io, Element>;

/// How to reach and log in to the account's server.
#[derive(Clone)]
pub(super) struct Settings {
    pub jid: BareJid,
    pub password: String,
    pub host: String,
    pub port: u16,
    /// The server may resolve to loopback or private addresses (allowed by the config).
    pub allow_private: bool,
    /// TLS from the first byte (XEP-0368 style) instead of STARTTLS.
    pub direct_tls: bool,
    pub tls: Arc<rustls::ClientConfig>,
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    /// The resource asked for.
    pub resource: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("jid", &self.jid)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("direct_tls", &self.direct_tls)
            .finish_non_exhaustive()
    }
}

/// Why a session could not be set up or ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    /// The server refused the credentials; retrying will not help.
    #[error("{0}")]
    Auth(#[source] Reason),
    /// Anything that may pass (network, server restart, a timeout).
    #[error("{0}")]
    Transient(#[source] Reason),
}

fn transient(reason: impl Into<Reason>) -> SessionError {
    SessionError::Transient(reason.into())
}

/// What the session reports to the account that owns it.
#[async_trait::async_trait]
pub(super) trait Events: Send + Sync {
    /// One stanza from the server (in the component namespace); returns stanzas to answer.
    async fn stanza(&self, stanza: Stanza) -> Vec<Stanza>;
    /// The session is usable. `resumed` is false for a new session, which then needs its
    /// initial stanzas (carbons, roster, presence): they are returned.
    async fn online(&self, jid: &FullJid, resumed: bool) -> Vec<Stanza>;
    /// The state changed.
    async fn state(&self, state: BridgeState, detail: Option<String>);
}

/// What ended one connection.
enum Ended {
    Stop,
    Dropped(String),
}

/// Runs the account's session until `stop` turns true.
pub(super) async fn run(
    settings: Settings,
    events: Arc<dyn Events>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sm = Sm::default();
    let mut reconnect = RECONNECT.start();
    loop {
        if *stop.borrow() {
            return;
        }
        events.state(BridgeState::Connecting, None).await;
        let guard = Guard::new(settings.max_stanza_bytes, settings.max_depth);
        let connected = tokio::select! {
            c = connect(&settings, &guard, &mut sm) => c,
            _ = stop.changed() => return,
        };
        match connected {
            Ok((mut xml, jid, resumed, early)) => {
                reconnect.reset();
                info!(jid = %jid, resumed, "XMPP account online");
                events.state(BridgeState::Connected, None).await;
                let mut initial = events.online(&jid, resumed).await;
                for el in early.into_iter().filter(is_stanza) {
                    if let Some(stanza) = from_client(el) {
                        initial.extend(events.stanza(stanza).await);
                    }
                }
                match serve(
                    &mut xml,
                    &settings,
                    &guard,
                    &mut sm,
                    events.as_ref(),
                    initial,
                    &mut outgoing,
                    &mut stop,
                )
                .await
                {
                    Ended::Stop => {
                        // What was handled is acknowledged, so the server does not deliver
                        // it again at the next login.
                        if sm.enabled {
                            let _ = send(&mut xml, &ack(sm.inbound)).await;
                        }
                        let _ = send(
                            &mut xml,
                            &element("presence", CLIENT_NS, &[("type", "unavailable")]),
                        )
                        .await;
                        let _ = SinkExt::<&Element>::close(&mut xml).await;
                        info!(jid = %jid, "XMPP account session ended");
                        return;
                    }
                    Ended::Dropped(why) => {
                        warn!(jid = %settings.jid, reason = %why, "XMPP account connection lost; reconnecting");
                        events
                            .state(BridgeState::TransientDisconnect, Some(why))
                            .await;
                    }
                }
            }
            Err(SessionError::Auth(why)) => {
                warn!(jid = %settings.jid, reason = %why, "XMPP account login refused");
                events
                    .state(BridgeState::BadCredentials, Some(why.to_string()))
                    .await;
                // Nothing will change until the user logs in again.
                let _ = stop.changed().await;
                return;
            }
            Err(SessionError::Transient(why)) => {
                warn!(jid = %settings.jid, reason = %why, attempt = reconnect.retries(), "XMPP account connection failed; retrying");
                events
                    .state(BridgeState::TransientDisconnect, Some(why.to_string()))
                    .await;
            }
        }
        // Whoever waits on a stanza while the connection is down is answered (the core
        // retries); what nobody waits on is dropped.
        while let Ok((_, done)) = outgoing.try_recv() {
            if let Some(done) = done {
                let _ = done.send(Err(LinkError::Down(
                    "the connection of the XMPP account is down".into(),
                )));
            }
        }
        tokio::select! {
            _ = reconnect.wait() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Reads and writes until the connection drops or the account stops.
#[allow(clippy::too_many_arguments)]
async fn serve(
    xml: &mut Xml,
    settings: &Settings,
    guard: &Guard,
    sm: &mut Sm,
    events: &dyn Events,
    initial: Vec<Stanza>,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let write = async |xml: &mut Xml, sm: &mut Sm, stanza: Stanza| -> Result<(), Reason> {
        let el = to_client(stanza);
        xml.send(&el)
            .await
            .map_err(|e| Reason::because("write failed", e))?;
        if sm.enabled {
            sm.sent(el);
            if sm.next_out.is_multiple_of(5) {
                xml.send(&Element::from(sm::R))
                    .await
                    .map_err(|e| Reason::because("write failed", e))?;
            }
        }
        Ok(())
    };
    for s in initial {
        if let Err(e) = write(xml, sm, s).await {
            return Ended::Dropped(e.to_string());
        }
    }
    let mut ping = tokio::time::interval(Duration::from_secs(60));
    ping.tick().await;
    let mut waiting_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            read = xml.next() => {
                let el = match read {
                    Some(Ok(el)) => el,
                    Some(Err(ReadError::SoftTimeout)) => continue,
                    Some(Err(e)) => return Ended::Dropped(format!("read failed: {e}")),
                    None => return Ended::Dropped("the server closed the connection".into()),
                };
                let n = skipped(guard);
                if sm.enabled {
                    // A skipped stanza counts as handled, or the server would resend it.
                    sm.inbound = sm.inbound.wrapping_add(n);
                }
                waiting_since = None;
                if el.is("r", SM_NS) {
                    if let Err(e) = xml.send(&ack(sm.inbound)).await {
                        return Ended::Dropped(format!("write failed: {e}"));
                    }
                    continue;
                }
                if el.is("a", SM_NS) {
                    if let Ok(a) = sm::A::try_from(el) {
                        sm.acked(a.h);
                    }
                    continue;
                }
                if el.is("error", STREAMS_NS) {
                    let cond = el.children().next().map(|c| c.name().to_owned()).unwrap_or_default();
                    if cond == "conflict" {
                        // Another session took our resource: resumption is over.
                        sm.id = None;
                    }
                    return Ended::Dropped(format!("the server ended the stream ({cond})"));
                }
                if !is_stanza(&el) {
                    debug!(name = el.name(), ns = el.ns(), "unexpected element on the client stream; ignored");
                    continue;
                }
                if sm.enabled {
                    sm.inbound = sm.inbound.wrapping_add(1);
                }
                let Some(stanza) = from_client(el) else {
                    debug!("unparsable stanza from the account's server; ignored");
                    continue;
                };
                for answer in events.stanza(stanza).await {
                    if let Err(e) = write(xml, sm, answer).await {
                        return Ended::Dropped(e.to_string());
                    }
                }
            }
            out = outgoing.recv() => {
                let Some((stanza, done)) = out else {
                    return Ended::Stop;
                };
                let result = write(xml, sm, stanza).await;
                let failed = result.as_ref().err().map(ToString::to_string);
                if let Some(done) = done {
                    let _ = done.send(result.map_err(LinkError::Down));
                }
                if let Some(e) = failed {
                    return Ended::Dropped(e);
                }
            }
            _ = ping.tick() => {
                // A silent connection may be dead: ask for an acknowledgement (or send
                // whitespace without stream management), and give up when nothing comes.
                if let Some(since) = waiting_since && since.elapsed() > Duration::from_secs(90) {
                    return Ended::Dropped("the server stopped answering".into());
                }
                let probe = if sm.enabled {
                    xml.send(&Element::from(sm::R)).await
                } else {
                    let iq = xmpp_parsers::iq::Iq::Get {
                        from: None,
                        to: Some(BareJid::from_parts(None, settings.jid.domain()).into()),
                        id: format!("ping-{}", crate::network::now_ms()),
                        payload: Ping.into(),
                    };
                    xml.send(&to_client(Stanza::Iq(iq))).await
                };
                if let Err(e) = probe {
                    return Ended::Dropped(format!("write failed: {e}"));
                }
                waiting_since.get_or_insert_with(tokio::time::Instant::now);
            }
            _ = stop.changed() => return Ended::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS_NS: &str = "urn:ietf:params:xml:ns:xmpp-tls";

    use super::super::payloads::wire;

    proptest::proptest! {
        /// The crate's nonzas and payloads are the elements the bridge built by hand before.
        #[test]
        fn typed_nonzas_keep_the_wire_shape(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            resource in "[ -~é]{1,16}",
            previd in "[a-zA-Z0-9-]{1,16}",
            h in proptest::num::u32::ANY,
        ) {
            let auth: Element = sasl::Auth { mechanism: sasl::Mechanism::ScramSha256, data: data.clone() }.into();
            let mut built = element("auth", SASL_NS, &[("mechanism", "SCRAM-SHA-256")]);
            built.append_text(B64.encode(&data));
            proptest::prop_assert_eq!(wire(&auth), wire(&built));
            let plain: Element = sasl::Auth { mechanism: sasl::Mechanism::Plain, data: data.clone() }.into();
            proptest::prop_assert_eq!(plain.attr("mechanism"), Some("PLAIN"));

            let response: Element = sasl::Response { data: data.clone() }.into();
            let built = Element::builder("response", SASL_NS).append(B64.encode(&data)).build();
            proptest::prop_assert_eq!(wire(&response), wire(&built));

            let bind = to_client(Stanza::Iq(Iq::Set {
                from: None,
                to: None,
                id: "bind-1".into(),
                payload: BindQuery::new(Some(resource.clone())).into(),
            }));
            let mut built = element("iq", CLIENT_NS, &[("type", "set"), ("id", "bind-1")]);
            built.append_child(
                Element::builder("bind", BIND_NS)
                    .append(Element::builder("resource", BIND_NS).append(resource.as_str()).build())
                    .build(),
            );
            proptest::prop_assert_eq!(wire(&bind), wire(&built));

            let resume: Element = sm::Resume { h, previd: sm::StreamId(previd.clone()) }.into();
            let built = element("resume", SM_NS, &[("previd", &previd), ("h", &h.to_string())]);
            proptest::prop_assert_eq!(resume, built);
            proptest::prop_assert_eq!(ack(h), element("a", SM_NS, &[("h", &h.to_string())]));
        }
    }

    #[test]
    fn fixed_nonzas_keep_the_wire_shape() {
        let e: Element = starttls::Request.into();
        assert_eq!(e, Element::builder("starttls", TLS_NS).build());
        let e: Element = sm::Enable::new().with_resume().into();
        assert_eq!(e, element("enable", SM_NS, &[("resume", "true")]));
        let e: Element = sm::R.into();
        assert_eq!(e, Element::builder("r", SM_NS).build());
        let e: Element = Ping.into();
        assert_eq!(e, Element::builder("ping", xmpp_parsers::ns::PING).build());
        let e: Element = sasl::Response { data: Vec::new() }.into();
        assert_eq!(
            wire(&e),
            wire(&Element::builder("response", SASL_NS).build())
        );
    }

    #[test]
    fn stream_management_answers_are_read() {
        let el = |xml: &str| xml.parse::<Element>().unwrap();
        for (xml, id) in [
            (
                "<enabled xmlns='urn:xmpp:sm:3' id='s1' resume='true'/>",
                Some("s1"),
            ),
            (
                "<enabled xmlns='urn:xmpp:sm:3' id='s1' resume='1' max='60'/>",
                Some("s1"),
            ),
            ("<enabled xmlns='urn:xmpp:sm:3' id='s1'/>", None),
            ("<enabled xmlns='urn:xmpp:sm:3'/>", None),
        ] {
            let enabled = sm::Enabled::try_from(el(xml)).unwrap();
            assert_eq!(
                enabled
                    .resume
                    .then_some(enabled.id)
                    .flatten()
                    .map(|i| i.0)
                    .as_deref(),
                id,
                "{xml}"
            );
        }
        assert_eq!(
            sm::A::try_from(el("<a xmlns='urn:xmpp:sm:3' h='7' x='y'/>"))
                .unwrap()
                .h,
            7
        );
        assert!(sm::A::try_from(el("<a xmlns='urn:xmpp:sm:3' h='x'/>")).is_err());
        let bound = el(
            "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>me@example.org/isthmus</jid></bind>",
        );
        assert_eq!(
            FullJid::from(BindResponse::try_from(bound).unwrap()).to_string(),
            "me@example.org/isthmus"
        );
        assert!(
            starttls::Proceed::try_from(el("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"))
                .is_ok()
        );
        assert!(
            starttls::Proceed::try_from(el("<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"))
                .is_err()
        );
    }
}
