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
use futures::{FutureExt, SinkExt, StreamExt};
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
use super::component::{IN_BATCH, LinkError, Outgoing, RECONNECT};
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
    /// The stanzas read together, in order, stored as one batch (one flush covers them all):
    /// returns the stanzas to answer once every event they carry is stored, or why they could
    /// not be, and then nothing of them is kept. Only stanzas for which this returned `Ok`
    /// are acknowledged to the server (XEP-0198 `h`). The default handles them one by one.
    async fn stanzas(&self, batch: Vec<Stanza>) -> Result<Vec<Stanza>, Reason> {
        let mut answers = Vec::new();
        for stanza in batch {
            answers.extend(self.stanza(stanza).await);
        }
        Ok(answers)
    }
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
                    &settings.jid,
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
    account: &BareJid,
    guard: &Guard,
    sm: &mut Sm,
    events: &dyn Events,
    initial: Vec<Stanza>,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
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
                let first = match read {
                    Some(Ok(el)) => el,
                    Some(Err(ReadError::SoftTimeout)) => continue,
                    Some(Err(e)) => return Ended::Dropped(format!("read failed: {e}")),
                    None => return Ended::Dropped("the server closed the connection".into()),
                };
                waiting_since = None;
                // Every element already read comes along: their stanzas are stored with one
                // flush (group commit), and only then counted as handled.
                let mut read = vec![first];
                let mut ended = None;
                while read.len() < IN_BATCH {
                    match xml.next().now_or_never() {
                        Some(Some(Ok(el))) => read.push(el),
                        Some(Some(Err(ReadError::SoftTimeout))) | None => break,
                        Some(Some(Err(e))) => {
                            ended = Some(format!("read failed: {e}"));
                            break;
                        }
                        Some(None) => {
                            ended = Some("the server closed the connection".into());
                            break;
                        }
                    }
                }
                match handle_read(xml, sm, guard, events, read).await {
                    Ok(()) => {}
                    Err(why) => return Ended::Dropped(why.to_string()),
                }
                if let Some(why) = ended {
                    return Ended::Dropped(why);
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
                        to: Some(BareJid::from_parts(None, account.domain()).into()),
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

/// Handles the elements read together: their stanzas are stored as one batch, then counted
/// as handled (with those the limits skipped), then their answers are written and the
/// stream management requests among them are answered. Returns why the connection must end.
///
/// Nothing is counted before it is stored: should the store fail, the connection ends with
/// the count where it was, and the server sends the stanzas again on the resumed stream (or
/// treats them as undelivered when it cannot resume).
async fn handle_read(
    xml: &mut Xml,
    sm: &mut Sm,
    guard: &Guard,
    events: &dyn Events,
    read: Vec<Element>,
) -> Result<(), Reason> {
    let mut handled = skipped(guard);
    let mut stanzas = Vec::new();
    let mut nonzas = Vec::new();
    for el in read {
        if el.has_ns(SM_NS) || el.is("error", STREAMS_NS) {
            nonzas.push(el);
            continue;
        }
        if !is_stanza(&el) {
            debug!(
                name = el.name(),
                ns = el.ns(),
                "unexpected element on the client stream; ignored"
            );
            continue;
        }
        // A stanza that cannot be read counts as handled, or the server would resend it.
        handled = handled.wrapping_add(1);
        match from_client(el) {
            Some(stanza) => stanzas.push(stanza),
            None => debug!("unparsable stanza from the account's server; ignored"),
        }
    }
    let answers = if stanzas.is_empty() {
        Vec::new()
    } else {
        events
            .stanzas(stanzas)
            .await
            .map_err(|e| Reason::because("what the server sent could not be stored", e))?
    };
    if sm.enabled {
        sm.inbound = sm.inbound.wrapping_add(handled);
    }
    for answer in answers {
        write(xml, sm, answer).await?;
    }
    for el in nonzas {
        if el.is("r", SM_NS) {
            xml.send(&ack(sm.inbound))
                .await
                .map_err(|e| Reason::because("write failed", e))?;
        } else if el.is("a", SM_NS) {
            if let Ok(a) = sm::A::try_from(el) {
                sm.acked(a.h);
            }
        } else if el.is("error", STREAMS_NS) {
            let cond = el
                .children()
                .next()
                .map(|c| c.name().to_owned())
                .unwrap_or_default();
            if cond == "conflict" {
                // Another session took our resource: resumption is over.
                sm.id = None;
            }
            return Err(Reason::new(format!("the server ended the stream ({cond})")));
        } else {
            debug!(
                name = el.name(),
                "unexpected stream management element; ignored"
            );
        }
    }
    Ok(())
}

/// Writes one stanza, keeps it until the server acknowledges it, and asks for an
/// acknowledgement every fifth stanza.
async fn write(xml: &mut Xml, sm: &mut Sm, stanza: Stanza) -> Result<(), Reason> {
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

    /// Stores batches until `fail_at` stanzas would be exceeded; that batch and every later
    /// one fail, as a store that cannot write.
    struct FakeStore {
        fail_at: usize,
        stored: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Events for FakeStore {
        async fn stanza(&self, _stanza: Stanza) -> Vec<Stanza> {
            unreachable!("a running session stores stanzas in batches")
        }

        async fn stanzas(&self, batch: Vec<Stanza>) -> Result<Vec<Stanza>, Reason> {
            use std::sync::atomic::Ordering::SeqCst;
            let stored = self.stored.load(SeqCst);
            if stored + batch.len() > self.fail_at {
                return Err(Reason::new("disk full"));
            }
            self.stored.store(stored + batch.len(), SeqCst);
            Ok(Vec::new())
        }

        async fn online(&self, _jid: &FullJid, _resumed: bool) -> Vec<Stanza> {
            Vec::new()
        }

        async fn state(&self, _state: BridgeState, _detail: Option<String>) {}
    }

    /// The `h` of every `<a/>` in what the client wrote.
    fn acks_in(written: &str) -> Vec<u32> {
        written
            .split("<a ")
            .skip(1)
            .filter_map(|a| {
                let rest = &a[a.find("h=")? + 3..];
                rest[..rest.find(['\'', '"'])?].parse().ok()
            })
            .collect()
    }

    /// Runs a session against a server that writes `script` (the elements, in order) and
    /// then closes its side; returns the `h` values the client acknowledged, the count the
    /// session kept for resumption, and how the session ended.
    async fn session_against(script: String, events: &FakeStore) -> (Vec<u32>, u32, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut server_rx, mut server_tx) = tokio::io::split(server);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let _ = server_rx.read_to_end(&mut all).await;
            String::from_utf8_lossy(&all).into_owned()
        });
        server_tx
            .write_all(
                b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                  xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='example.org' \
                  version='1.0'><stream:features/>",
            )
            .await
            .unwrap();
        let guard = Guard::new(1 << 16, 32);
        let io = limited(Box::new(client), &guard);
        let pending = initiate_stream(io, CLIENT_NS, header("example.org"), timeouts())
            .await
            .unwrap();
        let (_, mut xml) = recv_features(pending).await.ok().unwrap();
        server_tx.write_all(script.as_bytes()).await.unwrap();
        server_tx.shutdown().await.unwrap();
        let mut sm = Sm {
            enabled: true,
            ..Sm::default()
        };
        let (_keep_open, mut outgoing) = mpsc::channel(1);
        let (_stop_tx, mut stop) = watch::channel(false);
        let account: BareJid = "me@example.org".parse().unwrap();
        let ended = serve(
            &mut xml,
            &account,
            &guard,
            &mut sm,
            events,
            Vec::new(),
            &mut outgoing,
            &mut stop,
        )
        .await;
        let why = match ended {
            Ended::Dropped(why) => why,
            Ended::Stop => "stop".into(),
        };
        drop(xml);
        (acks_in(&reader.await.unwrap()), sm.inbound, why)
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(48))]
        /// Stream management acknowledges only what is stored (XEP-0198 `h`): whatever the
        /// stanzas, wherever the server asks, and wherever the store starts failing, no `h`
        /// counts a stanza whose batch was not stored, the count kept for resumption is
        /// exactly what was stored, and when the store works the last request is answered
        /// with every stanza.
        #[test]
        fn only_stored_stanzas_are_acknowledged(
            asks in proptest::collection::vec(proptest::bool::ANY, 1..40),
            fail_at in 0usize..50,
        ) {
            let mut script = String::new();
            for (i, ask) in asks.iter().enumerate() {
                script.push_str(&format!(
                    "<message from='c@example.net/x' to='me@example.org/r' type='chat' id='m{i}'><body>{i}</body></message>"
                ));
                if *ask {
                    script.push_str("<r xmlns='urn:xmpp:sm:3'/>");
                }
            }
            script.push_str("<r xmlns='urn:xmpp:sm:3'/></stream:stream>");
            let events = FakeStore { fail_at, stored: Default::default() };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (acks, kept, why) = rt.block_on(session_against(script, &events));
            let stored = events.stored.load(std::sync::atomic::Ordering::SeqCst);
            proptest::prop_assert!(stored <= fail_at);
            proptest::prop_assert_eq!(kept as usize, stored);
            for h in &acks {
                proptest::prop_assert!(*h as usize <= stored, "h {} of {} stored", h, stored);
            }
            if fail_at >= asks.len() {
                proptest::prop_assert_eq!(stored, asks.len());
                proptest::prop_assert_eq!(acks.last().copied(), Some(asks.len() as u32));
                // The server's end of the stream ends the session.
                proptest::prop_assert!(why.contains("footer"), "{}", why);
            } else {
                proptest::prop_assert!(why.contains("could not be stored"), "{}", why);
            }
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
