//! The SIP endpoint: UDP and TCP listeners, requests out through the proxy, and dialogs kept
//! by hand (small, serialisable, so presence subscriptions survive a restart).
//!
//! Every request leaves through the configured proxy, in-dialog ones included: the proxy
//! routes on the Request-URI and Route headers. That is the outbound-proxy model of
//! RFC 3261 §8.1.2 and what enterprise proxies expect of a gateway.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rsipstack::EndpointBuilder;
use rsipstack::dialog::authenticate::{Credential, handle_client_authenticate};
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{self, Header, Method, SipMessage, StatusCode, StatusCodeKind, Uri};
use rsipstack::transaction::endpoint::{EndpointInnerRef, EndpointOption, TargetLocator};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transaction::{TransactionReceiver, make_tag};
use rsipstack::transport::tls::{TlsConfig, TlsListenerConnection};
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipAddr, TcpListenerConnection, TransportLayer};
use serde::{Deserialize, Serialize};
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
    pub async fn send(&self, out: Outgoing<'_>) -> Result<Answer, SendError> {
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

/// One side of a SIP dialog, kept by hand: enough to send in-dialog requests and to match
/// incoming ones, and serialisable so it survives a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our URI (From of our requests).
    pub local_uri: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's URI (To of our requests).
    pub remote_uri: String,
    /// The peer's tag; empty until the dialog is confirmed.
    pub remote_tag: String,
    /// Where in-dialog requests go (the peer's Contact).
    pub remote_target: String,
    /// Route set, in the order of the Route headers to send.
    pub routes: Vec<String>,
    /// Our last CSeq.
    pub cseq: u32,
    /// When the subscription ends, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// The lifetime the other side granted, in seconds (0 until known).
    #[serde(default)]
    pub granted_s: u64,
}

impl Dialog {
    /// From header value for our requests.
    pub fn local_header(&self) -> String {
        format!("<{}>;tag={}", self.local_uri, self.local_tag)
    }

    /// To header value for our requests.
    pub fn remote_header(&self) -> String {
        if self.remote_tag.is_empty() {
            format!("<{}>", self.remote_uri)
        } else {
            format!("<{}>;tag={}", self.remote_uri, self.remote_tag)
        }
    }

    /// The next CSeq.
    pub fn next_cseq(&mut self) -> u32 {
        self.cseq += 1;
        self.cseq
    }

    /// Route headers for an in-dialog request.
    pub fn route_headers(&self) -> Vec<Header> {
        self.routes
            .iter()
            .map(|r| Header::Route(format!("<{r}>").into()))
            .collect()
    }
}

/// A name-addr or addr-spec header value, split: display name, URI, and the `tag` param.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted.
    pub display: Option<String>,
    /// The URI.
    pub uri: String,
    /// The tag parameter.
    pub tag: Option<String>,
}

/// Parses a From/To/Contact/Record-Route value. The display name may be a quoted string
/// holding `<`, `>`, `,` and escaped quotes (RFC 3261 §25.1); the URI is what the first `<`
/// outside it opens.
pub fn name_addr(value: &str) -> NameAddr {
    let value = value.trim();
    let open = outside_quotes(value)
        .find(|&(_, c)| c == '<')
        .map(|(i, _)| i);
    let close = open.and_then(|a| value[a..].find('>').map(|b| a + b));
    let (display, uri, params) = match (open, close) {
        (Some(a), Some(b)) => {
            let display = unquote(value[..a].trim());
            (
                (!display.is_empty()).then_some(display),
                value[a + 1..b].trim().to_owned(),
                &value[b + 1..],
            )
        }
        _ => {
            let (uri, params) = value.split_once(';').unwrap_or((value, ""));
            (None, uri.trim().to_owned(), params)
        }
    };
    let tag = split_outside_quotes(params, ';')
        .into_iter()
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("tag"))
        .map(|(_, v)| v.trim().to_owned());
    NameAddr { display, uri, tag }
}

