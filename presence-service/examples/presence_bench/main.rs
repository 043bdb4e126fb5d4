//! Presence bench (not a test): N idle websocket clients, then a few presence changes.
//! Prints connect rate, time for a change to reach all N clients (p50/p99/max, and the server's
//! own CPU time for it), bytes sent per change, and server RSS per idle socket (right after the
//! ramp, in a steady state after a settle period, and the marginal cost between N/9 and N
//! sockets). Run through integration/bench/presence/run.sh.
//!
//! A change's arrival is timed twice: when this process read it, and when the server's write
//! reached the client's socket (the kernel's receive timestamp). This process shares the cores
//! with the server; the second figure shows how much of the first is this process being late.
//!
//! Usage: presence_bench <presence-service binary> <mode: diff|compat> <N> [users]
//!   users: how many distinct users the N sockets belong to (default N). With few users the
//!   online list stays small, which isolates what a socket itself costs.
//! Env: SERVER_CPUS=<list> runs the server under `taskset -c <list>` (pin the bench itself with
//!   taskset in run.sh), CHANGES=<k> presence changes to time (default 5), PAGE_SIZE=<users>
//!   the server's `presence.snapshot_page_size` (default: the server's default).
//!
//! The client is built to take as little of the shared cores as it can: during the ramp, one
//! small read buffer per socket (tungstenite's default 128 KiB buffer is zero-filled on every
//! read, which alone costs a second of CPU per broadcast to 9000 sockets); during the timed
//! changes, one thread polling all sockets through one epoll set (`reader`), arrival times
//! written to a shared array, no channel per message.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use identity_assertion::{AssertionSigner, Identity, SigningKey};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

mod reader;

/// Resident set of a process, in KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time used so far by a process, all its threads counted, including threads that have
/// already exited (the server's broadcasts run part of their fan-out on short-lived threads):
/// the process's CPU-time clock, in ns.
fn cpu_time(pid: &str) -> Duration {
    let Ok(pid) = pid.parse::<libc::pid_t>() else {
        return Duration::ZERO;
    };
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain syscalls writing into the two locals above.
    let ok = unsafe {
        libc::clock_getcpuclockid(pid, &mut clock) == 0 && libc::clock_gettime(clock, &mut ts) == 0
    };
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The server's own allocator figures from `/metrics` (KiB allocated, KiB resident): RSS minus
/// resident is code and stacks; resident minus allocated is fragmentation and unreturned pages.
async fn allocator_kb(addr: &str) -> Option<(u64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.ok()?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await.ok()?;
    let read = |kind: &str| {
        let key = format!("presence_allocator_bytes{{kind=\"{kind}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|b| b / 1024)
    };
    Some((read("allocated")?, read("resident")?))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A client TCP stream that reads with `recvmsg` and remembers the kernel's receive timestamp
/// (`SO_TIMESTAMPNS`, wall clock) of the data it last read: when the server's write reached
/// this socket, however late this process, sharing the cores with the server, gets to read it.
/// That is what a client on another machine would see, less the network.
struct TimestampedStream {
    inner: tokio::net::TcpStream,
    last_rx_ns: u64,
}

impl TimestampedStream {
    fn new(inner: tokio::net::TcpStream) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket fd and a c_int option value of the size given.
        let rc = unsafe {
            libc::setsockopt(
                inner.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            inner,
            last_rx_ns: 0,
        })
    }
}

/// One `recvmsg`; updates `last_rx_ns` from the `SCM_TIMESTAMPNS` control message.
fn recv_timestamped(fd: i32, buf: &mut [u8], last_rx_ns: &mut u64) -> std::io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: fd is a connected socket; msg points at live buffers.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                *last_rx_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n as usize)
}

