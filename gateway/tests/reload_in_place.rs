//! Reload in place: the real gateway binary re-reads its config (`gateway reload`, SIGHUP)
//! under live traffic, over TLS, with real WebSocket upstreams and a real SQLite session store.
//! Idle WebSockets stay open, a steady stream of authenticated handshakes never fails, and a
//! broken file changes nothing.
#![allow(clippy::result_large_err)] // tungstenite's handshake callback signature

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use identity_assertion::{AssertionVerifier, KeySet, SigningKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A WebSocket upstream that echoes text and records each handshake's target and identity
/// assertion; `open` counts the WebSockets open on it right now.
struct WsUpstream {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl WsUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (open2, seen2) = (open.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (open, seen) = (open2.clone(), seen2.clone());
                tokio::spawn(async move {
                    let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                              resp| {
                        let assertion = req
                            .headers()
                            .get("x-identity-assertion")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        seen.lock()
                            .unwrap()
                            .push((req.uri().to_string(), assertion));
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                        return;
                    };
                    open.fetch_add(1, Ordering::SeqCst);
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, open, seen }
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

/// A TLS client trusting `cas`, with rustls' default client-side session cache (resumption).
fn tls_client(cas: &[PathBuf]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
            roots.add(cert.expect("CA cert")).expect("CA accepted");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS connection to the gateway: the stream, whether it was resumed, and the leaf
/// certificate it presented (none on a resumed handshake).
async fn tls_connect(
    port: u16,
    cfg: &Arc<rustls::ClientConfig>,
) -> Result<
    (
        tokio_rustls::client::TlsStream<TcpStream>,
        bool,
        Option<Vec<u8>>,
    ),
    String,
> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let conn = tls.get_ref().1;
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    Ok((tls, resumed, leaf))
}

/// An authenticated Socket.IO WebSocket handshake through the gateway's TLS listener.
async fn wss(
    port: u16,
    cfg: &Arc<rustls::ClientConfig>,
    query: &str,
    cookie: &str,
) -> Result<Wss, String> {
    let (tls, _, _) = tls_connect(port, cfg).await?;
    let mut req = format!("wss://localhost:{port}/socket.io/?EIO=4&transport=websocket&{query}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", format!("id={cookie}").parse().unwrap());
    tokio_tungstenite::client_async(req, tls)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| format!("upgrade: {e}"))
}

/// The leaf certificate (DER) of a PEM chain file.
fn leaf_der(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .expect("cert file")
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec()
}

/// The `kid` in a JWT's header.
fn kid(token: &str) -> String {
    use base64::Engine;
    let head = token.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v.get("kid")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `n` from a recorded handshake target `...&n=<n>`.
fn seq(uri: &str) -> Option<u64> {
    uri.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("n="))
        .and_then(|n| n.parse().ok())
}

/// The gateway's `/metrics` text.
async fn metrics(gw: &Gateway) -> String {
    get(&gw.admin_url("/metrics"), &[])
        .await
        .map(|r| r.2)
        .unwrap_or_default()
}

fn config_hash_label(metrics: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| l.starts_with("gateway_config_info{"))
        .and_then(|l| l.split('"').nth(1))
        .map(str::to_string)
}

async fn run_cli_reload(gw: &Gateway) -> (bool, String) {
    let out = tokio::process::Command::new(gateway_bin())
        .arg("reload")
        .arg("--config")
        .arg(gw.config_path())
        .output()
        .await
        .expect("gateway reload");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Writes the file whole, then renames it into place, as a config manager would: a reload
/// never reads half a file.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Handshakes started at `rate` per second until told to stop; each one is an authenticated
/// WebSocket upgrade over TLS (resuming TLS sessions, as reconnecting browsers do), then closed.
struct HandshakeStream {
    next: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<(u64, String)>>>,
    stop: Arc<AtomicBool>,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl HandshakeStream {
    fn start(port: u16, cfg: Arc<rustls::ClientConfig>, cookie: String, rate: u32) -> Self {
        let next = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let failed: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (next2, ok2, failed2, stop2) = (next.clone(), ok.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut running = tokio::task::JoinSet::new();
            while !stop2.load(Ordering::SeqCst) {
                tick.tick().await;
                let n = next2.fetch_add(1, Ordering::SeqCst);
                let (cfg, cookie, ok, failed) =
                    (cfg.clone(), cookie.clone(), ok2.clone(), failed2.clone());
                running.spawn(async move {
                    let attempt = tokio::time::timeout(
                        Duration::from_secs(15),
                        wss(port, &cfg, &format!("n={n}"), &cookie),
                    )
                    .await;
                    match attempt {
                        Ok(Ok(mut ws)) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            let _ = ws.close(None).await;
                        }
                        Ok(Err(e)) => failed.lock().unwrap().push((n, e)),
                        Err(_) => failed.lock().unwrap().push((n, "timed out".into())),
                    }
                });
                while running.try_join_next().is_some() {}
            }
            while running.join_next().await.is_some() {}
        });
        Self {
            next,
            ok,
            failed,
            stop,
            started: Instant::now(),
            task,
        }
    }

    /// Sequence number the next handshake will get.
    fn next_seq(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    async fn finish(self) -> (u64, Vec<(u64, String)>) {
        self.stop.store(true, Ordering::SeqCst);
        let secs = self.started.elapsed().as_secs_f64();
        self.task.await.unwrap();
        let started = self.next.load(Ordering::SeqCst);
        let failed = self.failed.lock().unwrap().clone();
        let ok = self.ok.load(Ordering::SeqCst);
        println!(
            "handshake stream: {started} started in {secs:.1} s ({:.0}/s), {ok} upgraded, {} failed",
            started as f64 / secs,
            failed.len()
        );
        (ok, failed)
    }
}

fn route(name: &str, prefix: &str, upstream: SocketAddr, auth: &str) -> String {
    let audience = if auth == "none" {
        String::new()
    } else {
        "audience = \"presence-service\"\n".into()
    };
    format!(
        "\n[[route]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstreams = [\"{upstream}\"]\n\
         auth = \"{auth}\"\n{audience}health_check_interval_secs = 1\n"
    )
}

/// The whole scenario, at a given scale: `idle` WebSockets held open over TLS, handshakes at
/// `rate`/s for the whole test, a reload that adds a route, moves the Socket.IO route to
/// another upstream, rotates the signing key and replaces the certificate, then a broken file.
async fn reload_under_load(idle: usize, rate: u32, phase: Duration) {
    let store_dir = tempfile::tempdir().unwrap();
    let db = store_dir.path().join("s.db");
    let alice = tower_session_sqlite(&db, "alice", None, time::Duration::hours(1)).await;
    let (a, b) = (WsUpstream::start().await, WsUpstream::start().await);
    let plain = Upstream::start("new").await;
    let session = format!(
        "[session]\nflavour = \"tower-sessions\"\nstore = {{ kind = \"sqlite\", path = \"{}\" }}\n",
        db.display()
    );
    let body = format!(
        "{session}{}",
        route("presence", "/socket.io/", a.addr, "socketio-handshake")
    );
    let gw = Gateway::start_tls(&body).await;
    gw.wait_ready().await;
    let port = gw.https.expect("a TLS listener");
    let old_ca = gw.dir.path().join("certs/ca.crt");
    let old_leaf = leaf_der(&gw.dir.path().join("certs/server.crt"));
    let hash_before = config_hash_label(&metrics(&gw).await).expect("config hash metric");

    // What the reload will bring: a second signing key, and a certificate from another CA
    // (clients trust both, as browsers trust the public CA that issues both).
    let key2 = SigningKey::generate("test-2");
    std::fs::write(gw.dir.path().join("signing2.pem"), key2.to_pkcs8_pem()).unwrap();
    let made = std::process::Command::new(gateway_bin())
        .args(["dev-certs", "--out"])
        .arg(gw.dir.path().join("certs2"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let new_ca = gw.dir.path().join("certs2/ca.crt");
    let new_leaf = leaf_der(&gw.dir.path().join("certs2/server.crt"));
    assert_ne!(old_leaf, new_leaf);

    // The idle WebSockets, opened a few at a time.
    let client = tls_client(&[old_ca.clone(), new_ca.clone()]);
    let t = Instant::now();
    let mut sockets: Vec<Wss> = futures_util::stream::iter(0..idle)
        .map(|i| {
            let (client, alice) = (client.clone(), alice.clone());
            async move { wss(port, &client, &format!("idle={i}"), &alice).await }
        })
        .buffer_unordered(32)
        .map(|r| r.expect("idle WebSocket"))
        .collect()
        .await;
    println!("{idle} idle WebSockets open over TLS in {:?}", t.elapsed());
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.open.load(Ordering::SeqCst) == idle
        })
        .await
    );

    let stream = HandshakeStream::start(port, client.clone(), alice.clone(), rate);
    tokio::time::sleep(phase).await;
    let (status, _, _) = get(&gw.url("/new/hello"), &[]).await.unwrap();
    assert_eq!(status, 404, "no such route yet");

    // The new config: a route added, the Socket.IO route moved from upstream a to b, a new
    // signing key first (the old one still listed, so it stays published), a new certificate.
    let old_text = std::fs::read_to_string(gw.config_path()).unwrap();
    let new_text = old_text
        .replace("certs/server.", "certs2/server.")
        .replace(
            "[[assertion.keys]]\nkid = \"test-1\"",
            "[[assertion.keys]]\nkid = \"test-2\"\nprivate_key = { file = \"signing2.pem\" }\n\n\
             [[assertion.keys]]\nkid = \"test-1\"",
        )
        .replace(&a.addr.to_string(), &b.addr.to_string())
        + &route("new", "/new/", plain.addr, "none");
    replace_file(&gw.config_path(), &new_text);

    let t0 = Instant::now();
    let (ok, said) = run_cli_reload(&gw).await;
    let reloaded_after = t0.elapsed();
    let first_after = stream.next_seq();
    assert!(ok, "reload refused: {said}");
    assert!(said.starts_with("reloaded: config "), "{said}");
    let mut new_route_after = None;
    while t0.elapsed() < Duration::from_secs(5) {
        if let Some((200, _, body)) = get(&gw.url("/new/hello"), &[]).await {
            assert_eq!(body, "ok from new");
            new_route_after = Some(t0.elapsed());
            break;
        }
    }
    let new_route_after = new_route_after.expect("the new route never answered");
    println!("reload answered in {reloaded_after:?}; new route answered {new_route_after:?} after the reload began");
    assert!(new_route_after < Duration::from_secs(1));

    // The next full TLS handshake presents the new certificate.
    let fresh = tls_client(&[old_ca.clone(), new_ca.clone()]);
    let (_, resumed, leaf) = tls_connect(port, &fresh).await.expect("TLS after reload");
    assert!(!resumed);
    assert_eq!(
        leaf.as_deref(),
        Some(new_leaf.as_slice()),
        "old certificate after reload"
    );

    // Assertions: signed with the new key, and both keys verify from the published JWKS.
    let (_, _, jwks) = get(&gw.admin_url("/.well-known/jwks.json"), &[])
        .await
        .unwrap();
    let keys = KeySet::from_jwks_json(&jwks).unwrap();
    let verifier = AssertionVerifier::new("edge-gateway", "presence-service", 5);
    assert!(
        eventually(Duration::from_secs(10), || async { !b.seen().is_empty() }).await,
        "no handshake reached the moved upstream"
    );
    let before = a.seen();
    let last_old = before
        .iter()
        .rev()
        .find(|(uri, _)| uri.contains("n="))
        .expect("handshakes before the reload");
    assert_eq!(kid(&last_old.1), "test-1");
    let handle_before = verifier
        .verify(&last_old.1, &keys)
        .expect("an assertion signed before the reload still verifies")
        .sid;

    tokio::time::sleep(phase).await;

    // A broken file (SIGHUP, then `gateway reload`): refused, logged, counted; nothing changes.
    let good_hash = config_hash_label(&metrics(&gw).await).expect("hash");
    assert_ne!(good_hash, hash_before);
    replace_file(
        &gw.config_path(),
        &new_text.replace(
            "path_prefix = \"/new/\"",
            "path_prefix = \"/new/\"\nbogus = 1",
        ),
    );
    gw.sighup();
    let refused = eventually(Duration::from_secs(10), || async {
        gw.metric("gateway_config_reloads_total{result=\"error\"}")
            .await
            == 1.0
    })
    .await;
    assert!(
        refused,
        "the broken file was not refused:\n{}",
        gw.log_text()
    );
    let (ok, said) = run_cli_reload(&gw).await;
    assert!(!ok, "{said}");
    assert!(
        said.contains("gateway.toml:") && said.contains("route[1].bogus: unknown field `bogus`"),
        "{said}"
    );
    let m = metrics(&gw).await;
    assert_eq!(config_hash_label(&m).as_deref(), Some(good_hash.as_str()));
    assert_eq!(
        gw.metric("gateway_config_reloads_total{result=\"error\"}")
            .await,
        2.0
    );
    assert_eq!(
        gw.metric("gateway_config_reloads_total{result=\"ok\"}")
            .await,
        1.0
    );
    let log = gw.log_text();
    assert_eq!(
        log.matches("config reload refused").count(),
        2,
        "each refusal logged once:\n{log}"
    );
    assert!(log.contains("route[1].bogus"), "{log}");
    let (status, _, _) = get(&gw.url("/new/hello"), &[]).await.unwrap();
    assert_eq!(status, 200, "the running config still serves");
    tokio::time::sleep(phase).await;

    let (handshakes, failed) = stream.finish().await;
    assert!(failed.is_empty(), "failed handshakes: {failed:?}");

    // Every handshake that started after the reload went to b with the new key, and verifies.
    let (_, _, jwks) = get(&gw.admin_url("/.well-known/jwks.json"), &[])
        .await
        .unwrap();
    let keys = KeySet::from_jwks_json(&jwks).unwrap();
    let late_on_a: Vec<u64> = a
        .seen()
        .iter()
        .filter_map(|(uri, _)| seq(uri))
        .filter(|n| *n >= first_after)
        .collect();
    assert!(
        late_on_a.is_empty(),
        "started after the reload, sent to the old upstream: {late_on_a:?}"
    );
    let on_b = b.seen();
    assert!(on_b.len() as u64 >= (handshakes / 4), "{} on b", on_b.len());
    for (uri, token) in &on_b {
        assert_eq!(kid(token), "test-2", "{uri}");
        let claims = verifier
            .verify(token, &keys)
            .expect("verifies from the JWKS");
        // The same login keeps its handle across the rotation: a logout names the sockets
        // opened before it too.
        assert_eq!(claims.sid, handle_before, "{uri}");
    }

    // Not one idle tunnel closed: each still relays both ways, on the upstream it started on.
    assert_eq!(
        a.open.load(Ordering::SeqCst),
        idle,
        "tunnels closed on the old upstream"
    );
    let t = Instant::now();
    for (i, ws) in sockets.iter_mut().enumerate() {
        let text = format!("still here {i}");
        ws.send(Message::text(text.clone())).await.expect("send");
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time");
        match echo {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), text),
            other => panic!("idle WebSocket {i} broken after the reload: {other:?}"),
        }
    }
    println!(
        "{idle} idle WebSockets echoed after the reloads in {:?}",
        t.elapsed()
    );
    assert_eq!(gw.metric("gateway_upgraded_connections").await, idle as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_routes_keys_and_certificate_without_dropping_anything() {
    reload_under_load(40, 40, Duration::from_secs(2)).await;
}

/// The scale: 2 000 idle WebSockets over TLS and 100 handshakes/s through the reload.
/// Slow tier (`rust-slow` runs ignored tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 2 000 TLS WebSockets under a steady handshake stream"]
async fn reload_under_2000_idle_websockets_and_100_handshakes_per_second() {
    reload_under_load(2000, 100, Duration::from_secs(5)).await;
}

/// TLS session resumption: a client that comes back resumes instead of a full handshake,
/// and sessions survive a reload (the listener's session cache is not rebuilt).
#[tokio::test]
async fn tls_sessions_resume_across_a_reload() {
    let gw = Gateway::start_tls(&route("web", "/", "127.0.0.1:9".parse().unwrap(), "none")).await;
    let port = gw.https.unwrap();
    let client = tls_client(&[gw.dir.path().join("certs/ca.crt")]);
    // TLS 1.3 sends the session ticket after the handshake: read until the client has it.
    let first = async {
        let (mut tls, resumed, leaf) = tls_connect(port, &client).await.unwrap();
        assert!(!resumed && leaf.is_some());
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
    };
    first.await;
    let (_, resumed, leaf) = tls_connect(port, &client).await.unwrap();
    assert!(resumed, "the second handshake was a full one");
    drop(leaf);

    let (ok, said) = run_cli_reload(&gw).await;
    assert!(ok, "{said}");
    let (_, resumed, _) = tls_connect(port, &client).await.unwrap();
    assert!(resumed, "a reload dropped the TLS session cache");
}

/// A reconnect storm is far more clients than rustls' default session cache (256) holds: each
/// of them must still resume (stateless tickets), not only the last few hundred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_clients_than_a_default_session_cache_all_resume() {
    const CLIENTS: usize = 400;
    let gw = Gateway::start_tls(&route("web", "/", "127.0.0.1:9".parse().unwrap(), "none")).await;
    let port = gw.https.unwrap();
    let ca = gw.dir.path().join("certs/ca.crt");
    // Each client its own config, so its own client-side session store: distinct sessions.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tls_client(std::slice::from_ref(&ca)))
        .collect();
    for client in &clients {
        let (mut tls, resumed, _) = tls_connect(port, client).await.unwrap();
        assert!(!resumed);
        // TLS 1.3 sends the session ticket after the handshake: read until the client has it.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
    }
    let mut resumed = 0;
    for client in &clients {
        let (_, r, _) = tls_connect(port, client).await.unwrap();
        resumed += usize::from(r);
    }
    assert_eq!(
        resumed, CLIENTS,
        "clients that came back with a full handshake"
    );
}

/// A reload that changes what needs a restart applies the rest and names what it did not.
#[tokio::test]
async fn settings_that_need_a_restart_are_named() {
    let up = Upstream::start("one").await;
    let other = Upstream::start("two").await;
    let gw = Gateway::start(&route("web", "/", up.addr, "none")).await;
    gw.wait_ready().await;
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    replace_file(
        &gw.config_path(),
        &text
            .replace("threads = 1", "threads = 3")
            .replace(&up.addr.to_string(), &other.addr.to_string()),
    );
    let (ok, said) = run_cli_reload(&gw).await;
    assert!(ok, "{said}");
    assert!(
        said.contains("not applied, needs a restart: gateway.threads"),
        "{said}"
    );
    let (status, _, body) = get(&gw.url("/x"), &[]).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok from two"));
    assert!(gw.log_text().contains("needs_restart=gateway.threads"));
}

/// A TCP listener that only counts the connections it accepts (health checks connect and close).
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, accepted)
}

