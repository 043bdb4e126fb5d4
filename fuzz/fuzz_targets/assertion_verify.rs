//! The identity assertion verifier (`identity_assertion::AssertionVerifier` over a `KeySet`), as
//! every upstream runs it on every connection.
//!
//! The key set trusts `k1` and `k2` (fixed test keys below); `stranger` is a third key that the
//! set does not hold, published under the kid `k1`. Input: byte 0 picks the mode:
//! - 0: the rest is a token, verified as is;
//! - 1: the rest is `<header JSON>\n<claims JSON>`; the target signs it itself, with `k1` and
//!   with `stranger`, so the fuzzer explores header and claims handling behind a good signature;
//! - 2: the rest is a JWKS document for `KeySet::from_jwks_json`.
//!
//! Checked, besides "never panics": a token accepted was signed (checked here with
//! ed25519-dalek, independently of jsonwebtoken) by the key its `kid` names in the set; its
//! header says EdDSA; its claims are the payload's and meet the contract (issuer, audience, not
//! expired, not issued in the future); a token signed by any other key, unsigned, or `alg:
//! none` is never accepted.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, Verifier};
use identity_assertion::{
    AssertionSigner, AssertionVerifier, Claims, Identity, JwkSet, KeySet, SigningKey,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

// Test keys, made with `openssl genpkey -algorithm ed25519` for this target only. Fixed so that
// the signed tokens in the seed corpus stay valid.
const K1: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIP+O0m/SGo494ecHiGQMnO+YjZcR2CUw7KBCfTAI0TZo
-----END PRIVATE KEY-----
";
const K2: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIK94wsDozNCZu0UXjxEVcKWyBLnrI3F6kQeKMJSZOURg
-----END PRIVATE KEY-----
";
const STRANGER: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICvYlYD5pR6wIRuE0gCtxmnMcU1Ch6Q6To/tt7UZARe3
-----END PRIVATE KEY-----
";

const ISS: &str = "edge-gateway";
const AUD: &str = "presence-service";
const LEEWAY: u64 = 5;
/// The verifier's clock; seed tokens are issued at this time.
const NOW: u64 = 1_800_000_000;

struct Fixture {
    keys: KeySet,
    verifier: AssertionVerifier,
    k1: ed25519_dalek::SigningKey,
    stranger: ed25519_dalek::SigningKey,
    /// (kid, public key) the set trusts.
    trusted: Vec<(&'static str, ed25519_dalek::VerifyingKey)>,
    /// `k1`'s JWK `x`, to recognise a fuzzed JWKS that publishes it.
    k1_x: String,
    /// A valid token by `k1`, verified against fuzzed key sets.
    k1_token: String,
}

fn dalek(pem: &str) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_pkcs8_pem(pem).unwrap()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let s1 = AssertionSigner::new(ISS, 60, vec![SigningKey::from_pkcs8_pem("k1", K1).unwrap()])
            .unwrap();
        let s2 = AssertionSigner::new(ISS, 60, vec![SigningKey::from_pkcs8_pem("k2", K2).unwrap()])
            .unwrap();
        let stranger_signer = AssertionSigner::new(
            ISS,
            60,
            vec![SigningKey::from_pkcs8_pem("k1", STRANGER).unwrap()],
        )
        .unwrap();
        let jwks = JwkSet {
            keys: [s1.jwks().keys, s2.jwks().keys].concat(),
        };
        let keys = KeySet::from_jwks(&jwks).unwrap();
        let alice = Identity {
            sub: "alice".into(),
            name: Some("Alice".into()),
            sid: "c2Vzc2lvbi1oYW5kbGU".into(),
        };
        let k1_token = s1.sign_claims(&s1.claims_at(&alice, AUD, NOW)).unwrap();
        edge_fuzz::write_seeds_if_asked("assertion_verify", || {
            let bob = Identity {
                sub: "42".into(),
                name: None,
                sid: "aGFuZGxl".into(),
            };
            let mut seeds = vec![];
            let mut token = |name: &str, t: String| {
                seeds.push((name.to_string(), [b"\0".as_slice(), t.as_bytes()].concat()))
            };
            token("token-k1", k1_token.clone());
            token(
                "token-k2",
                s2.sign_claims(&s2.claims_at(&bob, AUD, NOW - 30)).unwrap(),
            );
            token(
                "token-expired",
                s1.sign_claims(&s1.claims_at(&alice, AUD, NOW - 600))
                    .unwrap(),
            );
            token(
                "token-other-audience",
                s1.sign_claims(&s1.claims_at(&alice, "billing", NOW))
                    .unwrap(),
            );
            token(
                "token-stranger",
                stranger_signer
                    .sign_claims(&stranger_signer.claims_at(&alice, AUD, NOW))
                    .unwrap(),
            );
            token(
                "token-alg-none",
                "eyJhbGciOiJub25lIiwia2lkIjoiazEifQ.eyJzdWIiOiJhbGljZSJ9.".into(),
            );
            let claims = serde_json::to_string(&s1.claims_at(&alice, AUD, NOW)).unwrap();
            for (name, header) in [
                ("parts-k1", r#"{"typ":"JWT","alg":"EdDSA","kid":"k1"}"#),
                ("parts-k2-kid", r#"{"typ":"JWT","alg":"EdDSA","kid":"k2"}"#),
                ("parts-hs256", r#"{"typ":"JWT","alg":"HS256","kid":"k1"}"#),
                ("parts-no-kid", r#"{"alg":"EdDSA"}"#),
            ] {
                seeds.push((name.into(), format!("\u{1}{header}\n{claims}").into_bytes()));
            }
            seeds.push((
                "jwks".into(),
                [
                    b"\x02".as_slice(),
                    serde_json::to_string(&jwks).unwrap().as_bytes(),
                ]
                .concat(),
            ));
            seeds
        });
        Fixture {
            keys,
            verifier: AssertionVerifier::new(ISS, AUD, LEEWAY),
            k1: dalek(K1),
            stranger: dalek(STRANGER),
            trusted: vec![
                ("k1", dalek(K1).verifying_key()),
                ("k2", dalek(K2).verifying_key()),
            ],
            k1_x: s1.jwks().keys[0].x.clone(),
            k1_token,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(claims) = f.verifier.verify_at(text, &f.keys, NOW) {
                check_accepted(f, text, &claims);
            }
        }
        1 => {
            let (header, payload) = text.split_once('\n').unwrap_or((text, ""));
            let signing_input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload)
            );
            let by = |key: &ed25519_dalek::SigningKey| {
                let sig = key.sign(signing_input.as_bytes());
                format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
            };
            let good = by(&f.k1);
            if let Ok(claims) = f.verifier.verify_at(&good, &f.keys, NOW) {
                check_accepted(f, &good, &claims);
                assert_eq!(
                    kid_of(&good).as_deref(),
                    Some("k1"),
                    "k1's signature under another kid"
                );
            }
            for forged in [
                by(&f.stranger),
                format!("{signing_input}."),
                signing_input.clone(),
                format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode([0u8; 64])),
            ] {
                let r = f.verifier.verify_at(&forged, &f.keys, NOW);
                assert!(
                    r.is_err(),
                    "accepted a token k1 did not sign: {forged:?} {r:?}"
                );
            }
        }
        _ => {
            if let Ok(keys) = KeySet::from_jwks_json(text) {
                if f.verifier.verify_at(&f.k1_token, &keys, NOW).is_ok() {
                    assert!(
                        text.contains(&f.k1_x),
                        "k1's token verified by a JWKS without k1"
                    );
                }
            }
        }
    }
});

