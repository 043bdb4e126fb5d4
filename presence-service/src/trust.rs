//! Who is connecting: the gateway's signed assertion and nothing else.
//!
//! Keys come from PEM files (fixed) or from the gateway's JWKS (cached; refetched when a token
//! names a `kid` we do not know, at most once per `jwks_refetch_min_interval_ms`, so that key
//! rotation needs no restart and forged kids cannot make us hammer the gateway).

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
        /// Last fetch attempt; the lock also serialises concurrent refetches.
        last_fetch: Mutex<Option<Instant>>,
    },
}

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
                last_fetch: Mutex::new(None),
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

    /// First JWKS fetch at start. A gateway that is not up yet is not fatal: the next unknown
    /// `kid` triggers a fetch again.
    pub async fn warm_up(&self) {
        if let KeySource::Jwks { url, .. } = &*self.source {
            match self.refetch(true).await {
                Ok(n) => tracing::info!(%url, keys = n, "JWKS loaded"),
                Err(e) => {
                    tracing::warn!(error = %e, "JWKS not loaded yet; will retry on the first handshake")
                }
            }
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
                        if let Err(e) = self.refetch(false).await {
                            tracing::warn!(error = %e, %kid, "JWKS refetch for an unknown kid failed");
                        }
                        self.verifier.verify(token, &*keys.read().await)
                    }
                    other => other,
                }
            }
        }
    }

    /// Fetches the JWKS unless the last attempt is more recent than the minimum interval.
    async fn refetch(&self, force: bool) -> Result<usize, KeyLoadError> {
        let KeySource::Jwks {
            url,
            timeout,
            min_interval,
            keys,
            last_fetch,
        } = &*self.source
        else {
            return Ok(0);
        };
        let mut last = last_fetch.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < *min_interval) {
            return Ok(keys.read().await.len());
        }
        *last = Some(Instant::now());
        let fetched = tokio::time::timeout(*timeout, fetch_jwks(url))
            .await
            .map_err(|_| KeyLoadError::Jwks {
                url: url.clone(),
                reason: "timed out".into(),
            })??;
        let n = fetched.len();
        *keys.write().await = fetched;
        Ok(n)
    }
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
