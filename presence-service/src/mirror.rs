//! This node's copy of who is online, kept by following the backend's change log in order.
//! Pure: no I/O, no clock; the announcer feeds it and announces what it returns.
//!
//! Why a copy: every frame this node sends (a snapshot, a diff, a compat list, an ack) is made
//! from it, by one task, in log order. So a list never goes back to an older view, a socket's
//! snapshot and the changes after it meet exactly (no store read races a change), and a
//! snapshot costs no store round trip.
//!
//! The rules (docs/design.md, "Presence invariants"):
//! - An entry is applied only if it is the next one of the log (same epoch, `seq + 1`); an
//!   older one is stale and ignored; a later one means entries were lost (the pub/sub link
//!   dropped): the caller re-reads the view ([`Mirror::load`]).
//! - Another epoch means the store lost its data and is being refilled node by node. Until the
//!   caller loads the new view (once every node had a heartbeat to store its users again), the
//!   copy holds over: entries of the new epoch are applied on top, nobody else is dropped.
//! - This node's own users are online whatever the log says (the node owns its sockets): a
//!   leave for one of them is not applied, and a load keeps them. Such a user is *kept*: in the
//!   copy only because this node holds them, so when the node lets go of them
//!   ([`Mirror::let_go`]) and the store has them offline, they leave the copy too.

use std::collections::{BTreeMap, BTreeSet};

use crate::backend::{Change, Position, View, What};
use crate::model::User;

/// What applying an entry did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The copy changed: announce it.
    Changed(What),
    /// Nothing to announce (a stale entry, a join already known, a leave of an own user).
    Nothing,
    /// Entries are missing before this one: load the view.
    Gap,
    /// The store lost its data: hold over, then load the view.
    NewEpoch,
}

#[derive(Debug, Default)]
pub struct Mirror {
    /// Where the copy is in the log; `None` until the first load.
    at: Option<Position>,
    /// Set while holding over another epoch: entries are applied whatever their position.
    holding_over: bool,
    users: BTreeMap<String, User>,
    /// Users in the copy only because this node holds them (the store has them offline).
    kept: BTreeSet<String>,
}

impl Mirror {
    pub fn position(&self) -> Option<&Position> {
        self.at.as_ref()
    }

    #[cfg(test)]
    pub fn is_holding_over(&self) -> bool {
        self.holding_over
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Everyone online, sorted by id.
    pub fn users(&self) -> Vec<User> {
        self.users.values().cloned().collect()
    }

    /// Everyone online, sorted by id, without copying them.
    pub fn all(&self) -> Vec<&User> {
        self.users.values().collect()
    }

    /// Up to `n` users after the id `after` (from the first without one), in id order.
    pub fn page_after(&self, after: Option<&str>, n: usize) -> Vec<&User> {
        use std::ops::Bound;
        let from = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        self.users
            .range::<str, _>((from, Bound::Unbounded))
            .take(n)
            .map(|(_, u)| u)
            .collect()
    }

    /// Applies a log entry if it is the next one. `own` tells whether this node holds a user.
    pub fn apply(&mut self, change: Change, own: impl Fn(&str) -> bool) -> Applied {
        let Some(at) = &self.at else {
            // Not loaded yet: the load will include it.
            return Applied::Nothing;
        };
        if !self.holding_over {
            if change.at.epoch != at.epoch {
                return Applied::NewEpoch;
            }
            if change.at.seq <= at.seq {
                return Applied::Nothing;
            }
            if change.at.seq > at.seq + 1 {
                return Applied::Gap;
            }
        }
        self.at = Some(change.at);
        self.change(change.what, own)
    }

    /// The node's own entry, just written: applied only if it is the next one (entries of other
    /// nodes before it may still be on their way; then it arrives with them).
    pub fn apply_own(&mut self, change: Change, own: impl Fn(&str) -> bool) -> Applied {
        match &self.at {
            Some(at)
                if !self.holding_over
                    && change.at.epoch == at.epoch
                    && change.at.seq == at.seq + 1 =>
            {
                self.apply(change, own)
            }
            _ => Applied::Nothing,
        }
    }

    /// A user this node holds came online while the store could not record it (an outage):
    /// its own sockets still hear about it. The copy's position does not move.
    pub fn join_unlogged(&mut self, user: User) -> Applied {
        let known = self.users.contains_key(&user.id);
        let applied = self.change(What::Join(user.clone()), |_| true);
        if !known {
            self.kept.insert(user.id);
        }
        applied
    }

    /// This node no longer holds the user, and the store logged no leave for it: if the user
    /// was in the copy only because of this node, they leave it.
    pub fn let_go(&mut self, id: &str) -> Applied {
        if !self.kept.remove(id) {
            return Applied::Nothing;
        }
        match self.users.remove(id) {
            Some(_) => Applied::Changed(What::Leave(id.to_string())),
            None => Applied::Nothing,
        }
    }

    fn change(&mut self, what: What, own: impl Fn(&str) -> bool) -> Applied {
        match what {
            What::Join(user) => {
                self.kept.remove(&user.id);
                if self.users.get(&user.id) == Some(&user) {
                    return Applied::Nothing;
                }
                self.users.insert(user.id.clone(), user.clone());
                Applied::Changed(What::Join(user))
            }
            What::Leave(id) => {
                if !self.users.contains_key(&id) {
                    return Applied::Nothing;
                }
                if own(&id) {
                    self.kept.insert(id);
                    return Applied::Nothing;
                }
                self.users.remove(&id);
                Applied::Changed(What::Leave(id))
            }
        }
    }

    /// Starts holding over (the store lost its data): nothing is dropped until [`Self::load`].
    pub fn hold_over(&mut self) {
        self.holding_over = true;
    }

    /// Replaces the copy with `view` plus this node's own users, and returns what that changed.
    /// Entries at or before the view's position are stale from now on.
    pub fn load(&mut self, view: View, own: &[User]) -> Vec<What> {
        let mut users: BTreeMap<String, User> =
            view.users.into_iter().map(|u| (u.id.clone(), u)).collect();
        self.kept = own
            .iter()
            .filter(|u| !users.contains_key(&u.id))
            .map(|u| u.id.clone())
            .collect();
        for user in own {
            users.insert(user.id.clone(), user.clone());
        }
        let mut changes: Vec<What> = self
            .users
            .keys()
            .filter(|id| !users.contains_key(*id))
            .map(|id| What::Leave(id.clone()))
            .collect();
        changes.extend(
            users
                .values()
                .filter(|u| self.users.get(&u.id) != Some(u))
                .map(|u| What::Join(u.clone())),
        );
        self.users = users;
        self.at = Some(view.at);
        self.holding_over = false;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            name: id.to_uppercase(),
        }
    }

