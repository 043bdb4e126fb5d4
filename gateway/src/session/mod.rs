//! Phase 2: authenticate a request from its session cookie.
//!
//! Order matters: parse the cookie, verify its signature, and only then touch the store, so a
//! forged cookie costs no I/O. An expired session is refused even if the store still returns it.

// Public so the fuzz targets (`fuzz/`) reach the parsers directly.
pub mod cookie;
pub mod express;
pub mod fields;
pub mod store;
pub mod tower;

use std::sync::Arc;
use std::time::{Duration, Instant};

use identity_assertion::Identity;
use sha2::Sha256;

pub use store::{Store, StoreError};
pub use tower::signing_key_from_master;

use crate::config::SessionFlavour;

/// Why a request is not authenticated. Each maps to one status and one log reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("no session cookie")]
    NoCookie,
    #[error("session cookie is not signed")]
    Unsigned,
    #[error("session cookie signature does not verify")]
    BadSignature,
    #[error("session cookie is malformed")]
    Malformed,
    #[error("no such session")]
    Unknown,
    #[error("session expired")]
    Expired,
    #[error("session has no user (not logged in)")]
    NoUser,
    #[error("session store unavailable: {0}")]
    StoreUnavailable(String),
    #[error("stored session unreadable: {0}")]
    Corrupt(String),
    /// Every lookup slot is taken (`[admission] max_concurrent_lookups`): the store is slow or
    /// swamped, so this handshake is refused before it adds to the queue.
    #[error("too many session lookups in flight")]
    LookupsBusy,
}

impl SessionError {
    /// Short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCookie => "no_cookie",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::Malformed => "malformed_cookie",
            Self::Unknown => "unknown_session",
            Self::Expired => "expired",
            Self::NoUser => "no_user",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::Corrupt(_) => "corrupt_session",
            Self::LookupsBusy => "lookups_busy",
        }
    }

    /// 503 when we could not tell (fail closed, the client may retry); 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Self::StoreUnavailable(_) | Self::LookupsBusy => 503,
            _ => 401,
        }
    }
}

/// Where sessions come from and how to read a user out of them.
pub struct SessionSource {
    /// `session` or `sessions.<name>`, as in the config (logs, readiness).
    pub name: String,
    pub flavour: SessionFlavour,
    pub cookie_name: String,
    /// express: the secrets; tower-sessions: the cookie signing keys (empty = unsigned).
    pub secrets: Vec<Vec<u8>>,
    pub user_id_field: String,
    pub display_name_field: Option<String>,
    pub lookup_timeout: Duration,
    pub store: Store,
    /// The runtime that owns the store's connections (see `app::build`).
    pub rt: tokio::runtime::Handle,
    /// Slots for lookups in flight, shared by every source (`admission`).
    pub lookup_slots: Arc<crate::admission::LookupSlots>,
}

/// An authenticated session: who, and how long the lookup took (for the latency histogram).
pub struct Authenticated {
    pub identity: Identity,
    pub lookup: Option<Duration>,
}

impl SessionSource {
    /// Whether the request carries this source's cookie at all.
    pub fn has_cookie(&self, cookie_headers: &[String]) -> bool {
        cookie::find(cookie_headers.iter().map(String::as_str), &self.cookie_name).is_some()
    }

    /// Checks the cookie in `cookie_headers` and returns the identity it proves. Runs on the
    /// store's runtime, whose reactor drives the store connections.
    pub async fn authenticate(
        self: &Arc<Self>,
        cookie_headers: Vec<String>,
    ) -> Result<Authenticated, (SessionError, Option<Duration>)> {
        let this = self.clone();
        let task = self.rt.spawn(async move {
            this.authenticate_here(cookie_headers.iter().map(String::as_str))
                .await
        });
        task.await.unwrap_or_else(|e| {
            Err((
                SessionError::StoreUnavailable(format!("lookup task failed: {e}")),
                None,
            ))
        })
    }

