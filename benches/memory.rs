//! Memory benchmark: the bridge's resident memory when the homeserver sends a burst of
//! transactions at the largest size the appservice accepts, and how `database.cache_mb`
//! bounds it. Run with:
//!
//!     cargo bench --bench memory
//!
//! For each cache size (16 MiB, the default, and 1024 MiB) a fresh process (this binary run
//! again with `--child <cache_mb>`) serves the appservice API over real HTTP on loopback, as
//! `benches/ingest.rs` does, with the allocator set up as `isthmus run` sets it. The parent
//! builds and sends the transactions, so the child holds only what the bridge holds. The
//! child answers `status` on its standard input with its `VmRSS` and `VmHWM` (from
//! `/proc/self/status`) and its inbox length; the parent reports them idle, right after the
//! burst was acknowledged, once the portal queues drained the inbox, and 15 s later (the
//! allocator gives freed pages back over a few seconds).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus::appservice::{AppState, router};
use isthmus::bridge::Bridge;
use isthmus::config::Config;
use isthmus::matrix::{HomeserverClient, HsConfig};
use isthmus::metrics::Metrics;
use isthmus::store::Store;

const HS_TOKEN: &str = "bench_hs_token";
/// Transactions in the burst.
const TXNS: usize = 10;
/// Events per transaction and the body size of each: about 12 MiB a transaction.
const EVENTS_PER_TXN: usize = 1200;
const BODY_BYTES: usize = 10 * 1024;

fn config(store: &std::path::Path, cache_mb: u64) -> Config {
    let text = format!(
        r#"
homeserver: {{url: "http://127.0.0.1:9", domain: bench.test}}
appservice:
  listen: 127.0.0.1:0
  url: http://127.0.0.1:0
  as_token: bench_as_token
  hs_token: {HS_TOKEN}
database: {{path: "{}", cache_mb: {cache_mb}}}
bridge:
  permissions: {{"bench.test": user}}
"#,
        store.display()
    );
    Config::parse(&text).expect("bench config parses")
}

fn transaction(txn: usize) -> String {
    let padding = "x".repeat(BODY_BYTES);
    let events: Vec<String> = (0..EVENTS_PER_TXN)
        .map(|i| {
            format!(
                r#"{{"type":"m.room.message","room_id":"!room{}:bench.test","sender":"@user{}:bench.test","event_id":"$ev{txn}_{i}","origin_server_ts":1700000000000,"content":{{"msgtype":"m.text","body":"message {i} of transaction {txn} {padding}"}}}}"#,
                i % 50,
                i % 7
            )
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

/// A field of `/proc/self/status`, in kB.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1000.0)
}

async fn child(cache_mb: u64) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    isthmus::alloc::tune();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Arc::new(config(dir.path(), cache_mb));
    let store = Store::open(
        dir.path(),
        isthmus::store::LoginKey::ephemeral().unwrap(),
        config.database.cache_bytes(),
    )
    .expect("store");
    let hs = HomeserverClient::new(
        HsConfig {
            url: config.homeserver.url.clone(),
            server_name: config.homeserver.domain.clone(),
            as_token: "bench_as_token".into(),
            appservice_id: "bench".into(),
            bot_localpart: "_isthmus_bot".into(),
            max_concurrency: 8,
            max_retries: 0,
        },
        None,
    )
    .expect("hs client");
    let bridge = Bridge::new(
        config.clone(),
        hs,
        store.clone(),
        Metrics::new(),
        Vec::new(),
        isthmus::tasks::Tasks::new(),
    )
    .expect("bridge");
    let state = Arc::new(AppState {
        bridge,
        hs_token: HS_TOKEN.into(),
        allow_query_token: false,
        provisioning_secret: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("url http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    // Commands from the parent, one per line, answered on standard output.
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "status" => println!(
                "status {} {} {} {}",
                status_kb("VmRSS"),
                status_kb("VmHWM"),
                store.inbox_len(),
                store.size_on_disk() / (1024 * 1024)
            ),
            _ => break,
        }
    }
}

/// The child bridge, driven over its standard input and output.
struct Child {
    process: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

/// What the child reports: `VmRSS` and `VmHWM` in kB, inbox length, store MiB on disk.
struct Status {
    rss: u64,
    hwm: u64,
    inbox: usize,
    disk_mib: u64,
}

impl Child {
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("child output");
        line
    }

    fn status(&mut self) -> Status {
        let stdin = self.process.stdin.as_mut().expect("child stdin");
        writeln!(stdin, "status").expect("child stdin");
        stdin.flush().expect("child stdin");
        let line = self.line();
        let v: Vec<u64> = line
            .trim()
            .strip_prefix("status ")
            .expect("a status line")
            .split(' ')
            .map(|n| n.parse().expect("a number"))
            .collect();
        Status {
            rss: v[0],
            hwm: v[1],
            inbox: v[2] as usize,
            disk_mib: v[3],
        }
    }
}

async fn measure(me: &std::path::Path, cache_mb: u64) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut process = Command::new(me)
        .args(["--child", &cache_mb.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("child");
    let out = process.stdout.take().expect("child stdout");
    let mut child = Child {
        out: BufReader::new(out),
        process,
    };
    let url = child
        .line()
        .trim()
        .strip_prefix("url ")
        .expect("the child's address")
        .to_owned();
    let client = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = child.status().rss;

    let started = Instant::now();
    let mut largest = 0;
    for t in 0..TXNS {
        // Built one at a time, so the sender holds one body, as a homeserver would.
        let body = transaction(t);
        largest = largest.max(body.len());
        let r = client
            .put(format!("{url}/_matrix/app/v1/transactions/{t}"))
            .bearer_auth(HS_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        assert!(r.status().is_success(), "status {}", r.status());
    }
    let acked = started.elapsed();
    let burst = child.status().rss;
    let drain = Instant::now();
    while child.status().inbox > 0 && drain.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_in = drain.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let drained = child.status().rss;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let settled = child.status();
    println!(
        "cache_mb={cache_mb} transactions={TXNS}x{:.1}MiB ({} events) idle={} after_burst={} after_drain={} after_15s={} peak={} acked_in_s={:.1} drained_in_s={:.1} inbox_left={} store_on_disk={} MiB",
        largest as f64 / (1024.0 * 1024.0),
        TXNS * EVENTS_PER_TXN,
        mb(idle),
        mb(burst),
        mb(drained),
        mb(settled.rss),
        mb(settled.hwm),
        acked.as_secs_f64(),
        drained_in.as_secs_f64(),
        settled.inbox,
        settled.disk_mib,
    );
    drop(child.process.stdin.take());
    let status = child.process.wait().expect("child exit");
    assert!(status.success(), "cache_mb={cache_mb}: {status}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let cache_mb = args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .expect("--child <cache_mb>");
        runtime.block_on(child(cache_mb));
        return;
    }
    println!(
        "isthmus memory benchmark: RSS idle, after a burst of maximum-size transactions, after the inbox drained, 15 s later"
    );
    let me = std::env::current_exe().expect("current exe");
    for cache_mb in [16u64, 1024] {
        runtime.block_on(measure(&me, cache_mb));
    }
}
