//! Tells the Socket.IO transport which TCP socket a request came in on, so that a broadcast can
//! write its frame straight to each idle websocket instead of waking one writer task per socket
//! (vendored engineioxide, `ConnectionFd`). At 9000 sockets that path costs about a third of the
//! CPU of the queued one, and a presence change reaches everyone that much sooner.
//!
//! Only for this server's own plain TCP listener: the bytes written to the socket must be the
//! websocket's bytes, which would not hold behind TLS or any other wrapping stream.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::http::Version;
use axum::serve::{IncomingStream, Listener};
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

/// The raw socket of an accepted connection, as axum's per-connection info.
#[derive(Debug, Clone, Copy)]
pub struct ConnFd(RawFd);

impl Connected<IncomingStream<'_, TcpNodelayListener>> for ConnFd {
    fn connect_info(stream: IncomingStream<'_, TcpNodelayListener>) -> Self {
        ConnFd(stream.io().as_raw_fd())
    }
}

/// Moves the connection's socket from axum's extension to the one engineioxide reads. Only for
/// HTTP/1.1: an upgraded HTTP/1.1 connection is the bare socket, while a websocket over HTTP/2
/// would be one stream among others on it.
pub async fn hand_to_transport(mut req: Request) -> Request {
    if let Some(ConnectInfo(ConnFd(fd))) = req.extensions_mut().remove::<ConnectInfo<ConnFd>>() {
        if req.version() == Version::HTTP_11 {
            req.extensions_mut().insert(engineioxide::ConnectionFd(fd));
        }
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_moves_to_the_transports_extension() {
        let mut req = Request::new(axum::body::Body::empty());
        req.extensions_mut().insert(ConnectInfo(ConnFd(7)));
        let req = hand_to_transport(req).await;
        assert!(req.extensions().get::<ConnectInfo<ConnFd>>().is_none());
        assert_eq!(
            req.extensions()
                .get::<engineioxide::ConnectionFd>()
                .map(|f| f.0),
            Some(7)
        );
    }

    #[tokio::test]
    async fn not_over_http2() {
        let mut req = Request::new(axum::body::Body::empty());
        *req.version_mut() = Version::HTTP_2;
        req.extensions_mut().insert(ConnectInfo(ConnFd(7)));
        let req = hand_to_transport(req).await;
        assert!(req
            .extensions()
            .get::<engineioxide::ConnectionFd>()
            .is_none());
    }

    #[tokio::test]
    async fn without_a_socket_nothing_is_added() {
        let req = hand_to_transport(Request::new(axum::body::Body::empty())).await;
        assert!(req
            .extensions()
            .get::<engineioxide::ConnectionFd>()
            .is_none());
    }
}
