use serde::{Deserialize, Serialize};

/// Who the gateway says the user is, before it becomes a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id taken from the session (`passport.user`, axum-login's `user_id`, ...).
    pub sub: String,
    /// Display name, where the session has one.
    pub name: Option<String>,
    /// An opaque, stable handle of the session. Never the session id itself: an upstream that
    /// logs it or leaks it must not hand out a usable cookie.
    pub sid: String,
}

/// The JWT claims, exactly as docs/design.md lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

impl Claims {
    /// The name to show for this user: the display name, or the id when the session has none.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.sub)
    }
}
