//! Full-stack connection-storm bench (not a test). Run it with `integration/bench/storm-bench.sh`.
//!
//! The stack: redis-server, the Express app (`integration/express-service`: express-session,
//! connect-redis, Passport) that logs the N users in, the presence service in diff mode, and the
//! gateway with a TLS listener reading those express sessions from Redis. N clients, N distinct
//! users, connect over WebSocket with `STORM_CONCURRENCY` handshakes in flight, twice in one run:
//! straight to the presence service (each client carries an assertion signed here, as the
//! gateway would), and through the gateway (TLS, session cookie, lookup, assertion). Each path
//! gets a fresh presence service. For each it prints connects/s, connect latency (TCP connect to
//! the Socket.IO connect ack), when every client's online list was complete and correct, CPU
//! per connect of every process (from `/proc/<pid>/stat`, exited threads included), the
//! servers' resident memory before the storm and once every list is complete (per connect: what
//! each connected client costs after a storm, not on an idle ramp), and what the clients
//! received per connect (frames, WebSocket payload bytes).
//!
//! Then, once every list is complete, the change phase: `STORM_CHANGES` new users `probe-k`
//! come online one at a time, each socket opened straight to the presence service on both paths
//! (so a change starts the same way, and only the way back to the N clients differs). Each
//! change is timed from just before its socket opens until every client has read its join; it
//! prints p50/p99/max over all (client, change) pairs, the per-change p99s, the gateway path's
//! p99 over the direct one, and each process's CPU per change. Clients whose list never
//! completed are reported (users in their list, time since their last read).
//!
//! The client is one thread (a current-thread runtime) that parses frames by hand: no message
//! allocation, ids found with a `"`-split (memchr) over each payload, a bitset per client. Its
//! own CPU share is printed: below one core, it was waiting for the servers, not the other way
//! round. Each client keeps its own TLS session store, as a browser does: the first storm
//! through the gateway is of browsers that have never been there (every handshake full).
//!
//! Then the reconnect storm (`STORM_RECONNECT`, on by default): every client drops its
//! connection at once (a network blip), the presence service sees them all leave, and they all
//! come back through the same gateway with the TLS sessions of their first visit, as browsers
//! that reconnect do. It prints the same figures, and how many handshakes were resumed.
//!
//! Last, the floor (`STORM_FLOOR`, on by default): the first storm and its change phase again,
//! through a bare TLS relay instead of the gateway (this binary run with `--bare-tls-relay`, a
//! process of its own: TLS with the gateway's certificate and rustls provider, one upstream
//! connection, bytes copied both ways, nothing else; its clients carry assertions, as on the
//! direct path). No TLS edge can do less, so its column is what two TCP hops and TLS cost on
//! this machine, and the gateway's column beside it is how close the gateway gets. (Its CPU is
//! the floor, its memory is not: it keeps copy buffers per connection, which the gateway does
//! not.)
//!
//! Env: STORM_N (9000), STORM_CONCURRENCY (200), STORM_GW_THREADS (2), STORM_TIMEOUT_SECS (180),
//! STORM_CHANGES (10; 0 skips the change phase), STORM_RECONNECT (1; 0 skips the reconnect storm),
//! STORM_DIRECT (1; 0 skips the direct run, e.g. to profile the gateway alone), STORM_FLOOR (1;
//! 0 skips the bare relay), GATEWAY_BIN,
//! PRESENCE_BIN, NODE (node), REDIS_SERVER (redis-server), STORM_LOG (the gateway's RUST_LOG,
//! default "info": one access line per handshake, as deployed).

mod support;

use support::{env, free_port, rss_kib};

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use identity_assertion::{AssertionSigner, Identity, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "storm-bench-secret";

/// A child process killed when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        Ok(Self { child })
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) of a process so far, exited threads included.
fn cpu_of(pid: u32, tick: f64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces), from field 3 (state) on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / tick)
}

async fn wait_tcp(port: u16, what: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{what} did not listen on {port}")
}

/// Waits until the presence service counts `want` connected sockets (its `/metrics`).
async fn wait_sockets(port: u16, want: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        let mut s = http_conn(port).await?;
        let (_, _, body) = http(&mut s, "GET", port, "/metrics", "").await?;
        last = String::from_utf8_lossy(&body).lines().find_map(|l| {
            l.strip_prefix("presence_connected_sockets ")?
                .trim()
                .parse::<u64>()
                .ok()
        });
        if last == Some(want) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the presence service still counts {last:?} sockets, not {want}")
}

/// One HTTP/1.1 request on a fresh or reused connection: status, headers, body.
async fn http(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    port: u16,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, hyper::HeaderMap, Bytes)> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

