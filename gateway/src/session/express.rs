//! express-session's signed cookie (`cookie-signature`): `s:<sid>.<base64(HMAC-SHA256(secret, sid))>`
//! with the `=` padding removed, URL-encoded by the cookie serializer. Several secrets may be
//! configured (rotation): the first signs, all verify.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::SessionError;

/// The session id inside a signed `connect.sid` cookie value, if one of `secrets` signed it.
pub fn unsign(cookie_value: &str, secrets: &[Vec<u8>]) -> Result<String, SessionError> {
    let decoded = percent_encoding::percent_decode_str(cookie_value)
        .decode_utf8()
        .map_err(|_| SessionError::Malformed)?;
    let signed = decoded.strip_prefix("s:").ok_or(SessionError::Unsigned)?;
    let (sid, sig) = signed.rsplit_once('.').ok_or(SessionError::BadSignature)?;
    let sig = STANDARD_NO_PAD
        .decode(sig)
        .map_err(|_| SessionError::BadSignature)?;
    for secret in secrets {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SessionError::BadSignature)?;
        mac.update(sid.as_bytes());
        // `verify_slice` compares in constant time.
        if mac.verify_slice(&sig).is_ok() {
            return Ok(sid.to_string());
        }
    }
    Err(SessionError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/express-session.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).expect("gateway/tests/fixtures"))
            .unwrap()
    }

    #[test]
    fn fixture_signatures_verify_with_their_secret() {
        let f = fixture();
        for v in f["signatures"].as_array().unwrap() {
            let secret = v["secret"].as_str().unwrap().as_bytes().to_vec();
            let sid = unsign(v["cookie_value"].as_str().unwrap(), &[secret]).unwrap();
            assert_eq!(sid, v["sid"].as_str().unwrap());
        }
        for login in f["logins"].as_array().unwrap() {
            let sid = unsign(
                login["cookie_value"].as_str().unwrap(),
                &[b"the secret key".to_vec()],
            )
            .unwrap();
            assert_eq!(sid, login["sid"].as_str().unwrap());
        }
    }

    #[test]
    fn rotation_any_configured_secret_verifies() {
        let f = fixture();
        let secrets = vec![b"rotated-new-secret".to_vec(), b"the secret key".to_vec()];
        for v in f["signatures"].as_array().unwrap() {
            let ok = unsign(v["cookie_value"].as_str().unwrap(), &secrets).is_ok();
            let known =
                ["rotated-new-secret", "the secret key"].contains(&v["secret"].as_str().unwrap());
            assert_eq!(ok, known, "{v}");
        }
    }

    #[test]
    fn fixture_negatives_are_refused() {
        let f = fixture();
        for v in f["negative"].as_array().unwrap() {
            let secrets: Vec<Vec<u8>> = v["secrets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().as_bytes().to_vec())
                .collect();
            assert!(
                unsign(v["cookie_value"].as_str().unwrap(), &secrets).is_err(),
                "{}",
                v["why"]
            );
        }
        assert_eq!(unsign("abc", &[b"k".to_vec()]), Err(SessionError::Unsigned));
        assert_eq!(
            unsign("s%3Aabc", &[b"k".to_vec()]),
            Err(SessionError::BadSignature)
        );
        assert_eq!(
            unsign("s%3Aabc.%%%", &[b"k".to_vec()]),
            Err(SessionError::BadSignature)
        );
    }
}
