//! How changes are announced: the seed's whole-list events (compat) or batched diffs (diff),
//! two strategies behind one interface that the announcer drives.

use std::sync::Weak;
use std::time::Instant;

use async_trait::async_trait;
use socketioxide::adapter::Adapter;

use crate::announcer::Presence;
use crate::backend::PresenceBackend;
use crate::config::EventMode;
use crate::diff::PagedSnapshot;
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::model::User;

mod compat;
mod diff;

pub use compat::Compat;
pub use diff::Diff;

/// What a strategy may use: where frames go and what the store and this node hold.
pub struct Env<'a, A: Adapter> {
    pub fanout: &'a Fanout<A>,
    pub backend: &'a dyn PresenceBackend,
    pub metrics: &'a Metrics,
    /// The node's own presence (weak: it owns the queue the announcer reads).
    pub presence: &'a Weak<Presence<A>>,
}

impl<A: Adapter> Env<'_, A> {
    /// Who is online according to the store (empty, with a warning, if it cannot be read).
    pub async fn online(&self) -> Vec<User> {
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

    /// The users this node's own sockets hold.
    pub fn own(&self) -> Vec<User> {
        self.presence
            .upgrade()
            .map(|p| p.held())
            .unwrap_or_default()
    }
}

#[async_trait]
pub trait Announce<A: Adapter>: Send {
    /// A user came online (their first socket, on any node).
    async fn joined(&mut self, env: &Env<'_, A>, user: User);
    /// A user went offline.
    async fn left(&mut self, env: &Env<'_, A>, user_id: String);
    /// When changes held back for batching must go out, if any are.
    fn flush_due(&self) -> Option<Instant>;
    /// Sends the changes held back, if any.
    async fn flush(&mut self, env: &Env<'_, A>);
    /// Splits a snapshot's list into the `online_users` frame and the pages still to send.
    fn first_page(&self, online: Vec<User>) -> (Vec<User>, Option<PagedSnapshot>);
    /// Whether waiting snapshots must go out before a change is announced.
    fn snapshots_before_changes(&self) -> bool;
    /// The store lost its data. Returns whether a refresh must follow.
    fn store_lost(&mut self) -> bool;
    /// The heartbeat's read of the list, and whether the store is reachable. Returns whether a
    /// refresh must follow.
    fn heartbeat(&mut self, online: Vec<User>, healthy: bool) -> bool;
    /// A refresh (every socket's list replaced) is going out.
    fn refreshing(&mut self);
}

/// The strategy for `mode`.
pub fn for_mode<A: Adapter>(
    mode: EventMode,
    diff_window: std::time::Duration,
    page_size: usize,
) -> Box<dyn Announce<A>> {
    match mode {
        EventMode::Compat => Box::new(Compat::default()),
        EventMode::Diff => Box::new(Diff::new(diff_window, page_size)),
    }
}
