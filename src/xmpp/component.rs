//! The component link (XEP-0114): connect, authenticate with the shared secret, read and
//! write stanzas, and reconnect with jittered exponential backoff when the link drops or the
//! server refuses a second session while the old one still looks alive.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_xmpp::Component;
use tokio_xmpp::connect::ServerConnector;
use tokio_xmpp::parsers::jid::Jid;
use tokio_xmpp::xmlstream::{PendingFeaturesRecv, StreamHeader, Timeouts, initiate_stream};
use tracing::{debug, error, info, warn};
use xmpp_parsers::stanza::Stanza;

use super::limits::{Guard, Limited, Skipped};
use super::xml_safe;
use crate::backoff::{Jitter, Policy};
use crate::error::{Reason, chain};
use crate::network::{BridgeState, NetworkError};

/// A stanza to write, and who waits to know it was written.
pub(super) type Outgoing = (Stanza, Option<oneshot::Sender<Result<(), LinkError>>>);

/// Why a stanza handed to a link (the component link or an account's connection) was not
/// written. The variant is the failure model's verdict.
#[derive(Clone, Debug, thiserror::Error)]
pub(super) enum LinkError {
    /// The link is down or failed while writing: an outage for everyone on it. It
    /// reconnects, and the stanza can go again then.
    #[error("{0}")]
    Down(#[source] Reason),
    /// This stanza cannot be written (see [`xml_safe::stanza`]); the link is fine.
    #[error("{0}")]
    Unwritable(#[source] xml_safe::Unwritable),
}

impl From<LinkError> for NetworkError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Down(why) => NetworkError::Down(why),
            LinkError::Unwritable(e) => NetworkError::Internal(Reason::from_error(e)),
        }
    }
}

/// How to reach the XMPP server.
#[derive(Clone, Debug)]
pub(super) struct LinkConfig {
    pub host: String,
    pub port: u16,
    pub domain: String,
    pub secret: String,
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
}

