//! Who is connecting: the gateway's signed assertion and nothing else.
//!
//! Keys come from PEM files (fixed) or from the gateway's JWKS (cached; refetched when a token
//! names a `kid` we do not know, so that key rotation needs no restart).
//!
//! Refetch rules, so that neither a slow start nor forged kids hurt:
//! - after a fetch that brought keys, an unknown `kid` refetches at most once per
//!   `jwks_refetch_min_interval_ms` (forged kids cannot make us hammer the gateway). A token
//!   that arrives inside that interval waits for the next allowed fetch instead of being
//!   refused: right after the gateway rotates its signing key, every handshake carries the
//!   new `kid`, and refusing them until the interval ends would drop real users;
//! - after a failed or empty fetch, nothing is rate-limited: an unknown `kid` always tries
//!   again (the gateway may have come up since), and a background task retries with a short
//!   backoff until keys are held, so `/readyz` turns ready without waiting for a handshake;
//! - concurrent refetches are serialised, and a caller that waited while another fetch
//!   completed uses its result instead of fetching again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use identity_assertion::{AssertionVerifier, Claims, KeySet, VerifyError};
use tokio::sync::{Mutex, RwLock};

use crate::config::TrustConfig;

#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
    #[error("public key {kid:?} from {path}: {reason}")]
    Pem {
        kid: String,
        path: String,
        reason: String,
    },
    #[error("JWKS from {url}: {reason}")]
    Jwks { url: String, reason: String },
}

enum KeySource {
    Fixed(KeySet),
    Jwks {
        url: String,
        timeout: Duration,
        min_interval: Duration,
        keys: RwLock<KeySet>,
        /// The last attempt; the lock also serialises concurrent refetches.
        last_fetch: Mutex<FetchState>,
        /// Set once a fetch brought at least one key (`/readyz`).
        has_keys: AtomicBool,
        /// Fetches completed, either way: a caller that finds it moved while it waited for the
        /// lock takes that fetch's outcome instead of fetching again.
        generation: AtomicU64,
    },
}

/// What the last JWKS fetch did.
#[derive(Debug, Default)]
struct FetchState {
    /// When it started; `None` before the first.
    at: Option<Instant>,
    /// Whether it brought at least one key.
    ok: bool,
}

/// First retry delay after a failed fetch in the background, doubled up to the cap.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Verifies assertions against the configured keys.
#[derive(Clone)]
pub struct Trust {
    verifier: AssertionVerifier,
    header: http::HeaderName,
    source: Arc<KeySource>,
}

impl Trust {
    pub fn from_config(cfg: &TrustConfig) -> Result<Self, KeyLoadError> {
        let source = if cfg.public_keys.is_empty() {
            KeySource::Jwks {
                url: cfg.jwks_url.clone(),
                timeout: Duration::from_millis(cfg.jwks_timeout_ms),
                min_interval: Duration::from_millis(cfg.jwks_refetch_min_interval_ms),
                keys: RwLock::new(KeySet::new()),
                last_fetch: Mutex::new(FetchState::default()),
                has_keys: AtomicBool::new(false),
                generation: AtomicU64::new(0),
            }
        } else {
            let mut keys = KeySet::new();
            for k in &cfg.public_keys {
                let path = k.pem.get_ref().display().to_string();
                let pem =
                    std::fs::read_to_string(k.pem.get_ref()).map_err(|e| KeyLoadError::Pem {
                        kid: k.kid.clone(),
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                keys.insert_public_pem(&k.kid, &pem)
                    .map_err(|e| KeyLoadError::Pem {
                        kid: k.kid.clone(),
                        path,
                        reason: e.to_string(),
                    })?;
            }
            KeySource::Fixed(keys)
        };
        let header = http::HeaderName::from_bytes(cfg.header.to_ascii_lowercase().as_bytes())
            .unwrap_or(http::HeaderName::from_static(
                identity_assertion::DEFAULT_HEADER,
            ));
        Ok(Self {
            verifier: AssertionVerifier::new(&cfg.issuer, &cfg.audience, cfg.leeway_secs),
            header,
            source: Arc::new(source),
        })
    }

    /// First JWKS fetch at start. A gateway that is not up yet is not fatal: a background task
    /// retries with a short backoff until keys are held, and every unknown `kid` retries too.
    pub async fn warm_up(&self) {
        let KeySource::Jwks { url, .. } = &*self.source else {
            return;
        };
        match self.refetch(Refetch::Always).await {
            Ok(n) => tracing::info!(%url, keys = n, "JWKS loaded"),
            Err(e) => {
                tracing::warn!(error = %e, "JWKS not loaded yet; retrying in the background");
                let trust = self.clone();
                tokio::spawn(async move { trust.retry_until_loaded().await });
            }
        }
    }

    async fn retry_until_loaded(&self) {
        let mut delay = RETRY_FIRST;
        while !self.has_keys() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
            match self.refetch(Refetch::IfNoKeys).await {
                Ok(n) if n > 0 => tracing::info!(keys = n, "JWKS loaded"),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "JWKS still not loaded; retrying"),
            }
        }
    }

