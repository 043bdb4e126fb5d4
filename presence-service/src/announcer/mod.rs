//! The announcer: one task per node that applies the model's effects to the shared backend,
//! follows the backend's change log into the node's copy of who is online (`mirror`), and has
//! every change announced (by the mode's strategy, `modes`) and sent (`fanout`), in log order.
//! Every frame to a socket leaves from here, so snapshots, acks and changes keep their order.

mod follow;
mod replies;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::SocketIo;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::backend::{Change, Position, PresenceBackend, What};
use crate::config::EventMode;
use crate::fanout::{Ack, Fanout};
use crate::metrics::Metrics;
use crate::mirror::{Applied, Mirror};
use crate::model::{Effect, PresenceModel, TooManySockets, User};
use crate::modes::{self, Announce, Env};
use crate::paging::Paging;

pub enum Command<A: Adapter> {
    Apply(Effect),
    /// Send `online_users` to a socket that just connected (after its own `Hold`).
    Snapshot(SocketRef<A>),
    /// Answer a socket's `get_online_users`.
    Ack(SocketRef<A>, Ack<A>),
    /// Who is online, for `GET /presence`.
    Online(oneshot::Sender<Vec<User>>),
    /// The link the change log arrives on is back: entries published while it was down never
    /// arrived, so the copy is read again.
    Reload,
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

    pub fn ack(&self, socket: SocketRef<A>, ack: Ack<A>) {
        self.send(Command::Ack(socket, ack));
    }

    /// Everyone online, as this node's sockets are told (empty if the node is stopping).
    pub async fn online(&self) -> Vec<User> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Online(tx));
        rx.await.unwrap_or_default()
    }

    pub fn reload(&self) {
        self.send(Command::Reload);
    }

    /// Starts a clean stop. Resolves once the announcer is ready for the sockets to be closed
    /// (it no longer needs the namespace, which closing the server removes), with a receiver that
    /// fires when this node has left the cluster: every user released after their grace period
    /// (so that users reconnecting to another node meanwhile never flap offline), their leaves
    /// logged, the node deregistered. Past `deadline`, whoever is still held is released at once.
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

    fn socket_count(&self) -> usize {
        self.model().socket_count()
    }

    fn holds(&self, user_id: &str) -> bool {
        self.model().holds(user_id)
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
    /// Diff mode: frames per second broadcasts may cost (see `modes::Diff`).
    pub diff_budget_per_sec: u64,
    pub heartbeat_interval: Duration,
    /// The store's operation timeout: part of how long a hold-over lasts.
    pub op_timeout: Duration,
    /// Diff mode: users per snapshot frame (see [`crate::diff::PageCursor`]).
    pub snapshot_page_size: usize,
}

/// Creates the node's presence and spawns its announcer task. `changes` is the backend's change
/// log as published (`None`: nobody else writes to it, the entries the backend returns are all).
pub fn start<A: Adapter>(
    io: SocketIo<A>,
    backend: Arc<dyn PresenceBackend>,
    changes: Option<mpsc::UnboundedReceiver<Change>>,
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
        mode: modes::for_mode(
            cfg.mode,
            cfg.diff_window,
            cfg.diff_budget_per_sec,
            cfg.snapshot_page_size,
        ),
        paging: Paging::default(),
        fanout: Fanout::new(io, metrics.clone()),
        mirror: Mirror::default(),
        backend,
        changes,
        metrics,
        heartbeat_interval: cfg.heartbeat_interval,
        op_timeout: cfg.op_timeout,
        waiting_snapshot: Vec::new(),
        waiting_ack: Vec::new(),
        stopping: None,
        reload_at: None,
        holding_over: None,
        last_beat: None,
    };
    tokio::spawn(announcer.run(presence.clone(), rx));
    presence
}

