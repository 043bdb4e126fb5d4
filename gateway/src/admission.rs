//! Phase 2a: admission control, the step of the pipeline that runs before a handshake may cost
//! anything (a session-store lookup, an assertion signature, an upstream connection).
//!
//! Four limits, each counted in `gateway_admission_refused_total{route,limit}`:
//! - `ip_rate`: Socket.IO handshakes per second from one client IP (the address
//!   `forwarding` believes: the peer, or what a trusted proxy says), refused with 429;
//! - `route_rate`: handshakes per second on one route, all clients together, 429;
//! - `lookup_cap`: session-store lookups in flight at once, 503 (the store is the bottleneck,
//!   not this client); taken only after the cookie's signature verified, so forged cookies
//!   never hold a slot (see `session::SessionSource::authenticate`);
//! - `user_tunnels`: WebSocket tunnels one user may hold open at once, 429.
//!
//! Every refusal carries `Retry-After`. Rates are estimated with `pingora-limits` (a count-min
//! sketch per one-second window, interpolated over the previous window), so memory stays fixed
//! however many addresses flood. All limits are per gateway process: with R replicas behind a
//! load balancer the effective limits are up to R times the configured ones.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora_limits::rate::{Rate, PROPORTIONAL_RATE_ESTIMATE_CALC_FN};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// `[admission]`. Zero turns a limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Socket.IO handshakes per second from one client IP.
    #[serde(default)]
    pub handshakes_per_ip_per_sec: u32,
    /// Session-store lookups in flight at once, over all session sources.
    #[serde(default = "default_max_lookups")]
    pub max_concurrent_lookups: u32,
    /// Open WebSocket tunnels per user (assertion `sub`), counted from an authenticated
    /// `transport=websocket` handshake until its tunnel closes.
    #[serde(default)]
    pub max_tunnels_per_user: u32,
    /// The `Retry-After` sent with every refusal here.
    #[serde(default = "default_retry_after")]
    pub retry_after_secs: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            handshakes_per_ip_per_sec: 0,
            max_concurrent_lookups: default_max_lookups(),
            max_tunnels_per_user: 0,
            retry_after_secs: default_retry_after(),
        }
    }
}

/// High enough that only a stalled store fills it (a healthy Redis answers a lookup in well
/// under a millisecond, so even thousands of handshakes a second keep few in flight), low
/// enough that a stalled store is not buried under a queue it will answer too late anyway.
fn default_max_lookups() -> u32 {
    256
}
fn default_retry_after() -> u32 {
    1
}

/// Which limit refused a handshake: the `limit` label of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    IpRate,
    RouteRate,
    LookupCap,
    UserTunnels,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Self::IpRate => "ip_rate",
            Self::RouteRate => "route_rate",
            Self::LookupCap => "lookup_cap",
            Self::UserTunnels => "user_tunnels",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Self::LookupCap => 503,
            _ => 429,
        }
    }

    pub fn body(self) -> &'static str {
        match self {
            Self::LookupCap => "session store busy, retry later\n",
            Self::UserTunnels => "too many open connections for this user\n",
            Self::IpRate | Self::RouteRate => "too many handshakes, retry later\n",
        }
    }
}

/// A handshake refused by one of the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub limit: Limit,
    pub retry_after_secs: u32,
}

/// The process-wide admission state, shared by every listener.
pub struct Admission {
    per_ip: Option<(Rate, f64)>,
    /// Per-route limits by route name; one sketch for all routes (few keys, no collisions).
    per_route: Option<(Rate, HashMap<String, f64>)>,
    lookups: Arc<LookupSlots>,
    max_tunnels_per_user: u32,
    tunnels: Arc<Mutex<HashMap<String, u32>>>,
    retry_after_secs: u32,
    metrics: Arc<Metrics>,
}

