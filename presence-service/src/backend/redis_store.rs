//! Presence state in Redis, shared by every node, and the change log every node follows.
//!
//! Keys (prefix `p`):
//! - `p:node:<node>`  hash user id -> 1: the users this node holds.
//! - `p:count`        hash user id -> number of nodes holding the user.
//! - `p:users`        hash user id -> User JSON: everyone online.
//! - `p:pending`      sorted set user id -> when: users whose last holder let go during a
//!   re-sync; still online until a later heartbeat confirms nobody took them.
//! - `p:nodes`        sorted set node -> last heartbeat (Redis clock, ms).
//! - `p:since`        hash node -> start of its current run of heartbeats without a gap.
//! - `p:epoch`, `p:seq`  the change log's position; `p:changes` the channel it is published on.
//!
//! Every change is one Lua script, so "came online" / "went offline" is decided atomically, by
//! exactly one node, and the same script numbers it (`p:seq`) and publishes it. Redis runs
//! scripts one at a time and delivers a channel's messages in the order they were published,
//! so every node receives the log in sequence order; a node that finds a gap re-reads the view.
//! When Redis lost its data, the next script starts a new epoch (named by the node that ran it
//! and Redis's clock) and the sequence starts over.
//!
//! A node heartbeats every `heartbeat_interval`; any node that finds a node silent for `node_ttl`
//! reaps it (its users leave unless another node holds them). So a crashed node's users are gone
//! within `node_ttl + heartbeat_interval`. A node that was silent that long itself reaps nobody
//! until it has heartbeaten for a TTL again: after a Redis pause every node's heartbeat is late,
//! and none of them is dead. A node that stops cleanly releases its users and removes itself.
//! These scripts touch keys they compute from the prefix: fine on one Redis, not on a cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

use super::{BackendError, Change, Position, PresenceBackend, View, What};
use crate::model::User;

/// Shared by every script. `ARGV[1]` is the key prefix, `ARGV[2]` this node's id.
const PRELUDE: &str = r#"
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function epoch()
  local e = redis.call('GET', P .. ':epoch')
  if not e then
    local t = redis.call('TIME')
    e = ARGV[2] .. '.' .. t[1] .. '.' .. t[2]
    redis.call('SET', P .. ':epoch', e)
    redis.call('SET', P .. ':seq', 0)
  end
  return e
end
local function log(body)
  local e = epoch()
  local s = redis.call('INCR', P .. ':seq')
  redis.call('PUBLISH', P .. ':changes', '{"e":' .. cjson.encode(e) .. ',"s":' .. s .. ',' .. body .. '}')
  return { e, s }
end
local function went_offline(u)
  redis.call('HDEL', P .. ':count', u)
  redis.call('HDEL', P .. ':users', u)
  return log('"l":' .. cjson.encode(u))
end
"#;

/// `ARGV[3]` user id, `ARGV[4]` User JSON. Logs a join if the user came online (unless a
/// re-sync had them pending: they never went) or their stored entry changed.
const HOLD: &str = r#"
local id, json = ARGV[3], ARGV[4]
local old = redis.call('HGET', P .. ':users', id)
redis.call('HSET', P .. ':users', id, json)
local came = false
if redis.call('HSETNX', P .. ':node:' .. ARGV[2], id, '1') == 1 then
  if redis.call('HINCRBY', P .. ':count', id, 1) == 1 then
    came = redis.call('ZREM', P .. ':pending', id) == 0
  end
end
if came or old ~= json then return log('"j":' .. json) end
return false
"#;

/// `ARGV[3]` user id, `ARGV[4]` '1' for a re-sync's release: a user nobody holds any more is
/// then left pending (see `p:pending`) instead of leaving at once, because after an outage the
/// other nodes may not have stored their own holds again yet.
const RELEASE: &str = r#"
local id = ARGV[3]
if redis.call('HDEL', P .. ':node:' .. ARGV[2], id) == 1 then
  if redis.call('HINCRBY', P .. ':count', id, -1) <= 0 then
    if ARGV[4] == '1' then
      redis.call('HDEL', P .. ':count', id)
      redis.call('ZADD', P .. ':pending', now_ms(), id)
      return false
    end
    return went_offline(id)
  end