/// Health checks follow the upstreams: after a reload moves a route, the old upstream is no
/// longer probed and the new one is, and readiness reports the new set.
#[tokio::test]
async fn health_checks_follow_a_moved_upstream() {
    let (one, one_probes) = counting_listener().await;
    let (two, two_probes) = counting_listener().await;
    let gw = Gateway::start(&route("web", "/", one, "none")).await;
    gw.wait_ready().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            one_probes.load(Ordering::SeqCst) >= 2
        })
        .await
    );
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    replace_file(
        &gw.config_path(),
        &text.replace(&one.to_string(), &two.to_string()),
    );
    let (ok, said) = run_cli_reload(&gw).await;
    assert!(ok, "{said}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            two_probes.load(Ordering::SeqCst) >= 2
        })
        .await,
        "the new upstream is not health-checked"
    );
    // Checks run every second: three intervals without a probe of the old upstream.
    let before = one_probes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        one_probes.load(Ordering::SeqCst),
        before,
        "the old upstream is still probed after the reload"
    );

    // Moved to an address nobody listens on: readiness follows within a check interval or two.
    let dead = free_port();
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    replace_file(
        &gw.config_path(),
        &text.replace(&two.to_string(), &format!("127.0.0.1:{dead}")),
    );
    let (ok, said) = run_cli_reload(&gw).await;
    assert!(ok, "{said}");
    let url = gw.admin_url("/readyz");
    assert!(
        eventually(Duration::from_secs(5), || {
            let url = url.clone();
            async move { get(&url, &[]).await.map(|r| r.0) == Some(503) }
        })
        .await,
        "readiness did not follow the moved upstream"
    );
}

