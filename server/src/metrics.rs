//! The server's metrics, served as Prometheus text on `GET /metrics`.
//!
//! Each [`crate::Server`] has its own registry (several servers may share a process, as in tests).
//! Counters and histograms are updated where things happen; gauges that describe state (slots
//! held, memory engine size) are read when the metrics are scraped.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Seconds buckets for latencies, from 0.1 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];

/// Every metric of one server.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Connections (any kind) holding a slot now; set at scrape time.
    pub(crate) connections_open: IntGauge,
    /// WebSocket connections open now.
    pub(crate) websockets_open: IntGauge,
    /// Sockets given a slot.
    pub(crate) connections_accepted: IntCounter,
    /// Sockets and upgrades refused, by reason.
    pub(crate) connections_refused: IntCounterVec,
    /// Subscriptions held now.
    pub(crate) subscriptions: IntGauge,
    /// Consumer group memberships held now.
    pub(crate) group_members: IntGauge,
    /// Entries stored through this server.
    pub(crate) publishes: IntCounter,
    /// Entries queued to live subscribers (one per entry per subscriber).
    pub(crate) deliveries: IntCounter,
    /// Error replies, by code.
    pub(crate) errors: IntCounterVec,
    /// Connections the server closed, by close code.
    pub(crate) closes: IntCounterVec,
    /// Bytes waiting in send queues, all connections together.
    pub(crate) send_queue_bytes: IntGauge,
    /// Time from an entry's ID (its XADD time) to its fan-out.
    pub(crate) reader_lag: Histogram,
    /// History pages sent by replays.
    pub(crate) replay_pages: IntCounter,
    /// Memory engine: bytes and entries accounted; set at scrape time.
    pub(crate) memory_bytes: IntGauge,
    pub(crate) memory_entries: IntGauge,
}

impl Metrics {
    /// Builds the metrics and registers them, with `extra` collectors (the engine's).
    pub(crate) fn new(extra: Vec<Box<dyn prometheus::core::Collector>>) -> Metrics {
        let registry = Registry::new_custom(Some("redistribute".into()), None).expect("a valid prefix");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("a valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("a valid metric");
        let counters = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid metric")
        };
        let metrics = Metrics {
            connections_open: gauge("connections_open", "Connections (WebSocket or HTTP) holding a slot"),
            websockets_open: gauge("websockets_open", "WebSocket connections open"),
            connections_accepted: counter("connections_accepted_total", "Sockets given a connection slot"),
            connections_refused: counters(
                "connections_refused_total",
                "Sockets and WebSocket upgrades refused, by reason",
                "reason",
            ),
            subscriptions: gauge("subscriptions", "Channel subscriptions held"),
            group_members: gauge("group_members", "Consumer group memberships held"),
            publishes: counter("publishes_total", "Entries stored through this server"),
            deliveries: counter("deliveries_total", "Entries queued to live subscribers, one per subscriber"),
            errors: counters("errors_total", "Error replies, by code", "code"),
            closes: counters("closes_total", "Connections closed by the server, by close code", "code"),
            send_queue_bytes: gauge("send_queue_bytes", "Bytes waiting in connections' send queues"),
            reader_lag: Histogram::with_opts(
                HistogramOpts::new("reader_lag_seconds", "Time from an entry's ID (XADD time) to its fan-out")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("a valid metric"),
            replay_pages: counter("replay_pages_total", "History pages sent by replays"),
            memory_bytes: gauge("memory_engine_bytes", "Memory engine: bytes accounted against its budget"),
            memory_entries: gauge("memory_engine_entries", "Memory engine: entries held"),
            registry,
        };
        let own: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.connections_open.clone()),
            Box::new(metrics.websockets_open.clone()),
            Box::new(metrics.connections_accepted.clone()),
            Box::new(metrics.connections_refused.clone()),
            Box::new(metrics.subscriptions.clone()),
            Box::new(metrics.group_members.clone()),
            Box::new(metrics.publishes.clone()),
            Box::new(metrics.deliveries.clone()),
            Box::new(metrics.errors.clone()),
            Box::new(metrics.closes.clone()),
            Box::new(metrics.send_queue_bytes.clone()),
            Box::new(metrics.reader_lag.clone()),
            Box::new(metrics.replay_pages.clone()),
            Box::new(metrics.memory_bytes.clone()),
            Box::new(metrics.memory_entries.clone()),
        ];
        for collector in own.into_iter().chain(extra) {
            metrics.registry.register(collector).expect("metric names are unique");
        }
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// A histogram of Redis command latencies by command, for the Redis engine to observe.
pub(crate) fn command_latency() -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new("redis_command_seconds", "Latency of Redis commands, by command")
            .buckets(LATENCY_BUCKETS.to_vec()),
        &["command"],
    )
    .expect("a valid metric")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_the_prefix() {
        let latency = command_latency();
        let metrics = Metrics::new(vec![Box::new(latency.clone())]);
        metrics.publishes.inc();
        metrics.errors.with_label_values(&["rate_limited"]).inc_by(2);
        latency.with_label_values(&["XADD"]).observe(0.002);
        let text = metrics.render();
        assert!(
            text.contains("# TYPE redistribute_publishes_total counter\nredistribute_publishes_total 1\n"),
            "{text}"
        );
        assert!(text.contains("redistribute_errors_total{code=\"rate_limited\"} 2\n"), "{text}");
        assert!(text.contains("redistribute_redis_command_seconds_count{command=\"XADD\"} 1\n"), "{text}");
    }
}
