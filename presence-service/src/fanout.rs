//! Fan-out: the one place where presence frames leave for sockets.
//!
//! The contract (docs/design.md, "Presence fan-out"):
//! - **Ordered per socket.** Only the announcer task calls in here, one call after another, and
//!   every frame to a socket goes through that socket's own queue and writer task, which writes
//!   it through the WebSocket codec (the same codec that answers the client's pings and writes
//!   the close frame). So a socket reads frames whole and in the order they were sent.
//! - **Snapshot first.** Broadcasts go to [`LIVE_ROOM`] only; a socket joins it right after its
//!   snapshot is queued, so it never gets a change before the list the change applies to.
//! - **Bounded memory per socket.** A socket holds at most its queue (`max_buffer_size`
//!   entries); a slow reader fills its own queue and kernel buffer and delays no one else.
//!   A snapshot page that does not fit closes the socket: it reconnects and starts over.
//! - **Bounded work per broadcast.** A frame is serialized once per broadcast; each recipient
//!   gets a reference-counted copy of the encoded packet.
//! - Safe Rust only: nothing here or below writes around the codec.

use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;
use socketioxide::{BroadcastError, SendError, SocketError, SocketIo};

use crate::metrics::Metrics;

/// The room of sockets that have been sent their snapshot (see the module doc).
pub const LIVE_ROOM: &str = "presence:live";

pub struct Fanout<A: Adapter> {
    io: SocketIo<A>,
    /// The default namespace, kept once the node starts stopping: closing the server removes
    /// it from `io`, and the leaves still have to be broadcast after that.
    kept: Option<BroadcastOperators<A>>,
    /// How long a cluster-wide broadcast may take before this node's sockets are told alone.
    emit_timeout: Duration,
    metrics: Metrics,
}

impl<A: Adapter> Fanout<A> {
    pub fn new(io: SocketIo<A>, emit_timeout: Duration, metrics: Metrics) -> Self {
        Self {
            io,
            kept: None,
            emit_timeout,
            metrics,
        }
    }

    /// Keeps the namespace for the broadcasts still to come after the server closes.
    pub fn keep_namespace(&mut self) {
        self.kept = self.io.of("/");
    }

    fn namespace(&self) -> Option<BroadcastOperators<A>> {
        self.kept.clone().or_else(|| self.io.of("/"))
    }

    /// To every live socket on every node. If the adapter cannot reach the other nodes (Redis
    /// outage), this node's own sockets are still told.
    pub async fn broadcast<T: Serialize + ?Sized>(&self, event: &'static str, payload: &T) {
        let Some(ns) = self.namespace() else {
            tracing::warn!(event, "no default namespace (server closed?); not sent");
            return;
        };
        let sent = tokio::time::timeout(
            self.emit_timeout,
            ns.clone().to(LIVE_ROOM).emit(event, payload),
        )
        .await;
        let ok = match sent {
            Ok(Ok(())) => true,
            // The adapter published first: only some of this node's sockets (closing, or too
            // slow) missed it, and re-sending to all of them would duplicate it for the others.
            Ok(Err(BroadcastError::Socket(errors))) => {
                tracing::debug!(
                    event,
                    sockets = errors.len(),
                    "not sent to some local sockets"
                );
                true
            }
            Ok(Err(_)) | Err(_) => false,
        };
        if !ok {
            tracing::warn!(
                event,
                "cluster broadcast failed; emitting to local sockets only"
            );
            if let Err(e) = ns.local().to(LIVE_ROOM).emit(event, payload).await {
                tracing::warn!(event, error = %e, "local broadcast failed");
                return;
            }
        }
        self.metrics.emitted(event);
    }

