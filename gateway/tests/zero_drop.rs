//! Zero-drop operations with the real binary: panic mode, affinity that survives a restart and
//! a second replica, binary upgrade and paced drain (issue 13, part B).

mod common;

use std::time::Duration;

use common::*;

fn sio_route(upstreams: &str, db: &std::path::Path, hc_secs: u64) -> String {
    format!(
        r#"
[session]
flavour = "tower-sessions"
store = {{ kind = "sqlite", path = "{}" }}

[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = [{upstreams}]
auth = "socketio-handshake"
audience = "presence-service"
health_check_interval_secs = {hc_secs}
"#,
        db.display()
    )
}

/// Panic mode: the only node of a route was down at the last health check (and the next one is
/// an hour away); it comes back, and the very next handshake reaches it. Without panic mode
/// the gateway answers 503 until the next check.
#[tokio::test]
async fn a_restarted_single_upstream_answers_handshakes_as_soon_as_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let alice = tower_session_sqlite(&db, "alice", None, time::Duration::hours(1)).await;
    let port = free_port();
    let gw = Gateway::start(&sio_route(&format!("\"127.0.0.1:{port}\""), &db, 3600)).await;
    // The first health check ran and found nothing listening.
    let not_ready = eventually(Duration::from_secs(10), || async {
        get(&gw.admin_url("/readyz"), &[]).await.map(|r| r.0) == Some(503)
    })
    .await;
    assert!(not_ready, "the dead node is marked unhealthy");
    let cookie = format!("id={alice}");
    let handshake = gw.url("/socket.io/?EIO=4&transport=polling");
    // Down: every node is tried and fails to connect: 502, not a 503 from health state alone.
    let (s, _, _) = get(&handshake, &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(s, 502);

    let _a = Upstream::start_at("a", &format!("127.0.0.1:{port}")).await;
    for _ in 0..5 {
        let (s, hdrs, body) = get(&handshake, &[("cookie", &cookie)]).await.unwrap();
        assert_eq!((s, header(&hdrs, "x-upstream")), (200, Some("a")), "{body}");
    }
    // Still unhealthy by the health checks' account: these were panic-mode choices.
    assert_eq!(
        get(&gw.admin_url("/readyz"), &[]).await.unwrap().0,
        503,
        "no health check ran in between"
    );
    assert!(gw.metric("gateway_upstream_panic_total").await >= 6.0);
    assert!(gw.log_text().contains("panic mode"), "{}", gw.log_text());
}

fn sid_of(body: &str) -> String {
    body.split("\"sid\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("an open packet")
        .to_string()
}

fn cookie_pair(hdrs: &[(String, String)], name: &str) -> Option<String> {
    hdrs.iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| {
            let pair = v.split(';').next()?;
            pair.starts_with(&format!("{name}="))
                .then(|| pair.to_string())
        })
}

/// Two gateway processes (a replica, or the process after a restart) share only the affinity
/// key: a polling session made through one keeps reaching its node through the other, and a
/// forged cookie never routes outside the route.
#[tokio::test]
async fn polling_affinity_survives_another_gateway_process() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let alice = tower_session_sqlite(&db, "alice", None, time::Duration::hours(1)).await;
    let body = format!(
        "{}\n[affinity]\nkeys = [{{ value = \"shared between replicas\" }}]\n",
        sio_route(&format!("\"{}\", \"{}\"", a.addr, b.addr), &db, 1)
    );
    let gw1 = Gateway::start(&body).await;
    let gw2 = Gateway::start(&body).await;
    gw1.wait_ready().await;
    gw2.wait_ready().await;
    let session = format!("id={alice}");

    let mut sessions = Vec::new();
    for _ in 0..6 {
        let (s, _, body) = get(
            &gw1.url("/socket.io/?EIO=4&transport=polling"),
            &[("cookie", &session)],
        )
        .await
        .unwrap();
        assert_eq!(s, 200, "{body}");
        sessions.push(sid_of(&body));
    }
    assert!(
        sessions.iter().any(|s| s.starts_with("a-"))
            && sessions.iter().any(|s| s.starts_with("b-")),
        "handshakes are balanced: {sessions:?}"
    );
    for sid in &sessions {
        let owner = sid.split('-').next().unwrap();
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        // The first request after the handshake, through the process that saw it, gets the
        // cookie; a second one carrying it gets none (nothing to change).
        let (s, hdrs, _) = get(&gw1.url(&path), &[]).await.unwrap();
        assert_eq!((s, header(&hdrs, "x-upstream")), (200, Some(owner)));
        let affinity = cookie_pair(&hdrs, "gw_affinity").expect("an affinity cookie");
        let cookies = format!("{session}; {affinity}");
        let (_, hdrs, _) = get(&gw1.url(&path), &[("cookie", &cookies)]).await.unwrap();
        assert_eq!(cookie_pair(&hdrs, "gw_affinity"), None);
        // The other process never saw this session: the cookie alone routes it, every time.
        for (i, method) in ["GET", "POST", "GET", "POST", "GET", "GET"]
            .iter()
            .enumerate()
        {
            let gw = if i % 2 == 0 { &gw2 } else { &gw1 };
            let (s, hdrs, _) = request(method, &gw.url(&path), &[("cookie", &cookies)])
                .await
                .unwrap();
            assert_eq!(
                (s, header(&hdrs, "x-upstream")),
                (200, Some(owner)),
                "{method} {sid} via gateway {}",
                i % 2 + 2
            );
        }
    }
    // Without the cookie the other process routes at random: both nodes are seen.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={}", sessions[0]);
        let (_, hdrs, _) = get(&gw2.url(&path), &[]).await.unwrap();
        seen.extend(header(&hdrs, "x-upstream").map(str::to_string));
    }
    assert_eq!(seen.len(), 2, "the cookie is what routes: {seen:?}");
    // A cookie made with another key, or naming a node outside the route, is ignored.
    let outsider = Upstream::start("outsider").await;
    let forged = format!("gw_affinity={}~AAAAAAAAAAAAAAAAAAAAAA", outsider.addr);
    for _ in 0..4 {
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={}", sessions[0]);
        let (s, hdrs, _) = get(&gw2.url(&path), &[("cookie", &forged)]).await.unwrap();
        assert_eq!(s, 200);
        assert_ne!(header(&hdrs, "x-upstream"), Some("outsider"));
    }
    assert_eq!(outsider.count(), 0);
}

