//! Diff mode's batching: presence changes within one window go out as a single `presence_diff`.
//! Pure; the window timer lives in the announcer.
//!
//! Changes are coalesced per user, last one wins: a join then a leave in the same window is sent as
//! a leave only. Clients apply diffs idempotently (add/replace on join, delete on leave), so the
//! result is right whatever snapshot a client started from.
//!
//! A long snapshot goes out in pages (see [`PageCursor`]): the `online_users` frame carries the
//! first page, the rest follow as `presence_diff` joins. The same idempotence makes that safe.

use std::collections::HashMap;

use serde::Serialize;

use crate::model::User;

/// The `presence_diff` payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PresenceDiff {
    pub joins: Vec<User>,
    pub leaves: Vec<String>,
}

impl PresenceDiff {
    /// The diff as frames of at most `page_size` changes each. A ramp of hundreds of joins within
    /// one window would otherwise be one large frame, and every socket's websocket writer keeps
    /// the capacity of the largest frame it sent. Each user appears once in a batch, so the parts
    /// can be applied in any order.
    pub fn into_pages(self, page_size: usize) -> Vec<PresenceDiff> {
        let page_size = page_size.max(1);
        if self.joins.len() + self.leaves.len() <= page_size {
            return vec![self];
        }
        let mut pages = Vec::new();
        let mut joins = self.joins.into_iter().peekable();
        let mut leaves = self.leaves.into_iter().peekable();
        while joins.peek().is_some() || leaves.peek().is_some() {
            let mut page = PresenceDiff::default();
            page.joins.extend(joins.by_ref().take(page_size));
            let room = page_size - page.joins.len();
            page.leaves.extend(leaves.by_ref().take(room));
            pages.push(page);
        }
        pages
    }
}

#[derive(Debug, Default)]
pub struct DiffBatch {
    /// In arrival order; the inner `None` = leave, the outer `None` = superseded by a later change.
    changes: Vec<Option<(String, Option<User>)>>,
    /// Where each user's latest change sits in `changes` (a ramp of thousands of joins in one
    /// window must stay linear).
    index: HashMap<String, usize>,
}

impl DiffBatch {
    pub fn join(&mut self, user: User) {
        self.set(user.id.clone(), Some(user));
    }

    pub fn leave(&mut self, user_id: String) {
        self.set(user_id, None);
    }

    fn set(&mut self, id: String, change: Option<User>) {
        if let Some(old) = self.index.insert(id.clone(), self.changes.len()) {
            self.changes[old] = None;
        }
        self.changes.push(Some((id, change)));
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Users with a change waiting.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// The batch as one diff, leaving the batch empty.
    pub fn take(&mut self) -> Option<PresenceDiff> {
        if self.index.is_empty() {
            return None;
        }
        self.index.clear();
        let mut diff = PresenceDiff::default();
        for (id, change) in self.changes.drain(..).flatten() {
            match change {
                Some(user) => diff.joins.push(user),
                None => diff.leaves.push(id),
            }
        }
        Some(diff)
    }
}

/// Where a paged snapshot is: the rest of the list goes out page by page, each page read from
/// the node's copy at the time it is sent (the users after the last id sent, in id order).
///
/// Why pages: a snapshot of thousands of users in one frame would sit whole in every new
/// socket's queue during a storm; pages, spaced out, bound that. Reading each page from the live
/// copy (not from a list kept since the snapshot) costs no copy of the list per snapshot: users
/// who left since are not in it, users who joined since may come twice (in a page and in a
/// diff), which clients applying diffs idempotently absorb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    /// The last user id sent.
    pub after: String,
    pub page_size: usize,
}

/// The `presence_diff` a snapshot page goes out as: joins only, and no number (it is part of
/// the snapshot, not a change).
#[derive(Debug, Serialize)]
pub struct SnapshotPage<'a> {
    pub joins: Vec<&'a User>,
    pub leaves: [&'a str; 0],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            name: id.into(),
        }
    }

    #[test]
    fn a_large_diff_is_split_into_pages_that_carry_every_change_once() {
        let diff = PresenceDiff {
            joins: (0..7).map(|i| user(&format!("j{i}"))).collect(),
            leaves: (0..4).map(|i| format!("l{i}")).collect(),
        };
        let pages = diff.clone().into_pages(3);
        assert_eq!(pages.len(), 4);
        assert!(pages.iter().all(|p| p.joins.len() + p.leaves.len() <= 3));
        let joins: Vec<User> = pages.iter().flat_map(|p| p.joins.clone()).collect();
        let leaves: Vec<String> = pages.iter().flat_map(|p| p.leaves.clone()).collect();
        assert_eq!((joins, leaves), (diff.joins.clone(), diff.leaves.clone()));
        assert_eq!(diff.clone().into_pages(11), vec![diff]);
    }

    #[test]
    fn empty_batch_sends_nothing() {
        assert_eq!(DiffBatch::default().take(), None);
    }

    #[test]
    fn joins_and_leaves_of_different_users_keep_order() {
        let mut b = DiffBatch::default();
        b.join(user("a"));
        b.leave("x".into());
        b.join(user("b"));
        let d = b.take().unwrap();
        assert_eq!(d.joins, vec![user("a"), user("b")]);
        assert_eq!(d.leaves, vec!["x".to_string()]);
        assert!(b.is_empty());
    }

    #[test]
    fn last_change_of_a_user_wins() {
        let mut b = DiffBatch::default();
        b.join(user("a"));
        b.leave("a".into());
        assert_eq!(
            b.take().unwrap(),
            PresenceDiff {
                joins: vec![],
                leaves: vec!["a".into()]
            }
        );
        b.leave("a".into());
        b.join(user("a"));
        assert_eq!(
            b.take().unwrap(),
            PresenceDiff {
                joins: vec![user("a")],
                leaves: vec![]
            }
        );
    }

    #[test]
    fn serializes_as_the_documented_shape() {
        let d = PresenceDiff {
            joins: vec![user("a")],
            leaves: vec!["b".into()],
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"joins":[{"id":"a","name":"a"}],"leaves":["b"]}"#
        );
    }
}
