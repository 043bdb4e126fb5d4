//! The announcer: applies the model's effects to the shared backend, in order, and has the
//! resulting changes announced (by the mode's strategy, `modes`) and sent (`fanout`). One task
//! per node, so effects for one user can never overtake each other, and every frame to a socket
//! leaves from here in order. Payloads are in `payloads`, snapshot paging in `paging`.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::SocketIo;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::backend::{Changes, PresenceBackend};
use crate::config::EventMode;
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::model::{Effect, PresenceModel, TooManySockets, User};
use crate::modes::{self, Announce, Env};
use crate::paging::{PageRecipients, Paging};
use crate::payloads::OnlineUsers;

pub enum Command<A: Adapter> {
    Apply(Effect),
    /// Send `online_users` to a socket that just connected (after its own `Hold`).
    Snapshot(SocketRef<A>),
    /// Send `online_users` to every socket on every node, once every node had a heartbeat to
    /// store its users again: the cluster link is back, and changes broadcast while it was down
    /// never reached the other nodes.
    Refresh,
    /// The node is stopping: see [`Presence::stop`].
    Stop {
        deadline: Instant,
        ready: oneshot::Sender<()>,
        done: oneshot::Sender<()>,
    },
}

/// The node's presence: the model plus the queue to the announcer. Every model change and the
/// enqueueing of its effect happen under one lock, so the queue order is the model's order.
pub struct Presence<A: Adapter> {
    model: Mutex<PresenceModel>,
    tx: mpsc::UnboundedSender<Command<A>>,
    release_changed: Notify,
    metrics: Metrics,
}

impl<A: Adapter> Presence<A> {
    fn model(&self) -> MutexGuard<'_, PresenceModel> {
        // Model methods do not panic midway; a poisoned lock still holds consistent state.
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, cmd: Command<A>) {
        // The announcer lives as long as the server; if it is gone we are shutting down.
        let _ = self.tx.send(cmd);
    }

    /// Counts a socket of `user`, or refuses it past the per-user cap.
    pub fn admit(&self, user: User) -> Result<(), TooManySockets> {
        let mut model = self.model();
        let effect = model.connect(user)?;
        self.metrics
            .connected_sockets
            .set(model.socket_count() as i64);
        if let Some(effect) = effect {
            self.send(Command::Apply(effect));
        }
        Ok(())
    }

    pub fn snapshot(&self, socket: SocketRef<A>) {
        self.send(Command::Snapshot(socket));
    }

    pub fn refresh_cluster(&self) {
        self.send(Command::Refresh);
    }

    /// Starts a clean stop. Resolves once the announcer is ready for the sockets to be closed
    /// (it no longer needs the namespace, which closing the server removes), with a receiver that
    /// fires when this node has left the cluster: every user released after their grace period
    /// (so that users reconnecting to another node meanwhile never flap offline), their leaves
    /// announced, the node deregistered. Past `deadline`, whoever is still held is released
    /// at once.
    pub async fn stop(&self, deadline: Instant) -> oneshot::Receiver<()> {
        let (ready, ready_rx) = oneshot::channel();
        let (done, done_rx) = oneshot::channel();
        self.send(Command::Stop {
            deadline,
            ready,
            done,
        });
        // An error means the announcer is gone already: nothing left to wait for.
        let _ = ready_rx.await;
        done_rx
    }

    pub fn disconnect(&self, user_id: &str) {
        let mut model = self.model();
        model.disconnect(user_id, Instant::now());
        self.metrics
            .connected_sockets
            .set(model.socket_count() as i64);
        drop(model);
        self.release_changed.notify_one();
    }

    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut model = self.model();
        for effect in model.expire(now) {
            self.send(Command::Apply(effect));
        }
        model.next_release()
    }

    pub(crate) fn held(&self) -> Vec<User> {
        self.model().held()
    }

    fn disconnect_all(&self, now: Instant) {
        let mut model = self.model();
        model.disconnect_all(now);
        self.metrics.connected_sockets.set(0);
        drop(model);
        self.release_changed.notify_one();
    }
}