    /// Sends each socket its `online_users` (serialized once by the caller) and makes it live.
    /// Returns the sockets it was sent to (the others have closed).
    pub fn snapshot(
        &self,
        sockets: impl IntoIterator<Item = SocketRef<A>>,
        online_users: &RawValue,
    ) -> Vec<SocketRef<A>> {
        let mut sent = Vec::new();
        for socket in sockets {
            if let Err(e) = socket.emit("online_users", online_users) {
                tracing::debug!(error = %e, sid = %socket.id, "snapshot not sent (socket gone?)");
            } else {
                self.metrics.emitted("online_users");
                socket.join(LIVE_ROOM);
                sent.push(socket);
            }
        }
        sent
    }

    /// Sends one frame of a snapshot that continues (a page) to each of `sockets`, dropping
    /// from the list the sockets that are gone. A socket whose queue is full is closed: a page
    /// lost would leave it a partial list for good; closed, it reconnects and starts over.
    /// Returns how many frames were queued.
    pub fn page(
        &self,
        sockets: &mut Vec<SocketRef<A>>,
        event: &'static str,
        payload: &RawValue,
    ) -> u32 {
        let mut frames = 0;
        sockets.retain(|socket| match socket.emit(event, payload) {
            Ok(()) => {
                self.metrics.emitted(event);
                frames += 1;
                true
            }
            Err(SendError::Socket(SocketError::Closed)) => false,
            Err(e) => {
                tracing::warn!(error = %e, sid = %socket.id, "socket too slow for its snapshot; closing it");
                let _ = socket.clone().disconnect();
                false
            }
        });
        frames
    }
}

#[cfg(test)]
mod tests {
    //! The contract, against a real socketioxide server on loopback and bare websocket clients
    //! that parse every frame (and keep nothing between frames: see `memory_...`).

    use std::net::SocketAddr;
    use std::time::Duration;

