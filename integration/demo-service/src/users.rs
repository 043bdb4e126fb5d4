//! The fixed set of demo users and the axum-login backend that checks their passwords.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use axum_login::{AuthUser, AuthnBackend, UserId};
use serde::{Deserialize, Serialize};

/// (id, display name, password). The README lists the same logins; keep them in step.
pub const DEMO_USERS: &[(&str, &str, &str)] = &[
    ("alice", "Alice Archer", "alice-pass"),
    ("bob", "Bob Baker", "bob-pass"),
    ("carol", "Carol Cooper", "carol-pass"),
    ("dave", "Dave Diaz", "dave-pass"),
];

/// Bumped only when the demo passwords change, so that old sessions stop being valid.
const CREDENTIALS_EPOCH: &[u8] = b"demo-credentials-v1";

#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub name: String,
    password_hash: Arc<str>,
}

impl AuthUser for User {
    type Id = String;

    fn id(&self) -> String {
        self.id.clone()
    }

    /// axum-login compares this with the value stored at login. The password hash itself is
    /// salted anew at every start, so using it would log everyone out on each restart; a fixed
    /// epoch keeps sessions valid across restarts and still lets a credential change revoke them.
    fn session_auth_hash(&self) -> &[u8] {
        CREDENTIALS_EPOCH
    }
}

/// The public view of a user, as the seed's API returns it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublicUser {
    pub id: String,
    pub name: String,
}

impl From<&User> for PublicUser {
    fn from(user: &User) -> Self {
        Self {
            id: user.id.clone(),
            name: user.name.clone(),
        }
    }
}

#[derive(Clone, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("password hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("password check task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The demo users, with argon2 hashes made at startup.
#[derive(Clone)]
pub struct DemoDirectory {
    users: Arc<HashMap<String, User>>,
    /// Checked against for unknown usernames, so that they cost as much time as a wrong password.
    decoy_hash: Arc<str>,
}

impl DemoDirectory {
    /// Hashes the demo passwords on blocking threads (argon2 is deliberately slow).
    pub async fn with_demo_users() -> Result<Self, DirectoryError> {
        let mut tasks = Vec::new();
        for &(id, name, password) in DEMO_USERS {
            tasks.push(tokio::task::spawn_blocking(move || {
                hash_password(password).map(|hash| User {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    password_hash: hash.into(),
                })
            }));
        }
        let decoy = tokio::task::spawn_blocking(|| hash_password("not a demo password"));
        let mut users = HashMap::new();
        for task in tasks {
            let user = task.await??;
            users.insert(user.id.clone(), user);
        }
        Ok(Self {
            users: Arc::new(users),
            decoy_hash: decoy.await??.into(),
        })
    }
}

fn hash_password(password: &str) -> Result<String, DirectoryError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(DirectoryError::Hash)
}

fn password_matches(password: &str, hash: &str) -> Result<bool, DirectoryError> {
    let parsed = PasswordHash::new(hash).map_err(DirectoryError::Hash)?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

impl AuthnBackend for DemoDirectory {
    type User = User;
    type Credentials = Credentials;
    type Error = DirectoryError;

    async fn authenticate(&self, creds: Credentials) -> Result<Option<User>, DirectoryError> {
        let user = self.users.get(&creds.username).cloned();
        let hash = user
            .as_ref()
            .map_or_else(|| self.decoy_hash.clone(), |u| u.password_hash.clone());
        let matches =
            tokio::task::spawn_blocking(move || password_matches(&creds.password, &hash)).await??;
        Ok(user.filter(|_| matches))
    }

    async fn get_user(&self, user_id: &UserId<Self>) -> Result<Option<User>, DirectoryError> {
        Ok(self.users.get(user_id).cloned())
    }
}
