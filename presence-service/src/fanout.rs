//! Fan-out: the one place where presence frames leave for sockets.
//!
//! The contract (docs/design.md, "Presence fan-out"):
//! - **Sharded per core.** A socket belongs to one shard (a task; one per core), picked by its
//!   id. The announcer hands each shard its jobs (snapshots, pages, broadcasts) and goes on;
//!   the shards send in parallel.
//! - **Ordered per socket.** Only the announcer task calls in here, one call after another;
//!   each shard does its jobs in that order, and a socket's frames all take one way out: its
//!   wire for a websocket-only session (written by the shard itself, whole, under the same
//!   lock the WebSocket codec writes its pings, pongs and close frame through; `wire.rs`), its
//!   socketioxide queue and writer task otherwise. So a socket reads this node's frames whole
//!   and in the order they were made.
//! - **Snapshot first.** A socket becomes live for broadcasts (joins the shard's direct list,
//!   or one of its rooms) right after its snapshot is sent, so it never gets a change before the
//!   list the change applies to. A direct socket's frames also wait for the codec's connect
//!   packet (`wire.rs`).
//! - **Numbered.** Every broadcast frame carries this run's `epoch` and a `seq` one higher than
//!   the last; a snapshot or an ack carries the `seq` it is as of. A client that sees a jump
//!   knows it missed a frame (one dropped for a slow reader) and asks for the list again.
//! - **Bounded memory per socket.** A socket holds at most its queue (`max_buffer_size`
//!   entries) or, direct, [`WAITING_LIMIT`] bytes; a slow reader fills its own buffers and
//!   delays no one else. A snapshot page that does not fit closes the socket's transport: it
//!   reconnects and starts over.
//! - **Bounded work per broadcast.** The announcer serializes a payload once and hands each
//!   shard a reference to it (a job per shard, whatever the number of sockets); a shard encodes
//!   the websocket frame once for its direct sockets and the packet once per room for the
//!   others. A shard's rooms are small, so socketioxide's locks are never held for a whole
//!   broadcast. Nothing is published to other nodes: each node makes its own frames from the
//!   change log.
//! - Safe Rust only: nothing here or below writes around the codec's lock.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::handler::FromMessageParts;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::Socket;
use socketioxide::{SendError, SocketError, SocketIo};
use socketioxide_core::adapter::Room;
use socketioxide_core::Value;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::wire::{Sent, Wire, WireHandle};

/// Work for a shard, in the order the announcer made it.
enum Job<A: Adapter> {
    /// `online_users` to each socket, which then joins one of its shard's rooms.
    Snapshot {
        sockets: Vec<SocketRef<A>>,
        payload: Arc<RawValue>,
    },
    /// A page of a snapshot that continues, to each socket.
    Page {
        sockets: Vec<SocketRef<A>>,
        event: &'static str,
        payload: Arc<RawValue>,
    },
    /// A frame to every live socket of the shard.
    Broadcast {
        ns: Box<BroadcastOperators<A>>,
        event: &'static str,
        payload: Arc<RawValue>,
    },
    /// The answer to `get_online_users`, in order with the frames before and after it.
    Ack {
        acks: Vec<(SocketRef<A>, Ack<A>)>,
        payload: Arc<RawValue>,
    },
}

/// How a socket's `get_online_users` is answered: socketioxide's ack for a socket it writes to,
/// and the ack's id for one the fan-out writes to itself (see [`direct_wire`]).
pub struct Ack<A: Adapter> {
    sender: AckSender<A>,
    id: Option<i64>,
}

impl<A: Adapter> FromMessageParts<A> for Ack<A> {
    type Error = std::convert::Infallible;

    fn from_message_parts(
        s: &Arc<Socket<A>>,
        v: &mut Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        Ok(Self {
            sender: AckSender::from_message_parts(s, v, ack_id)?,
            id: *ack_id,
        })
    }
}

/// The most a direct socket may have waiting for the kernel before a frame for it is refused
/// (a slow reader): a few snapshot pages' worth. The queued path's bound is its queue's length.
const WAITING_LIMIT: usize = 256 * 1024;

