//! The one place where the service is assembled from its config: keys, backend, Socket.IO
//! (with the local or the Redis adapter), the announcer, the HTTP routes, the listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use socketioxide::adapter::Adapter;
use socketioxide::{SocketIo, SocketIoBuilder};
use socketioxide_core::adapter::DefinedAdapter;
use socketioxide_redis::drivers::Driver;
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::announcer::{self, AnnouncerConfig, Presence};
use crate::backend::{Change, MemoryBackend, PresenceBackend, RedisBackend};
use crate::cluster_link::{self, ClusterLink, LinkStatus};
use crate::config::{ms, BackendKind, Config};
use crate::http_api::{self, HttpContext};
use crate::metrics::Metrics;
use crate::model::PresenceModel;
use crate::sockets::{self, SocketContext};
use crate::trust::Trust;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keys(#[from] crate::trust::KeyLoadError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("presence store: {0}")]
    Backend(#[from] crate::backend::BackendError),
    #[error("redis adapter: {0}")]
    Adapter(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

fn socketio_builder(cfg: &Config) -> SocketIoBuilder {
    let l = &cfg.limits;
    SocketIo::builder()
        .ping_interval(ms(l.ping_interval_ms))
        .ping_timeout(ms(l.ping_timeout_ms))
        .max_payload(l.max_payload)
        // `max_payload` bounds a polling request's body; a websocket message or frame gets the
        // same bound, so an oversized one closes the session (as Socket.IO's `maxHttpBufferSize`
        // does) instead of being read, answered, and leaving a buffer its size behind.
        .ws_max_message_size(usize::try_from(l.max_payload).unwrap_or(usize::MAX))
        .ws_max_frame_size(usize::try_from(l.max_payload).unwrap_or(usize::MAX))
        .max_buffer_size(l.max_buffer_size)
        .ws_read_buffer_size(l.ws_read_buffer_size)
}

/// Starts the service and runs until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let metrics = Metrics::new()?;
    let trust = Trust::from_config(&cfg.trust)?;
    trust.warm_up().await;
    let listener = TcpListener::bind(cfg.listen_addr())
        .await
        .map_err(|source| StartError::Listen {
            addr: cfg.listen_addr(),
            source,
        })?;
    match cfg.backend.kind {
        BackendKind::Memory => {
            let (layer, io) = socketio_builder(&cfg).build_layer();
            let backend: Arc<dyn PresenceBackend> = Arc::new(MemoryBackend::default());
            let (router, (), _) = assemble(
                &cfg,
                io.clone(),
                backend,
                None,
                trust.clone(),
                metrics.clone(),
                None,
            );
            serve(
                listener,
                write_stall(&cfg),
                router.layer(layer),
                trust,
                shutdown,
            )
            .await?;
            crate::drain::close_paced(&io, drain_pace(&cfg)).await;
            io.close().await;
            Ok(())
        }
        BackendKind::Redis => {
            let b = &cfg.backend;
            let url = b.redis_url.get_ref();
            let node_id = if b.node_id.is_empty() {
                uuid::Uuid::new_v4().simple().to_string()
            } else {
                b.node_id.clone()
            };
            let backend = RedisBackend::connect(
                redis::Client::open(url.as_str())?,
                node_id.clone(),
                b.key_prefix.clone(),
                ms(b.node_ttl_ms),
                ms(b.heartbeat_interval_ms),
                ms(b.op_timeout_ms),
            )
            .await?;
            // The adapter's pub/sub driver needs RESP3 push messages.
            let adapter_url = if url.contains("protocol=") {
                url.clone()
            } else if url.contains('?') {
                format!("{url}&protocol=resp3")
            } else {
                format!("{url}?protocol=resp3")
            };
            let op_timeout = ms(b.op_timeout_ms);
            let link = tokio::time::timeout(
                op_timeout * 5,
                ClusterLink::connect(
                    redis::Client::open(adapter_url)?,
                    cluster_link::reconnecting(op_timeout, op_timeout),
                ),
            )
            .await
            .map_err(|_| StartError::Adapter("redis did not answer".into()))??;
            let adapter =
                RedisAdapterCtr::new_with_driver(link.clone(), RedisAdapterConfig::default());
            let (layer, io) = socketio_builder(&cfg)
                .with_adapter::<CustomRedisAdapter<_, ClusterLink>>(adapter)
                .build_layer();
            let changes = follow_change_log(&link, backend.changes_channel()).await?;
            let backend: Arc<dyn PresenceBackend> = Arc::new(backend);
            let (router, init, presence) = assemble(
                &cfg,
                io.clone(),
                backend,
                Some(changes),
                trust.clone(),
                metrics.clone(),
                Some(link.status()),
            );
            init.await.map_err(|e| StartError::Adapter(e.to_string()))?;
            let reload = presence.clone();
            link.watch(
                ms(b.heartbeat_interval_ms),
                op_timeout,
                metrics.clone(),
                move || reload.reload(),
            );
            tracing::info!(node = %node_id, "redis backend and adapter ready");
            serve(
                listener,
                write_stall(&cfg),
                router.layer(layer),
                trust,
                shutdown,
            )
            .await?;
            leave_cluster(&cfg, &io, &presence).await;
            Ok(())
        }
    }
}

/// Entries of the change log published on this channel can be dropped only if the announcer
/// falls this far behind; a dropped one is a gap, which makes it read the view again.
const CHANGE_LOG_BUFFER: usize = 1 << 16;

/// Subscribes to the store's change log on the cluster link (which re-subscribes by itself after
/// a Redis restart) and hands the parsed entries to the announcer, in the order published.
async fn follow_change_log(
    link: &ClusterLink,
    channel: String,
) -> Result<mpsc::UnboundedReceiver<Change>, StartError> {
    let mut published = link
        .subscribe(channel, CHANGE_LOG_BUFFER)
        .await
        .map_err(StartError::Redis)?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((_, payload)) = published.next().await {
            match Change::parse(&payload) {
                Ok(change) => {
                    if tx.send(change).is_err() {
                        break;
                    }
                }
                // The next entry shows the gap; the copy is then read again.
                Err(e) => tracing::warn!(error = %e, "unreadable change log entry dropped"),
            }
        }
    });
    Ok(rx)
}

