//! Prometheus metrics, owned by one [`Metrics`] value passed to whoever records.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the bridge exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Time from receiving a transaction to answering it, seconds.
    pub txn_seconds: HistogramVec,
    /// Events handled, by direction (`to_remote`, `to_matrix`), type and result.
    pub events: IntCounterVec,
    /// Items waiting in the durable inbox.
    pub inbox_depth: IntGauge,
    /// Latency of homeserver requests, seconds, by endpoint.
    pub matrix_request_seconds: HistogramVec,
    /// Latency of calls into remote networks, seconds, by network and operation.
    pub remote_request_seconds: HistogramVec,
    /// Portals in the store.
    pub portals: IntGauge,
    /// Ghosts in the store.
    pub ghosts: IntGauge,
    /// Logins and bridge-wide links by network and state.
    pub logins: IntGaugeVec,
    /// Bytes the store takes on disk.
    pub store_size_bytes: IntGauge,
    /// Portal tasks running.
    pub portal_tasks: IntGauge,
    /// Incoming items skipped on purpose, by reason (`malformed`: an event of a transaction
    /// that could not be read).
    pub skipped_events: IntCounterVec,
    /// Items set aside after failing too often (see the `quarantine` command).
    pub quarantined: IntGauge,
    /// 1 while the store takes writes, 0 after a write failed.
    pub store_healthy: IntGauge,
    /// Creations refused by `bridge.limits`, by limit (`what`: the key below `bridge.limits`).
    pub rate_limited: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let txn_seconds = HistogramVec::new(
            HistogramOpts::new(
                "bridge_txn_seconds",
                "Time from receiving a homeserver transaction to acknowledging it",
            )
            .buckets(buckets.clone()),
            &["result"],
        )
        .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new("bridge_events_total", "Events handled by the bridge"),
            &["direction", "type", "result"],
        )
        .expect("valid metric");
        let inbox_depth =
            IntGauge::new("bridge_inbox_depth", "Events waiting in the durable inbox")
                .expect("valid metric");
        let matrix_request_seconds = HistogramVec::new(
            HistogramOpts::new("matrix_request_seconds", "Latency of homeserver requests")
                .buckets(buckets.clone()),
            &["endpoint"],
        )
        .expect("valid metric");
        let remote_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "remote_request_seconds",
                "Latency of calls into remote networks",
            )
            .buckets(buckets),
            &["network", "operation"],
        )
        .expect("valid metric");
        let portals = IntGauge::new("portals_total", "Portals in the store").expect("valid metric");
        let ghosts = IntGauge::new("ghosts_total", "Ghosts in the store").expect("valid metric");
        let logins = IntGaugeVec::new(
            Opts::new(
                "logins",
                "Logins and bridge-wide links by network and state",
            ),
            &["network", "state"],
        )
        .expect("valid metric");
        let store_size_bytes = IntGauge::new("sled_size_bytes", "Bytes the store takes on disk")
            .expect("valid metric");
        let portal_tasks =
            IntGauge::new("bridge_portal_tasks", "Portal tasks running").expect("valid metric");
        let skipped_events = IntCounterVec::new(
            Opts::new(
                "bridge_skipped_events_total",
                "Incoming items skipped on purpose, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let quarantined = IntGauge::new(
            "bridge_quarantined_items",
            "Items set aside after failing too often",
        )
        .expect("valid metric");
        let store_healthy = IntGauge::new("bridge_store_healthy", "1 while the store takes writes")
            .expect("valid metric");
        store_healthy.set(1);
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "bridge_rate_limited_total",
                "New portals, ghosts and invites refused by bridge.limits, by limit",
            ),
            &["what"],
        )
        .expect("valid metric");
        skipped_events.with_label_values(&["malformed"]);
        for c in [
            Box::new(txn_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(events.clone()),
            Box::new(inbox_depth.clone()),
            Box::new(matrix_request_seconds.clone()),
            Box::new(remote_request_seconds.clone()),
            Box::new(portals.clone()),
            Box::new(ghosts.clone()),
            Box::new(logins.clone()),
            Box::new(store_size_bytes.clone()),
            Box::new(portal_tasks.clone()),
            Box::new(skipped_events.clone()),
            Box::new(quarantined.clone()),
            Box::new(store_healthy.clone()),
            Box::new(rate_limited.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Series that exist from the start, so dashboards and alerts see zeros rather than
        // nothing on a bridge that has not handled anything yet.
        for direction in ["to_remote", "to_matrix"] {
            events.with_label_values(&[direction, "message", "ok"]);
        }
        txn_seconds.with_label_values(&["ok"]);
        Self {
            registry,
            txn_seconds,
            events,
            inbox_depth,
            matrix_request_seconds,
            remote_request_seconds,
            portals,
            ghosts,
            logins,
            store_size_bytes,
            portal_tasks,
            skipped_events,
            quarantined,
            store_healthy,
            rate_limited,
        }
    }

    /// Counts one handled event.
    pub fn event(&self, direction: &str, kind: &str, result: &str) {
        self.events
            .with_label_values(&[direction, kind, result])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
