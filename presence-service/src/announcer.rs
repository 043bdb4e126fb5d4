//! Applies the model's effects to the shared backend, in order, and announces the resulting
//! changes to clients: the seed's events (compat) or batched diffs (diff mode). One task per
//! node, so effects for one user can never overtake each other.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;
use socketioxide::{BroadcastError, SendError, SocketError, SocketIo};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::backend::{Changes, PresenceBackend};
use crate::config::EventMode;
use crate::diff::{DiffBatch, PagedSnapshot, PresenceDiff};
use crate::metrics::Metrics;
use crate::model::{Effect, PresenceModel, TooManySockets, User};

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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OnlineUsers<'a> {
    pub online_users: &'a [User],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserConnected<'a> {
    online_users: &'a [User],
    user: &'a User,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserDisconnected<'a> {
    online_users: &'a [User],
    user_id: &'a str,
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

    fn held(&self) -> Vec<User> {
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
    /// Diff mode: users per snapshot frame (see [`PagedSnapshot`]).
    pub snapshot_page_size: usize,
}

/// The room of sockets that have been sent their snapshot. Every broadcast goes to it only, and
/// a socket joins it in this task right after its `online_users` is queued, so no socket can
/// be sent a change before the list it applies to (diff mode's order; compat's too).
pub const LIVE_ROOM: &str = "presence:live";

/// Who the rest of a paged snapshot goes to.
enum PageRecipients<A: Adapter> {
    /// Sockets that just connected (their `online_users` carried the first page).
    Sockets(Vec<SocketRef<A>>),
    /// Every socket on every node (a cluster-wide refresh).
    Everyone,
}

/// Pause between two rounds of pages: at least this, plus [`PAGE_PAUSE_PER_FRAME`] per frame the
/// round queued. The point is that each socket's writer has put the previous page on the wire
/// (and its client has read it) before the next is queued: pages queued together would sit in
/// the socket's queue together, and a ramp of thousands of late joiners would hold them all.
const PAGE_PAUSE: Duration = Duration::from_millis(1);
/// Roughly what one small frame costs to write and read on this machine's loopback (a send
/// and a receive syscall, the client's frame parsing), measured with `examples/presence_bench`.
const PAGE_PAUSE_PER_FRAME: Duration = Duration::from_micros(10);

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
        presence: Arc::downgrade(&presence),
        io,
        backend,
        metrics,
        cfg,
        batch: DiffBatch::default(),
        last_flush: Instant::now(),
        waiting_snapshot: Vec::new(),
        paging: Vec::new(),
        next_page_at: Instant::now(),
        ns: None,
        stopping: None,
        refresh_at: None,
        held_over: None,
        last_list: Vec::new(),
        unconfirmed_leaves: Vec::new(),
    };
    tokio::spawn(announcer.run(presence.clone(), rx));
    presence
}

