//! Admission control at the edge (`[admission]`, `gateway/src/admission.rs`): handshake rate
//! limits per client IP and per route, the cap on session lookups in flight, the cap on open
//! tunnels per user, and a flood from one address that must not starve real users. Real
//! gateway binary, real redis-server (express sessions in the connect-redis layout); clients
//! come from distinct loopback addresses (127.0.0.0/8 is all local on Linux), so the gateway
//! sees distinct peers without any trusted-proxy header.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const SECRET: &str = "the secret key";
const HANDSHAKE: &str = "/socket.io/?EIO=4&transport=polling&t=abc";
const TTL: time::Duration = time::Duration::hours(1);

fn express_config(redis: &Redis, upstream: SocketAddr, admission: &str, route: &str) -> String {
    format!(
        r#"
[session]
flavour = "express"
secrets = [{{ value = "{SECRET}" }}]
lookup_timeout_ms = 3000
store = {{ kind = "redis", url = "{}" }}

[admission]
{admission}

[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = ["{upstream}"]
auth = "socketio-handshake"
audience = "presence-service"
{route}
"#,
        redis.url()
    )
}

fn cookie(sid: &str) -> String {
    format!("connect.sid={}", express_cookie(sid, SECRET))
}

async fn add_session(redis: &Redis, sid: &str, user: &str) {
    redis
        .cmd(&[
            "SET",
            &format!("sess:{sid}"),
            &express_session_json(user, TTL),
        ])
        .await
        .expect("SET session");
}

/// How many GETs (session lookups) Redis has served: its own count, not the gateway's.
async fn store_gets(redis: &Redis) -> u64 {
    let info = redis
        .cmd(&["INFO", "commandstats"])
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One HTTP/1.1 GET from the local address `from`: status and headers.
async fn get_from(
    from: Ipv4Addr,
    port: u16,
    path: &str,
    cookie: &str,
) -> Option<(u16, Vec<(String, String)>)> {
    let sock = TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(IpAddr::V4(from), 0)).ok()?;
    let stream = sock
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", format!("127.0.0.1:{port}"))
        .header("cookie", cookie)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let hdrs = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let _ = resp.into_body().collect().await;
    Some((status, hdrs))
}

/// A gateway with this `[admission]` body and this extra route line, in front of a recording
/// Socket.IO upstream, with alice's session (`alice-sid`) in its store.
async fn alice_behind_a_gateway(admission: &str, route: &str) -> (Redis, Upstream, Gateway) {
    let redis = Redis::start().await;
    let sio = Upstream::start("sio").await;
    add_session(&redis, "alice-sid", "alice").await;
    let gw = Gateway::start(&express_config(&redis, sio.addr, admission, route)).await;
    gw.wait_ready().await;
    (redis, sio, gw)
}

#[tokio::test]
async fn handshakes_over_the_ip_rate_get_429_with_retry_after_and_cost_no_lookup() {
    let (redis, sio, gw) =
        alice_behind_a_gateway("handshakes_per_ip_per_sec = 5\nretry_after_secs = 3", "").await;

    let before = store_gets(&redis).await;
    let alice = cookie("alice-sid");
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let (status, hdrs) = get_from(Ipv4Addr::new(127, 0, 0, 1), gw.http, HANDSHAKE, &alice)
            .await
            .expect("answer");
        if status == 429 {
            assert_eq!(header(&hdrs, "retry-after"), Some("3"), "{hdrs:?}");
        }
        statuses.push(status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, 40, "only 200 or 429: {statuses:?}");
    // The estimate interpolates over the previous second, so a run that straddles a window
    // boundary may let a few more through; never the whole run.
    assert!((5..=12).contains(&ok), "{statuses:?}");
    // Only the admitted handshakes reached the store or the upstream.
    assert_eq!(store_gets(&redis).await - before, ok as u64);
    assert_eq!(sio.count(), ok);
    assert_eq!(
        gw.metric("gateway_admission_refused_total{limit=\"ip_rate\"")
            .await,
        limited as f64
    );

    // Another address has its own budget.
    let (status, _) = get_from(Ipv4Addr::new(127, 0, 0, 2), gw.http, HANDSHAKE, &alice)
        .await
        .expect("answer");
    assert_eq!(status, 200);
    // Requests of an established session are not handshakes and are never limited.
    let (status, _) = get_from(
        Ipv4Addr::new(127, 0, 0, 1),
        gw.http,
        "/socket.io/?EIO=4&transport=polling&sid=sio-0",
        "",
    )
    .await
    .expect("answer");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_route_rate_limits_all_clients_together() {
    let (redis, _sio, gw) = alice_behind_a_gateway("", "max_handshakes_per_sec = 8").await;
    let before = store_gets(&redis).await;
    let alice = cookie("alice-sid");
    let mut statuses = Vec::new();
    for i in 0..30u8 {
        let from = Ipv4Addr::new(127, 0, 1, i + 1);
        let (status, hdrs) = get_from(from, gw.http, HANDSHAKE, &alice)
            .await
            .expect("answer");
        if status == 429 {
            assert_eq!(header(&hdrs, "retry-after"), Some("1"), "the default");
        }
        statuses.push(status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((8..=16).contains(&ok), "{statuses:?}");
    assert_eq!(store_gets(&redis).await - before, ok as u64);
    assert_eq!(
        gw.metric("gateway_admission_refused_total{limit=\"route_rate\"")
            .await,
        (30 - ok) as f64
    );
}

/// Redis's pid, from its own INFO (the test's Redis handle keeps the child private).
async fn redis_pid(redis: &Redis) -> String {
    let info = redis.cmd(&["INFO", "server"]).await.expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(|p| p.trim().to_string())
        .expect("process_id in INFO server")
}

#[tokio::test]
async fn a_full_lookup_cap_answers_503_with_retry_after_and_forged_cookies_take_no_slot() {
    let redis = Redis::start().await;
    let sio = Upstream::start("sio").await;
    add_session(&redis, "alice-sid", "alice").await;
    add_session(&redis, "bob-sid", "bob").await;
    let gw = Gateway::start(&express_config(
        &redis,
        sio.addr,
        "max_concurrent_lookups = 1\nretry_after_secs = 2",
        "",
    ))
    .await;
    gw.wait_ready().await;
    let pid = redis_pid(&redis).await;
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    };

    // Freeze the store: alice's lookup takes the only slot and waits.
    signal("-STOP");
    let port = gw.http;
    let alice = tokio::spawn(async move {
        get_from(
            Ipv4Addr::new(127, 0, 0, 1),
            port,
            HANDSHAKE,
            &cookie("alice-sid"),
        )
        .await
    });
    let held = eventually(Duration::from_secs(5), || async {
        gw.metric("gateway_session_lookups_in_flight").await == 1.0
    })
    .await;
    assert!(
        held,
        "alice's lookup never started; log:\n{}",
        gw.log_text()
    );

    let (status, hdrs) = get_from(
        Ipv4Addr::new(127, 0, 0, 2),
        gw.http,
        HANDSHAKE,
        &cookie("bob-sid"),
    )
    .await
    .expect("answer");
    assert_eq!(status, 503);
    assert_eq!(header(&hdrs, "retry-after"), Some("2"));
    // A forged cookie is refused on its signature, without waiting for a slot.
    let forged = format!(
        "connect.sid={}",
        express_cookie("bob-sid", "not the secret")
    );
    let (status, hdrs) = get_from(Ipv4Addr::new(127, 0, 0, 3), gw.http, HANDSHAKE, &forged)
        .await
        .expect("answer");
    assert_eq!(status, 401);
    assert_eq!(header(&hdrs, "retry-after"), None);

    signal("-CONT");
    let (status, _) = alice.await.unwrap().expect("answer");
    assert_eq!(
        status, 200,
        "the held lookup completes once the store thaws"
    );
    assert_eq!(
        gw.metric("gateway_admission_refused_total{limit=\"lookup_cap\"")
            .await,
        1.0
    );
    // The slot is back: bob gets in now.
    let (status, _) = get_from(
        Ipv4Addr::new(127, 0, 0, 2),
        gw.http,
        HANDSHAKE,
        &cookie("bob-sid"),
    )
    .await
    .expect("answer");
    assert_eq!(status, 200);
}

/// A WebSocket echo upstream.
async fn ws_echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(gw: &Gateway, sid: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    ws_request(gw, sid, "EIO=4&transport=websocket").await
}

/// A polling session's move to a WebSocket: the same request with the Engine.IO `sid`.
async fn ws_upgrade(
    gw: &Gateway,
    sid: &str,
    eio_sid: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    ws_request(gw, sid, &format!("EIO=4&transport=websocket&sid={eio_sid}")).await
}

async fn ws_request(
    gw: &Gateway,
    sid: &str,
    query: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://127.0.0.1:{}/socket.io/?{query}", gw.http)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", cookie(sid).parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

async fn echoes(ws: &mut Ws) -> bool {
    if ws.send(Message::text("ping")).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(5), ws.next()).await,
        Ok(Some(Ok(m))) if m.is_text()
    )
}

/// A gateway in front of a WebSocket echo upstream, with `cap` tunnels per user and these
/// (session id, user) logins in its store.
async fn capped_gateway(cap: u32, retry_after: u32, logins: &[(&str, &str)]) -> (Redis, Gateway) {
    let redis = Redis::start().await;
    for (sid, user) in logins {
        add_session(&redis, sid, user).await;
    }
    let up = ws_echo_upstream().await;
    let gw = Gateway::start(&express_config(
        &redis,
        up,
        &format!("max_tunnels_per_user = {cap}\nretry_after_secs = {retry_after}"),
        "",
    ))
    .await;
    gw.wait_ready().await;
    (redis, gw)
}

/// A WebSocket attempt answered `status`, with `Retry-After: retry_after` when given.
fn assert_refused(
    attempt: Result<Ws, tokio_tungstenite::tungstenite::Error>,
    status: u16,
    retry_after: Option<&str>,
) {
    match attempt {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), status);
            if let Some(secs) = retry_after {
                assert_eq!(
                    resp.headers().get("retry-after").map(|v| v.as_bytes()),
                    Some(secs.as_bytes())
                );
            }
        }
        other => panic!("expected {status}, got {:?}", other.map(|_| "a tunnel")),
    }
}

