//! End-to-end capacity benchmark: the real release `isthmus` binary, run as a child process,
//! between a stand-in homeserver and a stand-in XMPP server, both in this process and both
//! answering at once, so that what limits the figures is the bridge (and the two cores it
//! shares with the stand-ins). Run with:
//!
//!     cargo bench --bench capacity
//!
//! - The stand-in homeserver (axum on 127.0.0.1) speaks the client-server API calls the bridge
//!   makes (register, whoami, versions, the appservice ping, profiles, presence, createRoom,
//!   joins, state, send, ...) and counts them by endpoint; an endpoint it does not know is
//!   printed once and answered `{}`. It pushes transactions to the bridge as Synapse does:
//!   `PUT /_matrix/app/v1/transactions/{txn}`, one in flight, at most 100 events each,
//!   including the echo of every message a ghost sent (the bridge drops those at ingest).
//!   It pushes nothing else: not the state events of the rooms it creates, and no membership
//!   changes (the Matrix user never accepts the invites; the bridge does not wait for that).
//! - The stand-in XMPP server accepts the bridge's XEP-0114 component connection on a real
//!   TCP socket, writes `<message type='chat'>` stanzas from contacts `c{i}@remote.bench.test`
//!   to the Matrix user's gateway address, reads what the bridge writes, and answers every
//!   `<iq type='get'|'set'>` with an error so that nothing waits for a timeout.
//!
//! For each portal count N (1, 10, 100) it runs:
//!
//! 1. warm-up: each new contact sends one message, so the bridge creates the ghost and the
//!    direct-chat portal; homeserver requests and bridge CPU per new portal;
//! 2. XMPP → Matrix: M messages round-robin over the N contacts, at most `CAPACITY_WINDOW`
//!    written and not yet delivered (a `send` at the homeserver); delivered messages per
//!    second, latency from the stanza written to the `send` received (under this flood the
//!    latency is mostly the window's queue: about window ÷ rate);
//! 3. Matrix → XMPP: M `m.room.message` events from the Matrix user round-robin over the N
//!    portal rooms, pushed in transactions; latency from the transaction sent to the stanza
//!    read;
//! 4. after each flood, a paced pass at half the measured rate for `CAPACITY_LATENCY_SECS`:
//!    the added latency when the bridge is not saturated.
//!
//! After each warm-up the RSS is read again `CAPACITY_SETTLE_SECS` later (12 s; 0 in the smoke
//! run): what a new ghost and portal cost, once the allocator gave back what the burst freed.
//!
//! `CAPACITY_IDLE` sets the bridge's `portal_idle_seconds` (10, the default).
//!
//! With `CAPACITY_COLD=N` the store is first filled with N idle direct-chat portals and their
//! ghosts (written through the library's store API, as a bridge that has run for a while
//! holds them): "bridge ready in" and the RSS after it are then the cold start with N portals.
//!
//! Bridge CPU is the child's utime + stime from `/proc/<pid>/stat` (the counters `getrusage`
//! reads), sampled before and after each phase; the benchmark process's own CPU (stand-ins and
//! load generators) is printed next to it, since both share the machine, and so is the CPU of
//! every other process (from `/proc/stat`): on a shared machine, other people's work. RSS is
//! the child's `VmRSS` after each phase.
//!
//! The bridge's configuration is a plain gateway configuration except for `bridge.limits`,
//! raised so that one remote domain may open every portal of the warm-up at once.
//!
//! Settings (environment): `CAPACITY_PORTALS` (default `1,10,100`), `CAPACITY_MESSAGES`
//! (per direction and portal count, default 10000), `CAPACITY_WINDOW` (default 1000),
//! `CAPACITY_LATENCY_SECS` (default 3; 0 skips the paced passes), `CAPACITY_LOG` (the
//! bridge's `logging.level`, default `info`), `CAPACITY_ECHO` (0 turns the echoes off),
//! `CAPACITY_BIN` (another `isthmus` binary), `CAPACITY_KEEP` (1 keeps the temporary folder
//! with the bridge's log).

#[path = "support/env.rs"]
mod env;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

const DOMAIN: &str = "bench.test";
const COMPONENT: &str = "matrix.bench.test";
const CONTACT_DOMAIN: &str = "remote.bench.test";
const USER: &str = "@alice:bench.test";
const USER_JID: &str = "alice@matrix.bench.test";
const BOT: &str = "@_isthmus_bot:bench.test";
const AS_TOKEN: &str = "bench_as_token";
const HS_TOKEN: &str = "bench_hs_token";
const SECRET: &str = "bench_component_secret";
const STREAM_ID: &str = "capacity-bench-stream";
/// Most events in one transaction, as Synapse sends them.
const EVENTS_PER_TXN: usize = 100;
/// A phase that makes no progress for this long is given up.
const STALL: Duration = Duration::from_secs(30);
/// Linux reports process times in USER_HZ ticks: 100 on x86 and ARM.
const TICKS_PER_SECOND: f64 = 100.0;
/// Chat-like padding after the sequence marker of every message body.
const PADDING: &str = "hello from the capacity benchmark, a line about the length of chat";

// ----- settings -----

struct Settings {
    portals: Vec<usize>,
    messages: usize,
    window: usize,
    latency_secs: f64,
    log_level: String,
    echo: bool,
    keep: bool,
    bin: PathBuf,
    cold: usize,
    settle_secs: u64,
}

impl Settings {
    /// The settings from the environment. Without `--bench` on the command line (the
    /// benchmark run by `cargo test --all-targets`, as the test command does, rather than by
    /// `cargo bench`) the defaults are a short smoke run: 1 and 10 portals, 300 messages each
    /// way, no paced pass, so the test suite proves the benchmark works without timing it.
    fn from_env() -> Self {
        let smoke = env::smoke();
        use env::{num, var};
        let mut portals: Vec<usize> = var("CAPACITY_PORTALS")
            .unwrap_or_else(|| if smoke { "1,10" } else { "1,10,100" }.into())
            .split(',')
            .map(|p| {
                p.trim()
                    .parse()
                    .expect("CAPACITY_PORTALS: numbers separated by commas")
            })
            .filter(|&n| n > 0)
            .collect();
        portals.sort_unstable();
        portals.dedup();
        Self {
            portals,
            messages: num("CAPACITY_MESSAGES", if smoke { 300 } else { 10000 }).max(1),
            window: num("CAPACITY_WINDOW", 1000).max(1),
            latency_secs: var("CAPACITY_LATENCY_SECS").map_or(if smoke { 0.0 } else { 3.0 }, |v| {
                v.trim()
                    .parse()
                    .expect("CAPACITY_LATENCY_SECS must be a number")
            }),
            log_level: var("CAPACITY_LOG").unwrap_or_else(|| "info".into()),
            echo: var("CAPACITY_ECHO").is_none_or(|v| v != "0"),
            keep: var("CAPACITY_KEEP").is_some_and(|v| v == "1"),
            bin: var("CAPACITY_BIN").map_or_else(
                || PathBuf::from(env!("CARGO_BIN_EXE_isthmus")),
                PathBuf::from,
            ),
            // The smoke run starts on a small filled store, so the generator is exercised.
            cold: num("CAPACITY_COLD", if smoke { 1000 } else { 0 }),
            // RSS is read again this long after each warm-up: the allocator gives back what
            // the burst freed within seconds, and what stays is what the portals cost.
            settle_secs: num("CAPACITY_SETTLE_SECS", if smoke { 0 } else { 12 }) as u64,
        }
    }
}

