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

/// What one write may gather: several TLS records' plaintext, so a burst leaves in one write
/// call (rustls then takes it as full records). One buffer per worker thread, not per tunnel.
const SCRATCH_BYTES: usize = 64 * 1024;

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
    /// The source failed after a read that is still owed: reported once that is written.
    source_error: Option<io::Error>,
    finished: bool,
    relayed: u64,
}

impl Direction {
    fn new(owed: Bytes) -> Self {
        Direction {
            owed,
            unflushed: false,
            source_done: false,
            source_error: None,
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
            // An empty `Bytes` still holds its allocation (the bytes owed at the start can be
            // large): the tunnel must not keep it for its lifetime.
            self.owed = Bytes::new();
            if self.unflushed {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                self.unflushed = false;
            }
            if let Some(e) = self.source_error.take() {
                return Poll::Ready(Err(e));
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

    /// Everything the source has ready right now (up to the scratch buffer), gathered into the
    /// thread's scratch buffer and written on in one write: under TLS that is one write call
    /// into rustls, so a burst of small frames (a snapshot's pages, a busy broadcast) leaves as
    /// full records in one syscall instead of one record and one syscall per read. It never
    /// waits for more: a read that would block ends the gathering. What the sink does not take
    /// now is kept in `owed`.
    fn poll_read_and_write(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Stream,
        to: &mut Stream,
    ) -> Poll<io::Result<()>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            while buf.remaining() > 0 {
                let before = buf.filled().len();
                match Pin::new(&mut *from).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().len() == before => {
                        self.source_done = true;
                        break;
                    }
                    Poll::Ready(Ok(())) => {}
                    // What was read before the error is still relayed; the error ends the
                    // direction once it is written.
                    Poll::Ready(Err(e)) if before > 0 => {
                        self.source_error = Some(e);
                        break;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending if before > 0 => break,
                    Poll::Pending => return Poll::Pending,
                }
            }
            let data = buf.filled();
            if data.is_empty() {
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
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket, TcpStream};

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

    /// A connected loopback pair whose four socket buffers are all `bytes` (before the kernel's
    /// doubling), so what the kernel may hold in between is known.
    async fn small_buffered_pair(bytes: u32) -> (TcpStream, TcpStream) {
        let listen = TcpSocket::new_v4().expect("socket");
        listen.set_recv_buffer_size(bytes).expect("rcvbuf");
        listen.set_send_buffer_size(bytes).expect("sndbuf");
        listen
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = listen.listen(8).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let connect = TcpSocket::new_v4().expect("socket");
        connect.set_recv_buffer_size(bytes).expect("rcvbuf");
        connect.set_send_buffer_size(bytes).expect("sndbuf");
        let (ours, theirs) = tokio::join!(connect.connect(addr), listener.accept());
        (ours.expect("connect"), theirs.expect("accept").0)
    }

    /// A TLS connection over `tcp`: (the relay's end, a Pingora TLS stream as the gateway's
    /// client side is one; the test's raw TCP end and its rustls session after the handshake).
    /// The test reads the records itself, so it can count them.
    async fn tls_pair(
        (ours, theirs): (TcpStream, TcpStream),
    ) -> (Stream, TcpStream, rustls::ServerConnection) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = pingora::tls::TlsConnector::from(Arc::new(client));
        let acceptor = pingora::tls::TlsAcceptor::from(Arc::new(server));
        let l4 = pingora::protocols::l4::stream::Stream::from(ours);
        let (relay_end, peer) = tokio::join!(
            pingora::protocols::tls::client::handshake(&connector, "localhost", l4),
            acceptor.accept(theirs)
        );
        let (tcp, session) = peer.expect("accept").into_inner();
        (Box::new(relay_end.expect("handshake")), tcp, session)
    }

    /// The TLS peer's view: reads raw bytes, counts the application-data records, decrypts.
    struct TlsPeer {
        tcp: TcpStream,
        session: rustls::ServerConnection,
        raw: Vec<u8>,
        records: usize,
    }

    impl TlsPeer {
        /// Closes like a TLS client should: close_notify, then FIN.
        async fn close(&mut self) {
            self.session.send_close_notify();
            let mut out = Vec::new();
            while self.session.wants_write() {
                self.session.write_tls(&mut out).expect("write_tls");
            }
            self.tcp.write_all(&out).await.expect("close_notify");
            self.tcp.shutdown().await.expect("shutdown");
        }

        /// Reads until `want` plaintext bytes have arrived (or EOF), appending them to `out`.
        async fn read_plaintext(&mut self, want: usize, out: &mut Vec<u8>) {
            let mut chunk = vec![0u8; 64 * 1024];
            while out.len() < want {
                let n = self.tcp.read(&mut chunk).await.expect("read");
                assert!(n > 0, "EOF after {} of {want} bytes", out.len());
                self.raw.extend_from_slice(&chunk[..n]);
                // Whole records only, each counted once: a 5-byte header with the length.
                let mut whole = 0;
                while self.raw.len() >= whole + 5 {
                    let len = u16::from_be_bytes([self.raw[whole + 3], self.raw[whole + 4]]);
                    if self.raw.len() < whole + 5 + len as usize {
                        break;
                    }
                    assert_eq!(self.raw[whole], 23, "application data only");
                    self.records += 1;
                    whole += 5 + len as usize;
                }
                let mut records = &self.raw[..whole];
                while !records.is_empty() {
                    self.session.read_tls(&mut records).expect("read_tls");
                    self.session.process_new_packets().expect("a valid record");
                    // Taken out as it comes, so rustls's plaintext buffer never fills.
                    match std::io::Read::read_to_end(&mut self.session.reader(), out) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("plaintext: {e}"),
                    }
                }
                self.raw.drain(..whole);
            }
        }
    }

    /// Small WebSocket-like frames carrying their sequence number, like a broadcast's.
    fn frames(count: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in 0..count {
            let payload = format!("42[\"presence_diff\",{{\"seq\":{seq}}}]");
            out.push(0x81);
            out.push(payload.len() as u8);
            out.extend_from_slice(payload.as_bytes());
        }
        out
    }

    #[tokio::test]
    async fn a_burst_of_small_frames_arrives_whole_and_in_order_in_few_tls_records() {
        let (client, tcp, session) = tls_pair(small_buffered_pair(1 << 20).await).await;
        let mut peer = TlsPeer {
            tcp,
            session,
            raw: Vec::new(),
            records: 0,
        };
        let (upstream, mut upstream_peer) = pair().await;
        let tunnel = Tunnel {
            client,
            upstream,
            to_upstream: Bytes::new(),
            to_client: Bytes::new(),
        };
        let relay = tokio::spawn(relay(tunnel, Duration::from_secs(30)));

        // Bursts of different sizes, each in one write, one after the other without waiting:
        // whatever the relay finds readable at once it gathers, never past what it has.
        let mut sent = Vec::new();
        let mut small_frames = 0;
        for count in [1, 3, 50, 400, 3000, 7] {
            let burst = frames(count);
            upstream_peer.write_all(&burst).await.expect("write");
            sent.extend_from_slice(&burst);
            small_frames += count as usize;
        }
        let mut got = Vec::new();
        peer.read_plaintext(sent.len(), &mut got).await;
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "every frame whole and in order");
        // One record per read at most, and a read takes all that is there: nowhere near one
        // record per frame.
        assert!(
            peer.records * 20 < small_frames,
            "{} records for {small_frames} frames",
            peer.records
        );

        // One frame alone goes at once: nothing waits for more.
        let one = frames(1);
        upstream_peer.write_all(&one).await.expect("write");
        let mut got = Vec::new();
        peer.read_plaintext(one.len(), &mut got).await;
        assert_eq!(got, one);

        drop(upstream_peer);
        peer.close().await;
        let (traffic, result) = relay.await.expect("relay task");
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(traffic.to_client, (sent.len() + one.len()) as u64);
    }

