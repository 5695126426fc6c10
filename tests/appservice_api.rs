//! The Application Service API as the homeserver sees it, over real HTTP on 127.0.0.1, without
//! a homeserver: authentication, errors, body limits, durable idempotent ingest, ephemeral
//! events under both keys, third-party lookups and metrics.
//!
//! The events used here are in rooms that are not portals, so handling them needs no
//! homeserver; the homeserver URL points at a closed port. Where a test needs to see what
//! handling an event did, a stand-in homeserver takes the bridge's answers
//! ([`StandInHomeserver`]).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::metric_value;

use isthmus::appservice::{AppState, ListenerLimits, router, serve};
use isthmus::bridge::Bridge;
use isthmus::config::Config;
use isthmus::matrix::{HomeserverClient, HsConfig};
use isthmus::metrics::Metrics;
use isthmus::store::Store;
use serde_json::{Value, json};

const TOKEN: &str = "hs_token_for_api_tests";

struct Api {
    url: String,
    http: reqwest::Client,
    store: Store,
    _dir: tempfile::TempDir,
}

/// Where nothing listens: the bridge's calls to the homeserver fail at once.
const NO_HOMESERVER: &str = "http://127.0.0.1:9";

/// The listener limits of the tests that do not test them.
fn default_limits() -> ListenerLimits {
    ListenerLimits {
        header_timeout: Duration::from_secs(20),
        body_timeout: Duration::from_secs(60),
        max_connections: 4096,
    }
}

async fn start(max_body: usize) -> Api {
    start_with(max_body, default_limits(), NO_HOMESERVER).await
}

async fn start_limited(max_body: usize, limits: ListenerLimits) -> Api {
    start_with(max_body, limits, NO_HOMESERVER).await
}

async fn start_with(max_body: usize, limits: ListenerLimits, homeserver: &str) -> Api {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
homeserver: {{url: "{homeserver}", domain: localhost}}
appservice:
  listen: 127.0.0.1:0
  url: http://127.0.0.1:0
  as_token: as_token_for_api_tests
  hs_token: {TOKEN}
  max_body_bytes: {max_body}
database: {{path: "{}"}}
bridge:
  permissions: {{localhost: user}}
networks:
  loopback: {{control: "127.0.0.1:0"}}
  xmpp: {{component: {{domain: matrix.localhost, secret: component_secret, port: 9}}}}
"#,
        dir.path().display()
    );
    let config = Arc::new(Config::parse(&text).unwrap());
    let store = Store::open(
        dir.path(),
        isthmus::store::LoginKey::ephemeral().unwrap(),
        config.database.cache_bytes(),
    )
    .unwrap();
    let hs = HomeserverClient::new(
        HsConfig {
            url: config.homeserver.url.clone(),
            server_name: "localhost".into(),
            as_token: "as_token_for_api_tests".into(),
            appservice_id: "isthmus".into(),
            bot_localpart: "_isthmus_bot".into(),
            max_concurrency: 4,
            max_retries: 0,
        },
        None,
    )
    .unwrap();
    // The connectors the config enables (not started: no network is needed here).
    config.validate(&|_| None).unwrap();
    let connectors = isthmus::connectors::configure(&config, &|_| None)
        .unwrap()
        .connectors;
    let bridge = Bridge::new(
        config,
        hs,
        store.clone(),
        Metrics::new(),
        connectors,
        isthmus::tasks::Tasks::new(),
    )
    .unwrap();
    let state = Arc::new(AppState {
        bridge,
        hs_token: TOKEN.into(),
        allow_query_token: false,
        provisioning_secret: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        router(state),
        limits,
        isthmus::tasks::Tasks::new(),
        std::future::pending(),
    ));
    Api {
        url,
        http: reqwest::Client::new(),
        store,
        _dir: dir,
    }
}