impl Admission {
    /// `routes`: each route's name and its `max_handshakes_per_sec` (0: none).
    pub fn new(cfg: &AdmissionConfig, routes: &[(String, u32)], metrics: Arc<Metrics>) -> Self {
        let window = Duration::from_secs(1);
        let route_limits: HashMap<String, f64> = routes
            .iter()
            .filter(|(_, l)| *l > 0)
            .map(|(n, l)| (n.clone(), f64::from(*l)))
            .collect();
        Self {
            per_ip: (cfg.handshakes_per_ip_per_sec > 0)
                .then(|| (Rate::new(window), f64::from(cfg.handshakes_per_ip_per_sec))),
            per_route: (!route_limits.is_empty()).then(|| (Rate::new(window), route_limits)),
            lookups: Arc::new(LookupSlots {
                slots: (cfg.max_concurrent_lookups > 0)
                    .then(|| Arc::new(Semaphore::new(cfg.max_concurrent_lookups as usize))),
                in_flight: metrics.lookups_in_flight.clone(),
            }),
            max_tunnels_per_user: cfg.max_tunnels_per_user,
            tunnels: Arc::default(),
            retry_after_secs: cfg.retry_after_secs.max(1),
            metrics,
        }
    }

    /// The lookup slots, shared by every session source.
    pub fn lookup_slots(&self) -> Arc<LookupSlots> {
        self.lookups.clone()
    }

    pub fn retry_after_secs(&self) -> u32 {
        self.retry_after_secs
    }

    /// The rate limits, client IP first: a flooding address is refused before it can use up
    /// the route's budget, so it only ever spends its own.
    /// `client` is asked only when a per-IP limit is set.
    pub fn check_rates(
        &self,
        route: &str,
        client: impl FnOnce() -> Option<IpAddr>,
    ) -> Result<(), Refused> {
        if let Some((rate, limit)) = &self.per_ip {
            if let Some(ip) = client() {
                if over(rate, &ip, *limit) {
                    return Err(self.refused(route, Limit::IpRate));
                }
            }
        }
        if let Some((rate, limits)) = &self.per_route {
            if let Some(limit) = limits.get(route) {
                if over(rate, &route, *limit) {
                    return Err(self.refused(route, Limit::RouteRate));
                }
            }
        }
        Ok(())
    }

    /// Whether the open tunnels of each user are capped.
    pub fn caps_tunnels(&self) -> bool {
        self.max_tunnels_per_user > 0
    }

    /// A slot for one more open tunnel of `user`, released when the returned guard drops (when
    /// the tunnel closes, or the handshake ends without becoming one). `Ok(None)`: no cap.
    pub fn reserve_tunnel(&self, route: &str, user: &str) -> Result<Option<TunnelSlot>, Refused> {
        if self.max_tunnels_per_user == 0 {
            return Ok(None);
        }
        let mut open = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(user.to_string()).or_insert(0);
        if *n >= self.max_tunnels_per_user {
            drop(open);
            return Err(self.refused(route, Limit::UserTunnels));
        }
        *n += 1;
        Ok(Some(TunnelSlot {
            user: user.to_string(),
            tunnels: self.tunnels.clone(),
        }))
    }

    /// Counts a refusal by the lookup cap (decided inside the session source).
    pub fn lookup_cap_refused(&self, route: &str) -> Refused {
        self.refused(route, Limit::LookupCap)
    }

    fn refused(&self, route: &str, limit: Limit) -> Refused {
        self.metrics
            .admission_refused
            .with_label_values(&[route, limit.label()])
            .inc();
        Refused {
            limit,
            retry_after_secs: self.retry_after_secs,
        }
    }
}

/// The cap on session-store lookups in flight, and their gauge.
pub struct LookupSlots {
    /// `None`: no cap (the gauge still counts).
    slots: Option<Arc<Semaphore>>,
    in_flight: prometheus::IntGauge,
}

impl LookupSlots {
    /// A slot for one lookup, or `None` when all are taken; held until the lookup ends.
    pub fn try_take(&self) -> Option<LookupSlot> {
        let permit = match &self.slots {
            Some(s) => Some(s.clone().try_acquire_owned().ok()?),
            None => None,
        };
        self.in_flight.inc();
        Some(LookupSlot {
            _permit: permit,
            in_flight: self.in_flight.clone(),
        })
    }
}