    fn at(epoch: &str, seq: u64) -> Position {
        Position {
            epoch: epoch.into(),
            seq,
        }
    }

    fn join(epoch: &str, seq: u64, id: &str) -> Change {
        Change {
            at: at(epoch, seq),
            what: What::Join(user(id)),
        }
    }

    fn leave(epoch: &str, seq: u64, id: &str) -> Change {
        Change {
            at: at(epoch, seq),
            what: What::Leave(id.into()),
        }
    }

    fn none(_: &str) -> bool {
        false
    }

    fn loaded(users: &[&str], seq: u64) -> Mirror {
        let mut m = Mirror::default();
        m.load(
            View {
                at: at("e1", seq),
                users: users.iter().map(|id| user(id)).collect(),
            },
            &[],
        );
        m
    }

    #[test]
    fn applies_the_log_in_order_and_ignores_what_it_has_seen() {
        let mut m = loaded(&["a"], 5);
        assert_eq!(m.apply(join("e1", 5, "x"), none), Applied::Nothing, "stale");
        assert_eq!(
            m.apply(join("e1", 6, "b"), none),
            Applied::Changed(What::Join(user("b")))
        );
        assert_eq!(m.apply(join("e1", 7, "b"), none), Applied::Nothing, "known");
        assert_eq!(
            m.apply(leave("e1", 8, "a"), none),
            Applied::Changed(What::Leave("a".into()))
        );
        assert_eq!(m.users(), vec![user("b")]);
        assert_eq!(m.position(), Some(&at("e1", 8)));
    }

    #[test]
    fn a_missing_entry_asks_for_a_load_and_changes_nothing() {
        let mut m = loaded(&["a"], 5);
        assert_eq!(m.apply(leave("e1", 7, "a"), none), Applied::Gap);
        assert_eq!(m.users(), vec![user("a")]);
        assert_eq!(m.position(), Some(&at("e1", 5)));
    }

    #[test]
    fn another_epoch_holds_over_until_the_load() {
        let mut m = loaded(&["a", "b"], 9);
        assert_eq!(m.apply(join("e2", 1, "c"), none), Applied::NewEpoch);
        m.hold_over();
        // The new epoch's entries apply on top; nobody from before is dropped meanwhile.
        assert_eq!(
            m.apply(join("e2", 1, "c"), none),
            Applied::Changed(What::Join(user("c")))
        );
        assert_eq!(m.users(), vec![user("a"), user("b"), user("c")]);
        // The load decides: `b` was not stored again by anyone.
        let changes = m.load(
            View {
                at: at("e2", 3),
                users: vec![user("a"), user("c")],
            },
            &[],
        );
        assert_eq!(changes, vec![What::Leave("b".into())]);
        assert!(!m.is_holding_over());
        assert_eq!(m.apply(join("e2", 3, "z"), none), Applied::Nothing, "stale");
    }

