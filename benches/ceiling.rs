//! The homeserver's ceiling for ordered sends into one room, and isthmus beside it.
//!
//! Run with `scripts/bench-ceiling.sh` (Synapse with SQLite) or
//! `scripts/bench-ceiling.sh --postgres` (Synapse with PostgreSQL): the script starts the real
//! Synapse and Prosody of the test stack on 127.0.0.1, runs this benchmark against them and
//! stops them again.
//!
//! Each round measures, one after the other on the same homeserver (the order rotates):
//!
//! 1. **plain**: a Matrix user sends `CEILING_MESSAGES` messages into a room, one after
//!    another, each waiting for the homeserver's answer: the most a room takes in order from
//!    one sender. The room has a second member, as a direct chat has (the homeserver works
//!    out each message's notifications for the member who did not send it);
//! 2. **appservice user**: the same, by a user of the appservice's namespace acting through the
//!    appservice's token, as the bridge's ghosts do: the homeserver also pushes each of its
//!    events to the appservice (the running bridge answers), work a plain user's events do
//!    not cause;
//! 3. **bridge**: an XMPP contact writes the same number of messages to that Matrix user's
//!    gateway address as fast as the link takes them; isthmus (the release binary, on the
//!    test fixture's configuration) stores them and sends them into the direct chat's room
//!    in order. Measured from the first stanza written until the bridge has sent the last one
//!    (its `bridge_events_total` metric, polled every 10 ms: asking the bridge costs the
//!    homeserver nothing, where polling the room would slow the sends measured), then every
//!    message checked in the room for arriving once and in order.
//!
//! Then, when `CEILING_STORM` is not 0, the **ghost storm**: in each round, `CEILING_STORM`
//! new XMPP contacts (distinct addresses of the bench component) write once each, at once, to
//! the Matrix user; isthmus makes a ghost and a direct chat for each and sends the message in
//! it. Timed until the bridge has sent the last message (its metric). Beside it, the same
//! requests made directly by a client of the appservice, as many at once as the bridge's
//! homeserver client allows (`homeserver.max_concurrency`, 64): for each contact, register a
//! user of the namespace, set its display name, create the direct chat inviting the user with
//! the bridge-info state in the call, read the user's presence, send the message. The ratio
//! says what the bridge adds to what the homeserver needs for the same work.
//!
//! The contact is a second component of the test Prosody (`bench.localhost`, a real XEP-0114
//! connection): its stanzas go through Prosody to the bridge's component as any remote
//! server's would. The passes of a round run in turn, the first one rotating from round to
//! round, and each round's ratios compare passes run close together: the homeserver's pace
//! drifts (its disk, other work on the machine) and weighs on every pass alike; the ratios
//! printed are the medians of the rounds' ratios.
//!
//! Settings (environment): `CEILING_HS` (default `http://127.0.0.1:18008`),
//! `CEILING_MESSAGES` (default 100), `CEILING_ROUNDS` (default 6), `CEILING_STORM` (new
//! contacts per storm, at most three storms, default 100; 0 skips them), `CEILING_BIN` (another
//! `isthmus` binary), `CEILING_LABEL` (printed with the figures: which database).

#[path = "support/env.rs"]
mod env;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bridge's configuration in the test stack.
const FIXTURE: &str = include_str!("../tests/fixtures/bridge.yaml");
/// The component port of the test Prosody.
const PROSODY_COMPONENT: &str = "127.0.0.1:15347";
/// The contact's component: declared in `tests/fixtures/prosody.cfg.lua`.
const BENCH_DOMAIN: &str = "bench.localhost";
const BENCH_SECRET: &str = "bench_component_secret";
/// The bridge's component domain in the fixture.
const GATEWAY: &str = "matrix.localhost";
/// The bridge's appservice listener in the fixture.
const AS_URL: &str = "http://127.0.0.1:29331";

