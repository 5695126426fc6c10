//! The SIP endpoint: UDP, TCP and TLS listeners, and requests out through the proxy (the
//! transaction layer). Dialogs are kept by hand in `dialog.rs`; header values are read and
//! written in `headers.rs`.
//!
//! Every request leaves through the configured proxy, in-dialog ones included: the proxy
//! routes on the Request-URI and Route headers. That is the outbound-proxy model of
//! RFC 3261 §8.1.2 and what enterprise proxies expect of a gateway.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rsipstack::EndpointBuilder;
use rsipstack::dialog::authenticate::{Credential, handle_client_authenticate};
use rsipstack::sip::{self, Header, Method, SipMessage, StatusCode, StatusCodeKind, Uri};
use rsipstack::transaction::endpoint::{EndpointInnerRef, EndpointOption, TargetLocator};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transaction::{TransactionReceiver, make_tag};
use rsipstack::transport::tls::{TlsConfig, TlsListenerConnection};
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipAddr, TcpListenerConnection, TransportLayer};
use tokio_util::sync::CancellationToken;

use super::{SipTlsConfig, SipTransport};
use crate::error::Reason;

/// The methods the bridge accepts.
pub const ALLOW: &str = "MESSAGE, SUBSCRIBE, NOTIFY, OPTIONS";

/// Sends every request without an explicit destination to the proxy.
struct ViaProxy(SipAddr);

#[async_trait::async_trait]
impl TargetLocator for ViaProxy {
    async fn locate(&self, _uri: &Uri) -> rsipstack::Result<SipAddr> {
        Ok(self.0.clone())
    }
}

/// The header in which the endpoint records where a request really came from (the transport
/// source address), for the trusted-source check. A header of that name that arrives from
/// the network is removed first, so it cannot be forged.
pub const SOURCE_HEADER: &str = "X-Isthmus-Source";

/// Records the transport source of every received request in [`SOURCE_HEADER`].
struct SourceRecorder;

impl rsipstack::transaction::endpoint::MessageInspector for SourceRecorder {
    fn before_send(&self, msg: SipMessage, _dest: Option<&SipAddr>) -> SipMessage {
        msg
    }

    fn after_received(&self, msg: SipMessage, from: Option<&SipAddr>) -> SipMessage {
        let SipMessage::Request(mut req) = msg else {
            return msg;
        };
        req.headers
            .retain(|h| !h.name().eq_ignore_ascii_case(SOURCE_HEADER));
        if let Some(from) = from {
            let host = from.addr.host.to_string();
            req.headers.push(Header::Other(SOURCE_HEADER.into(), host));
        }
        SipMessage::Request(req)
    }
}

/// Why a request got no final answer from the network.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The request could not be built from what was given.
    #[error("invalid request: {0}")]
    Invalid(#[source] Reason),
    /// The transport failed (connection refused, socket error).
    #[error("transport failure: {0}")]
    Transport(#[source] Reason),
    /// The endpoint stopped before an answer came: its timers and listeners are gone, so
    /// none would ever come. The request may or may not have reached its target.
    #[error("the SIP endpoint stopped before an answer came")]
    Stopped,
}

/// Why the endpoint did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound (the port is in use, or not ours to take).
    #[error("cannot bind {transport} {addr}: {source}")]
    Bind {
        /// `UDP`, `TCP` or `TLS`.
        transport: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: Reason,
    },
    /// A certificate or key file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS listener could not be set up with the configured files.
    #[error("cannot set up TLS on {addr}: {source}")]
    Tls {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: Reason,
    },
    /// TLS was asked for without its files.
    #[error("transport: tls needs networks.sip.tls")]
    NoTls,
    /// The SIP stack refused to start.
    #[error("SIP endpoint: {0}")]
    Stack(#[source] Reason),
}

/// The final answer to a request.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub code: u16,
    /// Reason phrase (or the status code's usual phrase).
    pub reason: String,
    /// The response.
    pub response: sip::Response,
}

