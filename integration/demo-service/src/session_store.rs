//! The SQLite session store, shared with the gateway (which only reads it).

use std::path::Path;
use std::time::Duration;

use tower_sessions::session_store::ExpiredDeletion;
use tower_sessions_sqlx_store::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions,
};
use tower_sessions_sqlx_store::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the directory of {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the session database {path}: {source}")]
    Open {
        path: String,
        source: tower_sessions_sqlx_store::sqlx::Error,
    },
}

/// Opens (creating if needed) the SQLite file and its `tower_sessions` table.
///
/// WAL journaling lets the gateway read sessions while this service writes them.
pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
    let shown = path.display().to_string();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: shown.clone(),
            source,
        })?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let open_err = |source| StoreError::Open {
        path: shown.clone(),
        source,
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(open_err)?;
    let store = SqliteStore::new(pool);
    store.migrate().await.map_err(open_err)?;
    Ok(store)
}

/// Removes expired rows now and then, so the file does not grow without bound.
pub fn spawn_expiry_sweeper(store: SqliteStore) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(err) = store
            .continuously_delete_expired(Duration::from_secs(300))
            .await
        {
            tracing::warn!("expired-session sweeper stopped: {err}");
        }
    })
}