    use socketioxide::adapter::LocalAdapter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket, TcpStream};
    use tokio::sync::mpsc;

    use super::*;

    const WAIT: Duration = Duration::from_secs(20);

    /// A presence server without presence: a namespace whose sockets are handed to the test.
    async fn server() -> (
        SocketIo<LocalAdapter>,
        SocketAddr,
        mpsc::UnboundedReceiver<SocketRef<LocalAdapter>>,
    ) {
        let (layer, io) = SocketIo::builder().max_buffer_size(128).build_layer();
        let (tx, rx) = mpsc::unbounded_channel();
        io.ns("/", move |socket: SocketRef<LocalAdapter>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(socket);
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().layer(layer);
        tokio::spawn(async move { axum::serve(listener, app).await });
        (io, addr, rx)
    }

    fn fanout(io: &SocketIo<LocalAdapter>) -> Fanout<LocalAdapter> {
        Fanout::new(
            io.clone(),
            Duration::from_secs(1),
            Metrics::new().expect("metrics"),
        )
    }

    /// A websocket client on a bare TCP socket, with a strict frame parser.
    struct Client {
        tcp: TcpStream,
        buf: Vec<u8>,
    }

    impl Client {
        /// Opens a websocket-only Socket.IO session; `rcvbuf` shrinks the socket's receive
        /// buffer (a client that stops reading then fills the server's socket buffer soon).
        async fn connect(addr: SocketAddr, rcvbuf: Option<u32>) -> Client {
            let socket = TcpSocket::new_v4().expect("socket");
            if let Some(size) = rcvbuf {
                socket.set_recv_buffer_size(size).expect("rcvbuf");
            }
            let mut tcp = socket.connect(addr).await.expect("connect");
            let req = format!(
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\n\
                 Upgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            tcp.write_all(req.as_bytes()).await.expect("handshake");
            let mut c = Client {
                tcp,
                buf: Vec::new(),
            };
            let end = loop {
                if let Some(i) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                c.fill().await;
            };
            assert!(c.buf.starts_with(b"HTTP/1.1 101"), "not upgraded");
            c.buf.drain(..end);
            assert!(c.text().await.starts_with("0{"), "no open packet");
            c.send_text("40").await;
            let ack = loop {
                match c.text().await {
                    // The heartbeat's first ping goes out at once (vendored engineioxide).
                    ping if ping == "2" => c.send_text("3").await,
                    other => break other,
                }
            };
            assert!(ack.starts_with("40"), "no connect ack: {ack:.40}");
            c
        }

        async fn fill(&mut self) {
            let mut chunk = [0u8; 16384];
            let n = self.tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed by the server");
            self.buf.extend_from_slice(&chunk[..n]);
        }

        async fn send_text(&mut self, text: &str) {
            // Masked with a zero key: the payload goes as is.
            let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
            frame.extend_from_slice(text.as_bytes());
            self.tcp.write_all(&frame).await.expect("send");
        }

        /// The next text frame; panics on anything a server may not send.
        async fn text(&mut self) -> String {
            loop {
                if self.buf.len() >= 2 {
                    let (b0, b1) = (self.buf[0], self.buf[1]);
                    assert_eq!(b0 & 0xF0, 0x80, "fragmented or reserved bits: {b0:#x}");
                    assert_eq!(b1 & 0x80, 0, "masked server frame");
                    let (len, at) = match b1 & 0x7F {
                        126 if self.buf.len() >= 4 => {
                            (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                        }
                        127 if self.buf.len() >= 10 => {
                            let mut n = [0u8; 8];
                            n.copy_from_slice(&self.buf[2..10]);
                            (u64::from_be_bytes(n) as usize, 10)
                        }
                        126 | 127 => (usize::MAX, 0),
                        n => (n as usize, 2),
                    };
                    if len != usize::MAX && self.buf.len() >= at + len {
                        let payload: Vec<u8> = self.buf.drain(..at + len).skip(at).collect();
                        self.buf.shrink_to(16384);
                        match b0 & 0x0F {
                            0x1 => return String::from_utf8(payload).expect("utf-8 text"),
                            op => panic!("unexpected opcode {op:#x}"),
                        }
                    }
                }
                self.fill().await;
            }
        }

        /// The next Socket.IO event: (name, argument).
        async fn event(&mut self) -> (String, serde_json::Value) {
            loop {
                let text = self.text().await;
                if let Some(json) = text.strip_prefix("42") {
                    let (name, arg): (String, serde_json::Value) =
                        serde_json::from_str(json).expect("event json");
                    return (name, arg);
                }
                assert_eq!(text, "2", "not an event or a ping");
                self.send_text("3").await;
            }
        }
    }

    fn raw(value: &impl Serialize) -> Box<RawValue> {
        serde_json::value::to_raw_value(value).expect("json")
    }

    /// Sockets connect while broadcasts run: each gets its snapshot first, then every later
    /// broadcast, in the order sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ordered_per_socket_under_broadcasts_and_joins() {
        let (io, addr, mut joined) = server().await;
        let fanout = fanout(&io);
        const SOCKETS: usize = 12;
        let readers: Vec<_> = (0..SOCKETS)
            .map(|i| {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(i as u64 * 7)).await;
                    let mut c = Client::connect(addr, None).await;
                    let mut seen = Vec::new();
                    loop {
                        match c.event().await {
                            (name, _) if name == "done" => return seen,
                            (name, arg) => seen.push((name, arg)),
                        }
                    }
                })
            })
            .collect();
        let mut live = 0;
        let mut tick = 0u64;
        while live < SOCKETS {
            while let Ok(socket) = joined.try_recv() {
                live += fanout.snapshot([socket], &raw(&tick)).len();
            }
            fanout.broadcast("tick", &tick).await;
            tick += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for _ in 0..50 {
            fanout.broadcast("tick", &tick).await;
            tick += 1;
        }
        fanout.broadcast("done", &()).await;
        for reader in readers {
            let seen = tokio::time::timeout(WAIT, reader)
                .await
                .expect("reader done")
                .expect("reader ok");
            let (first, snapshot_at) = &seen[0];
            assert_eq!(first, "online_users", "snapshot first: {seen:?}");
            let ticks: Vec<u64> = seen[1..]
                .iter()
                .map(|(name, arg)| {
                    assert_eq!(name, "tick");
                    arg.as_u64().expect("tick")
                })
                .collect();
            // Every broadcast after the snapshot, in order, none missing.
            let from = snapshot_at.as_u64().expect("snapshot tick");
            assert_eq!(ticks, (from..tick).collect::<Vec<_>>());
        }
    }

    /// A socket whose client stopped reading fills its own buffers; the others get every frame,
    /// in order, and the broadcasts never wait for it. What it reads later is whole and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_socket_delays_no_one() {
        let (io, addr, mut joined) = server().await;
        let fanout = fanout(&io);
        let mut slow = Client::connect(addr, Some(4096)).await;
        let fast = tokio::spawn(async move {
            let mut c = Client::connect(addr, None).await;
            let mut got = Vec::new();
            while got.len() < 400 {
                let (name, arg) = c.event().await;
                if name == "frame" {
                    got.push(arg["n"].as_u64().expect("n"));
                }
            }
            got
        });
        for _ in 0..2 {
            let socket = tokio::time::timeout(WAIT, joined.recv())
                .await
                .expect("joined")
                .expect("socket");
            fanout.snapshot([socket], &raw(&()));
        }
        let filler = "x".repeat(8192);
        let started = std::time::Instant::now();
        for n in 0..400u64 {
            let payload = serde_json::json!({ "n": n, "filler": filler });
            fanout.broadcast("frame", &payload).await;
            tokio::task::yield_now().await;
        }
        let broadcasting = started.elapsed();
        let got = tokio::time::timeout(WAIT, fast)
            .await
            .expect("the fast client got every frame")
            .expect("fast reader");
        assert_eq!(got, (0..400).collect::<Vec<_>>());
        // The slow client has 3 MiB waiting for it (more than its socket and queue hold): it
        // missed some, and what it reads is whole and in order.
        assert!(
            broadcasting < WAIT,
            "broadcasts took {broadcasting:?} with a client not reading"
        );
        let mut last = None;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(2), slow.event()).await;
            let Ok((name, arg)) = next else { break };
            if name != "frame" {
                continue;
            }
            let n = arg["n"].as_u64().expect("n");
            assert!(last.is_none_or(|l| n > l), "{n} after {last:?}");
            last = Some(n);
        }
        assert!(last.is_some(), "the slow client read nothing");
    }

    fn allocated() -> usize {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().expect("epoch");
        stats::allocated::read().expect("allocated")
    }

    /// After a frame much larger than usual, each socket gives the room it took back (the
    /// vendored tungstenite's write buffer, engineioxide's queue entry, the shared encoding).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_is_returned_after_a_large_frame() {
        let (io, addr, mut joined) = server().await;
        let fanout = fanout(&io);
        const SOCKETS: usize = 8;
        let mut clients = Vec::new();
        for _ in 0..SOCKETS {
            clients.push(Client::connect(addr, None).await);
            let socket = joined.recv().await.expect("socket");
            fanout.snapshot([socket], &raw(&()));
        }
        for c in &mut clients {
            assert_eq!(c.event().await.0, "online_users");
        }
        let before = allocated();
        let big = "y".repeat(1 << 20);
        fanout.broadcast("big", &big).await;
        drop(big);
        for c in &mut clients {
            let (name, arg) = c.event().await;
            assert_eq!(name, "big");
            assert_eq!(arg.as_str().map(str::len), Some(1 << 20));
        }
        // Every client has read the whole frame, so every server socket has written it.
        let after = allocated();
        let kept = after.saturating_sub(before);
        assert!(
            kept < SOCKETS * (1 << 20) / 4,
            "{kept} bytes still allocated after a 1 MiB frame to {SOCKETS} sockets"
        );
    }
}
