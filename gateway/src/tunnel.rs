//! The relay of an upgraded connection (a WebSocket) once it has left Pingora.
//!
//! Thousands of WebSockets sit idle most of the time, so what an idle tunnel holds is what the
//! gateway's memory is made of. This relay holds no buffer while idle: a read goes into one
//! scratch buffer per worker thread and is written on at once; only bytes the other side cannot
//! take right now are copied into the tunnel (and freed when written). An idle tunnel is its two
//! connections, two empty `Bytes` and a timer.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use pingora::protocols::Stream;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Large enough for a TLS record's plaintext, so one read moves a whole record.
const SCRATCH_BYTES: usize = 16 * 1024;

/// Reads per direction before yielding to other tasks, so one busy tunnel cannot starve a worker.
const READS_PER_POLL: usize = 16;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// Both connections of an upgraded request, with the bytes each side is already owed.
pub struct Tunnel {
    pub client: Stream,
    pub upstream: Stream,
    pub to_upstream: Bytes,
    pub to_client: Bytes,
}

/// Why a tunnel ended other than by both sides closing.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("no traffic either way for {0:?}")]
    Idle(Duration),
    #[error("client to upstream: {0}")]
    ClientToUpstream(#[source] io::Error),
    #[error("upstream to client: {0}")]
    UpstreamToClient(#[source] io::Error),
    #[error("closed by the drain (this process is shutting down or being upgraded)")]
    Drained,
}

/// Bytes relayed each way (including the bytes owed at the start).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Counts a tunnel in `gateway_upgraded_connections` for as long as it lives, however it ends.
pub struct OpenTunnel(IntGauge);

impl OpenTunnel {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        OpenTunnel(gauge.clone())
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One direction of the relay.
struct Direction {
    /// Read but not yet written.
    owed: Bytes,
    unflushed: bool,
    /// The source reached EOF; the sink is shut down once everything owed is written.
    source_done: bool,
    finished: bool,
    relayed: u64,
}

impl Direction {
    fn new(owed: Bytes) -> Self {
        Direction {
            owed,
            unflushed: false,
            source_done: false,
            finished: false,
            relayed: 0,
        }
    }

    /// Moves bytes from `from` to `to` until one of them would block. Ready once the source
    /// has ended and the sink is shut down. `moved` is set when any byte went either way.
    fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Stream,
        to: &mut Stream,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        for _ in 0..READS_PER_POLL {
            while !self.owed.is_empty() {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.owed))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.owed.advance(n);
                self.relayed += n as u64;
                self.unflushed = true;
                *moved = true;
            }
            if self.unflushed {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                self.unflushed = false;
            }
            if self.source_done {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_read_and_write(cx, from, to))?;
            *moved = true;
        }
        // More may be readable: come back after other tasks had their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One read into the thread's scratch buffer, written on at once; what the sink does not
    /// take now is kept in `owed`.
    fn poll_read_and_write(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Stream,
        to: &mut Stream,
    ) -> Poll<io::Result<()>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut *from).poll_read(cx, &mut buf))?;
            let data = buf.filled();
            if data.is_empty() {
                self.source_done = true;
                return Poll::Ready(Ok(()));
            }
            let written = match Pin::new(&mut *to).poll_write(cx, data) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => 0,
            };
            self.relayed += written as u64;
            self.unflushed |= written > 0;
            if written < data.len() {
                self.owed = Bytes::copy_from_slice(&data[written..]);
            }
            Poll::Ready(Ok(()))
        })
    }
}

/// Relays until both sides have closed, either side fails, or nothing moved for `idle`.
pub async fn relay(tunnel: Tunnel, idle: Duration) -> (Traffic, Result<(), TunnelError>) {
    relay_until(tunnel, idle, std::future::pending()).await
}