fn kid_of(token: &str) -> Option<String> {
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    let header: Value = serde_json::from_slice(&header).ok()?;
    header.get("kid")?.as_str().map(str::to_string)
}

fn check_accepted(f: &Fixture, token: &str, claims: &Claims) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted {token:?}");
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("header b64")).unwrap();
    assert_eq!(header["alg"], "EdDSA", "accepted alg {:?}", header["alg"]);
    let kid = header["kid"].as_str().expect("accepted without kid");
    let (_, key) = f
        .trusted
        .iter()
        .find(|(k, _)| *k == kid)
        .unwrap_or_else(|| panic!("accepted unknown kid {kid:?}"));
    let sig: [u8; 64] = URL_SAFE_NO_PAD
        .decode(parts[2])
        .expect("signature b64")
        .try_into()
        .expect("64-byte signature");
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    key.verify(
        signing_input.as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .unwrap_or_else(|e| panic!("accepted a token {kid} did not sign: {e}"));
    let payload: Claims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("payload b64"))
            .expect("payload is the claims");
    assert_eq!(&payload, claims);
    assert_eq!(claims.iss, ISS);
    assert_eq!(claims.aud, AUD);
    assert!(claims.exp + LEEWAY > NOW, "expired token accepted");
    assert!(claims.iat <= NOW + LEEWAY, "token from the future accepted");
}
