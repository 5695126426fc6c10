//! Tests of the client against a raw-HTTP stand-in homeserver on 127.0.0.1:0.

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
    HomeserverClient::with_policy(config(url), None, policy).unwrap()
}

fn ghost() -> OwnedUserId {
    UserId::parse("@_x_alice:localhost").unwrap()
}

fn room() -> OwnedRoomId {
    RoomId::parse("!room:localhost").unwrap()
}

#[tokio::test]
async fn send_message_as_ghost_asserts_identity_and_massages_timestamp() {
    let hs = MockHs::start(vec![reply(200, json!({"event_id": "$ev1"}))]).await;
    let c = client(&hs.url, 0);
    let content = json!({"msgtype": "m.text", "body": "hi"});
    let id = c
        .send_message(
            Some(&ghost()),
            &room(),
            "m.room.message",
            "isthmus.42",
            &content,
            Some(1_700_000_000_000),
        )
        .await
        .unwrap();
    assert_eq!(id.as_str(), "$ev1");
    let seen = hs.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(
        seen[0].target,
        "/_matrix/client/v3/rooms/!room:localhost/send/m.room.message/isthmus.42\
         ?ts=1700000000000&user_id=%40_x_alice%3Alocalhost"
    );
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer as_secret_token")
    );
    assert_eq!(seen[0].json(), content);
}

#[tokio::test]
async fn bot_requests_carry_no_identity_assertion() {
    let hs = MockHs::start(vec![
        reply(200, json!({"user_id": "@_bridge_bot:localhost"})),
        reply(200, json!({"event_id": "$ev2"})),
    ])
    .await;
    let c = client(&hs.url, 0);
    assert_eq!(
        c.whoami(None).await.unwrap().as_str(),
        "@_bridge_bot:localhost"
    );
    // Path parameters are percent-encoded: a transaction ID cannot escape its segment.
    c.send_message(
        None,
        &room(),
        "m.room.message",
        "t/1?x",
        &json!({"body": "x"}),
        None,
    )
    .await
    .unwrap();
    let seen = hs.seen();
    assert_eq!(seen[0].target, "/_matrix/client/v3/account/whoami");
    assert_eq!(
        seen[1].target,
        "/_matrix/client/v3/rooms/!room:localhost/send/m.room.message/t%2F1%3Fx"
    );
}

