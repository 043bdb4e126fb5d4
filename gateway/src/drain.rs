//! Leaving without a stampede: the paced drain of a gateway process that stops serving.
//!
//! A process stops on SIGTERM, or on SIGQUIT once it has handed its listening sockets to the
//! next process (a binary upgrade, Pingora's graceful upgrade). Either way Pingora stops
//! accepting, but the WebSockets this process relays (`tunnel`) are still open. Closing them
//! all at once would send every client back at the same moment; keeping them until Pingora's
//! grace period ends does the same, later. So they are closed one by one: spread over
//! `drain_secs`, never two closer together than `1 / drain_max_per_sec`, each gap jittered, in
//! no particular order, and tunnels opened meanwhile are included. Once no tunnel and no
//! request is left the process exits at once; Pingora's grace period (hold + drain window +
//! `shutdown_timeout_secs`) is the hard deadline behind it.
//!
//! The phases come from Pingora's execution-phase broadcast, so the signal handling stays
//! Pingora's: SIGTERM holds `shutdown_grace_secs` first (the orchestrator is still moving
//! traffic away), SIGQUIT drains as soon as the new process has taken the sockets.
//!
//! Before any of that, the signal lingers (`LingeringSignals`): for `keepalive_linger_ms` the
//! process keeps serving, and every response closes its connection. When Pingora stops it
//! drops the HTTP/1.1 keep-alive connections that are waiting for their next request, and a
//! client that sent one just then loses it (a polling Socket.IO client sees a transport
//! error). A client that uses its connection during the linger is told to close it instead,
//! and opens a new one elsewhere; only connections idle for the whole linger are dropped.
//! A connection accepted just before the listener stopped is waited for instead: its first
//! request is on its way (`first_request`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use prometheus::{IntCounter, IntGauge};
use rand::Rng;
use tokio::sync::{broadcast, oneshot, Notify};
use tokio::time::Instant;

/// How the drain is paced; from `[gateway]`.
#[derive(Debug, Clone, Copy)]
pub struct DrainSettings {
    /// SIGTERM only: how long tunnels are left alone before the drain starts.
    pub hold: Duration,
    /// The window the closes are spread over.
    pub window: Duration,
    /// The most tunnels closed in any one second.
    pub max_per_sec: u32,
    /// After the last tunnel, how long in-flight requests (long polls) may take to finish.
    pub finish: Duration,
}

impl DrainSettings {
    /// The whole grace period Pingora must give before shutting its runtimes down (which ends
    /// every tunnel still open): the drain's hard deadline.
    pub fn deadline(&self) -> Duration {
        self.hold + self.window + self.finish
    }

    /// Shortest gap between two closes.
    fn min_gap(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.max_per_sec.max(1)))
    }
}

/// The gap before the next close when `left` tunnels remain and `time_left` remains of the
/// window: an even share of what is left, jittered by a factor `jitter` in [0.5, 1.5) and not
/// past the window's end, but never below the rate bound.
pub fn next_gap(s: &DrainSettings, left: usize, time_left: Duration, jitter: f64) -> Duration {
    let share = time_left.div_f64(left.max(1) as f64);
    share
        .mul_f64(jitter.clamp(0.5, 1.5))
        .min(time_left)
        .max(s.min_gap())
}

