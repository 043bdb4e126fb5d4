//! A demo of the kind of "existing service" the gateway sits in front of: it owns login
//! (axum-login over a fixed set of users), keeps sessions in SQLite with tower-sessions (the same
//! file the gateway reads), and serves the seed's React app. It is an example, not part of the
//! gateway.

mod auth_api;
mod config;
mod session_store;
mod spa;
mod users;

use std::future::Future;
use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use axum_login::AuthManagerLayerBuilder;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, SessionManagerLayer};

pub use auth_api::DISPLAY_NAME_KEY;
pub use config::{AppConfig, Cli};
pub use session_store::StoreError;
pub use users::{PublicUser, DEMO_USERS};

/// Cookie name the gateway is configured to read.
pub const SESSION_COOKIE: &str = "id";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Users(#[from] users::DirectoryError),
    #[error("cannot listen on {addr}: {source} (is another process using that port?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// Builds the whole app: the auth API behind the session + login layers, the SPA, `/healthz`.
pub async fn build_app(config: &AppConfig) -> Result<Router, StartupError> {
    let store = session_store::open(&config.sessions_db).await?;
    session_store::spawn_expiry_sweeper(store.clone());
    let sessions = SessionManagerLayer::new(store)
        .with_name(SESSION_COOKIE)
        .with_secure(config.secure_cookie)
        .with_same_site(SameSite::Lax)
        .with_http_only(true)
        .with_expiry(Expiry::OnInactivity(config.session_idle));
    let directory = users::DemoDirectory::with_demo_users().await?;
    let auth = AuthManagerLayerBuilder::new(directory, sessions).build();
    Ok(Router::new()
        .merge(auth_api::routes().layer(auth))
        .route("/healthz", get(|| async { "ok" }))
        .fallback_service(spa::service(&config.web_dist))
        .layer(axum::middleware::from_fn(access_log)))
}

/// One line per request with the gateway's `x-request-id`, so a request can be followed from
/// the edge log into this one.
async fn access_log(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    tracing::info!(request_id, %method, path, status = resp.status().as_u16(), "request");
    resp
}

/// Binds `addr`, serves until `shutdown` completes, then drains connections.
pub async fn run(
    addr: SocketAddr,
    config: AppConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let app = build_app(&config).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })?;
    tracing::info!(
        "demo-service listening on http://{addr} (sessions in {})",
        config.sessions_db.display()
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(StartupError::Serve)
}