// ----- process figures -----

/// utime + stime from the text of a `stat` file of `/proc`, in seconds.
fn stat_seconds(stat: &str) -> f64 {
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) as f64 / TICKS_PER_SECOND
}

/// utime + stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    stat_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// utime + stime of the live threads of a process, in seconds, summed by thread name
/// (numbered names such as `worker-3` count as one).
fn thread_seconds(pid: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close]
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches(['-', '_', ' ', '#'])
            .to_owned();
        *out.entry(name).or_default() += stat_seconds(&stat);
    }
    out
}

/// `VmRSS` of a process, in kB.
fn rss_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time all processes of the machine used (every core), in seconds, from `/proc/stat`.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy as f64 / TICKS_PER_SECOND
}

/// CPU of the bridge (and of its threads), of this process and of the whole machine at one
/// moment.
struct CpuMark {
    bridge: f64,
    threads: BTreeMap<String, f64>,
    bench: f64,
    machine: f64,
    at: Instant,
}

impl CpuMark {
    fn now(bridge_pid: &str) -> Self {
        Self {
            bridge: cpu_seconds(bridge_pid),
            threads: thread_seconds(bridge_pid),
            bench: cpu_seconds("self"),
            machine: machine_busy_seconds(),
            at: Instant::now(),
        }
    }
}

// ----- one measured run -----

/// Which way a run's messages go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// XMPP contacts write, the homeserver receives `send`.
    ToMatrix,
    /// The homeserver pushes the Matrix user's events, the XMPP server reads stanzas.
    ToXmpp,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::ToMatrix => "XMPP→Matrix",
            Way::ToXmpp => "Matrix→XMPP",
        }
    }
}

/// The messages of one run, tracked by sequence number (carried in every body as
/// `bench {run}.{seq}`).
struct Run {
    id: u64,
    /// Contacts the messages go round-robin over (message `seq` belongs to contact
    /// `first + seq % contacts`).
    first: usize,
    contacts: usize,
    way: Way,
    /// Nanoseconds since `Shared::base`, plus one (0: not yet).
    sent: Vec<AtomicU64>,
    done: Vec<AtomicU64>,
    delivered: AtomicUsize,
    duplicates: AtomicUsize,
    misrouted: AtomicUsize,
    /// Messages sent and not yet delivered.
    window: Semaphore,
}

impl Run {
    fn new(id: u64, way: Way, first: usize, contacts: usize, count: usize, window: usize) -> Self {
        Self {
            id,
            first,
            contacts,
            way,
            sent: (0..count).map(|_| AtomicU64::new(0)).collect(),
            done: (0..count).map(|_| AtomicU64::new(0)).collect(),
            delivered: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            misrouted: AtomicUsize::new(0),
            window: Semaphore::new(window),
        }
    }

    fn count(&self) -> usize {
        self.sent.len()
    }

    fn contact_of(&self, seq: usize) -> usize {
        self.first + seq % self.contacts
    }

