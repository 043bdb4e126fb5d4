//! How changes are announced: the seed's whole-list events (compat) or batched diffs (diff),
//! two strategies behind one interface that the announcer drives.

use std::time::Instant;

use socketioxide::adapter::Adapter;

use crate::backend::What;
use crate::config::EventMode;
use crate::fanout::Fanout;
use crate::mirror::Mirror;
use crate::model::User;

mod compat;
mod diff;

pub use compat::Compat;
pub use diff::Diff;

/// What a strategy may use: where frames go, and the node's copy of who is online (already
/// changed by what is being announced).
pub struct Env<'a, A: Adapter> {
    pub fanout: &'a Fanout<A>,
    pub mirror: &'a Mirror,
}

pub trait Announce<A: Adapter>: Send {
    /// A user came online (their first socket, on any node), or changed name.
    fn joined(&mut self, env: &Env<'_, A>, user: User);
    /// A user went offline.
    fn left(&mut self, env: &Env<'_, A>, user_id: String);
    /// The copy was read again from the store (a gap in the log, the store back after losing
    /// its data); `changes` is what that changed.
    fn reloaded(&mut self, env: &Env<'_, A>, changes: Vec<What>);
    /// When changes held back for batching must go out, if any are.
    fn flush_due(&self) -> Option<Instant>;
    /// How many sockets this node has live: what a broadcast costs.
    fn set_audience(&mut self, _sockets: usize) {}
    /// Sends the changes held back, if any.
    fn flush(&mut self, env: &Env<'_, A>);
    /// Users per snapshot frame: the `online_users` frame carries the first page, the rest
    /// follow page by page (`paging`). `None`: the whole list in one frame.
    fn page_size(&self) -> Option<usize>;
    /// Whether waiting snapshots must go out before a change is announced.
    fn snapshots_before_changes(&self) -> bool;
}

/// The strategy for `mode`.
pub fn for_mode<A: Adapter>(
    mode: EventMode,
    diff_window: std::time::Duration,
    diff_budget_per_sec: u64,
    page_size: usize,
) -> Box<dyn Announce<A>> {
    match mode {
        EventMode::Compat => Box::new(Compat),
        EventMode::Diff => Box::new(Diff::new(diff_window, diff_budget_per_sec, page_size)),
    }
}
