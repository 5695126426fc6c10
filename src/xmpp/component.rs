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
pub(super) const IN_BATCH: usize = 64;

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
mod tests;
