//! Presence state in Redis, shared by every node.
//!
//! Keys (prefix `p`):
//! - `p:node:<node>`  hash user id -> 1: the users this node holds.
//! - `p:count`        hash user id -> number of nodes holding the user.
//! - `p:users`        hash user id -> User JSON: everyone online.
//! - `p:nodes`        sorted set node -> last heartbeat (Redis clock, ms).
//! - `p:since`        hash node -> start of its current run of heartbeats without a gap.
//!
//! Every change is one Lua script, so "came online" / "went offline" is decided atomically and
//! announced by exactly one node. A node heartbeats every `heartbeat_interval`; any node that finds
//! a node silent for `node_ttl` reaps it (its users leave unless another node holds them). So a
//! crashed node's users are gone within `node_ttl + heartbeat_interval`. A node that was silent
//! that long itself reaps nobody until it has heartbeaten for a TTL again: after a Redis pause
//! every node's heartbeat is late, and none of them is dead.
//! A node that stops cleanly does not wait for that: it releases its users and removes itself.
//! These scripts touch keys they compute (`p:node:<dead>`): fine on one Redis, not on a cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use super::{BackendError, Changes, PresenceBackend};
use crate::model::User;

const HOLD: &str = r#"
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
if redis.call('HSETNX', KEYS[1], ARGV[1], '1') == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[1], 1) == 1 then return 1 end
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[1])
    redis.call('HDEL', KEYS[3], ARGV[1])
    return 1
  end
end
return 0
"#;

/// Heartbeat, then reap every node silent for longer than the TTL, once this node has itself
/// heartbeaten without a gap for a TTL (`p:since`). Returns
/// `[self_was_registered, users_stored_for_self, left_user_ids...]`; 0 in the first slot means
/// this node had been reaped (or never registered) and must re-sync what it holds.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
local out = { known and 1 or 0, redis.call('HLEN', ARGV[3] .. ':node:' .. ARGV[1]) }
-- A node reaps only once it has heartbeaten without a gap for a whole TTL: after a silence of
-- its own (Redis paused or restarted, this node paused) the others get as long to check in.
local since_key = ARGV[3] .. ':since'
if not known or now - tonumber(known) > tonumber(ARGV[2]) then
  redis.call('HSET', since_key, ARGV[1], now)
end
local since = tonumber(redis.call('HGET', since_key, ARGV[1]) or now)
if now - since < tonumber(ARGV[2]) then
  return out
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
for _, node in ipairs(dead) do
  local nk = ARGV[3] .. ':node:' .. node
  for _, u in ipairs(redis.call('HKEYS', nk)) do
    if redis.call('HINCRBY', KEYS[2], u, -1) <= 0 then
      redis.call('HDEL', KEYS[2], u)
      redis.call('HDEL', KEYS[3], u)
      table.insert(out, u)
    end
  end
  redis.call('DEL', nk)
  redis.call('ZREM', KEYS[1], node)
  redis.call('HDEL', since_key, node)
end
return out
"#;

/// A stopping node: its users leave unless another node holds them, then the node is gone.
/// Returns the user ids that went offline.
const LEAVE: &str = r#"
local out = {}
for _, u in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('HINCRBY', KEYS[2], u, -1) <= 0 then
    redis.call('HDEL', KEYS[2], u)
    redis.call('HDEL', KEYS[3], u)
    table.insert(out, u)
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', ARGV[2] .. ':since', ARGV[1])
return out
"#;

pub struct RedisBackend {
    conn: ConnectionManager,
    node_id: String,
    prefix: String,
    node_ttl: Duration,
    op_timeout: Duration,
    hold: Script,
    release: Script,
    heartbeat: Script,
    leave: Script,
    healthy: AtomicBool,
    /// Set when a write or a heartbeat failed: the next successful heartbeat re-syncs this
    /// node's users. A heartbeat that timed out may still run later (Redis paused, then
    /// resumed): it re-registers a node that was reaped meanwhile, so the next heartbeat finds
    /// it registered, and only this flag says its users must be stored again.
    dirty: AtomicBool,
    /// What `online()` answers while Redis is unreachable.
    last_view: Mutex<Vec<User>>,
}

impl RedisBackend {
    pub async fn connect(
        client: redis::Client,
        node_id: String,
        prefix: String,
        node_ttl: Duration,
        op_timeout: Duration,
    ) -> Result<Self, BackendError> {
        let cfg = crate::cluster_link::reconnecting(op_timeout, op_timeout);
        let conn = tokio::time::timeout(
            op_timeout * 5,
            ConnectionManager::new_with_config(client, cfg),
        )
        .await
        .map_err(|_| BackendError::Timeout(op_timeout.as_millis() as u64 * 5))??;
        Ok(Self {
            conn,
            node_id,
            prefix,
            node_ttl,
            op_timeout,
            hold: Script::new(HOLD),
            release: Script::new(RELEASE),
            heartbeat: Script::new(HEARTBEAT),
            leave: Script::new(LEAVE),
            healthy: AtomicBool::new(true),
            // A node restarted under the same id may find what its previous run stored: the
            // first heartbeat makes it what this run holds.
            dirty: AtomicBool::new(true),
            last_view: Mutex::new(Vec::new()),
        })
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{}", self.prefix, suffix)
    }

    fn node_key(&self) -> String {
        format!("{}:node:{}", self.prefix, self.node_id)
    }

