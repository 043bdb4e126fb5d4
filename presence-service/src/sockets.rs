//! Socket.IO glue: who may connect (the assertion, the per-user cap) and what a socket may ask.
//! Presence rules live in the model; this file only translates socket lifecycles into it.

use std::sync::Arc;

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;
use socketioxide_core::adapter::DefinedAdapter;

use crate::announcer::Presence;
use crate::handshake_check::CheckedAssertion;
use crate::metrics::Metrics;
use crate::model::User;
use crate::trust::Trust;

/// Shared by every handler.
pub struct SocketContext<A: Adapter> {
    pub trust: Trust,
    pub presence: Arc<Presence<A>>,
    pub metrics: Metrics,
}

/// A socket's place in the presence model: taken when the socket is admitted, given back when
/// the socket object is dropped. Socketioxide drops a socket once nothing refers to it any more
/// (closed, removed from its namespace, no send under way), whichever way it ended: a normal
/// disconnect, a close before the connect ack went out, or a close before the connect handler
/// ran. Counting by ownership rather than by a disconnect callback leaves no window in which a
/// socket that closed early is never uncounted (a ghost that keeps its user online).
struct SocketLease<A: Adapter> {
    presence: Arc<Presence<A>>,
    user_id: String,
}

impl<A: Adapter> Drop for SocketLease<A> {
    fn drop(&mut self) {
        self.presence.disconnect(&self.user_id);
    }
}

/// Why a connection was refused; the text is the `connect_error` message clients see.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    TooManySockets(#[from] crate::model::TooManySockets),
}

/// The room of every socket opened under one gateway session (`sid` claim), so that a logout can
/// disconnect them all, on every node.
pub fn session_room(session: &str) -> String {
    format!("sid:{session}")
}

/// Registers the default namespace. Returns the adapter's init result (Redis: a future that
/// subscribes to the cluster channels and must be awaited).
pub fn register<A: Adapter + DefinedAdapter>(
    io: &SocketIo<A>,
    ctx: Arc<SocketContext<A>>,
) -> A::InitRes {
    let on_connect = {
        let ctx = ctx.clone();
        move |socket: SocketRef<A>| {
            let ctx = ctx.clone();
            async move { connected(ctx, socket) }
        }
    };
    let authenticate = move |socket: SocketRef<A>| {
        let ctx = ctx.clone();
        async move { admit(&ctx, &socket).await }
    };
    io.ns("/", on_connect.with(authenticate))
}

async fn admit<A: Adapter>(ctx: &SocketContext<A>, socket: &SocketRef<A>) -> Result<(), Refusal> {
    // The gateway's request id, so one handshake can be followed from the edge log to here.
    let request_id = socket
        .req_parts()
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    // The HTTP layer has verified the assertion and dropped the token (`handshake_check`);
    // without that layer (a router built otherwise) the header is still there to verify.
    let checked = socket
        .req_parts()
        .extensions
        .get::<CheckedAssertion>()
        .map(|c| c.0.clone());
    let verdict = match checked {
        Some(verdict) => verdict,
        None => ctx.trust.verify_headers(&socket.req_parts().headers).await,
    };
    let claims = match verdict {
        Ok(c) => c,
        Err(e) => {
            ctx.metrics.rejected(e.reason());
            // Reason only: the token itself is never logged.
            tracing::warn!(request_id, reason = e.reason(), detail = %e, sid = %socket.id, "socket.io handshake refused");
            return Err(Refusal::Unauthorized(e.reason()));
        }
    };
    let user = User {
        id: claims.sub.clone(),
        name: claims.display_name().to_string(),
    };
    if let Err(e) = ctx.presence.admit(user.clone()) {
        ctx.metrics.rejected("too_many_sockets");
        tracing::warn!(request_id, reason = "too_many_sockets", user = %user.id, limit = e.limit, "socket.io handshake refused");
        return Err(e.into());
    }
    tracing::debug!(request_id, user = %user.id, sid = %socket.id, "socket.io handshake accepted");
    // Stored in the socket, so it lives exactly as long as the socket. (Extensions hand out
    // clones: the `Arc` makes them all one lease.)
    socket.extensions.insert(Arc::new(SocketLease {
        presence: ctx.presence.clone(),
        user_id: user.id.clone(),
    }));
    prepare(ctx, socket, &claims.sid);
    Ok(())
}

/// Everything a socket can ask and belong to is set up here, before the connect ack is sent:
/// a client may emit the moment it sees the ack, and an event that arrived before its handler
/// was registered would be dropped unanswered.
fn prepare<A: Adapter>(ctx: &SocketContext<A>, socket: &SocketRef<A>, session: &str) {
    socket.join(session_room(session));
    let presence = ctx.presence.clone();
    // Answered by the announcer, in order with the frames the socket is sent, numbered like
    // a snapshot.
    socket.on(
        "get_online_users",
        move |socket: SocketRef<A>, ack: crate::fanout::Ack<A>| {
            let presence = presence.clone();
            async move { presence.ack(socket, ack) }
        },
    );
}

fn connected<A: Adapter>(ctx: Arc<SocketContext<A>>, socket: SocketRef<A>) {
    // No disconnect handler: the socket's lease (see `admit`) uncounts it when it is dropped.
    ctx.presence.snapshot(socket);
}