/// The wire a socket's presence frames go out on, if the fan-out writes to it itself: a
/// websocket-only session whose connection is this server's own (`wire.rs`). Every other
/// socket (polling, upgraded from polling) gets its frames through socketioxide.
fn direct_wire<A: Adapter>(socket: &SocketRef<A>) -> Option<(WireHandle, Arc<Wire>)> {
    let handle = socket.req_parts().extensions.get::<WireHandle>()?;
    Some((handle.clone(), handle.get()?))
}

/// A websocket text frame (a server's: unmasked) holding one Engine.IO message (`4`) made of
/// `parts`, encoded once and written as is to every direct socket it is for.
fn ws_message(parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(0x81);
    match u16::try_from(len) {
        Ok(n) if n < 126 => frame.push(n as u8),
        Ok(n) => {
            frame.push(126);
            frame.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.push(b'4');
    for part in parts {
        frame.extend_from_slice(part);
    }
    frame
}

/// A Socket.IO event on the default namespace, as socketioxide encodes `emit(event, payload)`:
/// `2["event",payload]`. Event names here are plain identifiers (nothing to escape).
fn event_frame(event: &str, payload: &RawValue) -> Vec<u8> {
    debug_assert!(!event.contains(['"', '\\']));
    ws_message(&[
        b"2[\"",
        event.as_bytes(),
        b"\",",
        payload.get().as_bytes(),
        b"]",
    ])
}

/// The answer to an event that asked for one, as socketioxide encodes it: `3<id>[payload]`.
fn ack_frame(id: i64, payload: &RawValue) -> Vec<u8> {
    ws_message(&[
        b"3",
        id.to_string().as_bytes(),
        b"[",
        payload.get().as_bytes(),
        b"]",
    ])
}

/// A broadcast frame's numbering (docs/design.md, "Presence events"): `epoch` names this run of
/// the node, `seq` grows by one per broadcast frame, so a client can tell it missed one.
#[derive(Serialize)]
struct Stamped<'a, T: Serialize + ?Sized> {
    #[serde(flatten)]
    body: &'a T,
    epoch: &'a str,
    seq: u64,
}

pub struct Fanout<A: Adapter> {
    io: SocketIo<A>,
    /// The default namespace, kept once the node starts stopping: closing the server removes
    /// it from `io`, and the leaves still have to be sent after that.
    kept: Option<BroadcastOperators<A>>,
    /// One task per core; a socket belongs to the shard its id hashes to.
    shards: Vec<mpsc::UnboundedSender<Job<A>>>,
    hasher: std::collections::hash_map::RandomState,
    /// This run's name in every numbered frame.
    epoch: String,
    /// The last broadcast frame's number. Only the announcer sends; atomic so that its helpers
    /// can share `&Fanout`.
    seq: AtomicU64,
    metrics: Metrics,
}

impl<A: Adapter> Fanout<A> {
    /// Spawns the shard tasks (call within the runtime).
    pub fn new(io: SocketIo<A>, metrics: Metrics) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Short: it is in every frame. A client only compares it with the one before, from the
        // same node, so 32 random bits tell two runs apart.
        let run = format!("{:08x}", rand::random::<u32>());
        // Each shard's live sockets are spread over its rooms (see `ShardRooms`).
        let shards = (0..cores)
            .map(|k| {
                let (tx, rx) = mpsc::unbounded_channel();
                let shard = Shard {
                    rooms: ShardRooms::new(k),
                    direct: Vec::new(),
                    rooms_used: false,
                    metrics: metrics.clone(),
                };
                tokio::spawn(shard.run(rx));
                tx
            })
            .collect();
        Self {
            io,
            kept: None,
            shards,
            hasher: Default::default(),
            epoch: run,
            seq: AtomicU64::new(0),
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

    fn shard_of(&self, socket: &SocketRef<A>) -> usize {
        self.hasher.hash_one(socket.id) as usize % self.shards.len()
    }

    /// Hands each shard its part of `items`.
    fn split<T>(&self, items: impl IntoIterator<Item = (SocketRef<A>, T)>) -> Vec<Vec<T>> {
        let mut parts: Vec<Vec<T>> = self.shards.iter().map(|_| Vec::new()).collect();
        for (socket, item) in items {
            parts[self.shard_of(&socket)].push(item);
        }
        parts
    }

    fn split_sockets(
        &self,
        sockets: impl IntoIterator<Item = SocketRef<A>>,
    ) -> Vec<Vec<SocketRef<A>>> {
        self.split(sockets.into_iter().map(|s| (s.clone(), s)))
    }

    fn to_shard(&self, k: usize, job: Job<A>) {
        // A shard lives as long as the runtime; if it is gone we are shutting down.
        let _ = self.shards[k].send(job);
    }

    /// `body` (a list) numbered as of now, for a snapshot or an ack: the last broadcast frame
    /// is already in it; the next one applies to it.
    pub fn as_of_now<T: Serialize + ?Sized>(
        &self,
        body: &T,
    ) -> Result<Box<RawValue>, serde_json::Error> {
        serde_json::value::to_raw_value(&Stamped {
            body,
            epoch: &self.epoch,
            seq: self.seq.load(Ordering::Relaxed),
        })
    }

    /// To every live socket of this node, numbered (see [`Stamped`]). The encoding is made
    /// once; each shard sends it to its sockets. Other nodes make their own frames from the
    /// change log.
    pub fn broadcast<T: Serialize + ?Sized>(&self, event: &'static str, payload: &T) {
        let Some(ns) = self.namespace() else {
            tracing::warn!(event, "no default namespace (server closed?); not sent");
            return;
        };
        let seq = self.seq.load(Ordering::Relaxed) + 1;
        let stamped = Stamped {
            body: payload,
            epoch: &self.epoch,
            seq,
        };
        let payload: Arc<RawValue> = match serde_json::value::to_raw_value(&stamped) {
            Ok(p) => p.into(),
            Err(e) => {
                tracing::error!(event, error = %e, "cannot serialize a broadcast");
                return;
            }
        };
        self.seq.store(seq, Ordering::Relaxed);
        for k in 0..self.shards.len() {
            self.to_shard(
                k,
                Job::Broadcast {
                    ns: Box::new(ns.clone()),
                    event,
                    payload: payload.clone(),
                },
            );
        }
        self.metrics.emitted(event);
    }

    /// Has each socket sent its `online_users` (serialized once by the caller, numbered with
    /// [`Self::as_of_now`]) and made live, by its shard. Returns the sockets, for the pages that
    /// may follow.
    pub fn snapshot(
        &self,
        sockets: impl IntoIterator<Item = SocketRef<A>>,
        online_users: &RawValue,
    ) -> Vec<SocketRef<A>> {
        let payload: Arc<RawValue> = online_users.to_owned().into();
        let parts = self.split_sockets(sockets);
        let all = parts.iter().flatten().cloned().collect();
        for (k, sockets) in parts.into_iter().enumerate() {
            if !sockets.is_empty() {
                self.to_shard(
                    k,
                    Job::Snapshot {
                        sockets,
                        payload: payload.clone(),
                    },
                );
            }
        }
        all
    }

    /// Answers `get_online_users` (the list serialized once by the caller), each through its
    /// socket's shard, so the answer keeps its place among the frames around it.
    pub fn ack(
        &self,
        acks: impl IntoIterator<Item = (SocketRef<A>, Ack<A>)>,
        online_users: &RawValue,
    ) {
        let payload: Arc<RawValue> = online_users.to_owned().into();
        let acks = acks.into_iter().map(|(s, a)| (s.clone(), (s, a)));
        for (k, acks) in self.split(acks).into_iter().enumerate() {
            if !acks.is_empty() {
                self.to_shard(
                    k,
                    Job::Ack {
                        acks,
                        payload: payload.clone(),
                    },
                );
            }
        }
    }

    /// Has one frame of a snapshot that continues (a page) sent to each of `sockets`, after
    /// dropping from the list the sockets that are gone. Returns how many frames were handed
    /// to the shards.
    pub fn page(
        &self,
        sockets: &mut Vec<SocketRef<A>>,
        event: &'static str,
        payload: &RawValue,
    ) -> u32 {
        sockets.retain(|s| s.connected());
        let payload: Arc<RawValue> = payload.to_owned().into();
        for (k, part) in self
            .split_sockets(sockets.iter().cloned())
            .into_iter()
            .enumerate()
        {
            if !part.is_empty() {
                self.to_shard(
                    k,
                    Job::Page {
                        sockets: part,
                        event,
                        payload: payload.clone(),
                    },
                );
            }
        }
        u32::try_from(sockets.len()).unwrap_or(u32::MAX)
    }
}

/// The rooms a shard's live sockets are spread over, a broadcast going to one room after
/// another. socketioxide holds its room map's and socket map's read locks while it sends to a
/// room, and every connect, join and disconnect on the node waits for the write lock, blocking
/// the worker thread it runs on: one room for a whole shard held them for a whole broadcast
/// (thousands of sends). With many small rooms a lock is held for a few dozen sends at a time,
/// and the packet is still encoded once per room, not per socket.
struct ShardRooms {
    rooms: Vec<Room>,
    /// Round robin: sockets join the rooms in turn, so the rooms stay about equal in size
    /// (disconnects thin them at random).
    next: usize,
}

impl ShardRooms {
    /// Enough that a shard of tens of thousands of sockets sends a few hundred per room; an
    /// empty room costs one lookup per broadcast.
    const ROOMS_PER_SHARD: usize = 64;

    fn new(shard: usize) -> Self {
        let rooms = (0..Self::ROOMS_PER_SHARD)
            .map(|j| Room::from(format!("presence:shard:{shard}:{j}")))
            .collect();
        Self { rooms, next: 0 }
    }

    fn room_for_next(&mut self) -> Room {
        let room = self.rooms[self.next].clone();
        self.next = (self.next + 1) % self.rooms.len();
        room
    }
}

/// A snapshot or one of its pages could not be queued. A socket that is gone needs nothing; one
/// whose queue is full would keep a partial list for good (pages carry no `seq`), so its
/// transport is closed (see [`close_too_slow`]).
fn too_slow_or_gone<A: Adapter>(socket: &SocketRef<A>, e: &SendError, what: &'static str) {
    if !matches!(e, SendError::Socket(SocketError::Closed)) {
        close_too_slow(socket, what);
    }
}

/// The client reconnects and gets a fresh snapshot. (A namespace disconnect would not do: it
/// needs room in the same full queue, and Socket.IO clients do not reconnect after one.)
fn close_too_slow<A: Adapter>(socket: &SocketRef<A>, what: &'static str) {
    tracing::warn!(sid = %socket.id, what, "socket too slow for its snapshot; closing its transport");
    socket.close_transport();
}

/// A shard: does its jobs in order. A socket's frames go out on its wire when the fan-out
/// writes to it itself ([`direct_wire`]), through socketioxide otherwise; a socket takes one
/// way for its whole life, so its frames keep their order either way.
struct Shard {
    rooms: ShardRooms,
    /// The live sockets written to directly, by their wires; a wire found closed is dropped.
    direct: Vec<WireHandle>,
    /// Whether any socket ever joined one of the rooms. Until one has, a broadcast skips them:
    /// socketioxide encodes the packet for a room even when the room is empty.
    rooms_used: bool,
    metrics: Metrics,
}

impl Shard {
    /// Direct writes between two yields: a shard of many sockets lets the tasks waiting on its
    /// worker (connects, reads) run between batches.
    const BATCH: usize = 512;

    async fn run<A: Adapter>(mut self, mut jobs: mpsc::UnboundedReceiver<Job<A>>) {
        while let Some(job) = jobs.recv().await {
            match job {
                Job::Snapshot { sockets, payload } => self.snapshot(sockets, &payload),
                Job::Page {
                    sockets,
                    event,
                    payload,
                } => self.page(sockets, event, &payload),
                Job::Ack { acks, payload } => self.ack(acks, &payload),
                Job::Broadcast { ns, event, payload } => {
                    self.broadcast(&ns, event, &payload).await;
                }
            }
        }
    }

    fn snapshot<A: Adapter>(&mut self, sockets: Vec<SocketRef<A>>, payload: &RawValue) {
        let mut frame = None;
        for socket in sockets {
            if let Some((handle, wire)) = direct_wire(&socket) {
                let frame = frame.get_or_insert_with(|| event_frame("online_users", payload));
                match wire.send(frame, WAITING_LIMIT) {
                    Sent::Written | Sent::Queued => {
                        self.metrics.emitted("online_users");
                        // Live only now: no change can reach it before its list.
                        self.direct.push(handle);
                    }
                    Sent::Full => close_too_slow(&socket, "snapshot"),
                    Sent::Closed => {}
                }
                continue;
            }
            if let Err(e) = socket.emit("online_users", payload) {
                too_slow_or_gone(&socket, &e, "snapshot");
                continue;
            }
            self.metrics.emitted("online_users");
            // Live only now: no change can reach it before its list.
            let room = self.rooms.room_for_next();
            self.rooms_used = true;
            socket.join(room.clone());
            // A close on another worker between the emit and the join has already taken the
            // socket out of every room (the socket is marked closed first): the join would put
            // it back for good.
            if !socket.connected() {
                socket.leave(room);
            }
        }
    }

    fn page<A: Adapter>(
        &mut self,
        sockets: Vec<SocketRef<A>>,
        event: &'static str,
        payload: &RawValue,
    ) {
        let mut frame = None;
        for socket in sockets {
            if let Some((_, wire)) = direct_wire(&socket) {
                let frame = frame.get_or_insert_with(|| event_frame(event, payload));
                match wire.send(frame, WAITING_LIMIT) {
                    Sent::Written | Sent::Queued => self.metrics.emitted(event),
                    Sent::Full => close_too_slow(&socket, "snapshot page"),
                    Sent::Closed => {}
                }
                continue;
            }
            match socket.emit(event, payload) {
                Ok(()) => self.metrics.emitted(event),
                Err(e) => too_slow_or_gone(&socket, &e, "snapshot page"),
            }
        }
    }

    fn ack<A: Adapter>(&mut self, acks: Vec<(SocketRef<A>, Ack<A>)>, payload: &RawValue) {
        for (socket, ack) in acks {
            let sent = match direct_wire(&socket) {
                // A client that asked for no answer gets none.
                Some((_, wire)) => ack.id.is_some_and(|id| {
                    matches!(
                        wire.send(&ack_frame(id, payload), WAITING_LIMIT),
                        Sent::Written | Sent::Queued
                    )
                }),
                None => ack.sender.send(payload).is_ok(),
            };
            if sent {
                self.metrics.emitted("get_online_users_ack");
            }
        }
    }

    async fn broadcast<A: Adapter>(
        &mut self,
        ns: &BroadcastOperators<A>,
        event: &'static str,
        payload: &RawValue,
    ) {
        if !self.direct.is_empty() {
            let frame = event_frame(event, payload);
            let mut dropped = 0usize;
            let mut i = 0;
            while i < self.direct.len() {
                let sent = self.direct[i]
                    .get()
                    .map_or(Sent::Closed, |wire| wire.send(&frame, WAITING_LIMIT));
                match sent {
                    Sent::Closed => {
                        self.direct.swap_remove(i);
                        continue;
                    }
                    Sent::Full => dropped += 1,
                    Sent::Written | Sent::Queued => {}
                }
                i += 1;
                if i % Self::BATCH == 0 {
                    tokio::task::yield_now().await;
                }
            }
            if dropped > 0 {
                // The next frame's `seq` tells each of them it missed one.
                tracing::debug!(event, dropped, "not sent to some slow sockets");
            }
        }
        if !self.rooms_used {
            return;
        }
        for room in &self.rooms.rooms {
            let to_room = ns.clone().local().to(room.clone());
            if let Err(e) = to_room.emit(event, payload).await {
                tracing::debug!(event, error = %e, "not sent to some local sockets");
            }
            // The room's writer tasks, just woken, run before the next room's: the worker's
            // run queue stays short, and a connect waiting for this worker is not held for the
            // whole broadcast.
            tokio::task::yield_now().await;
        }
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
    /// `direct`: served as the service serves (its listener and wire middleware), so the
    /// fan-out writes to these websocket-only sockets itself; otherwise every frame goes
    /// through socketioxide's queue and writer task.
    async fn server(
        direct: bool,
    ) -> (
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
        if direct {
            let app = app.layer(axum::middleware::map_request(
                crate::wire::direct_for_websocket_handshake,
            ));
            let listener = crate::listener::TcpNodelayListener {
                listener,
                stall: Duration::from_secs(60),
            };
            tokio::spawn(async move {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<WireHandle>(),
                )
                .await
            });
        } else {
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        (io, addr, rx)
    }

    fn fanout(io: &SocketIo<LocalAdapter>) -> Fanout<LocalAdapter> {
        Fanout::new(io.clone(), Metrics::new().expect("metrics"))
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
                            // The answer to a ping the client sent.
                            0xA => {}
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
    async fn ordered_per_socket_under_broadcasts_and_joins_direct() {
        ordered_per_socket_under_broadcasts_and_joins(true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ordered_per_socket_under_broadcasts_and_joins_queued() {
        ordered_per_socket_under_broadcasts_and_joins(false).await;
    }

    async fn ordered_per_socket_under_broadcasts_and_joins(direct: bool) {
        let _turn = crate::BIG_ALLOCATIONS.lock().await;
        let (io, addr, mut joined) = server(direct).await;
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
            fanout.broadcast("tick", &serde_json::json!({ "tick": tick }));
            tick += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for _ in 0..50 {
            fanout.broadcast("tick", &serde_json::json!({ "tick": tick }));
            tick += 1;
        }
        fanout.broadcast("done", &serde_json::json!({}));
        for reader in readers {
            let seen = tokio::time::timeout(WAIT, reader)
                .await
                .expect("reader done")
                .expect("reader ok");
            let (first, snapshot_at) = &seen[0];
            assert_eq!(first, "online_users", "snapshot first: {seen:?}");
            let (ticks, seqs): (Vec<u64>, Vec<u64>) = seen[1..]
                .iter()
                .map(|(name, arg)| {
                    assert_eq!(name, "tick");
                    (
                        arg["tick"].as_u64().expect("tick"),
                        arg["seq"].as_u64().expect("seq"),
                    )
                })
                .unzip();
            // Every broadcast after the snapshot, in order, none missing, numbered one by one
            // from the position the snapshot was made at.
            let from = snapshot_at.as_u64().expect("snapshot tick");
            assert_eq!(ticks, (from..tick).collect::<Vec<_>>());
            assert_eq!(seqs, (from + 1..tick + 1).collect::<Vec<_>>());
        }
    }

    /// A shard spreads its sockets over its rooms: with more sockets than all the shards' rooms
    /// together, each socket still gets every broadcast exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_socket_gets_each_broadcast_once_across_the_rooms_direct() {
        every_socket_gets_each_broadcast_once_across_the_rooms(true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_socket_gets_each_broadcast_once_across_the_rooms_queued() {
        every_socket_gets_each_broadcast_once_across_the_rooms(false).await;
    }

    async fn every_socket_gets_each_broadcast_once_across_the_rooms(direct: bool) {
        let _turn = crate::BIG_ALLOCATIONS.lock().await;
        let (io, addr, mut joined) = server(direct).await;
        let fanout = fanout(&io);
        let sockets = fanout.shards.len() * ShardRooms::ROOMS_PER_SHARD * 2 + 3;
        let mut clients = Vec::new();
        for _ in 0..sockets {
            clients.push(Client::connect(addr, None).await);
            let socket = tokio::time::timeout(WAIT, joined.recv())
                .await
                .expect("joined")
                .expect("socket");
            assert_eq!(fanout.snapshot([socket], &raw(&0)).len(), 1);
        }
        for n in 0..3 {
            fanout.broadcast("frame", &serde_json::json!({ "n": n }));
        }
        fanout.broadcast("done", &serde_json::json!({}));
        for mut c in clients {
            let mut seen = Vec::new();
            loop {
                match tokio::time::timeout(WAIT, c.event()).await.expect("frame") {
                    (name, _) if name == "done" => break,
                    (name, arg) if name == "frame" => seen.push(arg["n"].as_u64().expect("n")),
                    (name, _) => assert_eq!(name, "online_users"),
                }
            }
            assert_eq!(seen, vec![0, 1, 2]);
        }
    }

    /// A socket whose client stopped reading fills its own buffers; the others get every frame,
    /// in order, and the broadcasts never wait for it. What it reads later is whole and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_socket_delays_no_one_direct() {
        a_slow_socket_delays_no_one(true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_socket_delays_no_one_queued() {
        a_slow_socket_delays_no_one(false).await;
    }

    async fn a_slow_socket_delays_no_one(direct: bool) {
        let _turn = crate::BIG_ALLOCATIONS.lock().await;
        let (io, addr, mut joined) = server(direct).await;
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
            fanout.broadcast("frame", &payload);
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

    /// A socket that stops reading while its snapshot's pages are queued: once a page no longer
    /// fits in its queue the socket's transport is closed (its client reconnects for a fresh
    /// snapshot) instead of staying open with a partial list for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_socket_too_slow_for_its_pages_is_closed_direct() {
        a_socket_too_slow_for_its_pages_is_closed(true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_socket_too_slow_for_its_pages_is_closed_queued() {
        a_socket_too_slow_for_its_pages_is_closed(false).await;
    }

    async fn a_socket_too_slow_for_its_pages_is_closed(direct: bool) {
        let _turn = crate::BIG_ALLOCATIONS.lock().await;
        let (io, addr, mut joined) = server(direct).await;
        let fanout = fanout(&io);
        let mut slow = Client::connect(addr, Some(4096)).await;
        let socket = tokio::time::timeout(WAIT, joined.recv())
            .await
            .expect("joined")
            .expect("socket");
        // Kept as a permit if it comes before anyone waits.
        let gone = Arc::new(tokio::sync::Notify::new());
        let notify = gone.clone();
        socket.on_disconnect(move || {
            let notify = notify.clone();
            async move { notify.notify_one() }
        });
        let mut paged = fanout.snapshot([socket], &raw(&()));
        let page = raw(&serde_json::json!({ "filler": "p".repeat(64 << 10) }));
        // More than its queue and both kernel buffers hold (the server's send buffer grows to
        // a few MiB).
        for _ in 0..400 {
            fanout.page(&mut paged, "online_users_page", &page);
            tokio::task::yield_now().await;
        }
        // The client reads what was written before the close, then the connection ends, well
        // before the heartbeat would end it (it answers no ping).
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            let mut chunk = [0u8; 16384];
            loop {
                match slow.tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the slow socket was left open");
        assert!(
            tokio::time::timeout(WAIT, gone.notified()).await.is_ok(),
            "the server never saw the socket disconnect"
        );
    }

    /// A websocket-only session on the service's listener is written to directly; the same
    /// server's polling session, and any session on a plain listener, through socketioxide.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_websocket_only_sessions_are_written_directly() {
        let (_io, addr, mut joined) = server(true).await;
        let _ws = Client::connect(addr, None).await;
        let socket = joined.recv().await.expect("socket");
        assert!(
            direct_wire(&socket).is_some(),
            "websocket-only session not direct"
        );

        // A polling session: the handshake, then the Socket.IO connect, each its own request.
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let get =
            format!("GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        tcp.write_all(get.as_bytes()).await.expect("handshake");
        let mut head = vec![0u8; 4096];
        let n = tcp.read(&mut head).await.expect("open packet");
        let text = String::from_utf8_lossy(&head[..n]).to_string();
        let sid = text
            .split("\"sid\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("sid in the open packet")
            .to_string();
        let post = format!(
            "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n40"
        );
        tcp.write_all(post.as_bytes())
            .await
            .expect("connect packet");
        let socket = tokio::time::timeout(WAIT, joined.recv())
            .await
            .expect("polling socket in time")
            .expect("socket");
        assert!(
            direct_wire(&socket).is_none(),
            "polling session written directly"
        );

        let (_io, addr, mut joined) = server(false).await;
        let _ws = Client::connect(addr, None).await;
        let socket = joined.recv().await.expect("socket");
        assert!(direct_wire(&socket).is_none(), "no wire, yet direct");
    }

    /// The fan-out encodes what it writes itself exactly as socketioxide does: the same events
    /// and acks reach a direct and a queued client byte for byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_frames_are_socketioxides_frames() {
        let _turn = crate::BIG_ALLOCATIONS.lock().await;
        let mut seen = Vec::new();
        for direct in [true, false] {
            let (_io, addr, mut joined) = server(direct).await;
            let fanout = fanout(&_io);
            let mut client = Client::connect(addr, None).await;
            let socket = joined.recv().await.expect("socket");
            let (tx, mut asked) = mpsc::unbounded_channel();
            socket.on(
                "get_online_users",
                move |socket: SocketRef<LocalAdapter>, ack: Ack<LocalAdapter>| {
                    let _ = tx.send((socket, ack));
                    async {}
                },
            );
            fanout.snapshot(
                [socket],
                &raw(&serde_json::json!({ "onlineUsers": ["é\"\\"] })),
            );
            fanout.broadcast("presence_diff", &serde_json::json!({ "joined": [1] }));
            // `42` + an ack id: the client asks for an answer.
            client.send_text(r#"4217["get_online_users"]"#).await;
            let (socket, ack) = tokio::time::timeout(WAIT, asked.recv())
                .await
                .expect("asked in time")
                .expect("ack");
            fanout.ack(
                [(socket, ack)],
                &raw(&serde_json::json!({ "onlineUsers": [] })),
            );
            let mut texts = Vec::new();
            while texts.len() < 3 {
                match client.text().await.as_str() {
                    "2" => client.send_text("3").await,
                    text => texts.push(text.to_string()),
                }
            }
            // The numbering differs from run to run; the rest must not.
            let epoch = |t: &str| t.split("\"epoch\"").next().unwrap_or_default().to_string();
            seen.push(texts.iter().map(|t| epoch(t)).collect::<Vec<_>>());
        }
        assert_eq!(
            seen[0], seen[1],
            "direct (left) and socketioxide's (right) frames"
        );
        assert!(
            seen[0][2].starts_with("4317["),
            "not an ack: {}",
            seen[0][2]
        );
    }

    fn allocated() -> usize {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().expect("epoch");
        stats::allocated::read().expect("allocated")
    }

    /// After a frame much larger than usual, each socket gives the room it took back (the
    /// vendored tungstenite's write buffer, engineioxide's queue entry, the shared encoding).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_is_returned_after_a_large_frame_direct() {
        memory_is_returned_after_a_large_frame(true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_is_returned_after_a_large_frame_queued() {
        memory_is_returned_after_a_large_frame(false).await;
    }

    async fn memory_is_returned_after_a_large_frame(direct: bool) {
        let _turn = crate::BIG_ALLOCATIONS.lock().await;
        let (io, addr, mut joined) = server(direct).await;
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
        let big = serde_json::json!({ "big": "y".repeat(1 << 20) });
        fanout.broadcast("big", &big);
        drop(big);
        for c in &mut clients {
            let (name, arg) = c.event().await;
            assert_eq!(name, "big");
            assert_eq!(arg["big"].as_str().map(str::len), Some(1 << 20));
        }
        // Every client has read the whole frame, so every server socket has written it. A
        // shard may still be going through its other rooms: a small broadcast after it, once
        // read by every client, says both shards are done with the large one.
        fanout.broadcast("small", &serde_json::json!({}));
        for c in &mut clients {
            assert_eq!(c.event().await.0, "small");
        }
        let after = allocated();
        let kept = after.saturating_sub(before);
        assert!(
            kept < SOCKETS * (1 << 20) / 4,
            "{kept} bytes still allocated after a 1 MiB frame to {SOCKETS} sockets"
        );
    }
}