#[tokio::test]
async fn rate_limit_is_retried_after_retry_after_ms_with_the_same_transaction() {
    let hs = MockHs::start(vec![
        reply(
            429,
            json!({"errcode": "M_LIMIT_EXCEEDED", "error": "slow down", "retry_after_ms": 150}),
        ),
        reply(200, json!({"event_id": "$ev3"})),
    ])
    .await;
    let c = client(&hs.url, 6);
    let started = Instant::now();
    let id = c
        .send_message(
            Some(&ghost()),
            &room(),
            "m.room.message",
            "stable",
            &json!({"body": "x"}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(id.as_str(), "$ev3");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    let seen = hs.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].target, seen[1].target,
        "a retry reuses the transaction ID"
    );
    assert_eq!(seen[0].body, seen[1].body);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let html = (502, Vec::new(), "<html>Bad Gateway</html>".to_owned());
    let hs = MockHs::start(vec![html.clone(), html.clone(), html]).await;
    let c = client(&hs.url, 2);
    let err = c.leave(None, &room()).await.unwrap_err();
    assert_eq!(hs.seen().len(), 3, "one try plus two retries");
    match err {
        MatrixError::Api {
            status: 502,
            errcode,
            message,
        } => {
            assert_eq!(errcode, "");
            assert!(message.contains("Bad Gateway"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let hs = MockHs::start(vec![reply(
        403,
        json!({"errcode": "M_FORBIDDEN", "error": "not in room"}),
    )])
    .await;
    let c = client(&hs.url, 6);
    let err = c
        .invite(
            Some(&ghost()),
            &room(),
            &UserId::parse("@bob:localhost").unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        MatrixError::Api {
            status: 403,
            errcode: "M_FORBIDDEN".into(),
            message: "not in room".into()
        }
    );
    let seen = hs.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].target,
        "/_matrix/client/v3/rooms/!room:localhost/invite?user_id=%40_x_alice%3Alocalhost"
    );
    assert_eq!(seen[0].json(), json!({"user_id": "@bob:localhost"}));
}

#[tokio::test]
async fn connection_errors_are_retried_then_reported_as_http() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client(&format!("http://127.0.0.1:{port}"), 2);
    match c.whoami(None).await {
        Err(MatrixError::Http(msg)) => {
            let msg = msg.to_string();
            assert!(!msg.contains("as_secret_token"));
            assert!(msg.to_lowercase().contains("connect"), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn register_ghost_treats_user_in_use_as_success() {
    let hs = MockHs::start(vec![
        reply(200, json!({"user_id": "@_x_alice:localhost"})),
        reply(400, json!({"errcode": "M_USER_IN_USE", "error": "taken"})),
        reply(400, json!({"errcode": "M_EXCLUSIVE", "error": "not yours"})),
    ])
    .await;
    let c = client(&hs.url, 0);
    c.register_ghost("_x_alice").await.unwrap();
    c.register_ghost("_x_alice").await.unwrap();
    assert_eq!(
        c.register_ghost("alice").await.unwrap_err().errcode(),
        Some("M_EXCLUSIVE")
    );
    let seen = hs.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/_matrix/client/v3/register");
    let body = seen[0].json();
    assert_eq!(body["type"], "m.login.application_service");
    assert_eq!(body["username"], "_x_alice");
    assert_eq!(body["inhibit_login"], true);
}

#[tokio::test]
async fn profile_reads_and_writes() {
    let hs = MockHs::start(vec![
        reply(200, json!({"displayname": "Alice", "avatar_url": ""})),
        reply(
            404,
            json!({"errcode": "M_UNKNOWN", "error": "No row found (profiles)"}),
        ),
        reply(200, json!({})),
        reply(200, json!({})),
        reply(200, json!({})),
    ])
    .await;
    let c = client(&hs.url, 0);
    let bob = UserId::parse("@bob:localhost").unwrap();
    assert_eq!(
        c.get_profile(&bob).await.unwrap(),
        (Some("Alice".into()), None)
    );
    assert_eq!(c.get_profile(&bob).await.unwrap(), (None, None));
    c.set_displayname(Some(&ghost()), "Alice (XMPP)")
        .await
        .unwrap();
    c.set_avatar_url(Some(&ghost()), Some("mxc://localhost/abc"))
        .await
        .unwrap();
    c.set_avatar_url(Some(&ghost()), None).await.unwrap();
    let seen = hs.seen();
    assert_eq!(seen[0].target, "/_matrix/client/v3/profile/@bob:localhost");
    // Profile lookups authenticate even though the spec does not require it.
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer as_secret_token")
    );
    assert_eq!(
        seen[2].target,
        "/_matrix/client/v3/profile/@_x_alice:localhost/displayname?user_id=%40_x_alice%3Alocalhost"
    );
    assert_eq!(seen[2].json(), json!({"displayname": "Alice (XMPP)"}));
    assert_eq!(seen[3].json(), json!({"avatar_url": "mxc://localhost/abc"}));
    assert_eq!(seen[4].json(), json!({"avatar_url": ""}));
}

#[tokio::test]
async fn create_room_sends_state_power_levels_and_invites() {
    let hs = MockHs::start(vec![
        reply(200, json!({"capabilities": {"m.room_versions": {"default": "10", "available": {"10": "stable"}}}})),
        reply(200, json!({"room_id": "!new:localhost"})),
        reply(200, json!({"room_id": "!new2:localhost"})),
    ])
    .await;
    let c = client(&hs.url, 0);
    let bob = UserId::parse("@bob:localhost").unwrap();
    let creation = RoomCreation {
        name: Some("Chat".into()),
        topic: None,
        alias_localpart: Some("_x_chat".into()),
        invite: vec![bob.clone()],
        is_direct: true,
        preset_private: true,
        initial_state: vec![(
            "m.bridge".into(),
            "isthmus://x".into(),
            json!({"protocol": {"id": "x"}}),
        )],
        power_level_users: vec![(bob, 100), (ghost(), 50)],
    };
    let id = c.create_room(Some(&ghost()), &creation).await.unwrap();
    assert_eq!(id.as_str(), "!new:localhost");
    // The default room version is read once.
    c.create_room(Some(&ghost()), &creation).await.unwrap();
    let seen = hs.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].target, "/_matrix/client/v3/capabilities");
    assert_eq!(
        seen[1].target,
        "/_matrix/client/v3/createRoom?user_id=%40_x_alice%3Alocalhost"
    );
    let body = seen[1].json();
    assert_eq!(body["name"], "Chat");
    assert!(body.get("topic").is_none());
    assert_eq!(body["room_alias_name"], "_x_chat");
    assert_eq!(body["invite"], json!(["@bob:localhost"]));
    assert_eq!(body["is_direct"], true);
    assert_eq!(body["preset"], "private_chat");
    assert_eq!(
        body["initial_state"],
        json!([{"type": "m.bridge", "state_key": "isthmus://x", "content": {"protocol": {"id": "x"}}}])
    );
    // The creator keeps 100 even when listed lower.
    assert_eq!(
        body["power_level_content_override"],
        json!({"users": {"@bob:localhost": 100, "@_x_alice:localhost": 100}})
    );
}

#[tokio::test]
async fn create_room_leaves_privileged_creators_out_of_power_levels() {
    let hs = MockHs::start(vec![
        reply(200, json!({"capabilities": {"m.room_versions": {"default": "12", "available": {"12": "stable"}}}})),
        reply(200, json!({"room_id": "!new:localhost"})),
        reply(200, json!({"room_id": "!plain:localhost"})),
    ])
    .await;
    let c = client(&hs.url, 0);
    let bob = UserId::parse("@bob:localhost").unwrap();
    let creation = RoomCreation {
        power_level_users: vec![(bob, 100), (ghost(), 50)],
        ..RoomCreation::default()
    };
    c.create_room(Some(&ghost()), &creation).await.unwrap();
    // Without power levels no capabilities lookup is needed.
    c.create_room(None, &RoomCreation::default()).await.unwrap();
    let seen = hs.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[1].json()["power_level_content_override"],
        json!({"users": {"@bob:localhost": 100}})
    );
    let plain = seen[2].json();
    assert!(plain.get("power_level_content_override").is_none());
    assert_eq!(plain["preset"], "public_chat");
}

#[tokio::test]
async fn room_calls_build_the_right_paths() {
    let hs = MockHs::start(vec![
        reply(200, json!({"room_id": "!room:localhost"})),
        reply(200, json!({"event_id": "$st"})),
        reply(200, json!({"event_id": "$red"})),
        reply(200, json!({"joined": {"@a:localhost": {}, "@_x_alice:localhost": {"display_name": "A"}}})),
        reply(200, json!({})),
        reply(200, json!({})),
        reply(200, json!({})),
        reply(200, json!({})),
        reply(200, json!({"type": "m.room.message", "event_id": "$e", "sender": "@a:localhost", "room_id": "!room:localhost", "origin_server_ts": 1, "content": {"body": "x"}})),
        reply(200, json!({"membership": "invite"})),
        reply(404, json!({"errcode": "M_NOT_FOUND", "error": "no state"})),
    ])
    .await;
    let c = client(&hs.url, 0);
    let g = ghost();
    let r = room();
    let ev = EventId::parse("$target").unwrap();
    let bob = UserId::parse("@bob:localhost").unwrap();
    assert_eq!(c.join(Some(&g), "#_x_chat:localhost").await.unwrap(), r);
    assert_eq!(
        c.send_state(None, &r, "m.room.topic", "", &json!({"topic": "t"}))
            .await
            .unwrap()
            .as_str(),
        "$st"
    );
    assert_eq!(
        c.redact(Some(&g), &r, &ev, "red1", Some("oops"))
            .await
            .unwrap()
            .as_str(),
        "$red"
    );
    let mut members = c.joined_members(None, &r).await.unwrap();
    members.sort();
    assert_eq!(
        members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        ["@_x_alice:localhost", "@a:localhost"]
    );
    c.set_typing(Some(&g), &r, true, 30_000).await.unwrap();
    c.send_read_receipt(Some(&g), &r, &ev).await.unwrap();
    c.set_presence(Some(&g), "unavailable", Some("away"))
        .await
        .unwrap();
    c.kick(None, &r, &bob, Some("bye")).await.unwrap();
    assert_eq!(
        c.get_event(None, &r, &ev).await.unwrap()["content"]["body"],
        "x"
    );
    assert_eq!(
        c.membership(None, &r, &bob).await.unwrap(),
        Some(Membership::Invite)
    );
    assert_eq!(c.membership(None, &r, &bob).await.unwrap(), None);

    let seen = hs.seen();
    let lines: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.target))
        .collect();
    let a = "user_id=%40_x_alice%3Alocalhost";
    assert_eq!(
        lines,
        [
            format!("POST /_matrix/client/v3/join/%23_x_chat:localhost?{a}"),
            "PUT /_matrix/client/v3/rooms/!room:localhost/state/m.room.topic/".to_owned(),
            format!("PUT /_matrix/client/v3/rooms/!room:localhost/redact/$target/red1?{a}"),
            "GET /_matrix/client/v3/rooms/!room:localhost/joined_members".to_owned(),
            format!("PUT /_matrix/client/v3/rooms/!room:localhost/typing/@_x_alice:localhost?{a}"),
            format!("POST /_matrix/client/v3/rooms/!room:localhost/receipt/m.read/$target?{a}"),
            format!("PUT /_matrix/client/v3/presence/@_x_alice:localhost/status?{a}"),
            "POST /_matrix/client/v3/rooms/!room:localhost/kick".to_owned(),
            "GET /_matrix/client/v3/rooms/!room:localhost/event/$target".to_owned(),
            "GET /_matrix/client/v3/rooms/!room:localhost/state/m.room.member/@bob:localhost"
                .to_owned(),
            "GET /_matrix/client/v3/rooms/!room:localhost/state/m.room.member/@bob:localhost"
                .to_owned(),
        ]
    );
    assert_eq!(seen[1].json(), json!({"topic": "t"}));
    assert_eq!(seen[2].json(), json!({"reason": "oops"}));
    assert_eq!(seen[4].json(), json!({"typing": true, "timeout": 30000}));
    assert_eq!(
        seen[6].json(),
        json!({"presence": "unavailable", "status_msg": "away"})
    );
    assert_eq!(
        seen[7].json(),
        json!({"user_id": "@bob:localhost", "reason": "bye"})
    );
}

