//! The paced drain of a node that is shutting down: its sockets are closed a few at a time over
//! `server.drain_ms`, never more than `server.drain_max_per_sec` in any second, in random order
//! and with jittered gaps, so that the clients reconnect to the other nodes in a trickle rather
//! than all at once (no stampede on the survivors or the gateway). Each close is a transport
//! close: the client reconnects by itself, and its user's grace period covers the move, so
//! nobody sees the user go offline.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use socketioxide::adapter::Adapter;
use socketioxide::SocketIo;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct DrainPace {
    pub window: Duration,
    pub max_per_sec: u32,
}

impl DrainPace {
    /// The gap before the next close with `left` sockets and `time_left` of the window: an even
    /// share jittered by `jitter` in [0.5, 1.5), not past the window's end, never below the
    /// rate bound.
    pub fn gap(&self, left: usize, time_left: Duration, jitter: f64) -> Duration {
        let min = Duration::from_secs_f64(1.0 / f64::from(self.max_per_sec.max(1)));
        time_left
            .div_f64(left.max(1) as f64)
            .mul_f64(jitter.clamp(0.5, 1.5))
            .min(time_left)
            .max(min)
    }
}

/// Closes this node's sockets, paced; the ones left when the window (and as long again for
/// stragglers at the full rate) is over are left to `SocketIo::close`.
pub async fn close_paced<A: Adapter>(io: &SocketIo<A>, pace: DrainPace) -> usize {
    // Ids, not sockets: a socket whose client leaves during the drain must be dropped at once
    // (its drop is what counts its user out), not held until its turn comes.
    let mut sockets: Vec<_> = io.sockets().iter().map(|s| s.id).collect();
    sockets.shuffle(&mut rand::thread_rng());
    let total = sockets.len();
    if total == 0 {
        return 0;
    }
    let start = Instant::now();
    let end = start + pace.window;
    let hard_end = end + pace.window;
    tracing::info!(
        sockets = total,
        window_ms = pace.window.as_millis() as u64,
        max_per_sec = pace.max_per_sec,
        "draining: closing sockets a few at a time"
    );
    let mut closed = 0;
    while let Some(sid) = sockets.pop() {
        // Gone already: no turn to wait for.
        if io.get_socket(sid).is_none() {
            continue;
        }
        let now = Instant::now();
        if now >= hard_end {
            sockets.push(sid);
            break;
        }
        let jitter = rand::thread_rng().gen_range(0.5..1.5);
        let gap = pace.gap(
            sockets.len() + 1,
            end.saturating_duration_since(now),
            jitter,
        );
        tokio::time::sleep(gap).await;
        if let Some(socket) = io.get_socket(sid) {
            socket.close_transport();
            closed += 1;
        }
    }
    tracing::info!(
        closed,
        left = sockets.len(),
        secs = start.elapsed().as_secs_f64(),
        "drain window over"
    );
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_share_the_window_within_the_rate() {
        let p = DrainPace {
            window: Duration::from_secs(10),
            max_per_sec: 20,
        };
        assert_eq!(
            p.gap(10, Duration::from_secs(10), 1.0),
            Duration::from_secs(1)
        );
        assert_eq!(
            p.gap(10, Duration::from_secs(10), 1.4),
            Duration::from_millis(1400)
        );
        assert_eq!(
            p.gap(1_000_000, Duration::from_secs(10), 0.5),
            Duration::from_millis(50)
        );
        assert_eq!(p.gap(3, Duration::ZERO, 1.0), Duration::from_millis(50));
    }
}
