//! Compat mode: the seed's events, each carrying the whole list (the node's copy, which follows
//! the change log in order: a list never goes back to an older view).

use std::time::Instant;

use socketioxide::adapter::Adapter;

use super::{Announce, Env};
use crate::backend::What;
use crate::model::User;
use crate::payloads::{OnlineUsers, UserConnected, UserDisconnected};

pub struct Compat;

impl<A: Adapter> Announce<A> for Compat {
    fn joined(&mut self, env: &Env<'_, A>, user: User) {
        let online = env.mirror.all();
        let payload = UserConnected {
            online_users: &online,
            user: &user,
        };
        env.fanout.broadcast("user_connected", &payload);
    }

    fn left(&mut self, env: &Env<'_, A>, user_id: String) {
        let online = env.mirror.all();
        let payload = UserDisconnected {
            online_users: &online,
            user_id: &user_id,
        };
        env.fanout.broadcast("user_disconnected", &payload);
    }

    /// One `online_users` replaces every list, however many changed.
    fn reloaded(&mut self, env: &Env<'_, A>, changes: Vec<What>) {
        if changes.is_empty() {
            return;
        }
        let online = env.mirror.all();
        env.fanout.broadcast(
            "online_users",
            &OnlineUsers {
                online_users: &online,
            },
        );
    }

    fn flush_due(&self) -> Option<Instant> {
        None
    }

    fn flush(&mut self, _env: &Env<'_, A>) {}

    /// The seed's single `online_users`, however long.
    fn page_size(&self) -> Option<usize> {
        None
    }

    /// Each change carries the whole list: a burst of those could fill a waiting socket's
    /// queue before its snapshot is in.
    fn snapshots_before_changes(&self) -> bool {
        true
    }
}