#[tokio::test]
async fn aliases_ping_and_versions() {
    let hs = MockHs::start(vec![
        reply(
            200,
            json!({"versions": ["r0.6.1", "v1.1", "v1.12"], "unstable_features": {}}),
        ),
        reply(200, json!({})),
        reply(
            200,
            json!({"room_id": "!room:localhost", "servers": ["localhost"]}),
        ),
        reply(
            404,
            json!({"errcode": "M_NOT_FOUND", "error": "unknown alias"}),
        ),
        reply(200, json!({"duration_ms": 7})),
    ])
    .await;
    let c = client(&hs.url, 0);
    assert_eq!(c.versions().await.unwrap(), ["r0.6.1", "v1.1", "v1.12"]);
    c.create_alias("#_x_chat:localhost", &room()).await.unwrap();
    assert_eq!(
        c.resolve_alias("#_x_chat:localhost").await.unwrap(),
        Some(room())
    );
    assert_eq!(c.resolve_alias("#_x_gone:localhost").await.unwrap(), None);
    assert_eq!(
        c.ping_appservice("ping-1").await.unwrap(),
        Duration::from_millis(7)
    );
    assert!(matches!(
        c.resolve_alias("not an alias").await,
        Err(MatrixError::InvalidId(_))
    ));
    assert!(matches!(
        c.join(None, "bogus").await,
        Err(MatrixError::InvalidId(_))
    ));

    let seen = hs.seen();
    assert_eq!(seen[0].target, "/_matrix/client/versions");
    assert_eq!(seen[1].method, "PUT");
    assert_eq!(
        seen[1].target,
        "/_matrix/client/v3/directory/room/%23_x_chat:localhost"
    );
    assert_eq!(seen[1].json(), json!({"room_id": "!room:localhost"}));
    assert_eq!(
        seen[2].header("authorization"),
        Some("Bearer as_secret_token")
    );
    assert_eq!(seen[4].target, "/_matrix/client/v1/appservice/isthmus/ping");
    assert_eq!(seen[4].json(), json!({"transaction_id": "ping-1"}));
    assert_eq!(seen.len(), 5, "invalid IDs never reach the homeserver");
}

