//! The presence events' wire payloads (docs/design.md, "Presence events"), besides
//! `presence_diff` ([`crate::diff::PresenceDiff`]).

use serde::Serialize;

use crate::model::User;

/// `online_users`, and the ack of `get_online_users`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OnlineUsers<'a, U: Serialize = User> {
    pub online_users: &'a [U],
}

/// Compat mode's `user_connected`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserConnected<'a, U: Serialize = User> {
    pub online_users: &'a [U],
    pub user: &'a User,
}

/// Compat mode's `user_disconnected`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDisconnected<'a, U: Serialize = User> {
    pub online_users: &'a [U],
    pub user_id: &'a str,
}
