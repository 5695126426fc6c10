//! The listener: a bounded accept loop around hyper, so that clients that open connections
//! and send nothing, or half a request, cannot use up the bridge's sockets.
//!
//! - A request's head must arrive within `request_header_timeout_secs`, counted from when the
//!   connection starts waiting for it (when it opens, or when the previous response was
//!   sent): the same timeout closes idle kept-alive connections.
//! - A request's body must arrive within `request_body_timeout_secs` of its head.
//! - At most `max_connections` connections are open. When all are taken, connections that
//!   have sent nothing for a second are closed, every other one is asked to close once idle
//!   (idle kept-alive ones close at once, busy ones after their response), and new
//!   connections wait in the listen backlog (served in arrival order) until one has closed,
//!   as a production server sheds its keep-alive connections under pressure. The
//!   homeserver, whose requests are short, then gets a slot within one header timeout at
//!   worst, and at once when the slots were held by silent sockets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

/// Bounds on the listener's connections.
#[derive(Clone, Copy, Debug)]
pub struct ListenerLimits {
    /// Time to receive a request's head (also the idle time of a kept-alive connection).
    pub header_timeout: Duration,
    /// Time to receive a request's body once its head arrived.
    pub body_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish
/// (at most 5 s) and closes the connections still open. Each connection runs as a
/// task in `tasks`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    tasks: crate::tasks::Tasks,
    shutdown: impl Future<Output = ()> + Send,
) {
    let router = router.layer(axum::middleware::from_fn(move |req, next| {
        body_deadline(req, next, limits.body_timeout)
    }));
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    // Each change asks every open connection to close once idle.
    let (shed, _) = watch::channel(0u64);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut last_full_warning: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                shed.send_modify(|n| *n += 1);
                if last_full_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    warn!(
                        max_connections = max,
                        "appservice listener full (appservice.max_connections); closing idle connections, new ones wait"
                    );
                    last_full_warning = Some(tokio::time::Instant::now());
                }
                // Asked again each second: silent connections too young to close now may
                // be closed next time.
                let mut again = tokio::time::interval(SILENT);
                loop {
                    tokio::select! {
                        slot = Arc::clone(&slots).acquire_owned() => break slot.expect("never closed"),
                        _ = again.tick() => shed.send_modify(|n| *n += 1),
                        () = &mut shutdown => return finish(&shed, &slots, max).await,
                    }
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    warn!(error = %crate::error::chain(&e), "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let opened = tokio::time::Instant::now();
        let heard = Arc::new(AtomicBool::new(false));
        let io = Heard {
            inner: tcp,
            heard: Arc::clone(&heard),
        };
        let conn =
            http.serve_connection(TokioIo::new(io), TowerToHyperService::new(router.clone()));
        let mut shed = shed.subscribe();
        tasks.spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    done = conn.as_mut() => {
                        if let Err(e) = done {
                            debug!(%peer, error = %crate::error::chain(&e), "appservice connection ended");
                        }
                        break;
                    }
                    changed = shed.changed() => {
                        if changed.is_err() {
                            // The listener stopped after giving open requests their time
                            // (`finish`): what is still open now is cut.
                            debug!(%peer, "closing a connection still open at the end of a shutdown");
                            break;
                        }
                        if !heard.load(Ordering::Relaxed) && opened.elapsed() >= SILENT {
                            debug!(%peer, "closing a silent connection: the listener is full");
                            break;
                        }
                        if !closing && heard.load(Ordering::Relaxed) {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
    finish(&shed, &slots, max).await;
}

/// Asks every connection to close once idle and waits (at most [`DRAIN`]) for them; those
/// still open are cut when the listener's task returns.
async fn finish(shed: &watch::Sender<u64>, slots: &Semaphore, max: usize) {
    shed.send_modify(|n| *n += 1);
    let drained = tokio::time::timeout(
        DRAIN,
        slots.acquire_many(u32::try_from(max).unwrap_or(u32::MAX)),
    )
    .await;
    if drained.is_err() {
        info!(
            drain_secs = DRAIN.as_secs(),
            "appservice connections still open after the drain; closing them"
        );
    }
}

/// How long a shutdown lets open requests finish: well inside the bridge's shutdown bound,
/// so that no connection outlives it.
const DRAIN: Duration = Duration::from_secs(5);

/// How long a connection may stay silent before it is closed to make room.
const SILENT: Duration = Duration::from_secs(1);

/// A socket that notes when its first byte arrived.
struct Heard {
    inner: tokio::net::TcpStream,
    heard: Arc<AtomicBool>,
}

impl AsyncRead for Heard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Heard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Fails the request's body when it has not fully arrived within `limit` of its head.
async fn body_deadline(req: Request, next: Next, limit: Duration) -> Response {
    let deadline = tokio::time::Instant::now() + limit;
    let (parts, body) = req.into_parts();
    let stream = futures::stream::unfold(Some(body.into_data_stream()), move |stream| async move {
        let mut stream = stream?;
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(stream))),
            Ok(None) => None,
            Err(_) => Some((
                Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request body not received in time (appservice.request_body_timeout_secs)",
                ))),
                None,
            )),
        }
    });
    next.run(Request::from_parts(parts, Body::from_stream(stream)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: ListenerLimits) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let router = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route(
                "/echo",
                axum::routing::put(|body: axum::body::Bytes| async move { body }),
            );
        let tasks = crate::tasks::Tasks::new();
        tokio::spawn(serve(
            listener,
            router,
            limits,
            tasks,
            std::future::pending(),
        ));
        addr
    }

    /// Reads until the server closes the socket; None when it stays open for `within`.
    async fn closed_within(sock: &mut TcpStream, within: Duration) -> Option<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .ok()?;
        Some(String::from_utf8_lossy(&got).into_owned())
    }

    async fn get_health(addr: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        closed_within(&mut s, Duration::from_secs(20))
            .await
            .expect("answered and closed")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn half_sent_requests_and_idle_connections_are_closed_after_the_timeouts() {
        let addr = start(ListenerLimits {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_connections: 4096,
        })
        .await;
        let mut socks = Vec::new();
        for i in 0..90 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            match i % 3 {
                0 => {}
                1 => s
                    .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .unwrap(),
                _ => s
                    .write_all(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
                    .await
                    .unwrap(),
            }
            socks.push(s);
        }
        let started = tokio::time::Instant::now();
        for s in &mut socks {
            let got = closed_within(s, Duration::from_secs(5))
                .await
                .expect("closed by a timeout");
            assert!(
                !got.contains("200 OK"),
                "half a request is not answered: {got}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(get_health(&addr).await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_request_gets_through_while_hundreds_of_silent_sockets_hold_the_listener() {
        let addr = start(ListenerLimits {
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 32,
        })
        .await;
        let mut silent = Vec::new();
        for _ in 0..200 {
            silent.push(TcpStream::connect(&addr).await.unwrap());
        }
        let started = tokio::time::Instant::now();
        let answer = get_health(&addr).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_full_listener_closes_idle_kept_alive_connections() {
        let addr = start(ListenerLimits {
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 16,
        })
        .await;
        // Sixteen kept-alive connections, each after one answered request.
        let mut kept = Vec::new();
        for _ in 0..16 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            kept.push(s);
        }
        let started = tokio::time::Instant::now();
        assert!(get_health(&addr).await.starts_with("HTTP/1.1 200"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
