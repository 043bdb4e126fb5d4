//! Diff mode: changes within a window go out as one `presence_diff`, long lists in pages.

use std::time::{Duration, Instant};

use socketioxide::adapter::Adapter;

use super::{Announce, Env};
use crate::backend::What;
use crate::diff::DiffBatch;
use crate::model::User;

pub struct Diff {
    batch: DiffBatch,
    window: Duration,
    /// Frames per second broadcasts may cost (0: no budget): see `flush_due`.
    budget_per_sec: u64,
    /// Live sockets on this node: what one broadcast costs, in frames.
    audience: usize,
    page_size: usize,
    /// When the last `presence_diff` went out: the next one goes out at once if a window has
    /// passed since (a lone change is not delayed), else at the end of that window (a burst of
    /// changes is coalesced).
    last_flush: Instant,
}

impl Diff {
    pub fn new(window: Duration, budget_per_sec: u64, page_size: usize) -> Self {
        Self {
            batch: DiffBatch::default(),
            window,
            budget_per_sec,
            audience: 0,
            page_size,
            last_flush: Instant::now(),
        }
    }

    /// The least time between two broadcasts: the window, or, while changes come in a burst
    /// (more than one is waiting), longer when one broadcast to every socket would cost more
    /// than the budget allows in a window. So the frames sent per second stay bounded however
    /// fast users join; a change on its own still goes out after the window.
    fn interval(&self) -> Duration {
        if self.budget_per_sec == 0 || self.batch.len() < 2 {
            return self.window;
        }
        let per_broadcast =
            Duration::from_secs_f64(self.audience as f64 / self.budget_per_sec as f64);
        self.window.max(per_broadcast)
    }
}

impl<A: Adapter> Announce<A> for Diff {
    fn joined(&mut self, _env: &Env<'_, A>, user: User) {
        self.batch.join(user);
    }

    fn left(&mut self, _env: &Env<'_, A>, user_id: String) {
        self.batch.leave(user_id);
    }

    /// What the re-read changed goes out as diffs like any other change: every client's list
    /// is this node's copy as of its last frame, so that is exactly what it lacks.
    fn reloaded(&mut self, _env: &Env<'_, A>, changes: Vec<What>) {
        for change in changes {
            match change {
                What::Join(user) => self.batch.join(user),
                What::Leave(id) => self.batch.leave(id),
            }
        }
    }

    fn flush_due(&self) -> Option<Instant> {
        (!self.batch.is_empty()).then(|| self.last_flush + self.interval())
    }

    fn set_audience(&mut self, sockets: usize) {
        self.audience = sockets;
    }

    fn flush(&mut self, env: &Env<'_, A>) {
        self.last_flush = Instant::now();
        if let Some(diff) = self.batch.take() {
            for page in diff.into_pages(self.page_size) {
                env.fanout.broadcast("presence_diff", &page);
            }
        }
    }

    fn page_size(&self) -> Option<usize> {
        Some(self.page_size.max(1))
    }

    fn snapshots_before_changes(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use socketioxide::adapter::LocalAdapter;

    use super::*;

    fn announce(d: &Diff) -> &dyn Announce<LocalAdapter> {
        d
    }

    #[test]
    fn a_flush_is_due_only_with_changes_held_back() {
        let window = Duration::from_millis(50);
        let mut d = Diff::new(window, 0, 2);
        assert_eq!(announce(&d).flush_due(), None);
        d.batch.join(User {
            id: "a".into(),
            name: "A".into(),
        });
        assert_eq!(announce(&d).flush_due(), Some(d.last_flush + window));
    }

    #[test]
    fn many_sockets_stretch_the_window_to_the_budget() {
        let window = Duration::from_millis(50);
        let mut d = Diff::new(window, 40_000, 2);
        d.batch.join(User {
            id: "a".into(),
            name: "A".into(),
        });
        announce_mut(&mut d).set_audience(9_000);
        assert_eq!(
            announce(&d).flush_due(),
            Some(d.last_flush + window),
            "a change on its own: the window"
        );
        d.batch.join(User {
            id: "b".into(),
            name: "B".into(),
        });
        announce_mut(&mut d).set_audience(1_000);
        assert_eq!(announce(&d).flush_due(), Some(d.last_flush + window));
        announce_mut(&mut d).set_audience(9_000);
        assert_eq!(
            announce(&d).flush_due(),
            Some(d.last_flush + Duration::from_millis(225))
        );
    }

    fn announce_mut(d: &mut Diff) -> &mut dyn Announce<LocalAdapter> {
        d
    }
}
