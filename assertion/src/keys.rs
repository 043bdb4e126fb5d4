//! Ed25519 keys: private PEM for the signer, JWKS / public PEM for verifiers.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 PKCS#8 private key PEM: {0}")]
    PrivatePem(String),
    #[error("not an Ed25519 public key PEM (SPKI): {0}")]
    PublicPem(String),
    #[error("JWKS is not valid JSON: {0}")]
    JwksJson(#[from] serde_json::Error),
    #[error("JWK {kid:?}: {reason}")]
    Jwk { kid: String, reason: String },
    #[error("key id must not be empty")]
    EmptyKid,
}

/// One Ed25519 signing key with its key id.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, even in debug logs.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as `openssl genpkey -algorithm ed25519`
    /// and `gateway dev-certs` write it.
    pub fn from_pkcs8_pem(kid: impl Into<String>, pem: &str) -> Result<Self, KeyError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| KeyError::PrivatePem(e.to_string()))?;
        Self::from_dalek(kid.into(), key)
    }

    /// A fresh random key (tests, `dev-certs`).
    pub fn generate(kid: impl Into<String>) -> Self {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        Self::from_dalek(kid.into(), key).expect("a generated key encodes")
    }

    fn from_dalek(kid: String, key: ed25519_dalek::SigningKey) -> Result<Self, KeyError> {
        if kid.is_empty() {
            return Err(KeyError::EmptyKid);
        }
        let der = key
            .to_pkcs8_der()
            .map_err(|e| KeyError::PrivatePem(e.to_string()))?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        Ok(Self { kid, key, encoding })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    /// The private key as PKCS#8 PEM, for writing a generated key to disk.
    pub fn to_pkcs8_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(Default::default())
            .map(|p| p.to_string())
            .unwrap_or_default()
    }

    /// The public half as SPKI PEM, for verifiers that load a file instead of the JWKS.
    pub fn public_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap_or_default()
    }

    /// The public half as a JWK (RFC 8037 OKP key).
    pub fn public_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
            kid: self.kid.clone(),
            alg: Some("EdDSA".into()),
            key_use: Some("sig".into()),
        }
    }
}

/// An RFC 8037 public key as it appears in the JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
}

/// `/.well-known/jwks.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// Public keys a verifier accepts, by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a JWKS document. Keys that are not Ed25519 are skipped (a shared JWKS may hold
    /// other kinds), but a malformed Ed25519 key is an error: it signals a broken publisher.
    pub fn from_jwks_json(json: &str) -> Result<Self, KeyError> {
        let set: JwkSet = serde_json::from_str(json)?;
        Self::from_jwks(&set)
    }

    pub fn from_jwks(set: &JwkSet) -> Result<Self, KeyError> {
        let mut keys = Self::new();
        for jwk in &set.keys {
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
                continue;
            }
            keys.insert_jwk(jwk)?;
        }
        Ok(keys)
    }

    pub fn insert_jwk(&mut self, jwk: &Jwk) -> Result<(), KeyError> {
        if jwk.kid.is_empty() {
            return Err(KeyError::EmptyKid);
        }
        let bad = |reason: &str| KeyError::Jwk {
            kid: jwk.kid.clone(),
            reason: reason.into(),
        };
        let raw = URL_SAFE_NO_PAD
            .decode(&jwk.x)
            .map_err(|_| bad("x is not base64url"))?;
        if raw.len() != 32 {
            return Err(bad("x is not a 32-byte Ed25519 public key"));
        }
        let key = DecodingKey::from_ed_components(&jwk.x).map_err(|e| bad(&e.to_string()))?;
        self.keys.insert(jwk.kid.clone(), key);
        Ok(())
    }

    /// Adds a public key from an SPKI PEM (`-----BEGIN PUBLIC KEY-----`) under `kid`.
    pub fn insert_public_pem(&mut self, kid: &str, pem: &str) -> Result<(), KeyError> {
        if kid.is_empty() {
            return Err(KeyError::EmptyKid);
        }
        let vk = ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map_err(|e| KeyError::PublicPem(e.to_string()))?;
        let x = URL_SAFE_NO_PAD.encode(vk.as_bytes());
        let key =
            DecodingKey::from_ed_components(&x).map_err(|e| KeyError::PublicPem(e.to_string()))?;
        self.keys.insert(kid.to_string(), key);
        Ok(())
    }

    pub fn get(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.get(kid)
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_key() {
        let k = SigningKey::generate("k1");
        let again = SigningKey::from_pkcs8_pem("k1", &k.to_pkcs8_pem()).unwrap();
        assert_eq!(k.public_jwk(), again.public_jwk());
    }

    #[test]
    fn jwks_skips_foreign_keys_and_rejects_bad_ed25519() {
        let k = SigningKey::generate("k1");
        let mut set = JwkSet {
            keys: vec![k.public_jwk()],
        };
        set.keys.push(Jwk {
            kty: "RSA".into(),
            crv: String::new(),
            x: String::new(),
            kid: "rsa".into(),
            alg: None,
            key_use: None,
        });
        let keys = KeySet::from_jwks(&set).unwrap();
        assert!(keys.contains("k1") && !keys.contains("rsa"));

        let mut broken = k.public_jwk();
        broken.x = "AAAA".into();
        let err = KeySet::from_jwks(&JwkSet { keys: vec![broken] }).unwrap_err();
        assert!(err.to_string().contains("32-byte"), "{err}");
    }

    #[test]
    fn rejects_garbage_pem() {
        assert!(SigningKey::from_pkcs8_pem("k", "nope").is_err());
        assert!(KeySet::new().insert_public_pem("k", "nope").is_err());
    }
}
