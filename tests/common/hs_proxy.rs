//! A proxy between the bridge and the real Synapse that can make the homeserver fail: every
//! request goes on to Synapse unchanged, except, while failing is on, the event sends
//! (`PUT …/send/…`), which get `502 Bad Gateway` as from a load balancer whose homeserver is
//! down. The bridge's config points at the proxy (`homeserver.url`); Synapse still pushes
//! transactions to the bridge directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

struct Shared {
    synapse: String,
    http: reqwest::Client,
    failing: AtomicBool,
    refused: AtomicUsize,
}

/// The proxy; it stops when dropped.
pub struct HomeserverProxy {
    /// `http://127.0.0.1:{port}`, for the bridge's `homeserver.url`.
    pub url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl HomeserverProxy {
    /// A proxy to `synapse` (its base URL) on a free port of 127.0.0.1, passing everything.
    pub async fn start(synapse: &str) -> HomeserverProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the homeserver proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let shared = Arc::new(Shared {
            synapse: synapse.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            failing: AtomicBool::new(false),
            refused: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HomeserverProxy {
            url,
            shared,
            server,
        }
    }

    /// Turns the failing of event sends on or off.
    pub fn fail_sends(&self, on: bool) {
        self.shared.failing.store(on, Ordering::SeqCst);
    }

    /// Event sends answered with 502 so far.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` event sends were answered with 502.
    pub async fn wait_refused(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.refused() < count {
            assert!(
                Instant::now() < deadline,
                "the bridge made {} event sends through the failing proxy within {timeout:?}, not {count}",
                self.refused()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for HomeserverProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if shared.failing.load(Ordering::SeqCst) && method == Method::PUT && path.contains("/send/") {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::BAD_GATEWAY,
            [("content-type", "application/json")],
            r#"{"errcode":"M_UNKNOWN","error":"the homeserver is down"}"#,
        )
            .into_response();
    }
    let mut request = shared
        .http
        .request(method, format!("{}{path}", shared.synapse))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let kind = answer.headers().get("content-type").cloned();
            let body = answer.bytes().await.unwrap_or_default();
            let mut response = (status, body).into_response();
            if let Some(kind) = kind {
                response.headers_mut().insert("content-type", kind);
            }
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response(),
    }
}