    /// Runs `fut` within the op timeout and records health; a failed write marks us dirty.
    async fn bounded<T>(
        &self,
        write: bool,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        let res = match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(BackendError::Redis(e)),
            Err(_) => Err(BackendError::Timeout(self.op_timeout.as_millis() as u64)),
        };
        if res.is_err() {
            if self.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    "redis unreachable: keeping local connections, serving the last known view"
                );
            }
            if write {
                self.dirty.store(true, Ordering::Relaxed);
            }
        }
        res
    }

    async fn hold_one(&self, user: &User) -> Result<bool, BackendError> {
        let json = serde_json::to_string(user)?;
        let mut conn = self.conn.clone();
        let mut inv = self.hold.prepare_invoke();
        inv.key(self.node_key())
            .key(self.key("count"))
            .key(self.key("users"))
            .arg(&user.id)
            .arg(json);
        let n: i64 = self.bounded(true, inv.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }

    async fn release_one(&self, user_id: &str) -> Result<bool, BackendError> {
        let mut conn = self.conn.clone();
        let mut inv = self.release.prepare_invoke();
        inv.key(self.node_key())
            .key(self.key("count"))
            .key(self.key("users"))
            .arg(user_id);
        let n: i64 = self.bounded(true, inv.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }

    /// Makes `p:node:<me>` equal to `held`, announcing what that changes.
    async fn resync(&self, held: &[User], changes: &mut Changes) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let stored: Vec<String> = self
            .bounded(
                false,
                redis::cmd("HKEYS")
                    .arg(self.node_key())
                    .query_async(&mut conn),
            )
            .await?;
        for id in stored
            .iter()
            .filter(|id| !held.iter().any(|u| &u.id == *id))
        {
            if self.release_one(id).await? {
                changes.unconfirmed_leaves.push(id.clone());
            }
        }
        for user in held {
            if self.hold_one(user).await? {
                changes.joins.push(user.clone());
            }
        }
        Ok(())
    }
}

#[async_trait]
impl PresenceBackend for RedisBackend {
    async fn hold(&self, user: &User) -> Result<bool, BackendError> {
        self.hold_one(user).await
    }

    async fn release(&self, user_id: &str) -> Result<bool, BackendError> {
        self.release_one(user_id).await
    }

    async fn online(&self) -> Result<Vec<User>, BackendError> {
        let mut conn = self.conn.clone();
        let fetched: Result<Vec<String>, _> = self
            .bounded(
                false,
                redis::cmd("HVALS")
                    .arg(self.key("users"))
                    .query_async(&mut conn),
            )
            .await;
        let mut view = self.last_view.lock().unwrap_or_else(|p| p.into_inner());
        match fetched {
            Ok(values) => {
                let mut users = values
                    .iter()
                    .map(|v| serde_json::from_str::<User>(v))
                    .collect::<Result<Vec<_>, _>>()?;
                users.sort_by(|a, b| a.id.cmp(&b.id));
                *view = users.clone();
                Ok(users)
            }
            Err(e) => {
                tracing::debug!(error = %e, "online(): serving the last known view");
                Ok(view.clone())
            }
        }
    }

    async fn lookup(&self, ids: &[&str]) -> Result<Vec<Option<User>>, BackendError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let fetched: Vec<Option<String>> = self
            .bounded(
                false,
                redis::cmd("HMGET")
                    .arg(self.key("users"))
                    .arg(ids)
                    .query_async(&mut conn),
            )
            .await?;
        fetched
            .iter()
            .map(|v| {
                v.as_deref()
                    .map(serde_json::from_str::<User>)
                    .transpose()
                    .map_err(BackendError::from)
            })
            .collect()
    }

    async fn maintain(&self, held: Option<&[User]>) -> Result<Changes, BackendError> {
        let mut conn = self.conn.clone();
        let mut inv = self.heartbeat.prepare_invoke();
        inv.key(self.key("nodes"))
            .key(self.key("count"))
            .key(self.key("users"))
            .arg(&self.node_id)
            .arg(self.node_ttl.as_millis() as u64)
            .arg(&self.prefix);
        let out: Vec<redis::Value> = self.bounded(true, inv.invoke_async(&mut conn)).await?;
        let mut changes = Changes::default();
        let mut iter = out.into_iter();
        let registered = matches!(iter.next(), Some(redis::Value::Int(1)));
        let stored = match iter.next() {
            Some(redis::Value::Int(n)) => usize::try_from(n).ok(),
            _ => None,
        };
        for v in iter {
            if let Ok(id) = redis::from_redis_value::<String>(v) {
                changes.leaves.push(id);
            }
        }
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("redis reachable again");
        }
        // What Redis stores for this node must be what it holds. `held` is None while changes
        // are still queued to be stored (the count would differ for no fault of Redis).
        let drifted = held.is_some_and(|h| stored != Some(h.len()));
        if !registered || drifted || self.dirty.swap(false, Ordering::Relaxed) {
            if !registered {
                tracing::info!(node = %self.node_id, "node (re)registered; syncing its users");
            } else if drifted {
                tracing::info!(node = %self.node_id, ?stored, "stored users differ from the held ones; syncing");
            }
            changes.store_lost |= !registered || drifted;
            if let Some(held) = held {
                self.resync(held, &mut changes).await?;
            } else {
                // Re-synced at the next heartbeat that finds the queue empty.
                self.dirty.store(true, Ordering::Relaxed);
            }
        }
        Ok(changes)
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    async fn leave(&self) -> Result<Vec<String>, BackendError> {
        let mut conn = self.conn.clone();
        let mut inv = self.leave.prepare_invoke();
        inv.key(self.node_key())
            .key(self.key("count"))
            .key(self.key("users"))
            .key(self.key("nodes"))
            .arg(&self.node_id)
            .arg(&self.prefix);
        self.bounded(false, inv.invoke_async(&mut conn)).await
    }
}
