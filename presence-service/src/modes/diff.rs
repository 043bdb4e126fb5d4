//! Diff mode: changes within a window go out as one `presence_diff`, long lists in pages.

use std::time::{Duration, Instant};

use socketioxide::adapter::Adapter;

use super::{Announce, Env};
use crate::backend::What;
use crate::diff::{DiffBatch, PagedSnapshot};
use crate::model::User;

pub struct Diff {
    batch: DiffBatch,
    window: Duration,
    page_size: usize,
    /// When the last `presence_diff` went out: the next one goes out at once if a window has
    /// passed since (a lone change is not delayed), else at the end of that window (a burst of
    /// changes is coalesced).
    last_flush: Instant,
}

impl Diff {
    pub fn new(window: Duration, page_size: usize) -> Self {
        Self {
            batch: DiffBatch::default(),
            window,
            page_size,
            last_flush: Instant::now(),
        }
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
        (!self.batch.is_empty()).then(|| self.last_flush + self.window)
    }

    fn flush(&mut self, env: &Env<'_, A>) {
        self.last_flush = Instant::now();
        if let Some(diff) = self.batch.take() {
            for page in diff.into_pages(self.page_size) {
                env.fanout.broadcast("presence_diff", &page);
            }
        }
    }

    fn first_page(&self, online: Vec<User>) -> (Vec<User>, Option<PagedSnapshot>) {
        PagedSnapshot::start(online, self.page_size)
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
        let mut d = Diff::new(window, 2);
        assert_eq!(announce(&d).flush_due(), None);
        d.batch.join(User {
            id: "a".into(),
            name: "A".into(),
        });
        assert_eq!(announce(&d).flush_due(), Some(d.last_flush + window));
    }

    #[test]
    fn long_lists_are_paged() {
        let d = Diff::new(Duration::from_millis(50), 2);
        let users: Vec<User> = ["a", "b", "c"]
            .iter()
            .map(|id| User {
                id: (*id).into(),
                name: id.to_uppercase(),
            })
            .collect();
        let (first, rest) = announce(&d).first_page(users);
        assert_eq!(first.len(), 2);
        assert!(rest.is_some());
    }
}