struct Settings {
    hs: String,
    messages: usize,
    rounds: usize,
    storm: usize,
    bin: PathBuf,
    label: String,
}

impl Settings {
    fn from_env() -> Self {
        use env::{num, var};
        // Without `--bench` (the test command runs every benchmark once as a smoke test, with
        // the test stack up): a short pass that proves the benchmark works.
        let smoke = env::smoke();
        Self {
            hs: var("CEILING_HS")
                .or_else(|| var("ISTHMUS_TEST_HOMESERVER"))
                .unwrap_or_else(|| "http://127.0.0.1:18008".into()),
            messages: num("CEILING_MESSAGES", if smoke { 10 } else { 100 }).max(1),
            rounds: num("CEILING_ROUNDS", if smoke { 1 } else { 6 }).max(1),
            storm: num("CEILING_STORM", if smoke { 3 } else { 100 }),
            bin: var("CEILING_BIN").map_or_else(
                || PathBuf::from(env!("CARGO_BIN_EXE_isthmus")),
                PathBuf::from,
            ),
            label: var("CEILING_LABEL").unwrap_or_else(|| "Synapse".into()),
        }
    }
}

/// A Matrix user of the homeserver, with its access token.
struct User {
    hs: String,
    http: reqwest::Client,
    token: String,
    /// For a user of the appservice's namespace: its ID, asserted with the appservice's token
    /// (`?user_id=`), as the bridge acts for its ghosts.
    assert: Option<String>,
    id: String,
    txn: u64,
}

impl User {
    async fn register(hs: &str, localpart: &str) -> Self {
        let http = reqwest::Client::new();
        let body: Value = http
            .post(format!("{hs}/_matrix/client/v3/register"))
            .json(&json!({"username": localpart, "password": "ceiling-bench-pw", "auth": {"type": "m.login.dummy"}}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("the homeserver at {hs} does not answer ({e}); run scripts/bench-ceiling.sh, which starts it"))
            .json()
            .await
            .expect("a JSON answer to register");
        let token = body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("could not register {localpart}: {body}"))
            .to_owned();
        Self {
            hs: hs.to_owned(),
            http,
            token,
            assert: None,
            id: format!("@{localpart}:localhost"),
            txn: 0,
        }
    }

    /// A user of the appservice's namespace, registered and acting through the appservice's
    /// token, as a ghost of the bridge does: the homeserver pushes its events to the
    /// appservice, as it does the ghosts'.
    async fn appservice_user(hs: &str, localpart: &str) -> Self {
        let token = fixture_value("as_token");
        let http = reqwest::Client::new();
        let resp = http
            .post(format!("{hs}/_matrix/client/v3/register"))
            .bearer_auth(&token)
            .json(&json!({"type": "m.login.application_service", "username": localpart}))
            .send()
            .await
            .expect("the homeserver answers");
        assert!(
            resp.status().is_success(),
            "could not register {localpart} through the appservice: {}",
            resp.status()
        );
        Self {
            hs: hs.to_owned(),
            http,
            token,
            assert: Some(format!("@{localpart}:localhost")),
            id: format!("@{localpart}:localhost"),
            txn: 0,
        }
    }

