//! Snapshots too long for one frame, sent page by page (diff mode; see [`PagedSnapshot`]).

use std::time::{Duration, Instant};

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

use crate::diff::{PagedSnapshot, PresenceDiff};
use crate::model::User;
use crate::modes::Env;

/// Who the rest of a paged snapshot goes to.
pub enum PageRecipients<A: Adapter> {
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

/// The snapshots under way. Every page is checked against the store just before it goes out,
/// in the announcer's order with the diffs, so a user who left after the list was read is
/// never announced after their leave.
pub struct Paging<A: Adapter> {
    under_way: Vec<(PagedSnapshot, PageRecipients<A>)>,
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
    pub fn start(&mut self, rest: PagedSnapshot, to: PageRecipients<A>) {
        if self.under_way.is_empty() {
            self.next_round_at = Instant::now() + PAGE_PAUSE;
        }
        self.under_way.push((rest, to));
    }

    /// When the next round is due, if a snapshot is under way.
    pub fn due(&self) -> Option<Instant> {
        (!self.under_way.is_empty()).then_some(self.next_round_at)
    }

    /// One round: the next page of every paged snapshot, as `presence_diff` joins. Users who
    /// left since the list was read are dropped (their leave went out already, or is in the
    /// batch and goes out after this page); users who joined since reach the sockets as diffs.
    pub async fn send_round(&mut self, env: &Env<'_, A>) {
        let mut under_way = std::mem::take(&mut self.under_way);
        let mut frames = 0u32;
        for (pages, to) in &mut under_way {
            let Some(page) = pages.next_page() else {
                continue;
            };
            let joins = still_online(env, page).await;
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
                    env.fanout.broadcast("presence_diff", &diff).await
                }
                PageRecipients::Sockets(sockets) => match serde_json::value::to_raw_value(&diff) {
                    Ok(payload) => frames += env.fanout.page(sockets, "presence_diff", &payload),
                    Err(e) => tracing::error!(error = %e, "cannot serialize a snapshot page"),
                },
            }
        }
        under_way.retain(|(pages, to)| {
            !pages.is_done() && !matches!(to, PageRecipients::Sockets(s) if s.is_empty())
        });
        // Snapshots started while this round ran (none today: the announcer awaits it) stay.
        under_way.append(&mut self.under_way);
        self.under_way = under_way;
        self.next_round_at = Instant::now() + PAGE_PAUSE + PAGE_PAUSE_PER_FRAME * frames;
    }
}

/// The users of `page` who are still online, as the store has them now.
async fn still_online<A: Adapter>(env: &Env<'_, A>, page: &[User]) -> Vec<User> {
    let ids: Vec<&str> = page.iter().map(|u| u.id.as_str()).collect();
    match env.backend.lookup(&ids).await {
        Ok(current) => current.into_iter().flatten().collect(),
        Err(e) => {
            // Outage: the list as read is the last known view, like `online()` serves.
            tracing::debug!(error = %e, "snapshot page not checked; sent as read");
            page.to_vec()
        }
    }
}
