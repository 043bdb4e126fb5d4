//! Snapshots too long for one frame, sent page by page (diff mode; see [`PagedSnapshot`]).

use std::time::{Duration, Instant};

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

use crate::diff::{PagedSnapshot, PresenceDiff};
use crate::model::User;
use crate::modes::Env;

/// Pause between two rounds of pages: at least this, plus [`PAGE_PAUSE_PER_FRAME`] per frame the
/// round queued. The point is that each socket's writer has put the previous page on the wire
/// (and its client has read it) before the next is queued: pages queued together would sit in
/// the socket's queue together, and a ramp of thousands of late joiners would hold them all.
const PAGE_PAUSE: Duration = Duration::from_millis(1);
/// Roughly what one small frame costs to write and read on this machine's loopback (a send
/// and a receive syscall, the client's frame parsing), measured with `examples/presence_bench`.
const PAGE_PAUSE_PER_FRAME: Duration = Duration::from_micros(10);

/// The snapshots under way. Every page is checked against the node's copy just before it goes
/// out, in the announcer's order with the diffs, so a user who left after the list was taken is
/// never announced after their leave.
pub struct Paging<A: Adapter> {
    under_way: Vec<(PagedSnapshot, Vec<SocketRef<A>>)>,
    /// When the next round may go out (one page per paged snapshot per round).
    next_round_at: Instant,
}

impl<A: Adapter> Default for Paging<A> {
    fn default() -> Self {
        Self {
            under_way: Vec::new(),
            next_round_at: Instant::now(),
        }
    }
}

impl<A: Adapter> Paging<A> {
    pub fn start(&mut self, rest: PagedSnapshot, to: Vec<SocketRef<A>>) {
        if self.under_way.is_empty() {
            self.next_round_at = Instant::now() + PAGE_PAUSE;
        }
        self.under_way.push((rest, to));
    }

    /// When the next round is due, if a snapshot is under way.
    pub fn due(&self) -> Option<Instant> {
        (!self.under_way.is_empty()).then_some(self.next_round_at)
    }

    /// One round: the next page of every paged snapshot, as `presence_diff` joins without a
    /// number (part of the snapshot, not a change). Users who left since the list was taken
    /// are dropped (their leave went out already, or is in the batch and goes out after this
    /// page); users who joined since reach the sockets as diffs.
    pub fn send_round(&mut self, env: &Env<'_, A>) {
        let mut frames = 0u32;
        for (pages, sockets) in &mut self.under_way {
            let Some(page) = pages.next_page() else {
                continue;
            };
            let joins: Vec<User> = page
                .iter()
                .filter_map(|u| env.mirror.get(&u.id).cloned())
                .collect();
            if joins.is_empty() {
                continue;
            }
            let diff = PresenceDiff {
                joins,
                leaves: Vec::new(),
            };
            match serde_json::value::to_raw_value(&diff) {
                Ok(payload) => frames += env.fanout.page(sockets, "presence_diff", &payload),
                Err(e) => tracing::error!(error = %e, "cannot serialize a snapshot page"),
            }
        }
        self.under_way
            .retain(|(pages, sockets)| !pages.is_done() && !sockets.is_empty());
        self.next_round_at = Instant::now() + PAGE_PAUSE + PAGE_PAUSE_PER_FRAME * frames;
    }
}