    /// The user's Matrix ID.
    fn user_id(&self) -> String {
        match &self.assert {
            Some(id) => id.clone(),
            None => self.id.clone(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut url = format!("{}/_matrix/client/v3{path}", self.hs);
        if let Some(user) = &self.assert {
            let sep = if path.contains('?') { '&' } else { '?' };
            url.push_str(&format!("{sep}user_id={}", enc(user)));
        }
        let mut req = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the homeserver answers");
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn send(&mut self, room: &str, body: &str) {
        self.txn += 1;
        self.call(
            reqwest::Method::PUT,
            &format!("/rooms/{}/send/m.room.message/c{}", enc(room), self.txn),
            // The content the bridge sends for a plain message, as Element and other current
            // clients send it: `m.mentions` (even empty) turns off the homeserver's legacy
            // mention rules, and costs Synapse measurably more work per event.
            Some(json!({"msgtype": "m.text", "body": body, "m.mentions": {}})),
        )
        .await;
    }

    async fn sync(&self, since: Option<&str>, timeout_ms: u64) -> Value {
        let mut path = format!(
            "/sync?timeout={timeout_ms}&filter={}",
            enc(r#"{"room":{"timeline":{"limit":1000}}}"#)
        );
        if let Some(s) = since {
            path.push_str(&format!("&since={}", enc(s)));
        }
        self.call(reqwest::Method::GET, &path, None).await
    }
}

/// A value of the fixture's `appservice` section, such as its `as_token`.
fn fixture_value(key: &str) -> String {
    FIXTURE
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in the fixture"))
        .trim()
        .to_owned()
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The contact's side: a component connection to Prosody. What Prosody sends back (the
/// bridge's receipts and queries) is read and dropped by a task of its own, which answers
/// queries with an error so that nothing waits for a timeout.
struct Contact {
    write: std::sync::Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Contact {
    async fn connect() -> Self {
        let mut stream = TcpStream::connect(PROSODY_COMPONENT)
            .await
            .unwrap_or_else(|e| panic!("Prosody's component port {PROSODY_COMPONENT} does not answer ({e}); run scripts/bench-ceiling.sh, which starts it"));
        let _ = stream.set_nodelay(true);
        stream
            .write_all(format!("<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='{BENCH_DOMAIN}'>").as_bytes())
            .await
            .expect("write the stream header");
        let header = read_until(&mut stream, |t| t.contains(" id=")).await;
        let at = header.find("<stream:stream").expect("a stream header");
        let id = attr(&header[at..], "id").expect("a stream id");
        let digest = ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            format!("{id}{BENCH_SECRET}").as_bytes(),
        );
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        stream
            .write_all(format!("<handshake>{hex}</handshake>").as_bytes())
            .await
            .expect("write the handshake");
        let answer = read_until(&mut stream, |t| {
            t.contains("handshake") || t.contains("error")
        })
        .await;
        assert!(
            answer.contains("<handshake"),
            "Prosody refused the bench component (is {BENCH_DOMAIN} in its config?): {answer}"
        );
        let (mut read, write) = stream.into_split();
        let write = std::sync::Arc::new(tokio::sync::Mutex::new(write));
        let answers = std::sync::Arc::clone(&write);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut text = String::new();
            loop {
                let n = match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                while let Some(start) = text.find("<iq") {
                    let rest = &text[start..];
                    let Some(len) = rest
                        .find("</iq>")
                        .map(|e| e + 5)
                        .or_else(|| rest.find("/>").map(|e| e + 2))
                    else {
                        break;
                    };
                    let iq = rest[..len].to_owned();
                    text.drain(..start + len);
                    if matches!(attr(&iq, "type").as_deref(), Some("get" | "set")) {
                        let error = format!(
                            "<iq type='error' from='{}' to='{}' id='{}'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
                            attr(&iq, "to").unwrap_or_default(),
                            attr(&iq, "from").unwrap_or_default(),
                            attr(&iq, "id").unwrap_or_default()
                        );
                        if answers
                            .lock()
                            .await
                            .write_all(error.as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                if !text.contains("<iq") && text.len() > 1 << 16 {
                    text.clear();
                }
            }
        });
        Self { write, reader }
    }

    async fn write(&self, bytes: &[u8]) {
        self.write
            .lock()
            .await
            .write_all(bytes)
            .await
            .expect("write to Prosody");
    }
}

/// The value of attribute `name` in the first tag of `el`, either quote.
fn attr(el: &str, name: &str) -> Option<String> {
    let tag = &el[..el.find('>').map_or(el.len(), |e| e + 1)];
    let at = tag.find(&format!(" {name}="))? + name.len() + 2;
    let q = tag[at..].chars().next()?;
    tag[at + 1..].split(q).next().map(str::to_owned)
}

async fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&text) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("Prosody did not answer in time; so far: {text}"))
            .expect("read from Prosody");
        assert!(n > 0, "Prosody closed the connection: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text
}

fn stanza(to: &str, seq: usize, body: &str) -> Vec<u8> {
    format!("<message type='chat' id='ceil{seq}' from='contact@{BENCH_DOMAIN}/bench' to='{to}'><body>{body}</body></message>").into_bytes()
}

/// `bridge.limits` with room for every storm's contacts.
const STORM_LIMITS: &str = "  limits:
    portals_per_sender: {rate: 100000, per_seconds: 1, burst: 100000}
    portals_per_domain: {rate: 100000, per_seconds: 1, burst: 100000}
    invites_per_user: {rate: 100000, per_seconds: 1, burst: 100000}
    message_ghosts_per_domain: {rate: 100000, per_seconds: 1, burst: 100000}
";

/// The first message of storm contact `i` of `round`, to `to`.
fn storm_stanza(to: &str, run: u64, round: usize, i: usize) -> Vec<u8> {
    format!("<message type='chat' id='storm{round}x{i}' from='storm{run}r{round}x{i}@{BENCH_DOMAIN}/bench' to='{to}'><body>storm {round} {i}</body></message>").into_bytes()
}

/// The storm's requests made directly: for each of `count` new contacts of `round`, what the
/// bridge asks of the homeserver for a new contact's first message, at most
/// `homeserver.max_concurrency` (64) requests at once, as the bridge's client allows.
async fn direct_storm(hs: &str, receiver: &str, run: u64, round: usize, count: usize) {
    let token = std::sync::Arc::new(fixture_value("as_token"));
    let http = reqwest::Client::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let (hs, receiver, token, http, slots) = (
            hs.to_owned(),
            receiver.to_owned(),
            token.clone(),
            http.clone(),
            slots.clone(),
        );
        tasks.spawn(async move {
            let localpart = format!("_xmpp_direct{run}r{round}x{i}");
            let ghost = format!("@{localpart}:localhost");
            // `answered`: whether any answer will do (the bridge reads the user's presence as
            // its bot, which the homeserver may refuse: the request costs it the same).
            let call = |method: reqwest::Method, path: String, body: Option<Value>, answered: bool| {
                let (hs, token, http, slots, ghost) =
                    (&hs, &token, &http, &slots, &ghost);
                async move {
                    let _slot = slots.acquire().await.expect("semaphore open");
                    let sep = if path.contains('?') { '&' } else { '?' };
                    let url = format!(
                        "{hs}/_matrix/client/v3{path}{sep}user_id={}",
                        enc(ghost)
                    );
                    let mut req = http.request(method, url).bearer_auth(token.as_str());
                    if let Some(b) = body {
                        req = req.json(&b);
                    }
                    let resp = req.send().await.expect("the homeserver answers");
                    let status = resp.status();
                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                    assert!(answered || status.is_success(), "{path}: {status} {body}");
                    body
                }
            };
            call(
                reqwest::Method::POST,
                "/register".into(),
                Some(json!({"type": "m.login.application_service", "username": localpart})),
                false,
            )
            .await;
            call(
                reqwest::Method::PUT,
                format!("/profile/{}/displayname", enc(&ghost)),
                Some(json!({"displayname": format!("direct {i}")})),
                false,
            )
            .await;
            let info = json!({
                "bridgebot": "@_isthmus_bot:localhost",
                "creator": "@_isthmus_bot:localhost",
                "net.isthmus.encryption": "unsupported: keep this room unencrypted",
                "protocol": {"id": "xmpp", "displayname": "XMPP"},
                "channel": {"id": format!("direct{run}r{round}x{i}@{BENCH_DOMAIN}"), "displayname": format!("direct {i}")},
            });
            let state_key = format!("isthmus://xmpp/direct{run}r{round}x{i}");
            let room = call(
                reqwest::Method::POST,
                "/createRoom".into(),
                Some(json!({
                    "preset": "private_chat",
                    "is_direct": true,
                    "invite": [receiver],
                    "initial_state": [
                        {"type": "m.bridge", "state_key": state_key, "content": info},
                        {"type": "uk.half-shot.bridge", "state_key": state_key, "content": info},
                    ],
                    // The creator holds every power in the homeserver's room version, as the
                    // bridge finds (`creators_privileged`): only the user is named.
                    "power_level_content_override": {"users": {receiver.as_str(): 100}},
                })),
                false,
            )
            .await["room_id"]
                .as_str()
                .expect("a room")
                .to_owned();
            call(
                reqwest::Method::GET,
                format!("/presence/{}/status", enc(&receiver)),
                None,
                true,
            )
            .await;
            call(
                reqwest::Method::PUT,
                format!("/rooms/{}/send/m.room.message/s{i}", enc(&room)),
                Some(json!({"msgtype": "m.text", "body": format!("storm {round} {i}")})),
                false,
            )
            .await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a direct storm task");
    }
}

/// The bridge, killed when dropped.
struct Bridge(Child);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_bridge(settings: &Settings, dir: &std::path::Path) -> Bridge {
    let store_line = "path: target/stack/test-store";
    assert!(
        FIXTURE.contains(store_line),
        "the fixture's store path changed"
    );
    let config = FIXTURE
        .replace(
            store_line,
            &format!("path: {}", dir.join("store").display()),
        )
        .replace(
            "url: http://127.0.0.1:18008",
            &format!("url: {}", settings.hs),
        )
        // The storm's contacts share one domain and invite one user: the creation limits
        // would refuse most of them.
        .replacen("\nbridge:\n", &format!("\nbridge:\n{STORM_LIMITS}"), 1);
    assert!(
        config.contains(STORM_LIMITS),
        "the fixture's bridge section moved"
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).expect("write the config");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("config mode");
    let log = dir.join("isthmus.log");
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new(&settings.bin)
        .arg("-c")
        .arg(&path)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("start isthmus");
    let mut bridge = Bridge(child);
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("isthmus is ready") {
            return bridge;
        }
        assert!(
            matches!(bridge.0.try_wait(), Ok(None)),
            "isthmus exited during start-up:\n{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "isthmus not ready after 60 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Follows the user's sync until an invite arrives, joins that room and returns it.
async fn join_invite(user: &User, since: &mut String) -> String {
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no invite from the bridge within 60 s"
        );
        let sync = user.sync(Some(since), 5000).await;
        *since = sync["next_batch"].as_str().expect("next_batch").to_owned();
        if let Some(id) = sync["rooms"]["invite"]
            .as_object()
            .and_then(|m| m.keys().next())
        {
            user.call(
                reqwest::Method::POST,
                &format!("/rooms/{}/join", enc(id)),
                Some(json!({})),
            )
            .await;
            return id.clone();
        }
    }
}

/// A room `owner` creates and `guest` joins.
async fn shared_room(owner: &User, guest: &User) -> String {
    let room = owner
        .call(
            reqwest::Method::POST,
            "/createRoom",
            Some(json!({"preset": "private_chat", "name": "ceiling", "invite": [guest.user_id()]})),
        )
        .await["room_id"]
        .as_str()
        .expect("a room")
        .to_owned();
    guest
        .call(
            reqwest::Method::POST,
            &format!("/rooms/{}/join", enc(&room)),
            Some(json!({})),
        )
        .await;
    room
}

/// The bodies of the benchmark's messages among the last `limit` events of `room`, oldest
/// first.
async fn last_bodies(user: &User, room: &str, limit: usize) -> Vec<String> {
    let page = user
        .call(
            reqwest::Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit={limit}", enc(room)),
            None,
        )
        .await;
    let mut bodies: Vec<String> = page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ev| ev["type"] == "m.room.message")
        .filter_map(|ev| ev["content"]["body"].as_str())
        .filter(|b| b.starts_with("ceiling "))
        .map(str::to_owned)
        .collect();
    bodies.reverse();
    bodies
}

/// The bridge's count of messages it sent into Matrix (`/metrics` on its appservice
/// listener): asking the bridge costs the homeserver nothing, unlike polling the room.
async fn bridged_count(http: &reqwest::Client) -> u64 {
    let text = http
        .get(format!("{AS_URL}/metrics"))
        .send()
        .await
        .expect("the bridge's /metrics answers")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("bridge_events_total{")
                && l.contains(r#"direction="to_matrix""#)
                && l.contains(r#"type="message""#)
                && l.contains(r#"result="ok""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until the bridge has sent `count` messages into Matrix in all (its metric, polled
/// every 10 ms), then checks in the room that the last ones are `want`, once each and in
/// order.
async fn wait_for(user: &User, count: u64) {
    let started = Instant::now();
    let deadline = Duration::from_secs(300);
    while bridged_count(&user.http).await < count {
        assert!(
            started.elapsed() < deadline,
            "the bridge did not send {count} messages within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks in the room that its last messages are `want`, once each and in order.
async fn check_room(user: &User, room: &str, want: &[String]) {
    let all = last_bodies(user, room, want.len() + 20).await;
    let tail = &all[all.len().saturating_sub(want.len())..];
    assert_eq!(
        tail, want,
        "the messages did not arrive once each and in order"
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings::from_env();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = tempfile::Builder::new()
        .prefix("isthmus-ceiling-")
        .tempdir()
        .expect("tempdir");
    let mut alice = User::register(&settings.hs, &format!("ceil{run}")).await;
    let bridge = start_bridge(&settings, dir.path()).await;
    // The appservice's own user sends while the bridge listens, so that the homeserver's
    // pushes of its events are answered as the ghosts' are.
    let mut puppet = User::appservice_user(&settings.hs, &format!("_xmpp_ceil{run}")).await;
    // Every room of the benchmark has the two of them, as a direct chat has: the homeserver
    // works out each message's notifications for the member who did not send it.
    // (The second member of the plain room is a plain user too: the bridge would take an
    // invite of a user of its namespace by a Matrix user as a chat to open.)
    let bob = User::register(&settings.hs, &format!("ceil{run}b")).await;
    let plain_room = shared_room(&alice, &bob).await;
    let puppet_room = shared_room(&puppet, &alice).await;
    let contact = Contact::connect().await;
    let to = format!("ceil{run}@{GATEWAY}");
    let mut since = alice.sync(None, 0).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    // The first message opens the portal: the ghost, the room, the invite.
    contact.write(&stanza(&to, 0, "warm-up")).await;
    let room = join_invite(&alice, &mut since).await;
    println!(
        "isthmus ceiling benchmark: {} ({}), {} messages per pass, {} rounds",
        settings.label, settings.hs, settings.messages, settings.rounds
    );
    let m = settings.messages;
    let mut plain = Vec::new();
    let mut as_plain = Vec::new();
    let mut bridged = Vec::new();
    for round in 0..settings.rounds {
        // The three passes of a round run in turn, and the one that goes first rotates from
        // round to round: a homeserver that slows down or speeds up over a round (its disk,
        // other work on the machine) weighs on each pass alike over the rounds.
        let (mut p, mut a, mut b) = (0.0, 0.0, 0.0);
        for pass in 0..3 {
            match (round + pass) % 3 {
                0 => {
                    let began = Instant::now();
                    for i in 0..m {
                        alice.send(&plain_room, &format!("plain {round} {i}")).await;
                    }
                    p = m as f64 / began.elapsed().as_secs_f64();
                }
                1 => {
                    let began = Instant::now();
                    for i in 0..m {
                        puppet
                            .send(&puppet_room, &format!("plain {round} {i}"))
                            .await;
                    }
                    a = m as f64 / began.elapsed().as_secs_f64();
                }
                _ => {
                    let want: Vec<String> =
                        (0..m).map(|i| format!("ceiling {round} {i}")).collect();
                    let mut batch = Vec::new();
                    for (i, body) in want.iter().enumerate() {
                        batch.extend(stanza(&to, round * m + i + 1, body));
                    }
                    let before = bridged_count(&alice.http).await;
                    let began = Instant::now();
                    contact.write(&batch).await;
                    wait_for(&alice, before + m as u64).await;
                    b = m as f64 / began.elapsed().as_secs_f64();
                    check_room(&alice, &room, &want).await;
                }
            }
        }
        plain.push(p);
        as_plain.push(a);
        bridged.push(b);
        println!(
            "  round {}: plain {p:.1} msg/s, appservice user {a:.1} msg/s, through isthmus {b:.1} msg/s ({:.0} % and {:.0} %)",
            round + 1,
            100.0 * b / p,
            100.0 * b / a
        );
    }
    let mut storm_bridge = Vec::new();
    let mut storm_direct = Vec::new();
    // Three storms at most: each is long, and makes its own ratio.
    let storms = if settings.storm > 0 {
        settings.rounds.min(3)
    } else {
        0
    };
    for round in 0..storms {
        let n = settings.storm;
        let mut batch = Vec::new();
        for i in 0..n {
            batch.extend(storm_stanza(&to, run, round, i));
        }
        let before = bridged_count(&alice.http).await;
        let began = Instant::now();
        contact.write(&batch).await;
        wait_for(&alice, before + n as u64).await;
        storm_bridge.push(began.elapsed().as_secs_f64());
        let began = Instant::now();
        direct_storm(&settings.hs, &alice.id, run, round, n).await;
        storm_direct.push(began.elapsed().as_secs_f64());
        println!(
            "  storm {}: {n} new contacts through isthmus {:.1} s, the same requests directly {:.1} s",
            round + 1,
            storm_bridge[round],
            storm_direct[round]
        );
    }
    contact.reader.abort();
    drop(bridge);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // The ratio of each round compares passes run minutes apart at most; its median is
    // what the table gives, beside the medians of the rates.
    let mut to_plain: Vec<f64> = bridged.iter().zip(&plain).map(|(b, p)| b / p).collect();
    let mut to_as: Vec<f64> = bridged.iter().zip(&as_plain).map(|(b, a)| b / a).collect();
    let (rp, ra) = (median(&mut to_plain), median(&mut to_as));
    let (p, a, b) = (
        median(&mut plain),
        median(&mut as_plain),
        median(&mut bridged),
    );
    println!();
    println!(
        "| homeserver | plain client | appservice user | XMPP → isthmus | isthmus / plain | isthmus / appservice user |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {p:.1} msg/s | {a:.1} msg/s | {b:.1} msg/s | {:.0} % | {:.0} % |",
        settings.label,
        100.0 * rp,
        100.0 * ra
    );
    println!(
        "(medians of {} rounds of {m} messages; the ratios are the medians of each round's)",
        settings.rounds
    );
    if !storm_bridge.is_empty() {
        let (b, d) = (median(&mut storm_bridge), median(&mut storm_direct));
        println!();
        println!(
            "| homeserver | new contacts | through isthmus | same requests directly | isthmus / direct |"
        );
        println!("|---|---|---|---|---|");
        println!(
            "| {} | {} | {b:.1} s | {d:.1} s | {:.2} |",
            settings.label,
            settings.storm,
            b / d
        );
        println!("(medians of {} storms)", storm_bridge.len());
    }
}