/// A request to send.
pub struct Outgoing<'a> {
    /// Method.
    pub method: Method,
    /// Request-URI.
    pub uri: &'a str,
    /// From header value (with its tag).
    pub from: String,
    /// To header value (with the remote tag inside a dialog).
    pub to: String,
    /// Call-ID; a new one when `None`.
    pub call_id: Option<String>,
    /// CSeq number.
    pub cseq: u32,
    /// Further headers.
    pub headers: Vec<Header>,
    /// Body (Content-Length is set on sending).
    pub body: Vec<u8>,
    /// Credentials to answer a 401/407 challenge with, once.
    pub credential: Option<&'a Credential>,
    /// The proxy to send through, when not the configured one (a user's own account).
    pub proxy: Option<SocketAddr>,
}

impl<'a> Outgoing<'a> {
    /// An OPTIONS request to `uri` outside any dialog: is the other side there?
    pub fn options(uri: &'a str, from: String) -> Self {
        Self {
            method: Method::Options,
            uri,
            from,
            to: format!("<{uri}>"),
            call_id: None,
            cseq: 1,
            headers: Vec::new(),
            body: Vec::new(),
            credential: None,
            proxy: None,
        }
    }

    /// A `method` request inside `dialog`, numbered `cseq`: to its remote target, along its
    /// route set (the Route headers come first in `headers`), no body, no credential.
    pub fn in_dialog(dialog: &'a super::dialog::Dialog, method: Method, cseq: u32) -> Self {
        Self {
            method,
            uri: &dialog.remote_target,
            from: dialog.local_header(),
            to: dialog.remote_header(),
            call_id: Some(dialog.call_id.clone()),
            cseq,
            headers: dialog.route_headers(),
            body: Vec::new(),
            credential: None,
            proxy: None,
        }
    }
}

/// The bridge's SIP endpoint.
pub struct Endpoint {
    inner: EndpointInnerRef,
    proxy: SipAddr,
    listen: SocketAddr,
    transport: SipTransport,
    cancel: CancellationToken,
    counter: AtomicU64,
}

impl Endpoint {
    /// For unit tests: an endpoint over UDP on a free port of 127.0.0.1, sending through
    /// `proxy` (a socket the test reads).
    #[cfg(test)]
    pub(crate) async fn start_for_test(
        proxy: SocketAddr,
        tasks: &crate::tasks::Tasks,
    ) -> (Self, TransactionReceiver) {
        Self::start(
            "127.0.0.1:0".parse().expect("an address"),
            proxy,
            SipTransport::Udp,
            None,
            "isthmus-test",
            tasks,
        )
        .await
        .expect("start a test endpoint")
    }

