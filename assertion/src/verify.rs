use jsonwebtoken::{Algorithm, Validation};

use crate::{Claims, KeySet};

/// Why an assertion was refused. `UnknownKid` is separate so that a verifier can refetch the
/// JWKS (key rotation) before it gives up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing assertion")]
    Missing,
    #[error("malformed assertion")]
    Malformed,
    #[error("assertion has no kid")]
    NoKid,
    #[error("unknown kid {0:?}")]
    UnknownKid(String),
    #[error("algorithm is not EdDSA")]
    WrongAlgorithm,
    #[error("bad signature")]
    BadSignature,
    #[error("assertion expired")]
    Expired,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("invalid claims: {0}")]
    InvalidClaims(String),
}

impl VerifyError {
    /// A short stable label, for metrics and log fields.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::NoKid => "no_kid",
            Self::UnknownKid(_) => "unknown_kid",
            Self::WrongAlgorithm => "wrong_alg",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::InvalidClaims(_) => "invalid_claims",
        }
    }
}

/// Checks signature, `kid`, `alg`, `iss`, `aud`, `exp` and `iat` (with leeway).
#[derive(Debug, Clone)]
pub struct AssertionVerifier {
    validation: Validation,
    leeway: u64,
}

impl AssertionVerifier {
    pub fn new(issuer: &str, audience: &str, leeway_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = leeway_secs;
        validation.validate_exp = true;
        Self {
            validation,
            leeway: leeway_secs,
        }
    }

    pub fn verify(&self, token: &str, keys: &KeySet) -> Result<Claims, VerifyError> {
        self.verify_at(token, keys, crate::now_unix())
    }

    /// As [`Self::verify`], with the clock given (tests).
    pub fn verify_at(&self, token: &str, keys: &KeySet, now: u64) -> Result<Claims, VerifyError> {
        use jsonwebtoken::errors::ErrorKind;
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(VerifyError::WrongAlgorithm);
        }
        let kid = header.kid.ok_or(VerifyError::NoKid)?;
        let key = keys
            .get(&kid)
            .ok_or_else(|| VerifyError::UnknownKid(kid.clone()))?;
        // jsonwebtoken checks `exp` against the system clock; we check times ourselves so that
        // `now` is honoured and `iat` in the future is refused too.
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::InvalidSignature => VerifyError::BadSignature,
            ErrorKind::InvalidAudience => VerifyError::WrongAudience,
            ErrorKind::InvalidIssuer => VerifyError::WrongIssuer,
            ErrorKind::InvalidAlgorithm => VerifyError::WrongAlgorithm,
            ErrorKind::ExpiredSignature => VerifyError::Expired,
            ErrorKind::MissingRequiredClaim(c) => {
                VerifyError::InvalidClaims(format!("missing {c}"))
            }
            ErrorKind::Json(_) => {
                VerifyError::InvalidClaims("claims do not match the contract".into())
            }
            _ => VerifyError::Malformed,
        })?;
        let claims = data.claims;
        if claims.exp + self.leeway <= now {
            return Err(VerifyError::Expired);
        }
        if claims.iat > now + self.leeway {
            return Err(VerifyError::InvalidClaims("iat is in the future".into()));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AssertionSigner, Identity, SigningKey};

    fn alice() -> Identity {
        Identity {
            sub: "alice".into(),
            name: Some("Alice".into()),
            sid: "h1".into(),
        }
    }

    fn setup() -> (AssertionSigner, KeySet, AssertionVerifier) {
        let signer = AssertionSigner::new("gw", 60, vec![SigningKey::generate("k1")]).unwrap();
        let keys = KeySet::from_jwks(&signer.jwks()).unwrap();
        (
            signer,
            keys,
            AssertionVerifier::new("gw", "presence-service", 5),
        )
    }

    #[test]
    fn signed_token_verifies_with_all_claims() {
        let (signer, keys, verifier) = setup();
        let token = signer.sign(&alice(), "presence-service").unwrap();
        let c = verifier.verify(&token, &keys).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.display_name(), c.sid.as_str()),
            ("alice", "Alice", "h1")
        );
        assert_eq!(c.exp - c.iat, 60);
        assert_eq!(c.jti.len(), 32);
    }

    #[test]
    fn expiry_honours_leeway() {
        let (signer, keys, verifier) = setup();
        let claims = signer.claims_at(&alice(), "presence-service", 1_000);
        let token = signer.sign_claims(&claims).unwrap();
        assert!(verifier.verify_at(&token, &keys, 1_064).is_ok());
        assert_eq!(
            verifier.verify_at(&token, &keys, 1_065),
            Err(VerifyError::Expired)
        );
        assert!(matches!(
            verifier.verify_at(&token, &keys, 900),
            Err(VerifyError::InvalidClaims(_))
        ));
    }

    #[test]
    fn wrong_audience_issuer_kid_and_signature_are_refused() {
        let (signer, keys, verifier) = setup();
        let other_aud = signer.sign(&alice(), "billing").unwrap();
        assert_eq!(
            verifier.verify(&other_aud, &keys),
            Err(VerifyError::WrongAudience)
        );

        let other_iss = AssertionSigner::new("evil", 60, vec![SigningKey::generate("k1")]).unwrap();
        let keys_evil = KeySet::from_jwks(&other_iss.jwks()).unwrap();
        let t = other_iss.sign(&alice(), "presence-service").unwrap();
        assert_eq!(
            verifier.verify(&t, &keys_evil),
            Err(VerifyError::WrongIssuer)
        );
        // Same kid, different key: the signature must not verify.
        assert_eq!(verifier.verify(&t, &keys), Err(VerifyError::BadSignature));

        let stranger = AssertionSigner::new("gw", 60, vec![SigningKey::generate("k9")]).unwrap();
        let t = stranger.sign(&alice(), "presence-service").unwrap();
        assert_eq!(
            verifier.verify(&t, &keys),
            Err(VerifyError::UnknownKid("k9".into()))
        );

        assert_eq!(
            verifier.verify("not.a.jwt", &keys),
            Err(VerifyError::Malformed)
        );
        let token = signer.sign(&alice(), "presence-service").unwrap();
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(verifier.verify(&tampered, &keys).is_err());
    }

    #[test]
    fn rotation_first_key_signs_all_keys_verify() {
        let old = SigningKey::generate("old");
        let new = SigningKey::generate("new");
        let before = AssertionSigner::new("gw", 60, vec![old.clone()]).unwrap();
        let during = AssertionSigner::new("gw", 60, vec![new, old]).unwrap();
        let keys = KeySet::from_jwks(&during.jwks()).unwrap();
        let verifier = AssertionVerifier::new("gw", "presence-service", 5);
        let t_old = before.sign(&alice(), "presence-service").unwrap();
        let t_new = during.sign(&alice(), "presence-service").unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&t_new).unwrap().kid.as_deref(),
            Some("new")
        );
        assert!(verifier.verify(&t_old, &keys).is_ok());
        assert!(verifier.verify(&t_new, &keys).is_ok());
    }

    #[test]
    fn unsigned_alg_none_is_refused() {
        let (_, keys, verifier) = setup();
        // {"alg":"none","kid":"k1"} . {"sub":"alice"} . (empty)
        let token = "eyJhbGciOiJub25lIiwia2lkIjoiazEifQ.eyJzdWIiOiJhbGljZSJ9.";
        assert!(verifier.verify(token, &keys).is_err());
    }
}