struct Announcer<A: Adapter> {
    /// Compat or diff.
    mode: Box<dyn Announce<A>>,
    paging: Paging<A>,
    fanout: Fanout<A>,
    /// Who is online, as this node's sockets are told.
    mirror: Mirror,
    backend: Arc<dyn PresenceBackend>,
    changes: Option<mpsc::UnboundedReceiver<Change>>,
    metrics: Metrics,
    heartbeat_interval: Duration,
    op_timeout: Duration,
    /// Sockets whose snapshot is due, served together after the queue is drained (one copy
    /// and one serialization of the list for all of them, however many connected at once).
    waiting_snapshot: Vec<SocketRef<A>>,
    /// `get_online_users` waiting for an answer, served the same way.
    waiting_ack: Vec<(SocketRef<A>, Ack<A>)>,
    /// Set by [`Command::Stop`]: when to give up waiting, and whom to tell that we are done.
    stopping: Option<(Instant, oneshot::Sender<()>)>,
    /// When the copy is read again from the store: the end of a hold-over, or a retry.
    reload_at: Option<Instant>,
    /// While holding over: the epoch the store is being refilled in, and until when no read
    /// of the store may replace the copy (before then some nodes may not have stored their users
    /// again).
    holding_over: Option<(String, Instant)>,
    /// The log's position at the last heartbeat: whatever was published before it has had a
    /// heartbeat interval to arrive.
    last_beat: Option<Position>,
}

/// Commands handled per turn of the loop before the waiting snapshots are sent: large enough
/// that a connect burst shares one list copy, small enough that timers still run in a flood.
const DRAIN_PER_TURN: usize = 1024;

