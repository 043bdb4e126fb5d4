//! Logout propagation: when a user logs out through a route with `logout` configured, the
//! gateway tells the listed services (the presence service) with a fresh assertion for that
//! session. Receivers match the opaque `sid` claim against the connections they hold, so they
//! never see a session id, and the app that owns login needs no change at all.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use identity_assertion::{AssertionSigner, Identity};
use std::sync::Arc;

use crate::routing::LogoutRoute;

pub struct LogoutNotifier {
    rt: tokio::runtime::Handle,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

#[derive(Debug, thiserror::Error)]
enum NotifyError {
    #[error("cannot sign: {0}")]
    Sign(#[from] identity_assertion::SignError),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    #[error("{0}")]
    Send(#[from] hyper_util::client::legacy::Error),
    #[error("timed out")]
    Timeout,
    #[error("answered {0}")]
    Status(http::StatusCode),
}

impl LogoutNotifier {
    pub fn new(rt: tokio::runtime::Handle) -> Self {
        Self {
            rt,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Fire and forget: the logout response is not held back for it. Receivers share state
    /// (through Redis when there are several), so the first one that accepts is enough.
    /// `signer` is the logout request's own (the config it started on).
    pub fn session_ended(
        self: &Arc<Self>,
        signer: Arc<AssertionSigner>,
        route: LogoutRoute,
        identity: Identity,
        request_id: String,
    ) {
        let this = self.clone();
        self.rt.spawn(async move {
            for url in &route.notify {
                match this
                    .notify_one(&signer, &route, url, &identity, &request_id)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(request_id, user = %identity.sub, url, "logout propagated");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(request_id, url, error = %e, "logout notification failed")
                    }
                }
            }
        });
    }

    async fn notify_one(
        &self,
        signer: &AssertionSigner,
        route: &LogoutRoute,
        url: &str,
        identity: &Identity,
        request_id: &str,
    ) -> Result<(), NotifyError> {
        let token = signer.sign(identity, &route.audience)?;
        let req = http::Request::post(url)
            .header(route.header.as_str(), token)
            .header("x-request-id", request_id)
            .body(Empty::<Bytes>::new())?;
        let resp = tokio::time::timeout(Duration::from_secs(3), self.client.request(req))
            .await
            .map_err(|_| NotifyError::Timeout)??;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(NotifyError::Status(resp.status()))
        }
    }
}
