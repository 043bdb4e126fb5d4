//! Diff mode's batching: presence changes within one window go out as a single `presence_diff`.
//! Pure; the window timer lives in the announcer.
//!
//! Changes are coalesced per user, last one wins: a join then a leave in the same window is sent as
//! a leave only. Clients apply diffs idempotently (add/replace on join, delete on leave), so the
//! result is right whatever snapshot a client started from.

use std::collections::HashMap;

use serde::Serialize;

use crate::model::User;

/// The `presence_diff` payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PresenceDiff {
    pub joins: Vec<User>,
    pub leaves: Vec<String>,
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
