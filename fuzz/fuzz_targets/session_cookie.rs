//! Both session cookie formats the edge verifies, and the `Cookie` header parser in front of them:
//! - express-session (`gateway::session::express::unsign`): `s:<sid>.<base64 HMAC-SHA256>`,
//!   URL-encoded, several secrets;
//! - tower-sessions (`gateway::session::tower::decode`): the base64url `Id`, unsigned or signed by
//!   the `cookie` crate (44-character base64 HMAC-SHA256 in front of the value).
//!
//! Input: byte 0 picks the mode, the rest is split into lines: the cookie value (or header), then
//! the secrets. Checked, besides "never panics":
//! - a cookie that verifies was signed with one of the configured keys (the signature is
//!   recomputed here, independently) and the id returned is the one that was signed;
//! - sign-then-verify round trips with the right key and fails with any other;
//! - an unsigned tower-sessions id decodes only from its one canonical spelling;
//! - `cookie::find` returns a value that sits in the header under exactly that name.
#![no_main]

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use gateway::session::{cookie, express, tower, SessionError};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use sha2::Sha256;
use tower_sessions_core::session::Id;

fn mac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// The key HMAC really uses: a key longer than the block is hashed, a shorter one is padded
/// with zeros, so `k` and `k\0` are the same key (RFC 2104 section 2). Two secrets are "other
/// keys" only if these differ.
fn hmac_key(key: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    while k.last() == Some(&0) {
        k.pop();
    }
    k
}

/// What cookie-signature's `sign` writes, URL-encoded as express's cookie serializer does.
fn express_sign(sid: &str, secret: &[u8]) -> String {
    let signed = format!(
        "s:{sid}.{}",
        STANDARD_NO_PAD.encode(mac(secret, sid.as_bytes()))
    );
    utf8_percent_encode(&signed, NON_ALPHANUMERIC).to_string()
}

/// What the `cookie` crate's `SignedJar` writes.
fn tower_sign(value: &str, key: &[u8]) -> String {
    format!("{}{value}", STANDARD.encode(mac(key, value.as_bytes())))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let value = lines.next().unwrap_or("");
    let secrets: Vec<Vec<u8>> = lines.take(4).map(|s| s.as_bytes().to_vec()).collect();
    match mode % 4 {
        0 => express_cookie(value, &secrets),
        1 => tower_unsigned(value, rest),
        2 => tower_signed(value, &secrets, rest),
        _ => cookie_header(&text),
    }
});

fn express_cookie(value: &str, secrets: &[Vec<u8>]) {
    match express::unsign(value, secrets) {
        Ok(sid) => {
            // It verified: recompute the signature; one of the secrets must have made it.
            let decoded = percent_decode_str(value).decode_utf8().unwrap();
            let signer = secrets.iter().find(|s| {
                let want = format!("s:{sid}.{}", STANDARD_NO_PAD.encode(mac(s, sid.as_bytes())));
                *decoded == want
            });
            assert!(
                signer.is_some(),
                "{value:?} verified but no secret signed it"
            );
        }
        Err(SessionError::Unsigned) => {
            let decoded = percent_decode_str(value).decode_utf8().unwrap();
            assert!(!decoded.starts_with("s:"));
        }
        Err(SessionError::Malformed) => {
            assert!(percent_decode_str(value).decode_utf8().is_err());
        }
        Err(SessionError::BadSignature) => {}
        Err(e) => panic!("unexpected error {e:?}"),
    }
    // Round trip: the input's value as a session id, signed by each secret in turn.
    let sid = value;
    for (i, secret) in secrets.iter().enumerate() {
        let signed = express_sign(sid, secret);
        assert_eq!(
            express::unsign(&signed, std::slice::from_ref(secret)).as_deref(),
            Ok(sid),
            "own signature refused"
        );
        // Rotation: any position in the list verifies.
        assert_eq!(express::unsign(&signed, secrets).as_deref(), Ok(sid));
        // Any other key refuses it (a key equal to this one is the same key).
        let others: Vec<Vec<u8>> = secrets
            .iter()
            .enumerate()
            .filter(|(j, s)| *j != i && hmac_key(s) != hmac_key(secret))
            .map(|(_, s)| s.clone())
            .chain([[secret.as_slice(), b"x"].concat()])
            .collect();
        assert_eq!(
            express::unsign(&signed, &others),
            Err(SessionError::BadSignature),
            "verified with a key that did not sign it"
        );
    }
}

