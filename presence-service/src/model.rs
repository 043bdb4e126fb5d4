//! The presence model of one node: which users this node holds, and when a user whose last
//! socket left is released. Pure state machine: no I/O, no clock of its own (time is passed in),
//! so every rule is unit-tested below.
//!
//! "Held" means this node tells the shared backend that the user is online here. A user is held
//! from their first socket until `grace` after their last socket closed, so a reload (close, then
//! reconnect within the grace period) never shows up as offline/online to anyone else.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A user as clients see it (the seed's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
}

/// What the node must tell the shared backend, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// This node now holds the user (first socket, or a new display name).
    Hold(User),
    /// This node no longer holds the user (grace period over, no socket came back).
    Release(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many connections for this user (limit {limit})")]
pub struct TooManySockets {
    pub limit: usize,
}

#[derive(Debug)]
struct Entry {
    user: User,
    sockets: usize,
    /// Set while the user has no socket: the instant at which they are released.
    release_at: Option<Instant>,
}

#[derive(Debug)]
pub struct PresenceModel {
    grace: Duration,
    max_sockets_per_user: usize,
    users: HashMap<String, Entry>,
    /// The sum of every entry's `sockets`, kept as they change (read on every connect).
    sockets: usize,
}

impl PresenceModel {
    pub fn new(grace: Duration, max_sockets_per_user: usize) -> Self {
        Self {
            grace,
            max_sockets_per_user,
            users: HashMap::new(),
            sockets: 0,
        }
    }

    /// A socket of `user` is connecting. Refused past the per-user cap; otherwise counted, and a
    /// user who was not held (or changed name) yields `Hold`. A socket coming back within the
    /// grace period just cancels the release: nobody else hears about it.
    pub fn connect(&mut self, user: User) -> Result<Option<Effect>, TooManySockets> {
        let limit = self.max_sockets_per_user;
        match self.users.get_mut(&user.id) {
            Some(entry) => {
                if entry.sockets >= limit {
                    return Err(TooManySockets { limit });
                }
                entry.sockets += 1;
                self.sockets += 1;
                entry.release_at = None;
                if entry.user.name != user.name {
                    entry.user.name = user.name.clone();
                    return Ok(Some(Effect::Hold(user)));
                }
                Ok(None)
            }
            None => {
                if limit == 0 {
                    return Err(TooManySockets { limit });
                }
                self.users.insert(
                    user.id.clone(),
                    Entry {
                        user: user.clone(),
                        sockets: 1,
                        release_at: None,
                    },
                );
                self.sockets += 1;
                Ok(Some(Effect::Hold(user)))
            }
        }
    }

    /// A socket of `user_id` closed. The last one starts the grace period; nothing is released
    /// until [`Self::expire`] runs past it.
    pub fn disconnect(&mut self, user_id: &str, now: Instant) {
        if let Some(entry) = self.users.get_mut(user_id) {
            if entry.sockets > 0 {
                entry.sockets -= 1;
                self.sockets -= 1;
            }
            if entry.sockets == 0 && entry.release_at.is_none() {
                entry.release_at = Some(now + self.grace);
            }
        }
    }

    /// Every socket closed at once (the node stops): every user's grace period starts, unless
    /// it already runs.
    pub fn disconnect_all(&mut self, now: Instant) {
        for entry in self.users.values_mut() {
            entry.sockets = 0;
            entry.release_at.get_or_insert(now + self.grace);
        }
        self.sockets = 0;
    }

    /// Releases every user whose grace period ended at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Effect> {
        let mut gone: Vec<String> = self
            .users
            .iter()
            .filter(|(_, e)| e.release_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        gone.sort();
        for id in &gone {
            self.users.remove(id);
        }
        gone.into_iter().map(Effect::Release).collect()
    }

    /// When [`Self::expire`] next has something to do.
    pub fn next_release(&self) -> Option<Instant> {
        self.users.values().filter_map(|e| e.release_at).min()
    }

    /// Whether this node holds the user (connected or in grace).
    pub fn holds(&self, user_id: &str) -> bool {
        self.users.contains_key(user_id)
    }

    /// Every user this node holds (connected or in grace), for re-syncing the backend.
    pub fn held(&self) -> Vec<User> {
        let mut v: Vec<User> = self.users.values().map(|e| e.user.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Connected sockets on this node (all users).
    pub fn socket_count(&self) -> usize {
        self.sockets
    }

    #[cfg(test)]
    pub fn sockets_of(&self, user_id: &str) -> usize {
        self.users.get(user_id).map_or(0, |e| e.sockets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(3);

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            name: id.to_uppercase(),
        }
    }

    fn model() -> PresenceModel {
        PresenceModel::new(GRACE, 3)
    }

    #[test]
    fn first_socket_holds_the_user() {
        let mut m = model();
        assert_eq!(m.connect(user("a")), Ok(Some(Effect::Hold(user("a")))));
        assert_eq!(m.held(), vec![user("a")]);
        assert_eq!(m.socket_count(), 1);
    }

    #[test]
    fn stopping_node_releases_everyone_after_grace_keeping_running_graces() {
        let mut m = model();
        let t0 = Instant::now();
        m.connect(user("a")).unwrap();
        m.connect(user("a")).unwrap();
        m.connect(user("b")).unwrap();
        m.disconnect("b", t0);
        m.disconnect_all(t0 + GRACE / 2);
        assert_eq!(m.socket_count(), 0);
        assert_eq!(m.expire(t0 + GRACE), vec![Effect::Release("b".into())]);
        assert_eq!(
            m.expire(t0 + GRACE + GRACE / 2),
            vec![Effect::Release("a".into())]
        );
        assert!(m.held().is_empty());
    }

    #[test]
    fn second_tab_does_not_re_announce() {
        let mut m = model();
        m.connect(user("a")).unwrap();
        assert_eq!(m.connect(user("a")), Ok(None));
        assert_eq!(m.sockets_of("a"), 2);
    }

    #[test]
    fn closing_one_of_two_tabs_keeps_the_user() {
        let mut m = model();
        let t0 = Instant::now();
        m.connect(user("a")).unwrap();
        m.connect(user("a")).unwrap();
        m.disconnect("a", t0);
        assert_eq!(m.next_release(), None);
        assert!(m.expire(t0 + GRACE * 10).is_empty());
        assert_eq!(m.held(), vec![user("a")]);
    }

    #[test]
    fn last_socket_releases_only_after_grace() {
        let mut m = model();
        let t0 = Instant::now();
        m.connect(user("a")).unwrap();
        m.disconnect("a", t0);
        assert_eq!(m.next_release(), Some(t0 + GRACE));
        assert!(m.expire(t0 + GRACE - Duration::from_millis(1)).is_empty());
        assert_eq!(m.expire(t0 + GRACE), vec![Effect::Release("a".into())]);
        assert!(m.held().is_empty());
        assert_eq!(m.next_release(), None);
        // Released users come back as new.
        assert_eq!(m.connect(user("a")), Ok(Some(Effect::Hold(user("a")))));
    }

    #[test]
    fn reload_within_grace_is_silent() {
        let mut m = model();
        let t0 = Instant::now();
        m.connect(user("a")).unwrap();
        m.disconnect("a", t0);
        assert_eq!(m.connect(user("a")), Ok(None));
        assert_eq!(m.next_release(), None);
        assert!(m.expire(t0 + GRACE * 2).is_empty());
    }

    #[test]
    fn grace_starts_at_the_last_disconnect() {
        let mut m = model();
        let t0 = Instant::now();
        m.connect(user("a")).unwrap();
        m.connect(user("a")).unwrap();
        m.disconnect("a", t0);
        m.disconnect("a", t0 + Duration::from_secs(1));
        assert_eq!(m.next_release(), Some(t0 + Duration::from_secs(1) + GRACE));
    }

    #[test]
    fn per_user_cap_refuses_the_extra_socket_only() {
        let mut m = model();
        for _ in 0..3 {
            m.connect(user("a")).unwrap();
        }
        assert_eq!(m.connect(user("a")), Err(TooManySockets { limit: 3 }));
        assert_eq!(m.sockets_of("a"), 3);
        assert!(m.connect(user("b")).is_ok());
        m.disconnect("a", Instant::now());
        assert!(m.connect(user("a")).is_ok());
    }

    #[test]
    fn zero_cap_refuses_everyone() {
        let mut m = PresenceModel::new(GRACE, 0);
        assert!(m.connect(user("a")).is_err());
        assert!(m.held().is_empty());
    }

    #[test]
    fn a_new_name_is_held_again() {
        let mut m = model();
        m.connect(user("a")).unwrap();
        let renamed = User {
            id: "a".into(),
            name: "Alice".into(),
        };
        assert_eq!(
            m.connect(renamed.clone()),
            Ok(Some(Effect::Hold(renamed.clone())))
        );
        assert_eq!(m.held(), vec![renamed]);
    }

    #[test]
    fn unknown_disconnect_is_ignored() {
        let mut m = model();
        m.disconnect("ghost", Instant::now());
        assert!(m.held().is_empty());
        assert!(m.expire(Instant::now() + GRACE).is_empty());
    }

    #[test]
    fn expiry_releases_several_users_in_a_stable_order() {
        let mut m = model();
        let t0 = Instant::now();
        for id in ["c", "a", "b"] {
            m.connect(user(id)).unwrap();
            m.disconnect(id, t0);
        }
        assert_eq!(
            m.expire(t0 + GRACE),
            vec![
                Effect::Release("a".into()),
                Effect::Release("b".into()),
                Effect::Release("c".into())
            ]
        );
    }

    /// The kept count equals the sum over users, whatever the sequence (refusals included).
    #[test]
    fn the_socket_count_follows_every_change() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut m = PresenceModel::new(Duration::from_millis(10), 3);
        let mut now = Instant::now();
        for _ in 0..2_000 {
            let id = format!("u{}", rng.gen_range(0..5));
            match rng.gen_range(0..10) {
                0..=4 => {
                    let _ = m.connect(User {
                        id: id.clone(),
                        name: id,
                    });
                }
                5..=8 => m.disconnect(&id, now),
                _ => {
                    now += Duration::from_millis(rng.gen_range(0..20));
                    m.expire(now);
                }
            }
            let sum: usize = m.users.values().map(|e| e.sockets).sum();
            assert_eq!(m.socket_count(), sum);
        }
        m.disconnect_all(now);
        assert_eq!(m.socket_count(), 0);
    }
}
