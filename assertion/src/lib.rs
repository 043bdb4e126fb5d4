//! The identity assertion: the one contract the gateway and its upstreams share.
//!
//! The gateway authenticates a request once (from the session store) and tells the upstream who
//! the user is with a short-lived compact JWS (`alg: EdDSA`, Ed25519, `kid` in the header). The
//! upstream never sees the session, only this token, and trusts nothing else. See docs/design.md,
//! "The identity assertion".
//!
//! This crate holds both halves so they cannot drift apart: [`AssertionSigner`] (gateway) and
//! [`AssertionVerifier`] over a [`KeySet`] (presence service and any other upstream).

mod claims;
mod keys;
mod sign;
mod verify;

pub use claims::{Claims, Identity};
pub use keys::{Jwk, JwkSet, KeyError, KeySet, SigningKey};
pub use sign::{AssertionSigner, SignError};
pub use verify::{AssertionVerifier, VerifyError};

/// Default header that carries the assertion from the gateway to an upstream.
pub const DEFAULT_HEADER: &str = "x-identity-assertion";

/// Seconds since the Unix epoch; a clock before 1970 counts as 0 (tokens then simply expire).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