    /// Message `seq` arrived at the far end, for `contact` (as far as the far end can tell).
    fn deliver(&self, shared: &Shared, seq: usize, contact: Option<usize>) {
        let Some(slot) = self.done.get(seq) else {
            return;
        };
        if slot
            .compare_exchange(0, shared.nanos(), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if contact != Some(self.contact_of(seq)) {
            self.misrouted.fetch_add(1, Ordering::Relaxed);
        }
        self.window.add_permits(1);
        self.delivered.fetch_add(1, Ordering::AcqRel);
    }

    /// Latencies of the delivered messages, sorted, in milliseconds.
    fn latencies_ms(&self) -> Vec<f64> {
        let mut out: Vec<f64> = self
            .sent
            .iter()
            .zip(&self.done)
            .filter_map(|(s, d)| {
                let (s, d) = (s.load(Ordering::Acquire), d.load(Ordering::Acquire));
                (s > 0 && d >= s).then(|| (d - s) as f64 / 1e6)
            })
            .collect();
        out.sort_by(f64::total_cmp);
        out
    }

    /// From the first message sent to the last delivered, in seconds.
    fn span_secs(&self) -> f64 {
        let first = self
            .sent
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .filter(|&s| s > 0)
            .min()
            .unwrap_or(0);
        let last = self
            .done
            .iter()
            .map(|d| d.load(Ordering::Acquire))
            .max()
            .unwrap_or(0);
        last.saturating_sub(first) as f64 / 1e9
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `bench {run}.{seq}` somewhere in `text`.
fn marker(text: &[u8]) -> Option<(u64, usize)> {
    const TAG: &[u8] = b"bench ";
    let at = text.windows(TAG.len()).position(|w| w == TAG)? + TAG.len();
    let rest = &text[at..];
    let digits = |s: &[u8]| {
        let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
        let v = std::str::from_utf8(&s[..n]).ok()?.parse::<u64>().ok()?;
        Some((v, n))
    };
    let (run, n) = digits(rest)?;
    if rest.get(n) != Some(&b'.') {
        return None;
    }
    let (seq, _) = digits(&rest[n + 1..])?;
    Some((run, seq as usize))
}

fn body_text(run: u64, seq: usize) -> String {
    format!("bench {run}.{seq} {PADDING}")
}

/// The contact index in `c{i}@remote.bench.test`, or in the ghost localpart
/// `_xmpp_c{i}=40remote.bench.test`.
fn contact_index(s: &str) -> Option<usize> {
    let s = s.strip_prefix("@_xmpp_").unwrap_or(s);
    let s = s.strip_prefix('c')?;
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    let rest = &s[n..];
    if !(rest.starts_with('@') || rest.starts_with("=40")) {
        return None;
    }
    s[..n].parse().ok()
}

// ----- shared state -----

/// An event waiting in the stand-in homeserver's queue for the bridge.
struct Pending {
    json: String,
    /// The run and sequence number whose "sent" time is the transaction's.
    probe: Option<(Arc<Run>, usize)>,
}

struct Shared {
    base: Instant,
    bridge_url: String,
    http: reqwest::Client,
    echo: bool,
    /// Homeserver requests by endpoint.
    requests: Mutex<BTreeMap<String, u64>>,
    unknown: Mutex<HashSet<String>>,
    /// What the bridge wrote on the XMPP link, by kind.
    stanzas: Mutex<BTreeMap<String, u64>>,
    profiles: Mutex<HashMap<String, String>>,
    /// The portal room of each contact, as created through `createRoom`.
    rooms: Mutex<HashMap<usize, String>>,
    /// The contact of each portal room.
    room_contacts: Mutex<HashMap<String, usize>>,
    next_id: AtomicU64,
    run: RwLock<Option<Arc<Run>>>,
    outbox: Mutex<VecDeque<Pending>>,
    outbox_wake: tokio::sync::Notify,
    pushing: AtomicBool,
    /// Transactions and events pushed to the bridge.
    pushed: Mutex<BTreeMap<String, u64>>,
    xmpp: Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    link_up: tokio::sync::Notify,
    /// The benchmark is over: the bridge is stopped on purpose.
    stopping: AtomicBool,
}

impl Shared {
    fn nanos(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }

    fn count(&self, map: &Mutex<BTreeMap<String, u64>>, key: &str) {
        *map.lock()
            .expect("counter lock")
            .entry(key.to_owned())
            .or_default() += 1;
    }

    fn current(&self) -> Option<Arc<Run>> {
        self.run.read().expect("run lock").clone()
    }

    fn set_run(&self, run: Option<Arc<Run>>) {
        *self.run.write().expect("run lock") = run;
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn enqueue(&self, p: Pending) {
        self.outbox.lock().expect("outbox lock").push_back(p);
        self.outbox_wake.notify_one();
    }

    fn outbox_idle(&self) -> bool {
        self.outbox.lock().expect("outbox lock").is_empty() && !self.pushing.load(Ordering::Acquire)
    }

    fn write_xmpp(&self, bytes: Vec<u8>) {
        if let Some(tx) = self.xmpp.lock().expect("xmpp lock").as_ref() {
            let _ = tx.send(bytes);
        }
    }
}

fn snapshot(map: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    map.lock().expect("counter lock").clone()
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

// ----- the stand-in homeserver -----

fn json(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

fn ok(body: String) -> Response {
    json(StatusCode::OK, body)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

/// A string as a JSON string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

async fn homeserver(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorised = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {AS_TOKEN}"));
    let path = uri.path();
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let acting = query_param(&uri, "user_id").unwrap_or_else(|| BOT.to_owned());
    // Paths below /_matrix/client/{version}/.
    let none: &[&str] = &[];
    let (api, rest) = match segs.as_slice() {
        ["_matrix", "client", "versions"] => ("versions", none),
        ["_matrix", "client", _version, rest @ ..] => ("client", rest),
        ["_matrix", "media", _version, rest @ ..] => ("media", rest),
        _ => ("other", none),
    };
    let endpoint: String = match (api, &method, rest) {
        ("versions", _, _) => "versions".into(),
        ("client", &Method::GET, ["account", "whoami"]) => "whoami".into(),
        ("client", &Method::POST, ["register"]) => "register".into(),
        ("client", &Method::PUT, ["profile", _, _]) => "profile_set".into(),
        ("client", &Method::GET, ["profile", ..]) => "profile_get".into(),
        ("client", &Method::PUT, ["presence", _, "status"]) => "presence_set".into(),
        ("client", &Method::GET, ["presence", _, "status"]) => "presence_get".into(),
        ("client", &Method::POST, ["createRoom"]) => "create_room".into(),
        ("client", &Method::POST, ["join", _])
        | ("client", &Method::POST, ["rooms", _, "join"]) => "join".into(),
        ("client", &Method::POST, ["rooms", _, "invite"]) => "invite".into(),
        ("client", &Method::POST, ["rooms", _, "leave"]) => "leave".into(),
        ("client", &Method::POST, ["rooms", _, "kick"]) => "kick".into(),
        ("client", &Method::GET, ["rooms", _, "joined_members"]) => "joined_members".into(),
        ("client", &Method::GET, ["rooms", _, "state", ..]) => "state_get".into(),
        ("client", &Method::PUT, ["rooms", _, "state", ..]) => "state_set".into(),
        ("client", &Method::PUT, ["rooms", _, "send", kind, _]) => format!("send {kind}"),
        ("client", &Method::PUT, ["rooms", _, "redact", ..]) => "redact".into(),
        ("client", &Method::PUT, ["rooms", _, "typing", _]) => "typing".into(),
        ("client", &Method::POST, ["rooms", _, "receipt", ..]) => "receipt".into(),
        ("client", &Method::POST, ["appservice", _, "ping"]) => "ping".into(),
        ("client", &Method::GET, ["capabilities"]) => "capabilities".into(),
        ("client", &Method::GET, ["media", "config"]) => "media_config".into(),
        _ => format!("unknown {method} {path}"),
    };
    shared.count(&shared.requests, &endpoint);
    if !authorised {
        return json(
            StatusCode::UNAUTHORIZED,
            r#"{"errcode":"M_UNKNOWN_TOKEN","error":"bad as_token"}"#.into(),
        );
    }
    match endpoint.as_str() {
        "versions" => ok(
            r#"{"versions":["r0.6.1","v1.1","v1.2","v1.3","v1.4","v1.5","v1.6","v1.7","v1.8","v1.9","v1.10","v1.11"],"unstable_features":{}}"#
                .into(),
        ),
        "whoami" => ok(format!(r#"{{"user_id":{}}}"#, js(&acting))),
        "register" => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let local = v["username"].as_str().unwrap_or("nobody");
            let user = format!("@{local}:{DOMAIN}");
            let mut profiles = shared.profiles.lock().expect("profiles lock");
            if profiles.contains_key(&user) {
                return json(
                    StatusCode::BAD_REQUEST,
                    r#"{"errcode":"M_USER_IN_USE","error":"taken"}"#.into(),
                );
            }
            profiles.insert(user.clone(), local.to_owned());
            ok(format!(r#"{{"user_id":{}}}"#, js(&user)))
        }
        "profile_set" => {
            if rest.get(2) == Some(&"displayname") {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if let (Some(user), Some(name)) = (rest.get(1), v["displayname"].as_str()) {
                    shared
                        .profiles
                        .lock()
                        .expect("profiles lock")
                        .insert((*user).to_owned(), name.to_owned());
                }
            }
            ok("{}".into())
        }
        "profile_get" => {
            let user = rest.get(1).copied().unwrap_or("");
            match shared.profiles.lock().expect("profiles lock").get(user) {
                Some(name) => ok(format!(r#"{{"displayname":{}}}"#, js(name))),
                None => json(
                    StatusCode::NOT_FOUND,
                    r#"{"errcode":"M_NOT_FOUND","error":"Profile was not found"}"#.into(),
                ),
            }
        }
        "presence_get" => ok(r#"{"presence":"online","currently_active":true}"#.into()),
        "create_room" => {
            let room = format!("!r{}:{DOMAIN}", shared.id());
            if let Some(i) = contact_index(&acting) {
                shared
                    .rooms
                    .lock()
                    .expect("rooms lock")
                    .insert(i, room.clone());
                shared
                    .room_contacts
                    .lock()
                    .expect("rooms lock")
                    .insert(room.clone(), i);
            }
            ok(format!(r#"{{"room_id":{}}}"#, js(&room)))
        }
        "join" => {
            let room = match rest {
                ["join", r] | ["rooms", r, "join"] => (*r).to_owned(),
                _ => String::new(),
            };
            ok(format!(r#"{{"room_id":{}}}"#, js(&room)))
        }
        "joined_members" => ok(r#"{"joined":{}}"#.into()),
        "state_get" => json(
            StatusCode::NOT_FOUND,
            r#"{"errcode":"M_NOT_FOUND","error":"Event not found."}"#.into(),
        ),
        "ping" => {
            let started = Instant::now();
            let r = shared
                .http
                .post(format!("{}/_matrix/app/v1/ping", shared.bridge_url))
                .bearer_auth(HS_TOKEN)
                .header("content-type", "application/json")
                .body(r#"{"transaction_id":"bench"}"#)
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => ok(format!(
                    r#"{{"duration_ms":{}}}"#,
                    started.elapsed().as_millis()
                )),
                _ => json(
                    StatusCode::BAD_GATEWAY,
                    r#"{"errcode":"M_CONNECTION_FAILED","error":"the bridge did not answer"}"#
                        .into(),
                ),
            }
        }
        "capabilities" => ok(
            r#"{"capabilities":{"m.room_versions":{"default":"10","available":{"10":"stable","11":"stable"}}}}"#
                .into(),
        ),
        "media_config" => ok(r#"{"m.upload.size":52428800}"#.into()),
        e if e.starts_with("send ") || e == "state_set" || e == "redact" => {
            let event_id = format!("$e{}", shared.id());
            if e == "send m.room.message" {
                if let (Some(run), Some((run_id, seq))) = (shared.current(), marker(&body))
                    && run.id == run_id
                    && run.way == Way::ToMatrix
                {
                    let room = rest.get(1).copied().unwrap_or("");
                    let contact = shared
                        .room_contacts
                        .lock()
                        .expect("rooms lock")
                        .get(room)
                        .copied();
                    run.deliver(&shared, seq, contact);
                }
                if shared.echo {
                    // Synapse pushes the ghost's own event back to the appservice.
                    let content = std::str::from_utf8(&body).unwrap_or("{}");
                    let room = rest.get(1).copied().unwrap_or("");
                    shared.enqueue(Pending {
                        json: format!(
                            r#"{{"type":"m.room.message","room_id":{},"sender":{},"event_id":{},"origin_server_ts":{},"content":{content},"unsigned":{{"age":1}}}}"#,
                            js(room),
                            js(&acting),
                            js(&event_id),
                            now_ms()
                        ),
                        probe: None,
                    });
                }
            }
            ok(format!(r#"{{"event_id":{}}}"#, js(&event_id)))
        }
        e if e.starts_with("unknown ") => {
            if shared
                .unknown
                .lock()
                .expect("unknown lock")
                .insert(e.to_owned())
            {
                eprintln!("stand-in homeserver: no handler for {e}; answered {{}}");
            }
            ok("{}".into())
        }
        _ => ok("{}".into()),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Pushes the queued events to the bridge: one transaction in flight, at most 100 events.
async fn pusher(shared: Arc<Shared>) {
    let mut txn = 0u64;
    loop {
        let batch: Vec<Pending> = {
            let mut q = shared.outbox.lock().expect("outbox lock");
            let n = q.len().min(EVENTS_PER_TXN);
            if n > 0 {
                shared.pushing.store(true, Ordering::Release);
            }
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            shared.outbox_wake.notified().await;
            continue;
        }
        txn += 1;
        let mut body =
            String::with_capacity(batch.iter().map(|p| p.json.len() + 1).sum::<usize>() + 16);
        body.push_str(r#"{"events":["#);
        for (i, p) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&p.json);
        }
        body.push_str("]}");
        let mut failures = 0u32;
        loop {
            let now = shared.nanos();
            for p in &batch {
                if let Some((run, seq)) = &p.probe
                    && let Some(slot) = run.sent.get(*seq)
                {
                    let _ = slot.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
                }
            }
            let r = shared
                .http
                .put(format!(
                    "{}/_matrix/app/v1/transactions/bench{txn}",
                    shared.bridge_url
                ))
                .bearer_auth(HS_TOKEN)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    let mut pushed = shared.pushed.lock().expect("counter lock");
                    *pushed.entry("transactions".into()).or_default() += 1;
                    *pushed.entry("events".into()).or_default() += batch.len() as u64;
                    break;
                }
                other => {
                    failures += 1;
                    if failures == 1 {
                        eprintln!(
                            "stand-in homeserver: transaction {txn} not accepted ({}); retrying",
                            other.map_or_else(|e| e.to_string(), |r| r.status().to_string())
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        shared.pushing.store(false, Ordering::Release);
    }
}

// ----- the stand-in XMPP server -----

/// Where a [`Splitter`] is.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between tags.
    #[default]
    Text,
    /// Just after `<`.
    Open,
    /// In a start tag.
    Start,
    /// In an end tag.
    End,
    /// In `<?...?>` or `<!...>`.
    Other,
}

/// Splits an XML stream into its top-level elements (the children of the stream element)
/// without a full parser: tags, quoted attribute values and nesting, which is all a stream
/// written by a serializer needs.
#[derive(Default)]
struct Splitter {
    buf: Vec<u8>,
    depth: usize,
    lex: Lex,
    /// The quote character of the attribute value being read, or 0.
    quote: u8,
    element_start: usize,
    header_seen: bool,
    ended: bool,
}

impl Splitter {
    /// Adds bytes; returns the complete top-level elements.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let from = self.buf.len();
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut consumed = 0;
        for i in from..self.buf.len() {
            let b = self.buf[i];
            match self.lex {
                Lex::Text if b == b'<' => {
                    self.lex = Lex::Open;
                    if self.depth == 1 {
                        self.element_start = i;
                    }
                }
                Lex::Text => {}
                Lex::Open => {
                    self.lex = match b {
                        b'/' => Lex::End,
                        b'?' | b'!' => Lex::Other,
                        _ => Lex::Start,
                    };
                }
                _ if self.quote != 0 && b == self.quote => self.quote = 0,
                // Inside an attribute value nothing else counts, `>` included.
                _ if self.quote != 0 => {}
                _ if b == b'"' || b == b'\'' => self.quote = b,
                _ if b == b'>' => {
                    let tag = self.lex;
                    self.lex = Lex::Text;
                    let complete = match tag {
                        Lex::Start if self.buf[i - 1] == b'/' => self.depth == 1,
                        Lex::Start => {
                            self.depth += 1;
                            if self.depth == 1 {
                                self.header_seen = true;
                                consumed = i + 1;
                            }
                            false
                        }
                        Lex::End => {
                            self.depth = self.depth.saturating_sub(1);
                            self.ended |= self.depth == 0;
                            self.depth == 1
                        }
                        _ => false,
                    };
                    if complete {
                        out.push(self.buf[self.element_start..=i].to_vec());
                        consumed = i + 1;
                    }
                }
                _ => {}
            }
        }
        if self.depth <= 1 && self.lex == Lex::Text {
            consumed = self.buf.len();
        }
        self.buf.drain(..consumed);
        self.element_start = self.element_start.saturating_sub(consumed);
        out
    }
}

/// The name of an element (`message`, `iq`, ...).
fn element_name(el: &str) -> &str {
    let s = el.trim_start_matches('<');
    let end = s
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .unwrap_or(s.len());
    &s[..end]
}

/// An attribute of the element's start tag, as written (still escaped).
fn attr<'a>(el: &'a str, name: &str) -> Option<&'a str> {
    let tag_end = el.find('>').unwrap_or(el.len());
    let tag = &el[..tag_end];
    let mut from = 0;
    while let Some(at) = tag[from..].find(name) {
        let start = from + at;
        let before = tag[..start].chars().last();
        let after = &tag[start + name.len()..];
        if before.is_some_and(char::is_whitespace) && after.starts_with('=') {
            let q = after[1..].chars().next()?;
            let value = &after[2..];
            return value.find(q).map(|e| &value[..e]);
        }
        from = start + name.len();
    }
    None
}

/// The text of the first `<body>` child.
fn body_of(el: &str) -> Option<&str> {
    let at = el.find("<body")?;
    let open_end = at + el[at..].find('>')? + 1;
    let close = open_end + el[open_end..].find("</body>")?;
    Some(&el[open_end..close])
}

fn sha1_hex(s: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, s.as_bytes());
    digest.as_ref().iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Accepts the bridge's component connections, one at a time.
async fn xmpp_server(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        if let Err(e) = xmpp_connection(socket, &shared).await
            && !shared.stopping.load(Ordering::Acquire)
        {
            eprintln!("stand-in XMPP server: the component connection ended: {e}");
        }
        *shared.xmpp.lock().expect("xmpp lock") = None;
    }
}

async fn xmpp_connection(socket: TcpStream, shared: &Arc<Shared>) -> Result<(), String> {
    let (mut read, write) = socket.into_split();
    let mut writer = BufWriter::with_capacity(64 * 1024, write);
    let mut splitter = Splitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    // The stream header, then the handshake.
    while !splitter.header_seen || pending.is_empty() {
        let n = read.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        let was = splitter.header_seen;
        pending.extend(splitter.feed(&buf[..n]));
        if !was && splitter.header_seen {
            let header = format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' from='{COMPONENT}' id='{STREAM_ID}'>"
            );
            writer
                .write_all(header.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            writer.flush().await.map_err(|e| e.to_string())?;
        }
    }
    let handshake = String::from_utf8_lossy(&pending.pop_front().expect("checked")).into_owned();
    let expected = sha1_hex(&format!("{STREAM_ID}{SECRET}"));
    let given = handshake
        .split_once('>')
        .and_then(|(_, r)| r.split_once('<'))
        .map(|(h, _)| h.trim().to_lowercase());
    if element_name(&handshake) != "handshake" || given.as_deref() != Some(expected.as_str()) {
        return Err(format!("bad handshake: {handshake}"));
    }
    writer
        .write_all(b"<handshake/>")
        .await
        .map_err(|e| e.to_string())?;
    writer.flush().await.map_err(|e| e.to_string())?;

    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    *shared.xmpp.lock().expect("xmpp lock") = Some(tx);
    shared.link_up.notify_waiters();
    let writing = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
            // Everything already queued goes out in the same flush.
            while let Ok(more) = rx.try_recv() {
                if writer.write_all(&more).await.is_err() {
                    return;
                }
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
    });
    for el in pending {
        xmpp_stanza(shared, &el);
    }
    let result = loop {
        let n = match read.read(&mut buf).await {
            Ok(0) => break Err("closed by the bridge".to_owned()),
            Ok(n) => n,
            Err(e) => break Err(e.to_string()),
        };
        for el in splitter.feed(&buf[..n]) {
            xmpp_stanza(shared, &el);
        }
        if splitter.ended {
            break Err("stream closed by the bridge".into());
        }
    };
    writing.abort();
    result
}

/// One stanza the bridge wrote.
fn xmpp_stanza(shared: &Shared, el: &[u8]) {
    let el = String::from_utf8_lossy(el);
    let name = element_name(&el);
    let kind = attr(&el, "type").unwrap_or("");
    match name {
        "message" => {
            if let Some(body) = body_of(&el) {
                shared.count(&shared.stanzas, "message with body");
                if let (Some(run), Some((run_id, seq))) =
                    (shared.current(), marker(body.as_bytes()))
                    && run.id == run_id
                    && run.way == Way::ToXmpp
                {
                    let contact = attr(&el, "to").and_then(contact_index);
                    run.deliver(shared, seq, contact);
                }
            } else if el.contains("<received") {
                shared.count(&shared.stanzas, "message receipt");
            } else {
                shared.count(&shared.stanzas, &format!("message type={kind} other"));
            }
        }
        "iq" => {
            shared.count(&shared.stanzas, &format!("iq type={kind}"));
            if kind == "get" || kind == "set" {
                let (from, to, id) = (
                    attr(&el, "from").unwrap_or(""),
                    attr(&el, "to").unwrap_or(""),
                    attr(&el, "id").unwrap_or(""),
                );
                shared.write_xmpp(
                    format!(
                        "<iq type='error' from=\"{to}\" to=\"{from}\" id=\"{id}\"><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
                    )
                    .into_bytes(),
                );
            }
        }
        other => shared.count(&shared.stanzas, &format!("{other} type={kind}")),
    }
}

/// A chat message from contact `i` to the Matrix user, asking for a delivery receipt as
/// clients do.
fn xmpp_message(contact: usize, run: u64, seq: usize) -> Vec<u8> {
    format!(
        "<message type='chat' id='b{run}.{seq}' from='c{contact}@{CONTACT_DOMAIN}/bench' to='{USER_JID}'><body>{}</body><request xmlns='urn:xmpp:receipts'/><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        body_text(run, seq)
    )
    .into_bytes()
}

/// An `m.room.message` of the Matrix user in `room`.
fn matrix_event(room: &str, run: u64, seq: usize) -> String {
    format!(
        r#"{{"type":"m.room.message","room_id":{},"sender":"{USER}","event_id":"$m{run}_{seq}","origin_server_ts":{},"content":{{"msgtype":"m.text","body":"{}"}},"unsigned":{{"age":1}}}}"#,
        js(room),
        now_ms(),
        body_text(run, seq)
    )
}

// ----- the bridge under test -----

/// The child process; killed when dropped, so a failed run leaves nothing behind.
struct Bridge {
    child: Child,
    pid: String,
    log: PathBuf,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bridge {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn write_config(
    dir: &Path,
    settings: &Settings,
    hs_port: u16,
    as_port: u16,
    xmpp_port: u16,
) -> PathBuf {
    let big = "{rate: 1000000, per_seconds: 1, burst: 1000000}";
    let text = format!(
        r#"homeserver:
  url: http://127.0.0.1:{hs_port}
  domain: {DOMAIN}
appservice:
  id: isthmus-bench
  listen: 127.0.0.1:{as_port}
  url: http://127.0.0.1:{as_port}
  as_token: {AS_TOKEN}
  hs_token: {HS_TOKEN}
database:
  path: {store}
logging:
  level: {level}
bridge:
  permissions:
    "{DOMAIN}": user
    "{USER}": admin
  portal_idle_seconds: {idle}
  # One remote domain opens every portal here: the creation limits would refuse most of them.
  limits:
    portals_per_sender: {big}
    portals_per_domain: {big}
    invites_per_user: {big}
    ghosts_per_domain: {big}
    message_ghosts_per_domain: {big}
networks:
  xmpp:
    component:
      host: 127.0.0.1
      port: {xmpp_port}
      domain: {COMPONENT}
      secret: {SECRET}
"#,
        store = dir.join("store").display(),
        level = settings.log_level,
        idle = std::env::var("CAPACITY_IDLE").unwrap_or_else(|_| "10".into()),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).expect("write the config");
    let mut perms = std::fs::metadata(&path).expect("config").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&path, perms).expect("config mode");
    path
}

async fn start_bridge(settings: &Settings, dir: &Path, config: &Path, shared: &Shared) -> Bridge {
    let reg = dir.join("registration.yaml");
    let status = Command::new(&settings.bin)
        .args(["-c"])
        .arg(config)
        .args(["generate-registration", "-o"])
        .arg(&reg)
        .stdout(Stdio::null())
        .status()
        .expect("run isthmus generate-registration");
    assert!(status.success(), "generate-registration failed: {status}");
    let log = dir.join("isthmus.log");
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new(&settings.bin)
        .arg("-c")
        .arg(config)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("start isthmus");
    let pid = child.id().to_string();
    let mut bridge = Bridge { child, pid, log };
    let link = shared.link_up.notified();
    tokio::pin!(link);
    link.as_mut().enable();
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&bridge.log).unwrap_or_default();
        if text.contains("isthmus is ready") {
            break;
        }
        assert!(
            bridge.alive(),
            "isthmus exited during start-up; its log:\n{}",
            bridge.log_tail()
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "isthmus not ready after 60 s; its log:\n{}",
            bridge.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = started.elapsed();
    let up = shared.xmpp.lock().expect("xmpp lock").is_some();
    if !up
        && tokio::time::timeout(Duration::from_secs(30), link)
            .await
            .is_err()
    {
        panic!(
            "the XMPP component link did not come up; bridge log:\n{}",
            bridge.log_tail()
        );
    }
    println!(
        "bridge ready in {:.2} s (pid {}, RSS {:.1} MB)",
        ready.as_secs_f64(),
        bridge.pid,
        rss_kb(&bridge.pid) as f64 / 1000.0
    );
    bridge
}

// ----- cold start -----

/// Fills the store at `dir/store` with `n` idle direct-chat portals and their ghosts, as a
/// bridge that has run for a while holds them (contacts `cold{i}@remote.bench.test`, one
/// Matrix user), before the bridge starts on it. Opened the way the bridge opens it: an
/// owner-only folder and its key file.
fn fill_store(dir: &Path, n: usize) {
    use isthmus::network::ChatKind;
    use isthmus::store::{GhostRecord, LoginKey, PortalKey, PortalRecord, Store, prepare_dir};
    let began = Instant::now();
    let path = dir.join("store");
    prepare_dir(&path).expect("create the store folder");
    let secret = LoginKey::generate_secret().expect("a key");
    let key_file = path.join("login.key");
    std::fs::write(&key_file, &secret).expect("write login.key");
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("login.key mode");
    let key = LoginKey::from_secret(&secret).expect("the key");
    let store = Store::open(&path, key, 16 << 20).expect("open the store");
    for i in 0..n {
        let contact = format!("cold{i}@{CONTACT_DOMAIN}");
        let ghost = format!("@_isthmus_xmpp_cold{i}=40{CONTACT_DOMAIN}:{DOMAIN}");
        store
            .put_ghost(&GhostRecord {
                user_id: ghost,
                network: "xmpp".into(),
                remote_id: contact.clone(),
                displayname: Some(format!("Cold contact {i}")),
                avatar_url: None,
                avatar_hash: None,
                avatar_upload: None,
                registered: true,
            })
            .expect("put a ghost");
        let mut portal = PortalRecord::new(
            PortalKey::new("xmpp", &contact, Some(USER)),
            &format!("!cold{i}:{DOMAIN}"),
            ChatKind::Direct,
        );
        portal.name = Some(format!("Cold contact {i}"));
        store.put_portal(&portal).expect("put a portal");
    }
    tokio::runtime::Handle::current().block_on(async { store.flush().await.expect("flush") });
    println!(
        "cold start: {n} idle portals and ghosts written in {:.1} s; store {:.1} MB on disk",
        began.elapsed().as_secs_f64(),
        store.size_on_disk() as f64 / 1e6
    );
}

// ----- phases -----

/// What a phase measured.
struct Outcome {
    label: String,
    messages: usize,
    delivered: usize,
    secs: f64,
    p50: f64,
    p99: f64,
    bridge_cpu: f64,
    bench_cpu: f64,
    /// CPU of every other process on the machine (other people's work on a shared machine).
    other_cpu: f64,
    /// The bridge's threads by name: CPU seconds over the phase.
    threads: Vec<(String, f64)>,
    wall: f64,
    rss_kb: u64,
    requests: BTreeMap<String, u64>,
    stanzas: BTreeMap<String, u64>,
    pushed: BTreeMap<String, u64>,
    misrouted: usize,
    duplicates: usize,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs.max(1e-9)
    }

    fn per_message(&self, v: f64) -> f64 {
        v / self.delivered.max(1) as f64
    }

    fn requests_total(&self) -> u64 {
        self.requests.values().sum()
    }
}

struct Bench {
    shared: Arc<Shared>,
    bridge: Bridge,
    settings: Settings,
    runs: u64,
}

impl Bench {
    /// Waits until the run is delivered (or stalls), the homeserver's queue is empty, and
    /// then a little longer, for work the messages caused to finish.
    async fn finish(&mut self, run: &Arc<Run>, label: &str, mark: CpuMark) -> Outcome {
        let mut last = (0, Instant::now());
        loop {
            let n = run.delivered.load(Ordering::Acquire);
            if n >= run.count() {
                break;
            }
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() > STALL {
                eprintln!(
                    "{label}: stalled at {n}/{} delivered; bridge log tail:\n{}",
                    run.count(),
                    self.bridge.log_tail()
                );
                break;
            }
            assert!(
                self.bridge.alive(),
                "isthmus exited; its log:\n{}",
                self.bridge.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        while !self.shared.outbox_idle() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The bridge acknowledges a transaction before its portals handle it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let end = CpuMark::now(&self.bridge.pid);
        let lat = run.latencies_ms();
        Outcome {
            label: label.to_owned(),
            messages: run.count(),
            delivered: run.delivered.load(Ordering::Acquire),
            secs: run.span_secs(),
            p50: percentile(&lat, 0.5),
            p99: percentile(&lat, 0.99),
            bridge_cpu: end.bridge - mark.bridge,
            bench_cpu: end.bench - mark.bench,
            other_cpu: ((end.machine - mark.machine)
                - (end.bridge - mark.bridge)
                - (end.bench - mark.bench))
                .max(0.0),
            threads: {
                let mut t: Vec<(String, f64)> = end
                    .threads
                    .iter()
                    .map(|(k, v)| (k.clone(), v - mark.threads.get(k).copied().unwrap_or(0.0)))
                    .filter(|(_, v)| *v > 0.0)
                    .collect();
                t.sort_by(|a, b| b.1.total_cmp(&a.1));
                t
            },
            wall: (end.at - mark.at).as_secs_f64(),
            rss_kb: rss_kb(&self.bridge.pid),
            requests: BTreeMap::new(),
            stanzas: BTreeMap::new(),
            pushed: BTreeMap::new(),
            misrouted: run.misrouted.load(Ordering::Relaxed),
            duplicates: run.duplicates.load(Ordering::Relaxed),
        }
    }

    fn new_run(&mut self, way: Way, first: usize, contacts: usize, count: usize) -> Arc<Run> {
        self.runs += 1;
        let run = Arc::new(Run::new(
            self.runs,
            way,
            first,
            contacts,
            count,
            self.settings.window,
        ));
        self.shared.set_run(Some(Arc::clone(&run)));
        run
    }

    /// Runs one phase: `feed` sends the messages; counters are taken around it.
    async fn phase(
        &mut self,
        label: String,
        way: Way,
        first: usize,
        contacts: usize,
        count: usize,
        rate: Option<f64>,
    ) -> Outcome {
        let req0 = snapshot(&self.shared.requests);
        let st0 = snapshot(&self.shared.stanzas);
        let pu0 = snapshot(&self.shared.pushed);
        let mark = CpuMark::now(&self.bridge.pid);
        let run = self.new_run(way, first, contacts, count);
        let feeder = tokio::spawn(feed(Arc::clone(&self.shared), Arc::clone(&run), rate));
        let mut out = self.finish(&run, &label, mark).await;
        feeder.abort();
        self.shared.set_run(None);
        out.requests = diff(&snapshot(&self.shared.requests), &req0);
        out.stanzas = diff(&snapshot(&self.shared.stanzas), &st0);
        out.pushed = diff(&snapshot(&self.shared.pushed), &pu0);
        out
    }
}

/// Sends a run's messages: as fast as the window allows, or at `rate` per second.
async fn feed(shared: Arc<Shared>, run: Arc<Run>, rate: Option<f64>) {
    let start = tokio::time::Instant::now();
    let rooms: HashMap<usize, String> = shared.rooms.lock().expect("rooms lock").clone();
    for seq in 0..run.count() {
        if let Some(rate) = rate {
            tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate)).await;
        }
        let Ok(permit) = run.window.acquire().await else {
            return;
        };
        permit.forget();
        let contact = run.contact_of(seq);
        match run.way {
            Way::ToMatrix => {
                run.sent[seq].store(shared.nanos(), Ordering::Release);
                shared.write_xmpp(xmpp_message(contact, run.id, seq));
            }
            Way::ToXmpp => {
                let room = rooms
                    .get(&contact)
                    .map_or("!missing:bench.test", String::as_str);
                shared.enqueue(Pending {
                    json: matrix_event(room, run.id, seq),
                    probe: Some((Arc::clone(&run), seq)),
                });
            }
        }
        // Yield now and then so that a burst never starves the stand-ins on two cores.
        if seq % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
}

// ----- output -----

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn breakdown(map: &BTreeMap<String, u64>, per: usize) -> String {
    map.iter()
        .map(|(k, v)| format!("{k} {:.2}", *v as f64 / per.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

fn check(out: &Outcome) {
    if out.delivered < out.messages || out.misrouted > 0 || out.duplicates > 0 {
        println!(
            "  ! {}: {} of {} delivered, {} to the wrong chat, {} twice",
            out.label, out.delivered, out.messages, out.misrouted, out.duplicates
        );
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings::from_env();
    let began = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("isthmus-capacity-")
        .tempdir()
        .expect("tempdir");
    let hs_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hs_port = hs_listener.local_addr().expect("addr").port();
    let xmpp_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let xmpp_port = xmpp_listener.local_addr().expect("addr").port();
    let as_port = free_port();
    let shared = Arc::new(Shared {
        base: Instant::now(),
        bridge_url: format!("http://127.0.0.1:{as_port}"),
        http: reqwest::Client::new(),
        echo: settings.echo,
        requests: Mutex::default(),
        unknown: Mutex::default(),
        stanzas: Mutex::default(),
        profiles: Mutex::new(HashMap::from([(USER.to_owned(), "Alice".to_owned())])),
        rooms: Mutex::default(),
        room_contacts: Mutex::default(),
        next_id: AtomicU64::new(1),
        run: RwLock::new(None),
        outbox: Mutex::default(),
        outbox_wake: tokio::sync::Notify::new(),
        pushing: AtomicBool::new(false),
        pushed: Mutex::default(),
        xmpp: Mutex::new(None),
        link_up: tokio::sync::Notify::new(),
        stopping: AtomicBool::new(false),
    });
    let app = axum::Router::new()
        .fallback(homeserver)
        .with_state(Arc::clone(&shared));
    tokio::spawn(async move { axum::serve(hs_listener, app).await });
    tokio::spawn(xmpp_server(xmpp_listener, Arc::clone(&shared)));

    let config = write_config(dir.path(), &settings, hs_port, as_port, xmpp_port);
    println!(
        "isthmus capacity benchmark: {} (log level {}), {} messages per direction and portal count, window {}, echoes {}",
        settings.bin.display(),
        settings.log_level,
        settings.messages,
        settings.window,
        if settings.echo { "on" } else { "off" }
    );
    if settings.cold > 0 {
        let (path, n) = (dir.path().to_owned(), settings.cold);
        tokio::task::spawn_blocking(move || fill_store(&path, n))
            .await
            .expect("fill the store");
    }
    let bridge = start_bridge(&settings, dir.path(), &config, &shared).await;
    tokio::spawn(pusher(Arc::clone(&shared)));
    let startup = snapshot(&shared.requests);
    println!("start-up requests: {}", breakdown(&startup, 1));
    let mut bench = Bench {
        shared: Arc::clone(&shared),
        bridge,
        settings,
        runs: 0,
    };
    let idle_rss = rss_kb(&bench.bridge.pid);

    let mut warmups = Vec::new();
    let mut floods = Vec::new();
    let mut paced = Vec::new();
    let mut have = 0;
    let portals = bench.settings.portals.clone();
    let m = bench.settings.messages;
    for n in portals {
        // Warm-up: every new contact writes once, all at once (a ghost storm of n - have).
        let new = n - have;
        let w = bench
            .phase(
                format!("warm-up to {n} portals"),
                Way::ToMatrix,
                have,
                new,
                new,
                None,
            )
            .await;
        check(&w);
        tokio::time::sleep(Duration::from_secs(bench.settings.settle_secs)).await;
        let settled = rss_kb(&bench.bridge.pid);
        let rooms = bench.shared.rooms.lock().expect("rooms lock").len();
        assert!(
            rooms >= n,
            "only {rooms} portal rooms after warming up to {n}"
        );
        warmups.push((n, new, w, settled));
        have = n;
        for way in [Way::ToMatrix, Way::ToXmpp] {
            let name = way.name();
            let f = bench
                .phase(format!("{name}, {n} portals"), way, 0, n, m, None)
                .await;
            check(&f);
            println!(
                "  {}: {:.0} msg/s, p50 {} ms, p99 {} ms, bridge CPU {:.3} ms/msg",
                f.label,
                f.rate(),
                ms(f.p50),
                ms(f.p99),
                f.per_message(f.bridge_cpu * 1e3)
            );
            if bench.settings.latency_secs > 0.0 && f.delivered > 0 {
                let rate = (f.rate() * 0.5).max(1.0);
                let count = ((rate * bench.settings.latency_secs) as usize).max(20);
                let p = bench
                    .phase(
                        format!("{name}, {n} portals, paced at {rate:.0}/s"),
                        way,
                        0,
                        n,
                        count,
                        Some(rate),
                    )
                    .await;
                check(&p);
                paced.push((n, way, rate, p));
            }
            floods.push((n, way, f));
        }
    }

    // ----- report -----
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "machine: {cores} cores, {model}; bridge idle RSS {:.1} MB",
        idle_rss as f64 / 1000.0
    );
    println!();
    println!("New ghosts and direct-chat portals (each new contact writes once, all at once):");
    println!(
        "| portals | new | time | per new portal: HS requests | bridge CPU | RSS after | RSS {} s later |",
        bench.settings.settle_secs
    );
    println!("|---|---|---|---|---|---|---|");
    for (n, new, w, settled) in &warmups {
        println!(
            "| {n} | {new} | {:.2} s | {:.1} | {:.2} ms | {:.1} MB | {:.1} MB |",
            w.secs,
            w.per_message(w.requests_total() as f64),
            w.per_message(w.bridge_cpu * 1e3),
            w.rss_kb as f64 / 1000.0,
            *settled as f64 / 1000.0
        );
    }
    for (n, _, w, _) in &warmups {
        println!(
            "  to {n} portals, per new portal: HS requests: {}; XMPP stanzas from the bridge: {}",
            breakdown(&w.requests, w.delivered),
            breakdown(&w.stanzas, w.delivered)
        );
    }
    println!();
    println!(
        "Messages (flood: at most {} in flight; latency: paced at half the flood's rate):",
        bench.settings.window
    );
    println!(
        "| direction | portals | msg/s | p50 / p99 flood | p50 / p99 paced | HS req/msg | bridge CPU/msg | bridge CPU | bench CPU | other CPU | RSS after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, way, f) in &floods {
        let p = paced.iter().find(|(pn, pw, _, _)| pn == n && pw == way);
        let name = way.name();
        let paced_lat = p.map_or_else(
            || "-".to_owned(),
            |(_, _, rate, p)| format!("{} / {} ms at {rate:.0}/s", ms(p.p50), ms(p.p99)),
        );
        println!(
            "| {name} | {n} | {:.0} | {} / {} ms | {paced_lat} | {:.2} | {:.3} ms | {:.0} % | {:.0} % | {:.0} % | {:.1} MB |",
            f.rate(),
            ms(f.p50),
            ms(f.p99),
            f.per_message(f.requests_total() as f64),
            f.per_message(f.bridge_cpu * 1e3),
            100.0 * f.bridge_cpu / f.wall.max(1e-9),
            100.0 * f.bench_cpu / f.wall.max(1e-9),
            100.0 * f.other_cpu / f.wall.max(1e-9),
            f.rss_kb as f64 / 1000.0
        );
    }
    for (n, way, f) in &floods {
        println!(
            "  {} {n}, per message: HS requests: {}; pushed to the bridge: {}; XMPP stanzas from the bridge: {}",
            way.name(),
            breakdown(&f.requests, f.delivered),
            breakdown(&f.pushed, f.delivered),
            breakdown(&f.stanzas, f.delivered)
        );
        let threads: Vec<String> = f
            .threads
            .iter()
            .map(|(name, secs)| format!("{name} {:.0} %", 100.0 * secs / f.wall.max(1e-9)))
            .collect();
        println!("    bridge threads: {}", threads.join(", "));
    }
    println!();
    println!(
        "CPU columns are percent of one core over the phase (2 cores = 200 %); bench CPU is this process: both stand-ins and the load; other CPU is every other process on the machine."
    );
    let unknown = bench.shared.unknown.lock().expect("unknown lock").clone();
    if !unknown.is_empty() {
        println!("endpoints the stand-in homeserver does not know: {unknown:?}");
    }
    bench.shared.stopping.store(true, Ordering::Release);
    println!("whole run: {:.0} s", began.elapsed().as_secs_f64());
    if bench.settings.keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
}