async fn http_conn(
    port: u16,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Logs users `u0..uN` in through the Express app; returns each one's `connect.sid` cookie.
async fn login_all(port: u16, n: usize) -> anyhow::Result<Vec<String>> {
    let workers = 32.min(n.max(1));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = http_conn(port).await?;
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let body = format!(r#"{{"username":"u{i}","password":"pw"}}"#);
                let (status, headers, _) =
                    http(&mut sender, "POST", port, "/api/auth/login", &body).await?;
                anyhow::ensure!(status == 200, "login of u{i}: {status}");
                let cookie = headers
                    .get_all("set-cookie")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find(|v| v.starts_with("connect.sid="))
                    .and_then(|v| v.split(';').next())
                    .ok_or_else(|| anyhow::anyhow!("login of u{i}: no connect.sid"))?
                    .to_string();
                out.push((i, cookie));
            }
            anyhow::Ok(out)
        }));
    }
    let mut cookies = vec![String::new(); n];
    for t in tasks {
        for (i, c) in t.await?? {
            cookies[i] = c;
        }
    }
    Ok(cookies)
}

// ---------------------------------------------------------------- the client

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Io for T {}

type Tls = Option<(
    tokio_rustls::TlsConnector,
    rustls::pki_types::ServerName<'static>,
)>;

/// What the N client tasks share with the driver.
struct Shared {
    n: usize,
    start: Instant,
    /// Per client: ns after `start` of its connect ack, and of its list becoming complete.
    connect_latency: Vec<AtomicU64>,
    connected_at: Vec<AtomicU64>,
    complete_at: Vec<AtomicU64>,
    completed: AtomicUsize,
    failed: AtomicUsize,
    frames: AtomicU64,
    bytes: AtomicU64,
    /// TLS handshakes that resumed an earlier session instead of a full handshake.
    resumed: AtomicUsize,
    /// Ids that are not one of the N users, seen in any list (a correct list has none).
    strangers: AtomicU64,
    /// Per client: users in its list, and ns after `start` of its last read (for a report on
    /// the clients whose list never completed: a stalled stream or a missed update?).
    list_count: Vec<AtomicUsize>,
    last_read_at: Vec<AtomicU64>,
    done: tokio::sync::Notify,
    /// The change phase: the probe the clients are waiting for (index into `probe_names`, or
    /// `NO_PROBE`), per client ns after `start` at which its frame was read (0 = not yet).
    probe: AtomicUsize,
    probe_names: Vec<String>,
    arrived: Vec<AtomicU64>,
    arrived_count: AtomicUsize,
    all_arrived: tokio::sync::Notify,
}

const NO_PROBE: usize = usize::MAX;

impl Shared {
    fn finished(&self) -> bool {
        self.completed.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) >= self.n
    }

    /// Records when client `i` first read the current probe's join.
    fn note_probe(&self, i: usize, text: &str) {
        let k = self.probe.load(Ordering::Acquire);
        if k == NO_PROBE || self.arrived[i].load(Ordering::Relaxed) != 0 {
            return;
        }
        if text.contains(self.probe_names[k].as_str()) {
            let now = self.start.elapsed().as_nanos() as u64;
            self.arrived[i].store(now, Ordering::Relaxed);
            if self.arrived_count.fetch_add(1, Ordering::AcqRel) + 1 >= self.n {
                self.all_arrived.notify_one();
            }
        }
    }
}

/// One masked client text frame (RFC 6455 5.3: clients mask; the key need not be secret here).
fn client_text(payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x17, 0xc3, 0x88];
    let mut f = Vec::with_capacity(payload.len() + 6);
    f.push(0x81);
    f.push(0x80 | payload.len() as u8); // only the tiny Engine.IO packets below
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A client's view of who is online.
struct List {
    bits: Vec<u64>,
    count: usize,
}

