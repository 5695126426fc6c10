//! Helpers shared by the integration tests that run the real bridge against the real Synapse
//! that `scripts/test.sh` starts: the bridge process, a small Matrix client for test users,
//! a client for the loopback network's control socket, and the appservice HTTP API.
//!
//! Every wait has a timeout and panics with what it waited for and what it saw instead.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

pub mod hs_proxy;
pub mod sipp;

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The appservice ID, tokens and addresses of `tests/fixtures/bridge.yaml`.
pub const AS_URL: &str = "http://127.0.0.1:29331";
/// The token Synapse presents to the bridge.
pub const HS_TOKEN: &str = "hs_token_isthmus_test_0123456789";
/// The token the bridge presents to Synapse.
pub const AS_TOKEN: &str = "as_token_isthmus_test_0123456789";
/// The bridge bot.
pub const BOT: &str = "@_isthmus_bot:localhost";
/// The loopback network's control socket.
pub const CONTROL: &str = "127.0.0.1:29340";
/// The password the loopback network accepts.
pub const LOOPBACK_PASSWORD: &str = "loopback-password";

/// How long a test waits for the bot's answer to a command.
pub const COMMAND_WAIT: Duration = Duration::from_secs(20);

/// How long [`BridgeProcess::stop`] waits for the bridge to exit: beyond the bridge's own
/// shutdown bound (10 s), by a margin for a loaded machine.
pub const STOP_WAIT: Duration = Duration::from_secs(15);

/// What the bridge logs when its shutdown bound ran out with background tasks still running.
pub const SHUTDOWN_LINGERED: &str = "still running after the shutdown bound";

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bridge.yaml");
const DEFAULT_HOMESERVER: &str = "http://127.0.0.1:18008";

/// Serialises the tests of this process: they all use the same fixed ports.
pub static LOCK: Mutex<()> = Mutex::new(());

/// Held for the whole of a test. A test blocks its own thread (and nothing else) until the
/// previous test is done, so holding this across `.await` is what we want; a test that
/// panicked does not poison the ones after it.
pub struct Serial {
    _guard: MutexGuard<'static, ()>,
}

/// Takes the process-wide test lock.
pub fn serial() -> Serial {
    Serial {
        _guard: LOCK.lock().unwrap_or_else(|e| e.into_inner()),
    }
}

/// A fresh lowercase suffix for user names, message IDs and bodies: unique per process and
/// per run.
pub fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n}", nanos & 0xffff_ffff_ffff)
}

/// The ghost of remote user `id` on the loopback network, escaped as the bridge does.
pub fn ghost(id: &str) -> String {
    let mut local = String::new();
    for &b in id.as_bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' => local.push(char::from(b)),
            b'A'..=b'Z' => {
                local.push('_');
                local.push(char::from(b.to_ascii_lowercase()));
            }
            b'_' => local.push_str("__"),
            _ => local.push_str(&format!("={b:02x}")),
        }
    }
    format!("@_loopback_{local}:localhost")
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HTTP client (plain HTTP only, but reqwest wants a TLS provider anyway).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build an HTTP client")
}

