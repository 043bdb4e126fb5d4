//! Real parts for the gateway's integration tests: the gateway binary, a real redis-server, a
//! real SQLite session file written by tower-sessions' own store, and upstreams that record
//! what reaches them. Every process is started on a free loopback port and killed on drop.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use identity_assertion::{AssertionVerifier, Claims, KeySet, SigningKey};
use tokio::net::TcpListener;

/// A port free now, below the kernel's ephemeral range. A port the kernel picks (bind to 0)
/// comes from the range it also gives outgoing connections, and the tests open many (clients,
/// upstream pools, Redis): one can take the port between this check and the server's start.
/// Below the range only another server can take it. A port is handed out once per process.
pub fn free_port() -> u16 {
    use rand::Rng;
    static HANDED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let top: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = top.saturating_sub(16384).max(1024);
    let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let port = rand::thread_rng().gen_range(low..top);
        if !handed.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.insert(port);
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether every port on loopback accepts a TCP connection.
pub async fn accepting(ports: &[u16]) -> bool {
    for &p in ports {
        if tokio::net::TcpStream::connect(("127.0.0.1", p))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Polls `check` until it is true, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- redis

pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    pub async fn start() -> Self {
        let mut r = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts redis-server on the same port, and waits until it answers PING.
    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            eventually(Duration::from_secs(10), || async move {
                redis_cmd(port, &["PING"]).await.is_some()
            })
            .await,
            "redis-server did not start"
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn cmd(&self, args: &[&str]) -> Option<String> {
        redis_cmd(self.port, args).await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One RESP command over a fresh connection; returns the first line of the reply.
async fn redis_cmd(port: u16, args: &[&str]) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).to_string())
}

// ---------------------------------------------------------------- recording upstream

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header whose name, with `_` read as `-`, is `name`.
    pub fn headers_like(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.replace('_', "-").eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A route sending every path to `up`, with no authentication.
pub fn app_route(up: &Upstream) -> String {
    format!("[[route]]\nname = \"app\"\nupstreams = [\"{}\"]\n", up.addr)
}

/// An HTTP upstream that records every request. It answers Engine.IO polling handshakes with
/// an open packet whose `sid` names this upstream, so stickiness can be observed.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        Self::start_at(name, "127.0.0.1:0").await
    }

    /// Like [`Upstream::start`], on a given address (a node coming back where it was).
    pub async fn start_at(name: &str, addr: &str) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let (seen2, name2) = (seen.clone(), name.to_string());
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let (seen, name, counter) = (seen2.clone(), name2.clone(), counter.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let (seen, name, counter) = (seen.clone(), name.clone(), counter.clone());
                        async move {
                            let rec = Recorded {
                                method: req.method().to_string(),
                                uri: req.uri().to_string(),
                                headers: req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            v.to_str().unwrap_or("").to_string(),
                                        )
                                    })
                                    .collect(),
                            };
                            let is_handshake =
                                rec.uri.contains("EIO=") && !rec.uri.contains("sid=");
                            seen.lock().unwrap().push(rec);
                            let body = if is_handshake {
                                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                format!(
                                    r#"0{{"sid":"{name}-{n}","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}}"#
                                )
                            } else {
                                format!("ok from {name}")
                            };
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("x-upstream", name.as_str())
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self {
            addr,
            name: name.to_string(),
            seen,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- sessions

/// Writes a tower-sessions record with the real SQLite store, as an axum-login app would.
pub async fn tower_session_sqlite(
    db: &Path,
    user_id: &str,
    name: Option<&str>,
    expires_in: time::Duration,
) -> String {
    use tower_sessions::session::{Id, Record};
    use tower_sessions::session_store::SessionStore;
    use tower_sessions_sqlx_store::sqlx::sqlite::SqlitePoolOptions;
    let pool = SqlitePoolOptions::new()
        .connect(&format!("sqlite://{}?mode=rwc", db.display()))
        .await
        .expect("sqlite");
    let store = tower_sessions_sqlx_store::SqliteStore::new(pool);
    store.migrate().await.expect("migrate");
    let mut data = std::collections::HashMap::new();
    data.insert(
        "axum-login.data".to_string(),
        serde_json::json!({"user_id": user_id, "auth_hash": [1, 2, 3]}),
    );
    if let Some(n) = name {
        data.insert("display_name".to_string(), serde_json::json!(n));
    }
    let mut record = Record {
        id: Id::default(),
        data,
        expiry_date: time::OffsetDateTime::now_utc() + expires_in,
    };
    store.create(&mut record).await.expect("create session");
    record.id.to_string()
}

/// The same cookie value signed by the real `cookie` crate, as tower-sessions' `with_signed` does.
pub fn sign_tower_cookie(value: &str, master_key: &[u8]) -> String {
    use tower_sessions::cookie::{Cookie, CookieJar, Key};
    let mut jar = CookieJar::new();
    jar.signed_mut(&Key::from(master_key))
        .add(Cookie::new("id", value.to_string()));
    jar.get("id").expect("signed cookie").value().to_string()
}

/// express-session's cookie for `sid` signed with `secret` (cookie-signature), URL-encoded.
pub fn express_cookie(sid: &str, secret: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(sid.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD_NO_PAD.encode(mac.finalize().into_bytes());
    percent_encoding::utf8_percent_encode(
        &format!("s:{sid}.{sig}"),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string()
}

/// A connect-redis session value with Passport's user, expiring `expires_in` from now.
pub fn express_session_json(user: &str, expires_in: time::Duration) -> String {
    let expires = (time::OffsetDateTime::now_utc() + expires_in)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
    serde_json::json!({
        "cookie": {"originalMaxAge": 2592000000u64, "expires": expires, "httpOnly": true, "path": "/"},
        "passport": {"user": user}
    })
    .to_string()
}

// ---------------------------------------------------------------- the gateway

pub struct Gateway {
    pub http: u16,
    /// The TLS listener's port (dev certificate in `dir/certs/`), when started with one.
    pub https: Option<u16>,
    pub admin: u16,
    pub dir: tempfile::TempDir,
    child: Child,
    pub log: PathBuf,
}

/// The binary under test: this build's, or another one (e.g. a release build) via `GATEWAY_BIN`.
pub fn gateway_bin() -> String {
    std::env::var("GATEWAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_gateway").to_string())
}

impl Gateway {
    /// Starts the gateway with `body` (the [session] and [[route]] tables) plus a plain listener,
    /// an admin listener and a fresh signing key, and waits until it serves.
    pub async fn start(body: &str) -> Self {
        Self::start_with(body, "").await
    }

    /// As [`Gateway::start`], with lines added to the `[gateway]` section.
    pub async fn start_with(body: &str, gateway_section: &str) -> Self {
        Self::start_full(body, gateway_section, false).await
    }

    /// Like [`Gateway::start`], plus a TLS listener with a generated development certificate
    /// (CA in `dir/certs/ca.crt`).
    pub async fn start_tls(body: &str) -> Self {
        Self::start_full(body, "", true).await
    }

    /// As [`Gateway::start_tls`], with lines added to the `[gateway]` section.
    pub async fn start_tls_with(body: &str, gateway_section: &str) -> Self {
        Self::start_full(body, gateway_section, true).await
    }

    async fn start_full(body: &str, gateway_section: &str, tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::generate("test-1");
        std::fs::write(dir.path().join("signing.pem"), key.to_pkcs8_pem()).expect("key");
        let (http, admin) = (free_port(), free_port());
        let https = tls.then(free_port);
        let tls_listener = https.map_or(String::new(), |p| {
            format!(
                "[[listener]]\nlisten = \"127.0.0.1:{p}\"\n\
                 tls = {{ cert = \"certs/server.crt\", key = \"certs/server.key\", generate_dev_cert = true }}\n"
            )
        });
        let config = format!(
            r#"
[gateway]
id = "edge-gateway"
threads = 1
shutdown_grace_secs = 0
shutdown_timeout_secs = 1
{gateway_section}

[admin]
listen = "127.0.0.1:{admin}"

[[listener]]
listen = "127.0.0.1:{http}"

{tls_listener}

[[assertion.keys]]
kid = "test-1"
private_key = {{ file = "signing.pem" }}

{body}
"#
        );
        let cfg_path = dir.path().join("gateway.toml");
        std::fs::write(&cfg_path, config).expect("config");
        let log = dir.path().join("gateway.log");
        let child = Command::new(gateway_bin())
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", "info,pingora_proxy=off")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("gateway binary");
        let gw = Self {
            http,
            https,
            admin,
            dir,
            child,
            log,
        };
        // The admin listener can answer before a proxy listener is bound (each Pingora service
        // binds on its own runtime): wait for both, as `/readyz` does.
        let ports: Vec<u16> = std::iter::once(http).chain(https).collect();
        let ok = eventually(Duration::from_secs(20), || {
            let ports = ports.clone();
            async move {
                get(&format!("http://127.0.0.1:{admin}/healthz"), &[])
                    .await
                    .map(|r| r.0)
                    == Some(200)
                    && accepting(&ports).await
            }
        })
        .await;
        assert!(ok, "gateway did not start; log:\n{}", gw.log_text());
        gw
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until every route reports a healthy upstream (health checks ran once).
    pub async fn wait_ready(&self) {
        let url = self.admin_url("/readyz");
        let ok = eventually(Duration::from_secs(15), || {
            let url = url.clone();
            async move { get(&url, &[]).await.map(|r| r.0) == Some(200) }
        })
        .await;
        assert!(ok, "gateway never became ready: {:?}", get(&url, &[]).await);
    }

    /// Verifies an assertion against the gateway's published JWKS.
    pub async fn verify(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<Claims, identity_assertion::VerifyError> {
        let (_, _, body) = get(&self.admin_url("/.well-known/jwks.json"), &[])
            .await
            .expect("jwks");
        let keys = KeySet::from_jwks_json(&body).expect("valid jwks");
        AssertionVerifier::new("edge-gateway", audience, 5).verify(token, &keys)
    }

    /// Sum of a Prometheus counter/histogram-count line family matching `prefix`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, _, body) = get(&self.admin_url("/metrics"), &[])
            .await
            .expect("metrics");
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file the gateway was started with (tests rewrite it and reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// Sends a signal by name (`QUIT`, `TERM`, ...).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Starts the next gateway process on the same config with `--upgrade` (it waits for the
    /// listening sockets on `upgrade_sock`), logging to `log`.
    pub fn spawn_upgrade(&self, log: &Path) -> Child {
        Command::new(gateway_bin())
            .arg("--config")
            .arg(self.config_path())
            .arg("--upgrade")
            .env("RUST_LOG", "info,pingora_proxy=off")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("gateway binary")
    }

    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- a tiny HTTP client

/// Sends a request with exactly these headers (repeats allowed); returns status, headers, body.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, Vec<(String, String)>, String)> {
    let uri: hyper::Uri = url.parse().ok()?;
    let host = uri.authority()?.to_string();
    let stream = tokio::net::TcpStream::connect(&host).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).ok()?;
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
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, hdrs, String::from_utf8_lossy(&body).to_string()))
}

pub async fn get(
    url: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, Vec<(String, String)>, String)> {
    request("GET", url, headers).await
}

pub fn header<'a>(hdrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hdrs.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads from `s` until an HTTP head is complete (its blank line); returns what was read, which
/// may run past the head. `None` if the peer closes or fails first.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Sends `raw` bytes on a fresh connection and returns everything the server sends back until
/// it closes (or 10 s pass).
pub async fn raw_exchange(port: u16, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}