/// The presence service binary next to the gateway's (`cargo build --workspace` builds both;
/// `PRESENCE_BIN` names another one).
fn presence_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("PRESENCE_BIN") {
        return bin.into();
    }
    let bin = Path::new(&gateway_bin()).with_file_name("presence-service");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p presence-service` (or set PRESENCE_BIN)",
        bin.display()
    );
    bin
}

/// Kills the presence service when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Socket.IO client's connect over a WebSocket through the gateway: the Engine.IO open
/// packet, then `40` for the main namespace; the service answers `40{"sid":..}` when it
/// accepts the identity assertion and `44{"message":"unauthorized: .."}` when it does not.
async fn socketio_connect(gw: &Gateway, alice: &str) -> Result<Wss2, String> {
    let mut req = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
        gw.http
    )
    .into_client_request()
    .unwrap();
    req.headers_mut()
        .insert("cookie", format!("id={alice}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    ws.send(Message::text("40"))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| "no connect answer".to_string())?;
        match msg {
            Some(Ok(Message::Text(t))) if t.starts_with("40") => return Ok(ws),
            Some(Ok(Message::Text(t))) if t.starts_with("44") => return Err(t.to_string()),
            Some(Ok(_)) => continue,
            other => return Err(format!("{other:?}")),
        }
    }
}

type Wss2 =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A rotated signing key, at the real presence service: after the reload its handshakes carry
/// the new `kid`, which the presence service fetches from the gateway's JWKS by itself, without
/// a restart; a socket connected before the rotation stays connected.
#[tokio::test]
async fn a_rotated_key_verifies_at_the_presence_service_without_a_restart() {
    let store_dir = tempfile::tempdir().unwrap();
    let db = store_dir.path().join("s.db");
    let alice = tower_session_sqlite(&db, "alice", None, time::Duration::hours(1)).await;
    let presence_port = free_port();
    let presence: SocketAddr = format!("127.0.0.1:{presence_port}").parse().unwrap();
    let session = format!(
        "[session]\nflavour = \"tower-sessions\"\nstore = {{ kind = \"sqlite\", path = \"{}\" }}\n",
        db.display()
    );
    let gw = Gateway::start(&format!(
        "{session}{}",
        route("presence", "/socket.io/", presence, "socketio-handshake")
    ))
    .await;
    let conf = store_dir.path().join("presence.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\nlisten = \"{presence}\"\n[trust]\njwks_url = \"{}\"\n\
             jwks_refetch_min_interval_ms = 200\n",
            gw.admin_url("/.well-known/jwks.json")
        ),
    )
    .unwrap();
    let _presence = Child(
        std::process::Command::new(presence_bin())
            .arg("--config")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("presence-service"),
    );
    let ready = format!("http://{presence}/readyz");
    assert!(
        eventually(Duration::from_secs(20), || {
            let ready = ready.clone();
            async move { get(&ready, &[]).await.map(|r| r.0) == Some(200) }
        })
        .await,
        "presence service not ready"
    );
    gw.wait_ready().await;
    let mut before = socketio_connect(&gw, &alice).await.expect("connect before");

    let key2 = SigningKey::generate("test-2");
    std::fs::write(gw.dir.path().join("signing2.pem"), key2.to_pkcs8_pem()).unwrap();
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    replace_file(
        &gw.config_path(),
        &text.replace(
            "[[assertion.keys]]\nkid = \"test-1\"",
            "[[assertion.keys]]\nkid = \"test-2\"\nprivate_key = { file = \"signing2.pem\" }\n\n\
             [[assertion.keys]]\nkid = \"test-1\"",
        ),
    );
    let (ok, said) = run_cli_reload(&gw).await;
    assert!(ok, "{said}");
    // Every handshake after the rotation is accepted, the first one included.
    for i in 0..5 {
        socketio_connect(&gw, &alice)
            .await
            .unwrap_or_else(|e| panic!("handshake {i} after the rotation refused: {e}"));
    }
    // The socket from before is still connected: the service answers its request (an ack).
    before
        .send(Message::text("421[\"get_online_users\"]"))
        .await
        .expect("send");
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(msg)) = before.next().await {
            if let Message::Text(t) = msg {
                if t.starts_with("431") {
                    return Some(t.to_string());
                }
            }
        }
        None
    })
    .await
    .expect("an answer in time")
    .expect("the socket from before the rotation was closed");
    assert!(acked.contains("alice"), "{acked}");
    let (_, _, jwks) = get(&gw.admin_url("/.well-known/jwks.json"), &[])
        .await
        .unwrap();
    assert!(
        jwks.contains("\"test-2\"") && jwks.contains("\"test-1\""),
        "{jwks}"
    );
}

/// A certificate with a key that is not its own is refused by `gateway check` and by a reload,
/// and the listener keeps presenting the certificate it had.
#[tokio::test]
async fn a_certificate_with_the_wrong_key_is_refused() {
    let gw = Gateway::start_tls(&route("web", "/", "127.0.0.1:9".parse().unwrap(), "none")).await;
    let port = gw.https.unwrap();
    let leaf = leaf_der(&gw.dir.path().join("certs/server.crt"));
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    replace_file(
        &gw.config_path(),
        &text.replace("certs/server.key", "certs/ca.key"),
    );
    let check = std::process::Command::new(gateway_bin())
        .arg("check")
        .arg("--config")
        .arg(gw.config_path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr).to_string();
    assert!(!check.status.success());
    assert!(
        said.contains("listener[1].tls: ")
            && said.contains("the key does not belong to the certificate"),
        "{said}"
    );
    let (ok, said) = run_cli_reload(&gw).await;
    assert!(!ok);
    assert!(
        said.contains("the key does not belong to the certificate"),
        "{said}"
    );
    let client = tls_client(&[gw.dir.path().join("certs/ca.crt")]);
    let (_, _, presented) = tls_connect(port, &client).await.expect("TLS still works");
    assert_eq!(presented.as_deref(), Some(leaf.as_slice()));
}

/// Session sources swap too: after a reload (by SIGHUP) that points the session store at
/// another file, the sessions of the new store authenticate and those of the old one no
/// longer do.
#[tokio::test]
async fn a_reload_moves_the_session_store() {
    let dir = tempfile::tempdir().unwrap();
    let (old_db, new_db) = (dir.path().join("old.db"), dir.path().join("new.db"));
    let alice = tower_session_sqlite(&old_db, "alice", None, time::Duration::hours(1)).await;
    let bob = tower_session_sqlite(&new_db, "bob", None, time::Duration::hours(1)).await;
    let app = Upstream::start("app").await;
    let body = format!(
        "[session]\nflavour = \"tower-sessions\"\nstore = {{ kind = \"sqlite\", path = \"{}\" }}\n{}",
        old_db.display(),
        route("app", "/", app.addr, "session")
    );
    let gw = Gateway::start(&body).await;
    gw.wait_ready().await;
    let status = |id: String| {
        let url = gw.url("/me");
        async move {
            get(&url, &[("cookie", &format!("id={id}"))])
                .await
                .map(|r| r.0)
        }
    };
    assert_eq!(status(alice.clone()).await, Some(200));
    assert_eq!(status(bob.clone()).await, Some(401));
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    replace_file(
        &gw.config_path(),
        &text.replace(&old_db.display().to_string(), &new_db.display().to_string()),
    );
    // This time by signal, as systemd's ExecReload would.
    gw.sighup();
    let reloaded = eventually(Duration::from_secs(10), || async {
        gw.metric("gateway_config_reloads_total{result=\"ok\"}")
            .await
            == 1.0
    })
    .await;
    assert!(reloaded, "SIGHUP did not reload:\n{}", gw.log_text());
    assert!(gw.log_text().contains("SIGHUP: reloading the config"));
    assert_eq!(status(bob).await, Some(200));
    assert_eq!(status(alice).await, Some(401));
}

/// An HTTP upstream that tells `arrived` when a request is in, then answers only when `go`
/// says so.
async fn held_upstream(
    name: &'static str,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    Arc<tokio::sync::Notify>,
) {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let go = Arc::new(tokio::sync::Notify::new());
    let go2 = go.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (arrived, go) = (arrived.clone(), go2.clone());
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let _ = arrived.send(());
                go.notified().await;
                let body = format!("from {name}");
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (addr, arrivals, go)
}

/// A request in flight during a reload finishes on the config it started with: the upstream it
/// was sent to answers it, though the route has moved meanwhile.
#[tokio::test]
async fn a_request_in_flight_finishes_on_its_own_config() {
    let (a, mut a_arrivals, a_go) = held_upstream("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&route("web", "/", a, "none")).await;
    gw.wait_ready().await;
    let url = gw.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    a_arrivals.recv().await.expect("the request reached a");

    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    replace_file(
        &gw.config_path(),
        &text.replace(&a.to_string(), &b.addr.to_string()),
    );
    let (ok, said) = run_cli_reload(&gw).await;
    assert!(ok, "{said}");
    let (status, _, body) = get(&gw.url("/next"), &[]).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok from b"));

    a_go.notify_one();
    let (status, _, body) = in_flight.await.unwrap().expect("the in-flight request");
    assert_eq!((status, body.as_str()), (200, "from a"));
}
