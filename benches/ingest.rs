//! Transaction ingest benchmark: how fast the appservice endpoint accepts homeserver
//! transactions with a durable acknowledgement, measured over real HTTP on loopback.
//!
//! Each transaction carries 100 `m.room.message` events spread over 50 rooms; the handler
//! parses them, commits them to the sled inbox, flushes to disk, answers 200, and the portal
//! queues then handle and remove them (the rooms are not portals, so handling is cheap and the
//! figure is the core's own capacity, not a network's). Run with:
//!
//!     cargo bench --bench ingest
//!
//! Prints events per second and the p50/p99 acknowledgement latency, sequential (one
//! transaction at a time, as Synapse sends them) and with 4 senders in parallel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus::appservice::{AppState, router};
use isthmus::bridge::Bridge;
use isthmus::config::Config;
use isthmus::matrix::{HomeserverClient, HsConfig};
use isthmus::metrics::Metrics;
use isthmus::store::Store;

const EVENTS_PER_TXN: usize = 100;
const HS_TOKEN: &str = "bench_hs_token";

fn config(store: &std::path::Path) -> Config {
    let text = format!(
        r#"
homeserver: {{url: "http://127.0.0.1:9", domain: bench.test}}
appservice:
  listen: 127.0.0.1:0
  url: http://127.0.0.1:0
  as_token: bench_as_token
  hs_token: {HS_TOKEN}
database: {{path: "{}"}}
bridge:
  permissions: {{"bench.test": user}}
"#,
        store.display()
    );
    Config::parse(&text).expect("bench config parses")
}

fn transaction(txn: usize) -> String {
    let events: Vec<String> = (0..EVENTS_PER_TXN)
        .map(|i| {
            format!(
                r#"{{"type":"m.room.message","room_id":"!room{}:bench.test","sender":"@user{}:bench.test","event_id":"$ev{txn}_{i}","origin_server_ts":1700000000000,"unsigned":{{"age":12}},"content":{{"msgtype":"m.text","body":"benchmark message number {i} of transaction {txn}, with a little padding to look like chat"}}}}"#,
                i % 50,
                i % 7
            )
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn run(
    url: &str,
    client: &reqwest::Client,
    senders: usize,
    txns_per_sender: usize,
    offset: usize,
) -> (f64, Duration, Duration) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let client = client.clone();
        let url = url.to_owned();
        let bodies: Vec<(usize, String)> = (0..txns_per_sender)
            .map(|t| {
                let id = offset + s * txns_per_sender + t;
                (id, transaction(id))
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(bodies.len());
            for (id, body) in bodies {
                let t0 = Instant::now();
                let r = client
                    .put(format!("{url}/_matrix/app/v1/transactions/{id}"))
                    .bearer_auth(HS_TOKEN)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("request");
                assert!(r.status().is_success(), "status {}", r.status());
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("sender task"));
    }
    let elapsed = started.elapsed();
    all.sort();
    let events = (senders * txns_per_sender * EVENTS_PER_TXN) as f64;
    (
        events / elapsed.as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Arc::new(config(dir.path()));
    let store = Store::open(
        dir.path(),
        isthmus::store::LoginKey::ephemeral().unwrap(),
        config.database.cache_bytes(),
    )
    .expect("store");
    let metrics = Metrics::new();
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
        metrics,
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
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let client = reqwest::Client::new();

    // Warm-up.
    run(&url, &client, 1, 20, 1_000_000).await;

    println!(
        "isthmus ingest benchmark: {EVENTS_PER_TXN}-event transactions, durable acknowledgement (sled flush)"
    );
    for (senders, txns) in [(1usize, 300usize), (4, 100)] {
        let (eps, p50, p99) = run(&url, &client, senders, txns, senders * 10_000).await;
        println!(
            "senders={senders} transactions={} events/s={:.0} ack_p50_ms={:.2} ack_p99_ms={:.2}",
            senders * txns,
            eps,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    let drain = Instant::now();
    while store.inbox_len() > 0 && drain.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "inbox drained to {} items {:.0} ms after the last acknowledgement; store {} KiB on disk",
        store.inbox_len(),
        drain.elapsed().as_secs_f64() * 1e3,
        store.size_on_disk() / 1024
    );
}