#[tokio::test]
async fn unknown_spec_versions_keep_the_default_paths() {
    let hs = MockHs::start(vec![
        reply(200, json!({"versions": ["v9.99"]})),
        reply(200, json!({"user_id": "@_bridge_bot:localhost"})),
    ])
    .await;
    let c = client(&hs.url, 0);
    c.versions().await.unwrap();
    c.whoami(None).await.unwrap();
    assert_eq!(hs.seen()[1].target, "/_matrix/client/v3/account/whoami");
}

#[tokio::test]
async fn concurrency_is_bounded_and_latency_recorded() {
    let hs = MockHs::start_with_delay(Vec::new(), Duration::from_millis(30)).await;
    let histogram =
        HistogramVec::new(prometheus::HistogramOpts::new("t", "t"), &["endpoint"]).unwrap();
    let mut cfg = config(&hs.url);
    cfg.max_concurrency = 2;
    let c = HomeserverClient::new(cfg, Some(histogram.clone())).unwrap();
    let calls = (0..6).map(|i| {
        let c = c.clone();
        tokio::spawn(async move {
            c.send_message(
                None,
                &room(),
                "m.room.message",
                &format!("t{i}"),
                &json!({}),
                None,
            )
            .await
        })
    });
    for call in calls.collect::<Vec<_>>() {
        // `{}` is not a valid send response; only the traffic matters here.
        let _ = call.await.unwrap();
    }
    assert_eq!(hs.seen().len(), 6);
    assert!(hs.max_in_flight.load(Ordering::SeqCst) <= 2);
    assert_eq!(histogram.with_label_values(&["send"]).get_sample_count(), 6);
}