pub struct AnnouncerConfig {
    pub mode: EventMode,
    pub diff_window: Duration,
    pub heartbeat_interval: Duration,
    pub emit_timeout: Duration,
    /// Other nodes share the namespace (the Redis adapter).
    pub clustered: bool,
    /// Diff mode: users per snapshot frame (see [`crate::diff::PagedSnapshot`]).
    pub snapshot_page_size: usize,
}

/// Creates the node's presence and spawns its announcer task.
pub fn start<A: Adapter>(
    io: SocketIo<A>,
    backend: Arc<dyn PresenceBackend>,
    model: PresenceModel,
    metrics: Metrics,
    cfg: AnnouncerConfig,
) -> Arc<Presence<A>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let presence = Arc::new(Presence {
        model: Mutex::new(model),
        tx,
        release_changed: Notify::new(),
        metrics: metrics.clone(),
    });
    let announcer = Announcer {
        mode: modes::for_mode(cfg.mode, cfg.diff_window, cfg.snapshot_page_size),
        paging: Paging::default(),
        core: Core {
            presence: Arc::downgrade(&presence),
            fanout: Fanout::new(io, cfg.clustered, cfg.emit_timeout, metrics.clone()),
            backend,
            metrics,
        },
        heartbeat_interval: cfg.heartbeat_interval,
        emit_timeout: cfg.emit_timeout,
        waiting_snapshot: Vec::new(),
        stopping: None,
        refresh_at: None,
        unconfirmed_leaves: Vec::new(),
    };
    tokio::spawn(announcer.run(presence.clone(), rx));
    presence
}

/// What the announcer hands its strategy and its paging (see [`Env`]).
struct Core<A: Adapter> {
    presence: Weak<Presence<A>>,
    fanout: Fanout<A>,
    backend: Arc<dyn PresenceBackend>,
    metrics: Metrics,
}

impl<A: Adapter> Core<A> {
    fn env(&self) -> Env<'_, A> {
        Env {
            fanout: &self.fanout,
            backend: &*self.backend,
            metrics: &self.metrics,
            presence: &self.presence,
        }
    }
}

struct Announcer<A: Adapter> {
    /// Compat or diff.
    mode: Box<dyn Announce<A>>,
    paging: Paging<A>,
    core: Core<A>,
    heartbeat_interval: Duration,
    emit_timeout: Duration,
    /// Sockets whose snapshot is due, served together after the queue is drained (one read
    /// and one serialization of the list for all of them, however many connected at once).
    waiting_snapshot: Vec<SocketRef<A>>,
    /// Set by [`Command::Stop`]: when to give up waiting, and whom to tell that we are done.
    stopping: Option<(Instant, oneshot::Sender<()>)>,
    /// When the refresh asked for by [`Command::Refresh`] goes out.
    refresh_at: Option<Instant>,
    /// Re-sync leaves waiting for the next heartbeat's check (see [`Changes`]).
    unconfirmed_leaves: Vec<String>,
}

/// Commands handled per turn of the loop before the waiting snapshots are sent: large enough
/// that a connect burst shares one list read, small enough that timers still run in a flood.
const DRAIN_PER_TURN: usize = 1024;