impl List {
    fn new(n: usize) -> Self {
        Self {
            bits: vec![0; n.div_ceil(64)],
            count: 0,
        }
    }
    fn clear(&mut self) {
        self.bits.iter_mut().for_each(|w| *w = 0);
        self.count = 0;
    }
    fn set(&mut self, i: usize, on: bool) {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        let was = self.bits[w] & b != 0;
        if on && !was {
            self.bits[w] |= b;
            self.count += 1;
        } else if !on && was {
            self.bits[w] &= !b;
            self.count -= 1;
        }
    }
    /// Applies every user id (`"u<i>"`, as `id` or as `name`, both idempotent) in `region`.
    fn apply(&mut self, region: &str, on: bool, n: usize, shared: &Shared) {
        for piece in region.split('"') {
            let Some(digits) = piece.strip_prefix('u') else {
                continue;
            };
            match digits.parse::<usize>() {
                Ok(i) if i < n => self.set(i, on),
                Ok(_) => {
                    shared.strangers.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
    }
}

/// Updates `list` from one Socket.IO event; the diff-mode and snapshot events only.
fn on_event(text: &str, list: &mut List, n: usize, shared: &Shared) {
    if let Some(rest) = text.strip_prefix("42[\"online_users\"") {
        list.clear();
        list.apply(rest, true, n, shared);
    } else if let Some(rest) = text.strip_prefix("42[\"presence_diff\"") {
        let joins = rest.find("\"joins\":[");
        let leaves = rest.find("\"leaves\":[");
        let end = rest.len();
        let region = |from: Option<usize>, other: Option<usize>| {
            from.map(|s| {
                let e = other.filter(|o| *o > s).unwrap_or(end);
                &rest[s..e]
            })
        };
        if let Some(r) = region(joins, leaves) {
            list.apply(r, true, n, shared);
        }
        if let Some(r) = region(leaves, joins) {
            list.apply(r, false, n, shared);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn client(
    i: usize,
    port: u16,
    tls: Tls,
    header: String,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let t0 = shared.start.elapsed();
    let mut permit = Some(permit);
    let run = async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let mut io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some((c, name)) => {
                let tls = c.connect(name, tcp).await?;
                if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    shared.resumed.fetch_add(1, Ordering::Relaxed);
                }
                Box::new(tls)
            }
        };
        let req = format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: localhost:{port}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{header}\r\n\r\n"
        );
        io.write_all(req.as_bytes()).await?;
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if io.read_buf(&mut buf).await? == 0 || buf.len() > 16384 {
                anyhow::bail!("closed before the 101");
            }
        };
        anyhow::ensure!(
            buf.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&buf[..head_end.min(80)])
        );
        buf.drain(..head_end);
        let n = shared.n;
        let mut list = List::new(n);
        let mut complete = false;
        loop {
            // Every complete frame in the buffer.
            let mut at = 0;
            loop {
                let b = &buf[at..];
                if b.len() < 2 {
                    break;
                }
                let (len, hdr) = match b[1] & 0x7f {
                    126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                    127 if b.len() >= 10 => (
                        u64::from_be_bytes(b[2..10].try_into().unwrap_or_default()) as usize,
                        10,
                    ),
                    126 | 127 => break,
                    l => (l as usize, 2),
                };
                if b.len() < hdr + len {
                    break;
                }
                let opcode = b[0] & 0x0f;
                let payload = &b[hdr..hdr + len];
                at += hdr + len;
                shared.frames.fetch_add(1, Ordering::Relaxed);
                shared.bytes.fetch_add(len as u64, Ordering::Relaxed);
                match opcode {
                    1 => {
                        let text = std::str::from_utf8(payload).unwrap_or("");
                        if text.starts_with('0') {
                            io.write_all(&client_text(b"40")).await?;
                        } else if text.starts_with("40") {
                            let now = shared.start.elapsed();
                            shared.connect_latency[i]
                                .store((now - t0).as_nanos() as u64, Ordering::Relaxed);
                            shared.connected_at[i].store(now.as_nanos() as u64, Ordering::Relaxed);
                            permit = None;
                        } else if text == "2" {
                            io.write_all(&client_text(b"3")).await?;
                        } else if text.starts_with("44") {
                            anyhow::bail!("refused: {text}");
                        } else {
                            shared.note_probe(i, text);
                            on_event(text, &mut list, n, &shared);
                        }
                    }
                    8 => anyhow::bail!("closed by the server"),
                    _ => {}
                }
            }
            buf.drain(..at);
            shared.list_count[i].store(list.count, Ordering::Relaxed);
            shared.last_read_at[i]
                .store(shared.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if !complete && list.count == n {
                complete = true;
                shared.complete_at[i]
                    .store(shared.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                shared.completed.fetch_add(1, Ordering::Relaxed);
                if shared.finished() {
                    shared.done.notify_one();
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            tokio::select! {
                r = io.read_buf(&mut buf) => if r? == 0 { anyhow::bail!("closed") },
                _ = stop.changed() => return Ok(()),
            }
        }
    };
    if let Err(e) = run.await {
        drop(permit);
        if !*stop.borrow() {
            let failed = shared.failed.fetch_add(1, Ordering::Relaxed);
            if failed < 5 {
                eprintln!("client {i}: {e}");
            }
            if shared.finished() {
                shared.done.notify_one();
            }
        }
    }
}

struct Figures {
    label: &'static str,
    n: usize,
    connected: usize,
    completed: usize,
    failed: usize,
    strangers: u64,
    ramp: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    all_complete: Option<Duration>,
    after_last_connect: Option<Duration>,
    frames: u64,
    bytes: u64,
    resumed: usize,
    tls: bool,
    cpu: Vec<(&'static str, Duration)>,
    /// Per process: RSS (KiB) when the storm began, and once every list was complete.
    rss: Vec<(&'static str, u64, u64)>,
    client_cpu: Duration,
    wall: Duration,
    changes: Option<Changes>,
}

/// Where the change phase's probes connect: straight to the presence service on both paths, so
/// a change starts the same way and only the way back to the N clients differs.
struct Probes {
    count: usize,
    presence_port: u16,
    signer: AssertionSigner,
}

/// The change phase once every list was complete: new users `probe-k` come online one at a
/// time, each timed from just before its socket opens until every client has read its join.
struct Changes {
    count: usize,
    /// Every (client, change) latency, sorted.
    lat: Vec<Duration>,
    /// Per change, the p99 over the clients, sorted.
    p99s: Vec<Duration>,
    /// The fewest clients any change reached.
    min_reached: usize,
    cpu: Vec<(&'static str, Duration)>,
    client_cpu: Duration,
}

async fn run_changes(
    shared: &Shared,
    probes: &Probes,
    procs: &[(&'static str, u32)],
    tick: f64,
) -> anyhow::Result<Changes> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let n = shared.n;
    let self_pid = std::process::id();
    let mut lat = Vec::with_capacity(n * probes.count);
    let mut p99s = Vec::new();
    let mut min_reached = n;
    let mut cpu: Vec<(&'static str, Duration)> =
        procs.iter().map(|(p, _)| (*p, Duration::ZERO)).collect();
    let mut client_cpu = Duration::ZERO;
    let mut opened = Vec::new();
    for k in 0..probes.count {
        for a in &shared.arrived {
            a.store(0, Ordering::Relaxed);
        }
        shared.arrived_count.store(0, Ordering::Relaxed);
        shared.probe.store(k, Ordering::Release);
        let name = format!("probe-{k}");
        let token = probes.signer.sign(
            &Identity {
                sub: name.clone(),
                name: None,
                sid: name.clone(),
            },
            "presence-service",
        )?;
        let mut req = format!(
            "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
            probes.presence_port
        )
        .into_client_request()?;
        req.headers_mut()
            .insert("x-identity-assertion", token.parse()?);
        let cpu0: Vec<Duration> = procs.iter().map(|(_, p)| cpu_of(*p, tick)).collect();
        let client0 = cpu_of(self_pid, tick);
        let all = shared.all_arrived.notified();
        let change_at = shared.start.elapsed();
        let (mut probe, _) = tokio_tungstenite::connect_async(req).await?;
        let _ = probe.next().await; // the Engine.IO open packet
        probe.send(Message::text("40")).await?;
        if shared.arrived_count.load(Ordering::Acquire) < n {
            let _ = tokio::time::timeout(Duration::from_secs(20), all).await;
        }
        for ((c, (_, p)), c0) in cpu.iter_mut().zip(procs).zip(cpu0) {
            c.1 += cpu_of(*p, tick).saturating_sub(c0);
        }
        client_cpu += cpu_of(self_pid, tick).saturating_sub(client0);
        let mut these: Vec<Duration> = shared
            .arrived
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|&a| a != 0)
            .map(|a| Duration::from_nanos(a).saturating_sub(change_at))
            .collect();
        these.sort();
        min_reached = min_reached.min(these.len());
        p99s.push(percentile(&these, 0.99));
        lat.extend(these);
        shared.probe.store(NO_PROBE, Ordering::Release);
        // Stays online, so the next change is another user; its snapshot pages settle first.
        opened.push(probe);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    lat.sort();
    p99s.sort();
    Ok(Changes {
        count: probes.count,
        lat,
        p99s,
        min_reached,
        cpu,
        client_cpu,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

/// One storm: N clients, `concurrency` handshakes in flight; `headers[i]` authenticates client i.
/// What every storm of one run shares.
struct Setup {
    concurrency: usize,
    timeout: Duration,
    /// Clock ticks per second, for `/proc/<pid>/stat`.
    tick: f64,
    probes: Probes,
}

/// One storm: `headers.len()` clients connect to `port` (client `i` over `tls[i]`, plain when
/// `tls` is empty); with `with_changes`, the change phase follows once every list is complete.
async fn storm(
    setup: &Setup,
    label: &'static str,
    port: u16,
    tls: &[Tls],
    headers: Vec<String>,
    procs: &[(&'static str, u32)],
    with_changes: bool,
) -> Figures {
    let Setup {
        concurrency,
        timeout,
        tick,
        ref probes,
    } = *setup;
    let n = headers.len();
    let shared = Arc::new(Shared {
        n,
        start: Instant::now(),
        connect_latency: (0..n).map(|_| AtomicU64::new(0)).collect(),
        connected_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
        complete_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
        completed: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        frames: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        resumed: AtomicUsize::new(0),
        strangers: AtomicU64::new(0),
        list_count: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        last_read_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
        done: tokio::sync::Notify::new(),
        probe: AtomicUsize::new(NO_PROBE),
        probe_names: (0..probes.count)
            .map(|k| format!("\"probe-{k}\""))
            .collect(),
        arrived: (0..n).map(|_| AtomicU64::new(0)).collect(),
        arrived_count: AtomicUsize::new(0),
        all_arrived: tokio::sync::Notify::new(),
    });
    let self_pid = std::process::id();
    let cpu0: Vec<Duration> = procs.iter().map(|(_, p)| cpu_of(*p, tick)).collect();
    let rss0: Vec<u64> = procs.iter().map(|(_, p)| rss_kib(*p)).collect();
    let client0 = cpu_of(self_pid, tick);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let deadline = started + timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, header) in headers.into_iter().enumerate() {
        let Ok(Ok(permit)) =
            tokio::time::timeout_at(deadline.into(), slots.clone().acquire_owned()).await
        else {
            break;
        };
        tasks.spawn_local(client(
            i,
            port,
            tls.get(i).cloned().flatten(),
            header,
            shared.clone(),
            permit,
            stop_rx.clone(),
        ));
    }
    while !shared.finished() && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(200), shared.done.notified()).await;
    }
    let wall = started.elapsed();
    let rss: Vec<(&'static str, u64, u64)> = procs
        .iter()
        .zip(rss0)
        .map(|((name, p), r0)| (*name, r0, rss_kib(*p)))
        .collect();
    let cpu: Vec<(&'static str, Duration)> = procs
        .iter()
        .zip(cpu0)
        .map(|((name, p), c0)| (*name, cpu_of(*p, tick).saturating_sub(c0)))
        .collect();
    let client_cpu = cpu_of(self_pid, tick).saturating_sub(client0);
    let incomplete: Vec<usize> = (0..n)
        .filter(|&i| {
            shared.complete_at[i].load(Ordering::Relaxed) == 0
                && shared.connected_at[i].load(Ordering::Relaxed) != 0
        })
        .collect();
    for &i in incomplete.iter().take(5) {
        let last = Duration::from_nanos(shared.last_read_at[i].load(Ordering::Relaxed));
        eprintln!(
            "{label}: client {i} connected but its list has {} of {n} users; its last read was {:.1} s before the end",
            shared.list_count[i].load(Ordering::Relaxed),
            shared.start.elapsed().saturating_sub(last).as_secs_f64()
        );
    }
    let all_complete_now = shared.completed.load(Ordering::Relaxed) == n;
    let changes = if probes.count > 0 && all_complete_now && with_changes {
        // A marker to attach a profiler to the servers for just this phase.
        let pids: Vec<String> = procs.iter().map(|(p, pid)| format!("{p}={pid}")).collect();
        eprintln!("{label}: change phase starts ({})", pids.join(" "));
        match run_changes(&shared, probes, procs, tick).await {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("{label}: the change phase failed: {e}");
                None
            }
        }
    } else {
        None
    };
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}

    let load = |v: &[AtomicU64]| -> Vec<u64> {
        v.iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|&x| x != 0)
            .collect()
    };
    let mut lat: Vec<Duration> = load(&shared.connect_latency)
        .into_iter()
        .map(Duration::from_nanos)
        .collect();
    lat.sort();
    let pct = |p: f64| percentile(&lat, p);
    let connected = load(&shared.connected_at);
    let last_connect = connected.iter().copied().max().map(Duration::from_nanos);
    let complete = load(&shared.complete_at);
    let completed = complete.len();
    let all_complete = (completed == n)
        .then(|| complete.iter().copied().max().map(Duration::from_nanos))
        .flatten();
    Figures {
        label,
        n,
        connected: connected.len(),
        completed,
        failed: shared.failed.load(Ordering::Relaxed),
        strangers: shared.strangers.load(Ordering::Relaxed),
        ramp: last_connect.unwrap_or_default(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: lat.last().copied().unwrap_or_default(),
        all_complete,
        after_last_connect: all_complete
            .zip(last_connect)
            .map(|(a, l)| a.saturating_sub(l)),
        frames: shared.frames.load(Ordering::Relaxed),
        bytes: shared.bytes.load(Ordering::Relaxed),
        resumed: shared.resumed.load(Ordering::Relaxed),
        tls: !tls.is_empty(),
        cpu,
        rss,
        client_cpu,
        wall,
        changes,
    }
}

/// `n` browsers that trust the gateway's development CA (written under `dir` when the gateway
/// started), each with its own TLS session store, empty: their first handshake is a full one.
fn browsers(dir: &std::path::Path, n: usize) -> anyhow::Result<Vec<Tls>> {
    use rustls::pki_types::pem::PemObject;
    let ca = rustls::pki_types::CertificateDer::from_pem_file(dir.join("certs/ca.crt"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca)?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
    Ok((0..n)
        .map(|_| {
            let mut c = config.clone();
            c.resumption = rustls::client::Resumption::in_memory_sessions(4);
            Some((tokio_rustls::TlsConnector::from(Arc::new(c)), name.clone()))
        })
        .collect())
}

fn start_presence(bin: &str, dir: &std::path::Path, port: u16, tag: &str) -> anyhow::Result<Proc> {
    let cfg = dir.join("presence.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[[trust.public_keys]]\nkid = \"storm\"\n\
             pem = \"storm.pub.pem\"\n[presence]\nmode = \"diff\"\nmax_sockets_per_user = 100000\n"
        ),
    )?;
    Proc::spawn(
        "presence",
        Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                dir.join(format!("presence-{tag}.log")),
            )?),
    )
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--bare-tls-relay") {
        return bare_tls_relay(&args[1..]);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run())
}

async fn run() -> anyhow::Result<()> {
    let n = env("STORM_N", 9000);
    let concurrency = env("STORM_CONCURRENCY", 200);
    let gw_threads = env("STORM_GW_THREADS", 2);
    let timeout = Duration::from_secs(env("STORM_TIMEOUT_SECS", 180) as u64);
    let gateway_bin = std::env::var("GATEWAY_BIN").unwrap_or("target/release/gateway".into());
    let presence_bin =
        std::env::var("PRESENCE_BIN").unwrap_or("target/release/presence-service".into());
    let node = std::env::var("NODE").unwrap_or("node".into());
    let redis_bin = std::env::var("REDIS_SERVER").unwrap_or("redis-server".into());
    let tick: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);

    let dir = tempfile::tempdir()?;
    let key = SigningKey::generate("storm");
    std::fs::write(dir.path().join("signing.pem"), key.to_pkcs8_pem())?;
    std::fs::write(dir.path().join("storm.pub.pem"), key.public_pem())?;
    let (redis_port, express_port, presence_port) = (free_port(), free_port(), free_port());
    let (https_port, admin_port) = (free_port(), free_port());

    let redis = Proc::spawn(
        "redis",
        Command::new(&redis_bin)
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--maxclients", "1000"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null()),
    )?;
    wait_tcp(redis_port, "redis-server").await?;
    let _express = Proc::spawn(
        "express",
        Command::new(&node)
            .arg("integration/express-service/server.js")
            .env("PORT", express_port.to_string())
            .env("HOST", "127.0.0.1")
            .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
            .env("SESSION_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("express.log"))?),
    )?;
    wait_tcp(express_port, "express-service").await?;
    let t = Instant::now();
    let cookies = login_all(express_port, n).await?;
    eprintln!(
        "logged {n} users in through the Express app in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "storm bench: N = {n} distinct users, {concurrency} handshakes in flight, websocket, diff mode; \
         {} cores, load average {} before the first run; client, servers and anything else on \
         this machine share the cores",
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );

    let signer = AssertionSigner::new("edge-gateway", 3600, vec![key.clone()])?;
    let setup = Setup {
        concurrency,
        timeout,
        tick,
        probes: Probes {
            count: env("STORM_CHANGES", 10),
            presence_port,
            signer,
        },
    };

    // Each client's assertion, signed here as the gateway would: the direct and the bare-relay
    // runs send it themselves.
    let assertions = (0..n)
        .map(|i| {
            let token = setup.probes.signer.sign(
                &Identity {
                    sub: format!("u{i}"),
                    name: None,
                    sid: format!("s{i}"),
                },
                "presence-service",
            )?;
            anyhow::Ok(format!("x-identity-assertion: {token}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    // 1. Straight to the presence service.
    let mut runs = Vec::new();
    if env("STORM_DIRECT", 1) == 1 {
        let presence = start_presence(&presence_bin, dir.path(), presence_port, "direct")?;
        wait_tcp(presence_port, "presence-service").await?;
        let procs = [("presence", presence.pid())];
        let f = storm(
            &setup,
            "direct",
            presence_port,
            &[],
            assertions.clone(),
            &procs,
            true,
        )
        .await;
        drop(presence);
        runs.push(f);
    }

    // 2. Through the gateway: TLS, the express session looked up in Redis, an assertion.
    {
        let presence = start_presence(&presence_bin, dir.path(), presence_port, "gateway")?;
        wait_tcp(presence_port, "presence-service").await?;
        let cfg = dir.path().join("gateway.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"[gateway]
threads = {gw_threads}
shutdown_grace_secs = 0
shutdown_timeout_secs = 1

[admin]
listen = "127.0.0.1:{admin_port}"

[[listener]]
listen = "127.0.0.1:{https_port}"
tls = {{ cert = "certs/server.crt", key = "certs/server.key", generate_dev_cert = true }}

[[assertion.keys]]
kid = "storm"
private_key = {{ file = "signing.pem" }}

[session]
flavour = "express"
secrets = [{{ value = "{SECRET}" }}]
store = {{ kind = "redis", url = "redis://127.0.0.1:{redis_port}" }}

[[route]]
name = "presence"
path_prefix = "/socket.io/"
upstreams = ["127.0.0.1:{presence_port}"]
auth = "socketio-handshake"
audience = "presence-service"
"#
            ),
        )?;
        let gateway = Proc::spawn(
            "gateway",
            Command::new(&gateway_bin)
                .arg("--config")
                .arg(&cfg)
                .env(
                    "RUST_LOG",
                    std::env::var("STORM_LOG").unwrap_or("info".into()),
                )
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("gateway.log"))?),
        )?;
        let mut ready = false;
        for _ in 0..300 {
            if let Ok(mut s) = http_conn(admin_port).await {
                if let Ok((200, _, _)) = http(&mut s, "GET", admin_port, "/readyz", "").await {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::ensure!(ready, "the gateway never became ready (see its log)");
        let tls = browsers(dir.path(), n)?;
        let headers: Vec<String> = cookies.iter().map(|c| format!("cookie: {c}")).collect();
        let procs = [
            ("presence", presence.pid()),
            ("gateway", gateway.pid()),
            ("redis", redis.pid()),
        ];
        let f = storm(
            &setup,
            "through the gateway (TLS)",
            https_port,
            &tls,
            headers.clone(),
            &procs,
            true,
        )
        .await;
        runs.push(f);
        // 3. Everyone drops at once and comes back through the same gateway, resuming TLS.
        if env("STORM_RECONNECT", 1) == 1 {
            wait_sockets(presence_port, 0).await?;
            let f = storm(
                &setup,
                "gateway, reconnecting",
                https_port,
                &tls,
                headers,
                &procs,
                false,
            )
            .await;
            runs.push(f);
        }
        let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
        let errors = log.lines().filter(|l| l.contains("ERROR")).count();
        if errors > 0 {
            eprintln!("the gateway logged {errors} ERROR lines");
        }
        drop(gateway);
        drop(presence);
    }

    // 4. The floor of the TLS hop: the same storm through the least a TLS edge must do.
    if env("STORM_FLOOR", 1) == 1 {
        let presence = start_presence(&presence_bin, dir.path(), presence_port, "floor")?;
        wait_tcp(presence_port, "presence-service").await?;
        let relay_port = free_port();
        let relay = Proc::spawn(
            "relay",
            Command::new(std::env::current_exe()?)
                .arg("--bare-tls-relay")
                .args([relay_port.to_string(), presence_port.to_string()])
                .arg(dir.path().join("certs/server.crt"))
                .arg(dir.path().join("certs/server.key"))
                .arg(gw_threads.to_string())
                .stdout(Stdio::null()),
        )?;
        wait_tcp(relay_port, "the bare TLS relay").await?;
        let procs = [("presence", presence.pid()), ("relay", relay.pid())];
        let f = storm(
            &setup,
            "bare TLS relay (floor)",
            relay_port,
            &browsers(dir.path(), n)?,
            assertions,
            &procs,
            true,
        )
        .await;
        runs.push(f);
    }
    print_side_by_side(&runs);
    Ok(())
}

/// `storm_bench --bare-tls-relay <listen port> <upstream port> <cert> <key> <threads>`: the
/// least any TLS edge in front of the presence service must do, as a separate process whose
/// CPU the bench measures like the gateway's: accept TLS with the gateway's certificate and
/// rustls provider, open one upstream connection, and copy bytes both ways (no HTTP, no cookie,
/// no store lookup, no assertion: its clients bring one, as on the direct path). Its figures are
/// the floor of the TLS hop on this machine; the gateway's, beside them, are how close it gets.
fn bare_tls_relay(args: &[String]) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let [listen, upstream, cert, key, threads] = args else {
        anyhow::bail!(
            "usage: --bare-tls-relay <listen port> <upstream port> <cert> <key> <threads>"
        );
    };
    let (listen, upstream): (u16, u16) = (listen.parse()?, upstream.parse()?);
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.parse()?)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await?;
        loop {
            let (tcp, _) = listener.accept().await?;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                tcp.set_nodelay(true).ok();
                let Ok(mut client) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                up.set_nodelay(true).ok();
                // Reads as large as the gateway's relay gathers, so both write the same records.
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut client,
                    &mut up,
                    16 << 10,
                    64 << 10,
                )
                .await;
            });
        }
    })
}

fn print_side_by_side(runs: &[Figures]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let row = |name: &str, cells: Vec<String>| {
        print!("  {name:<44}");
        for c in cells {
            print!("{c:>28}");
        }
        println!();
    };
    row("", runs.iter().map(|r| r.label.to_string()).collect());
    row(
        "connected / lists complete / failed",
        runs.iter()
            .map(|r| {
                format!(
                    "{}/{} {}/{} {}",
                    r.connected, r.n, r.completed, r.n, r.failed
                )
            })
            .collect(),
    );
    row(
        "connects/s (first connect to last ack)",
        runs.iter()
            .map(|r| format!("{:.0}", r.connected as f64 / r.ramp.as_secs_f64().max(1e-9)))
            .collect(),
    );
    row(
        "connect p50 / p99 / max (ms)",
        runs.iter()
            .map(|r| format!("{:.0} / {:.0} / {:.0}", ms(r.p50), ms(r.p99), ms(r.max)))
            .collect(),
    );
    row(
        "every list complete and correct after (s)",
        runs.iter()
            .map(|r| match r.all_complete {
                Some(d) => format!("{:.2}", d.as_secs_f64()),
                None => format!("never ({} s run)", r.wall.as_secs()),
            })
            .collect(),
    );
    row(
        "  of which after the last connect (s)",
        runs.iter()
            .map(|r| {
                r.after_last_connect
                    .map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64()))
            })
            .collect(),
    );
    for name in ["presence", "gateway", "relay", "redis"] {
        row(
            &format!("{name} CPU per connect (ms)"),
            runs.iter()
                .map(|r| {
                    r.cpu
                        .iter()
                        .find(|(p, _)| *p == name)
                        .map_or("-".into(), |(_, c)| format!("{:.2}", ms(*c) / r.n as f64))
                })
                .collect(),
        );
    }
    for name in ["presence", "gateway", "relay"] {
        row(
            &format!("{name} RSS before -> after (MiB), per connect (KiB)"),
            runs.iter()
                .map(|r| {
                    r.rss.iter().find(|(p, _, _)| *p == name).map_or(
                        "-".into(),
                        |(_, before, after)| {
                            format!(
                                "{} -> {}, {:.1}",
                                before / 1024,
                                after / 1024,
                                after.saturating_sub(*before) as f64 / r.n as f64
                            )
                        },
                    )
                })
                .collect(),
        );
    }
    row(
        "bench client CPU per connect (ms)",
        runs.iter()
            .map(|r| format!("{:.2}", ms(r.client_cpu) / r.n as f64))
            .collect(),
    );
    row(
        "bench client's share of one core (%)",
        runs.iter()
            .map(|r| {
                format!(
                    "{:.0}",
                    100.0 * r.client_cpu.as_secs_f64() / r.wall.as_secs_f64().max(1e-9)
                )
            })
            .collect(),
    );
    row(
        "all processes' share of the cores (%)",
        runs.iter()
            .map(|r| {
                let total: f64 = r.cpu.iter().map(|(_, c)| c.as_secs_f64()).sum::<f64>()
                    + r.client_cpu.as_secs_f64();
                let cores = std::thread::available_parallelism().map_or(1, |p| p.get()) as f64;
                format!(
                    "{:.0}",
                    100.0 * total / (r.wall.as_secs_f64().max(1e-9) * cores)
                )
            })
            .collect(),
    );
    row(
        "TLS handshakes resumed",
        runs.iter()
            .map(|r| {
                if r.tls {
                    format!("{}/{}", r.resumed, r.connected)
                } else {
                    "-".into()
                }
            })
            .collect(),
    );
    row(
        "frames received per connect",
        runs.iter()
            .map(|r| format!("{:.0}", r.frames as f64 / r.n as f64))
            .collect(),
    );
    row(
        "WebSocket payload bytes per connect",
        runs.iter()
            .map(|r| format!("{:.0}", r.bytes as f64 / r.n as f64))
            .collect(),
    );
    if runs.iter().any(|r| r.changes.is_some()) {
        let cell =
            |r: &Figures, f: &dyn Fn(&Changes) -> String| r.changes.as_ref().map_or("-".into(), f);
        println!(
            "  then, with every list complete, presence changes (a new user online; its socket straight to presence on both paths):"
        );
        row(
            "changes, fewest clients any reached",
            runs.iter()
                .map(|r| cell(r, &|c| format!("{}, {}/{}", c.count, c.min_reached, r.n)))
                .collect(),
        );
        row(
            "a change to every client p50 / p99 / max (ms)",
            runs.iter()
                .map(|r| {
                    cell(r, &|c| {
                        format!(
                            "{:.0} / {:.0} / {:.0}",
                            ms(percentile(&c.lat, 0.5)),
                            ms(percentile(&c.lat, 0.99)),
                            ms(c.lat.last().copied().unwrap_or_default())
                        )
                    })
                })
                .collect(),
        );
        row(
            "  per-change p99: best / median / worst (ms)",
            runs.iter()
                .map(|r| {
                    cell(r, &|c| {
                        format!(
                            "{:.0} / {:.0} / {:.0}",
                            ms(c.p99s.first().copied().unwrap_or_default()),
                            ms(percentile(&c.p99s, 0.5)),
                            ms(c.p99s.last().copied().unwrap_or_default())
                        )
                    })
                })
                .collect(),
        );
        let direct_p99 = runs
            .iter()
            .find(|r| r.label == "direct")
            .and_then(|r| r.changes.as_ref())
            .map(|c| percentile(&c.lat, 0.99));
        row(
            "  p99 / the direct p99 (target <= 1.5)",
            runs.iter()
                .map(|r| {
                    cell(r, &|c| {
                        direct_p99.map_or("-".into(), |d| {
                            format!("{:.2}", ms(percentile(&c.lat, 0.99)) / ms(d).max(1e-9))
                        })
                    })
                })
                .collect(),
        );
        for name in ["presence", "gateway", "relay"] {
            row(
                &format!("{name} CPU per change (ms)"),
                runs.iter()
                    .map(|r| {
                        cell(r, &|c| {
                            c.cpu
                                .iter()
                                .find(|(p, _)| *p == name)
                                .map_or("-".into(), |(_, t)| {
                                    format!("{:.1}", ms(*t) / c.count.max(1) as f64)
                                })
                        })
                    })
                    .collect(),
            );
        }
        row(
            "bench client CPU per change (ms)",
            runs.iter()
                .map(|r| {
                    cell(r, &|c| {
                        format!("{:.1}", ms(c.client_cpu) / c.count.max(1) as f64)
                    })
                })
                .collect(),
        );
    }
    if runs.iter().any(|r| r.strangers > 0) {
        row(
            "WARNING: ids not among the N users",
            runs.iter().map(|r| r.strangers.to_string()).collect(),
        );
    }
}
