//! The seed's JSON API: `POST /api/auth/login`, `GET /api/auth/user`, `POST /api/auth/logout`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use crate::users::{Credentials, DemoDirectory, PublicUser};

type AuthSession = axum_login::AuthSession<DemoDirectory>;

/// Session key the gateway reads the display name from (the user id comes from axum-login's
/// own `axum-login.data.user_id`).
pub const DISPLAY_NAME_KEY: &str = "display_name";

#[derive(Serialize)]
struct UserBody {
    user: Option<PublicUser>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid username or password")]
    BadCredentials,
    #[error("login backend: {0}")]
    Auth(#[from] axum_login::Error<DemoDirectory>),
    #[error("session: {0}")]
    Session(#[from] tower_sessions::session::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::BadCredentials => StatusCode::UNAUTHORIZED,
            ApiError::Auth(_) | ApiError::Session(_) => {
                tracing::error!("auth request failed: {self}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = match status {
            StatusCode::UNAUTHORIZED => self.to_string(),
            _ => "internal error".to_owned(),
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

pub fn routes() -> Router {
    Router::new()
        .route("/api/auth/login", post(login))
        .route("/api/auth/user", get(current_user))
        .route("/api/auth/logout", post(logout))
        // Unknown API paths get a JSON 404 rather than the SPA's index.html.
        .route("/api/{*rest}", any(api_not_found))
}

async fn login(
    mut auth: AuthSession,
    Json(creds): Json<Credentials>,
) -> Result<Json<UserBody>, ApiError> {
    let user = auth
        .authenticate(creds)
        .await?
        .ok_or(ApiError::BadCredentials)?;
    auth.login(&user).await?;
    auth.session.insert(DISPLAY_NAME_KEY, &user.name).await?;
    tracing::info!(user = %user.id, "logged in");
    Ok(Json(UserBody {
        user: Some(PublicUser::from(&user)),
    }))
}

async fn current_user(auth: AuthSession) -> Response {
    match auth.user {
        Some(user) => Json(UserBody {
            user: Some(PublicUser::from(&user)),
        })
        .into_response(),
        None => (StatusCode::UNAUTHORIZED, Json(UserBody { user: None })).into_response(),
    }
}

/// Deletes the session from the store. The gateway, which proxied this request, then tells the
/// presence service to disconnect that session's sockets.
async fn logout(mut auth: AuthSession) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(user) = auth.logout().await? {
        tracing::info!(user = %user.id, "logged out");
    }
    Ok(Json(json!({ "ok": true })))
}

async fn api_not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "not found" }))).into_response()
}