    /// Binds TCP (and UDP when that is the proxy's transport) on `listen` and starts the
    /// endpoint's loop in `tasks`. Incoming requests come
    /// out of the returned receiver.
    pub async fn start(
        listen: SocketAddr,
        proxy: SocketAddr,
        transport: SipTransport,
        tls: Option<&SipTlsConfig>,
        user_agent: &str,
        tasks: &crate::tasks::Tasks,
    ) -> Result<(Self, TransactionReceiver), StartError> {
        let cancel = CancellationToken::new();
        let layer = TransportLayer::new(cancel.child_token());
        // UDP only when the proxy speaks UDP: over UDP a source address can be forged where
        // the network allows it, and the bridge trusts requests by their source.
        if transport == SipTransport::Udp {
            let udp = UdpConnection::create_connection(listen, None, Some(cancel.child_token()))
                .await
                .map_err(|e| StartError::Bind {
                    transport: "UDP",
                    addr: listen,
                    source: Reason::from_error(e),
                })?;
            layer.add_transport(udp.into());
        }
        match (transport, tls) {
            // TLS only: a plain listener beside it would let requests bypass it.
            (SipTransport::Tls, Some(tls)) => {
                // The stack binds the TLS listener later and only logs a failure: a port in
                // use must stop the start instead.
                drop(
                    std::net::TcpListener::bind(listen).map_err(|e| StartError::Bind {
                        transport: "TLS",
                        addr: listen,
                        source: Reason::from_error(e),
                    })?,
                );
                let read = |p: &std::path::Path| {
                    std::fs::read(p).map_err(|source| StartError::Read {
                        path: p.to_owned(),
                        source,
                    })
                };
                let config = TlsConfig {
                    cert: Some(read(&tls.cert_file)?),
                    key: Some(read(&tls.key_file)?),
                    ca_certs: Some(read(&tls.ca_file)?),
                    ..TlsConfig::default()
                };
                layer.set_tls_config(config.clone());
                let listener = TlsListenerConnection::new(listen, None, config)
                    .await
                    .map_err(|e| StartError::Tls {
                        addr: listen,
                        source: Reason::from_error(e),
                    })?;
                layer.add_transport(listener.into());
            }
            (SipTransport::Tls, None) => {
                return Err(StartError::NoTls);
            }
            _ => {
                let tcp = TcpListenerConnection::new(listen, None)
                    .await
                    .map_err(|e| StartError::Bind {
                        transport: "TCP",
                        addr: listen,
                        source: Reason::from_error(e),
                    })?;
                layer.add_transport(tcp.into());
            }
        }
        let proxy = SipAddr {
            r#type: Some(match transport {
                SipTransport::Udp => sip::Transport::Udp,
                SipTransport::Tcp => sip::Transport::Tcp,
                SipTransport::Tls => sip::Transport::Tls,
            }),
            addr: proxy.into(),
        };
        let option = EndpointOption {
            // Timer F: how long a request waits for its final answer (64 × T1 = 32 s by
            // default; a shorter wait tells a Matrix user sooner that a message is stuck).
            t1x64: Duration::from_secs(16),
            ..EndpointOption::default()
        };
        let endpoint = EndpointBuilder::new()
            .with_inspector(Box::new(SourceRecorder))
            .with_target_locator(Box::new(ViaProxy(proxy.clone())))
            .with_user_agent(user_agent)
            .with_transport_layer(layer)
            .with_cancel_token(cancel.clone())
            .with_option(option)
            .with_allows(vec![
                Method::Message,
                Method::Subscribe,
                Method::Notify,
                Method::Options,
            ])
            .build();
        let incoming = endpoint
            .incoming_transactions()
            .map_err(|e| StartError::Stack(Reason::from_error(e)))?;
        let inner = endpoint.inner.clone();
        // Ends when `stop` cancels the endpoint.
        tasks.spawn(async move { endpoint.serve().await });
        Ok((
            Self {
                inner,
                proxy,
                listen,
                transport,
                cancel,
                counter: AtomicU64::new(0),
            },
            incoming,
        ))
    }

    /// Stops the listeners and timers.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// The Contact URI for `user` at this endpoint.
    pub fn contact(&self, user: &str) -> String {
        let transport = match self.transport {
            SipTransport::Udp => "",
            SipTransport::Tcp => ";transport=tcp",
            SipTransport::Tls => ";transport=tls",
        };
        format!(
            "<sip:{}@{}{transport}>",
            super::ids::escape_user(user),
            self.listen
        )
    }

    /// A fresh tag.
    pub fn tag(&self) -> String {
        make_tag().to_string()
    }

    /// A fresh Call-ID.
    pub fn call_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}@isthmus", rsipstack::transaction::random_text(12))
    }

    /// Sends a request through the proxy and waits for its final answer; a 401/407 is
    /// answered once with the credentials when there are some.
    ///
    /// Ends with [`SendError::Stopped`] as soon as the endpoint stops: a stopped endpoint
    /// runs no timers and reads no answers, so the transaction would otherwise wait for ever
    /// (and a shutdown with it). Callers that owe the request keep that debt where a restart
    /// finds it.
    pub async fn send(&self, out: Outgoing<'_>) -> Result<Answer, SendError> {
        if self.cancel.is_cancelled() {
            return Err(SendError::Stopped);
        }
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(SendError::Stopped),
            answer = self.exchange(out) => answer,
        }
    }

    /// [`Endpoint::send`] while the endpoint runs. The transaction's `receive` is not
    /// cancel-safe; it is only dropped when the endpoint, and so the transaction, is gone.
    async fn exchange(&self, out: Outgoing<'_>) -> Result<Answer, SendError> {
        let uri = Uri::try_from(out.uri).map_err(|e| SendError::Invalid(Reason::from_error(e)))?;
        let proxy = match out.proxy {
            Some(addr) => SipAddr {
                r#type: self.proxy.r#type,
                addr: addr.into(),
            },
            None => self.proxy.clone(),
        };
        // Connecting (and the TLS handshake) comes before the transaction's own timers.
        let (conn, _) = tokio::time::timeout(
            Duration::from_secs(10),
            self.inner.transport_layer.lookup(&proxy, None),
        )
        .await
        .map_err(|_| SendError::Transport(format!("connecting to {proxy} timed out").into()))?
        .map_err(|e| SendError::Transport(Reason::from_error(e)))?;
        let via = self
            .inner
            .get_via(Some(conn.get_addr().clone()), None)
            .map_err(|e| SendError::Invalid(Reason::from_error(e)))?;
        let call_id = out.call_id.unwrap_or_else(|| self.call_id());
        let mut req = self.inner.make_request(
            out.method,
            uri.clone(),
            via,
            sip::typed::From::from(uri.clone()),
            sip::typed::To::from(uri),
            out.cseq,
            Some(call_id.into()),
        );
        req.headers.unique_push(Header::From(out.from.into()));
        req.headers.unique_push(Header::To(out.to.into()));
        req.headers.extend(out.headers);
        req.body = out.body;
        let key = TransactionKey::from_request(&req, TransactionRole::Client)
            .map_err(|e| SendError::Invalid(Reason::from_error(e)))?;
        let mut tx = Transaction::new_client(key, req, self.inner.clone(), None);
        tx.destination = Some(proxy);
        tx.send()
            .await
            .map_err(|e| SendError::Transport(Reason::from_error(e)))?;
        let mut challenged = false;
        while let Some(msg) = tx.receive().await {
            let SipMessage::Response(resp) = msg else {
                continue;
            };
            if resp.status_code.kind() == StatusCodeKind::Provisional {
                continue;
            }
            if matches!(
                resp.status_code,
                StatusCode::Unauthorized | StatusCode::ProxyAuthenticationRequired
            ) && !challenged
                && let Some(cred) = out.credential
            {
                challenged = true;
                tx = handle_client_authenticate(out.cseq + 1, &tx, resp, cred)
                    .await
                    .map_err(|e| SendError::Invalid(Reason::from_error(e)))?;
                tx.send()
                    .await
                    .map_err(|e| SendError::Transport(Reason::from_error(e)))?;
                continue;
            }
            let code = u16::from(resp.status_code.clone());
            let reason = resp.status_code.to_string();
            return Ok(Answer {
                code,
                reason,
                response: resp,
            });
        }
        Err(SendError::Transport(
            "the transaction ended without an answer".into(),
        ))
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn options(uri: &str) -> Outgoing<'_> {
        Outgoing::options(uri, "<sip:isthmus@gateway.test>;tag=t1".into())
    }

    #[tokio::test]
    async fn a_request_waiting_for_its_answer_ends_when_the_endpoint_stops() {
        // A proxy that reads and never answers.
        let proxy = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let tasks = crate::tasks::Tasks::new();
        let (ep, _incoming) = Endpoint::start_for_test(proxy_addr, &tasks).await;
        let ep = Arc::new(ep);
        let uri = format!("sip:{proxy_addr}");
        let sending = tokio::spawn({
            let (ep, uri) = (Arc::clone(&ep), uri.clone());
            async move { ep.send(options(&uri)).await }
        });
        // The request is out: its transaction waits for an answer.
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), proxy.recv_from(&mut buf))
            .await
            .expect("the request reaches the proxy")
            .unwrap();
        assert!(buf[..n].starts_with(b"OPTIONS "));
        ep.stop();
        let ended = tokio::time::timeout(Duration::from_secs(2), sending)
            .await
            .expect("the request still waits after the endpoint stopped")
            .unwrap();
        assert!(matches!(ended, Err(SendError::Stopped)), "{ended:?}");
        // And one sent after the stop does not wait either.
        let late = tokio::time::timeout(Duration::from_secs(2), ep.send(options(&uri)))
            .await
            .expect("a request after the stop waits");
        assert!(matches!(late, Err(SendError::Stopped)), "{late:?}");
        assert_eq!(tasks.shutdown(Duration::from_secs(2)).await, Ok(()));
    }
}