impl<A: Adapter> Announcer<A> {
    async fn run(
        mut self,
        presence: Arc<Presence<A>>,
        mut rx: mpsc::UnboundedReceiver<Command<A>>,
    ) {
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Duration::from_secs(3600);
        let mut next_release: Option<Instant> = None;
        loop {
            if self.stopping.is_some() && rx.is_empty() && presence.held().is_empty() {
                break;
            }
            let stop_at = self.stopping.as_ref().map(|(at, _)| *at);
            let release_at = next_release.unwrap_or_else(|| Instant::now() + far);
            let flush_at = self.mode.flush_due();
            let page_at = self.paging.due();
            tokio::select! {
                biased;
                // Before the queue, so that a flood of connects cannot hold a diff back.
                _ = tokio::time::sleep_until(flush_at.unwrap_or(release_at).into()), if flush_at.is_some() => {
                    self.mode.flush(&self.core.env()).await;
                }
                // Also before the queue: a connect flood must not stall the snapshots under way.
                _ = tokio::time::sleep_until(page_at.unwrap_or(release_at).into()), if page_at.is_some() => {
                    self.paging.send_round(&self.core.env()).await;
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.handle(cmd, &presence).await;
                    for _ in 1..DRAIN_PER_TURN {
                        match rx.try_recv() {
                            Ok(cmd) => self.handle(cmd, &presence).await,
                            Err(_) => break,
                        }
                    }
                    self.send_snapshots().await;
                },
                _ = tokio::time::sleep_until(release_at.into()) => {
                    next_release = presence.expire(Instant::now());
                }
                _ = presence.release_changed.notified() => {
                    next_release = presence.expire(Instant::now());
                }
                _ = heartbeat.tick() => self.maintain(&presence, rx.is_empty()).await,
                _ = tokio::time::sleep_until(self.refresh_at.unwrap_or(release_at).into()), if self.refresh_at.is_some() => {
                    self.refresh().await;
                }
                _ = tokio::time::sleep_until(stop_at.unwrap_or(release_at).into()), if stop_at.is_some() => {
                    tracing::warn!("stop deadline passed; releasing the users still held");
                    break;
                }
            }
        }
        if let Some((_, done)) = self.stopping.take() {
            self.leave_cluster().await;
            let _ = done.send(());
        }
    }

    /// The node's last act: whatever it still holds is released, the leaves announced, the node
    /// removed from the cluster (other nodes need not wait for its heartbeat to expire).
    async fn leave_cluster(&mut self) {
        match self.core.backend.leave().await {
            Ok(leaves) => {
                for id in leaves {
                    self.left(id).await;
                }
                tracing::info!("left the cluster");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not leave the cluster; the other nodes will reap this one")
            }
        }
        self.mode.flush(&self.core.env()).await;
    }

    async fn handle(&mut self, cmd: Command<A>, presence: &Presence<A>) {
        match cmd {
            Command::Apply(effect) => {
                if self.mode.snapshots_before_changes() {
                    self.send_snapshots().await;
                }
                self.apply(effect).await
            }
            // A socket's `Hold` was queued before its `Snapshot`, so the list read after the
            // drain includes it; changes applied meanwhile are in the list too, and in diff mode
            // also reach the socket again as a diff, which clients apply idempotently.
            Command::Snapshot(socket) => self.waiting_snapshot.push(socket),
            Command::Stop {
                deadline,
                ready,
                done,
            } => {
                self.core.fanout.keep_namespace();
                self.stopping = Some((deadline, done));
                // Closing the server drops the sockets without their disconnect handlers (the
                // namespace is gone by then): they count as disconnected from now on.
                presence.disconnect_all(Instant::now());
                let _ = ready.send(());
            }
            Command::Refresh => {
                // Not at once: after Redis lost its data or was paused, every node re-stores
                // its users at its next heartbeat; a list read before they all did would drop
                // users whose sockets never left. Two intervals cover every node's next one.
                self.schedule_refresh();
            }
        }
    }

    fn schedule_refresh(&mut self) {
        let at = Instant::now() + self.heartbeat_interval * 2 + self.emit_timeout;
        self.refresh_at = Some(self.refresh_at.map_or(at, |t| t.max(at)));
    }

    /// `online_users` to every socket on every node: the cross-node link is back, and changes
    /// broadcast while it was down never reached the other nodes.
    async fn refresh(&mut self) {
        self.refresh_at = None;
        self.mode.refreshing();
        // After the changes queued before it, so the list read here includes them.
        self.mode.flush(&self.core.env()).await;
        let online = self.core.env().online().await;
        let (first, rest) = self.mode.first_page(online);
        self.core
            .fanout
            .broadcast(
                "online_users",
                &OnlineUsers {
                    online_users: &first,
                },
            )
            .await;
        if let Some(rest) = rest {
            self.paging.start(rest, PageRecipients::Everyone);
        }
    }

