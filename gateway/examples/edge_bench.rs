//! Gateway bench (not a test): prints, in one run, side by side
//!   1. Engine.IO polling handshakes per second at a fixed concurrency, direct to the upstream
//!      vs through the gateway (plain and TLS listeners), with p50/p99 latency and what the
//!      gateway adds (including the SQLite session lookup and signing the assertion);
//!   2. gateway RSS per idle upgraded WebSocket over TLS, at several thousand connections.
//!
//! Run it with `integration/bench/gateway-bench.sh` (release build, raised fd limit).
//! Env: BENCH_CONCURRENCY (32), BENCH_SECS (5), BENCH_WS (5000), BENCH_GW_THREADS (2), GATEWAY_BIN.

mod support;

use support::{env, free_port, rss_kib};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{protocol::Role, Message};

/// A minimal Engine.IO-like upstream: open packet for polling handshakes, WebSocket echo for
/// upgrades. Its cost is the same in the direct and proxied runs.
const OPEN_PACKET: &str = r#"0{"sid":"bench","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;

async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|mut req: hyper::Request<Incoming>| async move {
                        if let Some(key) = req.headers().get("sec-websocket-key").cloned() {
                            let accept =
                                tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                                    key.as_bytes(),
                                );
                            tokio::spawn(async move {
                                if let Ok(up) = hyper::upgrade::on(&mut req).await {
                                    let mut ws =
                                        tokio_tungstenite::WebSocketStream::from_raw_socket(
                                            TokioIo::new(up),
                                            Role::Server,
                                            None,
                                        )
                                        .await;
                                    // As an Engine.IO server does: the OPEN packet first.
                                    if ws.send(Message::text(OPEN_PACKET)).await.is_err() {
                                        return;
                                    }
                                    while let Some(Ok(m)) = ws.next().await {
                                        if m.is_text() && ws.send(m).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            });
                            return Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(101)
                                    .header("upgrade", "websocket")
                                    .header("connection", "upgrade")
                                    .header("sec-websocket-accept", accept)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            );
                        }
                        Ok(hyper::Response::new(Full::new(Bytes::from_static(
                            OPEN_PACKET.as_bytes(),
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

type Tls = Option<(
    tokio_rustls::TlsConnector,
    rustls::pki_types::ServerName<'static>,
)>;

async fn connect(addr: SocketAddr, tls: &Tls) -> Box<dyn Io> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Box::new(tcp),
        Some((c, name)) => Box::new(c.connect(name.clone(), tcp).await.expect("tls")),
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

struct Run {
    label: &'static str,
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

/// `concurrency` keep-alive connections sending handshakes back to back for `secs`.
async fn handshakes(
    label: &'static str,
    addr: SocketAddr,
    tls: Tls,
    cookie: String,
    concurrency: usize,
    secs: u64,
) -> Run {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (tls, cookie) = (tls.clone(), cookie.clone());
        tasks.push(tokio::spawn(async move {
            let io = connect(addr, &tls).await;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let req = hyper::Request::get("/socket.io/?EIO=4&transport=polling")
                    .header("host", "localhost")
                    .header("cookie", cookie.as_str())
                    .body(Empty::new())
                    .unwrap();
                let t = Instant::now();
                match send.send_request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = resp.into_body().collect().await;
                        lat.push(t.elapsed());
                    }
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        label,
        rps: all.len() as f64 / secs as f64,
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    }
}

async fn start_gateway(bin: &str, config: &std::path::Path, port: u16) -> std::process::Child {
    let child = std::process::Command::new(bin)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "error")
        .spawn()
        .expect("start gateway");
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    child
}

/// SIGTERM (graceful), so a profiler wrapping the gateway can write its report; then SIGKILL.
async fn stop_gateway(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..300 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::main]
async fn main() {
    let concurrency = env("BENCH_CONCURRENCY", 32);
    let secs = env("BENCH_SECS", 5) as u64;
    let n_ws = env("BENCH_WS", 5000);
    let threads = env("BENCH_GW_THREADS", 2);
    let bin = std::env::var("GATEWAY_BIN").unwrap_or_else(|_| "target/release/gateway".into());

    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sessions.db");
    let session_id = {
        use tower_sessions::session_store::SessionStore;
        let pool = tower_sessions_sqlx_store::sqlx::SqlitePool::connect(&format!(
            "sqlite://{}?mode=rwc",
            db.display()
        ))
        .await
        .unwrap();
        let store = tower_sessions_sqlx_store::SqliteStore::new(pool);
        store.migrate().await.unwrap();
        let mut data = std::collections::HashMap::new();
        data.insert(
            "axum-login.data".to_string(),
            serde_json::json!({"user_id": "alice", "auth_hash": []}),
        );
        let mut r = tower_sessions::session::Record {
            id: Default::default(),
            data,
            expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        };
        store.create(&mut r).await.unwrap();
        r.id.to_string()
    };
    let status = std::process::Command::new(&bin)
        .args(["dev-certs", "--out"])
        .arg(dir.path())
        .output()
        .expect("gateway binary");
    assert!(status.status.success());
    let (plain, tls_port, admin) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"
[gateway]
threads = {threads}
[admin]
listen = "127.0.0.1:{admin}"
[[listener]]
listen = "127.0.0.1:{plain}"
[[listener]]
listen = "127.0.0.1:{tls_port}"
tls = {{ cert = "server.crt", key = "server.key" }}
[[assertion.keys]]
kid = "bench"
private_key = {{ file = "assertion-signing.pem" }}
[session]
flavour = "tower-sessions"
store = {{ kind = "sqlite", path = "{db}" }}
[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = ["{up}"]
auth = "socketio-handshake"
audience = "presence-service"
"#,
        db = db.display()
    );
    std::fs::write(dir.path().join("gw.toml"), config).unwrap();
    let config_path = dir.path().join("gw.toml");
    let mut child = start_gateway(&bin, &config_path, tls_port).await;

    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls: Tls = Some((
        tokio_rustls::TlsConnector::from(Arc::new(client)),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    ));
    let cookie = format!("id={session_id}");
    let gw_plain: SocketAddr = format!("127.0.0.1:{plain}").parse().unwrap();
    let gw_tls: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();

    println!(
        "== Engine.IO polling handshakes, {concurrency} keep-alive connections, {secs} s each"
    );
    let runs = vec![
        handshakes(
            "direct to upstream",
            up,
            None,
            cookie.clone(),
            concurrency,
            secs,
        )
        .await,
        handshakes(
            "through gateway (http)",
            gw_plain,
            None,
            cookie.clone(),
            concurrency,
            secs,
        )
        .await,
        handshakes(
            "through gateway (https)",
            gw_tls,
            tls.clone(),
            cookie.clone(),
            concurrency,
            secs,
        )
        .await,
    ];
    println!(
        "{:<28} {:>12} {:>10} {:>10} {:>7}",
        "", "handshakes/s", "p50", "p99", "errors"
    );
    for r in &runs {
        println!(
            "{:<28} {:>12.0} {:>10.3?} {:>10.3?} {:>7}",
            r.label, r.rps, r.p50, r.p99, r.errors
        );
    }
    let added = |r: &Run| (r.p50.as_secs_f64() - runs[0].p50.as_secs_f64()) * 1e3;
    let added99 = |r: &Run| (r.p99.as_secs_f64() - runs[0].p99.as_secs_f64()) * 1e3;
    println!(
        "added by the gateway: http p50 {:+.3} ms, p99 {:+.3} ms; https p50 {:+.3} ms, p99 {:+.3} ms",
        added(&runs[1]),
        added99(&runs[1]),
        added(&runs[2]),
        added99(&runs[2])
    );
    // Single-connection latency: what one handshake costs when nothing queues.
    let one_direct = handshakes("direct, 1 connection", up, None, cookie.clone(), 1, 2).await;
    let one_gw = handshakes(
        "gateway http, 1 connection",
        gw_plain,
        None,
        cookie.clone(),
        1,
        2,
    )
    .await;
    println!(
        "one connection: direct p50 {:.3?}, gateway p50 {:.3?} (added {:+.3} ms)",
        one_direct.p50,
        one_gw.p50,
        (one_gw.p50.as_secs_f64() - one_direct.p50.as_secs_f64()) * 1e3
    );

    println!("\n== {n_ws} idle WebSockets through the TLS listener (authenticated handshakes)");
    // A fresh gateway, so the handshake load above does not colour the memory figure.
    stop_gateway(&mut child).await;
    let mut child = start_gateway(&bin, &config_path, tls_port).await;
    let pid = child.id();
    let before = rss_kib(pid);
    let mut sockets = Vec::with_capacity(n_ws);
    let mut lost_first_frames = 0usize;
    let started = Instant::now();
    for i in 0..n_ws {
        let io = connect(gw_tls, &tls).await;
        let req = tokio_tungstenite::tungstenite::handshake::client::Request::builder()
            .uri(format!(
                "wss://localhost:{tls_port}/socket.io/?EIO=4&transport=websocket"
            ))
            .header("host", format!("localhost:{tls_port}"))
            .header("cookie", cookie.as_str())
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header(
                "sec-websocket-key",
                tokio_tungstenite::tungstenite::handshake::client::generate_key(),
            )
            .body(())
            .unwrap();
        match tokio_tungstenite::client_async(req, io).await {
            Ok((mut ws, _)) => {
                // The upstream's first frame (sent right behind its 101) must come through.
                match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) if t.as_str() == OPEN_PACKET => {}
                    other => {
                        lost_first_frames += 1;
                        println!("connection {i}: first frame was not the OPEN: {other:?}");
                    }
                }
                if i % 500 == 0 {
                    ws.send(Message::text("hi")).await.unwrap();
                    let _ = ws.next().await;
                }
                sockets.push(ws);
            }
            Err(e) => {
                println!("connection {i} failed: {e}");
                break;
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let n = sockets.len().max(1) as f64;
    println!(
        "opened {} in {:.1} s; gateway RSS {} KiB -> {} KiB: {:.1} KiB per idle proxied WebSocket (target < 16 KB)",
        sockets.len(),
        open_secs,
        before,
        after,
        (after.saturating_sub(before)) as f64 / n
    );
    // Every counted connection must really be a live tunnel (Pingora issue #946 used to close
    // some right after the 101, which made the per-connection figure look smaller).
    let mut alive = 0;
    for ws in sockets.iter_mut() {
        if ws.send(Message::text("ping")).await.is_ok()
            && matches!(
                tokio::time::timeout(Duration::from_secs(5), ws.next()).await,
                Ok(Some(Ok(_)))
            )
        {
            alive += 1;
        }
    }
    println!(
        "{alive}/{} tunnels relay a message after the measurement; {lost_first_frames} lost the upstream's first frame",
        sockets.len()
    );
    drop(sockets);
    stop_gateway(&mut child).await;
}
