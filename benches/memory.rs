//! Memory benchmark: the bridge's resident memory when the homeserver sends a burst of
//! transactions at the largest size the appservice accepts, and how `database.cache_mb`
//! bounds it. Run with:
//!
//!     cargo bench --bench memory
//!
//! For each cache size (16 MiB, the default, and 1024 MiB) a fresh process (this binary run
//! again with `--child <cache_mb>`, so one size's freed memory never counts for the other)
//! serves the appservice API over real HTTP on loopback, as `benches/ingest.rs` does, and
//! reports `VmRSS` from `/proc/self/status`: idle, right after the burst was acknowledged,
//! and once the portal queues drained the inbox; `VmHWM` is the peak.

use std::process::Command;
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
    let max_body = config.appservice.max_body_bytes;
    let bridge = Bridge::new(
        config.clone(),
        hs,
        store.clone(),
        Metrics::new(),
        Vec::new(),
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
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let client = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = status_kb("VmRSS");

    let started = Instant::now();
    let mut largest = 0;
    for t in 0..TXNS {
        // Built one at a time, so the sender holds one body, as a homeserver would.
        let body = transaction(t);
        largest = largest.max(body.len());
        assert!(body.len() <= max_body, "a transaction over max_body_bytes");
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
    let burst = status_kb("VmRSS");
    let drain = Instant::now();
    while store.inbox_len() > 0 && drain.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_in = drain.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let drained = status_kb("VmRSS");
    println!(
        "cache_mb={cache_mb} transactions={TXNS}x{:.1}MiB ({} events) idle={} after_burst={} after_drain={} peak={} acked_in_s={:.1} drained_in_s={:.1} inbox_left={} store_on_disk={} MiB",
        largest as f64 / (1024.0 * 1024.0),
        TXNS * EVENTS_PER_TXN,
        mb(idle),
        mb(burst),
        mb(drained),
        mb(status_kb("VmHWM")),
        acked.as_secs_f64(),
        drained_in.as_secs_f64(),
        store.inbox_len(),
        store.size_on_disk() / (1024 * 1024),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let cache_mb = args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .expect("--child <cache_mb>");
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(child(cache_mb));
        return;
    }
    println!(
        "isthmus memory benchmark: RSS idle, after a burst of maximum-size transactions, after the inbox drained"
    );
    let me = std::env::current_exe().expect("current exe");
    for cache_mb in [16u64, 1024] {
        let status = Command::new(&me)
            .args(["--child", &cache_mb.to_string()])
            .status()
            .expect("child");
        assert!(status.success(), "cache_mb={cache_mb}: {status}");
    }
}
