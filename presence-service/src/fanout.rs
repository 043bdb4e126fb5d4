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