/// Like [`relay`], and also ends (dropping both connections) when `stop` resolves: the paced
/// drain of a process that is shutting down (`drain`).
pub async fn relay_until(
    tunnel: Tunnel,
    idle: Duration,
    stop: impl Future<Output = ()>,
) -> (Traffic, Result<(), TunnelError>) {
    tokio::pin!(stop);
    let Tunnel {
        mut client,
        mut upstream,
        to_upstream,
        to_client,
    } = tunnel;
    let mut up = Direction::new(to_upstream);
    let mut down = Direction::new(to_client);
    let mut last_moved = Instant::now();
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);

    let result = poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(TunnelError::Drained));
        }
        let mut moved = false;
        if !up.finished {
            if let Poll::Ready(Err(e)) = up.poll_relay(cx, &mut client, &mut upstream, &mut moved) {
                return Poll::Ready(Err(TunnelError::ClientToUpstream(e)));
            }
        }
        if !down.finished {
            if let Poll::Ready(Err(e)) = down.poll_relay(cx, &mut upstream, &mut client, &mut moved)
            {
                return Poll::Ready(Err(TunnelError::UpstreamToClient(e)));
            }
        }
        if up.finished && down.finished {
            return Poll::Ready(Ok(()));
        }
        if moved {
            last_moved = Instant::now();
        }
        // The timer is re-armed only when it fires, not on every message.
        while timer.as_mut().poll(cx).is_ready() {
            if last_moved.elapsed() >= idle {
                return Poll::Ready(Err(TunnelError::Idle(idle)));
            }
            timer.as_mut().reset(last_moved + idle);
        }
        Poll::Pending
    })
    .await;
    let traffic = Traffic {
        to_upstream: up.relayed,
        to_client: down.relayed,
    };
    (traffic, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected loopback pair: (the end given to the relay, the end the test drives).
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let relay_end = pingora::protocols::l4::stream::Stream::from(theirs.expect("accept").0);
        (Box::new(relay_end), ours.expect("connect"))
    }

    #[tokio::test]
    async fn relays_both_ways_with_the_owed_bytes_first_and_ends_when_both_close() {
        let (client, mut client_peer) = pair().await;
        let (upstream, mut upstream_peer) = pair().await;
        let tunnel = Tunnel {
            client,
            upstream,
            to_upstream: Bytes::from_static(b"early "),
            to_client: Bytes::from_static(b"open "),
        };
        let relay = tokio::spawn(relay(tunnel, Duration::from_secs(30)));

        client_peer.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 10];
        upstream_peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"early ping");

        // More than the scratch buffer in one go, so partial writes and `owed` are exercised.
        let big = vec![7u8; 3 * SCRATCH_BYTES + 5];
        let writer = {
            let big = big.clone();
            tokio::spawn(async move {
                upstream_peer.write_all(&big).await.expect("write big");
                upstream_peer.shutdown().await.expect("shutdown");
                upstream_peer
            })
        };
        let mut received = Vec::new();
        client_peer
            .read_to_end(&mut received)
            .await
            .expect("read to end");
        assert_eq!(&received[..5], b"open ");
        assert_eq!(&received[5..], &big[..]);
        let _upstream_peer = writer.await.expect("writer");

        client_peer.shutdown().await.expect("client shutdown");
        let (traffic, result) = relay.await.expect("relay task");
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            traffic,
            Traffic {
                to_upstream: 10,
                to_client: 5 + big.len() as u64
            }
        );
    }

    #[tokio::test]
    async fn a_silent_tunnel_ends_after_the_idle_time_and_traffic_defers_it() {
        let (client, mut client_peer) = pair().await;
        let (upstream, mut upstream_peer) = pair().await;
        let tunnel = Tunnel {
            client,
            upstream,
            to_upstream: Bytes::new(),
            to_client: Bytes::new(),
        };
        let idle = Duration::from_millis(300);
        let started = Instant::now();
        let relay = tokio::spawn(relay(tunnel, idle));
        // Traffic at 200 ms: the tunnel must then live until at least 500 ms.
        tokio::time::sleep(Duration::from_millis(200)).await;
        client_peer.write_all(b"x").await.expect("write");
        let mut one = [0u8; 1];
        upstream_peer.read_exact(&mut one).await.expect("read");
        let (_, result) = relay.await.expect("relay task");
        assert!(matches!(result, Err(TunnelError::Idle(_))), "{result:?}");
        assert!(started.elapsed() >= Duration::from_millis(500));
        // Both connections were dropped: the peers see EOF.
        assert_eq!(client_peer.read(&mut one).await.expect("eof"), 0);
        assert_eq!(upstream_peer.read(&mut one).await.expect("eof"), 0);
    }
}
