//! Phase 3: choose the upstream.
//!
//! Each route has a round-robin pool with TCP health checks (pingora-load-balancing). Engine.IO
//! long-polling needs stickiness: every request of one Engine.IO session (and its upgrade to
//! WebSocket) must reach the node that created it, because that node alone knows the `sid`.
//! The gateway learns `sid -> node` from the handshake response and routes by it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{health_check::TcpHealthCheck, Backend, Backends, LoadBalancer};

/// Checks `host:port` syntax without resolving (names may resolve only once the stack is up).
pub fn parse_upstream(s: &str) -> Result<(), String> {
    let (host, port) = s.rsplit_once(':').ok_or("missing :port")?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err("expected host:port".into());
    }
    Ok(())
}

pub struct UpstreamPool {
    /// The route's name, for logs.
    route: String,
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    sticky: StickyTable,
    /// What the pool was built from, so a reload with the same upstreams keeps it (and its
    /// health state and `sid` stickiness).
    built_from: (Vec<String>, Duration),
    /// Stops the pool's discovery and health checks when the pool is dropped (a reload that
    /// moved the route's upstreams, once the last request using the old pool is done).
    _checks: Option<StopOnDrop>,
    /// Round-robin position over all nodes, for panic mode.
    panic_next: AtomicUsize,
    /// Whether the last choice was made in panic mode (logged on each change, not per request).
    panicking: AtomicBool,
}

/// Where a request goes, and whether it was chosen in panic mode (no node was healthy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub addr: SocketAddr,
    pub panic: bool,
}

impl UpstreamPool {
    /// A pool without background discovery or health checks (tests).
    pub fn new(route: String, lb: Arc<LoadBalancer<RoundRobin>>) -> Self {
        Self {
            route,
            lb,
            sticky: StickyTable::new(Duration::from_secs(600)),
            built_from: (Vec::new(), Duration::ZERO),
            _checks: None,
            panic_next: AtomicUsize::new(0),
            panicking: AtomicBool::new(false),
        }
    }

    /// A pool whose discovery and health checks run on `rt` for as long as the pool lives.
    /// Pools come and go with reloads, so the checks are not a Pingora service (those are
    /// fixed when the server starts).
    pub fn checked(
        route: String,
        lb: LoadBalancer<RoundRobin>,
        addrs: &[String],
        check_every: Duration,
        rt: &tokio::runtime::Handle,
    ) -> Self {
        use pingora::services::background::BackgroundService;
        let lb = Arc::new(lb);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task_lb = lb.clone();
        rt.spawn(async move { task_lb.start(stopped).await });
        Self {
            _checks: Some(StopOnDrop(stop)),
            built_from: (addrs.to_vec(), check_every),
            ..Self::new(route, lb)
        }
    }

    /// Whether this pool was built from exactly these upstreams and check interval.
    pub fn serves(&self, addrs: &[String], check_every: Duration) -> bool {
        self.built_from.0 == addrs && self.built_from.1 == check_every
    }

    pub fn len(&self) -> usize {
        self.lb.backends().get_backend().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct StopOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // No receiver left means the task already ended: nothing to stop.
        let _ = self.0.send(true);
    }
}

/// Upstream names are resolved again this often, so a container or host that comes back with a
/// new address is found without restarting the gateway.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// Service discovery by DNS: every `host:port` is looked up on each refresh. A name that does
/// not resolve right now is left out (its node is gone); if none resolves, the refresh fails and
/// the previous set stays (with health checks deciding what is usable).
pub struct DnsDiscovery {
    addrs: Vec<String>,
}

#[async_trait::async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut found = BTreeSet::new();
        let mut failures = Vec::new();
        for addr in &self.addrs {
            match tokio::net::lookup_host(addr.as_str()).await {
                Ok(resolved) => {
                    for sa in resolved {
                        if let Ok(b) = Backend::new(&sa.to_string()) {
                            found.insert(b);
                        }
                    }
                }
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        if found.is_empty() && !failures.is_empty() {
            return pingora::Error::e_explain(
                pingora::ErrorType::ConnectNoRoute,
                failures.join("; "),
            );
        }
        if !failures.is_empty() {
            tracing::warn!(unresolved = %failures.join("; "), "some upstream names do not resolve");
        }
        Ok((found, HashMap::new()))
    }
}

/// A round-robin balancer over DNS-discovered upstreams with TCP health checks. It must also run
/// as a background service for discovery and checks to repeat.
pub fn balancer(addrs: &[String], check_every: Duration) -> LoadBalancer<RoundRobin> {
    let discovery = DnsDiscovery {
        addrs: addrs.to_vec(),
    };
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(discovery)));
    let mut hc = TcpHealthCheck::new();
    hc.consecutive_failure = 1;
    hc.consecutive_success = 1;
    lb.set_health_check(hc);
    lb.health_check_frequency = Some(check_every);
    lb.update_frequency = Some(RESOLVE_EVERY);
    lb.parallel_health_check = true;
    lb
}

