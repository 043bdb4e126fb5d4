//! The Socket.IO adapter's pub/sub link to the other nodes, kept working across Redis restarts.
//!
//! socketioxide-redis 0.4's own `RedisDriver` holds one plain `MultiplexedConnection`. When Redis
//! restarts, that connection is dead for good: its subscriptions are gone, every publish fails,
//! and cross-node broadcasts stay broken until the process is restarted. Its other drivers do not
//! fit either (the cluster one needs a Redis Cluster; the fred one uses sharded pub/sub and fred
//! queues commands during an outage, so stale broadcasts would arrive after it).
//!
//! So this is the same small glue as `RedisDriver`, over the redis crate's `ConnectionManager`
//! instead: the manager reconnects by itself, notices a dropped connection at once through
//! RESP3's disconnect notification, and with `set_automatic_resubscription` re-sends every
//! SUBSCRIBE on the new connection. No protocol code lives here. What this module adds is a
//! check, once per heartbeat, that the connection really is subscribed to every channel the
//! adapter asked for (`CLIENT INFO` on that very connection): it re-subscribes if the redis
//! crate's replay did not take, and it is what `/readyz` reports. (`CLIENT INFO`: Redis 6.2+.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, FromRedisValue, PushInfo, PushKind, RedisError};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

type Handlers = HashMap<String, mpsc::Sender<ChanItem>>;

/// A `ConnectionManager` that reconnects without giving up, attempts at most `max_wait` apart
/// (twice that with the jitter): a Redis that comes back is found within about that. Used for
/// the presence store too.
pub fn reconnecting(op_timeout: Duration, max_wait: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(op_timeout))
        .set_connection_timeout(Some(op_timeout))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(max_wait)
        // After the last retry a failed connection stays failed until a command comes by; the
        // heartbeat would bring one, but a Redis down for minutes should not cost a heartbeat more.
        .set_number_of_retries(usize::MAX)
}

/// The adapter's driver. Clones share the connection, the channel handlers and the status.
#[derive(Clone)]
pub struct ClusterLink {
    conn: ConnectionManager,
    handlers: Arc<RwLock<Handlers>>,
    status: LinkStatus,
}

/// Whether cross-node broadcast works right now, as last checked.
#[derive(Clone)]
pub struct LinkStatus(Arc<AtomicBool>);

impl LinkStatus {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("redis did not answer within {0} ms")]
    Timeout(u128),
    #[error("subscribed to {have} of {want} channels; re-subscribing")]
    Unsubscribed { have: usize, want: usize },
}

impl ClusterLink {
    /// `client` must speak RESP3 (push messages carry the pub/sub traffic).
    pub async fn connect(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> Result<Self, RedisError> {
        let handlers: Arc<RwLock<Handlers>> = Arc::default();
        let sink = handlers.clone();
        let config = config
            .set_push_sender(move |msg: PushInfo| {
                deliver(msg, &read(&sink));
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription();
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            conn,
            handlers,
            status: LinkStatus(Arc::new(AtomicBool::new(true))),
        })
    }

    pub fn status(&self) -> LinkStatus {
        self.status.clone()
    }

    /// Ok when the connection answers and is subscribed to every channel the adapter asked for.
    /// If it answers but lacks some, subscribes again (the next check tells whether that took).
    pub async fn check(&self) -> Result<(), LinkError> {
        let want: Vec<String> = read(&self.handlers).keys().cloned().collect();
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("CLIENT")
            .arg("INFO")
            .query_async(&mut conn)
            .await?;
        let have = subscriptions(&info);
        if have >= want.len() {
            return Ok(());
        }
        for chan in &want {
            conn.subscribe(chan).await?;
        }
        Err(LinkError::Unsubscribed {
            have,
            want: want.len(),
        })
    }

    /// Checks the link every `every` (each check bounded by `timeout`), keeps the status and the
    /// metric up to date, and calls `on_recovered` each time it comes back: broadcasts sent while
    /// it was down never reached the other nodes.
    pub fn watch(
        &self,
        every: Duration,
        timeout: Duration,
        metrics: Metrics,
        on_recovered: impl Fn() + Send + 'static,
    ) {
        let link = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let res = match tokio::time::timeout(timeout, link.check()).await {
                    Ok(res) => res,
                    Err(_) => Err(LinkError::Timeout(timeout.as_millis())),
                };
                let up = res.is_ok();
                metrics.cluster_link_up.set(up as i64);
                let was = link.status.0.swap(up, Ordering::Relaxed);
                match res {
                    Err(e) if was => {
                        tracing::warn!(error = %e, "cluster link down: broadcasts reach this node's sockets only")
                    }
                    Err(e) => tracing::debug!(error = %e, "cluster link still down"),
                    Ok(()) if !was => {
                        tracing::info!("cluster link up again: re-subscribed to the other nodes");
                        on_recovered();
                    }
                    Ok(()) => {}
                }
            }
        });
    }
}

