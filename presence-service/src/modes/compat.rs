//! Compat mode: the seed's events, each carrying the whole list.

use std::time::Instant;

use async_trait::async_trait;
use socketioxide::adapter::Adapter;

use super::{Announce, Env};
use crate::diff::PagedSnapshot;
use crate::model::User;
use crate::payloads::{UserConnected, UserDisconnected};

#[derive(Default)]
pub struct Compat {
    /// The list as it was when the shared store became unreachable, kept (with this node's own
    /// changes applied) until the refresh after it is back. Until every node has stored its
    /// users again, a list read from the store misses some; the seed's events carry the whole
    /// list, and dropping a user who never left would make them flap for everyone.
    held_over: Option<Vec<User>>,
    /// The list the last broadcast carried.
    last_list: Vec<User>,
}

impl Compat {
    /// The list an event carries: what the store says, plus this node's own users, plus, until
    /// the refresh after an outage, whoever was online before it and has not been seen leaving.
    async fn list<A: Adapter>(&self, env: &Env<'_, A>) -> Vec<User> {
        let mut online = env.online().await;
        // This node's own users are online whatever the store says: after Redis lost its data,
        // a read before this node's next heartbeat would miss them.
        for user in env.own().iter().chain(self.held_over.iter().flatten()) {
            if !online.iter().any(|u| u.id == user.id) {
                online.push(user.clone());
            }
        }
        online.sort_by(|a, b| a.id.cmp(&b.id));
        online
    }
}

#[async_trait]
impl<A: Adapter> Announce<A> for Compat {
    async fn joined(&mut self, env: &Env<'_, A>, user: User) {
        let mut online = self.list(env).await;
        // During an outage the list is the last known view: keep it consistent with the event.
        if !online.iter().any(|u| u.id == user.id) {
            online.push(user.clone());
        }
        if let Some(kept) = &mut self.held_over {
            kept.retain(|u| u.id != user.id);
            kept.push(user.clone());
        }
        let payload = UserConnected {
            online_users: &online,
            user: &user,
        };
        env.fanout.broadcast("user_connected", &payload).await;
        self.last_list = online;
    }

    async fn left(&mut self, env: &Env<'_, A>, user_id: String) {
        let mut online = self.list(env).await;
        online.retain(|u| u.id != user_id);
        if let Some(kept) = &mut self.held_over {
            kept.retain(|u| u.id != user_id);
        }
        let payload = UserDisconnected {
            online_users: &online,
            user_id: &user_id,
        };
        env.fanout.broadcast("user_disconnected", &payload).await;
        self.last_list = online;
    }

    fn flush_due(&self) -> Option<Instant> {
        None
    }

    async fn flush(&mut self, _env: &Env<'_, A>) {}

    /// The seed's single `online_users`, however long.
    fn first_page(&self, online: Vec<User>) -> (Vec<User>, Option<PagedSnapshot>) {
        (online, None)
    }

    /// Each change carries the whole list: a burst of those could fill a waiting socket's
    /// queue before its snapshot is in.
    fn snapshots_before_changes(&self) -> bool {
        true
    }

    fn store_lost(&mut self) -> bool {
        if self.held_over.is_some() {
            return false;
        }
        // What clients were last told stands until the refresh: the store is being refilled
        // node by node.
        self.held_over = Some(self.last_list.clone());
        true
    }

    fn heartbeat(&mut self, online: Vec<User>, healthy: bool) -> bool {
        match (healthy, self.held_over.is_some()) {
            (true, false) => {
                self.last_list = online;
                false
            }
            (false, false) => {
                self.held_over = Some(online);
                false
            }
            // Back without the link having dropped: the refresh still ends the held-over list.
            (true, true) => true,
            (false, true) => false,
        }
    }

    fn refreshing(&mut self) {
        self.held_over = None;
    }
}

#[cfg(test)]
mod tests {
    use socketioxide::adapter::LocalAdapter;

    use super::*;

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            name: id.to_uppercase(),
        }
    }

    fn announce(c: &mut Compat) -> &mut dyn Announce<LocalAdapter> {
        c
    }

    /// The list clients were told survives a store outage until the refresh after it.
    #[test]
    fn the_last_list_is_held_over_an_outage_until_the_refresh() {
        let mut c = Compat::default();
        assert!(!announce(&mut c).heartbeat(vec![user("a"), user("b")], true));
        assert!(
            announce(&mut c).store_lost(),
            "a lost store asks for a refresh"
        );
        assert!(!announce(&mut c).store_lost(), "once");
        assert_eq!(
            c.held_over.as_deref(),
            Some(&[user("a"), user("b")][..]),
            "what clients were last told"
        );
        // A read during the outage does not replace it; once healthy, a refresh is due.
        assert!(!announce(&mut c).heartbeat(vec![user("a")], false));
        assert!(announce(&mut c).heartbeat(vec![user("a")], true));
        announce(&mut c).refreshing();
        assert!(c.held_over.is_none());
        assert!(!announce(&mut c).heartbeat(vec![user("a")], true));
        assert_eq!(c.last_list, vec![user("a")]);
    }

    #[test]
    fn an_unreachable_store_holds_the_list_it_last_read() {
        let mut c = Compat::default();
        assert!(!announce(&mut c).heartbeat(vec![user("a")], false));
        assert_eq!(c.held_over.as_deref(), Some(&[user("a")][..]));
        assert!(announce(&mut c).heartbeat(vec![], true), "back: refresh");
    }
}
