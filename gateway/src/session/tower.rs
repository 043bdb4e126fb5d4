//! tower-sessions' cookie: the session `Id` as base64url (no padding) of its 16-byte
//! little-endian i128, optionally signed by the `cookie` crate's `SignedJar`: a 44-character
//! base64 HMAC-SHA256 of the value (keyed with the first 32 bytes of the 64-byte master `Key`)
//! in front of the value.

use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tower_sessions_core::session::Id;

use super::SessionError;

const DIGEST_LEN: usize = 44;

/// The session id in a tower-sessions cookie value. With `signing_keys` empty the cookie is
/// expected unsigned; otherwise it must carry a valid signature by one of them.
pub fn decode(cookie_value: &str, signing_keys: &[Vec<u8>]) -> Result<Id, SessionError> {
    let raw = if signing_keys.is_empty() {
        cookie_value
    } else {
        if !cookie_value.is_char_boundary(DIGEST_LEN) || cookie_value.len() <= DIGEST_LEN {
            return Err(SessionError::Unsigned);
        }
        let (digest, value) = cookie_value.split_at(DIGEST_LEN);
        let digest = STANDARD
            .decode(digest)
            .map_err(|_| SessionError::BadSignature)?;
        let verified = signing_keys.iter().any(|key| {
            Hmac::<Sha256>::new_from_slice(key)
                .map(|mut mac| {
                    mac.update(value.as_bytes());
                    mac.verify_slice(&digest).is_ok()
                })
                .unwrap_or(false)
        });
        if !verified {
            return Err(SessionError::BadSignature);
        }
        value
    };
    Id::from_str(raw).map_err(|_| SessionError::Malformed)
}

/// The signing half of a `cookie::Key` master key given as base64 (64 bytes or more).
pub fn signing_key_from_master(master_b64: &str) -> Result<Vec<u8>, String> {
    let master = STANDARD
        .decode(master_b64.trim())
        .map_err(|_| "the cookie key must be base64".to_string())?;
    if master.len() < 64 {
        return Err(format!(
            "the cookie key must be at least 64 bytes, got {}",
            master.len()
        ));
    }
    Ok(master[..32].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_id_round_trips() {
        let id = Id(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(decode(&id.to_string(), &[]).unwrap(), id);
        assert_eq!(decode("not-an-id", &[]), Err(SessionError::Malformed));
        assert_eq!(decode("", &[]), Err(SessionError::Malformed));
    }

    #[test]
    fn signed_id_verifies_and_tampering_is_refused() {
        let id = Id(42);
        let key = vec![7u8; 32];
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(id.to_string().as_bytes());
        let cookie = format!("{}{}", STANDARD.encode(mac.finalize().into_bytes()), id);
        assert_eq!(decode(&cookie, std::slice::from_ref(&key)).unwrap(), id);
        assert_eq!(
            decode(&cookie, &[vec![8u8; 32]]),
            Err(SessionError::BadSignature)
        );
        assert_eq!(
            decode(&id.to_string(), std::slice::from_ref(&key)),
            Err(SessionError::Unsigned)
        );
        let forged = format!("{}{}", &cookie[..DIGEST_LEN], Id(43));
        assert_eq!(decode(&forged, &[key]), Err(SessionError::BadSignature));
    }

    #[test]
    fn master_key_must_be_long_enough() {
        assert!(signing_key_from_master(&STANDARD.encode([1u8; 64])).is_ok());
        assert!(signing_key_from_master(&STANDARD.encode([1u8; 32])).is_err());
        assert!(signing_key_from_master("***").is_err());
    }
}