/// Connects plain TCP (the component port is local to the XMPP server) with the inbound limits.
#[derive(Clone, Debug)]
struct LimitedConnector {
    addr: String,
    guard: Guard,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ConnectError(String);

impl tokio_xmpp::connect::ServerConnectorError for ConnectError {}

impl ServerConnector for LimitedConnector {
    type Stream = BufStream<Limited<TcpStream>>;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<
        (
            PendingFeaturesRecv<Self::Stream>,
            sasl::common::ChannelBinding,
        ),
        tokio_xmpp::Error,
    > {
        let tcp = TcpStream::connect(&self.addr).await.map_err(|e| {
            tokio_xmpp::Error::Connection(Box::new(ConnectError(format!("{}: {e}", self.addr))))
        })?;
        let stream = BufStream::new(Limited::new(tcp, self.guard.clone()));
        let pending = initiate_stream(
            stream,
            ns,
            StreamHeader {
                to: Some(Cow::Owned(jid.domain().as_str().to_owned())),
                from: None,
                id: None,
            },
            timeouts,
        )
        .await?;
        Ok((pending, sasl::common::ChannelBinding::None))
    }
}

/// Receives what the link reads.
#[async_trait::async_trait]
pub(super) trait Inbound: Send + Sync {
    /// Handles one stanza; returns stanzas to send back (IQ answers, errors).
    async fn stanza(&self, stanza: Stanza) -> Vec<Stanza>;
    /// Handles the stanzas read together, in order; returns what to send back. The default
    /// handles them one by one.
    async fn stanzas(&self, batch: Vec<Stanza>) -> Vec<Stanza> {
        let mut answers = Vec::new();
        for stanza in batch {
            answers.extend(self.stanza(stanza).await);
        }
        answers
    }
    /// The link state changed.
    async fn state(&self, state: BridgeState, detail: Option<String>);
}

/// How long a link must have been up for its loss to be retried at once.
const STABLE: Duration = Duration::from_secs(5);

/// Delays between reconnect attempts (of this link and of own-account connections): 1 s
/// doubling to 60 s, within 25 % either way (never above 60 s).
pub(super) const RECONNECT: Policy =
    Policy::doubling(Duration::from_secs(1), Duration::from_secs(60))
        .with_jitter(Jitter::spread(0.25));

/// Where reconnecting starts after the server refused the secret: 32 s, as nothing changes
/// until someone fixes the config or the server.
const REFUSED_RETRY: u32 = 5;

/// Runs the link until `stop` turns true.
pub(super) async fn run(
    cfg: LinkConfig,
    inbound: Arc<dyn Inbound>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reconnect = RECONNECT.start();
    loop {
        if *stop.borrow() {
            return;
        }
        inbound.state(BridgeState::Connecting, None).await;
        let guard = Guard::new(cfg.max_stanza_bytes, cfg.max_depth);
        let connector = LimitedConnector {
            addr: format!("{}:{}", cfg.host, cfg.port),
            guard: guard.clone(),
        };
        let connected = tokio::select! {
            c = Component::new_with_connector(&cfg.domain, &cfg.secret, connector, Timeouts::default()) => c,
            _ = stop.changed() => return,
        };
        match connected {
            Ok(component) => {
                info!(domain = %cfg.domain, host = %cfg.host, port = cfg.port, "XMPP component link up");
                reconnect.reset();
                let up_since = tokio::time::Instant::now();
                inbound.state(BridgeState::Connected, None).await;
                let why = serve(
                    component,
                    &guard,
                    inbound.as_ref(),
                    &mut outgoing,
                    &mut stop,
                )
                .await;
                if *stop.borrow() {
                    return;
                }
                warn!(reason = %why, "XMPP component link down; reconnecting");
                inbound
                    .state(BridgeState::TransientDisconnect, Some(why))
                    .await;
                // A link that was up a while comes back at once, and what is queued for it
                // stays queued; one that keeps dropping right away backs off like a failed
                // connection.
                if up_since.elapsed() >= STABLE {
                    continue;
                }
            }
            Err(tokio_xmpp::Error::Auth(e)) => {
                error!(
                    error = %crate::error::chain(&e),
                    "the XMPP server refused the component secret (networks.xmpp.component.secret) or the domain (networks.xmpp.component.domain); fix the config or the server's Component entry"
                );
                inbound
                    .state(
                        BridgeState::BadCredentials,
                        Some("the XMPP server refused the component secret".into()),
                    )
                    .await;
                reconnect.skip_to(REFUSED_RETRY);
            }
            Err(e) => {
                warn!(error = %crate::error::chain(&e), attempt = reconnect.retries(), "XMPP component link failed; retrying");
                inbound
                    .state(BridgeState::TransientDisconnect, Some(e.to_string()))
                    .await;
            }
        }
        // The server cannot be reached: answer whoever waits on a stanza (the core retries).
        while let Ok((_, ack)) = outgoing.try_recv() {
            if let Some(ack) = ack {
                let _ = ack.send(Err(LinkError::Down("the XMPP link is down".into())));
            }
        }
        let delay = reconnect.next_delay().unwrap_or(RECONNECT.cap());
        debug!(
            delay_ms = delay.as_millis() as u64,
            "waiting before reconnecting"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The stanza error answering a stanza skipped for breaking a limit: `policy-violation`,
/// type `modify`, to its sender with its `id`. None for an error stanza (never answered with
/// an error), an IQ result, or a stanza whose `from`, `to` or name cannot be used.
pub(super) fn limit_error(skipped: &Skipped) -> Option<Stanza> {
    use xmpp_parsers::iq::Iq;
    use xmpp_parsers::message::{Id, Message, MessageType};
    use xmpp_parsers::presence::{Presence, Type as PresenceType};
    use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

    if skipped.kind.as_deref() == Some("error") {
        return None;
    }
    let sender: Jid = skipped.from.as_deref()?.parse().ok()?;
    let us: Jid = skipped.to.as_deref()?.parse().ok()?;
    let error = StanzaError::new(
        ErrorType::Modify,
        DefinedCondition::PolicyViolation,
        "en",
        skipped.reason(),
    );
    Some(match skipped.name.as_str() {
        "message" => {
            let mut m = Message::new_with_type(MessageType::Error, Some(sender));
            m.from = Some(us);
            m.id = skipped.id.clone().map(Id);
            m.payloads.push(error.into());
            m.into()
        }
        "presence" => {
            let mut p = Presence::new(PresenceType::Error);
            p.from = Some(us);
            p.to = Some(sender);
            p.id = skipped.id.clone();
            p.payloads.push(error.into());
            p.into()
        }
        "iq" if matches!(skipped.kind.as_deref(), Some("get" | "set")) => Iq::Error {
            from: Some(us),
            to: Some(sender),
            id: skipped.id.clone()?,
            error,
            payload: None,
        }
        .into(),
        _ => return None,
    })
}

/// Most stanzas written between two flushes of the link.
const OUT_BATCH: usize = 64;
/// Most stanzas read and stored with one flush of the store.
const IN_BATCH: usize = 64;

/// Writes `batch` and flushes once; answers each stanza's sender after the flush. Returns
/// why the link failed, if it did (every sender in the batch then hears the error).
async fn write_batch<S>(sink: &mut S, batch: Vec<Outgoing>) -> Option<String>
where
    S: futures::Sink<Stanza> + Unpin,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let mut acks = Vec::with_capacity(batch.len());
    let mut failed = None;
    for (stanza, ack) in batch {
        if failed.is_some() {
            acks.extend(ack);
            continue;
        }
        // What the stanza carries is made legal XML first, so that nothing a user writes
        // can fail the write of the link that every user shares.
        match xml_safe::stanza(stanza) {
            Ok(stanza) => {
                if let Err(e) = sink.feed(stanza).await {
                    failed = Some(Reason::from_error(e));
                }
                acks.extend(ack);
            }
            Err(e) => {
                warn!(error = %chain(&e), "stanza not written");
                if let Some(ack) = ack {
                    let _ = ack.send(Err(LinkError::Unwritable(e)));
                }
            }
        }
    }
    if failed.is_none()
        && let Err(e) = sink.flush().await
    {
        failed = Some(Reason::from_error(e));
    }
    for ack in acks {
        let _ = ack.send(match &failed {
            None => Ok(()),
            Some(e) => Err(LinkError::Down(e.clone())),
        });
    }
    failed.map(|e| format!("write failed: {e}"))
}

/// Reads and writes until the link drops; returns why.
async fn serve<C: ServerConnector>(
    component: Component<C>,
    guard: &Guard,
    inbound: &dyn Inbound,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    stop: &mut watch::Receiver<bool>,
) -> String {
    let (mut sink, mut stream) = component.split();
    loop {
        tokio::select! {
            () = guard.skipped() => {
                for skipped in guard.take_skipped() {
                    skipped.log("component");
                    let Some(answer) = limit_error(&skipped).and_then(|a| xml_safe::stanza(a).ok()) else {
                        continue;
                    };
                    if let Err(e) = sink.send(answer).await {
                        return format!("write failed: {e}");
                    }
                }
            }
            read = stream.next() => {
                const CLOSED: &str = "the server closed the stream, or broke the stream's rules (DTD, comment, unparsable XML)";
                let Some(stanza) = read else {
                    return CLOSED.into();
                };
                // Every stanza already read comes along: they are stored with one flush
                // (group commit), and their receipts go out after it.
                let mut batch = vec![stanza];
                let mut closed = false;
                while batch.len() < IN_BATCH {
                    match stream.next().now_or_never() {
                        Some(Some(next)) => batch.push(next),
                        Some(None) => {
                            closed = true;
                            break;
                        }
                        None => break,
                    }
                }
                let answers = inbound.stanzas(batch).await;
                if !answers.is_empty() {
                    let answers = answers.into_iter().map(|a| (a, None)).collect();
                    if let Some(why) = write_batch(&mut sink, answers).await {
                        return why;
                    }
                }
                if closed {
                    return CLOSED.into();
                }
            }
            out = outgoing.recv() => {
                let Some(first) = out else {
                    return "the bridge is stopping".into();
                };
                // What is queued already goes out with it: one flush for the batch, not
                // one per stanza; each sender hears after the flush.
                let mut batch = vec![first];
                while batch.len() < OUT_BATCH {
                    match outgoing.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                if let Some(why) = write_batch(&mut sink, batch).await {
                    return why;
                }
            }
            _ = stop.changed() => {
                let _ = sink.close().await;
                return "stopping".into();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> Stanza {
        let mut m =
            xmpp_parsers::message::Message::new(Some("alice@localhost".parse::<Jid>().unwrap()));
        m.bodies
            .insert(xmpp_parsers::message::Lang::default(), format!("m{n}"));
        m.into()
    }

    type Ack = oneshot::Receiver<Result<(), LinkError>>;

    fn batch(n: usize) -> (Vec<Outgoing>, Vec<Ack>) {
        (0..n)
            .map(|i| {
                let (tx, rx) = oneshot::channel();
                // Every other stanza has nobody waiting on it.
                ((message(i), (i % 2 == 0).then_some(tx)), rx)
            })
            .unzip()
    }

    #[tokio::test]
    async fn a_batch_is_written_in_order_and_every_sender_hears() {
        let (mut sink, mut written) = futures::channel::mpsc::unbounded::<Stanza>();
        let (out, acks) = batch(5);
        assert_eq!(write_batch(&mut sink, out).await, None);
        drop(sink);
        let mut bodies = Vec::new();
        while let Some(Stanza::Message(m)) = written.next().await {
            bodies.extend(m.bodies.into_values());
        }
        assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
        for (i, ack) in acks.into_iter().enumerate() {
            match ack.await {
                Ok(r) => assert!(r.is_ok(), "stanza {i}: {r:?}"),
                Err(_) => assert!(i % 2 == 1, "stanza {i} had a sender who never heard"),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_write_is_told_to_every_sender_in_the_batch() {
        let (mut sink, written) = futures::channel::mpsc::unbounded::<Stanza>();
        drop(written);
        let (out, acks) = batch(4);
        let why = write_batch(&mut sink, out).await.expect("the write fails");
        assert!(why.starts_with("write failed"), "{why}");
        for (i, ack) in acks.into_iter().enumerate() {
            if i % 2 == 0 {
                assert!(ack.await.unwrap().is_err(), "stanza {i}");
            }
        }
    }

    #[tokio::test]
    async fn a_write_failure_is_the_links_outage_and_its_cause_is_kept() {
        let (mut sink, written) = futures::channel::mpsc::unbounded::<Stanza>();
        drop(written);
        let (out, acks) = batch(1);
        write_batch(&mut sink, out).await.expect("the write fails");
        let e = acks.into_iter().next().unwrap().await.unwrap().unwrap_err();
        assert!(std::error::Error::source(&e).is_some(), "{e:?}");
        let e = NetworkError::from(e);
        assert_eq!(e.retry(), crate::error::Retry::Outage, "{e}");
        // A stanza that cannot be written at all is that item's failure, not the link's.
        let unwritable = xml_safe::Unwritable::from(Reason::new("bad"));
        let e = NetworkError::from(LinkError::Unwritable(unwritable));
        assert_eq!(e.retry(), crate::error::Retry::Never, "{e}");
    }

    fn skipped(name: &str, kind: Option<&str>) -> Skipped {
        Skipped {
            name: name.into(),
            from: Some("alice@localhost/phone".into()),
            to: Some("bob@matrix.localhost".into()),
            id: Some("m1".into()),
            kind: kind.map(str::to_owned),
            broken: super::super::limits::Broken::Size,
        }
    }

    #[test]
    fn a_skipped_stanza_is_answered_with_a_policy_violation_to_its_sender() {
        for (name, kind) in [
            ("message", Some("chat")),
            ("message", None),
            ("presence", None),
            ("presence", Some("subscribe")),
            ("iq", Some("get")),
            ("iq", Some("set")),
        ] {
            let answer = limit_error(&skipped(name, kind)).expect(name);
            let el = xmpp_parsers::minidom::Element::from(answer);
            assert_eq!(el.name(), name);
            assert_eq!(el.attr("type"), Some("error"));
            assert_eq!(el.attr("to"), Some("alice@localhost/phone"));
            assert_eq!(el.attr("from"), Some("bob@matrix.localhost"));
            assert_eq!(el.attr("id"), Some("m1"));
            let error = el
                .children()
                .find(|c| c.name() == "error")
                .expect("an error child");
            assert_eq!(error.attr("type"), Some("modify"));
            assert!(error.children().any(|c| c.name() == "policy-violation"));
            assert!(error.children().any(|c| c.name() == "text"));
        }
    }

    #[test]
    fn no_answer_to_errors_results_unknown_elements_or_unreadable_addresses() {
        assert!(limit_error(&skipped("message", Some("error"))).is_none());
        assert!(limit_error(&skipped("presence", Some("error"))).is_none());
        assert!(limit_error(&skipped("iq", Some("error"))).is_none());
        assert!(limit_error(&skipped("iq", Some("result"))).is_none());
        assert!(limit_error(&skipped("db:verify", None)).is_none());
        let mut s = skipped("message", None);
        s.from = None;
        assert!(limit_error(&s).is_none());
        let mut s = skipped("message", None);
        s.from = Some("not a jid@@".into());
        assert!(limit_error(&s).is_none());
        let mut s = skipped("message", None);
        s.to = None;
        assert!(limit_error(&s).is_none());
    }

    #[test]
    fn reconnects_back_off_from_a_second_to_a_minute() {
        let mut reconnect = RECONNECT.start();
        for attempt in 0..20 {
            let d = reconnect.next_delay().expect("never gives up");
            let base = 2f64.powi(attempt.min(6)).min(60.0);
            assert!(
                d.as_secs_f64() >= base * 0.75 - 1e-9
                    && d.as_secs_f64() <= (base * 1.25).min(60.0) + 1e-9,
                "{attempt}: {d:?}"
            );
        }
    }
}