/// An upstream that accepts every upgrade with a `101` and then echoes until the peer closes.
async fn upgrade_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                          Connection: Upgrade\r\n\r\n",
                    )
                    .await;
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// An authenticated Engine.IO WebSocket handshake; the upgraded connection, or what went wrong
/// (refused, reset, or an answer other than `101`).
async fn ws_handshake(port: u16, cookie: &str) -> Result<tokio::net::TcpStream, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {:?}", e.kind()))?;
    let req = format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {cookie}\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {:?}", e.kind()))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) => return Err("read: closed before an answer".to_string()),
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("read: {:?}", e.kind())),
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| "read: no answer in 10 s".to_string())??;
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!(
            "answer: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(s)
}

/// Holds `n` upgraded connections idle; each task resolves when its connection is closed by
/// the other end, with when.
async fn idle_tunnels(
    port: u16,
    cookie: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<std::time::Instant>> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = ws_handshake(port, cookie).await.expect("an idle tunnel");
        held.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut b = [0u8; 64];
            while let Ok(n) = s.read(&mut b).await {
                if n == 0 {
                    break;
                }
            }
            std::time::Instant::now()
        }));
    }
    held
}

/// New authenticated handshakes every `every` until `stop`: (answered 101, failures).
fn steady_handshakes(
    port: u16,
    cookie: String,
    every: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut tries = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            let cookie = cookie.clone();
            tries.push(tokio::spawn(async move {
                ws_handshake(port, &cookie).await.map(drop)
            }));
        }
        let mut ok = 0;
        let mut failed = Vec::new();
        for t in tries {
            match t.await.expect("handshake task") {
                Ok(()) => ok += 1,
                Err(e) => failed.push(e),
            }
        }
        (ok, failed)
    })
}

/// When the gateway closed each drained tunnel, from its log lines' timestamps (seconds of
/// the day, on an `Instant` scale: only the gaps between them mean anything).
fn drained_at(log: &str) -> Vec<std::time::Instant> {
    let base = std::time::Instant::now();
    log.lines()
        .filter(|l| l.contains("closed by the drain"))
        .filter_map(|l| {
            let clock = l.split('T').nth(1)?.split('Z').next()?;
            let mut parts = clock.split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next()?.parse().ok()?;
            Some(base + Duration::from_secs_f64(h * 3600.0 + m * 60.0 + s))
        })
        .collect()
}

