//! The session stores the gateway reads. It never writes: sessions belong to the service that
//! logs users in. tower-sessions stores are read through `tower_sessions_core::SessionStore`
//! (the real SQLite and Redis store crates), so the gateway decodes records exactly as the app
//! that wrote them; connect-redis is read with a plain GET (its layout is one JSON string).

use std::time::Duration;

use fred::prelude::{ClientLike, Config as RedisConfig, KeysInterface, Pool, ReconnectPolicy};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tower_sessions_core::session::Id;
use tower_sessions_core::SessionStore;
use tower_sessions_redis_store::RedisStore;
use tower_sessions_sqlx_store::sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tower_sessions_sqlx_store::SqliteStore;

/// What the gateway needs of a stored session.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub data: Map<String, Value>,
    /// `None` for a browser-session cookie without an expiry.
    pub expires: Option<OffsetDateTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("stored session is not in the expected format: {0}")]
    Corrupt(String),
}

pub enum Store {
    Sqlite(SqliteStore),
    TowerRedis { store: RedisStore<Pool>, pool: Pool },
    ConnectRedis { pool: Pool, prefix: String },
}

impl Store {
    /// Opens (and if needed creates) the SQLite file. `migrate` only creates the table when it is
    /// missing, so the gateway may start before the app that writes the sessions.
    pub async fn sqlite(
        path: &std::path::Path,
        table: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .busy_timeout(timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timeout)
            .connect_lazy_with(opts);
        let store = SqliteStore::new(pool)
            .with_table_name(table)
            .map_err(StoreError::Unavailable)?;
        store
            .migrate()
            .await
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        Ok(Self::Sqlite(store))
    }

    /// A Redis pool that reconnects forever in the background. Commands time out instead of
    /// queueing while Redis is away, so the edge answers 503 at once and recovers by itself.
    pub fn redis_pool(url: &str, timeout: Duration) -> Result<Pool, StoreError> {
        let config =
            RedisConfig::from_url(url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let pool = fred::types::Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_constant(0, 250))
            .build_pool(2)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        pool.connect_pool();
        Ok(pool)
    }

    /// The Redis pool behind this store, if any.
    pub fn redis_connections(&self) -> Option<&Pool> {
        match self {
            Self::Sqlite(_) => None,
            Self::TowerRedis { pool, .. } | Self::ConnectRedis { pool, .. } => Some(pool),
        }
    }

    pub fn tower_redis(pool: Pool) -> Self {
        Self::TowerRedis {
            store: RedisStore::new(pool.clone()),
            pool,
        }
    }

    pub fn connect_redis(pool: Pool, prefix: String) -> Self {
        Self::ConnectRedis { pool, prefix }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::TowerRedis { .. } => "redis",
            Self::ConnectRedis { .. } => "connect-redis",
        }
    }

    pub async fn load_tower(&self, id: &Id) -> Result<Option<StoredSession>, StoreError> {
        let record = match self {
            Self::Sqlite(s) => s.load(id).await,
            Self::TowerRedis { store, .. } => store.load(id).await,
            Self::ConnectRedis { .. } => {
                return Err(StoreError::Corrupt("not a tower-sessions store".into()))
            }
        };
        let record = record.map_err(|e| match e {
            tower_sessions_core::session_store::Error::Decode(m) => StoreError::Corrupt(m),
            other => StoreError::Unavailable(other.to_string()),
        })?;
        Ok(record.map(from_tower_record))
    }

    pub async fn load_express(&self, sid: &str) -> Result<Option<StoredSession>, StoreError> {
        let Self::ConnectRedis { pool, prefix } = self else {
            return Err(StoreError::Corrupt("not a connect-redis store".into()));
        };
        let raw: Option<String> = pool
            .get(format!("{prefix}{sid}"))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let Some(raw) = raw else { return Ok(None) };
        decode_connect_redis(&raw).map(Some)
    }

    /// For `/readyz`: can we reach the store right now?
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s
                .load(&Id(0))
                .await
                .map(|_| ())
                .map_err(|e| StoreError::Unavailable(e.to_string())),
            Self::TowerRedis { pool, .. } | Self::ConnectRedis { pool, .. } => pool
                .ping::<String>(None)
                .await
                .map(|_| ())
                .map_err(|e| StoreError::Unavailable(e.to_string())),
        }
    }
}

/// A connect-redis value (express-session's JSON, `cookie.expires` in RFC 3339) as a session.
pub fn decode_connect_redis(raw: &str) -> Result<StoredSession, StoreError> {
    let data: Map<String, Value> =
        serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let expires = data
        .get("cookie")
        .and_then(|c| c.get("expires"))
        .and_then(Value::as_str)
        .map(|s| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("cookie.expires: {e}")))?;
    Ok(StoredSession { data, expires })
}

/// A tower-sessions record (as its store decoded it) as a session.
pub fn from_tower_record(r: tower_sessions_core::session::Record) -> StoredSession {
    StoredSession {
        data: r.data.into_iter().collect(),
        expires: Some(r.expiry_date),
    }
}
