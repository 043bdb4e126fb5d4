//! Prometheus metrics for `/metrics` on the admin listener.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Handshakes (and `auth = session` requests) by result: ok, or the refusal reason.
    pub auth_results: IntCounterVec,
    pub session_lookup_seconds: HistogramVec,
    pub upgraded_connections: IntGauge,
    pub upstream_errors: IntCounterVec,
    pub requests: IntCounterVec,
    /// Requests counted in `requests` whose access line was skipped or sampled away
    /// (`[gateway] access_log`), by route and kind (`polling`).
    pub access_log_suppressed: IntCounterVec,
    /// Config reloads by result (`ok`, `error`: refused, the running config stays).
    pub config_reloads: IntCounterVec,
    /// 1, labelled with the hash of the config serving now.
    pub config_info: IntGaugeVec,
    /// When the config serving now was loaded (Unix seconds).
    pub config_loaded_seconds: Gauge,
    /// Handshakes refused by admission control, by route and limit (`admission`).
    pub admission_refused: IntCounterVec,
    /// Session-store lookups waiting on the store now (bounded by the lookup cap).
    pub lookups_in_flight: IntGauge,
    /// Requests sent to an upstream chosen in panic mode (no node of the route was healthy).
    pub upstream_panic: IntCounterVec,
    /// Tunnels closed by the paced drain (`drain`).
    pub drain_closed: IntCounter,
    /// 1 while this process drains (shutting down or upgraded away).
    pub draining: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let auth_results = IntCounterVec::new(
            Opts::new(
                "gateway_handshakes_total",
                "Authenticated requests (Socket.IO handshakes and session routes) by result",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let session_lookup_seconds = HistogramVec::new(
            HistogramOpts::new(
                "gateway_session_lookup_seconds",
                "Session store lookup latency",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["store"],
        )
        .expect("valid metric");
        let upgraded_connections = IntGauge::new(
            "gateway_upgraded_connections",
            "Upgraded (WebSocket) connections currently proxied",
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_errors_total",
                "Failures to connect to or proxy to an upstream",
            ),
            &["route", "kind"],
        )
        .expect("valid metric");
        let requests = IntCounterVec::new(
            Opts::new("gateway_requests_total", "Requests by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let access_log_suppressed = IntCounterVec::new(
            Opts::new(
                "gateway_access_log_suppressed_total",
                "Requests not written to the access log (gateway.access_log), by route and kind",
            ),
            &["route", "kind"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "gateway_config_reloads_total",
                "Config reloads (SIGHUP, POST /reload) by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let config_info = IntGaugeVec::new(
            Opts::new(
                "gateway_config_info",
                "The config serving now: 1, labelled with its file's SHA-256",
            ),
            &["hash"],
        )
        .expect("valid metric");
        let config_loaded_seconds = Gauge::new(
            "gateway_config_loaded_timestamp_seconds",
            "When the config serving now was loaded (Unix time)",
        )
        .expect("valid metric");
        let admission_refused = IntCounterVec::new(
            Opts::new(
                "gateway_admission_refused_total",
                "Handshakes refused by admission control ([admission]), by route and limit",
            ),
            &["route", "limit"],
        )
        .expect("valid metric");
        let lookups_in_flight = IntGauge::new(
            "gateway_session_lookups_in_flight",
            "Session-store lookups in flight ([admission] max_concurrent_lookups bounds them)",
        )
        .expect("valid metric");
        let upstream_panic = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_panic_total",
                "Requests routed in panic mode: no upstream of the route was healthy, so every \
                 node was tried regardless of health",
            ),
            &["route"],
        )
        .expect("valid metric");
        let drain_closed = IntCounter::new(
            "gateway_drain_closed_total",
            "Upgraded connections closed by the paced drain on shutdown or upgrade",
        )
        .expect("valid metric");
        let draining = IntGauge::new(
            "gateway_draining",
            "1 while this process drains its tunnels before exiting",
        )
        .expect("valid metric");
        for c in [
            Box::new(auth_results.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(session_lookup_seconds.clone()),
            Box::new(upgraded_connections.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(requests.clone()),
            Box::new(access_log_suppressed.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_info.clone()),
            Box::new(config_loaded_seconds.clone()),
            Box::new(admission_refused.clone()),
            Box::new(lookups_in_flight.clone()),
            Box::new(upstream_panic.clone()),
            Box::new(drain_closed.clone()),
            Box::new(draining.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            auth_results,
            session_lookup_seconds,
            upgraded_connections,
            upstream_errors,
            requests,
            access_log_suppressed,
            config_reloads,
            config_info,
            config_loaded_seconds,
            admission_refused,
            lookups_in_flight,
            upstream_panic,
            drain_closed,
            draining,
        }
    }

    /// Records the config now serving (at start and after each successful reload).
    pub fn config_loaded(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        self.config_loaded_seconds.set(crate::live::now_unix());
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