    /// Whether assertions can be verified at all: PEM keys configured, or a JWKS fetch brought
    /// keys. Until then every handshake would be refused, so the node is not ready.
    pub fn has_keys(&self) -> bool {
        match &*self.source {
            KeySource::Fixed(keys) => !keys.is_empty(),
            KeySource::Jwks { has_keys, .. } => has_keys.load(Ordering::Acquire),
        }
    }

    /// The header the gateway puts its assertion in.
    pub fn header(&self) -> &http::HeaderName {
        &self.header
    }

    /// Verifies the assertion carried in `headers`.
    pub async fn verify_headers(&self, headers: &HeaderMap) -> Result<Claims, VerifyError> {
        let token = headers
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(VerifyError::Missing)?;
        self.verify(token).await
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        match &*self.source {
            KeySource::Fixed(keys) => self.verifier.verify(token, keys),
            KeySource::Jwks { keys, .. } => {
                let first = self.verifier.verify(token, &*keys.read().await);
                match first {
                    Err(VerifyError::UnknownKid(kid)) => {
                        if let Err(e) = self.refetch(Refetch::UnknownKid).await {
                            tracing::warn!(error = %e, %kid, "JWKS refetch for an unknown kid failed");
                        }
                        self.verifier.verify(token, &*keys.read().await)
                    }
                    other => other,
                }
            }
        }
    }

    /// Fetches the JWKS when `why` says so (see the module's refetch rules); returns the number
    /// of keys held afterwards.
    async fn refetch(&self, why: Refetch) -> Result<usize, KeyLoadError> {
        let KeySource::Jwks {
            url,
            timeout,
            min_interval,
            keys,
            last_fetch,
            has_keys,
            generation,
        } = &*self.source
        else {
            return Ok(0);
        };
        let seen = generation.load(Ordering::Acquire);
        let mut last = last_fetch.lock().await;
        let held = keys.read().await.len();
        if generation.load(Ordering::Acquire) != seen {
            // A fetch completed while this caller waited: as fresh as ours would be.
            return if last.ok {
                Ok(held)
            } else {
                Err(KeyLoadError::Jwks {
                    url: url.clone(),
                    reason: "the fetch just made failed".into(),
                })
            };
        }
        match why {
            Refetch::Always => {}
            Refetch::IfNoKeys if held > 0 => return Ok(held),
            Refetch::IfNoKeys => {}
            Refetch::UnknownKid => {
                if let Some(at) = last.at.filter(|_| last.ok) {
                    // Holding the lock while waiting: callers queued behind it find the
                    // generation moved and share this fetch.
                    tokio::time::sleep_until((at + *min_interval).into()).await;
                }
            }
        }
        last.at = Some(Instant::now());
        let outcome = match tokio::time::timeout(*timeout, fetch_jwks(url)).await {
            Err(_) => Err(KeyLoadError::Jwks {
                url: url.clone(),
                reason: "timed out".into(),
            }),
            // Whatever was held stays: an empty set means a gateway misconfigured or starting,
            // not a reason to refuse everyone.
            Ok(Ok(fetched)) if fetched.is_empty() => Err(KeyLoadError::Jwks {
                url: url.clone(),
                reason: "no keys in the set".into(),
            }),
            Ok(fetched) => fetched,
        };
        last.ok = outcome.is_ok();
        generation.fetch_add(1, Ordering::AcqRel);
        let fetched = outcome?;
        let n = fetched.len();
        *keys.write().await = fetched;
        has_keys.store(true, Ordering::Release);
        Ok(n)
    }
}

/// Why a JWKS fetch is considered.
#[derive(Debug, Clone, Copy)]
enum Refetch {
    /// At start.
    Always,
    /// The background retry: only while no key was ever loaded.
    IfNoKeys,
    /// A token named a `kid` we do not hold.
    UnknownKid,
}

