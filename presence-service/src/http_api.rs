//! Plain HTTP routes beside Socket.IO: who is online, health, metrics, and the gateway's
//! "session ended" call.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use socketioxide::adapter::Adapter;
use socketioxide::SocketIo;

use crate::announcer::Presence;
use crate::backend::PresenceBackend;
use crate::cluster_link::LinkStatus;
use crate::metrics::Metrics;
use crate::payloads::OnlineUsers;
use crate::sockets::session_room;
use crate::trust::Trust;

pub struct HttpContext<A: Adapter> {
    pub trust: Trust,
    pub backend: Arc<dyn PresenceBackend>,
    pub presence: Arc<Presence<A>>,
    pub metrics: Metrics,
    pub io: SocketIo<A>,
    /// Several nodes: whether the change log (and logouts) reach this node. `None` on a single
    /// node.
    pub link: Option<LinkStatus>,
}

pub fn router<A: Adapter>(ctx: Arc<HttpContext<A>>) -> Router {
    Router::new()
        .route("/presence", get(presence::<A>))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<A>))
        .route("/metrics", get(metrics::<A>))
        .route("/internal/sessions/ended", post(session_ended::<A>))
        .with_state(ctx)
}

async fn authorize<A: Adapter>(
    ctx: &HttpContext<A>,
    headers: &HeaderMap,
    route: &str,
) -> Result<identity_assertion::Claims, Response> {
    ctx.trust.verify_headers(headers).await.map_err(|e| {
        ctx.metrics.rejected(e.reason());
        tracing::warn!(reason = e.reason(), detail = %e, route, "request refused");
        (
            StatusCode::UNAUTHORIZED,
            format!("unauthorized: {}\n", e.reason()),
        )
            .into_response()
    })
}

async fn presence<A: Adapter>(
    State(ctx): State<Arc<HttpContext<A>>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&ctx, &headers, "/presence").await {
        return r;
    }
    // The node's copy: the list its own sockets were last told.
    let users = ctx.presence.online().await;
    Json(OnlineUsers {
        online_users: &users,
    })
    .into_response()
}

/// Not ready while it would refuse every socket (no key to verify assertions with yet), or while
/// this node's users cannot be seen by the others: the shared store is unreachable, or
/// broadcasts do not reach the other nodes.
async fn readyz<A: Adapter>(State(ctx): State<Arc<HttpContext<A>>>) -> Response {
    let reason = if !ctx.trust.has_keys() {
        "no keys to verify assertions yet (gateway JWKS not loaded)\n"
    } else if !ctx.backend.is_healthy() {
        "presence store unreachable\n"
    } else if ctx.link.as_ref().is_some_and(|l| !l.is_up()) {
        "cross-node link unavailable (change log, logouts)\n"
    } else {
        return "ready".into_response();
    };
    (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
}

async fn metrics<A: Adapter>(State(ctx): State<Arc<HttpContext<A>>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        ctx.metrics.render(),
    )
        .into_response()
}

/// The gateway saw a logout: close every socket opened under that session, on every node (the
/// adapter carries the disconnect to the others). Their users go offline after the grace period
/// unless another session of theirs is still connected.
async fn session_ended<A: Adapter>(
    State(ctx): State<Arc<HttpContext<A>>>,
    headers: HeaderMap,
) -> Response {
    let claims = match authorize(&ctx, &headers, "/internal/sessions/ended").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let room = session_room(&claims.sid);
    let local = ctx.io.to(room.clone()).sockets().len();
    let result = ctx.io.to(room.clone()).disconnect().await;
    // A socket whose queue is full cannot take the disconnect packet and stays connected (a
    // background tab that reads slowly): its transport is closed instead. Its reconnect is
    // refused at the gateway, whose session is gone.
    for socket in ctx.io.to(room).sockets() {
        socket.close_transport();
    }
    match result {
        Ok(()) => {
            tracing::info!(user = %claims.sub, local_sockets = local, "session ended: sockets disconnected");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, user = %claims.sub, "session ended: disconnect failed on some node");
            (
                StatusCode::BAD_GATEWAY,
                "disconnect did not reach every node\n",
            )
                .into_response()
        }
    }
}
