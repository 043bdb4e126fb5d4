//! The service's TCP listener.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::TcpListener;

use crate::wire::{WireHandle, WireIo};

/// The service's listener: tokio's, with TCP_NODELAY on every connection (presence frames are
/// small and latency-bound: none is held back for Nagle), each connection's IO a [`WireIo`] so
/// the fan-out can write to its websocket (`wire.rs`), and which gives up on a client that
/// takes no byte for `stall`.
pub struct TcpNodelayListener {
    pub listener: TcpListener,
    pub stall: Duration,
}

impl Listener for TcpNodelayListener {
    type Io = WireIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (WireIo, SocketAddr) {
        // tokio's listener retries accept errors itself (with a pause on fd exhaustion).
        let (io, addr) = Listener::accept(&mut self.listener).await;
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        (WireIo::new(io, self.stall), addr)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Each request carries its connection's wire (as axum's connection info) up to
/// `wire::direct_for_websocket_handshake`, which keeps it only for websocket handshakes.
impl Connected<IncomingStream<'_, TcpNodelayListener>> for WireHandle {
    fn connect_info(stream: IncomingStream<'_, TcpNodelayListener>) -> Self {
        stream.io().handle()
    }
}
