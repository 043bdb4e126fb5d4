//! The shared view of who is online, behind one small trait: in memory for one node, Redis for
//! many. The presence model says what this node holds; the backend turns that into "came online"
//! / "went offline" for the whole cluster, exactly once per change, and writes every such change
//! into one ordered log (an epoch and a sequence number per entry) that every node follows.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::Deserialize;

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

/// Where an entry sits in the change log. The epoch names one life of the store: it changes
/// when the store lost its data (Redis restarted empty), and the sequence starts over with it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    pub epoch: String,
    pub seq: u64,
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub at: Position,
    pub what: What,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// Came online, or a new display name.
    Join(User),
    /// Went offline.
    Leave(String),
}

impl Change {
    /// An entry as the Redis scripts publish it: `{"e":epoch,"s":seq,"j":User}` or
    /// `{"e":epoch,"s":seq,"l":id}`.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Wire {
            e: String,
            s: u64,
            j: Option<User>,
            l: Option<String>,
        }
        let w: Wire = serde_json::from_slice(bytes)?;
        let what = match (w.j, w.l) {
            (Some(user), None) => What::Join(user),
            (None, Some(id)) => What::Leave(id),
            _ => {
                return Err(serde::de::Error::custom(
                    "a change is either a join (j) or a leave (l)",
                ))
            }
        };
        Ok(Self {
            at: Position {
                epoch: w.e,
                seq: w.s,
            },
            what,
        })
    }
}

/// Everyone online, as of one position of the log (read atomically with it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    pub at: Position,
    /// Sorted by id.
    pub users: Vec<User>,
}

#[async_trait]
pub trait PresenceBackend: Send + Sync + 'static {
    /// This node holds `user`. The log entry it wrote, if the user came online (or changed
    /// name); every node also receives that entry through the log.
    async fn hold(&self, user: &User) -> Result<Option<Change>, BackendError>;
    /// This node no longer holds the user. The log entry, if nobody else holds them.
    async fn release(&self, user_id: &str) -> Result<Option<Change>, BackendError>;
    /// Everyone online, with the log position the list is as of.
    async fn view(&self) -> Result<View, BackendError>;
    /// Called every heartbeat interval with what this node holds: keeps the node alive, removes
    /// the users of dead nodes and repairs what an outage left behind (every change it makes
    /// goes into the log). `held` is `None` while effects are still queued for the backend: the
    /// model is then ahead of what was stored, and a repair waits for a heartbeat at which both
    /// agree. Returns the log's position after the heartbeat.
    async fn maintain(&self, held: Option<&[User]>) -> Result<Position, BackendError>;
    /// False while the shared store is unreachable (`/readyz`).
    fn is_healthy(&self) -> bool;
    /// This node stops: release whatever it still holds and deregister it.
    async fn leave(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// One node, no Redis: the embedded default. Its log is this node's own changes; nobody else
/// follows it, so entries are only returned, never published.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    users: BTreeMap<String, User>,
    seq: u64,
}

impl MemoryState {
    fn log(&mut self, what: What) -> Change {
        self.seq += 1;
        Change {
            at: Position {
                epoch: MEMORY_EPOCH.to_string(),
                seq: self.seq,
            },
            what,
        }
    }
}

/// The memory store lives as long as the process: one epoch.
const MEMORY_EPOCH: &str = "memory";

impl MemoryBackend {
    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding this lock cannot leave the state half-updated (an insert or a
        // remove, then a counter), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl PresenceBackend for MemoryBackend {
    async fn hold(&self, user: &User) -> Result<Option<Change>, BackendError> {
        let mut state = self.state();
        match state.users.insert(user.id.clone(), user.clone()) {
            Some(old) if old == *user => Ok(None),
            _ => Ok(Some(state.log(What::Join(user.clone())))),
        }
    }

    async fn release(&self, user_id: &str) -> Result<Option<Change>, BackendError> {
        let mut state = self.state();
        Ok(state
            .users
            .remove(user_id)
            .map(|_| state.log(What::Leave(user_id.to_string()))))
    }

    async fn view(&self) -> Result<View, BackendError> {
        let state = self.state();
        Ok(View {
            at: Position {
                epoch: MEMORY_EPOCH.to_string(),
                seq: state.seq,
            },
            users: state.users.values().cloned().collect(),
        })
    }

    async fn maintain(&self, _held: Option<&[User]>) -> Result<Position, BackendError> {
        Ok(Position {
            epoch: MEMORY_EPOCH.to_string(),
            seq: self.state().seq,
        })
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
    async fn memory_backend_logs_each_change_once_in_order() {
        let b = MemoryBackend::default();
        let seq = |c: Option<Change>| c.map(|c| c.at.seq);
        assert_eq!(seq(b.hold(&user("b")).await.unwrap()), Some(1));
        assert_eq!(seq(b.hold(&user("b")).await.unwrap()), None);
        assert_eq!(seq(b.hold(&user("a")).await.unwrap()), Some(2));
        let renamed = User {
            id: "a".into(),
            name: "Ann".into(),
        };
        assert_eq!(seq(b.hold(&renamed).await.unwrap()), Some(3), "a rename");
        let view = b.view().await.unwrap();
        assert_eq!(view.users, vec![renamed, user("b")]);
        assert_eq!(view.at.seq, 3);
        assert_eq!(
            b.release("a").await.unwrap().map(|c| c.what),
            Some(What::Leave("a".into()))
        );
        assert_eq!(seq(b.release("a").await.unwrap()), None);
        assert_eq!(b.maintain(None).await.unwrap().seq, 4);
    }

    #[test]
    fn parses_the_published_entries() {
        let join = Change::parse(br#"{"e":"n1.5","s":7,"j":{"id":"a","name":"A"}}"#).unwrap();
        assert_eq!(join.at.seq, 7);
        assert_eq!(join.at.epoch, "n1.5");
        assert_eq!(
            join.what,
            What::Join(User {
                id: "a".into(),
                name: "A".into()
            })
        );
        let leave = Change::parse(br#"{"e":"n1.5","s":8,"l":"a"}"#).unwrap();
        assert_eq!(leave.what, What::Leave("a".into()));
        assert!(Change::parse(br#"{"e":"x","s":1}"#).is_err());
    }
}