/// Most events in any one-second span.
fn busiest_second(times: &[std::time::Instant]) -> usize {
    let mut t = times.to_vec();
    t.sort();
    (0..t.len())
        .map(|i| {
            t[i..]
                .iter()
                .take_while(|x| **x - t[i] < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// A count from the environment (to run a test at the issue's full scale), or `default`.
fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The binary upgrade under load: idle WebSockets through the old process plus a steady stream
/// of new authenticated handshakes; the new process takes the listening sockets over (Pingora's
/// upgrade socket, SIGQUIT to the old one). No connection attempt is refused or reset; the old
/// process closes its tunnels no faster than `drain_max_per_sec`, then exits by itself.
/// `ZERO_DROP_IDLE=2000 ZERO_DROP_RATE=400 ZERO_DROP_HANDSHAKES_PER_SEC=100` runs it at the
/// issue's scale (with `ulimit -n` raised).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_upgrade_refuses_nothing_and_drains_at_the_configured_rate() {
    let idle = env_count("ZERO_DROP_IDLE", 30);
    let rate = env_count("ZERO_DROP_RATE", 10).max(1);
    let per_sec = env_count("ZERO_DROP_HANDSHAKES_PER_SEC", 50).max(1) as u64;
    let up = upgrade_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let alice = tower_session_sqlite(&db, "alice", None, time::Duration::hours(1)).await;
    let sock = dir.path().join("upgrade.sock");
    let section = format!(
        "drain_secs = {}\ndrain_max_per_sec = {rate}\nupgrade_sock = \"{}\"",
        (idle / rate + 1).max(5),
        sock.display()
    );
    let mut old = Gateway::start_with(&sio_route(&format!("\"{up}\""), &db, 1), &section).await;
    old.wait_ready().await;
    let cookie = format!("id={alice}");
    let tunnels = idle_tunnels(old.http, &cookie, idle).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let every = Duration::from_micros(1_000_000 / per_sec);
    let load = steady_handshakes(old.http, cookie.clone(), every, stop.clone());
    let new_log = dir.path().join("new.log");
    let mut new = old.spawn_upgrade(&new_log);
    let waiting = eventually(Duration::from_secs(20), || {
        let sock = sock.clone();
        async move { sock.exists() }
    })
    .await;
    assert!(waiting, "the new process waits for the sockets");
    let quit_at = std::time::Instant::now();
    old.signal("QUIT");
    let limit = Duration::from_secs(20 + 2 * (idle / rate) as u64);
    let status = tokio::task::block_in_place(|| old.wait_exit(limit));
    let old_log = old.log_text();
    assert!(
        status.is_some_and(|s| s.success()),
        "the old process exits once drained: {status:?}\n{old_log}"
    );
    let exited = quit_at.elapsed();
    // The new process alone serves now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    let new_text = std::fs::read_to_string(&new_log).unwrap_or_default();
    let _ = new.kill();
    let _ = new.wait();

    assert!(
        failed.is_empty(),
        "{} of {} handshakes failed: {failed:?}\nold:\n{old_log}\nnew:\n{new_text}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok as u64 > 5 * per_sec, "the load ran: {ok}");
    let mut closed = Vec::new();
    for t in tunnels {
        closed.push(
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("every old tunnel was closed")
                .unwrap(),
        );
    }
    // As the gateway closed them (its log), and as the clients saw it (later, and bunched
    // when the machine is busy: each EOF waits for this test's own scheduler).
    let busiest = busiest_second(&drained_at(&old_log));
    let seen = busiest_second(&closed);
    let first = closed.iter().min().unwrap().duration_since(quit_at);
    let last = closed.iter().max().unwrap().duration_since(quit_at);
    println!(
        "upgrade: {ok} handshakes answered, 0 failed; {idle} old tunnels closed between \
         {first:?} and {last:?} after SIGQUIT, at most {busiest} in one second by the gateway's \
         log, {seen} as the clients saw it (limit {rate}); old process exited after {exited:?}"
    );
    // The drain's token bucket lets a late timer catch up by a hundredth of the rate.
    assert!(
        busiest <= rate + 1 + rate / 100,
        "closed too fast: {busiest} in one second"
    );
    assert!(
        last - first >= Duration::from_secs(2),
        "paced, not all at once"
    );
    assert_eq!(
        old_log.matches("closed by the drain").count(),
        idle,
        "{old_log}"
    );
}

/// Plain SIGTERM drains the same paced way, and the process exits as soon as the last tunnel
/// is gone (well before Pingora's grace period, its hard deadline, is over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_tunnels_paced_then_exits() {
    const IDLE: usize = 12;
    const RATE: usize = 5;
    let up = upgrade_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let alice = tower_session_sqlite(&db, "alice", None, time::Duration::hours(1)).await;
    let section = format!(
        "drain_secs = 3\ndrain_max_per_sec = {RATE}\nupgrade_sock = \"{}\"",
        dir.path().join("u.sock").display()
    );
    let mut gw = Gateway::start_with(&sio_route(&format!("\"{up}\""), &db, 1), &section).await;
    gw.wait_ready().await;
    let tunnels = idle_tunnels(gw.http, &format!("id={alice}"), IDLE).await;
    let term_at = std::time::Instant::now();
    gw.sigterm();
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(20)));
    assert!(status.is_some_and(|s| s.success()), "{}", gw.log_text());
    let exited = term_at.elapsed();
    let mut closed = Vec::new();
    for t in tunnels {
        closed.push(t.await.unwrap());
    }
    let busiest = busiest_second(&closed);
    let last = closed.iter().max().unwrap().duration_since(term_at);
    println!("sigterm: {IDLE} tunnels closed by {last:?}, at most {busiest} in one second (limit {RATE}); exited after {exited:?}");
    assert!(
        busiest <= RATE + 1,
        "closed too fast: {busiest} in one second"
    );
    assert!(
        last >= Duration::from_secs(2),
        "spread over the window: {last:?}"
    );
    // Exited on its own once drained: before the linger + hold + window + shutdown_timeout
    // deadline (the linger is the default).
    assert!(
        exited < Duration::from_secs(5) + Duration::from_millis(900),
        "{exited:?}"
    );
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body) from `conn`; `None` if the
/// connection ended first. Returns whether it said `Connection: close`.
async fn read_response(conn: &mut tokio::net::TcpStream) -> Option<bool> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(head.contains("connection: close"));
            }
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A client busy on a keep-alive connection when SIGTERM arrives (a polling Socket.IO client
/// sends a request every few milliseconds) is told to close it by a response, not dropped
/// with a request in flight: Pingora drops the connections waiting for their next request when
/// it stops, so the gateway first lingers (`keepalive_linger_ms`), every response closing its
/// connection. Without the linger the connection ended under a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_busy_keepalive_clients_to_close_instead_of_dropping_them() {
    use tokio::io::AsyncWriteExt;
    let app = Upstream::start("app").await;
    let body = app_route(&app);
    let mut gw = Gateway::start_with(&body, "keepalive_linger_ms = 500").await;
    gw.wait_ready().await;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", gw.http))
        .await
        .unwrap();
    let mut answered = 0;
    let mut term_at = None;
    loop {
        conn.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .expect("the connection is open for the next request");
        let close = read_response(&mut conn).await;
        let Some(close) = close else {
            panic!(
                "the connection ended under a request after {answered} answers ({:?} after SIGTERM)",
                term_at.map(|t: std::time::Instant| t.elapsed())
            );
        };
        answered += 1;
        if close {
            assert!(term_at.is_some(), "told to close before any SIGTERM");
            // Still lingering: readiness already sends new clients elsewhere.
            let (status, _, report) = get(&gw.admin_url("/readyz"), &[]).await.unwrap();
            assert_eq!(status, 503, "{report}");
            assert!(report.starts_with("stopping"), "{report}");
            break;
        }
        if answered == 5 {
            gw.sigterm();
            term_at = Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(20)));
    assert!(status.is_some_and(|s| s.success()), "{}", gw.log_text());
}