end
return false
"#;

/// Heartbeat (`ARGV[3]` TTL ms, `ARGV[4]` how long a pending user waits, ms), then reap every
/// node silent for longer than the TTL once this node has itself heartbeaten without a gap for a
/// TTL (`p:since`), and let go of the pending users nobody took. Returns
/// `[self_was_registered, users_stored_for_self, epoch, seq]`; 0 in the first slot means this
/// node had been reaped (or never registered) and must re-sync what it holds.
const HEARTBEAT: &str = r#"
local me, ttl = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local known = redis.call('ZSCORE', P .. ':nodes', me)
redis.call('ZADD', P .. ':nodes', now, me)
local registered = known and 1 or 0
local stored = redis.call('HLEN', P .. ':node:' .. me)
local since_key = P .. ':since'
if not known or now - tonumber(known) > ttl then
  redis.call('HSET', since_key, me, now)
end
local since = tonumber(redis.call('HGET', since_key, me) or now)
if now - since >= ttl then
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', now - ttl)) do
    local nk = P .. ':node:' .. node
    for _, u in ipairs(redis.call('HKEYS', nk)) do
      if redis.call('HINCRBY', P .. ':count', u, -1) <= 0 then went_offline(u) end
    end
    redis.call('DEL', nk)
    redis.call('ZREM', P .. ':nodes', node)
    redis.call('HDEL', since_key, node)
  end
  for _, u in ipairs(redis.call('ZRANGEBYSCORE', P .. ':pending', '-inf', now - tonumber(ARGV[4]))) do
    redis.call('ZREM', P .. ':pending', u)
    if redis.call('HEXISTS', P .. ':count', u) == 0 then went_offline(u) end
  end
end
local e = epoch()
return { registered, stored, e, tonumber(redis.call('GET', P .. ':seq') or 0) }
"#;

/// A stopping node: its users leave unless another node holds them, then the node is gone.
const LEAVE: &str = r#"
local nk = P .. ':node:' .. ARGV[2]
for _, u in ipairs(redis.call('HKEYS', nk)) do
  if redis.call('HINCRBY', P .. ':count', u, -1) <= 0 then went_offline(u) end
end
redis.call('DEL', nk)
redis.call('ZREM', P .. ':nodes', ARGV[2])
redis.call('HDEL', P .. ':since', ARGV[2])
return 1
"#;

/// Everyone online and the log position that list is as of, read together.
const VIEW: &str = r#"
local e = epoch()
return { e, tonumber(redis.call('GET', P .. ':seq') or 0), redis.call('HVALS', P .. ':users') }
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

pub struct RedisBackend {
    conn: ConnectionManager,
    node_id: String,
    prefix: String,
    node_ttl: Duration,
    /// How long a user a re-sync let go stays pending (see `p:pending`).
    pending_for: Duration,
    op_timeout: Duration,
    hold: Script,
    release: Script,
    heartbeat: Script,
    leave: Script,
    view: Script,
    healthy: AtomicBool,
    /// Set when a write or a heartbeat failed: the next successful heartbeat re-syncs this
    /// node's users. A heartbeat that timed out may still run later (Redis paused, then
    /// resumed): it re-registers a node that was reaped meanwhile, so the next heartbeat finds
    /// it registered, and only this flag says its users must be stored again.
    dirty: AtomicBool,
}