/// Closes `ws` and waits until the gateway counts `left` open tunnels (its slot is free then).
async fn close_and_wait(gw: &Gateway, mut ws: Ws, left: u32) {
    ws.close(None).await.unwrap();
    drop(ws);
    let closed = eventually(Duration::from_secs(10), || async {
        gw.metric("gateway_upgraded_connections").await == f64::from(left)
    })
    .await;
    assert!(closed, "the tunnel never closed; log:\n{}", gw.log_text());
}

#[tokio::test]
async fn a_user_holds_at_most_the_capped_number_of_tunnels() {
    let (_redis, gw) = capped_gateway(
        2,
        5,
        &[("alice-1", "alice"), ("alice-2", "alice"), ("bob-1", "bob")],
    )
    .await;

    // Two tunnels, from two logins of the same user: the cap is per user, not per session.
    let mut a1 = ws_connect(&gw, "alice-1").await.expect("first tunnel");
    let mut a2 = ws_connect(&gw, "alice-2").await.expect("second tunnel");
    assert!(echoes(&mut a1).await && echoes(&mut a2).await);
    assert_refused(ws_connect(&gw, "alice-1").await, 429, Some("5"));
    let mut b = ws_connect(&gw, "bob-1").await.expect("bob is not alice");
    assert!(echoes(&mut b).await);
    assert_eq!(
        gw.metric("gateway_admission_refused_total{limit=\"user_tunnels\"")
            .await,
        1.0
    );

    // Closing one of alice's tunnels gives her slot back once the gateway sees it close.
    close_and_wait(&gw, a1, 2).await;
    let mut again = ws_connect(&gw, "alice-1").await.expect("slot freed");
    assert!(echoes(&mut again).await);
    assert!(echoes(&mut a2).await, "the other tunnel is untouched");
}

