//! The request pipeline, as Pingora's `ProxyHttp` phases:
//!
//! `request_filter`: route → classify → admit (rate limits, `admission`) → authenticate (lookup
//! cap, tunnels per user) (→ refuse with a status)
//! `upstream_peer`: choose upstream (sticky for Engine.IO sessions)
//! `upstream_request_filter`: rewrite headers (strip smuggled identity, add ours, client-address
//! headers: Forwarded, X-Forwarded-*, X-Real-IP)
//! `response_filter` / `response_body_filter`: note upgrades, learn Engine.IO `sid`s
//! `logging`: one access line, metrics, logout notification
//!
//! A WebSocket handshake leaves that path after `request_filter`: `proxy_upgrade` runs the same
//! phases itself (`upgrade`), and once the `101` is written and logged the connection leaves
//! Pingora for the lean relay (`tunnel`).
//!
//! Each decision is a plain function in its own module (classify, session, forwarding,
//! routing, upstream) so it is unit-tested without a server.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use identity_assertion::Identity;
use pingora::prelude::*;
use pingora::protocols::Stream;
use pingora::proxy::FailToProxy;
use pingora::ErrorType;

use crate::admission::{Admission, Refused, TunnelSlot};
use crate::classify::{self, HandshakeClass, RequestFacts, Transport};
use crate::config::{AccessLogConfig, AuthPolicy, PollingLog};
use crate::drain::{Drain, InFlight};
use crate::first_request;
use crate::forwarding;
use crate::live::{Live, LiveState};
use crate::logout::LogoutNotifier;
use crate::metrics::Metrics;
use crate::routing::Route;
use crate::session::SessionError;
use crate::tunnel::{self, OpenTunnel, Tunnel};
use crate::upgrade::{self, Upstream};
use crate::upstream::Choice;

/// Everything a listener's proxy needs; shared by all listeners except `tls`.
pub struct Gateway {
    /// The reloadable config state; each request loads it once, in `new_ctx`.
    pub live: LiveState,
    pub metrics: Arc<Metrics>,
    pub notifier: Arc<LogoutNotifier>,
    /// Whether this listener terminates TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
    /// Handshake rate limits, lookup cap and tunnels per user; shared by all listeners and by
    /// every loaded config.
    pub admission: Arc<Admission>,
    /// Open tunnels and requests in flight, for the paced drain on shutdown or upgrade.
    pub drain: Arc<Drain>,
    /// Upstream connections for WebSocket handshakes (`upgrade`); never pooled.
    pub connector: pingora::connectors::TransportConnector,
}

/// The access-log policy: every request is counted in `gateway_requests_total`; Engine.IO
/// long-polling requests of established sessions may be left out of the log (`skip`) or logged
/// one in `sample_every` (`sample`). Refused, failed and 5xx requests are always logged.
pub struct AccessLog {
    polling: PollingLog,
    sample_every: u64,
    polling_seen: std::sync::atomic::AtomicU64,
    shed: ShedLines,
}

/// Access lines for handshakes refused by admission control, limited per second: a flood is
/// what those limits exist for, and one warn line per flooded request would turn it into a log
/// flood (disk, CPU, the operator's attention). The lines left out are counted in
/// `gateway_access_log_suppressed_total{kind="admission"}` and summed up in one line when
/// the next second's lines are written.
struct ShedLines {
    /// The current second (since the process's clock origin) and the lines written in it.
    second: std::sync::atomic::AtomicU64,
    written: std::sync::atomic::AtomicU64,
    /// Lines left out since the last summary.
    left_out: std::sync::atomic::AtomicU64,
}

/// Admission-refusal access lines written per second at most.
const SHED_LINES_PER_SEC: u64 = 20;

