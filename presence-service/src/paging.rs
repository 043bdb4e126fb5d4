//! Snapshots too long for one frame, sent page by page (diff mode; see [`PageCursor`]).

use std::time::{Duration, Instant};

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

use crate::diff::{PageCursor, SnapshotPage};
use crate::modes::Env;

/// Pause between two rounds of pages: at least this, plus [`PAGE_PAUSE_PER_FRAME`] per frame and
/// [`PAGE_PAUSE_PER_KIB`] per KiB the round queued. The point is that each socket's writer has put the previous page on the wire
/// (and its client has read it) before the next is queued: pages queued together would sit in
/// the socket's queue together, and a ramp of thousands of late joiners would hold them all.
const PAGE_PAUSE: Duration = Duration::from_millis(1);
/// Roughly what one small frame costs to write and read on this machine's loopback (a send
/// and a receive syscall, the client's frame parsing), measured with `examples/presence_bench`.
const PAGE_PAUSE_PER_FRAME: Duration = Duration::from_micros(10);
/// Roughly what copying one more KiB costs there (kernel copies, the client's parsing).
const PAGE_PAUSE_PER_KIB: Duration = Duration::from_micros(2);

/// The snapshots under way. Every page is read from the node's copy just before it goes out, in
/// the announcer's order with the diffs, so a user who left after the snapshot started is never
/// announced after their leave.
pub struct Paging<A: Adapter> {
    under_way: Vec<(PageCursor, Vec<SocketRef<A>>)>,
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
    pub fn start(&mut self, rest: PageCursor, to: Vec<SocketRef<A>>) {
        if self.under_way.is_empty() {
            self.next_round_at = Instant::now() + PAGE_PAUSE;
        }
        self.under_way.push((rest, to));
    }

    /// When the next round is due, if a snapshot is under way.
    pub fn due(&self) -> Option<Instant> {
        (!self.under_way.is_empty()).then_some(self.next_round_at)
    }

    /// One round: the next page of every paged snapshot, as a `presence_diff` of joins without
    /// a number (part of the snapshot, not a change). Users who left since the snapshot started
    /// are not in the copy any more; users who joined since reach the sockets as diffs.
    pub fn send_round(&mut self, env: &Env<'_, A>) {
        let mut frames = 0u32;
        let mut kib = 0u32;
        self.under_way.retain_mut(|(cursor, sockets)| {
            let joins = env.mirror.page_after(Some(&cursor.after), cursor.page_size);
            let Some(last) = joins.last() else {
                return false;
            };
            let more = joins.len() == cursor.page_size;
            cursor.after = last.id.clone();
            match serde_json::value::to_raw_value(&SnapshotPage { joins, leaves: [] }) {
                Ok(payload) => {
                    let sent = env.fanout.page(sockets, "presence_diff", &payload);
                    frames += sent;
                    let size = u32::try_from(payload.get().len() / 1024).unwrap_or(u32::MAX);
                    kib = kib.saturating_add(sent.saturating_mul(size));
                }
                Err(e) => tracing::error!(error = %e, "cannot serialize a snapshot page"),
            }
            more && !sockets.is_empty()
        });
        self.next_round_at =
            Instant::now() + PAGE_PAUSE + PAGE_PAUSE_PER_FRAME * frames + PAGE_PAUSE_PER_KIB * kib;
    }
}
