//! Fan-out benchmark: what the connector kit's `fan_out` (a room message sent to each remote
//! member of a room, as SIP does for rooms with several SIP members) costs in store work. Run
//! with:
//!
//!     cargo bench --bench fanout
//!
//! The store is the real one: a sled-backed `Store` in a temporary folder, opened as the
//! bridge opens it, and its `ConnectorKv`, whose `put` flushes to disk before it returns (so
//! each `put` is counted as a flush; `get`, `scan` and `delete` do not flush). The sends cost
//! nothing, so the figures are the bookkeeping alone. For rooms of 1, 10 and 100 members, one
//! message after another on a multi-threaded runtime, for about `FANOUT_MS` milliseconds
//! (default 2000) per row:
//!
//! - "at once": every member's send succeeds on the first try;
//! - "one busy": the first member's send fails passingly on the first try and succeeds on
//!   the retry, which is made at once (two calls per message).
//!
//! It prints, per message: wall time (µs, and µs per member), the process's CPU time (user +
//! system, all threads, from `/proc/self/stat`), flushes and other store calls.
//! `FANOUT_SIZES` (default `1,10,100`) sets the room sizes.

#[path = "support/env.rs"]
mod env;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use isthmus::network::kit::send::fan_out;
use isthmus::network::{
    ConnectorStore, NetworkError, PartsSent, RemoteMessageId, RemoteUserId, SinkError,
};
use isthmus::store::{LoginKey, Store};

/// A store that counts the calls made to it and passes them on.
struct Counting<S> {
    inner: S,
    reads: AtomicUsize,
    flushes: AtomicUsize,
    deletes: AtomicUsize,
}

impl<S: ConnectorStore> ConnectorStore for Counting<S> {
    fn get(&self, key: &str) -> Result<Option<serde_json::Value>, SinkError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key)
    }

    fn put(&self, key: &str, value: &serde_json::Value) -> Result<(), SinkError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.inner.put(key, value)
    }

    fn delete(&self, key: &str) -> Result<(), SinkError> {
        self.deletes.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(key)
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, SinkError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.scan(prefix)
    }
}

/// This process's CPU time so far (user + system, every thread).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command's closing parenthesis; utime and stime are the 12th and
    // 13th of them, in clock ticks (100 a second on Linux).
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[derive(Clone, Copy)]
enum Case {
    AtOnce,
    OneBusy,
}

struct Row {
    messages: usize,
    wall: Duration,
    cpu: Duration,
    reads: usize,
    flushes: usize,
    deletes: usize,
}

async fn run(
    store: &Counting<isthmus::store::ConnectorKv>,
    members: &[RemoteUserId],
    case: Case,
    budget: Duration,
    min: usize,
) -> Row {
    let (wall0, cpu0) = (Instant::now(), cpu());
    let (r0, f0, d0) = (
        store.reads.load(Ordering::Relaxed),
        store.flushes.load(Ordering::Relaxed),
        store.deletes.load(Ordering::Relaxed),
    );
    let mut messages = 0;
    while messages < min || wall0.elapsed() < budget {
        let event = format!("$bench{messages}:example.org");
        let mut attempt = 0;
        loop {
            let busy = matches!(case, Case::OneBusy) && attempt == 0;
            let r = fan_out(store, &event, members, |m, _: PartsSent| {
                let r = if busy && m == &members[0] {
                    Err(NetworkError::Transient("busy".into()))
                } else {
                    Ok(RemoteMessageId::new("id"))
                };
                async move { r }
            })
            .await;
            match r {
                Ok(_) => break,
                Err(e) if e.is_transient() && attempt == 0 => attempt += 1,
                Err(e) => panic!("fan-out failed: {e}"),
            }
        }
        messages += 1;
    }
    Row {
        messages,
        wall: wall0.elapsed(),
        cpu: cpu() - cpu0,
        reads: store.reads.load(Ordering::Relaxed) - r0,
        flushes: store.flushes.load(Ordering::Relaxed) - f0,
        deletes: store.deletes.load(Ordering::Relaxed) - d0,
    }
}

fn main() {
    let smoke = env::smoke();
    let sizes: Vec<usize> = env::var("FANOUT_SIZES")
        .unwrap_or_else(|| "1,10,100".into())
        .split(',')
        .map(|s| s.trim().parse().expect("FANOUT_SIZES: numbers"))
        .collect();
    let budget = Duration::from_millis(if smoke {
        0
    } else {
        env::num("FANOUT_MS", 2000) as u64
    });
    let min = if smoke { 2 } else { 5 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "| members | case | messages | µs per message | µs per member | CPU µs per message | flushes per message | reads per message | deletes per message |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for case in [Case::AtOnce, Case::OneBusy] {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let store = Store::open(
                &dir.path().join("store"),
                LoginKey::ephemeral().expect("a key"),
                64 << 20,
            )
            .expect("the store opens");
            let kv = Counting {
                inner: store.connector_kv("sip"),
                reads: AtomicUsize::new(0),
                flushes: AtomicUsize::new(0),
                deletes: AtomicUsize::new(0),
            };
            let members: Vec<RemoteUserId> = (0..n)
                .map(|i| RemoteUserId::new(format!("member{i}@sip.example.org")))
                .collect();
            let row = rt.block_on(run(&kv, &members, case, budget, min));
            let per = |d: Duration| d.as_secs_f64() * 1e6 / row.messages as f64;
            let name = match case {
                Case::AtOnce => "at once",
                Case::OneBusy => "one busy",
            };
            println!(
                "| {n} | {name} | {} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2} | {:.2} |",
                row.messages,
                per(row.wall),
                per(row.wall) / n as f64,
                per(row.cpu),
                row.flushes as f64 / row.messages as f64,
                row.reads as f64 / row.messages as f64,
                row.deletes as f64 / row.messages as f64,
            );
        }
    }
}