/// The homeserver's base URL; panics when nothing answers there.
pub async fn homeserver() -> String {
    let url = std::env::var("ISTHMUS_TEST_HOMESERVER")
        .unwrap_or_else(|_| DEFAULT_HOMESERVER.to_owned())
        .trim_end_matches('/')
        .to_owned();
    let answer = http()
        .get(format!("{url}/_matrix/client/versions"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => url,
        other => panic!(
            "Synapse is not running at {url}: run the tests with scripts/test.sh, which installs \
             and starts it ({other:?})"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The bridge process
// ---------------------------------------------------------------------------------------------

/// The real `isthmus` binary running `run` on a config derived from the fixture, with a store
/// of its own in a temporary directory.
pub struct BridgeProcess {
    dir: TempDir,
    config: PathBuf,
    child: Option<Child>,
    starts: u32,
    log_path: PathBuf,
}

/// A config edit that gives `user` the permission `level`.
pub fn with_permission(user: &str, level: &str) -> impl FnOnce(String) -> String {
    let entry = format!("  permissions:\n    \"{user}\": {level}\n");
    move |cfg: String| {
        assert!(
            cfg.contains("  permissions:\n"),
            "the fixture has no bridge.permissions section"
        );
        cfg.replacen("  permissions:\n", &entry, 1)
    }
}

impl BridgeProcess {
    /// Starts the bridge on the fixture config with a fresh store; returns once it is ready.
    pub async fn start() -> Self {
        Self::start_with(|cfg| cfg).await
    }

    /// Like [`BridgeProcess::start`], with `edit` applied to the config text first.
    pub async fn start_with(edit: impl FnOnce(String) -> String) -> Self {
        let hs = homeserver().await;
        let dir = tempfile::Builder::new()
            .prefix("isthmus-test-")
            .tempdir()
            .expect("create a temporary directory");
        let fixture = std::fs::read_to_string(FIXTURE).expect("read tests/fixtures/bridge.yaml");
        let store = dir.path().join("store");
        let store_line = "path: target/stack/test-store";
        assert!(
            fixture.contains(store_line),
            "the fixture no longer has `{store_line}`"
        );
        let cfg = fixture
            .replace(store_line, &format!("path: {}", store.display()))
            .replace(&format!("url: {DEFAULT_HOMESERVER}"), &format!("url: {hs}"));
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, edit(cfg)).expect("write the bridge config");
        let log_path = dir.path().join("bridge-1.log");
        drain_appservice_queue(&hs).await;
        let mut bridge = BridgeProcess {
            dir,
            config,
            child: None,
            starts: 0,
            log_path,
        };
        bridge.spawn().await;
        bridge
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "the bridge is already running");
        self.starts += 1;
        self.log_path = self.dir.path().join(format!("bridge-{}.log", self.starts));
        let log = File::create(&self.log_path).expect("create the bridge log");
        let child = Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .arg("-c")
            .arg(&self.config)
            .arg("run")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .expect("start the isthmus binary");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.log().contains("isthmus is ready") {
                return;
            }
            if let Some(status) = self.child_mut().try_wait().expect("check the bridge") {
                self.child = None;
                panic!(
                    "the bridge exited during start-up ({status}); last log lines:\n{}",
                    self.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "the bridge did not log `isthmus is ready` within 60 s; last log lines:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("the bridge is not running")
    }

    /// The process ID of the running bridge.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the bridge is not running").id()
    }

    /// Whether the bridge exited by itself, and how (it then counts as stopped).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("check the bridge")?;
        self.child = None;
        Some(status)
    }

    /// Kills the bridge with SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the bridge with SIGTERM and waits until it exited: up to
    /// [`STOP_WAIT`], longer than the bridge's own shutdown bound, so that a bridge that
    /// gave up on its tasks at the bound is seen exiting, and said so.
    pub async fn stop(&mut self) {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("check the bridge") {
                self.child = None;
                assert!(
                    status.success(),
                    "the bridge exited with {status} on SIGTERM{}; last log lines:\n{}",
                    self.lingering_note(),
                    self.log_tail(40)
                );
                return;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "the bridge did not exit within {STOP_WAIT:?} of SIGTERM{}; last log lines:\n{}",
                    self.lingering_note(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the bridge's log says that its shutdown bound ran out with tasks still
    /// running ([`SHUTDOWN_LINGERED`]).
    pub fn lingered(&self) -> bool {
        self.log().contains(SHUTDOWN_LINGERED)
    }

    /// For failure messages: the bridge's own shutdown warning, when its log has it.
    fn lingering_note(&self) -> String {
        self.log()
            .lines()
            .find(|l| l.contains(SHUTDOWN_LINGERED))
            .map(|l| format!(" (its shutdown bound ran out: {l})"))
            .unwrap_or_default()
    }

    /// Starts the bridge again on the same config and store (stopping it first with SIGTERM
    /// if it still runs); returns once it is ready. The log starts afresh.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        self.spawn().await;
    }

    /// The bridge's store folder (`database.path`).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The log of the current (or last) process.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log of the current process holds `needle` at least `times` times.
    pub async fn wait_log(&self, needle: &str, times: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.log().matches(needle).count();
            if seen >= times {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "waited {timeout:?} for the bridge to log {needle:?} {times} times (seen \
                     {seen}); last log lines:\n{}",
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `n` lines of [`BridgeProcess::log`].
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let r = http()
            .get(format!("{AS_URL}/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert!(r.status().is_success(), "GET /metrics: {}", r.status());
        r.text().await.expect("metrics body")
    }

    /// The value of metric `name` with `labels` now (see [`metric_value`]).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // Keep the logs of every start: the temporary directory goes away with `self`.
            let run = unique();
            let mut kept = Vec::new();
            for n in 1..=self.starts {
                let from = self.dir.path().join(format!("bridge-{n}.log"));
                let to = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                    .join(format!("bridge-{run}-start{n}.log"));
                if std::fs::copy(&from, &to).is_ok() {
                    kept.push(to.display().to_string());
                }
            }
            eprintln!(
                "--- last lines of the bridge log (whole logs kept in {}):\n{}",
                kept.join(", "),
                self.log_tail(40)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// One sample line of the Prometheus text format: `name{label="value",...} number`.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Reads one sample line; `None` for comments, blank lines and lines it cannot read.
fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        // Label values are quoted, with `\\`, `\"` and `\n` escaped.
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The value of metric `name` in the Prometheus text `text`: the sum over its series whose
/// labels include every `(label, value)` of `labels` (`&[]`: all of its series). 0 when no
/// series matches, as for a counter that was never incremented (the exporter writes no
/// series for it yet). Histograms and summaries are read by their series' names
/// (`bridge_txn_seconds_count`).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(parse_sample)
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .fold(0.0, |sum, s| sum + s.value)
}

/// The sample lines of metric `name` in `text`, for panic messages.
pub fn metric_lines(text: &str, name: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| parse_sample(l).is_some_and(|s| s.name == name))
        .collect();
    if lines.is_empty() {
        format!("  (no series of {name})")
    } else {
        lines
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Waits until metric `name` with `labels` (see [`metric_value`]) satisfies `pred`, which
/// `what` describes; returns the value. Panics after `timeout` with the series it saw.
pub async fn wait_metric_where(
    bridge: &BridgeProcess,
    name: &str,
    labels: &[(&str, &str)],
    what: &str,
    timeout: Duration,
    pred: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let text = bridge.metrics().await;
        let value = metric_value(&text, name, labels);
        if pred(value) {
            return value;
        }
        if Instant::now() > deadline {
            panic!(
                "waited {timeout:?} for {name} {labels:?} to be {what}; it is {value}:\n{}",
                metric_lines(&text, name)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until metric `name` with `labels` (see [`metric_value`]) reads `expected`.
///
/// A gauge may pass through other values on the way. A counter that is not there yet may still
/// go past it later: to prove something was counted once, read it again after a later event of
/// the same queue (a sentinel).
pub async fn wait_metric(
    bridge: &BridgeProcess,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
    timeout: Duration,
) {
    wait_metric_where(bridge, name, labels, &expected.to_string(), timeout, |v| {
        v == expected
    })
    .await;
}

/// Waits until `n` logins of `network` are in `state` (a bridge-wide link, such as the XMPP
/// component or the SIP trunk, counts as one).
pub async fn wait_logins(bridge: &BridgeProcess, network: &str, state: &str, n: u32) {
    wait_metric(
        bridge,
        "logins",
        &[("network", network), ("state", state)],
        f64::from(n),
        Duration::from_secs(30),
    )
    .await;
}

/// Gives the test that starts next an appservice queue nobody else can disturb.
///
/// The homeserver sends the bridge's transactions one at a time, in order, and keeps those an
/// earlier test's bridge did not acknowledge (it was killed, or stopped mid-transaction): it
/// retries them with a backoff of up to minutes, to whatever listens on the bridge's port
/// next. So an earlier test's events could reach, and hold up, the next test's bridge. Before
/// the bridge starts, this answers on its port and drops every transaction, makes the
/// homeserver retry at once (an appservice ping), then has the bot create a room and leave it
/// (fence events, queued after everything older) and waits until the leave came through.
///
/// The leave is the last event of the fence and is awaited while this still answers: an event
/// sent after this stopped answering and before the bridge listens would fail, mark the
/// appservice down and put its delivery on the homeserver's backoff timer. (Synapse then also
/// has a window, as its recoverer marks the service up again, in which a new event is stored
/// but never sent: the next test's events would be the ones caught in it.)
async fn drain_appservice_queue(hs: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = AS_URL.trim_start_matches("http://");
    // The previous bridge released the port when it exited; a lingering socket may hold it
    // for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the bridge's port {addr} stays busy: {e}"),
        }
    };
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel(Vec::<Value>::new());
    let server = tokio::spawn(async move {
        // Every connection ends with the server: a kept-alive one would otherwise go on taking
        // the homeserver's transactions after the bridge started.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen_tx.clone();
            connections.spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Value =
                        serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or_default();
                    buf.drain(..end + 4 + len);
                    if let Some(events) = body["events"].as_array() {
                        seen.send_modify(|all| all.extend(events.iter().cloned()));
                    }
                    let answer = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    let _ = sock.write_all(answer.as_bytes()).await;
                    return;
                }
            });
        }
    });
    let client = http();
    let bot_local = BOT
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default();
    // The bot may not exist yet on a fresh homeserver; "in use" is fine.
    let _ = client
        .post(format!("{hs}/_matrix/client/v3/register"))
        .bearer_auth(AS_TOKEN)
        .json(&json!({"type": "m.login.application_service", "username": bot_local}))
        .send()
        .await;
    let _ = client
        .post(format!(
            "{hs}/_matrix/client/v1/appservice/isthmus-test/ping"
        ))
        .bearer_auth(AS_TOKEN)
        .json(&json!({}))
        .send()
        .await;
    let created: Value = client
        .post(format!("{hs}/_matrix/client/v3/createRoom"))
        .bearer_auth(AS_TOKEN)
        .json(&json!({"preset": "private_chat", "name": "fence"}))
        .send()
        .await
        .expect("create the fence room")
        .json()
        .await
        .expect("the fence room's answer");
    let room = created["room_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no fence room: {created}"))
        .to_owned();
    // The bot leaves the fence room (it would pile up rooms across tests otherwise); the
    // leave is the fence's last event.
    let left = client
        .post(format!("{hs}/_matrix/client/v3/rooms/{}/leave", enc(&room)))
        .bearer_auth(AS_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .expect("leave the fence room");
    assert!(
        left.status().is_success(),
        "the bot could not leave the fence room: {}",
        left.status()
    );
    // The borrow `wait_for` returns is let go at once: the server's next `send_modify` waits
    // for it.
    let arrived = tokio::time::timeout(
        Duration::from_secs(90),
        seen_rx.wait_for(|events| {
            events.iter().any(|e| {
                e["room_id"] == room.as_str()
                    && e["type"] == "m.room.member"
                    && e["content"]["membership"] == "leave"
            })
        }),
    )
    .await
    .is_ok_and(|seen| seen.is_ok());
    server.abort();
    let _ = server.await;
    assert!(
        arrived,
        "the homeserver did not deliver the fence events within 90 s: its appservice queue is stuck"
    );
}

// ---------------------------------------------------------------------------------------------
// The appservice API, as the homeserver would call it
// ---------------------------------------------------------------------------------------------

/// An answer of the bridge's HTTP server: status and JSON body (`Null` when not JSON).
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body, parsed.
    pub json: Value,
    /// The body, as text.
    pub text: String,
}

/// Calls the bridge's HTTP server at `path`, with `Authorization: Bearer token` when given.
pub async fn appservice(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
    let mut req = http().request(method.clone(), format!("{AS_URL}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, json, text }
}

// ---------------------------------------------------------------------------------------------
// A Matrix user
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct SyncState {
    since: Option<String>,
    handed_out: HashSet<String>,
}

/// A registered Matrix user with an access token, speaking the client-server API.
pub struct MatrixUser {
    /// Full user ID.
    pub user_id: String,
    /// The localpart.
    pub localpart: String,
    token: String,
    hs: String,
    http: reqwest::Client,
    sync: Mutex<SyncState>,
}

impl MatrixUser {
    /// Registers a new user whose localpart is `prefix` plus a unique suffix.
    pub async fn register(prefix: &str) -> MatrixUser {
        Self::register_as(&format!("{prefix}{}", unique())).await
    }

    /// Registers a new user with exactly this localpart.
    pub async fn register_as(localpart: &str) -> MatrixUser {
        let hs = homeserver().await;
        let http = http();
        let body = json!({
            "username": localpart,
            "password": "test-password-1",
            "auth": {"type": "m.login.dummy"},
        });
        let r = http
            .post(format!("{hs}/_matrix/client/v3/register"))
            .json(&body)
            .send()
            .await
            .expect("POST /register");
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "registering {localpart}: {status} {v}");
        MatrixUser {
            user_id: v["user_id"].as_str().expect("user_id").to_owned(),
            localpart: localpart.to_owned(),
            token: v["access_token"].as_str().expect("access_token").to_owned(),
            hs,
            http,
            sync: Mutex::default(),
        }
    }

    /// Calls the client-server API at `path` (below `/_matrix/client/v3`); returns status and
    /// body.
    /// The position of this user's sync stream now, to wait for what comes after it.
    pub async fn sync_now(&self) -> String {
        self.ok("GET", "/sync?timeout=0", None).await["next_batch"]
            .as_str()
            .expect("next_batch")
            .to_owned()
    }

    /// Follows the sync stream from `since` until `user` shows as typing in `room`. (An
    /// initial sync does not reliably carry typing, hence the incremental one.)
    pub async fn wait_typing(&self, room: &str, user: &str, mut since: String, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let sync = self
                .ok(
                    "GET",
                    &format!("/sync?timeout=1000&since={}", enc(&since)),
                    None,
                )
                .await;
            since = sync["next_batch"].as_str().unwrap_or(&since).to_owned();
            let typing = sync["rooms"]["join"][room]["ephemeral"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| {
                    e["type"] == "m.typing"
                        && e["content"]["user_ids"]
                            .as_array()
                            .is_some_and(|u| u.iter().any(|x| x == user))
                });
            if typing {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{user} never showed as typing in {room} within {timeout:?}"
            );
        }
    }

    /// Uploads a file to the homeserver; returns its `mxc://` URI.
    pub async fn upload(&self, bytes: Vec<u8>, content_type: &str) -> String {
        let r = self
            .http
            .post(format!("{}/_matrix/media/v3/upload", self.hs))
            .bearer_auth(&self.token)
            .header("Content-Type", content_type)
            .body(bytes)
            .send()
            .await
            .expect("upload");
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "upload: {status} {v}");
        v["content_uri"].as_str().expect("content_uri").to_owned()
    }

    /// Downloads a file through authenticated media.
    pub async fn download(&self, mxc: &str) -> Vec<u8> {
        let path = mxc.strip_prefix("mxc://").expect("an mxc URI");
        let r = self
            .http
            .get(format!(
                "{}/_matrix/client/v1/media/download/{path}",
                self.hs
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("download");
        assert!(r.status().is_success(), "download {mxc}: {}", r.status());
        r.bytes().await.expect("body").to_vec()
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut req = self
            .http
            .request(m, format!("{}/_matrix/client/v3{path}", self.hs))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} {method} {path}: {e}", self.user_id));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Like [`MatrixUser::call`], but panics unless the answer is a success.
    pub async fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{} {method} {path}: {status} {v}",
            self.user_id
        );
        v
    }

    /// Creates a direct chat (`is_direct`, preset `trusted_private_chat`) inviting `invitee`.
    pub async fn create_dm(&self, invitee: &str) -> String {
        let body = json!({
            "invite": [invitee],
            "is_direct": true,
            "preset": "trusted_private_chat",
        });
        let v = self.ok("POST", "/createRoom", Some(&body)).await;
        v["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Creates a private room (not a direct chat) inviting `invites`.
    pub async fn create_room(&self, invites: &[&str]) -> String {
        let body = json!({"invite": invites, "preset": "private_chat"});
        let v = self.ok("POST", "/createRoom", Some(&body)).await;
        v["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Joins a room (accepting an invite if there is one).
    pub async fn join(&self, room: &str) {
        self.ok("POST", &format!("/join/{}", enc(room)), Some(&json!({})))
            .await;
    }

    /// Invites `user` into `room`.
    pub async fn invite(&self, room: &str, user: &str) {
        self.ok(
            "POST",
            &format!("/rooms/{}/invite", enc(room)),
            Some(&json!({"user_id": user})),
        )
        .await;
    }

    /// Sends an event of type `kind`; returns its event ID.
    pub async fn send(&self, room: &str, kind: &str, content: &Value) -> String {
        let path = format!("/rooms/{}/send/{}/t{}", enc(room), enc(kind), unique());
        let v = self.ok("PUT", &path, Some(content)).await;
        v["event_id"].as_str().expect("event_id").to_owned()
    }

    /// Sends a plain text message; returns its event ID.
    pub async fn send_text(&self, room: &str, body: &str) -> String {
        self.send(
            room,
            "m.room.message",
            &json!({"msgtype": "m.text", "body": body}),
        )
        .await
    }

    /// Edits `event_id` (an `m.replace` with the new body); returns the edit's event ID.
    pub async fn edit(&self, room: &str, event_id: &str, new_body: &str) -> String {
        let content = json!({
            "msgtype": "m.text",
            "body": format!("* {new_body}"),
            "m.new_content": {"msgtype": "m.text", "body": new_body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        });
        self.send(room, "m.room.message", &content).await
    }

    /// Redacts `event_id`; returns the redaction's event ID.
    pub async fn redact(&self, room: &str, event_id: &str) -> String {
        let path = format!(
            "/rooms/{}/redact/{}/t{}",
            enc(room),
            enc(event_id),
            unique()
        );
        let v = self.ok("PUT", &path, Some(&json!({}))).await;
        v["event_id"].as_str().expect("event_id").to_owned()
    }

    /// Reacts to `event_id` with `key`; returns the reaction's event ID.
    pub async fn react(&self, room: &str, event_id: &str, key: &str) -> String {
        let content = json!({"m.relates_to": {
            "rel_type": "m.annotation", "event_id": event_id, "key": key,
        }});
        self.send(room, "m.reaction", &content).await
    }

    /// The latest (up to 100) timeline events of `room`, newest first.
    pub async fn messages(&self, room: &str) -> Vec<Value> {
        let v = self
            .ok(
                "GET",
                &format!("/rooms/{}/messages?dir=b&limit=100", enc(room)),
                None,
            )
            .await;
        v["chunk"].as_array().cloned().unwrap_or_default()
    }

    /// One event of `room`.
    pub async fn event(&self, room: &str, event_id: &str) -> Value {
        self.ok(
            "GET",
            &format!("/rooms/{}/event/{}", enc(room), enc(event_id)),
            None,
        )
        .await
    }

    /// The users joined to `room`.
    pub async fn joined_members(&self, room: &str) -> Vec<String> {
        let v = self
            .ok("GET", &format!("/rooms/{}/joined_members", enc(room)), None)
            .await;
        v["joined"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The display name of `user`, if it has one.
    pub async fn displayname_of(&self, user: &str) -> Option<String> {
        let (status, v) = self
            .call("GET", &format!("/profile/{}", enc(user)), None)
            .await;
        if status != 200 {
            return None;
        }
        v["displayname"].as_str().map(str::to_owned)
    }

    /// Waits until an event of `room` matches `pred`; returns it.
    /// The room's current state event of type `event_type` (the first, whatever its state
    /// key); panics naming the room's state when there is none.
    pub async fn state_event(&self, room: &str, event_type: &str) -> Value {
        let state = self
            .ok("GET", &format!("/rooms/{}/state", enc(room)), None)
            .await;
        state
            .as_array()
            .expect("state list")
            .iter()
            .find(|e| e["type"] == event_type)
            .unwrap_or_else(|| panic!("no {event_type} state in {room}: {state}"))
            .clone()
    }

    pub async fn wait_for_event(
        &self,
        room: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.messages(room).await;
            if let Some(e) = events.iter().rev().find(|e| pred(e)) {
                return e.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "waited {timeout:?} in {room} for {what}; the room holds (newest first):\n{}",
                    summarize(&events)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the first `m.notice` from `from` that is newer than `after` in `room`;
    /// returns its body.
    pub async fn wait_reply(
        &self,
        room: &str,
        after: &str,
        from: &str,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.messages(room).await;
            // Newest first: the reply is before `after` in this list.
            if let Some(pos) = events.iter().position(|e| e["event_id"] == after) {
                // The bot's notice that it lacks power in the room comes on its own, not as
                // the answer to anything: it is passed over.
                let reply = events[..pos].iter().rev().find(|e| {
                    e["sender"] == from
                        && e["type"] == "m.room.message"
                        && e["content"]["msgtype"] == "m.notice"
                        && !e["content"]["body"].as_str().is_some_and(|b| {
                            b.starts_with("⚠ I could not") && b.contains("power level")
                        })
                });
                if let Some(r) = reply {
                    return r["content"]["body"].as_str().unwrap_or("").to_owned();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "waited {timeout:?} in {room} for a notice from {from} after {after}; the \
                     room holds (newest first):\n{}",
                    summarize(&events)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for an invite this user has not been handed yet; returns the room ID.
    pub async fn wait_for_invite(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let filter = enc(r#"{"room":{"timeline":{"limit":1}},"presence":{"types":[]}}"#);
        let mut seen = Vec::new();
        loop {
            let since = self.sync.lock().expect("sync state").since.clone();
            let mut path = format!("/sync?timeout=1000&filter={filter}");
            if let Some(s) = since {
                path.push_str(&format!("&since={}", enc(&s)));
            }
            let v = self.ok("GET", &path, None).await;
            let mut state = self.sync.lock().expect("sync state");
            state.since = v["next_batch"].as_str().map(str::to_owned);
            if let Some(invites) = v["rooms"]["invite"].as_object() {
                for room in invites.keys() {
                    seen.push(room.clone());
                    if state.handed_out.insert(room.clone()) {
                        return room.clone();
                    }
                }
            }
            drop(state);
            if Instant::now() > deadline {
                panic!(
                    "{} waited {timeout:?} for an invite; invites seen (all handed out \
                     before): {seen:?}",
                    self.user_id
                );
            }
        }
    }

    /// Waits until `user` is joined to `room`.
    pub async fn wait_joined(&self, room: &str, user: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let members = self.joined_members(room).await;
            if members.iter().any(|m| m == user) {
                return;
            }
            if Instant::now() > deadline {
                panic!("waited {timeout:?} for {user} to join {room}; joined: {members:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One line per event: sender, type and body, for panic messages.
pub fn summarize(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            let detail = match e["content"]["body"].as_str() {
                Some(b) => format!("{b:?}"),
                None => e["content"].to_string(),
            };
            format!(
                "  {} {} {} {detail}",
                e["event_id"].as_str().unwrap_or("?"),
                e["sender"].as_str().unwrap_or("?"),
                e["type"].as_str().unwrap_or("?"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// The loopback network's control socket
// ---------------------------------------------------------------------------------------------

/// A client of the loopback control socket (JSON lines).
pub struct Control {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
    /// Every operation seen so far (pushed, or read from the `sent` log), by arrival.
    seen: Vec<Value>,
    seen_ids: HashSet<String>,
    /// Sends announced as they begin (while the network is `slow`), by arrival.
    sending: Vec<Value>,
}

impl Control {
    /// Connects, retrying for 10 s.
    pub async fn connect() -> Control {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match TcpStream::connect(CONTROL).await {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    panic!("cannot connect to the loopback control socket {CONTROL}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let (read, write) = stream.into_split();
        Control {
            lines: BufReader::new(read).lines(),
            write,
            seen: Vec::new(),
            seen_ids: HashSet::new(),
            sending: Vec::new(),
        }
    }

    fn note(&mut self, op: Value) {
        let id = op["remote_id"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| op.to_string());
        if self.seen_ids.insert(id) {
            self.seen.push(op);
        }
    }

    /// Reads one line; keeps a pushed operation and returns a reply. `None` on timeout.
    async fn read(&mut self, timeout: Duration) -> Option<Value> {
        let line = match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Err(_) => return None,
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!("the loopback control socket closed"),
            Ok(Err(e)) => panic!("reading the loopback control socket: {e}"),
        };
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("control socket sent a line that is not JSON ({e}): {line}")
        });
        if let Some(op) = v.get("sent").filter(|s| s.is_object()) {
            self.note(op.clone());
            return None;
        }
        if let Some(op) = v.get("sending") {
            self.sending.push(op.clone());
            return None;
        }
        Some(v)
    }

    /// Sends a request; returns the `reply` object.
    pub async fn request(&mut self, req: Value) -> Value {
        let line = format!("{req}\n");
        self.write
            .write_all(line.as_bytes())
            .await
            .expect("write to the control socket");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("no reply to {req} within 30 s");
            }
            if let Some(v) = self.read(left).await {
                match v.get("reply") {
                    Some(reply) => return reply.clone(),
                    None => panic!("unexpected line on the control socket: {v}"),
                }
            }
        }
    }

    /// Sends a request and panics unless the reply says `ok`.
    pub async fn ok(&mut self, req: Value) -> Value {
        let reply = self.request(req.clone()).await;
        assert_eq!(reply["ok"], true, "request {req} failed: {reply}");
        reply
    }

    /// Hands a remote event to the bridge; returns once the bridge stored it.
    pub async fn inject(&mut self, event: Value) {
        self.ok(json!({"op": "inject", "event": event})).await;
    }

    /// Holds every send to the network until [`Control::resume`].
    pub async fn pause(&mut self) {
        self.ok(json!({"op": "pause"})).await;
    }

    /// Lets sends through again.
    pub async fn resume(&mut self) {
        self.ok(json!({"op": "resume"})).await;
    }

    /// Makes the next send fail as undeliverable with `message`.
    pub async fn fail_next_undeliverable(&mut self, message: &str) {
        self.ok(json!({"op": "fail_next", "error": "undeliverable", "message": message}))
            .await;
    }

    /// Makes the network fail its next `count` sends with `kind` (`transient`, `down`, ...).
    pub async fn fail_next(&mut self, kind: &str, count: u32) {
        self.ok(json!({"op": "fail_next", "error": kind, "message": format!("injected {kind} failure"), "count": count}))
            .await;
    }

    /// Every operation the bridge process asked of the network since it started.
    pub async fn sent_log(&mut self) -> Vec<Value> {
        let reply = self.ok(json!({"op": "sent"})).await;
        let ops = reply["sent"].as_array().cloned().unwrap_or_default();
        for op in &ops {
            self.note(op.clone());
        }
        ops
    }

    /// Makes every message send take `ms` milliseconds from now on (a slow network), each
    /// announced as it begins (see [`Control::wait_sending`]).
    pub async fn slow(&mut self, ms: u64) {
        self.ok(json!({"op": "slow", "ms": ms})).await;
    }

    /// Waits until a send matching `pred` began (announced while the network is slow).
    pub async fn wait_sending(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !self.sending.iter().any(&pred) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("waited {timeout:?} for the network to begin sending {what}");
            }
            if let Some(v) = self.read(left).await {
                panic!("unexpected line on the control socket: {v}");
            }
        }
    }

    /// Waits for an operation matching `pred` (including ones seen before the call, and
    /// ones done before this client connected); returns it.
    pub async fn wait_sent(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(op) = self.seen.iter().find(|op| pred(op)) {
                return op.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Last chance: the full log, in case a push was missed.
                self.sent_log().await;
                if let Some(op) = self.seen.iter().find(|op| pred(op)) {
                    return op.clone();
                }
                panic!(
                    "waited {timeout:?} for the network to see {what}; it saw:\n{}",
                    self.seen
                        .iter()
                        .map(|op| format!("  {op}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            let before = self.seen.len();
            if let Some(v) = self.read(left.min(Duration::from_millis(500))).await {
                panic!("unexpected line on the control socket: {v}");
            }
            if self.seen.len() == before {
                // Quiet for a while: also read the log, which holds operations done before
                // this client connected (e.g. replayed at start-up).
                self.sent_log().await;
            }
        }
    }
}

/// A remote event from `sender` ("Bob") in chat `chat`, for Matrix user `receiver`.
pub fn remote_event(
    chat: &str,
    chat_kind: &str,
    receiver: &str,
    sender: &str,
    kind: Value,
) -> Value {
    let mut name = sender.to_owned();
    if let Some(first) = name.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    json!({
        "chat": chat,
        "chat_kind": chat_kind,
        "receiver": receiver,
        "sender": sender,
        "sender_name": name,
        "kind": kind,
    })
}

/// A direct text message from remote user `from` to `receiver`.
pub fn direct_message(from: &str, receiver: &str, id: &str, body: &str) -> Value {
    remote_event(
        from,
        "direct",
        receiver,
        from,
        json!({"type": "message", "id": id, "content": {"kind": "text", "body": body}}),
    )
}

/// Whether `op` is a `message` operation with this body.
pub fn is_message_op(op: &Value, body: &str) -> bool {
    op["op"] == "message" && op["message"]["content"]["body"] == body
}

/// Whether `e` is an `m.room.message` from `sender` with this body.
pub fn is_text_from(e: &Value, sender: &str, body: &str) -> bool {
    e["type"] == "m.room.message" && e["sender"] == sender && e["content"]["body"] == body
}

/// Sends `text` and returns the bot's notice that answers it.
pub async fn command(user: &MatrixUser, room: &str, text: &str) -> String {
    let sent = user.send_text(room, text).await;
    user.wait_reply(room, &sent, BOT, COMMAND_WAIT).await
}

/// Opens the user's management room (a direct chat with the bot) and waits for the welcome.
pub async fn management_room(user: &MatrixUser) -> String {
    let room = user.create_dm(BOT).await;
    user.wait_joined(&room, BOT, COMMAND_WAIT).await;
    user.wait_for_event(&room, "the bot's welcome notice", COMMAND_WAIT, |e| {
        e["sender"] == BOT
            && e["content"]["msgtype"] == "m.notice"
            && e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("management room"))
    })
    .await;
    room
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where the scripts keep the test servers' files (`ISTHMUS_STACK`, else `target/stack`).
pub fn stack_dir() -> String {
    std::env::var("ISTHMUS_STACK")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/stack").to_owned())
}

/// Calls the provisioning API as `user` with `secret`; returns the status and the JSON body.
pub async fn provision(
    method: &str,
    path: &str,
    user: &str,
    body: Option<Value>,
    secret: &str,
) -> (u16, Value) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = format!(
        "{AS_URL}/_matrix/provision/v3{path}{sep}user_id={}",
        enc(user)
    );
    let client = http();
    let mut req = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    }
    .bearer_auth(secret);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("provisioning request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The rooms a ghost is in, as the homeserver tells the appservice (none when the ghost was
/// never registered).
pub async fn ghost_rooms(ghost: &str) -> Vec<String> {
    let hs = homeserver().await;
    let r = http()
        .get(format!(
            "{hs}/_matrix/client/v3/joined_rooms?user_id={}",
            enc(ghost)
        ))
        .bearer_auth(AS_TOKEN)
        .send()
        .await
        .expect("joined_rooms");
    if !r.status().is_success() {
        return Vec::new();
    }
    let v: serde_json::Value = r.json().await.expect("joined_rooms JSON");
    v["joined_rooms"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A ghost's presence as the homeserver shows it: `(presence, status_msg)`, asked as the
/// ghost itself.
pub async fn ghost_presence(ghost: &str) -> (String, Option<String>) {
    let hs = homeserver().await;
    let v: Value = http()
        .get(format!(
            "{hs}/_matrix/client/v3/presence/{}/status?user_id={}",
            enc(ghost),
            enc(ghost)
        ))
        .bearer_auth(AS_TOKEN)
        .send()
        .await
        .expect("ask the ghost's presence")
        .json()
        .await
        .expect("the presence answer");
    (
        v["presence"].as_str().unwrap_or_default().to_owned(),
        v["status_msg"].as_str().map(str::to_owned),
    )
}

/// Waits at most `wait` until the homeserver shows `ghost` with presence `state`.
pub async fn ghost_presence_within(ghost: &str, state: &str, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let (now, _) = ghost_presence(ghost).await;
        if now == state {
            return;
        }
        assert!(Instant::now() < deadline, "{ghost} is {now}, not {state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
