//! The presence events' wire payloads (docs/design.md, "Presence events"), besides
//! `presence_diff` ([`crate::diff::PresenceDiff`]).

use serde::Serialize;

use crate::model::User;

/// `online_users`, and the ack of `get_online_users`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OnlineUsers<'a> {
    pub online_users: &'a [User],
}

/// Compat mode's `user_connected`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserConnected<'a> {
    pub online_users: &'a [User],
    pub user: &'a User,
}

/// Compat mode's `user_disconnected`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDisconnected<'a> {
    pub online_users: &'a [User],
    pub user_id: &'a str,
}
