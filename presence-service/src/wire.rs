//! A websocket connection's bytes, with two writers that never split each other's frames.
//!
//! The fan-out writes each presence frame to a websocket-only socket itself: one pre-encoded
//! frame, shared by every socket of a broadcast, goes straight to the kernel from the shard
//! task, with no queue and no writer task to wake per socket (`fanout.rs`). The WebSocket
//! codec (tungstenite, under engineioxide) still writes everything else on the same
//! connection: the handshake's `101`, the Engine.IO open packet, pings, the Socket.IO connect
//! packet, the answers to client pings and the close frame. Both write through this one
//! [`Wire`], under its one lock, and the wire never takes part of a write:
//! - a write is taken whole or not at all: what the kernel does not take at once is kept
//!   (`pending`) and goes out before any later byte, from either writer;
//! - the codec writes whole frames per call (its write buffer is written out in one call,
//!   which the wire takes whole), so a frame from one writer never lands inside the other's.
//!
//! **Order.** All of a direct socket's presence frames (snapshot, pages, changes, the answer to
//! `get_online_users`) come from its shard, one after another. The only frame of the codec
//! they must follow is the Socket.IO connect packet (`40`), which socketioxide queues before
//! the connect handler runs: until the codec has written it, the fan-out's frames are held
//! (`held`), and they go out right behind it. The wire watches the codec's writes for it from
//! the moment its websocket handshake request arrives ([`Wire::arm`]).
//!
//! **Bounded.** A fan-out frame that finds more than its limit waiting is refused, for the
//! fan-out to drop (a change: the client sees the gap in `seq`) or to close the socket (a
//! snapshot page). The codec's own writes wait (its task is woken when the kernel takes
//! more) instead of piling up.
//!
//! **Lifetime.** The connection's IO ([`WireIo`], owned by hyper and then the codec) holds the
//! wire; everyone else holds a [`Weak`] reference. When the IO is dropped the wire is marked
//! closed, whatever it still held is dropped, and a drain under way stops, so the socket is
//! closed exactly when it would be without the wire. A connection whose client takes no byte
//! for as long as the heartbeat allows is given up (see [`Wire::watch_writes`]), for every
//! connection of the service, websocket or not.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// A connection's socket, shared by the codec (through [`WireIo`]) and the fan-out.
pub struct Wire {
    tcp: TcpStream,
    /// How long a write may wait for the kernel to take any byte before the connection is
    /// given up (see [`Wire::watch_writes`]).
    stall: Duration,
    out: Mutex<Out>,
    /// Wakes a drain under way when the IO is dropped.
    closed: Notify,
}

#[derive(Default)]
struct Out {
    /// Taken from a writer but not yet by the kernel; `pending[sent..]` goes out first.
    pending: Vec<u8>,
    sent: usize,
    /// Fan-out frames waiting for the codec to write the connect packet.
    held: Vec<u8>,
    /// The codec's writes are watched for the connect packet.
    armed: bool,
    /// Fan-out frames may go out (the connect packet has been written).
    released: bool,
    /// A task is watching a wait for the kernel (see [`Wire::watch_writes`]).
    watching: bool,
    /// The IO is gone: nothing more is written.
    closed: bool,
    /// The codec has written the close frame: no fan-out frame may follow it.
    ended: bool,
}

/// What became of a fan-out frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The kernel has it.
    Written,
    /// Kept in order behind what waits before it; it goes out as the client reads.
    Queued,
    /// Dropped: more than the limit was waiting.
    Full,
    /// Dropped: the connection is gone.
    Closed,
}

/// Beyond this much capacity an empty buffer is given back (a large frame once written does
/// not stay with an idle socket).
const RETAINED: usize = 4096;

impl Out {
    fn waiting(&self) -> usize {
        self.pending.len() - self.sent
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.sent == self.pending.len() {
            self.pending.clear();
            self.sent = 0;
        }
        self.pending.extend_from_slice(bytes);
    }