impl ShedLines {
    fn new() -> Self {
        Self {
            second: std::sync::atomic::AtomicU64::new(u64::MAX),
            written: std::sync::atomic::AtomicU64::new(0),
            left_out: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(n)`: write this line, after a summary of the `n` lines left out before it (when
    /// `n > 0`). `None`: leave it out. Races between threads at a second's edge may let a
    /// line or two more through; the bound is what matters, not the exact count.
    fn admit(&self, now_sec: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let seen = self.second.load(Relaxed);
        if seen != now_sec
            && self
                .second
                .compare_exchange(seen, now_sec, Relaxed, Relaxed)
                .is_ok()
        {
            self.written.store(0, Relaxed);
        }
        if self.written.fetch_add(1, Relaxed) < SHED_LINES_PER_SEC {
            Some(self.left_out.swap(0, Relaxed))
        } else {
            self.left_out.fetch_add(1, Relaxed);
            None
        }
    }
}

impl AccessLog {
    pub fn new(cfg: &AccessLogConfig) -> Self {
        Self {
            polling: cfg.polling,
            sample_every: cfg.sample_every.max(1),
            polling_seen: std::sync::atomic::AtomicU64::new(0),
            shed: ShedLines::new(),
        }
    }

    /// Whether an admission refusal gets its access line (see [`ShedLines`]).
    fn admit_shed_line(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.shed.admit(now)
    }

    /// Whether this request gets an access line. `polling`: an established Engine.IO session's
    /// long-polling request; `problem`: refused, failed or answered 5xx.
    pub fn should_log(&self, polling: bool, problem: bool) -> bool {
        if problem || !polling {
            return true;
        }
        match self.polling {
            PollingLog::All => true,
            PollingLog::Skip => false,
            PollingLog::Sample => {
                let n = self
                    .polling_seen
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                n.is_multiple_of(self.sample_every)
            }
        }
    }
}

/// Per-request state, filled phase by phase.
pub struct RequestCtx {
    /// The config this request runs on from start to end, whatever reloads happen meanwhile.
    live: Arc<Live>,
    started: Instant,
    request_id: String,
    route: Option<Arc<Route>>,
    class: Option<HandshakeClass>,
    assertion: Option<String>,
    subject: Option<String>,
    upstream: Option<SocketAddr>,
    connect_attempts: u8,
    learn_sid: Option<Vec<u8>>,
    /// `Set-Cookie` for the affinity cookie, sent if the upstream answers 2xx.
    set_affinity: Option<String>,
    upgraded: bool,
    /// Counted from the `101` until the tunnel ends.
    open_tunnel: Option<OpenTunnel>,
    /// A WebSocket's upstream connection after its `101`, and the bytes owed to the client;
    /// joined with the client's connection into a tunnel at the end of `logging`.
    upgraded_upstream: Option<(Stream, Bytes)>,
    /// This handshake's place in its user's tunnel cap, held until the tunnel closes.
    tunnel_slot: Option<TunnelSlot>,
    /// Identity of a logout request, notified once the upstream confirms the logout.
    logout: Option<Identity>,
    refused: Option<String>,
    /// The refusal was admission control shedding load (its access lines are limited).
    shed: bool,
    /// Counts this request as in flight until the context is dropped (the drain waits for it).
    _in_flight: InFlight,
}

/// A refusal at the edge: status, short body, log reason.
struct Refusal {
    status: u16,
    body: &'static str,
    reason: String,
    /// Seconds for `Retry-After` (admission refusals).
    retry_after: Option<u32>,
    /// Admission control shedding load: the access line is rate-limited.
    shed: bool,
}

impl Refusal {
    fn new(status: u16, body: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            body,
            reason: reason.into(),
            retry_after: None,
            shed: false,
        }
    }

    fn from_admission(r: Refused) -> Self {
        Self {
            retry_after: Some(r.retry_after_secs),
            shed: true,
            ..Self::new(
                r.limit.status(),
                r.limit.body(),
                format!("admission: {}", r.limit.label()),
            )
        }
    }

    fn from_session(e: &SessionError) -> Self {
        match e.status() {
            503 => Self::new(503, "session store unavailable\n", e.to_string()),
            _ => Self::new(401, "authentication required\n", e.to_string()),
        }
    }
}

/// Origins are checked only when the client sends one: browsers always do on WebSocket and
/// cross-site requests (the cross-site WebSocket hijacking case), while non-browser clients
/// cannot be hijacked. With no list configured, only same-origin (Origin host = Host) passes.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    if allowed.is_empty() {
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(origin);
        return host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host));
    }
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

impl Gateway {
    /// Phase 2 for one route: decide whether the request may pass, and with which identity.
    async fn authenticate(
        &self,
        session: &Session,
        route: &Route,
        ctx: &mut RequestCtx,
    ) -> Result<(), Refusal> {
        let req = session.req_header();
        match route.auth {
            AuthPolicy::None => {
                if route.is_logout(&req.method, req.uri.path()) {
                    // Remember who is logging out. The request goes on either way (the app
                    // judges it). No valid session is nothing to propagate; a store that could
                    // not answer means presence is not told, which an operator must see.
                    match self.session_identity(session, route).await {
                        Ok(a) => ctx.logout = Some(a),
                        Err(r) if r.status == 503 => tracing::warn!(
                            route = %route.name,
                            reason = %r.reason,
                            "logout not propagated: the session store did not answer"
                        ),
                        Err(_) => {}
                    }
                }
                Ok(())
            }
            AuthPolicy::Session => {
                let identity = self.session_identity(session, route).await?;
                if route.is_logout(&req.method, req.uri.path()) {
                    ctx.logout = Some(identity.clone());
                }
                self.grant(route, identity, ctx)
            }
            AuthPolicy::SocketioHandshake => {
                let class = classify::classify(&RequestFacts {
                    method: &req.method,
                    query: req.uri.query(),
                    is_websocket_upgrade: classify::is_websocket_upgrade(&req.headers, req.version),
                });
                ctx.class = Some(class.clone());
                match class {
                    HandshakeClass::Malformed(why) => Err(Refusal::new(400, "bad request\n", why)),
                    // A polling session moving to a WebSocket opens a tunnel: with a cap on
                    // tunnels it takes one of the user's slots like a WebSocket handshake, so
                    // whose it is must be known. It costs a lookup, so it is counted like a
                    // handshake by the rate limits. No assertion: the session has its `sid`.
                    HandshakeClass::Established {
                        transport: Transport::Websocket,
                        ..
                    } if self.admission.caps_tunnels() => {
                        self.check_rates(session, route, ctx)?;
                        let identity = self.session_identity(session, route).await?;
                        ctx.tunnel_slot = self
                            .admission
                            .reserve_tunnel(&route.name, &identity.sub)
                            .map_err(Refusal::from_admission)?;
                        Ok(())
                    }
                    HandshakeClass::Established { .. } => Ok(()),
                    HandshakeClass::Handshake { transport } => {
                        self.check_rates(session, route, ctx)?;
                        let origin = header_str(req, "origin");
                        let host =
                            header_str(req, "host").or(req.uri.authority().map(|a| a.as_str()));
                        if !origin_allowed(origin, host, &route.allowed_origins) {
                            return Err(Refusal::new(
                                403,
                                "origin not allowed\n",
                                format!("origin {:?} not allowed", origin.unwrap_or_default()),
                            ));
                        }
                        let identity = self.session_identity(session, route).await?;
                        if transport == Transport::Websocket {
                            ctx.tunnel_slot = self
                                .admission
                                .reserve_tunnel(&route.name, &identity.sub)
                                .map_err(Refusal::from_admission)?;
                        }
                        self.grant(route, identity, ctx)
                    }
                }
            }
        }
    }

    /// The admission rate limits (client IP, then route) for a request that will cost a lookup.
    fn check_rates(
        &self,
        session: &Session,
        route: &Route,
        ctx: &RequestCtx,
    ) -> Result<(), Refusal> {
        self.admission
            .check_rates(&route.name, || {
                forwarding::client_ip(
                    &session.req_header().headers,
                    peer_ip(session),
                    &ctx.live.trusted_proxies,
                )
            })
            .map_err(Refusal::from_admission)
    }

    async fn session_identity(
        &self,
        session: &Session,
        route: &Route,
    ) -> Result<Identity, Refusal> {
        let cookies: Vec<String> = session
            .req_header()
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        // Several apps behind one route: the first source whose cookie is present decides.
        let Some(source) = route
            .sessions
            .iter()
            .find(|s| s.has_cookie(&cookies))
            .or(route.sessions.first())
        else {
            return Err(Refusal::new(
                500,
                "internal error\n",
                "route needs sessions but none configured",
            ));
        };
        let result = source.authenticate(cookies).await;
        let lookup = match &result {
            Ok(a) => a.lookup,
            Err((_, l)) => *l,
        };
        if let Some(d) = lookup {
            self.metrics
                .session_lookup_seconds
                .with_label_values(&[source.store.kind()])
                .observe(d.as_secs_f64());
        }
        match result {
            Ok(a) => {
                self.metrics
                    .auth_results
                    .with_label_values(&[&route.name, "ok"])
                    .inc();
                Ok(a.identity)
            }
            Err((e, _)) => {
                self.metrics
                    .auth_results
                    .with_label_values(&[&route.name, e.reason()])
                    .inc();
                if e == SessionError::LookupsBusy {
                    return Err(Refusal::from_admission(
                        self.admission.lookup_cap_refused(&route.name),
                    ));
                }
                Err(Refusal::from_session(&e))
            }
        }
    }

    fn grant(
        &self,
        route: &Route,
        identity: Identity,
        ctx: &mut RequestCtx,
    ) -> Result<(), Refusal> {
        let audience = route.audience.as_deref().unwrap_or_default();
        let token = ctx.live.signer.sign(&identity, audience).map_err(|e| {
            Refusal::new(
                500,
                "internal error\n",
                format!("cannot sign assertion: {e}"),
            )
        })?;
        ctx.subject = Some(identity.sub);
        ctx.assertion = Some(token);
        Ok(())
    }

    /// Phase 3: the upstream, and the affinity cookie a polling answer carries: for an
    /// Engine.IO session its node (the cookie's entry for the `sid`, this process's table, or
    /// the node of the browser's newest handshake), else round-robin.
    fn choose_upstream(
        &self,
        route: &Route,
        headers: &http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Option<Choice> {
        let several = route.pool.len() > 1;
        match &ctx.class {
            Some(HandshakeClass::Established { sid, transport }) => {
                let affinity = &ctx.live.affinity;
                let hint = affinity.node_for(route, sid, headers);
                let fallback = affinity.newest_handshake_node(route, headers);
                let choice = route.pool.pick_for_sid(sid, hint, fallback);
                if let (Transport::Polling, Some(c), true) = (transport, choice, several) {
                    ctx.set_affinity = affinity.renewal(route, sid, c.addr, headers, self.tls);
                }
                choice
            }
            Some(HandshakeClass::Handshake {
                transport: Transport::Polling,
            }) => {
                let choice = route.pool.pick();
                if let (Some(c), true) = (choice, several) {
                    ctx.set_affinity = ctx
                        .live
                        .affinity
                        .for_handshake(route, c.addr, headers, self.tls);
                }
                choice
            }
            _ => route.pool.pick(),
        }
    }

    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        r: Refusal,
    ) -> Result<bool> {
        // Logged once, with the reason, in the request's access line (`logging`).
        ctx.refused = Some(r.reason);
        ctx.shed = r.shed;
        write_short(session, r.status, r.body, &ctx.request_id, r.retry_after).await?;
        Ok(true)
    }
}

fn header_str<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// A short plain-text answer from the gateway itself.
async fn write_short(
    session: &mut Session,
    status: u16,
    body: &str,
    request_id: &str,
    retry_after: Option<u32>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-request-id", request_id)?;
    resp.insert_header("cache-control", "no-store")?;
    if let Some(secs) = retry_after {
        resp.insert_header("retry-after", secs.to_string())?;
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::copy_from_slice(body.as_bytes())), true)
        .await
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        // Counted as in flight before it stops counting as awaited: the drain never sees the
        // connection as idle in between.
        let in_flight = self.drain.request_started();
        first_request::request_head_read();
        RequestCtx {
            live: self.live.load_full(),
            started: Instant::now(),
            request_id: String::new(),
            route: None,
            class: None,
            assertion: None,
            subject: None,
            upstream: None,
            connect_attempts: 0,
            learn_sid: None,
            set_affinity: None,
            upgraded: false,
            open_tunnel: None,
            upgraded_upstream: None,
            tunnel_slot: None,
            logout: None,
            refused: None,
            shed: false,
            _in_flight: in_flight,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = forwarding::request_id(&session.req_header().headers);
        let req = session.req_header();
        let host = header_str(req, "host").or(req.uri.authority().map(|a| a.as_str()));
        let Some(route) = ctx.live.routes.find(host, req.uri.path()) else {
            return self
                .refuse(session, ctx, Refusal::new(404, "not found\n", "no route"))
                .await;
        };
        ctx.route = Some(route.clone());
        if let Err(r) = self.authenticate(session, &route, ctx).await {
            return self.refuse(session, ctx, r).await;
        }
        let http1 = session.downstream_session.as_http1().is_some();
        if upgrade::takes(session.req_header(), http1) {
            return self.proxy_upgrade(session, ctx).await;
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no route in context",
            ));
        };
        let choice = self.choose_upstream(&route, &session.req_header().headers, ctx);
        let Some(Choice { addr, panic }) = choice else {
            self.metrics
                .upstream_errors
                .with_label_values(&[&route.name, "no_healthy_upstream"])
                .inc();
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no healthy upstream",
            ));
        };
        if panic {
            self.metrics
                .upstream_panic
                .with_label_values(&[&route.name])
                .inc();
        }
        ctx.upstream = Some(addr);
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.total_connection_timeout = Some(Duration::from_secs(3));
        // An upgrade request's connection may relay for hours once it is upgraded (the
        // WebSocket path bounds the wait for its answer itself, `upgrade.rs`); any other
        // request's upstream must keep answering.
        peer.options.read_timeout = Some(if session.is_upgrade_req() {
            ctx.live.upgraded_idle
        } else {
            ctx.live.upstream_read
        });
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let route = ctx.route.as_ref().map_or("-", |r| r.name.as_str());
        self.metrics
            .upstream_errors
            .with_label_values(&[route, "connect"])
            .inc();
        ctx.connect_attempts += 1;
        // One retry on another node: round-robin moves on, and health checks catch up.
        if ctx.connect_attempts < 2 {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Never forward a client's identity header, under any spelling, on any route.
        let smuggled = forwarding::smuggled_identity_headers(
            upstream.headers.keys().map(|k| k.as_str()),
            ctx.live.routes.protected_headers(),
        );
        for name in smuggled {
            upstream.remove_header(&name);
        }
        // `X_Forwarded_For` and friends: never legitimate, believed by some upstreams.
        let underscored =
            forwarding::underscore_spellings(upstream.headers.keys().map(|k| k.as_str()));
        for name in underscored {
            upstream.remove_header(&name);
        }
        // Upstreams get origin-form targets only (see `forwarding::origin_form`). Pingora has
        // already refused an absolute-form target whose authority differs from Host.
        if upstream.method != http::Method::CONNECT {
            if let Some(target) = forwarding::origin_form(upstream.raw_path(), &upstream.uri) {
                upstream.set_uri(target);
            }
        }
        if let (Some(token), Some(route)) = (&ctx.assertion, &ctx.route) {
            upstream.insert_header(route.assertion_header.clone(), token.as_str())?;
        }
        let fwd = forwarding::forwarded_headers(
            &upstream.headers,
            peer_ip(session),
            self.tls,
            &ctx.live.trusted_proxies,
        );
        upstream.insert_header("x-forwarded-for", fwd.for_)?;
        upstream.insert_header("x-forwarded-proto", fwd.proto)?;
        upstream.insert_header("forwarded", fwd.forwarded)?;
        upstream.insert_header("x-real-ip", fwd.real_ip)?;
        match fwd.host {
            Some(h) => upstream.insert_header("x-forwarded-host", h)?,
            None => {
                upstream.remove_header("x-forwarded-host");
            }
        }
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if self.drain.is_stopping() {
            // The client's next request goes to the process that took over the listener.
            session.set_keepalive(None);
        }
        if let Some(cookie) = ctx.set_affinity.take() {
            if resp.status.is_success() {
                resp.append_header("set-cookie", cookie)?;
            }
        }
        if resp.status == 101 {
            ctx.upgraded = true;
            ctx.open_tunnel = Some(OpenTunnel::new(&self.metrics.upgraded_connections));
            // Pingora's downstream read timeout (60 s) would cut quiet WebSockets.
            session.set_read_timeout(Some(ctx.live.upgraded_idle));
        }
        let polling_handshake = matches!(
            ctx.class,
            Some(HandshakeClass::Handshake {
                transport: Transport::Polling
            })
        );
        if polling_handshake
            && resp.status == 200
            && ctx.route.as_ref().is_some_and(|r| r.pool.len() > 1)
        {
            ctx.learn_sid = Some(Vec::new());
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(buf) = ctx.learn_sid.as_mut() {
            if let Some(b) = body {
                if buf.len() + b.len() <= 4096 {
                    buf.extend_from_slice(b);
                }
            }
            if end_of_stream {
                let sid = crate::upstream::sid_from_open_packet(buf);
                if let (Some(sid), Some(addr), Some(route)) = (sid, ctx.upstream, &ctx.route) {
                    route.pool.remember_sid(sid, addr);
                }
                ctx.learn_sid = None;
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                pingora::ErrorSource::Upstream => match e.etype() {
                    ErrorType::ConnectTimedout | ErrorType::ReadTimedout => 504,
                    _ => 502,
                },
                pingora::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        if matches!(e.esource(), pingora::ErrorSource::Upstream) {
            let route = ctx.route.as_ref().map_or("-", |r| r.name.as_str());
            self.metrics
                .upstream_errors
                .with_label_values(&[route, "proxy"])
                .inc();
        }
        let body = match code {
            502 => "bad gateway: upstream unavailable\n",
            504 => "gateway timeout: the upstream did not answer in time\n",
            503 => "service unavailable: no healthy upstream\n",
            400 => "bad request\n",
            _ => "error\n",
        };
        // Once a response head has gone out (an upstream failing in the middle of a body), an
        // error response would be written into that body: the connection just closes.
        let answered = session.response_written().is_some();
        if code > 0
            && !answered
            && write_short(session, code, body, &ctx.request_id, None)
                .await
                .is_err()
        {
            tracing::debug!(request_id = %ctx.request_id, "client went away before the error response");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.account(session, e, ctx);
        // Last, once the access line has read the session: the connection leaves it.
        if let Some(upstream) = ctx.upgraded_upstream.take() {
            self.start_tunnel(session, upstream, ctx);
        }
    }
}

impl Gateway {
    /// Counts the request in the metrics, notifies a confirmed logout and writes the access
    /// line (unless the access-log policy leaves it out).
    fn account(&self, session: &Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route.as_ref().map_or("-", |r| r.name.as_str());
        self.metrics
            .requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        if let (Some(identity), Some(r)) = (ctx.logout.take(), &ctx.route) {
            if (200..300).contains(&status) {
                if let Some(logout) = &r.logout {
                    self.notifier.session_ended(
                        ctx.live.signer.clone(),
                        logout.clone(),
                        identity,
                        ctx.request_id.clone(),
                    );
                }
            }
        }
        let problem = ctx.refused.is_some() || e.is_some() || status >= 500;
        let polling = matches!(
            ctx.class,
            Some(HandshakeClass::Established {
                transport: Transport::Polling,
                ..
            })
        );
        if !ctx.live.access_log.should_log(polling, problem) {
            self.metrics
                .access_log_suppressed
                .with_label_values(&[route, "polling"])
                .inc();
            return;
        }
        if ctx.shed {
            match ctx.live.access_log.admit_shed_line() {
                None => {
                    self.metrics
                        .access_log_suppressed
                        .with_label_values(&[route, "admission"])
                        .inc();
                    return;
                }
                Some(0) => {}
                Some(left_out) => tracing::warn!(
                    left_out,
                    "admission refusals not written to the access log in the last seconds \
                     (counted in gateway_access_log_suppressed_total)"
                ),
            }
        }
        let req = session.req_header();
        // One line per request; refusals and failures at warn, with their reason.
        macro_rules! access_line {
            ($level:ident) => {
                tracing::$level!(
                    request_id = %ctx.request_id,
                    route,
                    method = %req.method,
                    path = %req.uri.path(),
                    status,
                    upstream = ?ctx.upstream,
                    user = ctx.subject.as_deref().unwrap_or("-"),
                    upgraded = ctx.upgraded,
                    ms = ctx.started.elapsed().as_millis() as u64,
                    reason = ctx.refused.as_deref().unwrap_or("-"),
                    error = ?e.map(|e| e.etype().as_str()),
                    "request"
                )
            };
        }
        if problem {
            access_line!(warn);
        } else {
            access_line!(info);
        }
    }

    /// A WebSocket handshake's upstream leg (see `upgrade`); `Ok(true)`: the response is
    /// written. Errors go to `fail_to_proxy` as on Pingora's path (502 for the upstream's).
    async fn proxy_upgrade(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let mut upstream = loop {
            let peer = self.upstream_peer(session, ctx).await?;
            match Upstream::connect(&self.connector, &peer).await {
                Ok(upstream) => break upstream,
                Err(e) => {
                    let e = self.fail_to_connect(session, &peer, ctx, e);
                    if !e.retry() {
                        return Err(e);
                    }
                }
            }
        };
        let mut req = upgrade::upstream_head(session.req_header())?;
        self.upstream_request_filter(session, &mut req, ctx).await?;
        let mut resp = upstream.handshake(req, ctx.live.upstream_handshake).await?;
        self.response_filter(session, &mut resp, ctx).await?;
        let switched = resp.status == 101;
        if !switched {
            // The upstream refused the upgrade; its connection is not reused, nor the client's.
            session.set_keepalive(None);
        }
        session
            .write_response_header(Box::new(resp), false)
            .await
            .map_err(|e| e.into_down())?;
        if switched {
            ctx.upgraded_upstream = Some(upstream.into_upgraded());
        } else {
            upstream
                .relay_body(session, ctx.live.upstream_handshake)
                .await?;
        }
        Ok(true)
    }

    /// Joins an upgraded WebSocket's two connections into a tunnel that lives outside Pingora
    /// (an idle one would otherwise keep the whole request machinery alive for hours).
    fn start_tunnel(&self, session: &mut Session, upstream: (Stream, Bytes), ctx: &mut RequestCtx) {
        let Some((client, to_upstream)) = upgrade::take_client(&mut session.downstream_session)
        else {
            return;
        };
        let (upstream, to_client) = upstream;
        let open = ctx.open_tunnel.take();
        let slot = ctx.tunnel_slot.take();
        let request_id = std::mem::take(&mut ctx.request_id);
        let idle = ctx.live.upgraded_idle;
        let tunnel = Tunnel {
            client,
            upstream,
            to_upstream,
            to_client,
        };
        let mut ticket = self.drain.register();
        tokio::spawn(async move {
            let started = Instant::now();
            let (traffic, result) = tunnel::relay_until(tunnel, idle, ticket.stopped()).await;
            drop((open, slot));
            let secs = started.elapsed().as_secs();
            let (up, down) = (traffic.to_upstream, traffic.to_client);
            // A client that vanishes without closing is ordinary for WebSockets: info, not warn.
            match result {
                Ok(()) => tracing::info!(
                    request_id,
                    secs,
                    up,
                    down,
                    reason = "closed",
                    "tunnel closed"
                ),
                Err(e) => tracing::info!(request_id, secs, up, down, reason = %e, "tunnel closed"),
            }
            // Last: a draining process exits once every ticket is gone, and this line is told.
            drop(ticket);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access_log(polling: PollingLog, sample_every: u64) -> AccessLog {
        AccessLog::new(&AccessLogConfig {
            polling,
            sample_every,
        })
    }

    #[test]
    fn access_log_all_logs_every_request() {
        let log = access_log(PollingLog::All, 100);
        assert!((0..10).all(|_| log.should_log(true, false)));
        assert!(log.should_log(false, false));
    }

    #[test]
    fn access_log_skip_drops_only_clean_polling_requests() {
        let log = access_log(PollingLog::Skip, 100);
        assert!(!log.should_log(true, false));
        // Refusals, errors and 5xx are always logged; so is everything that is not polling.
        assert!(log.should_log(true, true));
        assert!(log.should_log(false, false));
    }

    #[test]
    fn access_log_sample_logs_one_in_n() {
        let log = access_log(PollingLog::Sample, 3);
        let logged: Vec<bool> = (0..7).map(|_| log.should_log(true, false)).collect();
        assert_eq!(logged, [true, false, false, true, false, false, true]);
        assert!(log.should_log(true, true));
        // sample_every = 0 (refused by the config check) behaves as 1, never divides by zero.
        let every = access_log(PollingLog::Sample, 0);
        assert!((0..3).all(|_| every.should_log(true, false)));
    }

    #[test]
    fn admission_refusal_lines_are_limited_per_second_and_summed_up() {
        let shed = ShedLines::new();
        let first: Vec<Option<u64>> = (0..SHED_LINES_PER_SEC + 5).map(|_| shed.admit(7)).collect();
        assert!(first[..SHED_LINES_PER_SEC as usize]
            .iter()
            .all(|l| *l == Some(0)));
        assert!(first[SHED_LINES_PER_SEC as usize..]
            .iter()
            .all(Option::is_none));
        // The next second's first line carries the count left out before it, once.
        assert_eq!(shed.admit(8), Some(5));
        assert_eq!(shed.admit(8), Some(0));
    }

    #[test]
    fn origin_rules() {
        let allowed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(None, Some("gw"), &allowed));
        assert!(origin_allowed(
            Some("https://app.example"),
            Some("gw"),
            &allowed
        ));
        assert!(!origin_allowed(
            Some("https://evil.example"),
            Some("gw"),
            &allowed
        ));
        assert!(origin_allowed(
            Some("https://localhost:8443"),
            Some("localhost:8443"),
            &[]
        ));
        assert!(!origin_allowed(
            Some("https://evil.example"),
            Some("localhost:8443"),
            &[]
        ));
        assert!(origin_allowed(Some("https://x"), None, &["*".to_string()]));
    }
}