fn tower_unsigned(value: &str, raw: &[u8]) {
    if let Ok(id) = tower::decode(value, &[]) {
        // One session id, one spelling: no second cookie value names the same session.
        assert_eq!(id.to_string(), value, "non-canonical id accepted");
    }
    if raw.len() >= 16 {
        let id = Id(i128::from_le_bytes(raw[..16].try_into().unwrap()));
        assert_eq!(tower::decode(&id.to_string(), &[]), Ok(id));
    }
}

fn tower_signed(value: &str, keys: &[Vec<u8>], raw: &[u8]) {
    match tower::decode(value, keys) {
        Ok(id) if keys.is_empty() => assert_eq!(id.to_string(), value),
        Ok(id) => {
            let rest = &value[44..];
            assert!(
                keys.iter().any(|k| tower_sign(rest, k) == value),
                "{value:?} verified but no key signed it"
            );
            assert_eq!(id.to_string(), rest);
        }
        Err(_) => {}
    }
    // Round trip with an id made of the input's bytes.
    let mut b = [0u8; 16];
    let n = raw.len().min(16);
    b[..n].copy_from_slice(&raw[..n]);
    let id = Id(i128::from_le_bytes(b));
    for (i, key) in keys.iter().enumerate() {
        let signed = tower_sign(&id.to_string(), key);
        assert_eq!(tower::decode(&signed, std::slice::from_ref(key)), Ok(id));
        assert_eq!(tower::decode(&signed, keys), Ok(id));
        let others: Vec<Vec<u8>> = keys
            .iter()
            .enumerate()
            .filter(|(j, k)| *j != i && hmac_key(k) != hmac_key(key))
            .map(|(_, k)| k.clone())
            .chain([[key.as_slice(), b"x"].concat()])
            .collect();
        assert_eq!(
            tower::decode(&signed, &others),
            Err(SessionError::BadSignature)
        );
        // A signed cookie is not accepted where cookies are unsigned, nor the bare id where
        // they are signed.
        assert!(tower::decode(&signed, &[]).is_err());
        assert!(tower::decode(&id.to_string(), std::slice::from_ref(key)).is_err());
    }
    if let Ok(k) = tower::signing_key_from_master(value) {
        assert_eq!(k.len(), 32);
    }
}

fn cookie_header(text: &str) {
    // Line 1 is the cookie name, the rest are `Cookie` headers.
    let mut lines = text.split('\n');
    let name = lines.next().unwrap_or("");
    let headers: Vec<&str> = lines.collect();
    if let Some(v) = cookie::find(headers.iter().copied(), name) {
        assert!(!v.contains(';'));
        let found = headers.iter().flat_map(|h| h.split(';')).any(|pair| {
            pair.split_once('=')
                .is_some_and(|(k, raw)| k.trim() == name && raw.trim().trim_matches('"') == v)
        });
        assert!(found, "{v:?} is not the value of a {name:?} cookie");
    }
    // A header we write ourselves gives its value back.
    let clean = |s: &str| {
        s.chars()
            .filter(|c| !matches!(c, ';' | '=' | '"') && !c.is_whitespace())
            .collect::<String>()
    };
    let (n, v) = (clean(name), clean(headers.first().copied().unwrap_or("")));
    if !n.is_empty() && n != "other" {
        let header = format!("other=1; {n}={v}; {n}=second");
        assert_eq!(cookie::find([header.as_str()], &n), Some(v.as_str()));
    }
}
