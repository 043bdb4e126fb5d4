//! The shared view of who is online, behind one small trait: in memory for one node, Redis for
//! many. The presence model says what this node holds; the backend turns that into "came online"
//! / "went offline" for the whole cluster, exactly once per change.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::model::User;

mod redis_store;
pub use redis_store::RedisBackend;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0} ms")]
    Timeout(u64),
    #[error("stored user is not valid JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// Presence changes that the backend found on its own (a dead node reaped, a re-sync after an
/// outage), to be announced like any other.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub joins: Vec<User>,
    pub leaves: Vec<String>,
    /// The store had lost this node's users (reaped, Redis restarted): other nodes may be in the
    /// same state until their next heartbeat, so lists read now can miss users.
    pub store_lost: bool,
    /// Users this node stopped holding while the store could not record it, now released: they
    /// look offline, but another node may not have re-stored its own holds yet. Announced only
    /// if they are still offline a heartbeat later.
    pub unconfirmed_leaves: Vec<String>,
}

#[async_trait]
pub trait PresenceBackend: Send + Sync + 'static {
    /// This node holds `user`. True when nobody held them before: they just came online.
    async fn hold(&self, user: &User) -> Result<bool, BackendError>;
    /// This node no longer holds the user. True when nobody else holds them: they went offline.
    async fn release(&self, user_id: &str) -> Result<bool, BackendError>;
    /// Everyone online, on any node, sorted by id. During an outage: the last view this node had.
    async fn online(&self) -> Result<Vec<User>, BackendError>;
    /// The current entry of each of `ids`, in order (`None`: offline). A paged snapshot checks
    /// each page with it before sending, so a user who left after the list was read is not
    /// announced again after their leave, without re-reading the whole list per page.
    async fn lookup(&self, ids: &[&str]) -> Result<Vec<Option<User>>, BackendError>;
    /// Called every heartbeat interval with what this node holds: keeps the node alive, removes
    /// the users of dead nodes and repairs what an outage left behind. `held` is `None` while
    /// effects are still queued for the backend: the model is then ahead of what was stored,
    /// and a repair waits for a heartbeat at which both agree.
    async fn maintain(&self, held: Option<&[User]>) -> Result<Changes, BackendError>;
    /// False while the shared store is unreachable (`/readyz`).
    fn is_healthy(&self) -> bool;
    /// This node stops: release whatever it still holds and deregister it. Returns the users
    /// that went offline.
    async fn leave(&self) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }
}

/// One node, no Redis: the embedded default.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    users: Mutex<BTreeMap<String, User>>,
}

impl MemoryBackend {
    fn users(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, User>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts and
        // removes), so a poisoned lock is still safe to use.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl PresenceBackend for MemoryBackend {
    async fn hold(&self, user: &User) -> Result<bool, BackendError> {
        Ok(self.users().insert(user.id.clone(), user.clone()).is_none())
    }

    async fn release(&self, user_id: &str) -> Result<bool, BackendError> {
        Ok(self.users().remove(user_id).is_some())
    }

    async fn online(&self) -> Result<Vec<User>, BackendError> {
        Ok(self.users().values().cloned().collect())
    }

    async fn lookup(&self, ids: &[&str]) -> Result<Vec<Option<User>>, BackendError> {
        let users = self.users();
        Ok(ids.iter().map(|id| users.get(*id).cloned()).collect())
    }

    async fn maintain(&self, _held: Option<&[User]>) -> Result<Changes, BackendError> {
        Ok(Changes::default())
    }

    fn is_healthy(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            name: id.into(),
        }
    }

    #[tokio::test]
    async fn memory_backend_reports_each_change_once() {
        let b = MemoryBackend::default();
        assert!(b.hold(&user("b")).await.unwrap());
        assert!(!b.hold(&user("b")).await.unwrap());
        assert!(b.hold(&user("a")).await.unwrap());
        assert_eq!(b.online().await.unwrap(), vec![user("a"), user("b")]);
        assert!(b.release("a").await.unwrap());
        assert!(!b.release("a").await.unwrap());
        assert_eq!(b.online().await.unwrap(), vec![user("b")]);
        assert_eq!(
            b.lookup(&["a", "b"]).await.unwrap(),
            vec![None, Some(user("b"))]
        );
    }
}