/// Waits until the gateway's log contains `line` (the stopped listener says what it waits for).
async fn logged(gw: &Gateway, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gw.log_text().contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "no `{line}` in the log:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection the gateway accepted before it stopped listening gets its first request
/// answered although the request head had not fully arrived yet. Pingora ends every
/// connection waiting for a head when it stops listening; for a connection accepted a moment
/// before, that dropped a request already on its way (a polling client that opens a connection
/// per request saw a transport error across a binary upgrade in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_before_the_stop_gets_its_first_request_answered() {
    use tokio::io::AsyncWriteExt;
    let app = Upstream::start("app").await;
    let body = app_route(&app);
    let mut gw = Gateway::start_with(&body, "keepalive_linger_ms = 0").await;
    gw.wait_ready().await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", gw.http));
    // A slow client: connected, half its request head sent.
    let mut slow = connect().await.unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    // Connections are accepted in arrival order: once a later one is answered, the slow one has
    // been accepted (not merely queued in the kernel, where a closing listener would reset it).
    let mut later = connect().await.unwrap();
    later
        .write_all(b"GET /later HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut later).await.is_some());

    gw.sigterm();
    logged(&gw, "waiting for the first request").await;
    assert!(
        connect().await.is_err(),
        "the listener no longer accepts once it waits"
    );
    slow.write_all(b"\r\n").await.unwrap();
    let answered = read_response(&mut slow).await;
    assert_eq!(
        answered,
        Some(true),
        "answered, with Connection: close\n{}",
        gw.log_text()
    );
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(20)));
    assert!(status.is_some_and(|s| s.success()), "{}", gw.log_text());
}