impl UpstreamPool {
    /// Next healthy upstream, round-robin. When no node is healthy, **panic mode** (as in
    /// Envoy): every node is tried in turn regardless of health, because health state lags
    /// reality by up to a check interval; a node that restarted answers as soon as it listens,
    /// and a node that is really down costs one failed connect (then one retry elsewhere).
    pub fn pick(&self) -> Option<Choice> {
        if let Some(addr) = self
            .lb
            .select(b"", 256)
            .and_then(|b| b.addr.as_inet().copied())
        {
            self.note_panic(false);
            return Some(Choice { addr, panic: false });
        }
        let all: Vec<SocketAddr> = self
            .lb
            .backends()
            .get_backend()
            .iter()
            .filter_map(|b| b.addr.as_inet().copied())
            .collect();
        if all.is_empty() {
            return None;
        }
        self.note_panic(true);
        let i = self.panic_next.fetch_add(1, Ordering::Relaxed) % all.len();
        Some(Choice {
            addr: all[i],
            panic: true,
        })
    }

    /// The node that owns Engine.IO session `sid`: from `hint` (the signed affinity cookie's
    /// entry for `sid`, already checked to name one of this route's nodes), this process's own
    /// table, or `fallback` (the cookie's node of the newest handshake), while it is healthy,
    /// or while no node is (panic mode); else any healthy one (the client then gets "unknown
    /// sid" from the new node and reconnects: the only option once the owner is gone).
    pub fn pick_for_sid(
        &self,
        sid: &str,
        hint: Option<SocketAddr>,
        fallback: Option<SocketAddr>,
    ) -> Option<Choice> {
        if let Some(addr) = hint.or_else(|| self.sticky.get(sid)).or(fallback) {
            if self.is_healthy(addr) {
                return Some(Choice { addr, panic: false });
            }
            if self.healthy_count() == 0 && self.is_member(addr) {
                self.note_panic(true);
                return Some(Choice { addr, panic: true });
            }
        }
        self.pick()
    }

    /// Logs entering and leaving panic mode once each, not once per request.
    fn note_panic(&self, now: bool) {
        if self.panicking.swap(now, Ordering::Relaxed) != now {
            if now {
                tracing::warn!(
                    route = %self.route,
                    nodes = self.len(),
                    "no healthy upstream: panic mode, trying every node regardless of health"
                );
            } else {
                tracing::info!(route = %self.route, "a healthy upstream again: panic mode over");
            }
        }
    }

    /// Whether `addr` is one of this route's nodes (healthy or not).
    pub fn is_member(&self, addr: SocketAddr) -> bool {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .any(|b| b.addr.as_inet() == Some(&addr))
    }

    pub fn remember_sid(&self, sid: String, addr: SocketAddr) {
        self.sticky.insert(sid, addr);
    }

    pub fn is_healthy(&self, addr: SocketAddr) -> bool {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .any(|b| b.addr.as_inet() == Some(&addr) && backends.ready(b))
    }

    pub fn healthy_count(&self) -> usize {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .filter(|b| backends.ready(b))
            .count()
    }
}

/// `sid -> node`, forgotten after `ttl` without use (a polling client is heard from at least
/// every ping interval, 25 s by default) and bounded in size.
struct StickyTable {
    ttl: Duration,
    inner: Mutex<HashMap<String, (SocketAddr, Instant)>>,
}

const STICKY_MAX: usize = 200_000;

impl StickyTable {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, sid: &str) -> Option<SocketAddr> {
        let mut map = self.inner.lock().ok()?;
        let entry = map.get_mut(sid)?;
        entry.1 = Instant::now();
        Some(entry.0)
    }

    fn insert(&self, sid: String, addr: SocketAddr) {
        let Ok(mut map) = self.inner.lock() else {
            return;
        };
        if map.len() >= STICKY_MAX {
            let ttl = self.ttl;
            map.retain(|_, (_, seen)| seen.elapsed() < ttl);
            if map.len() >= STICKY_MAX {
                map.clear();
            }
        }
        map.insert(sid, (addr, Instant::now()));
    }
}

/// The `sid` of an Engine.IO v4 polling handshake response body: `0{"sid":"...",...}`.
pub fn sid_from_open_packet(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let json = text.strip_prefix('0')?;
    let end = json.find('\u{1e}').unwrap_or(json.len());
    let v: serde_json::Value = serde_json::from_str(&json[..end]).ok()?;
    v.get("sid")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_syntax() {
        assert!(parse_upstream("127.0.0.1:3001").is_ok());
        assert!(parse_upstream("presence-1:3001").is_ok());
        assert!(parse_upstream("[::1]:80").is_ok());
        assert!(parse_upstream("nowhere").is_err());
        assert!(parse_upstream(":80").is_err());
        assert!(parse_upstream("a:99999").is_err());
    }

    #[test]
    fn open_packet_sid() {
        let body = br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        assert_eq!(
            sid_from_open_packet(body).as_deref(),
            Some("lv_VI97HAXpY6yYWAAAC")
        );
        assert_eq!(sid_from_open_packet(b"40"), None);
        assert_eq!(sid_from_open_packet(b"0{bad"), None);
    }

    #[test]
    fn sticky_table_remembers_and_refreshes() {
        let t = StickyTable::new(Duration::from_secs(60));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        t.insert("s1".into(), a);
        assert_eq!(t.get("s1"), Some(a));
        assert_eq!(t.get("s2"), None);
    }
}