/// `value` cut at each `sep` that is not inside a quoted string.
fn split_outside_quotes(value: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, c) in outside_quotes(value) {
        if c == sep {
            parts.push(&value[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&value[start..]);
    parts
}

/// The characters of `value` (with their positions) that are not inside a quoted string.
fn outside_quotes(value: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let (mut quoted, mut escaped) = (false, false);
    value.char_indices().filter(move |&(_, c)| {
        if escaped {
            escaped = false;
            return false;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => return !quoted,
        }
        false
    })
}

/// A display name without its quotes and quoted-pair escapes, trimmed.
fn unquote(display: &str) -> String {
    let inner = display
        .strip_prefix('"')
        .and_then(|d| d.strip_suffix('"'))
        .unwrap_or(display);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out.trim().to_owned()
}

/// Splits a header value holding several comma-separated name-addrs (commas inside `<>` or
/// quoted strings do not split).
pub fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in outside_quotes(value) {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(value[start..i].trim().to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = value[start..].trim();
    if !last.is_empty() {
        out.push(last.to_owned());
    }
    out
}

/// The compact forms of header names (RFC 3261 §7.3.3 and §20, RFC 6665 §8.2.1, RFC 3515,
/// RFC 3892, RFC 3841, RFC 4028, RFC 4474), with the full names they stand for.
const COMPACT: [(&str, &str); 20] = [
    ("a", "Accept-Contact"),
    ("b", "Referred-By"),
    ("c", "Content-Type"),
    ("d", "Request-Disposition"),
    ("e", "Content-Encoding"),
    ("f", "From"),
    ("i", "Call-ID"),
    ("j", "Reject-Contact"),
    ("k", "Supported"),
    ("l", "Content-Length"),
    ("m", "Contact"),
    ("n", "Identity-Info"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("s", "Subject"),
    ("t", "To"),
    ("u", "Allow-Events"),
    ("v", "Via"),
    ("x", "Session-Expires"),
    ("y", "Identity"),
];

/// Whether header name `found` (as a message spelled it) names header `name`: header names
/// are case-insensitive, and a compact form names its full header.
pub fn is_header(found: &str, name: &str) -> bool {
    let full = |n: &str| -> String {
        COMPACT
            .iter()
            .find(|(short, _)| n.eq_ignore_ascii_case(short))
            .map_or(n, |(_, full)| full)
            .to_ascii_lowercase()
    };
    found.eq_ignore_ascii_case(name) || full(found.trim()) == full(name)
}

/// The first value of header `name` in a message, trimmed (compact forms and any case).
pub fn header_value(headers: &sip::Headers, name: &str) -> Option<String> {
    headers
        .iter()
        .find(|h| is_header(h.name(), name))
        .map(|h| h.value().trim().to_owned())
}

/// Every value of header `name` in a message, in order (list values split; compact forms and
/// any case).
pub fn header_values(headers: &sip::Headers, name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|h| is_header(h.name(), name))
        .flat_map(|h| split_list(h.value()))
        .collect()
}

/// The request's Call-ID.
pub fn call_id(req: &sip::Request) -> String {
    req.call_id_header()
        .map(|c| c.value().to_owned())
        .unwrap_or_default()
}

/// A quoted display name for a From header: control characters dropped, at most 64
/// characters, `\\` and `"` escaped (RFC 3261 §25.1).
///
/// `<` and `>` become `‹` and `›`: they are legal in a quoted string, but the SIP stack under
/// the bridge, like others, takes a name-addr's URI from the first `<` even inside quotes, so
/// a From carrying one either fails to parse (`"Bob <boss>" <sip:...;transport=tcp>`: the
/// request gets no transaction and is never sent) or is read with the wrong URI.
pub fn quoted(display: &str) -> String {
    let mut out = String::with_capacity(display.len() + 2);
    out.push('"');
    for c in display.chars().filter(|c| !c.is_control()).take(64) {
        match c {
            '\\' | '"' => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push('‹'),
            '>' => out.push('›'),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn name_addrs() {
        let n = name_addr("\"Bob \\\"B\\\" Smith\" <sip:bob@x.org;transport=tcp>;tag=12ab");
        assert_eq!(n.display.as_deref(), Some("Bob \"B\" Smith"));
        assert_eq!(n.uri, "sip:bob@x.org;transport=tcp");
        assert_eq!(n.tag.as_deref(), Some("12ab"));
        let n = name_addr("sip:bob@x.org;tag=9");
        assert_eq!(n.uri, "sip:bob@x.org");
        assert_eq!(n.tag.as_deref(), Some("9"));
        assert_eq!(
            split_list("<sip:a@x;lr>, \"b, c\" <sip:b@y>,<sip:c@z>"),
            vec!["<sip:a@x;lr>", "\"b, c\" <sip:b@y>", "<sip:c@z>"]
        );
        assert_eq!(quoted("a\"b\\"), "\"a\\\"b\\\\\"");
    }

    #[test]
    fn quoted_display_names_may_hold_angle_brackets_and_escapes() {
        // Found by the fuzz target `sip_headers`: the URI was taken from a `<` inside the
        // quoted display name.
        let n = name_addr("\"Bob <boss>, \\\"B\\\"\" <sip:bob@x.org>;tag=1");
        assert_eq!(n.uri, "sip:bob@x.org");
        assert_eq!(n.display.as_deref(), Some("Bob <boss>, \"B\""));
        assert_eq!(n.tag.as_deref(), Some("1"));
        let n = name_addr(&format!("{} <sip:a@b>", quoted("a\\b <c>")));
        assert_eq!(n.display.as_deref(), Some("a\\b ‹c›"));
        assert_eq!(n.uri, "sip:a@b");
        assert_eq!(
            split_list("\"x\\\", <y>\" <sip:a@b>, <sip:c@d>"),
            vec!["\"x\\\", <y>\" <sip:a@b>", "<sip:c@d>"]
        );
    }

    #[test]
    fn params_are_split_outside_quoted_strings() {
        let n = name_addr("<sip:a@b>;x=\"a;tag=evil\" ; TAG = 7");
        assert_eq!(n.tag.as_deref(), Some("7"));
        let n = name_addr("\"a;tag=1\" <sip:a@b>");
        assert_eq!(n.tag, None);
        assert_eq!(n.display.as_deref(), Some("a;tag=1"));
    }

    /// A request as a peer writes it, with the given From and extra header lines.
    fn request(from: &str, extra: &str) -> sip::Request {
        let raw = format!(
            "MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: {from}\r\n\
             To: <sip:b@x>\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match SipMessage::try_from(raw.as_str()) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("{raw:?} did not parse: {other:?}"),
        }
    }

    #[test]
    fn compact_and_any_case_header_names() {
        let raw = "SUBSCRIBE sip:b@x SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
                   f: \"A\" <sip:a@x>;tag=9\r\nt: <sip:b@x>\r\ni: c1\r\nCSeq: 1 SUBSCRIBE\r\n\
                   m: <sip:a@10.0.0.1>, <sip:a@10.0.0.2>\r\nm: <sip:a@10.0.0.3>\r\no: presence\r\n\
                   u: presence, message-summary\r\nrecord-ROUTE: <sip:p;lr>\r\nc: application/pidf+xml\r\n\
                   l: 0\r\n\r\n";
        let Ok(SipMessage::Request(req)) = SipMessage::try_from(raw) else {
            panic!("compact forms did not parse");
        };
        assert_eq!(
            header_values(&req.headers, "Contact"),
            vec!["<sip:a@10.0.0.1>", "<sip:a@10.0.0.2>", "<sip:a@10.0.0.3>"]
        );
        assert_eq!(
            header_value(&req.headers, "event").as_deref(),
            Some("presence")
        );
        assert_eq!(
            header_value(&req.headers, "Allow-Events").as_deref(),
            Some("presence, message-summary")
        );
        assert_eq!(
            header_values(&req.headers, "Record-Route"),
            vec!["<sip:p;lr>"]
        );
        assert_eq!(
            header_value(&req.headers, "CONTENT-TYPE").as_deref(),
            Some("application/pidf+xml")
        );
        assert_eq!(call_id(&req), "c1");
        let from = name_addr(req.from_header().unwrap().value());
        assert_eq!(
            (from.display.as_deref(), from.tag.as_deref()),
            (Some("A"), Some("9"))
        );
        for (short, full) in COMPACT {
            assert!(is_header(short, full) && is_header(&short.to_uppercase(), full));
            assert!(is_header(full, short) && is_header(&full.to_uppercase(), full));
        }
        assert!(!is_header("m", "To") && !is_header("Contact", "Content-Type"));
    }

    proptest::proptest! {
        /// Any display name the bridge writes in a From header survives the SIP stack: the
        /// request parses, gets its transaction key, and reads back as the same name, URI and
        /// tag (controls dropped, 64 characters, angle brackets as their lookalikes).
        #[test]
        fn written_display_names_read_back(
            display in proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(vec!["\"", "\\", "<", ">", ";", ",", "tag=x", " ", "\\\"", "é", "😀"])
                        .prop_map(str::to_owned),
                    "\\PC{0,4}",
                    any::<char>().prop_map(String::from),
                ],
                0..12,
            ).prop_map(|v| v.concat()),
        ) {
            let from = format!("{} <sip:gw@example.org;transport=tcp>;tag=t1", quoted(&display));
            let req = request(&from, "");
            let key = rsipstack::transaction::key::TransactionKey::from_request(
                &req,
                rsipstack::transaction::key::TransactionRole::Server,
            );
            proptest::prop_assert!(key.is_ok(), "{from:?}: {key:?}");
            let read = name_addr(req.from_header().unwrap().value());
            let expected: String = display
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .map(|c| match c {
                    '<' => '‹',
                    '>' => '›',
                    c => c,
                })
                .collect();
            let expected = expected.trim();
            proptest::prop_assert_eq!(read.display.as_deref(), (!expected.is_empty()).then_some(expected));
            proptest::prop_assert_eq!(read.uri, "sip:gw@example.org;transport=tcp");
            proptest::prop_assert_eq!(read.tag.as_deref(), Some("t1"));
        }
    }

    #[test]
    fn dialog_headers() {
        let mut d = Dialog {
            call_id: "c".into(),
            local_uri: "sip:a@gw".into(),
            local_tag: "1".into(),
            remote_uri: "sip:b@x".into(),
            remote_tag: String::new(),
            remote_target: "sip:b@1.2.3.4".into(),
            routes: vec!["sip:proxy;lr".into()],
            cseq: 1,
            expires_at_ms: 0,
            granted_s: 0,
        };
        assert_eq!(d.remote_header(), "<sip:b@x>");
        d.remote_tag = "2".into();
        assert_eq!(d.remote_header(), "<sip:b@x>;tag=2");
        assert_eq!(d.local_header(), "<sip:a@gw>;tag=1");
        assert_eq!(d.next_cseq(), 2);
        assert_eq!(d.route_headers().len(), 1);
    }
}