async fn fetch_jwks(url: &str) -> Result<KeySet, KeyLoadError> {
    let bad = |reason: String| KeyLoadError::Jwks {
        url: url.to_string(),
        reason,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    // The JWKS is served on the gateway's admin listener, plain HTTP on loopback / a private net.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client.get(uri).await.map_err(|e| bad(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(bad(format!("HTTP {}", resp.status())));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| bad(e.to_string()))?
        .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|e| bad(e.to_string()))?;
    KeySet::from_jwks_json(text).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use identity_assertion::{AssertionSigner, Identity, SigningKey};
    use tokio::net::TcpListener;

    use super::*;

    /// A JWKS endpoint that answers `body` and counts the requests it served.
    async fn serve_jwks(listener: TcpListener, body: String) -> Arc<AtomicUsize> {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                async move { body }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        hits
    }

    /// A port with nobody listening yet (the gateway not started), and a way to start it there.
    async fn unused_port() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    fn trust_for(addr: std::net::SocketAddr) -> Trust {
        // Long enough that the test would fail (time out) if a failed fetch started the rate
        // limit: an unknown kid then waits for the interval.
        trust_with_interval(addr, 60_000)
    }

    fn trust_with_interval(addr: std::net::SocketAddr, ms: u64) -> Trust {
        Trust::from_config(&TrustConfig {
            jwks_url: format!("http://{addr}/jwks"),
            jwks_refetch_min_interval_ms: ms,
            ..TrustConfig::default()
        })
        .unwrap()
    }

    fn token(signer: &AssertionSigner) -> String {
        let id = Identity {
            sub: "alice".into(),
            name: None,
            sid: "s".into(),
        };
        signer.sign(&id, "presence-service").unwrap()
    }

    fn signer() -> AssertionSigner {
        AssertionSigner::new("edge-gateway", 60, vec![SigningKey::generate("k1")]).unwrap()
    }

    #[tokio::test]
    async fn a_failed_first_fetch_does_not_rate_limit_the_next_handshake() {
        let addr = unused_port().await;
        let trust = trust_for(addr);
        trust.warm_up().await;
        assert!(!trust.has_keys());
        // The gateway comes up after the presence service.
        let signer = signer();
        let jwks = serde_json::to_string(&signer.jwks()).unwrap();
        serve_jwks(TcpListener::bind(addr).await.unwrap(), jwks).await;
        let claims = tokio::time::timeout(Duration::from_secs(5), trust.verify(&token(&signer)))
            .await
            .expect("the failed fetch started the rate limit: the handshake waited for it");
        assert_eq!(claims.map(|c| c.sub).ok().as_deref(), Some("alice"));
        assert!(trust.has_keys());
    }

    #[tokio::test]
    async fn keys_arrive_in_the_background_without_a_handshake() {
        let addr = unused_port().await;
        let trust = trust_for(addr);
        trust.warm_up().await;
        let jwks = serde_json::to_string(&signer().jwks()).unwrap();
        serve_jwks(TcpListener::bind(addr).await.unwrap(), jwks).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !trust.has_keys() {
            assert!(Instant::now() < deadline, "keys never loaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn an_empty_set_is_retried_and_keys_are_rate_limited_once_held() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits = serve_jwks(l, r#"{"keys":[]}"#.into()).await;
        let trust = trust_for(addr);
        trust.warm_up().await;
        assert!(!trust.has_keys());
        let signer = signer();
        // Unknown kid after an empty set: fetched again at once, twice in a row.
        let before = hits.load(Ordering::SeqCst);
        assert!(trust.verify(&token(&signer)).await.is_err());
        assert!(trust.verify(&token(&signer)).await.is_err());
        assert!(hits.load(Ordering::SeqCst) >= before + 2);

        // Once keys are held, a burst of forged kids costs one fetch per interval, however
        // many arrive at once.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let jwks = serde_json::to_string(&signer.jwks()).unwrap();
        let hits = serve_jwks(l, jwks).await;
        let trust = Arc::new(trust_with_interval(addr, 300));
        trust.warm_up().await;
        assert!(trust.has_keys());
        let other =
            AssertionSigner::new("edge-gateway", 60, vec![SigningKey::generate("k2")]).unwrap();
        let after_start = hits.load(Ordering::SeqCst);
        let forged = token(&other);
        let burst: Vec<_> = (0..20)
            .map(|_| {
                let (trust, forged) = (trust.clone(), forged.clone());
                tokio::spawn(async move { trust.verify(&forged).await })
            })
            .collect();
        for t in burst {
            assert!(matches!(t.await.unwrap(), Err(VerifyError::UnknownKid(_))));
        }
        assert_eq!(hits.load(Ordering::SeqCst), after_start + 1);
    }

    #[tokio::test]
    async fn a_key_rotated_just_after_a_fetch_is_accepted_once_the_interval_allows() {
        // The gateway's JWKS as a value the test changes: k1 at start, then k1 + k2.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let old = signer();
        let rotated = AssertionSigner::new(
            "edge-gateway",
            60,
            vec![SigningKey::generate("k2"), SigningKey::generate("k1b")],
        )
        .unwrap();
        let body = Arc::new(std::sync::Mutex::new(
            serde_json::to_string(&old.jwks()).unwrap(),
        ));
        let served = body.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let b = served.lock().unwrap().clone();
                async move { b }
            }),
        );
        tokio::spawn(async move { axum::serve(l, app).await });
        let trust = trust_with_interval(addr, 400);
        trust.warm_up().await;
        assert_eq!(
            trust
                .verify(&token(&old))
                .await
                .map(|c| c.sub)
                .ok()
                .as_deref(),
            Some("alice")
        );
        // Rotation inside the interval of the fetch just made.
        *body.lock().unwrap() = serde_json::to_string(&rotated.jwks()).unwrap();
        let claims = trust.verify(&token(&rotated)).await;
        assert_eq!(claims.map(|c| c.sub).ok().as_deref(), Some("alice"));
    }
}