struct Announcer<A: Adapter> {
    /// The node's own model (weak: the presence owns the queue this task reads), whose users
    /// compat lists always carry.
    presence: Weak<Presence<A>>,
    io: SocketIo<A>,
    backend: Arc<dyn PresenceBackend>,
    metrics: Metrics,
    cfg: AnnouncerConfig,
    batch: DiffBatch,
    /// When the last `presence_diff` went out: the next one goes out at once if a window has
    /// passed since (a lone change is not delayed), else at the end of that window (a burst
    /// of changes is coalesced).
    last_flush: Instant,
    /// Sockets whose snapshot is due, served together after the queue is drained (one read
    /// and one serialization of the list for all of them, however many connected at once).
    waiting_snapshot: Vec<SocketRef<A>>,
    /// Snapshots still being sent page by page; every page is checked against the backend just
    /// before it goes out, in the announcer's order with the diffs, so a user who left after the
    /// list was read is never announced after their leave.
    paging: Vec<(PagedSnapshot, PageRecipients<A>)>,
    /// When the next round of pages may go out (one page per paged snapshot per round).
    next_page_at: Instant,
    /// The default namespace, kept from the moment the node starts stopping: closing the
    /// server removes it from `io`, and the leaves still have to be broadcast after that.
    ns: Option<BroadcastOperators<A>>,
    /// Set by [`Command::Stop`]: when to give up waiting, and whom to tell that we are done.
    stopping: Option<(Instant, oneshot::Sender<()>)>,
    /// When the refresh asked for by [`Command::Refresh`] goes out.
    refresh_at: Option<Instant>,
    /// Compat mode: the list as it was when the shared store became unreachable, kept (with this
    /// node's own changes applied) until the refresh after it is back. Until every node has
    /// stored its users again, a list read from the store misses some; the seed's events carry
    /// the whole list, and dropping a user who never left would make them flap for everyone.
    held_over: Option<Vec<User>>,
    /// Compat mode: the list the last broadcast carried.
    last_list: Vec<User>,
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
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Duration::from_secs(3600);
        let mut next_release: Option<Instant> = None;
        loop {
            if self.stopping.is_some() && rx.is_empty() && presence.held().is_empty() {
                break;
            }
            let stop_at = self.stopping.as_ref().map(|(at, _)| *at);
            let release_at = next_release.unwrap_or_else(|| Instant::now() + far);
            let flush_at = self.last_flush + self.cfg.diff_window;
            tokio::select! {
                biased;
                // Before the queue, so that a flood of connects cannot hold a diff back.
                _ = tokio::time::sleep_until(flush_at.into()), if !self.batch.is_empty() => {
                    self.flush().await;
                }
                // Also before the queue: a connect flood must not stall the snapshots under way.
                _ = tokio::time::sleep_until(self.next_page_at.into()), if !self.paging.is_empty() => {
                    self.send_pages().await;
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
        match self.backend.leave().await {
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
        self.flush().await;
    }

    async fn handle(&mut self, cmd: Command<A>, presence: &Presence<A>) {
        match cmd {
            Command::Apply(effect) => {
                // Compat mode broadcasts the whole list on each change: a burst of those could
                // fill a waiting socket's queue before its snapshot is in, so they go first.
                if self.cfg.mode == EventMode::Compat {
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
                self.ns = self.io.of("/");
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
        let at = Instant::now() + self.cfg.heartbeat_interval * 2 + self.cfg.emit_timeout;
        self.refresh_at = Some(self.refresh_at.map_or(at, |t| t.max(at)));
    }

    /// `online_users` to every socket on every node: the cross-node link is back, and changes
    /// broadcast while it was down never reached the other nodes.
    async fn refresh(&mut self) {
        self.refresh_at = None;
        self.held_over = None;
        // After the changes queued before it, so the list read here includes them.
        self.flush().await;
        let online = self.online().await;
        let (first, rest) = self.first_page(online);
        self.broadcast(
            "online_users",
            &OnlineUsers {
                online_users: &first,
            },
        )
        .await;
        if let Some(rest) = rest {
            self.start_paging(rest, PageRecipients::Everyone);
        }
    }

    async fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Hold(user) => match self.backend.hold(&user).await {
                Ok(true) => self.joined(user).await,
                Ok(false) => {}
                Err(e) => {
                    // Redis outage: this node's sockets still hear about it now; the cluster hears
                    // when the re-sync after the outage stores it.
                    tracing::warn!(error = %e, user = %user.id, "hold not stored; re-synced when the backend is back");
                    self.joined(user).await;
                }
            },
            Effect::Release(id) => match self.backend.release(&id).await {
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
        match self
            .backend
            .maintain(settled.then_some(held.as_slice()))
            .await
        {
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
                    match self.backend.lookup(&ids).await {
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
                if store_lost && self.cfg.mode == EventMode::Compat && self.held_over.is_none() {
                    // What clients were last told stands until the refresh: the store is being
                    // refilled node by node.
                    self.held_over = Some(self.last_list.clone());
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
        let healthy = self.backend.is_healthy();
        self.metrics.backend_healthy.set(healthy as i64);
        // Refreshes the gauge and the backend's last known view (what an outage serves).
        let online = self.online().await;
        if healthy && self.held_over.is_none() && self.cfg.mode == EventMode::Compat {
            self.last_list.clone_from(&online);
        }
        if !healthy && self.held_over.is_none() && self.cfg.mode == EventMode::Compat {
            self.held_over = Some(online);
        } else if healthy && self.held_over.is_some() && self.refresh_at.is_none() {
            // Back without the link having dropped: the refresh still ends the held-over list.
            self.schedule_refresh();
        }
    }

    async fn online(&self) -> Vec<User> {
        match self.backend.online().await {
            Ok(users) => {
                self.metrics.online_users.set(users.len() as i64);
                users
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read who is online");
                Vec::new()
            }
        }
    }

    async fn joined(&mut self, user: User) {
        tracing::debug!(user = %user.id, "online");
        match self.cfg.mode {
            EventMode::Compat => {
                let mut online = self.compat_list().await;
                // During an outage the list is the last known view: keep it consistent with the event.
                if !online.iter().any(|u| u.id == user.id) {
                    online.push(user.clone());
                }
                if let Some(kept) = &mut self.held_over {
                    kept.retain(|u| u.id != user.id);
                    kept.push(user.clone());
                }
                let payload = UserConnected {
                    online_users: &online,
                    user: &user,
                };
                self.broadcast("user_connected", &payload).await;
                self.last_list = online;
            }
            EventMode::Diff => self.batch.join(user),
        }
    }

    async fn left(&mut self, user_id: String) {
        tracing::debug!(user = %user_id, "offline");
        match self.cfg.mode {
            EventMode::Compat => {
                let mut online = self.compat_list().await;
                online.retain(|u| u.id != user_id);
                if let Some(kept) = &mut self.held_over {
                    kept.retain(|u| u.id != user_id);
                }
                let payload = UserDisconnected {
                    online_users: &online,
                    user_id: &user_id,
                };
                self.broadcast("user_disconnected", &payload).await;
                self.last_list = online;
            }
            EventMode::Diff => self.batch.leave(user_id),
        }
    }

    /// The list a compat event carries: what the store says, plus this node's own users, plus,
    /// until the refresh after an outage, whoever was online before it and has not been seen
    /// leaving since.
    async fn compat_list(&self) -> Vec<User> {
        let mut online = self.online().await;
        let own = self
            .presence
            .upgrade()
            .map(|p| p.held())
            .unwrap_or_default();
        // This node's own users are online whatever the store says: after Redis lost its data,
        // a read before this node's next heartbeat would miss them.
        for user in own.iter().chain(self.held_over.iter().flatten()) {
            if !online.iter().any(|u| u.id == user.id) {
                online.push(user.clone());
            }
        }
        online.sort_by(|a, b| a.id.cmp(&b.id));
        online
    }

    async fn flush(&mut self) {
        self.last_flush = Instant::now();
        if let Some(diff) = self.batch.take() {
            // The online gauge is refreshed by the heartbeat: reading the whole list here would
            // make every diff O(N).
            for page in diff.into_pages(self.cfg.snapshot_page_size) {
                self.broadcast("presence_diff", &page).await;
            }
        }
    }

    /// `online_users` to every waiting socket: the list is read and serialized once; each
    /// socket then only copies the bytes. In diff mode a long list is paged: the rest follows
    /// from [`Self::send_pages`].
    async fn send_snapshots(&mut self) {
        if self.waiting_snapshot.is_empty() {
            return;
        }
        let online = self.online().await;
        let (first, rest) = self.first_page(online);
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
        let mut sent = Vec::with_capacity(self.waiting_snapshot.len());
        for socket in self.waiting_snapshot.drain(..) {
            if let Err(e) = socket.emit("online_users", &*payload as &RawValue) {
                tracing::debug!(error = %e, sid = %socket.id, "snapshot not sent (socket gone?)");
            } else {
                self.metrics.emitted("online_users");
                socket.join(LIVE_ROOM);
                sent.push(socket);
            }
        }
        if let Some(rest) = rest {
            if !sent.is_empty() {
                self.start_paging(rest, PageRecipients::Sockets(sent));
            }
        }
    }

    /// Compat mode keeps the seed's single `online_users`; diff mode pages a long list.
    fn first_page(&self, online: Vec<User>) -> (Vec<User>, Option<PagedSnapshot>) {
        match self.cfg.mode {
            EventMode::Compat => (online, None),
            EventMode::Diff => PagedSnapshot::start(online, self.cfg.snapshot_page_size),
        }
    }

    fn start_paging(&mut self, rest: PagedSnapshot, to: PageRecipients<A>) {
        if self.paging.is_empty() {
            self.next_page_at = Instant::now() + PAGE_PAUSE;
        }
        self.paging.push((rest, to));
    }

    /// One round: the next page of every paged snapshot, as `presence_diff` joins. Users who
    /// left since the list was read are dropped (their leave went out already, or is in the
    /// batch and goes out after this page); users who joined since reach the sockets as diffs.
    async fn send_pages(&mut self) {
        let mut paging = std::mem::take(&mut self.paging);
        let mut frames = 0u32;
        for (pages, to) in &mut paging {
            let Some(page) = pages.next_page() else {
                continue;
            };
            let ids: Vec<&str> = page.iter().map(|u| u.id.as_str()).collect();
            let joins: Vec<User> = match self.backend.lookup(&ids).await {
                Ok(current) => current.into_iter().flatten().collect(),
                Err(e) => {
                    // Outage: the list as read is the last known view, like `online()` serves.
                    tracing::debug!(error = %e, "snapshot page not checked; sent as read");
                    page.to_vec()
                }
            };
            if joins.is_empty() {
                continue;
            }
            let diff = PresenceDiff {
                joins,
                leaves: Vec::new(),
            };
            match to {
                PageRecipients::Everyone => {
                    frames += 1;
                    self.broadcast("presence_diff", &diff).await
                }
                PageRecipients::Sockets(sockets) => {
                    let payload = match serde_json::value::to_raw_value(&diff) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot serialize a snapshot page");
                            continue;
                        }
                    };
                    sockets.retain(|socket| {
                        match socket.emit("presence_diff", &*payload as &RawValue) {
                            Ok(()) => {
                                self.metrics.emitted("presence_diff");
                                frames += 1;
                                true
                            }
                            // A socket that is gone gets no further pages.
                            Err(SendError::Socket(SocketError::Closed)) => false,
                            // Its queue is full: a page lost would leave it a partial list for
                            // good. Closed instead, it reconnects and gets a fresh snapshot.
                            Err(e) => {
                                tracing::warn!(error = %e, sid = %socket.id, "socket too slow for its snapshot; closing it");
                                let _ = socket.clone().disconnect();
                                false
                            }
                        }
                    });
                }
            }
        }
        paging.retain(|(pages, to)| {
            !pages.is_done() && !matches!(to, PageRecipients::Sockets(s) if s.is_empty())
        });
        paging.append(&mut self.paging);
        self.paging = paging;
        self.next_page_at = Instant::now() + PAGE_PAUSE + PAGE_PAUSE_PER_FRAME * frames;
    }

    /// To every socket on every node. If the adapter cannot reach the other nodes (Redis
    /// outage), this node's own sockets are still told.
    async fn broadcast<T: Serialize + ?Sized>(&self, event: &'static str, payload: &T) {
        let Some(ns) = self.ns.clone().or_else(|| self.io.of("/")) else {
            tracing::warn!(event, "no default namespace (server closed?); not sent");
            return;
        };
        let sent = tokio::time::timeout(
            self.cfg.emit_timeout,
            ns.clone().to(LIVE_ROOM).emit(event, payload),
        )
        .await;
        let ok = match sent {
            Ok(Ok(())) => true,
            // The adapter published first: only some of this node's sockets (closing, or too
            // slow) missed it, and re-sending to all of them would duplicate it for the others.
            Ok(Err(BroadcastError::Socket(errors))) => {
                tracing::debug!(
                    event,
                    sockets = errors.len(),
                    "not sent to some local sockets"
                );
                true
            }
            Ok(Err(_)) | Err(_) => false,
        };
        if !ok {
            tracing::warn!(
                event,
                "cluster broadcast failed; emitting to local sockets only"
            );
            if let Err(e) = ns.local().to(LIVE_ROOM).emit(event, payload).await {
                tracing::warn!(event, error = %e, "local broadcast failed");
                return;
            }
        }
        self.metrics.emitted(event);
    }
}
