// PATCHED (edge-gateway): this module is not part of pingora-proxy 0.9.1.
//
// An upgraded HTTP/1 connection (a WebSocket) that stays inside Pingora keeps the whole
// request machinery alive for its lifetime: the boxed proxy future, the connection task, both
// HTTP sessions with their header and 64 KiB body buffers, and the task pipes. For thousands of
// mostly idle WebSockets that is most of the proxy's memory. A `ProxyHttp` that opts in with
// `detach_upgrade` gets the two bare connections once the `101` has been written, and relays
// them however it likes; Pingora's request then ends (after `logging`) and frees all of that.

use bytes::Bytes;
use pingora_core::protocols::Stream;

/// Both ends of a successful HTTP/1 upgrade, handed out of Pingora after the `101`.
pub struct DetachedUpgrade {
    /// The client's connection (TLS already terminated when the listener has TLS).
    pub downstream: Stream,
    /// The upstream connection; never returned to the connection pool.
    pub upstream: Stream,
    /// Bytes the client sent after its request that Pingora had already read: owed upstream.
    pub to_upstream: Bytes,
    /// Bytes the upstream sent after its `101` that Pingora had already read: owed downstream.
    pub to_downstream: Bytes,
}

/// Set by the HTTP/1 proxy once the `101` reached the client; completed by the caller that owns
/// the upstream session, and consumed by `finish`, which owns the downstream one.
pub(crate) struct PendingDetach {
    pub upstream: Option<Stream>,
    pub to_downstream: Bytes,
}

/// At most this many reads drain what is already buffered or readable when detaching; the rest
/// is left on the socket for the application's relay.
pub(crate) const MAX_DRAIN_READS: usize = 8;