fn read(handlers: &RwLock<Handlers>) -> RwLockReadGuard<'_, Handlers> {
    // Single inserts and removes: a poisoned map is still consistent.
    handlers.read().unwrap_or_else(|p| p.into_inner())
}

fn write(handlers: &RwLock<Handlers>) -> RwLockWriteGuard<'_, Handlers> {
    handlers.write().unwrap_or_else(|p| p.into_inner())
}

/// Hands a published message to the adapter stream of its channel.
fn deliver(msg: PushInfo, handlers: &Handlers) {
    if msg.kind != PushKind::Message {
        return;
    }
    let mut data = msg.data.into_iter();
    let (Some(chan), Some(payload)) = (data.next(), data.next()) else {
        return;
    };
    let (Ok(chan), Ok(payload)) = (
        String::from_redis_value(chan),
        Vec::<u8>::from_redis_value(payload),
    ) else {
        tracing::warn!("unreadable pub/sub message dropped");
        return;
    };
    match handlers.get(&chan) {
        Some(tx) => {
            if let Err(e) = tx.try_send((chan, payload)) {
                tracing::warn!(error = %e, "cluster message dropped: adapter stream full");
            }
        }
        None => tracing::debug!(chan, "message for a channel nobody listens to"),
    }
}

/// The `sub=` count of a `CLIENT INFO` line: channels this connection is subscribed to.
fn subscriptions(info: &str) -> usize {
    info.split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("sub="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Driver for ClusterLink {
    type Error = RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        self.conn
            .clone()
            .publish::<_, _, redis::Value>(chan, val)
            .await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        // Before SUBSCRIBE, so that no message arrives for a channel without its handler.
        write(&self.handlers).insert(chan.clone(), tx);
        if let Err(e) = self.conn.clone().subscribe(&chan).await {
            write(&self.handlers).remove(&chan);
            return Err(e);
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        write(&self.handlers).remove(&chan);
        self.conn.clone().unsubscribe(chan).await
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_subscription_count_of_client_info() {
        let info = "id=7 addr=127.0.0.1:5 laddr=127.0.0.1:6379 fd=9 name= age=1 idle=0 flags=P db=0 sub=3 psub=0 ssub=0 multi=-1";
        assert_eq!(subscriptions(info), 3);
        assert_eq!(subscriptions("id=7 psub=2"), 0);
    }

    #[test]
    fn delivers_a_message_to_its_channel_only() {
        let (tx, mut rx) = mpsc::channel(1);
        let handlers = Handlers::from([("a".to_string(), tx)]);
        let msg = |chan: &str| PushInfo {
            kind: PushKind::Message,
            data: vec![
                redis::Value::BulkString(chan.into()),
                redis::Value::BulkString(b"hi".to_vec()),
            ],
        };
        deliver(msg("b"), &handlers);
        deliver(msg("a"), &handlers);
        assert_eq!(rx.try_recv().unwrap(), ("a".to_string(), b"hi".to_vec()));
        assert!(rx.try_recv().is_err());
    }
}