/// Every open tunnel's stop switch, and the count of requests in flight.
pub struct Drain {
    settings: DrainSettings,
    next_id: AtomicU64,
    /// Tunnels the drain has not picked yet.
    tunnels: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// Tunnels whose ticket is alive: picked ones count until their relay has finished.
    live: AtomicUsize,
    in_flight: AtomicUsize,
    /// HTTP/1 connections accepted whose first request head has not been read yet
    /// (`first_request`).
    awaiting_first: AtomicUsize,
    /// When the last TLS ClientHello arrived, in milliseconds after `born`, plus one (0: never):
    /// its handshake may still be under way, and no application sees it until it is done.
    last_hello: AtomicU64,
    born: Instant,
    /// Listeners whose clean-up (`first_request`) has not finished: the process does not exit
    /// while one still waits for its connections' first requests.
    listeners_open: AtomicUsize,
    /// Woken whenever a tunnel, a request, a connection's wait for its first request or a
    /// listener's clean-up ends.
    ended: Notify,
    /// Set once a graceful shutdown or upgrade starts: responses from then on close their
    /// connection, so no client is left holding an idle keep-alive connection to this process
    /// (Pingora aborts those at its shutdown, and a request the client sent on one meanwhile
    /// fails; a long-polling client then drops its session).
    stopping: AtomicBool,
    /// Set when the process is going away (SIGTERM), not handing its sockets to a successor
    /// (SIGQUIT): readiness then says so, and a load balancer sends new clients elsewhere.
    leaving: AtomicBool,
    closed: IntCounter,
    draining: IntGauge,
}

/// A registered tunnel: resolves [`TunnelTicket::stopped`] when the drain picks it, and
/// unregisters on drop however the tunnel ended.
pub struct TunnelTicket {
    id: u64,
    stop: Option<oneshot::Receiver<()>>,
    drain: Arc<Drain>,
}

