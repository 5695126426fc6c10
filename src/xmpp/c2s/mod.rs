//! Client connections (RFC 6120) for own-account logins: TLS (STARTTLS, or direct TLS on
//! request), SASL SCRAM (PLAIN only inside TLS and only when no SCRAM is offered), resource
//! binding, and stream management (XEP-0198) with resumption, so that a dropped connection
//! loses no stanza in either direction. Reconnects with the component link's backoff.
//!
//! Stanzas cross this module as the connector's [`Stanza`] type. The parsers are built for
//! the component namespace (`jabber:component:accept`), so stanzas are renamed from and to
//! `jabber:client` at this boundary.

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

use self::negotiate::{authenticate, bind};
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

/// Renames `from` to `to` as the namespace of `el` and of every descendant in `from`.
pub(super) fn rename_ns(mut el: Element, from: &str, to: &str) -> Element {
    let ns = el.ns();
    let nodes = el.take_nodes();
    let attrs = el.attrs().clone();
    let mut out = Element::builder(el.name(), if ns == from { to } else { &ns }).build();
    *out.attrs_mut() = attrs;
    for node in nodes {
        match node {
            Node::Element(child) => {
                out.append_child(rename_ns(child, from, to));
            }
            Node::Text(text) => out.append_text_node(text),
        }
    }
    out
}

/// A stanza read in the client namespace, as the connector's type.
pub(crate) fn from_client(el: Element) -> Option<Stanza> {
    let el = rename_ns(el, CLIENT_NS, COMPONENT_NS);
    match el.name() {
        "message" => xmpp_parsers::message::Message::try_from(el)
            .ok()
            .map(Stanza::Message),
        "presence" => xmpp_parsers::presence::Presence::try_from(el)
            .ok()
            .map(Stanza::Presence),
        "iq" => xmpp_parsers::iq::Iq::try_from(el).ok().map(Stanza::Iq),
        _ => None,
    }
}

/// The connector's stanza as it goes on a client stream.
pub(super) fn to_client(stanza: Stanza) -> Element {
    // The server stamps the session's address (RFC 6120 §8.1.2.1).
    let el = match stanza {
        Stanza::Message(m) => Element::from(m),
        Stanza::Presence(p) => Element::from(p),
        Stanza::Iq(iq) => Element::from(iq),
    };
    let mut el = rename_ns(el, COMPONENT_NS, CLIENT_NS);
    super::xml_safe::element(&mut el);
    el.attrs_mut()
        .remove(xmpp_parsers::minidom::rxml::Namespace::none(), "from");
    el
}

/// An element `name` in `ns` with attributes.
pub(super) fn element(name: &str, ns: &str, attrs: &[(&str, &str)]) -> Element {
    let mut b = Element::builder(name, ns);
    for (k, v) in attrs {
        b = b.attr(
            xmpp_parsers::minidom::rxml::NcName::try_from(*k).expect("an XML name"),
            *v,
        );
    }
    b.build()
}

fn is_stanza(el: &Element) -> bool {
    el.ns() == CLIENT_NS && matches!(el.name(), "message" | "presence" | "iq")
}

/// Stream management state that outlives one connection.
#[derive(Default)]
struct Sm {
    /// The resumption ID, when the server allows resumption.
    id: Option<String>,
    /// Stanzas handled from the server (mod 2^32).
    inbound: u32,
    /// Stanzas sent and not yet acknowledged, with their sequence numbers.
    unacked: VecDeque<(u32, Element)>,
    /// Sequence number of the next stanza sent.
    next_out: u32,
    /// Whether the current connection has stream management enabled.
    enabled: bool,
    /// The full JID of the session.
    bound: Option<FullJid>,
}

impl Sm {
    /// Drops the stanzas the server acknowledged (`h` = count of stanzas it handled).
    fn acked(&mut self, h: u32) {
        while let Some((seq, _)) = self.unacked.front() {
            // Sequence numbers are mod 2^32: `seq` is acknowledged when it is before `h`.
            if h.wrapping_sub(*seq).wrapping_sub(1) < u32::MAX / 2 {
                self.unacked.pop_front();
            } else {
                break;
            }
        }
    }

    fn sent(&mut self, el: Element) {
        if self.unacked.len() >= 10_000 {
            // Never acknowledged: the oldest is given up rather than grow without bound.
            self.unacked.pop_front();
        }
        self.unacked.push_back((self.next_out, el));
        self.next_out = self.next_out.wrapping_add(1);
    }
}

/// Reads the next element (on the stream before or after TLS); a stream error ends it.
async fn read<Io: tokio::io::AsyncBufRead + Unpin>(
    xml: &mut XmlStream<Io, Element>,
    guard: &Guard,
) -> Result<Element, SessionError> {
    loop {
        match xml.next().await {
            Some(Ok(el)) => {
                skipped(guard);
                if el.is("error", STREAMS_NS) {
                    let cond = el
                        .children()
                        .next()
                        .map(|c| c.name().to_owned())
                        .unwrap_or_default();
                    return Err(SessionError::Transient(
                        format!("the server ended the stream ({cond})").into(),
                    ));
                }
                return Ok(el);
            }
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(e)) => return Err(transient(Reason::because("read failed", e))),
            None => return Err(transient("the server closed the connection")),
        }
    }
}