#[allow(clippy::too_many_arguments)]
fn assemble<A: Adapter + DefinedAdapter>(
    cfg: &Config,
    io: SocketIo<A>,
    backend: Arc<dyn PresenceBackend>,
    changes: Option<mpsc::UnboundedReceiver<Change>>,
    trust: Trust,
    metrics: Metrics,
    link: Option<LinkStatus>,
) -> (axum::Router, A::InitRes, Arc<Presence<A>>) {
    let p = &cfg.presence;
    let presence = announcer::start(
        io.clone(),
        backend.clone(),
        changes,
        PresenceModel::new(ms(p.grace_ms), p.max_sockets_per_user),
        metrics.clone(),
        AnnouncerConfig {
            mode: p.mode,
            diff_window: ms(p.diff_window_ms.max(1)),
            diff_budget_per_sec: p.diff_budget_per_sec,
            snapshot_page_size: p.snapshot_page_size,
            heartbeat_interval: ms(cfg.backend.heartbeat_interval_ms),
            op_timeout: ms(cfg.backend.op_timeout_ms),
        },
    );
    let init = sockets::register(
        &io,
        Arc::new(SocketContext {
            trust: trust.clone(),
            presence: presence.clone(),
            metrics: metrics.clone(),
        }),
    );
    let router = http_api::router(Arc::new(HttpContext {
        trust,
        backend,
        presence: presence.clone(),
        metrics,
        io,
        link,
    }));
    (router, init, presence)
}

/// A clean stop of one node among several: its sockets are closed (clients see a transport
/// close and reconnect, to another node), and its users are released after the grace period
/// like after any disconnect, instead of lingering until the other nodes reap this one.
async fn leave_cluster<A: Adapter>(cfg: &Config, io: &SocketIo<A>, presence: &Presence<A>) {
    // First a few at a time, while this node still announces as usual: each user's grace
    // period covers the move to another node.
    crate::drain::close_paced(io, drain_pace(cfg)).await;
    let op_timeout = ms(cfg.backend.op_timeout_ms);
    let deadline = std::time::Instant::now() + ms(cfg.presence.grace_ms) + op_timeout * 4;
    let left = presence.stop(deadline).await;
    io.close().await;
    tracing::info!("sockets closed; releasing this node's users after the grace period");
    let bound = (deadline + op_timeout * 2).into();
    if tokio::time::timeout_at(bound, left).await.is_err() {
        tracing::warn!("did not leave the cluster in time; the other nodes will reap this one");
    }
}

fn drain_pace(cfg: &Config) -> crate::drain::DrainPace {
    crate::drain::DrainPace {
        window: ms(cfg.server.drain_ms),
        max_per_sec: cfg.server.drain_max_per_sec,
    }
}

/// How long a connection may take no byte before it is given up (`wire.rs`): as long as the
/// heartbeat gives a client to answer a ping, so a client alive enough to stay connected is
/// never given up for reading slowly.
fn write_stall(cfg: &Config) -> Duration {
    ms(cfg.limits.ping_interval_ms + cfg.limits.ping_timeout_ms)
}

/// Serves until `shutdown` resolves; then no new connection is accepted.
async fn serve(
    listener: TcpListener,
    stall: Duration,
    router: axum::Router,
    trust: Trust,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: ([0, 0, 0, 0], 0).into(),
        source,
    })?;
    // Tests and scripts that bind port 0 read the real address from this line on stdout.
    println!("presence-service listening on {addr}");
    tracing::info!(%addr, "listening");
    let listener = crate::listener::TcpNodelayListener { listener, stall };
    // Both outside the Socket.IO layer, so they run before it sees (and keeps) the handshake:
    // first its headers leave the read buffer, then its assertion is checked and dropped.
    let router = router
        .layer(axum::middleware::map_request_with_state(
            trust,
            crate::handshake_check::check_assertion,
        ))
        .layer(axum::middleware::map_request(
            crate::handshake_memory::detach_from_read_buffer,
        ))
        .layer(axum::middleware::map_request(
            crate::wire::direct_for_websocket_handshake,
        ));
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<crate::wire::WireHandle>(),
    );
    tokio::select! {
        res = server => res.map_err(|source| StartError::Listen { addr, source }),
        () = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}