impl<A: Adapter> Announcer<A> {
    async fn run(
        mut self,
        presence: Arc<Presence<A>>,
        mut rx: mpsc::UnboundedReceiver<Command<A>>,
    ) {
        // Nobody is connected yet: the first read is not announced.
        match self.backend.view().await {
            Ok(view) => {
                self.mirror.load(view, &[]);
                self.metrics.online_users.set(self.mirror.len() as i64);
            }
            // The first heartbeat finds the copy unloaded and reads it.
            Err(e) => tracing::warn!(error = %e, "cannot read who is online yet"),
        }
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Duration::from_secs(3600);
        let mut next_release: Option<Instant> = None;
        loop {
            if self.stopping.is_some() && rx.is_empty() && presence.held().is_empty() {
                break;
            }
            let stop_at = self.stopping.as_ref().map(|(at, _)| *at);
            self.mode.set_audience(presence.socket_count());
            let idle = Instant::now() + far;
            let release_at = next_release.unwrap_or(idle);
            let flush_at = self.mode.flush_due();
            let page_at = self.paging.due();
            let reload_at = self.reload_at;
            tokio::select! {
                biased;
                // Before the queue, so that a flood of connects cannot hold a diff back.
                _ = tokio::time::sleep_until(flush_at.unwrap_or(idle).into()), if flush_at.is_some() => {
                    self.flush();
                }
                // Also before the queue: a connect flood must not stall the snapshots under way.
                _ = tokio::time::sleep_until(page_at.unwrap_or(idle).into()), if page_at.is_some() => {
                    self.paging.send_round(&Env { fanout: &self.fanout, mirror: &self.mirror });
                }
                change = next_change(&mut self.changes) => match change {
                    Some(change) => {
                        self.follow(change, &presence).await;
                        self.drain_changes(&presence).await;
                    }
                    None => {
                        tracing::error!("the change log stream ended; following the store by heartbeat only");
                        self.changes = None;
                    }
                },
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.handle(cmd, &presence).await;
                    for _ in 1..DRAIN_PER_TURN {
                        match rx.try_recv() {
                            Ok(cmd) => self.handle(cmd, &presence).await,
                            Err(_) => break,
                        }
                    }
                    self.send_snapshots();
                    self.send_acks();
                },
                _ = tokio::time::sleep_until(release_at.into()) => {
                    next_release = presence.expire(Instant::now());
                }
                _ = presence.release_changed.notified() => {
                    next_release = presence.expire(Instant::now());
                }
                _ = heartbeat.tick() => self.maintain(&presence, rx.is_empty()).await,
                _ = tokio::time::sleep_until(reload_at.unwrap_or(idle).into()), if reload_at.is_some() => {
                    self.reload(&presence).await;
                }
                _ = tokio::time::sleep_until(stop_at.unwrap_or(idle).into()), if stop_at.is_some() => {
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

    /// The node's last act: whatever it still holds is released (the leaves go into the log,
    /// for the other nodes), the node removed from the cluster.
    async fn leave_cluster(&mut self) {
        match self.backend.leave().await {
            Ok(()) => tracing::info!("left the cluster"),
            Err(e) => {
                tracing::warn!(error = %e, "could not leave the cluster; the other nodes will reap this one")
            }
        }
    }

    async fn handle(&mut self, cmd: Command<A>, presence: &Presence<A>) {
        match cmd {
            Command::Apply(effect) => self.apply(effect, presence).await,
            // A socket's `Hold` was queued before its `Snapshot`, so the copy taken after the
            // drain includes it.
            Command::Snapshot(socket) => self.waiting_snapshot.push(socket),
            Command::Ack(socket, ack) => self.waiting_ack.push((socket, ack)),
            Command::Online(reply) => {
                let _ = reply.send(self.mirror.users());
            }
            Command::Reload => self.reload(presence).await,
            Command::Stop {
                deadline,
                ready,
                done,
            } => {
                self.fanout.keep_namespace();
                self.stopping = Some((deadline, done));
                // Closing the server drops the sockets without their disconnect handlers (the
                // namespace is gone by then): they count as disconnected from now on.
                presence.disconnect_all(Instant::now());
                let _ = ready.send(());
            }
        }
    }

    async fn apply(&mut self, effect: Effect, presence: &Presence<A>) {
        match effect {
            Effect::Hold(user) => match self.backend.hold(&user).await {
                Ok(Some(change)) => self.follow_own(change, presence),
                Ok(None) => {}
                Err(e) => {
                    // Redis outage: this node's sockets still hear about it now; the cluster
                    // hears when the re-sync after the outage stores it.
                    tracing::warn!(error = %e, user = %user.id, "hold not stored; re-synced when the backend is back");
                    let applied = self.mirror.join_unlogged(user);
                    self.announce(applied);
                }
            },
            Effect::Release(id) => match self.backend.release(&id).await {
                Ok(Some(change)) => self.follow_own(change, presence),
                // Nothing logged: another node holds them, the store has them pending, or it
                // had them offline already (this node was reaped) while they were in the copy
                // only because of this node.
                Ok(None) => {
                    let applied = self.mirror.let_go(&id);
                    self.announce(applied);
                }
                // Not announced: during an outage this node cannot tell whether the user is
                // still connected to another node, and a leave for a user who is would make them
                // flap. The re-sync after the outage releases them, and the copy is read again.
                Err(e) => {
                    tracing::warn!(error = %e, user = %id, "release not stored; re-synced when the backend is back");
                }
            },
        }
    }

    fn announce(&mut self, applied: Applied) {
        let Applied::Changed(what) = applied else {
            return;
        };
        if self.mode.snapshots_before_changes() {
            self.send_snapshots();
        }
        let env = Env {
            fanout: &self.fanout,
            mirror: &self.mirror,
        };
        match what {
            What::Join(user) => {
                tracing::debug!(user = %user.id, "online");
                self.mode.joined(&env, user);
            }
            What::Leave(id) => {
                tracing::debug!(user = %id, "offline");
                self.mode.left(&env, id);
            }
        }
        self.metrics.online_users.set(self.mirror.len() as i64);
    }

    fn flush(&mut self) {
        self.mode.flush(&Env {
            fanout: &self.fanout,
            mirror: &self.mirror,
        });
    }
}

async fn next_change(changes: &mut Option<mpsc::UnboundedReceiver<Change>>) -> Option<Change> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