    #[test]
    fn own_users_stay_online_whatever_the_log_says() {
        let mut m = loaded(&["me", "b"], 1);
        let own = |id: &str| id == "me";
        assert_eq!(m.apply(leave("e1", 2, "me"), own), Applied::Nothing);
        assert_eq!(m.position(), Some(&at("e1", 2)), "the entry is consumed");
        let changes = m.load(
            View {
                at: at("e1", 3),
                users: vec![user("b")],
            },
            &[user("me")],
        );
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(m.users(), vec![user("b"), user("me")]);
    }

    /// The node was reaped while paused (its users' leaves logged, kept here because it still
    /// held them), then let one go before storing it again: nobody logs that user's leave, so
    /// the copy must drop them itself, or they stay a ghost.
    #[test]
    fn a_kept_user_leaves_when_this_node_lets_go() {
        let mut m = loaded(&["me", "b"], 1);
        let own = |id: &str| id == "me";
        assert_eq!(m.apply(leave("e1", 2, "me"), own), Applied::Nothing);
        assert_eq!(m.let_go("b"), Applied::Nothing, "not kept: the log decides");
        assert_eq!(m.let_go("me"), Applied::Changed(What::Leave("me".into())));
        assert_eq!(m.users(), vec![user("b")]);
        // A join in the log means the store has them again: no longer kept.
        let mut m = loaded(&["me"], 1);
        m.apply(leave("e1", 2, "me"), own);
        m.apply(join("e1", 3, "me"), own);
        assert_eq!(m.let_go("me"), Applied::Nothing);
    }

    #[test]
    fn an_unlogged_join_is_kept_until_the_store_has_it() {
        let mut m = loaded(&[], 1);
        assert_eq!(
            m.join_unlogged(user("a")),
            Applied::Changed(What::Join(user("a")))
        );
        assert_eq!(m.let_go("a"), Applied::Changed(What::Leave("a".into())));
        let mut m = loaded(&["a"], 1);
        assert_eq!(m.join_unlogged(user("a")), Applied::Nothing);
        assert_eq!(m.let_go("a"), Applied::Nothing, "the store has them");
    }

    #[test]
    fn an_own_entry_applies_only_in_turn() {
        let mut m = loaded(&[], 4);
        assert_eq!(m.apply_own(join("e1", 6, "a"), none), Applied::Nothing);
        assert_eq!(m.position(), Some(&at("e1", 4)));
        assert_eq!(
            m.apply_own(join("e1", 5, "a"), none),
            Applied::Changed(What::Join(user("a")))
        );
        assert_eq!(
            m.apply(join("e1", 5, "a"), none),
            Applied::Nothing,
            "then stale"
        );
    }

    #[test]
    fn a_load_reports_joins_renames_and_leaves() {
        let mut m = loaded(&["a", "b"], 1);
        let renamed = User {
            id: "b".into(),
            name: "Bea".into(),
        };
        let changes = m.load(
            View {
                at: at("e1", 4),
                users: vec![renamed.clone(), user("c")],
            },
            &[],
        );
        assert_eq!(
            changes,
            vec![
                What::Leave("a".into()),
                What::Join(renamed),
                What::Join(user("c"))
            ]
        );
    }

    #[test]
    fn pages_follow_the_ids_from_where_the_last_one_ended() {
        let mut m = loaded(&["a", "b", "c", "d", "e"], 1);
        let ids = |p: Vec<&User>| p.into_iter().map(|u| u.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(m.page_after(None, 2)), ["a", "b"]);
        // `c` left and `bb` joined meanwhile: the next page reads the copy as it is now.
        m.apply(leave("e1", 2, "c"), none);
        m.apply(join("e1", 3, "bb"), none);
        assert_eq!(ids(m.page_after(Some("b"), 2)), ["bb", "d"]);
        assert_eq!(ids(m.page_after(Some("d"), 2)), ["e"]);
        assert!(m.page_after(Some("e"), 2).is_empty());
    }

    #[test]
    fn entries_before_the_first_load_are_left_to_it() {
        let mut m = Mirror::default();
        assert_eq!(m.apply(join("e1", 1, "a"), none), Applied::Nothing);
        assert!(m.users().is_empty());
        assert!(m.position().is_none());
    }
}