#[tokio::test]
async fn undecodable_success_is_a_decode_error() {
    let hs = MockHs::start(vec![reply(200, json!({"nope": true}))]).await;
    let c = client(&hs.url, 3);
    assert!(matches!(c.whoami(None).await, Err(MatrixError::Decode(_))));
    assert_eq!(hs.seen().len(), 1, "decode errors are not retried");
}

#[test]
fn error_bodies_and_wait_hints() {
    let status = |s| http::StatusCode::from_u16(s).unwrap();
    let mut headers = http::HeaderMap::new();
    let body = br#"{"errcode":"M_LIMIT_EXCEEDED","error":"slow","retry_after_ms":1500}"#;
    let (err, hint) = api_error(status(429), &headers, body);
    assert_eq!(err.errcode(), Some("M_LIMIT_EXCEEDED"));
    assert_eq!(hint, Some(Duration::from_millis(1500)));

    headers.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("3"),
    );
    let (_, hint) = api_error(status(429), &headers, body);
    assert_eq!(
        hint,
        Some(Duration::from_secs(3)),
        "the header takes precedence"
    );
    let (err, hint) = api_error(status(503), &headers, b"");
    assert_eq!(hint, Some(Duration::from_secs(3)));
    assert_eq!(
        err,
        MatrixError::Api {
            status: 503,
            errcode: String::new(),
            message: "Service Unavailable".into()
        }
    );

    let (err, _) = api_error(
        status(400),
        &http::HeaderMap::new(),
        br#"{"errcode":"M_WEIRD"}"#,
    );
    assert_eq!(err.errcode(), Some("M_WEIRD"));
    let (err, _) = api_error(
        status(400),
        &http::HeaderMap::new(),
        br#"{"errcode":"ORG_CUSTOM","error":"x"}"#,
    );
    assert_eq!(err.errcode(), Some("ORG_CUSTOM"));

    assert!(matches!(
        classify(status(500), http::HeaderMap::new(), Vec::new()),
        Attempt::Retry { .. }
    ));
    assert!(matches!(
        classify(status(429), http::HeaderMap::new(), Vec::new()),
        Attempt::Retry { .. }
    ));
    assert!(matches!(
        classify(status(404), http::HeaderMap::new(), Vec::new()),
        Attempt::Fail(_)
    ));
    assert!(matches!(
        classify(status(200), http::HeaderMap::new(), Vec::new()),
        Attempt::Done(_)
    ));
}

#[test]
fn config_debug_hides_the_token() {
    let shown = format!("{:?}", config("http://x"));
    assert!(!shown.contains("as_secret_token"), "{shown}");
    assert!(shown.contains("<redacted>"));
}

#[test]
fn bad_bot_localpart_is_rejected() {
    let mut cfg = config("http://x");
    cfg.bot_localpart = "has space".into();
    // ruma accepts historical localparts, but not every string.
    cfg.server_name = "bad server".into();
    assert!(matches!(
        HomeserverClient::new(cfg, None),
        Err(MatrixError::InvalidId(_))
    ));
}

#[test]
fn truncate_keeps_short_text_and_cuts_long_text() {
    assert_eq!(truncate("short"), "short");
    let long = "é".repeat(300);
    let cut = truncate(&long);
    assert_eq!(cut.chars().count(), 201);
    assert!(cut.ends_with('…'));
}
