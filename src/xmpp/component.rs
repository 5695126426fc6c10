//! The component link (XEP-0114): connect, authenticate with the shared secret, read and
//! write stanzas, and reconnect with jittered exponential backoff when the link drops or the
//! server refuses a second session while the old one still looks alive.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_xmpp::Component;
use tokio_xmpp::connect::ServerConnector;
use tokio_xmpp::parsers::jid::Jid;
use tokio_xmpp::xmlstream::{PendingFeaturesRecv, StreamHeader, Timeouts, initiate_stream};
use tracing::{debug, error, info, warn};
use xmpp_parsers::stanza::Stanza;

use super::limits::{Guard, Limited};
use super::xml_safe;
use crate::network::BridgeState;

/// A stanza to write, and who waits to know it was written.
pub(super) type Outgoing = (Stanza, Option<oneshot::Sender<Result<(), String>>>);

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
    /// The link state changed.
    async fn state(&self, state: BridgeState, detail: Option<String>);
}

/// Delay before reconnect attempt `n` (0-based): 1 s doubling to 60 s, with ±25 % jitter.
pub(super) fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(60));
    let jitter = rand::rng().random_range(0.75..1.25);
    base.mul_f64(jitter)
}

/// Runs the link until `stop` turns true.
pub(super) async fn run(
    cfg: LinkConfig,
    inbound: Arc<dyn Inbound>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    mut stop: watch::Receiver<bool>,
) {
    let mut attempt = 0u32;
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
                attempt = 0;
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
            }
            Err(tokio_xmpp::Error::Auth(e)) => {
                error!(
                    error = %e,
                    "the XMPP server refused the component secret (networks.xmpp.component.secret) or the domain (networks.xmpp.component.domain); fix the config or the server's Component entry"
                );
                inbound
                    .state(
                        BridgeState::BadCredentials,
                        Some("the XMPP server refused the component secret".into()),
                    )
                    .await;
                attempt = attempt.max(5);
            }
            Err(e) => {
                warn!(error = %e, attempt, "XMPP component link failed; retrying");
                inbound
                    .state(BridgeState::TransientDisconnect, Some(e.to_string()))
                    .await;
            }
        }
        // Answer whoever waits on a stanza while the link is down.
        while let Ok((_, ack)) = outgoing.try_recv() {
            if let Some(ack) = ack {
                let _ = ack.send(Err("the XMPP link is down".into()));
            }
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
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
            read = stream.next() => {
                let Some(stanza) = read else {
                    return "the server closed the stream, or sent something over the limits or unparsable".into();
                };
                guard.stanza_done();
                for answer in inbound.stanza(stanza).await {
                    let Ok(answer) = xml_safe::stanza(answer) else { continue };
                    if let Err(e) = sink.send(answer).await {
                        return format!("write failed: {e}");
                    }
                }
            }
            out = outgoing.recv() => {
                let Some((stanza, ack)) = out else {
                    return "the bridge is stopping".into();
                };
                // What the stanza carries is made legal XML first, so that nothing a user
                // writes can fail the write of the link that every user shares.
                let stanza = match xml_safe::stanza(stanza) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "stanza not written");
                        if let Some(ack) = ack {
                            let _ = ack.send(Err(e));
                        }
                        continue;
                    }
                };
                let result = sink.send(stanza).await;
                let failed = result.as_ref().err().map(|e| e.to_string());
                if let Some(ack) = ack {
                    let _ = ack.send(result.map_err(|e| e.to_string()));
                }
                if let Some(e) = failed {
                    return format!("write failed: {e}");
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

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for attempt in 0..20 {
            let d = backoff(attempt);
            let base = 2f64.powi(attempt.min(6) as i32).min(60.0);
            assert!(
                d.as_secs_f64() >= base * 0.75 - 1e-9 && d.as_secs_f64() <= base * 1.25 + 1e-9,
                "{attempt}: {d:?}"
            );
        }
    }
}