impl RedisBackend {
    pub async fn connect(
        client: redis::Client,
        node_id: String,
        prefix: String,
        node_ttl: Duration,
        heartbeat_interval: Duration,
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
            // Every node re-stores its holds at its first heartbeat after an outage: two
            // intervals cover every node's next one.
            pending_for: heartbeat_interval * 2,
            op_timeout,
            hold: script(HOLD),
            release: script(RELEASE),
            heartbeat: script(HEARTBEAT),
            leave: script(LEAVE),
            view: script(VIEW),
            healthy: AtomicBool::new(true),
            // A node restarted under the same id may find what its previous run stored: the
            // first heartbeat makes it what this run holds.
            dirty: AtomicBool::new(true),
        })
    }

    /// The channel the change log is published on.
    pub fn changes_channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    fn invocation<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.arg(&self.prefix).arg(&self.node_id);
        inv
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

    async fn hold_one(&self, user: &User) -> Result<Option<Change>, BackendError> {
        let json = serde_json::to_string(user)?;
        let mut conn = self.conn.clone();
        let mut inv = self.invocation(&self.hold);
        inv.arg(&user.id).arg(json);
        let logged: Option<(String, u64)> = self.bounded(true, inv.invoke_async(&mut conn)).await?;
        Ok(logged.map(|(epoch, seq)| Change {
            at: Position { epoch, seq },
            what: What::Join(user.clone()),
        }))
    }

    async fn release_one(
        &self,
        user_id: &str,
        resync: bool,
    ) -> Result<Option<Change>, BackendError> {
        let mut conn = self.conn.clone();
        let mut inv = self.invocation(&self.release);
        inv.arg(user_id).arg(if resync { "1" } else { "0" });
        let logged: Option<(String, u64)> = self.bounded(true, inv.invoke_async(&mut conn)).await?;
        Ok(logged.map(|(epoch, seq)| Change {
            at: Position { epoch, seq },
            what: What::Leave(user_id.to_string()),
        }))
    }

    /// Makes `p:node:<me>` equal to `held`; the changes go into the log.
    async fn resync(&self, held: &[User]) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let stored: Vec<String> = self
            .bounded(
                false,
                redis::cmd("HKEYS")
                    .arg(format!("{}:node:{}", self.prefix, self.node_id))
                    .query_async(&mut conn),
            )
            .await?;
        for id in stored
            .iter()
            .filter(|id| !held.iter().any(|u| &u.id == *id))
        {
            self.release_one(id, true).await?;
        }
        for user in held {
            self.hold_one(user).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl PresenceBackend for RedisBackend {
    async fn hold(&self, user: &User) -> Result<Option<Change>, BackendError> {
        self.hold_one(user).await
    }

    async fn release(&self, user_id: &str) -> Result<Option<Change>, BackendError> {
        self.release_one(user_id, false).await
    }

    async fn view(&self) -> Result<View, BackendError> {
        let mut conn = self.conn.clone();
        let inv = self.invocation(&self.view);
        let (epoch, seq, values): (String, u64, Vec<String>) =
            self.bounded(false, inv.invoke_async(&mut conn)).await?;
        let mut users = values
            .iter()
            .map(|v| serde_json::from_str::<User>(v))
            .collect::<Result<Vec<_>, _>>()?;
        users.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(View {
            at: Position { epoch, seq },
            users,
        })
    }

    async fn maintain(&self, held: Option<&[User]>) -> Result<Position, BackendError> {
        let mut conn = self.conn.clone();
        let mut inv = self.invocation(&self.heartbeat);
        inv.arg(self.node_ttl.as_millis() as u64)
            .arg(self.pending_for.as_millis() as u64);
        let (registered, stored, epoch, seq): (i64, i64, String, u64) =
            self.bounded(true, inv.invoke_async(&mut conn)).await?;
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("redis reachable again");
        }
        // What Redis stores for this node must be what it holds. `held` is None while changes
        // are still queued to be stored (the count would differ for no fault of Redis).
        let drifted = held.is_some_and(|h| usize::try_from(stored).ok() != Some(h.len()));
        if registered == 0 || drifted || self.dirty.swap(false, Ordering::Relaxed) {
            if registered == 0 {
                tracing::info!(node = %self.node_id, "node (re)registered; syncing its users");
            } else if drifted {
                tracing::info!(node = %self.node_id, stored, "stored users differ from the held ones; syncing");
            }
            if let Some(held) = held {
                self.resync(held).await?;
            } else {
                // Re-synced at the next heartbeat that finds the queue empty.
                self.dirty.store(true, Ordering::Relaxed);
            }
        }
        Ok(Position { epoch, seq })
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    async fn leave(&self) -> Result<(), BackendError> {
        let mut conn = self.conn.clone();
        let inv = self.invocation(&self.leave);
        let _: i64 = self.bounded(false, inv.invoke_async(&mut conn)).await?;
        Ok(())
    }
}