/// An upstream that takes WebSocket handshakes and never answers them. While the gateway waits
/// for a `101`, the handshake holds one of its user's tunnel slots; the wait is bounded by
/// `upstream_handshake_timeout_ms` (504), not by the tunnel idle timeout (an hour), so a hung
/// upstream cannot lock a user out, even when the client gave up first.
#[tokio::test]
async fn a_handshake_the_upstream_never_answers_times_out_and_frees_its_slot() {
    let redis = Redis::start().await;
    add_session(&redis, "alice-1", "alice").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let gw = Gateway::start_with(
        &express_config(
            &redis,
            up,
            "max_tunnels_per_user = 1\nretry_after_secs = 2",
            "",
        ),
        "upstream_handshake_timeout_ms = 400",
    )
    .await;
    gw.wait_ready().await;

    // A client that gives up before the gateway does (it closes its connection).
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), ws_connect(&gw, "alice-1")).await;
    assert!(gave_up.is_err(), "nothing can answer this handshake");
    // The next attempt may find the slot still held (429) until the first wait ends; within
    // the bound it is the upstream's silence that answers, with a 504.
    let started = Instant::now();
    let status = loop {
        let attempt = tokio::time::timeout(Duration::from_secs(5), ws_connect(&gw, "alice-1"))
            .await
            .expect("the gateway answers a hung handshake within its bound");
        match attempt {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == 429 => {
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "the slot stays held"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => break resp.status(),
            other => panic!(
                "expected an HTTP refusal, got {:?}",
                other.map(|_| "a tunnel")
            ),
        }
    };
    assert_eq!(status, 504, "log:\n{}", gw.log_text());
    assert_eq!(gw.metric("gateway_upgraded_connections").await, 0.0);
}

