//! What one socket asks for, served from the node's copy: its snapshot on connect and the
//! answer to `get_online_users`, each numbered as of the last broadcast.

use socketioxide::adapter::Adapter;

use super::Announcer;
use crate::diff::PageCursor;
use crate::payloads::OnlineUsers;

impl<A: Adapter> Announcer<A> {
    /// `online_users` to every waiting socket: the first page is serialized once, straight from
    /// the copy; each socket then only copies the bytes. In diff mode a longer list follows page
    /// by page from [`Paging::send_round`].
    pub(super) fn send_snapshots(&mut self) {
        if self.waiting_snapshot.is_empty() {
            return;
        }
        let page_size = self.mode.page_size();
        let first = self
            .mirror
            .page_after(None, page_size.unwrap_or(usize::MAX));
        let rest = match (page_size, first.last()) {
            (Some(n), Some(last)) if first.len() == n && self.mirror.len() > n => {
                Some(PageCursor {
                    after: last.id.clone(),
                    page_size: n,
                })
            }
            _ => None,
        };
        let payload = match self.fanout.as_of_now(&OnlineUsers {
            online_users: &first,
        }) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize the online list");
                self.waiting_snapshot.clear();
                return;
            }
        };
        let sent = self
            .fanout
            .snapshot(self.waiting_snapshot.drain(..), &payload);
        if let Some(rest) = rest {
            if !sent.is_empty() {
                self.paging.start(rest, sent);
            }
        }
    }

    /// The whole list to every waiting `get_online_users`, numbered like a snapshot.
    pub(super) fn send_acks(&mut self) {
        if self.waiting_ack.is_empty() {
            return;
        }
        let online = self.mirror.all();
        match self.fanout.as_of_now(&OnlineUsers {
            online_users: &online,
        }) {
            Ok(payload) => self.fanout.ack(self.waiting_ack.drain(..), &payload),
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize the online list");
                self.waiting_ack.clear();
            }
        }
    }
}