impl tokio::io::AsyncRead for TimestampedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::os::fd::AsRawFd;
        use std::task::Poll;
        loop {
            std::task::ready!(self.inner.poll_read_ready(cx))?;
            let this = &mut *self;
            let fd = this.inner.as_raw_fd();
            let unfilled = buf.initialize_unfilled();
            let mut last = this.last_rx_ns;
            // `try_io` clears tokio's readiness when the read would block.
            match this.inner.try_io(tokio::io::Interest::READABLE, || {
                recv_timestamped(fd, unfilled, &mut last)
            }) {
                Ok(n) => {
                    this.last_rx_ns = last;
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for TimestampedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What every client task shares with the driver.
struct Shared {
    bytes: AtomicU64,
    ready: AtomicUsize,
    ready_changed: Notify,
    /// The probe id the clients are waiting for (index into `changes`), and its start instant.
    probe: AtomicUsize,
    start: Instant,
    /// Per client, nanoseconds since `start` at which the current probe arrived (0 = not yet).
    arrived: Vec<AtomicU64>,
    /// Per client, the kernel's receive time (unix ns) of the data that carried the probe.
    delivered: Vec<AtomicU64>,
    arrived_count: AtomicUsize,
    all_arrived: Notify,
}

const NO_PROBE: usize = usize::MAX;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        anyhow::bail!("usage: presence_bench <server binary> <diff|compat> <N> [users]");
    }
    let (bin, mode, n) = (&args[1], &args[2], args[3].parse::<usize>()?);
    let users = args
        .get(4)
        .map(|u| u.parse::<usize>())
        .transpose()?
        .unwrap_or(n)
        .max(1);
    let changes: usize = std::env::var("CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let page_size = std::env::var("PAGE_SIZE")
        .ok()
        .map(|p| {
            format!(
                "snapshot_page_size = {}\n",
                p.parse::<usize>().unwrap_or(50)
            )
        })
        .unwrap_or_default();
    let key = SigningKey::generate("bench");
    let signer = AssertionSigner::new("edge-gateway", 3600, vec![key.clone()])?;
    let dir = std::env::temp_dir().join(format!("presence-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("k.pem"), key.public_pem())?;
    std::fs::write(
        dir.join("p.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[trust.public_keys]]\nkid = \"bench\"\npem = \"k.pem\"\n\
             [presence]\nmode = \"{mode}\"\nmax_sockets_per_user = 100000\n{page_size}"
        ),
    )?;
    let mut cmd = match std::env::var("SERVER_CPUS") {
        Ok(cpus) if !cpus.is_empty() => {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(cpus).arg(bin);
            c
        }
        _ => tokio::process::Command::new(bin),
    };
    let mut server = cmd
        .arg("--config")
        .arg(dir.join("p.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    // With taskset, taskset execs the server: same pid.
    let pid = server.id().unwrap_or(0);
    let pid_s = pid.to_string();
    let mut lines = BufReader::new(server.stdout.take().expect("piped")).lines();
    // The server prints `presence-service listening on <addr>` (wrappers may print before it).
    let mut addr = String::new();
    while let Some(line) = lines.next_line().await? {
        if let Some(a) = line.strip_prefix("presence-service listening on ") {
            addr = a.trim().to_string();
            break;
        }
    }
    anyhow::ensure!(!addr.is_empty(), "the server did not print its address");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = rss_kb(pid);

    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let shared = Arc::new(Shared {
        bytes: AtomicU64::new(0),
        ready: AtomicUsize::new(0),
        ready_changed: Notify::new(),
        probe: AtomicUsize::new(NO_PROBE),
        start: Instant::now(),
        arrived: (0..n).map(|_| AtomicU64::new(0)).collect(),
        delivered: (0..n).map(|_| AtomicU64::new(0)).collect(),
        arrived_count: AtomicUsize::new(0),
        all_arrived: Notify::new(),
    });
    let probe_names: Arc<Vec<String>> =
        Arc::new((0..changes).map(|k| format!("\"probe-{k}\"")).collect());
    let ws_config = WebSocketConfig::default().read_buffer_size(4096);
    // Set once the clients are idle: each client task hands its socket to the reader thread.
    let (handover_tx, handover_rx) = tokio::sync::watch::channel(false);
    let (handed_tx, mut handed_rx) = tokio::sync::mpsc::unbounded_channel();
    let token_for = |sub: String, sid: String| {
        signer
            .sign(
                &Identity {
                    name: Some(sub.to_uppercase()),
                    sub,
                    sid,
                },
                "presence-service",
            )
            .expect("sign")
    };
    let connect = |i: usize| {
        let token = token_for(format!("user-{}", i % users), format!("s{i}"));
        let (url, shared) = (url.clone(), shared.clone());
        let (addr, handover, handed) = (addr.clone(), handover_rx.clone(), handed_tx.clone());
        tokio::spawn(async move {
            let mut req = url.into_client_request().expect("url");
            req.headers_mut()
                .insert("x-identity-assertion", token.parse().expect("header"));
            let stream = match tokio::net::TcpStream::connect(addr.as_str()).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    TimestampedStream::new(tcp)
                }
                Err(e) => Err(e),
            };
            let Ok(stream) = stream else {
                eprintln!("connect failed");
                return;
            };
            let Ok((mut ws, _)) =
                tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config)).await
            else {
                eprintln!("websocket handshake failed");
                return;
            };
            let _ = ws.next().await; // engine.io open
            let _ = ws.send(Message::text("40")).await;
            let mut counted = false;
            let mut handover = handover;
            loop {
                let msg = tokio::select! {
                    msg = ws.next() => msg,
                    _ = handover.wait_for(|now| *now) => break,
                };
                let Some(Ok(msg)) = msg else { return };
                let Message::Text(t) = msg else { continue };
                if t.as_str() == "2" {
                    let _ = ws.send(Message::text("3")).await;
                    continue;
                }
                if !counted {
                    if t.starts_with("42[\"online_users\"") {
                        counted = true;
                        shared.ready.fetch_add(1, Ordering::Relaxed);
                        shared.ready_changed.notify_one();
                    }
                    continue;
                }
                shared.bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
            }
            // The measuring phase reads this socket from the reader thread (see `reader`): a
            // duplicate of its fd keeps it open when this task drops its own.
            use std::os::fd::AsFd;
            match ws.get_ref().inner.as_fd().try_clone_to_owned() {
                Ok(fd) => {
                    let _ = handed.send((i, fd));
                }
                Err(e) => eprintln!("client {i}: cannot hand its socket over: {e}"),
            }
        });
    };

    // Ramp: at most 256 handshakes in flight (16 in compat mode, where every join is a full list
    // to everyone: a faster ramp overflows the per-socket send queues, as it would in
    // production); a client is ready when it got its snapshot.
    let in_flight = if mode == "compat" { 16 } else { 256 };
    let wait_ready = |target: usize| {
        let shared = shared.clone();
        async move {
            while shared.ready.load(Ordering::Relaxed) < target {
                let notified = shared.ready_changed.notified();
                if shared.ready.load(Ordering::Relaxed) >= target {
                    break;
                }
                if tokio::time::timeout(Duration::from_secs(30), notified)
                    .await
                    .is_err()
                {
                    anyhow::bail!(
                        "only {}/{target} clients connected",
                        shared.ready.load(Ordering::Relaxed)
                    );
                }
            }
            Ok(())
        }
    };
    let drain = |shared: Arc<Shared>| async move {
        // Until clients receive nothing for one second, bounded at 120 s.
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let before = shared.bytes.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            if shared.bytes.load(Ordering::Relaxed) == before || Instant::now() > until {
                break;
            }
        }
    };
    let t0 = Instant::now();
    let ninth = (n / 9).max(1);
    let mut rss_ninth = 0;
    let mut started = 0;
    let mut paused = Duration::ZERO;
    for stage in [ninth, n] {
        while started < stage {
            let ready = shared.ready.load(Ordering::Relaxed);
            while started < stage && started - ready < in_flight {
                connect(started);
                started += 1;
            }
            let ready = shared.ready.load(Ordering::Relaxed);
            wait_ready((ready + 1).min(stage)).await?;
        }
        wait_ready(stage).await?;
        if stage == ninth && ninth < n {
            // Quiesce to read the RSS at N/9; the ramp's clock pauses meanwhile.
            let pause = Instant::now();
            drain(shared.clone()).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss_ninth = rss_kb(pid);
            paused = pause.elapsed();
        }
    }
    let ramp = t0.elapsed().saturating_sub(paused);
    drain(shared.clone()).await;
    let rss_ramp = rss_kb(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_steady = rss_kb(pid);
    let alloc_steady = allocator_kb(&addr).await;

    // From here on, one thread reads every client (see `reader`).
    drop(handed_tx);
    handover_tx.send_replace(true);
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), handed_rx.recv()).await {
            Ok(Some(conn)) => conns.push(conn),
            Ok(None) | Err(_) => break,
        }
    }
    anyhow::ensure!(
        conns.len() == n,
        "only {}/{n} clients were still connected after the ramp",
        conns.len()
    );
    let reader = reader::start(conns, shared.clone(), probe_names.clone())?;

    // Presence changes: new users "probe-k" come online, one at a time.
    shared.bytes.store(0, Ordering::Relaxed);
    let mut lat: Vec<Duration> = Vec::with_capacity(n * changes);
    let mut delivered: Vec<Duration> = Vec::with_capacity(n * changes);
    let mut spreads = Vec::new();
    let mut firsts = Vec::new();
    let mut opened = Vec::new();
    let mut server_cpu = Vec::new();
    let mut client_cpu = Vec::new();
    let mut reached = Vec::new();
    let mut probes = Vec::new();
    let self_pid = std::process::id().to_string();
    for k in 0..changes {
        for a in shared.arrived.iter().chain(&shared.delivered) {
            a.store(0, Ordering::Relaxed);
        }
        shared.arrived_count.store(0, Ordering::Relaxed);
        shared.probe.store(k, Ordering::Release);
        let token = token_for(format!("probe-{k}"), format!("probe-{k}"));
        let mut req = url.clone().into_client_request()?;
        req.headers_mut()
            .insert("x-identity-assertion", token.parse()?);
        let (cpu_s0, cpu_c0) = (cpu_time(&pid_s), cpu_time(&self_pid));
        let change_at = shared.start.elapsed();
        let change_unix = unix_now_ns();
        let (mut probe, _) =
            tokio_tungstenite::connect_async_with_config(req, Some(ws_config), true).await?;
        let _ = probe.next().await;
        probe.send(Message::text("40")).await?;
        opened.push(shared.start.elapsed().saturating_sub(change_at));
        let all = shared.all_arrived.notified();
        if shared.arrived_count.load(Ordering::Acquire) < n {
            let _ = tokio::time::timeout(Duration::from_secs(20), all).await;
        }
        server_cpu.push(cpu_time(&pid_s).saturating_sub(cpu_s0));
        client_cpu.push(cpu_time(&self_pid).saturating_sub(cpu_c0));
        let mut these: Vec<Duration> = shared
            .arrived
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|&a| a != 0)
            .map(|a| Duration::from_nanos(a).saturating_sub(change_at))
            .collect();
        these.sort();
        reached.push(these.len());
        if let (Some(first), Some(last)) = (these.first(), these.last()) {
            spreads.push(*last - *first);
            firsts.push(*first);
        }
        lat.extend(these);
        delivered.extend(
            shared
                .delivered
                .iter()
                .map(|d| d.load(Ordering::Relaxed))
                .filter(|&d| d != 0)
                .map(|d| Duration::from_nanos(d.saturating_sub(change_unix))),
        );
        probes.push(probe); // stays online: the next change is another user
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let report = reader.finish()?;
    let change_bytes = shared.bytes.load(Ordering::Relaxed) / changes.max(1) as u64;
    lat.sort();
    delivered.sort();
    let pct_of = |v: &[Duration], p: f64| {
        v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    let pct = |p: f64| pct_of(&lat, p);
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let min_reached = reached.iter().copied().min().unwrap_or(0);
    println!(
        "mode={mode} N={n} ({} users){}",
        users.min(n),
        if users < n {
            " - few users: the online list stays small, so this isolates what one socket costs"
        } else {
            ""
        }
    );
    println!(
        "  connect: {n} clients in {:.2} s = {:.0} conn/s",
        ramp.as_secs_f64(),
        n as f64 / ramp.as_secs_f64()
    );
    println!(
        "  {changes} changes, each reached >= {min_reached}/{n} clients: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         (from the new user's connect to each client's read)",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
    println!(
        "  {changes} changes, delivered to the clients' sockets: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         (kernel receive time: when the server's write reached each socket, before this process read it)",
        ms(pct_of(&delivered, 0.50)),
        ms(pct_of(&delivered, 0.99)),
        ms(delivered.last().copied().unwrap_or_default()),
    );
    println!(
        "  per change (median of {changes}): the new user's socket open after {:.1} ms, first client reached after {:.1} ms, \
         first-to-last client {:.1} ms; server CPU {:.1} ms; bench client CPU {:.1} ms",
        ms(median(&mut opened)),
        ms(median(&mut firsts)),
        ms(median(&mut spreads)),
        ms(median(&mut server_cpu)),
        ms(median(&mut client_cpu)),
    );
    println!(
        "  bytes sent per change: {change_bytes} ({:.1} x N)",
        change_bytes as f64 / n as f64
    );
    if report.closed + report.protocol_errors > 0 {
        println!(
            "  WARNING: {} clients closed and {} unreadable frames during the changes",
            report.closed, report.protocol_errors
        );
    }
    let per = |rss: u64, count: usize| rss.saturating_sub(rss0) as f64 / count as f64;
    println!(
        "  server RSS: {rss0} kB empty; {rss_ramp} kB after the ramp ({:.1} KB/socket); \
         {rss_steady} kB 5 s later ({:.1} KB/socket)",
        per(rss_ramp, n),
        per(rss_steady, n),
    );
    if let Some((allocated, resident)) = alloc_steady {
        println!(
            "  server allocator then: {allocated} kB allocated ({:.1} KB/socket), {resident} kB resident",
            allocated as f64 / n as f64
        );
    }
    if ninth < n {
        println!(
            "  marginal cost: {rss_ninth} kB at {ninth} sockets -> {rss_steady} kB at {n} = {:.1} KB per extra socket",
            rss_steady.saturating_sub(rss_ninth) as f64 / (n - ninth) as f64
        );
    }
    // HOLD_SECS keeps the server and its clients up after the figures, to inspect the process.
    if let Some(secs) = std::env::var("HOLD_SECS").ok().and_then(|s| s.parse().ok()) {
        println!("  holding pid {pid} for {secs} s");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let _ = server.kill().await;
    std::fs::remove_dir_all(dir).ok();
    Ok(())
}
