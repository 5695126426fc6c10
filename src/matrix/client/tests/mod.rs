//! Tests of the client against a raw-HTTP stand-in homeserver on 127.0.0.1:0: the stand-in
//! and helpers here, the tests by topic in `send.rs` (the send path, retries, errors) and
//! `rooms.rs` (profiles, rooms, aliases, versions).

use super::send::{api_error, classify, truncate};
use super::*;
use crate::matrix::retry::Attempt;
use ruma::exports::http;
use ruma::{EventId, OwnedRoomId, RoomId};
use serde_json::Value as JsonValue;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod rooms;
mod send;

/// One request as the mock homeserver saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query, exactly as sent.
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> JsonValue {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

/// A scripted answer: status, extra headers, body.
type Script = (u16, Vec<(&'static str, String)>, String);

fn reply(status: u16, body: JsonValue) -> Script {
    (status, Vec::new(), body.to_string())
}

/// A homeserver stand-in on 127.0.0.1:0 speaking raw HTTP/1.1: answers each request with
/// the next scripted reply (then `200 {}`), records what it saw, and tracks how many
/// requests were in flight at once.
struct MockHs {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    max_in_flight: Arc<AtomicUsize>,
}

impl MockHs {
    async fn start(script: Vec<Script>) -> Self {
        Self::start_with_delay(script, Duration::ZERO).await
    }

    async fn start_with_delay(script: Vec<Script>, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let (seen2, max2) = (seen.clone(), max_in_flight.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, script, in_flight, max) = (
                    seen2.clone(),
                    script.clone(),
                    in_flight.clone(),
                    max2.clone(),
                );
                tokio::spawn(async move {
                    serve(stream, seen, script, in_flight, max, delay).await;
                });
            }
        });
        Self {
            url,
            seen,
            max_in_flight,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<VecDeque<Script>>>,
    in_flight: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    delay: Duration,
) {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap().split(' ');
    let method = request_line.next().unwrap().to_owned();
    let target = request_line.next().unwrap().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    max.fetch_max(now, Ordering::SeqCst);
    seen.lock().unwrap().push(Seen {
        method,
        target,
        headers,
        body,
    });
    tokio::time::sleep(delay).await;
    let (status, extra, body) =
        script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or((200, Vec::new(), "{}".into()));
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in extra {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    in_flight.fetch_sub(1, Ordering::SeqCst);
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn config(url: &str) -> HsConfig {
    HsConfig::new(
        url,
        "localhost",
        "as_secret_token",
        "isthmus",
        "_bridge_bot",
    )
}

/// A client against `url` whose backoff starts at 1 ms, so retry tests run fast.
fn client(url: &str, max_retries: u32) -> HomeserverClient {
    let policy = RetryPolicy::with_first_delay(max_retries, Duration::from_millis(1));
    HomeserverClient::with_policy(config(url), None, policy, CancellationToken::new()).unwrap()
}

fn ghost() -> OwnedUserId {
    UserId::parse("@_x_alice:localhost").unwrap()
}

fn room() -> OwnedRoomId {
    RoomId::parse("!room:localhost").unwrap()
}
