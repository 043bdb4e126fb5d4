//! Prometheus metrics served on `/metrics`.

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub connected_sockets: IntGauge,
    pub online_users: IntGauge,
    pub events_emitted: IntCounterVec,
    pub rejected_handshakes: IntCounterVec,
    pub backend_healthy: IntGauge,
    pub cluster_link_up: IntGauge,
    /// Heap bytes the service uses, and what the allocator holds resident for it. The gap is
    /// fragmentation and freed memory not yet returned: what per-socket memory tuning is about.
    allocator: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let connected_sockets = IntGauge::new(
            "presence_connected_sockets",
            "Sockets connected to this node",
        )?;
        let online_users = IntGauge::new(
            "presence_online_users",
            "Users online on any node, as last seen by this node",
        )?;
        let events_emitted = IntCounterVec::new(
            Opts::new(
                "presence_events_emitted_total",
                "Presence events emitted (one per broadcast or per socket snapshot)",
            ),
            &["event"],
        )?;
        let rejected_handshakes = IntCounterVec::new(
            Opts::new(
                "presence_rejected_handshakes_total",
                "Refused Socket.IO connections and HTTP requests, by reason",
            ),
            &["reason"],
        )?;
        let backend_healthy = IntGauge::new(
            "presence_backend_healthy",
            "1 while the shared presence store is reachable",
        )?;
        let cluster_link_up = IntGauge::new(
            "presence_cluster_link_up",
            "1 while broadcasts reach the other nodes (subscribed to the cluster channels)",
        )?;
        let allocator = IntGaugeVec::new(
            Opts::new(
                "presence_allocator_bytes",
                "jemalloc: bytes allocated by the service, and bytes resident in the allocator",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(allocator.clone()))?;
        registry.register(Box::new(connected_sockets.clone()))?;
        registry.register(Box::new(online_users.clone()))?;
        registry.register(Box::new(events_emitted.clone()))?;
        registry.register(Box::new(rejected_handshakes.clone()))?;
        registry.register(Box::new(backend_healthy.clone()))?;
        registry.register(Box::new(cluster_link_up.clone()))?;
        backend_healthy.set(1);
        cluster_link_up.set(1);
        Ok(Self {
            registry,
            connected_sockets,
            online_users,
            events_emitted,
            rejected_handshakes,
            backend_healthy,
            cluster_link_up,
            allocator,
        })
    }

    pub fn emitted(&self, event: &str) {
        self.events_emitted.with_label_values(&[event]).inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected_handshakes.with_label_values(&[reason]).inc();
    }

    pub fn render(&self) -> String {
        self.read_allocator();
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// jemalloc's statistics are a snapshot refreshed by advancing its epoch.
    fn read_allocator(&self) {
        use tikv_jemalloc_ctl::{epoch, stats};
        if epoch::advance().is_err() {
            return;
        }
        for (kind, value) in [
            ("allocated", stats::allocated::read()),
            ("resident", stats::resident::read()),
        ] {
            if let Ok(v) = value {
                self.allocator
                    .with_label_values(&[kind])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
    }
}