impl TunnelTicket {
    /// Resolves when the drain closes this tunnel; pending for ever otherwise.
    pub async fn stopped(&mut self) {
        match self.stop.as_mut() {
            Some(rx) => {
                // Only the drain removes (and so drops) a sender: either way it is time to stop.
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for TunnelTicket {
    fn drop(&mut self) {
        if let Ok(mut t) = self.drain.tunnels.lock() {
            t.remove(&self.id);
        }
        self.drain.live.fetch_sub(1, Ordering::AcqRel);
        self.drain.ended.notify_waiters();
    }
}

/// A request in flight, counted until dropped (with the request's context).
pub struct InFlight(Arc<Drain>);

/// A connection accepted whose first request head has not been read yet; counted until
/// dropped (once the head is read, or with the connection).
pub struct AwaitingFirstRequest(Arc<Drain>);

impl Drop for AwaitingFirstRequest {
    fn drop(&mut self) {
        self.0.awaiting_first.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

impl Drain {
    pub fn new(settings: DrainSettings, closed: IntCounter, draining: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            settings,
            next_id: AtomicU64::new(0),
            tunnels: Mutex::new(HashMap::new()),
            live: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            awaiting_first: AtomicUsize::new(0),
            last_hello: AtomicU64::new(0),
            born: Instant::now(),
            listeners_open: AtomicUsize::new(0),
            ended: Notify::new(),
            stopping: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            closed,
            draining,
        })
    }

    pub fn register(self: &Arc<Self>) -> TunnelTicket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_add(1, Ordering::AcqRel);
        let (tx, rx) = oneshot::channel();
        let stop = match self.tunnels.lock() {
            Ok(mut t) => {
                t.insert(id, tx);
                Some(rx)
            }
            // A poisoned registry only loses the drain's hold on this tunnel.
            Err(_) => None,
        };
        TunnelTicket {
            id,
            stop,
            drain: self.clone(),
        }
    }

    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn connection_accepted(self: &Arc<Self>) -> AwaitingFirstRequest {
        self.awaiting_first.fetch_add(1, Ordering::AcqRel);
        AwaitingFirstRequest(self.clone())
    }

    pub fn awaiting_first_requests(&self) -> usize {
        self.awaiting_first.load(Ordering::Acquire)
    }

    /// A TLS ClientHello has arrived; its handshake is under way.
    pub fn tls_hello_seen(&self) {
        let ms = self.born.elapsed().as_millis() as u64 + 1;
        self.last_hello.fetch_max(ms, Ordering::AcqRel);
    }

    /// When the last ClientHello arrived, if any did.
    fn last_hello(&self) -> Option<Instant> {
        match self.last_hello.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.born + Duration::from_millis(ms - 1)),
        }
    }

    pub fn listener_opened(&self) {
        self.listeners_open.fetch_add(1, Ordering::AcqRel);
    }

    pub fn listener_cleaned_up(&self) {
        self.listeners_open.fetch_sub(1, Ordering::AcqRel);
        self.ended.notify_waiters();
    }

    /// Once a listener has stopped accepting: resolves when every connection it accepted has
    /// sent its first request head (or ended) and no TLS handshake that began less than `limit`
    /// ago may still be under way, or `limit` after the call. A handshake has no hook of its
    /// own from accept to the application, so it is given `limit` from its ClientHello.
    pub async fn first_requests_read(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut told = false;
        loop {
            let woken = self.ended.notified();
            let now = Instant::now();
            let awaiting = self.awaiting_first_requests();
            let handshakes_until = self
                .last_hello()
                .map(|hello| hello + limit)
                .filter(|until| *until > now);
            if awaiting == 0 && handshakes_until.is_none() {
                return;
            }
            if now >= deadline {
                if awaiting > 0 {
                    tracing::info!(
                        connections = awaiting,
                        "closing connections that sent no request"
                    );
                }
                return;
            }
            if !told {
                tracing::info!(
                    connections = awaiting,
                    handshaking = handshakes_until.is_some(),
                    "stopped listening; waiting for the first request of connections accepted just before"
                );
                told = true;
            }
            let wake = handshakes_until.map_or(deadline, |until| until.min(deadline));
            let _ = tokio::time::timeout_at(wake, woken).await;
        }
    }

    /// From now on every response closes its connection.
    pub fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether a graceful shutdown or upgrade has started (see the field).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// A graceful shutdown (not an upgrade) has started.
    pub fn begin_leaving(&self) {
        self.leaving.store(true, Ordering::Release);
        self.begin_stopping();
    }

    /// Whether the process is going away (see the field).
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    pub fn open_tunnels(&self) -> usize {
        self.tunnels.lock().map_or(0, |t| t.len())
    }

    /// Tunnels still relaying, including those the drain has stopped but not yet wound up.
    pub fn live_tunnels(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Stops one tunnel (any); false when none is left.
    fn close_one(&self) -> bool {
        let Ok(mut t) = self.tunnels.lock() else {
            return false;
        };
        let Some(id) = t.keys().next().copied() else {
            return false;
        };
        if let Some(tx) = t.remove(&id) {
            let _ = tx.send(());
            self.closed.inc();
        }
        true
    }

    /// Closes every tunnel, paced, until none is left or the window is over.
    pub async fn pace(&self) {
        let start = Instant::now();
        let end = start + self.settings.window;
        let first = self.open_tunnels();
        let fits = self.settings.window.as_secs_f64() * f64::from(self.settings.max_per_sec);
        if first as f64 > fits {
            tracing::warn!(
                tunnels = first,
                max_per_sec = self.settings.max_per_sec,
                window_secs = self.settings.window.as_secs(),
                "more tunnels than the drain window fits at its rate: the rest end at the deadline"
            );
        }
        tracing::info!(
            tunnels = first,
            window_secs = self.settings.window.as_secs(),
            max_per_sec = self.settings.max_per_sec,
            "draining tunnels"
        );
        // Jitter can leave a few past the window's end: they go at the full rate, within the
        // time left before the deadline.
        let hard_end = end + self.settings.finish;
        // The closes follow a schedule (so a late wake-up does not push every later close back)
        // through a token bucket that refills at the rate and holds a hundredth of a second's
        // worth: catching up never exceeds the rate by more than that.
        let rate = f64::from(self.settings.max_per_sec.max(1));
        let burst = 1.0 + rate / 100.0;
        let mut tokens = 1.0f64;
        let mut refilled = start;
        let mut due = start;
        let mut closed = 0u64;
        loop {
            let left = self.open_tunnels();
            if left == 0 || Instant::now() >= hard_end {
                break;
            }
            let jitter = rand::thread_rng().gen_range(0.5..1.5);
            // The first close waits its share too: a drain never starts with a burst.
            due += next_gap(
                &self.settings,
                left,
                end.saturating_duration_since(due),
                jitter,
            );
            tokio::time::sleep_until(due).await;
            let now = Instant::now();
            tokens = (tokens + (now - refilled).as_secs_f64() * rate).min(burst);
            refilled = now;
            if tokens < 1.0 {
                tokio::time::sleep(Duration::from_secs_f64((1.0 - tokens) / rate)).await;
                let now = Instant::now();
                tokens = (tokens + (now - refilled).as_secs_f64() * rate).min(burst);
                refilled = now;
            }
            tokens -= 1.0;
            if self.close_one() {
                closed += 1;
            }
        }
        tracing::info!(
            closed,
            left = self.open_tunnels(),
            secs = start.elapsed().as_secs_f64(),
            "drain window over"
        );
    }

    /// Resolves once no tunnel, no request and no connection's first request is left and every
    /// listener has cleaned up, or after `limit`.
    async fn idle(&self, limit: Duration) -> bool {
        self.until(limit, || {
            self.live_tunnels() == 0
                && self.requests_in_flight() == 0
                && self.awaiting_first_requests() == 0
                && self.listeners_open.load(Ordering::Acquire) == 0
        })
        .await
    }

    /// Resolves with true once `done` holds (checked whenever something ends), or with its
    /// value after `limit`.
    async fn until(&self, limit: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let woken = self.ended.notified();
            if done() {
                return true;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return done();
            }
        }
    }

    /// Follows Pingora's phases; on a graceful shutdown or upgrade, drains and then exits the
    /// process as soon as nothing is left (Pingora would otherwise sleep its whole grace
    /// period). Runs on a runtime Pingora does not shut down.
    pub async fn follow(self: Arc<Self>, mut phases: broadcast::Receiver<ExecutionPhase>) {
        let mut hold = Duration::ZERO;
        loop {
            match phases.recv().await {
                Ok(ExecutionPhase::GracefulTerminate) => {
                    self.begin_leaving();
                    hold = self.settings.hold;
                }
                Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                    self.stopping.store(true, Ordering::Release);
                    tracing::info!("handing the listening sockets to the new process");
                }
                Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                // A fast shutdown (SIGINT) skips the grace period: nothing to pace.
                Ok(ExecutionPhase::ShutdownRuntimes | ExecutionPhase::Terminated) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        self.draining.set(1);
        if !hold.is_zero() {
            tracing::info!(
                secs = hold.as_secs(),
                tunnels = self.open_tunnels(),
                "stopped accepting; holding tunnels before the drain"
            );
            tokio::time::sleep(hold).await;
        }
        self.pace().await;
        let clean = self.idle(self.settings.finish).await;
        tracing::info!(
            clean,
            tunnels = self.live_tunnels(),
            requests = self.requests_in_flight(),
            awaiting_first_request = self.awaiting_first_requests(),
            "drain done, exiting"
        );
        std::process::exit(0);
    }
}

/// Pingora's own signals (SIGTERM, SIGQUIT, SIGINT), each passed on to it `linger` after it
/// arrives, except SIGINT (fast shutdown), which goes at once. Meanwhile responses close
/// their connections (see the module's doc).
pub struct LingeringSignals {
    drain: Arc<Drain>,
    linger: Duration,
}

impl LingeringSignals {
    pub fn new(drain: Arc<Drain>, linger: Duration) -> Self {
        Self { drain, linger }
    }
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for LingeringSignals {
    async fn recv(&self) -> ShutdownSignal {
        let signal = pingora::server::UnixShutdownSignalWatch.recv().await;
        match signal {
            ShutdownSignal::GracefulTerminate => self.drain.begin_leaving(),
            ShutdownSignal::GracefulUpgrade => self.drain.begin_stopping(),
            ShutdownSignal::FastShutdown => {}
        }
        if !matches!(signal, ShutdownSignal::FastShutdown) && !self.linger.is_zero() {
            tracing::info!(
                ms = self.linger.as_millis() as u64,
                "stopping: every response now closes its connection; lingering before Pingora stops"
            );
            tokio::time::sleep(self.linger).await;
        }
        signal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(window_secs: u64, max_per_sec: u32) -> DrainSettings {
        DrainSettings {
            hold: Duration::ZERO,
            window: Duration::from_secs(window_secs),
            max_per_sec,
            finish: Duration::from_secs(1),
        }
    }

    fn drain(s: DrainSettings) -> Arc<Drain> {
        Drain::new(
            s,
            IntCounter::new("c", "c").unwrap(),
            IntGauge::new("g", "g").unwrap(),
        )
    }

    #[test]
    fn gaps_share_the_window_and_respect_the_rate() {
        let s = settings(10, 100);
        // 10 left in 10 s: about one a second, jittered either way.
        let g = next_gap(&s, 10, Duration::from_secs(10), 1.0);
        assert_eq!(g, Duration::from_secs(1));
        assert_eq!(
            next_gap(&s, 10, Duration::from_secs(10), 0.5),
            Duration::from_millis(500)
        );
        // Many left: never closer than the rate allows, whatever the jitter.
        assert_eq!(
            next_gap(&s, 100_000, Duration::from_secs(10), 0.5),
            Duration::from_millis(10)
        );
        assert_eq!(
            next_gap(&s, 1, Duration::ZERO, 0.7),
            Duration::from_millis(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pace_closes_every_tunnel_within_the_window_never_faster_than_the_rate() {
        let d = drain(settings(2, 10));
        let mut tickets: Vec<TunnelTicket> = (0..15).map(|_| d.register()).collect();
        let start = Instant::now();
        let times = Arc::new(Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        for mut t in tickets.drain(..) {
            let times = times.clone();
            waits.push(tokio::spawn(async move {
                t.stopped().await;
                times.lock().unwrap().push(start.elapsed());
                drop(t);
            }));
        }
        d.pace().await;
        for w in waits {
            w.await.unwrap();
        }
        let mut times = times.lock().unwrap().clone();
        times.sort();
        assert_eq!(times.len(), 15);
        // Within the window (the rate bound may carry the last close one gap past its end).
        assert!(
            *times.last().unwrap() <= Duration::from_millis(2100),
            "{times:?}"
        );
        // Spread over the window, not bunched at its start.
        assert!(
            *times.last().unwrap() >= Duration::from_millis(1500),
            "{times:?}"
        );
        assert!(times[0] > Duration::ZERO, "no burst at the start");
        for w in times.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_millis(100), "{times:?}");
        }
        assert_eq!(d.open_tunnels(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_too_short_for_the_rate_stops_at_the_deadline() {
        let d = drain(settings(1, 5));
        let tickets: Vec<TunnelTicket> = (0..20).map(|_| d.register()).collect();
        let start = Instant::now();
        d.pace().await;
        // At most 5 a second for the window and the finishing time (1 s each): the rest are
        // left for the deadline.
        assert!(start.elapsed() <= Duration::from_millis(2100));
        assert!(d.open_tunnels() >= 9, "{}", d.open_tunnels());
        drop(tickets);
        assert_eq!(d.open_tunnels(), 0);
    }

    #[tokio::test]
    async fn idle_waits_for_requests_in_flight() {
        let d = drain(settings(1, 5));
        let req = d.request_started();
        assert!(!d.idle(Duration::from_millis(50)).await);
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { d2.idle(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        drop(req);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn idle_waits_for_connections_awaiting_their_first_request() {
        let d = drain(settings(1, 5));
        let awaiting = d.connection_accepted();
        assert!(!d.idle(Duration::from_millis(50)).await);
        d.first_requests_read(Duration::from_millis(50)).await;
        assert_eq!(
            d.awaiting_first_requests(),
            1,
            "a bounded wait, not a release"
        );
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { d2.idle(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        drop(awaiting);
        assert!(waiter.await.unwrap());
    }
}