/// A polling session that upgrades opens a tunnel too: it takes one of the user's slots (a
/// cookie lookup learns whose), so polling first and upgrading later cannot get around the cap.
#[tokio::test]
async fn a_polling_session_that_upgrades_takes_a_tunnel_slot() {
    let (_redis, gw) = capped_gateway(1, 3, &[("alice-1", "alice"), ("alice-2", "alice")]).await;
    let mut upgraded = ws_upgrade(&gw, "alice-1", "eio-session-1")
        .await
        .expect("the first upgrade");
    assert!(echoes(&mut upgraded).await);
    for attempt in [
        ws_connect(&gw, "alice-2").await,
        ws_upgrade(&gw, "alice-2", "eio-session-2").await,
    ] {
        assert_refused(attempt, 429, Some("3"));
    }
    // An upgrade without a valid login is refused like a handshake, with no slot taken.
    assert_refused(ws_upgrade(&gw, "nobody", "eio-session-3").await, 401, None);
    close_and_wait(&gw, upgraded, 0).await;
    let mut again = ws_upgrade(&gw, "alice-2", "eio-session-4")
        .await
        .expect("slot freed");
    assert!(echoes(&mut again).await);
}

/// With the tunnel cap on, a WebSocket upgrade of an established session costs a lookup, so a
/// client that sends upgrades in a loop (a valid cookie, made-up `sid`s) is rate limited like
/// one that sends handshakes: over the rate it gets 429 and costs no lookup.
#[tokio::test]
async fn upgrades_in_a_loop_are_rate_limited_and_cost_no_lookup_when_refused() {
    let (redis, _sio, gw) = alice_behind_a_gateway(
        "handshakes_per_ip_per_sec = 5\nmax_tunnels_per_user = 100",
        "",
    )
    .await;
    let before = store_gets(&redis).await;
    let alice = cookie("alice-sid");
    let mut limited = 0;
    for i in 0..40 {
        let path = format!("/socket.io/?EIO=4&transport=websocket&sid=made-up-{i}");
        let (status, _) = get_from(Ipv4Addr::new(127, 0, 0, 1), gw.http, &path, &alice)
            .await
            .expect("answer");
        if status == 429 {
            limited += 1;
        }
    }
    let admitted = 40 - limited;
    assert!((5..=12).contains(&admitted), "{admitted} admitted");
    assert_eq!(store_gets(&redis).await - before, admitted as u64);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// One address floods handshakes (half with garbage cookies, half validly signed for sessions
/// that do not exist) while 100 real users, each from their own address, connect. Every real
/// user must get in, and the store must see no more lookups than the real users plus what the
/// flooder's own per-IP budget allows.
#[tokio::test]
async fn a_flood_from_one_address_does_not_starve_real_users() {
    const USERS: usize = 100;
    const PER_IP: u32 = 20;
    const FLOOD_WORKERS: usize = 48;
    let redis = Redis::start().await;
    let sio = Upstream::start("sio").await;
    for i in 0..USERS {
        add_session(&redis, &format!("user-{i}"), &format!("user{i}")).await;
    }
    let gw = Gateway::start(&express_config(
        &redis,
        sio.addr,
        &format!("handshakes_per_ip_per_sec = {PER_IP}\nmax_concurrent_lookups = 64"),
        "",
    ))
    .await;
    gw.wait_ready().await;
    let before = store_gets(&redis).await;
    let port = gw.http;

    let flooder = Ipv4Addr::new(127, 0, 0, 66);
    let flood_for = Duration::from_secs(3);
    let started = Instant::now();
    let mut flood = Vec::new();
    for w in 0..FLOOD_WORKERS {
        flood.push(tokio::spawn(async move {
            let (mut sent, mut admitted, mut limited) = (0u64, 0u64, 0u64);
            let mut n = 0u64;
            while started.elapsed() < flood_for {
                n += 1;
                let c = if n.is_multiple_of(2) {
                    "connect.sid=s%3Agarbage.not-a-signature".to_string()
                } else {
                    cookie(&format!("unknown-{w}-{n}"))
                };
                if let Some((status, _)) = get_from(flooder, port, HANDSHAKE, &c).await {
                    sent += 1;
                    match status {
                        429 => limited += 1,
                        401 => admitted += 1,
                        other => panic!("flood got {other}"),
                    }
                }
            }
            (sent, admitted, limited)
        }));
    }
    // Real users arrive while the flood runs, spread over its middle second.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10 * i as u64)).await;
            let from = Ipv4Addr::new(127, 0, 2, i as u8 + 1);
            let t = Instant::now();
            let status = get_from(from, port, HANDSHAKE, &cookie(&format!("user-{i}")))
                .await
                .map(|r| r.0);
            (status, t.elapsed())
        }));
    }
    let mut latencies = Vec::new();
    for u in users {
        let (status, took) = u.await.unwrap();
        assert_eq!(status, Some(200), "every real user is admitted");
        latencies.push(took);
    }
    let (mut sent, mut admitted, mut limited) = (0, 0, 0);
    for f in flood {
        let (s, a, l) = f.await.unwrap();
        sent += s;
        admitted += a;
        limited += l;
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    let lookups = store_gets(&redis).await - before;
    println!(
        "flood: {sent} handshakes from one address in {secs:.1} s ({:.0}/s): {admitted} reached \
         authentication, {limited} refused 429; {USERS} real users all admitted, handshake p50 \
         {:?} p99 {:?} max {:?}; store lookups {lookups} (cap: {USERS} users + the flooder's \
         {PER_IP}/s)",
        sent as f64 / secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    // What gets through is bounded by the rate, however fast the flood runs (the share refused
    // depends on how many requests this machine manages to send).
    let rate_budget = u64::from(PER_IP) * (secs.ceil() as u64 + 2);
    assert!(
        admitted <= rate_budget,
        "{admitted} flood handshakes reached authentication (budget {rate_budget})"
    );
    assert!(limited > admitted, "the flood was mostly refused");
    // Each admitted signed-but-unknown cookie costs one lookup; the garbage ones none.
    let budget = USERS as u64 + u64::from(PER_IP) * (secs.ceil() as u64 + 2);
    assert!(lookups <= budget, "{lookups} lookups > {budget}");
    assert!(lookups >= USERS as u64);
    assert_eq!(
        gw.metric("gateway_admission_refused_total{limit=\"ip_rate\"")
            .await,
        limited as f64
    );
    // The flood does not become a log flood: a few access lines a second, and every refusal
    // either written or counted as left out (the last lines are written just after their
    // answers, hence the wait).
    let logged = || {
        gw.log_text()
            .lines()
            .filter(|l| l.contains("admission: ip_rate"))
            .count() as u64
    };
    let accounted = eventually(Duration::from_secs(5), || async {
        let left_out = gw
            .metric("gateway_access_log_suppressed_total{kind=\"admission\"")
            .await as u64;
        logged() + left_out == limited
    })
    .await;
    assert!(accounted, "every refusal is logged or counted as left out");
    let line_budget = 20 * (secs.ceil() as u64 + 2);
    assert!(
        logged() <= line_budget,
        "{} access lines for {limited} refusals (budget {line_budget})",
        logged()
    );
}
