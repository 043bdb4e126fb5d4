//! The service's TCP listener.

use std::net::SocketAddr;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};

/// The service's listener: tokio's, with TCP_NODELAY on every connection (presence frames are
/// small and latency-bound: none is held back for Nagle), and the socket as connection info.
pub struct TcpNodelayListener(pub TcpListener);

impl Listener for TcpNodelayListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        // tokio's listener retries accept errors itself (with a pause on fd exhaustion).
        let (io, addr) = Listener::accept(&mut self.0).await;
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        (io, addr)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