    async fn apply(&mut self, effect: Effect) {
        let backend = &self.core.backend;
        match effect {
            Effect::Hold(user) => match backend.hold(&user).await {
                Ok(true) => self.joined(user).await,
                Ok(false) => {}
                Err(e) => {
                    // Redis outage: this node's sockets still hear about it now; the cluster hears
                    // when the re-sync after the outage stores it.
                    tracing::warn!(error = %e, user = %user.id, "hold not stored; re-synced when the backend is back");
                    self.joined(user).await;
                }
            },
            Effect::Release(id) => match backend.release(&id).await {
                Ok(true) => self.left(id).await,
                Ok(false) => {}
                // Not announced: during an outage this node cannot tell whether the user is
                // still connected to another node, and a leave for a user who is would make them
                // flap. The re-sync after the outage releases them and announces what is true.
                Err(e) => {
                    tracing::warn!(error = %e, user = %id, "release not stored; re-synced when the backend is back");
                }
            },
        }
    }

    /// `settled`: no effect is queued, so the model's users are exactly what should be stored.
    async fn maintain(&mut self, presence: &Presence<A>, settled: bool) {
        let held = presence.held();
        let backend = self.core.backend.clone();
        match backend.maintain(settled.then_some(held.as_slice())).await {
            Ok(Changes {
                joins,
                leaves,
                store_lost,
                unconfirmed_leaves,
            }) => {
                // Last heartbeat's re-sync leaves: every node has had a heartbeat since to store
                // its own holds again, so whoever still looks offline is.
                let to_check = std::mem::replace(&mut self.unconfirmed_leaves, unconfirmed_leaves);
                if !to_check.is_empty() {
                    let ids: Vec<&str> = to_check.iter().map(String::as_str).collect();
                    match backend.lookup(&ids).await {
                        Ok(found) => {
                            for (id, user) in to_check.iter().zip(found) {
                                if user.is_none() {
                                    self.left(id.clone()).await;
                                }
                            }
                        }
                        // Checked again at the next heartbeat.
                        Err(_) => self.unconfirmed_leaves.extend(to_check),
                    }
                }
                if store_lost && self.mode.store_lost() {
                    self.schedule_refresh();
                }
                for id in leaves {
                    tracing::info!(user = %id, "user removed (its node stopped heartbeating, or re-sync)");
                    self.left(id).await;
                }
                for user in joins {
                    self.joined(user).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
        }
        let healthy = backend.is_healthy();
        self.core.metrics.backend_healthy.set(healthy as i64);
        // Refreshes the gauge and the backend's last known view (what an outage serves).
        let online = self.core.env().online().await;
        if self.mode.heartbeat(online, healthy) && self.refresh_at.is_none() {
            self.schedule_refresh();
        }
    }

    async fn joined(&mut self, user: User) {
        tracing::debug!(user = %user.id, "online");
        self.mode.joined(&self.core.env(), user).await;
    }

    async fn left(&mut self, user_id: String) {
        tracing::debug!(user = %user_id, "offline");
        self.mode.left(&self.core.env(), user_id).await;
    }

    /// `online_users` to every waiting socket: the list is read and serialized once; each
    /// socket then only copies the bytes. In diff mode a long list is paged: the rest follows
    /// from [`Paging::send_round`].
    async fn send_snapshots(&mut self) {
        if self.waiting_snapshot.is_empty() {
            return;
        }
        let online = self.core.env().online().await;
        let (first, rest) = self.mode.first_page(online);
        let payload = match serde_json::value::to_raw_value(&OnlineUsers {
            online_users: &first,
        }) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize the online list");
                self.waiting_snapshot.clear();
                return;
            }
        };
        let sent = self
            .core
            .fanout
            .snapshot(self.waiting_snapshot.drain(..), &payload);
        if let Some(rest) = rest {
            if !sent.is_empty() {
                self.paging.start(rest, PageRecipients::Sockets(sent));
            }
        }
    }
}
