//! The admin listener: health, readiness, metrics and the JWKS upstreams verify against.
//! It is a separate listener (loopback by default) so none of it is reachable through routes.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use identity_assertion::JwkSet;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::routing::RouteTable;
use crate::session::SessionSource;

pub struct AdminApp {
    pub routes: Arc<RouteTable>,
    pub sessions: Vec<Arc<SessionSource>>,
    pub metrics: Arc<Metrics>,
    pub jwks: JwkSet,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

impl AdminApp {
    /// Ready when the session store answers and every route has a healthy upstream: a load
    /// balancer in front should stop sending traffic otherwise.
    async fn readiness(&self) -> (bool, String) {
        let mut ok = true;
        let mut report = String::new();
        for s in &self.sessions {
            match s.ping().await {
                Ok(()) => report.push_str(&format!("{} ({}): ok\n", s.name, s.store.kind())),
                Err(e) => {
                    ok = false;
                    report.push_str(&format!("{} ({}): {e}\n", s.name, s.store.kind()));
                }
            }
        }
        for r in self.routes.iter() {
            let healthy = r.pool.healthy_count();
            if healthy == 0 {
                ok = false;
            }
            report.push_str(&format!(
                "route {}: {healthy}/{} upstreams healthy\n",
                r.name,
                r.pool.len()
            ));
        }
        (ok, report)
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let (ok, report) = self.readiness().await;
                let status = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                reply(status, "text/plain", report.into_bytes())
            }
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            "/.well-known/jwks.json" => reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&self.jwks).unwrap_or_default(),
            ),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}