    async fn authenticate_here<'a>(
        &self,
        cookie_headers: impl IntoIterator<Item = &'a str>,
    ) -> Result<Authenticated, (SessionError, Option<Duration>)> {
        let value = cookie::find(cookie_headers, &self.cookie_name)
            .ok_or((SessionError::NoCookie, None))?;
        // Signature first: no store I/O for a forged or unsigned cookie.
        enum Key {
            Tower(tower_sessions_core::session::Id),
            Express(String),
        }
        let key = match self.flavour {
            SessionFlavour::Express => {
                Key::Express(express::unsign(value, &self.secrets).map_err(|e| (e, None))?)
            }
            SessionFlavour::TowerSessions => {
                Key::Tower(tower::decode(value, &self.secrets).map_err(|e| (e, None))?)
            }
        };
        // A slot only now, after the signature verified: forged cookies never take one.
        let _slot = self
            .lookup_slots
            .try_take()
            .ok_or((SessionError::LookupsBusy, None))?;
        let started = Instant::now();
        let load = async {
            match &key {
                Key::Tower(id) => self.store.load_tower(id).await,
                Key::Express(sid) => self.store.load_express(sid).await,
            }
        };
        let loaded = tokio::time::timeout(self.lookup_timeout, load).await;
        let took = Some(started.elapsed());
        let stored = match loaded {
            Err(_) => {
                return Err((
                    SessionError::StoreUnavailable("lookup timed out".into()),
                    took,
                ))
            }
            Ok(Err(StoreError::Unavailable(e))) => {
                return Err((SessionError::StoreUnavailable(e), took))
            }
            Ok(Err(StoreError::Corrupt(e))) => return Err((SessionError::Corrupt(e), took)),
            Ok(Ok(None)) => return Err((SessionError::Unknown, took)),
            Ok(Ok(Some(s))) => s,
        };
        if stored
            .expires
            .is_some_and(|exp| exp <= time::OffsetDateTime::now_utc())
        {
            return Err((SessionError::Expired, took));
        }
        let sub = fields::lookup(&stored.data, &self.user_id_field)
            .and_then(fields::as_text)
            .ok_or((SessionError::NoUser, took))?;
        let name = self
            .display_name_field
            .as_deref()
            .and_then(|f| fields::lookup(&stored.data, f))
            .and_then(fields::as_text);
        let session_id = match &key {
            Key::Tower(id) => id.to_string(),
            Key::Express(sid) => sid.clone(),
        };
        Ok(Authenticated {
            identity: Identity {
                sub,
                name,
                sid: self.session_handle(&session_id),
            },
            lookup: took,
        })
    }

    /// The opaque handle of a session: stable (every connection of one login shares it, on any
    /// gateway, before and after any key rotation, so a logout can name it) but useless as a
    /// cookie: a one-way hash of the session id, which is a long random secret, so the id
    /// cannot be recovered or guessed from it. Not keyed: a key that can rotate would change
    /// the handle of a session whose sockets are already open.
    pub fn session_handle(&self, session_id: &str) -> String {
        session_handle(session_id)
    }

    pub async fn ping(self: &Arc<Self>) -> Result<(), SessionError> {
        let this = self.clone();
        let task = self.rt.spawn(async move {
            tokio::time::timeout(this.lookup_timeout, this.store.ping()).await
        });
        match task.await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(SessionError::StoreUnavailable(e.to_string())),
            Ok(Err(_)) => Err(SessionError::StoreUnavailable("ping timed out".into())),
            Err(e) => Err(SessionError::StoreUnavailable(format!(
                "ping task failed: {e}"
            ))),
        }
    }
}

/// Defaults per flavour, so a config only names what differs from the framework's defaults.
/// A source replaced by a reload is dropped once the last request using it is done. A Redis
/// pool reconnects in background tasks of its own, which a plain drop would leave running:
/// they are told to quit here. (SQLite pools close their connections on drop.)
impl Drop for SessionSource {
    fn drop(&mut self) {
        use fred::prelude::ClientLike;
        if let Some(pool) = self.store.redis_connections().cloned() {
            self.rt.spawn(async move {
                let _ = pool.quit().await;
            });
        }
    }
}

/// See [`SessionSource::session_handle`]: the first 16 bytes of SHA-256 over a domain prefix
/// and the session id, base64url without padding.
pub fn session_handle(session_id: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let digest = Sha256::new_with_prefix(b"edge-gateway session handle\0")
        .chain_update(session_id.as_bytes())
        .finalize();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

pub fn default_cookie(flavour: SessionFlavour) -> &'static str {
    match flavour {
        SessionFlavour::Express => "connect.sid",
        SessionFlavour::TowerSessions => "id",
    }
}

pub fn default_user_field(flavour: SessionFlavour) -> &'static str {
    match flavour {
        SessionFlavour::Express => "passport.user",
        SessionFlavour::TowerSessions => "axum-login.data.user_id",
    }
}