    #[tokio::test]
    async fn a_reader_that_stops_reading_holds_the_writer_back_instead_of_growing_the_relay() {
        // Every socket buffer small, so the bytes the kernel may hold are known: four socket
        // buffers (doubled by the kernel), the relay's one gathered write, rustls's buffer.
        const SOCKET_BUF: u32 = 32 * 1024;
        let (client, tcp, session) = tls_pair(small_buffered_pair(SOCKET_BUF).await).await;
        let mut peer = TlsPeer {
            tcp,
            session,
            raw: Vec::new(),
            records: 0,
        };
        let (upstream, mut upstream_peer) = small_buffered_pair(SOCKET_BUF).await;
        let tunnel = Tunnel {
            client,
            upstream: Box::new(pingora::protocols::l4::stream::Stream::from(upstream)),
            to_upstream: Bytes::new(),
            to_client: Bytes::new(),
        };
        let relay = tokio::spawn(relay(tunnel, Duration::from_secs(60)));

        const TOTAL: usize = 16 << 20;
        let pattern: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        let accepted = Arc::new(AtomicU64::new(0));
        let writer = {
            let (pattern, accepted) = (pattern.clone(), accepted.clone());
            tokio::spawn(async move {
                for chunk in pattern.chunks(4096) {
                    upstream_peer.write_all(chunk).await.expect("write");
                    accepted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                upstream_peer
            })
        };
        // Nobody reads: the writer must come to a stop. Its being blocked is not an event one
        // can await, so watch its progress until it stays put (bounded).
        let mut last = u64::MAX;
        let mut still = 0;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = accepted.load(Ordering::Relaxed);
            still = if now == last { still + 1 } else { 0 };
            last = now;
            if still == 6 {
                break;
            }
        }
        assert_eq!(still, 6, "the writer never stopped: {last} bytes taken");
        // A few hundred KiB at most (the socket buffers, the upstream stream's read buffer, one
        // gathered write, rustls's buffer); a relay that kept reading would take all of it.
        let bound = 1 << 20;
        assert!(
            last <= bound,
            "{last} bytes taken with nobody reading (bound {bound}): the relay buffered them"
        );

        // Reading again: everything arrives, in order, and the writer finishes.
        let mut got = Vec::with_capacity(TOTAL);
        peer.read_plaintext(TOTAL, &mut got).await;
        assert!(got == pattern, "the stream arrived whole and in order");
        let upstream_peer = writer.await.expect("writer");
        drop(upstream_peer);
        peer.close().await;
        let (traffic, result) = relay.await.expect("relay task");
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(traffic.to_client, TOTAL as u64);
    }
}
