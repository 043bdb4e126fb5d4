//! A connection the gateway has accepted gets its first request answered, even when the
//! gateway stops listening before that request has fully arrived.
//!
//! When Pingora stops listening (SIGTERM once its grace is over, SIGQUIT once the successor
//! holds the sockets) it ends every HTTP/1 connection that is waiting for a request head. For
//! a keep-alive connection between two requests that is how idle clients are let go (the
//! linger has already told busy ones to close, see `drain`). For a connection accepted a moment
//! earlier it drops a request that is already on its way: the client connected to a listening
//! socket, wrote its request and reads a reset. A polling Socket.IO client, which opens a
//! connection per request, then loses its session across a binary upgrade.
//!
//! So each new HTTP/1 connection is counted until its first request head has been read or it
//! ends, and the service's clean-up (which is what tells Pingora's waiting connections to go)
//! first waits for those first requests, for at most [`FIRST_REQUEST_WAIT`]. A TLS connection
//! reaches the application only once its handshake is done, and Pingora has no hook that lives
//! from accept to there; so a listener that saw a ClientHello within that time also waits for
//! it, by the clock. The drain waits for every listener's clean-up, so the process does not
//! exit under them.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;

use crate::drain::{AwaitingFirstRequest, Drain};

/// How long a connection accepted before the stop has to deliver its first request head: a
/// request already sent arrives within a round trip; a client that only opened a connection
/// in case it needs one (a browser's preconnect) is not waited for longer than this.
pub const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// The connection this task serves, while its first request head is outstanding. Pingora
    /// serves an HTTP/1 connection's requests one after another in the task that accepted it.
    static AWAITING: Cell<Option<AwaitingFirstRequest>>;
}

/// Marks the current connection's first request head as read (Pingora calls the proxy's
/// `new_ctx` right after reading a head). Later requests, HTTP/2 streams and the admin
/// listener have nothing to mark.
pub fn request_head_read() {
    let _ = AWAITING.try_with(|awaiting| drop(awaiting.take()));
}

/// Wraps a listener's application (the proxy) to count its connections' first requests.
pub struct AnswerFirstRequests<A> {
    inner: Arc<A>,
    drain: Arc<Drain>,
}

impl<A> AnswerFirstRequests<A> {
    pub fn new(inner: A, drain: Arc<Drain>) -> Self {
        drain.listener_opened();
        Self {
            inner: Arc::new(inner),
            drain,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for AnswerFirstRequests<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // HTTP/2 stops with GOAWAY, which lets every stream the client already sent finish.
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        let awaiting = Cell::new(Some(self.drain.connection_accepted()));
        AWAITING
            .scope(awaiting, self.inner.process_new(stream, shutdown))
            .await
    }

    async fn cleanup(&self) {
        // The listener has stopped accepting, so the count only goes down from here.
        self.drain.first_requests_read(FIRST_REQUEST_WAIT).await;
        self.inner.cleanup().await;
        self.drain.listener_cleaned_up();
    }
}