impl Api {
    async fn put_txn(&self, id: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .put(format!("{}/_matrix/app/v1/transactions/{id}", self.url))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The Prometheus text of `/metrics`.
    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the portal queues handled everything in the inbox.
    async fn drained(&self) {
        for _ in 0..200 {
            if self.store.inbox_len() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("inbox not drained: {} items left", self.store.inbox_len());
    }
}

/// A homeserver that answers every message the bridge sends with a new event ID and keeps it
/// (room, body), and answers any other call with 404 `M_UNRECOGNIZED`.
struct StandInHomeserver {
    url: String,
    sent: Arc<Mutex<Vec<(String, Value)>>>,
}

impl StandInHomeserver {
    async fn start() -> StandInHomeserver {
        use axum::extract::{Json, Path, State};
        type Sent = Arc<Mutex<Vec<(String, Value)>>>;
        async fn send(
            State(sent): State<Sent>,
            Path((room, _kind, _txn)): Path<(String, String, String)>,
            Json(content): Json<Value>,
        ) -> Json<Value> {
            let mut sent = sent.lock().unwrap();
            sent.push((room, content));
            Json(json!({"event_id": format!("$standin{}", sent.len())}))
        }
        let sent: Sent = Arc::default();
        let app = axum::Router::new()
            .route(
                "/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}",
                axum::routing::put(send),
            )
            .fallback(|| async {
                (
                    axum::http::StatusCode::NOT_FOUND,
                    Json(json!({"errcode": "M_UNRECOGNIZED", "error": "not in the stand-in"})),
                )
            })
            .with_state(Arc::clone(&sent));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        StandInHomeserver { url, sent }
    }

    /// The bodies of the messages sent into `room` so far, first first.
    fn bodies(&self, room: &str) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == room)
            .filter_map(|(_, c)| c["body"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits until a message whose body matches `pred` was sent into `room`.
    async fn wait_body(&self, room: &str, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let bodies = self.bodies(room);
            if bodies.iter().any(|b| pred(b)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited 20 s for {what} in {room}; sent there: {bodies:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A text message from @alice:localhost (a user of the bridge) in `room`.
fn text_in(room: &str, event: &str, body: &str) -> Value {
    json!({
        "type": "m.room.message",
        "room_id": room,
        "sender": "@alice:localhost",
        "event_id": event,
        "origin_server_ts": 1_700_000_000_000u64,
        "content": {"msgtype": "m.text", "body": body},
    })
}

fn message(n: usize, body_len: usize) -> Value {
    json!({
        "type": "m.room.message",
        "room_id": format!("!room{}:localhost", n % 5),
        "sender": "@alice:localhost",
        "event_id": format!("$event{n}"),
        "origin_server_ts": 1_700_000_000_000u64,
        "content": {"msgtype": "m.text", "body": "x".repeat(body_len)},
    })
}

#[tokio::test]
async fn wrong_missing_or_misplaced_token_is_forbidden() {
    let api = start(32 << 20).await;
    for (path, token) in [
        (
            "/_matrix/app/v1/users/@_loopback_bob:localhost",
            Some("wrong"),
        ),
        ("/_matrix/app/v1/users/@_loopback_bob:localhost", None),
        (
            "/_matrix/app/v1/rooms/%23_loopback_x:localhost",
            Some("wrong"),
        ),
        ("/_matrix/app/v1/thirdparty/protocol/loopback", None),
        ("/users/@_loopback_bob:localhost", Some("wrong")),
        (
            &format!("/_matrix/app/v1/thirdparty/protocol/loopback?access_token={TOKEN}"),
            None,
        ),
    ] {
        let (status, body) = api.get(path, token).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{path}");
    }
    let r = api
        .http
        .put(format!("{}/_matrix/app/v1/transactions/1", api.url))
        .bearer_auth("wrong")
        .json(&json!({"events": [message(1, 10)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(api.store.inbox_len(), 0);
    assert!(
        !api.store.has_transaction("1").unwrap(),
        "a refused transaction is not recorded"
    );
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods() {
    let api = start(32 << 20).await;
    let (status, body) = api.get("/_matrix/app/v1/nonsense", Some(TOKEN)).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_UNRECOGNIZED"))
    );
    let (status, body) = api.get("/somewhere/else", None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_UNRECOGNIZED"))
    );
    let (status, body) = api.get("/_matrix/app/v1/transactions/5", Some(TOKEN)).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (405, Some("M_UNRECOGNIZED"))
    );
    let r = api
        .http
        .post(format!("{}/_matrix/app/v1/ping", api.url))
        .bearer_auth(TOKEN)
        .json(&json!({"transaction_id": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn malformed_transactions_are_refused_and_store_nothing() {
    let api = start(32 << 20).await;
    let r = api
        .http
        .put(format!("{}/_matrix/app/v1/transactions/bad", api.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Not a transaction at all (its events are not a list): refused.
    let (status, body) = api.put_txn("bad2", &json!({"events": 7})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_NOT_JSON"))
    );
    assert!(!api.store.has_transaction("bad").unwrap());
    assert!(!api.store.has_transaction("bad2").unwrap());
    // The same ID works once the homeserver sends a valid body.
    let (status, _) = api
        .put_txn("bad2", &json!({"events": [message(1, 5)]}))
        .await;
    assert_eq!(status, 200);
}

/// One unreadable event never rejects the others: a homeserver that sent one would otherwise
/// retry that transaction forever and the bridge would receive nothing more.
#[tokio::test]
async fn unreadable_events_are_skipped_and_the_others_kept() {
    let api = start(32 << 20).await;
    let malformed = |text: &str| {
        metric_value(
            text,
            "bridge_skipped_events_total",
            &[("reason", "malformed")],
        )
    };
    let before = malformed(&api.metrics().await);
    for (n, bad) in [
        json!(1),
        json!(null),
        json!("an event"),
        json!([1, 2]),
        json!({"room_id": 5, "sender": "@a:localhost", "type": "m.room.message"}),
        json!({"type": ["m.room.message"], "room_id": "!r:localhost"}),
    ]
    .into_iter()
    .enumerate()
    {
        let txn = format!("mixed-{n}");
        let body = json!({"events": [bad.clone(), message(n, 5), bad], "ephemeral": [json!(3)]});
        let (status, _) = api.put_txn(&txn, &body).await;
        assert_eq!(
            status, 200,
            "{txn}: a transaction with an unreadable event is accepted"
        );
        let record = api.store.transaction(&txn).unwrap().expect("committed");
        assert_eq!(
            record.items, 1,
            "{txn}: the readable event is kept, the others skipped"
        );
    }
    // Six transactions, each with two unreadable events and an unreadable ephemeral one.
    let metrics = api.metrics().await;
    assert_eq!(malformed(&metrics) - before, 18.0, "{metrics}");
}

/// Homeservers may number transactions from 1 again after a restart (Synapse on SQLite
/// does): an ID seen before with other events is a new transaction; with the same events
/// (a retry, whose `unsigned.age` differs) it is a duplicate.
#[tokio::test]
async fn reused_transaction_ids_with_other_events_are_new() {
    let api = start(32 << 20).await;
    let counts = |text: &str| (txn_results(text, "ok"), txn_results(text, "duplicate"));
    let (ok, duplicate) = counts(&api.metrics().await);
    let (status, _) = api.put_txn("1", &json!({"events": [message(1, 5)]})).await;
    assert_eq!(status, 200);
    let mut retry = message(1, 5);
    retry["unsigned"] = json!({"age": 12345});
    let (status, _) = api.put_txn("1", &json!({"events": [retry]})).await;
    assert_eq!(status, 200);
    let metrics = api.metrics().await;
    assert_eq!(
        counts(&metrics),
        (ok + 1.0, duplicate + 1.0),
        "a retry of the same events is a duplicate: {metrics}"
    );
    for n in 2..5u32 {
        let (status, _) = api
            .put_txn("1", &json!({"events": [message(n as usize, 5)]}))
            .await;
        assert_eq!(status, 200);
        let metrics = api.metrics().await;
        assert_eq!(
            counts(&metrics),
            (ok + f64::from(n), duplicate + 1.0),
            "transaction 1 again with event {n} is new: {metrics}"
        );
    }
}

#[tokio::test]
async fn large_valid_transaction_is_accepted_and_over_limit_is_413() {
    let api = start(16 << 20).await;
    // 100 events of 64 KiB each: about 6.5 MB, what a busy homeserver may send.
    let events: Vec<Value> = (0..100).map(|n| message(n, 64 * 1024)).collect();
    let (status, _) = api.put_txn("big", &json!({ "events": events })).await;
    assert_eq!(status, 200);
    api.drained().await;
    let events: Vec<Value> = (0..300).map(|n| message(n, 64 * 1024)).collect();
    let (status, _) = api.put_txn("too-big", &json!({ "events": events })).await;
    assert_eq!(status, 413);
    assert!(!api.store.has_transaction("too-big").unwrap());
}

/// How many transactions were answered with `result` (`ok`, `duplicate`, ...).
fn txn_results(text: &str, result: &str) -> f64 {
    metric_value(text, "bridge_txn_seconds_count", &[("result", result)])
}

/// A homeserver that did not see the bridge's answer sends the same transaction again: it is
/// answered the same, and what it holds is handled once. A command in it shows that: each
/// handling of it sends an answer (the answer's transaction ID comes from the inbox sequence,
/// which a second handling would not share, so the homeserver would not fold the two).
#[tokio::test]
async fn replayed_transaction_is_handled_once() {
    let hs = StandInHomeserver::start().await;
    let api = start_with(32 << 20, default_limits(), &hs.url).await;
    let room = "!commands:localhost";
    let is_version = |b: &str| b.starts_with("isthmus ");
    let before = api.metrics().await;
    let body = json!({"events": [text_in(room, "$version", "!isthmus version"), message(2, 10)]});
    assert_eq!(api.put_txn("42", &body).await, (200, json!({})));
    hs.wait_body(room, "the answer to `version`", is_version)
        .await;
    let (status, body_again) = api.put_txn("42", &body).await;
    assert_eq!((status, body_again), (200, json!({})), "the replay");

    // A later transaction with a command in the same room: the room's events are handled in
    // order, so once this one is answered, a second handling of the replay would have been.
    let later = json!({"events": [text_in(room, "$whoami", "!isthmus whoami")]});
    assert_eq!(api.put_txn("43", &later).await.0, 200);
    hs.wait_body(room, "the answer to `whoami`", |b| {
        b.starts_with("You are @alice:localhost")
    })
    .await;
    let bodies = hs.bodies(room);
    assert_eq!(
        bodies.iter().filter(|b| is_version(b)).count(),
        1,
        "the replayed command was answered again: {bodies:?}"
    );
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    api.drained().await;
    let after = api.metrics().await;
    assert_eq!(
        (
            txn_results(&after, "ok") - txn_results(&before, "ok"),
            txn_results(&after, "duplicate") - txn_results(&before, "duplicate"),
        ),
        (2.0, 1.0),
        "transactions 42 and 43 are new, the replay of 42 a duplicate:\n{after}"
    );
}

#[tokio::test]
async fn ephemeral_events_under_both_keys_reach_the_inbox() {
    let api = start(32 << 20).await;
    let typing = json!({"type": "m.typing", "room_id": "!r:localhost", "content": {"user_ids": ["@alice:localhost"]}});
    for (id, key) in [("e1", "ephemeral"), ("e2", "de.sorunome.msc2409.ephemeral")] {
        let mut body = json!({"events": []});
        body[key] = json!([typing]);
        assert_eq!(api.put_txn(id, &body).await.0, 200);
        let dump = api.store.export().unwrap();
        let txn = dump["trees"]["txns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row[0] == id)
            .unwrap_or_else(|| panic!("transaction {id} recorded"));
        let record: Value = serde_json::from_str(txn[1].as_str().unwrap()).unwrap();
        assert_eq!(
            record["items"], 1,
            "the typing event under `{key}` was stored"
        );
    }
}

#[tokio::test]
async fn third_party_lookups_follow_the_connector() {
    let api = start(32 << 20).await;
    let (status, proto) = api
        .get("/_matrix/app/v1/thirdparty/protocol/loopback", Some(TOKEN))
        .await;
    assert_eq!(status, 200);
    assert_eq!(proto["user_fields"], json!(["user"]));
    assert_eq!(proto["location_fields"], json!(["room"]));
    assert_eq!(proto["instances"][0]["network_id"], "loopback");
    let (status, _) = api
        .get("/_matrix/app/v1/thirdparty/protocol/nope", Some(TOKEN))
        .await;
    assert_eq!(status, 404);
    let (_, users) = api
        .get(
            "/_matrix/app/v1/thirdparty/user/loopback?user=Bob",
            Some(TOKEN),
        )
        .await;
    assert_eq!(users[0]["userid"], "@_loopback_bob:localhost");
    let (_, back) = api
        .get(
            "/_matrix/app/v1/thirdparty/user?userid=%40_loopback_bob%3Alocalhost",
            Some(TOKEN),
        )
        .await;
    assert_eq!(back[0]["fields"]["user"], "bob");
    let (_, rooms) = api
        .get(
            "/_matrix/app/v1/thirdparty/location/loopback?room=%23lobby",
            Some(TOKEN),
        )
        .await;
    assert_eq!(rooms[0]["alias"], "#_loopback_=23lobby:localhost");
    let (_, back) = api
        .get(
            "/_matrix/app/v1/thirdparty/location?alias=%23_loopback_%3D23lobby%3Alocalhost",
            Some(TOKEN),
        )
        .await;
    assert_eq!(back[0]["fields"]["room"], "#lobby");
    let (_, none) = api
        .get(
            "/_matrix/app/v1/thirdparty/user/loopback?user=has%20space",
            Some(TOKEN),
        )
        .await;
    assert_eq!(none, json!([]));
}

#[tokio::test]
async fn third_party_protocol_xmpp() {
    let api = start(32 << 20).await;
    let (status, proto) = api
        .get("/_matrix/app/v1/thirdparty/protocol/xmpp", Some(TOKEN))
        .await;
    assert_eq!(status, 200);
    assert_eq!(proto["user_fields"], json!(["jid"]));
    assert_eq!(proto["location_fields"], json!(["muc"]));
    let (_, users) = api
        .get(
            "/_matrix/app/v1/thirdparty/user/xmpp?jid=Bob%40Example.org",
            Some(TOKEN),
        )
        .await;
    assert_eq!(users[0]["userid"], "@_xmpp_bob=40example.org:localhost");
    let (_, rooms) = api
        .get(
            "/_matrix/app/v1/thirdparty/location/xmpp?muc=lobby%40conference.example.org",
            Some(TOKEN),
        )
        .await;
    assert_eq!(
        rooms[0]["alias"],
        "#_xmpp_lobby=40conference.example.org:localhost"
    );
    let (_, none) = api
        .get(
            "/_matrix/app/v1/thirdparty/user/xmpp?jid=alice%40matrix.localhost",
            Some(TOKEN),
        )
        .await;
    assert_eq!(
        none,
        json!([]),
        "a Matrix user's own gateway address is no XMPP contact"
    );
}

/// `/metrics` answers without a token, and its figures follow what happens: a transaction is
/// counted, and the store's gauges count what is in the store when they are read.
#[tokio::test]
async fn metrics_and_health() {
    use isthmus::network::ChatKind;
    use isthmus::store::{GhostRecord, PortalKey, PortalRecord};
    let api = start(32 << 20).await;
    assert_eq!(api.get("/health", None).await.0, 200);
    assert_eq!(api.get("/_matrix/mau/live", None).await.0, 200);
    let value = |text: &str, name: &str| metric_value(text, name, &[]);
    let before = api.metrics().await;

    assert_eq!(
        api.put_txn("m1", &json!({"events": [message(1, 3)]}))
            .await
            .0,
        200
    );
    api.drained().await;
    api.store
        .put_portal(&PortalRecord::new(
            PortalKey::new("loopback", "bob", Some("@alice:localhost")),
            "!portal:localhost",
            ChatKind::Direct,
        ))
        .unwrap();
    api.store
        .put_ghost(&GhostRecord {
            user_id: "@_loopback_bob:localhost".into(),
            network: "loopback".into(),
            remote_id: "bob".into(),
            displayname: None,
            avatar_url: None,
            avatar_hash: None,
            avatar_upload: None,
            registered: false,
        })
        .unwrap();

    let after = api.metrics().await;
    let delta = |name: &str| value(&after, name) - value(&before, name);
    assert_eq!(
        txn_results(&after, "ok") - txn_results(&before, "ok"),
        1.0,
        "{after}"
    );
    assert!(
        value(&after, "bridge_txn_seconds_sum") > value(&before, "bridge_txn_seconds_sum"),
        "the transaction's time is added up:\n{after}"
    );
    assert_eq!(delta("portals_total"), 1.0, "{after}");
    assert_eq!(delta("ghosts_total"), 1.0, "{after}");
    assert_eq!(
        value(&after, "bridge_inbox_depth"),
        0.0,
        "drained:\n{after}"
    );
    assert!(value(&after, "sled_size_bytes") > 0.0, "{after}");
    assert_eq!(value(&after, "bridge_store_healthy"), 1.0, "{after}");
}

/// Reads from `sock` until the server closes it (EOF or reset); returns what was read and
/// how long it took, or None when it stayed open for `within`.
async fn closed_within(
    sock: &mut tokio::net::TcpStream,
    within: Duration,
) -> Option<(String, Duration)> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(within, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| {
        (
            String::from_utf8_lossy(&got).into_owned(),
            started.elapsed(),
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_requests_and_idle_connections_are_closed_after_the_timeouts() {
    use tokio::io::AsyncWriteExt;
    let api = start_limited(
        1 << 20,
        ListenerLimits {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_connections: 4096,
        },
    )
    .await;
    let addr = api.url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    let mut half_head = Vec::new();
    let mut half_body = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        half_head.push(s);
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            format!(
                "PUT /_matrix/app/v1/transactions/t1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"events\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        half_body.push(s);
    }
    for s in idle.iter_mut().chain(half_head.iter_mut()) {
        let (got, after) = closed_within(s, Duration::from_secs(5))
            .await
            .expect("closed by the header timeout");
        assert!(after < Duration::from_secs(5), "{after:?}");
        assert!(
            !got.contains("200 OK"),
            "no answer to half a request: {got}"
        );
    }
    for s in half_body.iter_mut() {
        let (got, _) = closed_within(s, Duration::from_secs(5))
            .await
            .expect("closed by the body timeout");
        assert!(
            !got.contains("200 OK"),
            "the half-sent transaction was refused: {got}"
        );
    }
    // Nothing of the half-sent transaction was committed, and the listener still answers.
    assert_eq!(api.get("/health", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_get_through_while_hundreds_of_idle_sockets_hold_the_listener() {
    let api = start_limited(
        1 << 20,
        ListenerLimits {
            // Long: the idle sockets are not timed out during the test.
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 64,
        },
    )
    .await;
    let addr = api.url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let started = std::time::Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let health = http
        .get(format!("{}/health", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ping = http
        .post(format!("{}/_matrix/app/v1/ping", api.url))
        .bearer_auth(TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), 200, "the homeserver's ping gets through");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
}