/// One lookup in flight.
pub struct LookupSlot {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    in_flight: prometheus::IntGauge,
}

impl Drop for LookupSlot {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// Counts this event and tells whether the key's rate, over the last second, is above `limit`.
/// Refused events count too: a client that keeps hammering stays refused until it slows down.
fn over<K: std::hash::Hash>(rate: &Rate, key: &K, limit: f64) -> bool {
    rate.observe(key, 1);
    rate.rate_with(key, PROPORTIONAL_RATE_ESTIMATE_CALC_FN) > limit
}

/// One reserved tunnel of one user; dropping it frees the slot.
pub struct TunnelSlot {
    user: String,
    tunnels: Arc<Mutex<HashMap<String, u32>>>,
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        let mut open = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(per_ip: u32, route: u32, tunnels: u32) -> Admission {
        Admission::new(
            &AdmissionConfig {
                handshakes_per_ip_per_sec: per_ip,
                max_concurrent_lookups: 4,
                max_tunnels_per_user: tunnels,
                retry_after_secs: 2,
            },
            &[("io".into(), route), ("free".into(), 0)],
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn one_ip_over_its_rate_is_refused_others_are_not() {
        let a = admission(10, 0, 0);
        let flooder: IpAddr = "203.0.113.7".parse().unwrap();
        let results: Vec<_> = (0..50)
            .map(|_| a.check_rates("io", || Some(flooder)))
            .collect();
        let refused = results.iter().filter(|r| r.is_err()).count();
        // Within one window the estimate is the count so far: the first `limit` pass.
        assert_eq!(refused, 40, "{results:?}");
        assert_eq!(
            results[49],
            Err(Refused {
                limit: Limit::IpRate,
                retry_after_secs: 2
            })
        );
        for i in 0..200u8 {
            let other = IpAddr::from([198, 51, 100, i]);
            assert_eq!(a.check_rates("io", || Some(other)), Ok(()), "{other}");
        }
    }

    #[test]
    fn route_rate_counts_only_what_the_ip_limit_let_through() {
        let a = admission(5, 20, 0);
        let flooder: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..1000 {
            let _ = a.check_rates("io", || Some(flooder));
        }
        // The flooder spent 5 of the route's 20; 15 others still get in, then the route is full.
        let passed = (0..30u8)
            .filter(|i| {
                a.check_rates("io", || Some(IpAddr::from([198, 51, 100, *i])))
                    .is_ok()
            })
            .count();
        assert_eq!(passed, 15);
        assert_eq!(
            a.check_rates("io", || Some("198.51.100.200".parse().unwrap()))
                .map_err(|r| r.limit),
            Err(Limit::RouteRate)
        );
        // A route without a limit is unaffected.
        assert_eq!(a.check_rates("free", || None), Ok(()));
    }

    #[test]
    fn tunnel_slots_are_per_user_and_freed_on_drop() {
        let a = admission(0, 0, 2);
        let s1 = a.reserve_tunnel("io", "alice").unwrap();
        let s2 = a.reserve_tunnel("io", "alice").unwrap();
        assert!(s1.is_some() && s2.is_some());
        assert_eq!(
            a.reserve_tunnel("io", "alice").err().map(|r| r.limit),
            Some(Limit::UserTunnels)
        );
        assert!(a.reserve_tunnel("io", "bob").unwrap().is_some());
        drop(s1);
        let s3 = a.reserve_tunnel("io", "alice").unwrap();
        assert!(s3.is_some());
        drop((s2, s3));
        assert!(a.tunnels.lock().unwrap().is_empty(), "no entry left behind");
        // No cap: nothing is tracked.
        assert!(admission(0, 0, 0)
            .reserve_tunnel("io", "alice")
            .unwrap()
            .is_none());
    }
}