    fn emptied(&mut self) {
        self.sent = 0;
        if self.pending.capacity() > RETAINED {
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
    }
}

impl Wire {
    fn new(tcp: TcpStream, stall: Duration) -> Arc<Self> {
        Arc::new(Self {
            tcp,
            stall,
            out: Mutex::new(Out::default()),
            closed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Out> {
        // Nothing panics while holding it; a poisoned lock still guards consistent buffers.
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A websocket handshake request arrived on this connection: what the codec writes from now
    /// on is this session's, and fan-out frames wait for its connect packet.
    pub fn arm(&self) {
        let mut out = self.lock();
        out.armed = true;
        out.released = false;
        out.held = Vec::new();
    }

    /// Writes one whole fan-out frame, or keeps it in order, or refuses it (see [`Sent`]).
    /// `limit` bounds what may wait before it.
    pub fn send(self: &Arc<Self>, frame: &[u8], limit: usize) -> Sent {
        let mut out = self.lock();
        if out.closed || out.ended {
            return Sent::Closed;
        }
        if !out.released {
            if out.held.len() + frame.len() > limit && !out.held.is_empty() {
                return Sent::Full;
            }
            out.held.extend_from_slice(frame);
            return Sent::Queued;
        }
        if out.waiting() > 0 {
            if out.waiting() + frame.len() > limit {
                return Sent::Full;
            }
            out.keep(frame);
            self.watch_writes(&mut out);
            return Sent::Queued;
        }
        match self.tcp.try_write(frame) {
            Ok(n) if n == frame.len() => Sent::Written,
            Ok(n) => {
                out.keep(&frame[n..]);
                self.watch_writes(&mut out);
                Sent::Queued
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                out.keep(frame);
                self.watch_writes(&mut out);
                Sent::Queued
            }
            // The connection is failing; the codec's own read or write reports it.
            Err(_) => Sent::Closed,
        }
    }

    /// Writes out what is pending, as far as the kernel takes it. `Ok(true)` once nothing is.
    fn write_pending(&self, out: &mut Out) -> io::Result<bool> {
        while out.waiting() > 0 {
            match self.tcp.try_write(&out.pending[out.sent..]) {
                Ok(n) => out.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        out.emptied();
        Ok(true)
    }

    /// Whenever a writer must wait for the kernel to take more, one task per wire watches the
    /// wait. It writes out what is pending (the codec may not write again for a long time: an
    /// idle socket), and ends when nothing is, or the connection is gone. If the kernel takes no
    /// byte at all for `stall` (a client that stopped reading for good), it gives the connection
    /// up: drops what waits and shuts the socket down, which fails the codec's waiting write.
    /// Without that, the codec's writer task would wait on such a client for as long as TCP
    /// keeps the connection up, its session would never finish closing, and its user would stay
    /// online.
    fn watch_writes(self: &Arc<Self>, out: &mut Out) {
        if out.watching || out.closed {
            return;
        }
        out.watching = true;
        let wire = self.clone();
        tokio::spawn(async move {
            loop {
                let closed = wire.closed.notified();
                tokio::pin!(closed);
                // Registered before the flag is read: a close after the read still wakes it.
                closed.as_mut().enable();
                if wire.lock().closed {
                    return;
                }
                tokio::select! {
                    ready = wire.tcp.writable() => {
                        let mut out = wire.lock();
                        let done = match ready {
                            Ok(()) => wire.write_pending(&mut out).unwrap_or(true),
                            Err(_) => true,
                        };
                        if done || out.closed {
                            out.watching = false;
                            return;
                        }
                    }
                    () = tokio::time::sleep(wire.stall) => {
                        let mut out = wire.lock();
                        out.ended = true;
                        out.held = Vec::new();
                        out.pending = Vec::new();
                        out.sent = 0;
                        out.watching = false;
                        drop(out);
                        tracing::warn!(stall_ms = wire.stall.as_millis() as u64, "client took no byte for too long; connection given up");
                        let _ = socket2::SockRef::from(&wire.tcp).shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    () = closed => return,
                }
            }
        });
    }

    /// A writer waits for the kernel: woken when it can write, watched meanwhile.
    fn poll_writable(
        self: &Arc<Self>,
        out: &mut Out,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let ready = self.tcp.poll_write_ready(cx);
        if ready.is_pending() {
            self.watch_writes(out);
        }
        ready
    }

    /// The codec writes `buf`: all of it is taken, or none (`Pending`, woken when the kernel
    /// takes more). What is pending goes first.
    fn poll_write_whole(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut out = self.lock();
        loop {
            if out.waiting() > 0 && !self.write_pending(&mut out)? {
                ready!(self.poll_writable(&mut out, cx))?;
                continue;
            }
            match self.tcp.try_write(buf) {
                Ok(n) => {
                    out.keep(&buf[n..]);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.poll_writable(&mut out, cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let seen = if out.armed {
            scan(buf)
        } else {
            Seen::default()
        };
        if seen.close {
            // The session is over: what the fan-out still holds or sends is not for it.
            out.armed = false;
            out.ended = true;
            out.held = Vec::new();
        } else if seen.connect && !out.released {
            out.released = true;
            let held = std::mem::take(&mut out.held);
            out.keep(&held);
            // The codec flushes after each write, which writes these out too; but they must
            // not depend on the codec writing again.
            if out.waiting() > 0 {
                self.watch_writes(&mut out);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_out(self: &Arc<Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut out = self.lock();
        while !self.write_pending(&mut out)? {
            ready!(self.poll_writable(&mut out, cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

/// What the codec's write `buf` (whole websocket frames) holds that the fan-out must know of.
#[derive(Default)]
struct Seen {
    /// A text frame with the Engine.IO message of a Socket.IO connect packet on the default
    /// namespace: `40`, or `40{...}` (protocol v5).
    connect: bool,
    /// A close frame: nothing may follow it.
    close: bool,
}

fn scan(buf: &[u8]) -> Seen {
    let mut seen = Seen::default();
    let mut at = 0;
    while at + 2 <= buf.len() {
        let (b0, b1) = (buf[at], buf[at + 1]);
        // Server frames are unmasked.
        let (len, head) = match b1 & 0x7F {
            126 if at + 4 <= buf.len() => {
                (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4)
            }
            127 if at + 10 <= buf.len() => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[at + 2..at + 10]);
                (
                    usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX),
                    10,
                )
            }
            126 | 127 => break,
            n => (n as usize, 2),
        };
        let payload = at + head;
        let end = payload.saturating_add(len).min(buf.len());
        let body = buf.get(payload..end).unwrap_or_default();
        match b0 {
            0x81 if body == b"40" || body.starts_with(b"40{") => seen.connect = true,
            0x88 => seen.close = true,
            _ => {}
        }
        at = payload.saturating_add(len);
    }
    seen
}

/// The connection's IO for hyper and the codec: reads go to the socket; writes go through the
/// wire. Dropping it closes the wire.
pub struct WireIo(Arc<Wire>);

impl WireIo {
    /// `stall`: see [`Wire::watch_writes`].
    pub fn new(tcp: TcpStream, stall: Duration) -> Self {
        Self(Wire::new(tcp, stall))
    }

    /// How the fan-out reaches this connection.
    pub fn handle(&self) -> WireHandle {
        WireHandle(Arc::downgrade(&self.0))
    }
}

impl Drop for WireIo {
    fn drop(&mut self) {
        let mut out = self.0.lock();
        out.closed = true;
        out.pending = Vec::new();
        out.held = Vec::new();
        drop(out);
        self.0.closed.notify_waiters();
    }
}

impl AsyncRead for WireIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Safe code can only read into initialized memory: hyper hands over fresh capacity on
        // every read, so at most this much is zeroed per read (the codec's buffer is small and
        // initialized already).
        const MAX_READ: usize = 4096;
        loop {
            ready!(self.0.tcp.poll_read_ready(cx))?;
            let len = buf.remaining().min(MAX_READ);
            match self.0.tcp.try_read(buf.initialize_unfilled_to(len)) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale; `try_read` cleared it, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for WireIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_whole(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_write_out(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.0.poll_write_out(cx))?;
        Poll::Ready(socket2::SockRef::from(&self.0.tcp).shutdown(std::net::Shutdown::Write))
    }
}

/// The fan-out's way to a websocket-only socket's connection, kept in its handshake request.
/// Weak: the connection closes when its IO is dropped, whoever still holds this.
#[derive(Clone, Debug)]
pub struct WireHandle(Weak<Wire>);

impl WireHandle {
    pub fn get(&self) -> Option<Arc<Wire>> {
        self.0.upgrade()
    }
}

/// Axum middleware, outside the Socket.IO layer: a websocket-only Engine.IO handshake over
/// HTTP/1.1 (the connection becomes that session's websocket) arms its wire and keeps the way
/// to it in the request, which engineioxide keeps for the socket's life. Other requests keep
/// nothing: a polling session's websocket upgrade, later, may come on another connection.
pub async fn direct_for_websocket_handshake(
    mut req: axum::extract::Request,
) -> axum::extract::Request {
    let Some(axum::extract::ConnectInfo(handle)) = req
        .extensions_mut()
        .remove::<axum::extract::ConnectInfo<WireHandle>>()
    else {
        return req;
    };
    if req.version() == http::Version::HTTP_11 && is_websocket_only_handshake(req.uri().query()) {
        if let Some(wire) = handle.get() {
            wire.arm();
            req.extensions_mut().insert(handle);
        }
    }
    req
}

/// `EIO` and `transport=websocket`, and no `sid`: a session that starts on a websocket.
fn is_websocket_only_handshake(query: Option<&str>) -> bool {
    crate::handshake_check::is_engine_io_handshake(query)
        && query.is_some_and(|q| q.split('&').any(|pair| pair == "transport=websocket"))
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    //! The wire against real sockets on loopback: a client that parses every byte it gets.

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};

    use super::*;

    const WAIT: Duration = Duration::from_secs(20);

    /// A server frame holding `text` (a websocket text frame, unmasked).
    fn frame(text: &str) -> Vec<u8> {
        let mut f = vec![0x81];
        match text.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xFFFF => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(text.as_bytes());
        f
    }

    /// Every text frame in `bytes`, which must be whole frames only.
    fn texts(mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0], 0x81, "not a whole text frame");
            let (len, at) = match bytes[1] {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&bytes[2..10]);
                    (u64::from_be_bytes(n) as usize, 10)
                }
                n => (n as usize, 2),
            };
            out.push(String::from_utf8(bytes[at..at + len].to_vec()).expect("utf-8"));
            bytes = &bytes[at + len..];
        }
        out
    }

    /// A connected pair: the server side as a wire (its IO and the fan-out's handle), the
    /// client side with a small receive buffer, so that it fills when the client stops reading.
    async fn pair_stalling_after(stall: Duration) -> (WireIo, Arc<Wire>, tokio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let (client, accepted) = tokio::join!(
            socket.connect(listener.local_addr().expect("addr")),
            listener.accept()
        );
        let io = WireIo::new(accepted.expect("accept").0, stall);
        let wire = io.handle().get().expect("wire");
        (io, wire, client.expect("connect"))
    }

    async fn pair() -> (WireIo, Arc<Wire>, tokio::net::TcpStream) {
        pair_stalling_after(Duration::from_secs(60)).await
    }

    async fn read_all(client: &mut tokio::net::TcpStream, want: usize) -> Vec<u8> {
        let mut got = vec![0u8; want];
        tokio::time::timeout(WAIT, client.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        got
    }

    #[test]
    fn the_codecs_connect_and_close_frames_are_seen() {
        let mut ping_then_connect = frame("2");
        ping_then_connect.extend(frame("40"));
        assert!(scan(&ping_then_connect).connect);
        assert!(scan(&frame(r#"40{"sid":"abc"}"#)).connect);
        // An event, an open packet, a connect to another namespace, a message that merely
        // starts with `40`, an HTTP answer: none of them.
        for other in [
            frame(r#"42["online_users",{}]"#),
            frame(r#"0{"sid":"x"}"#),
            frame("40/admin,"),
            frame(&format!("40x{}", "x".repeat(300))),
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec(),
        ] {
            let seen = scan(&other);
            assert!(
                !seen.connect && !seen.close,
                "{:?}",
                String::from_utf8_lossy(&other)
            );
        }
        let mut pong_then_close = vec![0x8A, 0];
        pong_then_close.extend([0x88, 2, 0x03, 0xE8]);
        assert!(scan(&pong_then_close).close);
    }

    #[test]
    fn only_websocket_handshakes_get_a_wire() {
        assert!(is_websocket_only_handshake(Some(
            "EIO=4&transport=websocket"
        )));
        assert!(!is_websocket_only_handshake(Some(
            "EIO=4&transport=polling"
        )));
        assert!(!is_websocket_only_handshake(Some(
            "EIO=4&transport=websocket&sid=abc"
        )));
        assert!(!is_websocket_only_handshake(Some("transport=websocket")));
        assert!(!is_websocket_only_handshake(None));
    }

    /// The fan-out's frames wait for the codec's connect packet and follow it at once.
    #[tokio::test]
    async fn fan_out_frames_wait_for_the_connect_packet() {
        let _turn = crate::BIG_ALLOCATIONS.lock().await;
        let (mut io, wire, mut client) = pair().await;
        wire.arm();
        assert_eq!(
            wire.send(&frame("42[\"online_users\",1]"), 1 << 20),
            Sent::Queued
        );
        assert_eq!(
            wire.send(&frame("42[\"presence_diff\",2]"), 1 << 20),
            Sent::Queued
        );
        io.write_all(&frame("2")).await.expect("ping");
        io.flush().await.expect("flush");
        assert_eq!(texts(&read_all(&mut client, 3).await), ["2"]);
        io.write_all(&frame("40")).await.expect("connect");
        io.flush().await.expect("flush");
        let want = frame("40").len()
            + frame("42[\"online_users\",1]").len()
            + frame("42[\"presence_diff\",2]").len();
        assert_eq!(
            texts(&read_all(&mut client, want).await),
            ["40", "42[\"online_users\",1]", "42[\"presence_diff\",2]"]
        );
        assert_eq!(
            wire.send(&frame("42[\"presence_diff\",3]"), 1 << 20),
            Sent::Written
        );
        // After the codec's close frame, nothing more from the fan-out.
        io.write_all(&[0x88, 2, 0x03, 0xE8]).await.expect("close");
        assert_eq!(
            wire.send(&frame("42[\"presence_diff\",4]"), 1 << 20),
            Sent::Closed
        );
    }

    /// Codec writes (large, as a pong or a close can be when the kernel is full) and fan-out
    /// frames take turns while the client reads in small, random bites: every frame arrives
    /// whole, each writer's in its order, the fan-out's dropped only whole (`Full`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_writers_never_split_a_frame() {
        let _turn = crate::BIG_ALLOCATIONS.lock().await;
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let (mut io, wire, mut client) = pair().await;
        wire.arm();
        io.write_all(&frame("40")).await.expect("connect");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 8192];
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed ^ 1);
            loop {
                let want = rand::Rng::gen_range(&mut rng, 1..chunk.len());
                match client.read(&mut chunk[..want]).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
                if rand::Rng::gen_bool(&mut rng, 0.05) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        let mut codec_sent = 0u32;
        let mut fanout_sent = Vec::new();
        for k in 0..3000u32 {
            if rand::Rng::gen_bool(&mut rng, 0.2) {
                let size = rand::Rng::gen_range(&mut rng, 1..40_000);
                let text = format!("c{codec_sent} {}", "c".repeat(size));
                io.write_all(&frame(&text)).await.expect("codec write");
                if rand::Rng::gen_bool(&mut rng, 0.5) {
                    io.flush().await.expect("codec flush");
                }
                codec_sent += 1;
            } else {
                let size = rand::Rng::gen_range(&mut rng, 1..2_000);
                let text = format!("f{k} {}", "f".repeat(size));
                match wire.send(&frame(&text), 64 * 1024) {
                    Sent::Written | Sent::Queued => fanout_sent.push(k),
                    Sent::Full => {}
                    Sent::Closed => panic!("closed"),
                }
            }
            if k % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        // The codec's flush writes out whatever waits, the fan-out's too; then it shuts down.
        tokio::time::timeout(WAIT, io.shutdown())
            .await
            .expect("flushed in time")
            .expect("shutdown");
        let bytes = tokio::time::timeout(WAIT, reader)
            .await
            .expect("reader in time")
            .expect("reader");
        let frames = texts(&bytes);
        let codec: Vec<u32> = frames
            .iter()
            .filter_map(|t| t.strip_prefix('c'))
            .map(|t| t.split(' ').next().and_then(|n| n.parse().ok()).expect("n"))
            .collect();
        let fanout: Vec<u32> = frames
            .iter()
            .filter_map(|t| t.strip_prefix('f'))
            .map(|t| t.split(' ').next().and_then(|n| n.parse().ok()).expect("n"))
            .collect();
        assert_eq!(frames[0], "40");
        assert_eq!(codec, (0..codec_sent).collect::<Vec<_>>(), "seed {seed}");
        assert_eq!(fanout, fanout_sent, "seed {seed}");
    }

    /// A client that stops reading for good: once the kernel has taken no byte for the stall
    /// limit, the connection is given up, and a codec write waiting behind it fails instead of
    /// waiting for as long as TCP keeps the connection up.
    #[tokio::test]
    async fn a_client_that_takes_nothing_is_given_up() {
        let _turn = crate::BIG_ALLOCATIONS.lock().await;
        let (mut io, wire, client) = pair_stalling_after(Duration::from_millis(300)).await;
        wire.arm();
        io.write_all(&frame("40")).await.expect("connect");
        let big = frame(&"x".repeat(60_000));
        while wire.send(&big, 1 << 20) != Sent::Full {}
        let ping = tokio::time::timeout(WAIT, async {
            io.write_all(&frame("2")).await?;
            io.flush().await
        })
        .await
        .expect("the codec's write waited for good");
        assert!(
            ping.is_err(),
            "a write to a client that reads nothing succeeded"
        );
        assert_eq!(wire.send(&frame("42[]"), 1 << 20), Sent::Closed);
        drop(client);
    }

    /// Whatever waited is dropped with the IO, and a drain under way stops: the connection
    /// closes when the IO goes, as a plain socket's would.
    #[tokio::test]
    async fn dropping_the_io_closes_the_connection() {
        let _turn = crate::BIG_ALLOCATIONS.lock().await;
        let (io, wire, mut client) = pair().await;
        wire.arm();
        let mut io = io;
        io.write_all(&frame("40")).await.expect("connect");
        // More than the client's and the server's socket buffers hold, so a drain is left
        // waiting for a client that does not read.
        let big = frame(&"x".repeat(60_000));
        for _ in 0..200 {
            if wire.send(&big, 64 << 20) == Sent::Full {
                break;
            }
        }
        assert!(wire.lock().waiting() > 0, "nothing left waiting");
        let weak = Arc::downgrade(&wire);
        drop(wire);
        drop(io);
        tokio::time::timeout(WAIT, async {
            let mut chunk = vec![0u8; 65536];
            while !matches!(client.read(&mut chunk).await, Ok(0) | Err(_)) {}
        })
        .await
        .expect("the connection closed");
        assert!(weak.upgrade().is_none(), "the wire outlived its IO");
    }
}
