use jsonwebtoken::{Algorithm, Header};

use crate::{now_unix, Claims, Identity, JwkSet, SigningKey};

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("no signing key configured")]
    NoKey,
    #[error("signing failed: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// Mints assertions. The first key signs; every key is published so that tokens signed by a key
/// being rotated out still verify until they expire.
#[derive(Debug, Clone)]
pub struct AssertionSigner {
    issuer: String,
    ttl_secs: u64,
    keys: Vec<SigningKey>,
}

impl AssertionSigner {
    pub fn new(
        issuer: impl Into<String>,
        ttl_secs: u64,
        keys: Vec<SigningKey>,
    ) -> Result<Self, SignError> {
        if keys.is_empty() {
            return Err(SignError::NoKey);
        }
        Ok(Self {
            issuer: issuer.into(),
            ttl_secs,
            keys,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn active_kid(&self) -> &str {
        self.keys[0].kid()
    }

    /// Claims for `identity` at `now` (unix seconds); split from [`Self::sign`] so tests can
    /// mint tokens at any time.
    pub fn claims_at(&self, identity: &Identity, audience: &str, now: u64) -> Claims {
        Claims {
            iss: self.issuer.clone(),
            aud: audience.to_string(),
            sub: identity.sub.clone(),
            name: identity.name.clone(),
            sid: identity.sid.clone(),
            iat: now,
            exp: now + self.ttl_secs,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    pub fn sign(&self, identity: &Identity, audience: &str) -> Result<String, SignError> {
        self.sign_claims(&self.claims_at(identity, audience, now_unix()))
    }

    pub fn sign_claims(&self, claims: &Claims) -> Result<String, SignError> {
        let key = &self.keys[0];
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid().to_string());
        Ok(jsonwebtoken::encode(&header, claims, key.encoding())?)
    }

    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(SigningKey::public_jwk).collect(),
        }
    }
}