/// A TLS client whose handshake is under way when the listener stops finishes it and gets its
/// first request answered. Pingora hands a TLS connection to the application only once its
/// handshake is done, so the stopped listener waits (by the clock) for handshakes whose
/// ClientHello arrived just before, and the process does not exit under them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_under_way_at_the_stop_completes_and_is_answered() {
    let app = Upstream::start("app").await;
    let body = app_route(&app);
    let mut gw = Gateway::start_tls_with(&body, "keepalive_linger_ms = 0").await;
    gw.wait_ready().await;
    let port = gw.https.expect("tls listener");
    let ca = gw.dir.path().join("certs/ca.crt");
    let (in_handshake_tx, in_handshake) = tokio::sync::oneshot::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    // A blocking rustls client, driven step by step: it stops with its Finished unsent.
    let client = std::thread::spawn(move || -> std::io::Result<String> {
        use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
        use std::io::{Read, Write};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca).expect("dev CA"))
            .expect("add CA");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .map_err(std::io::Error::other)?;
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", port))?;
        while tls.wants_write() {
            tls.write_tls(&mut sock)?;
        }
        // The gateway's whole flight read: it is in the handshake, waiting for our Finished.
        while !tls.wants_write() {
            if tls.read_tls(&mut sock)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            tls.process_new_packets().map_err(std::io::Error::other)?;
        }
        let _ = in_handshake_tx.send(());
        let _ = go_rx.recv();
        let mut stream = rustls::Stream::new(&mut tls, &mut sock);
        stream.write_all(b"GET /tls HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk)? {
                0 => break,
                n => out.extend_from_slice(&chunk[..n]),
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    });
    in_handshake
        .await
        .expect("the client reached the middle of its handshake");
    gw.sigterm();
    logged(&gw, "handshaking=true").await;
    go.send(()).unwrap();
    let answer = tokio::task::block_in_place(|| client.join()).expect("client thread");
    let answer = answer.unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()));
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\n{}",
        gw.log_text()
    );
    let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(20)));
    assert!(status.is_some_and(|s| s.success()), "{}", gw.log_text());
}

/// `gateway check` reads the affinity keys' sources as a start would: a missing one is named.
#[test]
fn check_names_a_missing_affinity_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = identity_assertion::SigningKey::generate("k");
    std::fs::write(dir.path().join("signing.pem"), key.to_pkcs8_pem()).unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[assertion.keys]]\nkid = \"k\"\n\
         private_key = { file = \"signing.pem\" }\n\n[affinity]\n\
         keys = [{ env = \"W13_NO_SUCH_AFFINITY_KEY\" }]\n\n[[route]]\nname = \"app\"\n\
         upstreams = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(gateway_bin())
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .env_remove("W13_NO_SUCH_AFFINITY_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("affinity.keys[0]") && err.contains("W13_NO_SUCH_AFFINITY_KEY"),
        "{err}"
    );
}