/// Logs the stanzas the limits skipped since the last read; returns how many were stanzas
/// (message, presence or iq, which stream management counts). They are not answered: the
/// server is the account's own, and it enforces its own limits on its users.
fn skipped(guard: &Guard) -> u32 {
    let mut stanzas = 0u32;
    for s in guard.take_skipped() {
        s.log("own account");
        if matches!(s.name.as_str(), "message" | "presence" | "iq") {
            stanzas = stanzas.wrapping_add(1);
        }
    }
    stanzas
}

async fn send<Io: AsyncWrite + Unpin>(
    xml: &mut XmlStream<Io, Element>,
    el: &Element,
) -> Result<(), SessionError> {
    xml.send(el)
        .await
        .map_err(|e| transient(Reason::because("write failed", e)))
}

fn header(domain: &str) -> StreamHeader<'static> {
    StreamHeader {
        to: Some(Cow::Owned(domain.to_owned())),
        from: None,
        id: None,
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        read_timeout: Duration::from_secs(60),
        response_timeout: Duration::from_secs(30),
    }
}

async fn recv_features(
    pending: PendingFeaturesRecv<Io>,
) -> Result<(StreamFeatures, Xml), SessionError> {
    pending
        .recv_features::<Element>()
        .await
        .map_err(|e| transient(Reason::because("no stream features", e)))
}

fn limited(conn: Box<dyn Conn>, guard: &Guard) -> Io {
    BufStream::new(Limited::new(conn, guard.clone()))
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

/// Sets up a session: resumes the previous one when the server still has it, else binds a
/// new resource (and resends what the old session never got acknowledged).
async fn connect(
    settings: &Settings,
    guard: &Guard,
    sm: &mut Sm,
) -> Result<(Xml, FullJid, bool, Vec<Element>), SessionError> {
    let (features, mut xml) = authenticate(settings, guard).await?;
    let offers_sm = features.stream_management.is_some();
    sm.enabled = false;
    if offers_sm && let Some(previd) = sm.id.clone() {
        send(
            &mut xml,
            &sm::Resume {
                h: sm.inbound,
                previd: sm::StreamId(previd),
            }
            .into(),
        )
        .await?;
        let el = read(&mut xml, guard).await?;
        // Read by hand: the crate's `Resumed` refuses an answer without `previd`, which
        // says nothing this session needs.
        if el.is("resumed", SM_NS) {
            let h = el
                .attr("h")
                .and_then(|h| h.parse().ok())
                .ok_or_else(|| transient("the server resumed without saying what it handled"))?;
            sm.acked(h);
            sm.enabled = true;
            let resend: Vec<Element> = sm.unacked.iter().map(|(_, e)| e.clone()).collect();
            for el in &resend {
                send(&mut xml, el).await?;
            }
            info!(jid = %settings.jid, resent = resend.len(), "XMPP stream resumed");
            let jid = sm
                .bound
                .clone()
                .ok_or_else(|| transient("resumed a stream never bound"))?;
            return Ok((xml, jid, true, Vec::new()));
        }
        debug!(jid = %settings.jid, "the server could not resume the stream; starting a new session");
        if let Some(h) = el.attr("h").and_then(|h| h.parse().ok()) {
            sm.acked(h);
        }
        sm.id = None;
    }
    let jid = bind(&mut xml, guard, &settings.resource).await?;
    sm.inbound = 0;
    // What the old session never got acknowledged goes out again on the new one.
    let pending: Vec<Element> = std::mem::take(&mut sm.unacked)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    sm.next_out = 0;
    let mut early = Vec::new();
    if offers_sm {
        send(&mut xml, &sm::Enable::new().with_resume().into()).await?;
        // Stanzas before the answer are not counted; they are handled first once the
        // session runs.
        let el = loop {
            let el = read(&mut xml, guard).await?;
            if el.has_ns(SM_NS) {
                break el;
            }
            early.push(el);
        };
        if let Ok(enabled) = sm::Enabled::try_from(el) {
            sm.enabled = true;
            sm.id = enabled
                .resume
                .then_some(enabled.id)
                .flatten()
                .map(|id| id.0);
            debug!(jid = %settings.jid, resumable = sm.id.is_some(), "stream management on");
        } else {
            debug!(jid = %settings.jid, "the server refused stream management");
        }
    }
    for el in pending {
        send(&mut xml, &el).await?;
        if sm.enabled {
            sm.sent(el);
        }
    }
    sm.bound = Some(jid.clone());
    Ok((xml, jid, false, early))
}

fn ack(h: u32) -> Element {
    sm::A::new(h).into()
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
