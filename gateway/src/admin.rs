//! The admin listener: health, readiness, metrics, the JWKS upstreams verify against, and
//! `POST /reload` (what `gateway reload` calls). It is a separate listener (loopback by
//! default) so none of it is reachable through routes. A reload takes no input: it re-reads
//! the file the process was started with, exactly as `SIGHUP` does.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::drain::Drain;
use crate::listening::ListenerProbes;
use crate::live::{LiveState, Reloader};
use crate::metrics::Metrics;

pub struct AdminApp {
    pub live: LiveState,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    pub listeners: ListenerProbes,
    pub drain: Arc<Drain>,
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
    /// Ready when the gateway is not stopping, every proxy listener accepts, the session store
    /// answers and every route has a healthy upstream: a load balancer in front should stop
    /// sending traffic otherwise. A gateway shutting down still serves (the shutdown linger,
    /// then the drain) but says so, so that new clients go to another replica meanwhile. An
    /// upgrade in place does not: its successor takes the same sockets.
    async fn readiness(&self) -> (bool, String) {
        let live = self.live.load_full();
        let mut report = String::new();
        let mut ok = self.listeners.check(&mut report).await;
        if self.drain.is_leaving() {
            ok = false;
            report.insert_str(
                0,
                "stopping: serving what is open, new clients belong elsewhere\n",
            );
        }
        for s in &live.sessions.all() {
            match s.ping().await {
                Ok(()) => report.push_str(&format!("{} ({}): ok\n", s.name, s.store.kind())),
                Err(e) => {
                    ok = false;
                    report.push_str(&format!("{} ({}): {e}\n", s.name, s.store.kind()));
                }
            }
        }
        for r in live.routes.iter() {
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
        if path == "/reload" {
            if session.req_header().method != http::Method::POST {
                return reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain",
                    b"POST /reload re-reads the config file\n".to_vec(),
                );
            }
            // Logged and counted by the reloader; the answer carries the same words.
            return match self.reloader.reload_off_thread().await {
                Ok(report) => reply(
                    StatusCode::OK,
                    "text/plain",
                    report.to_string().into_bytes(),
                ),
                Err(e) => reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "text/plain",
                    format!("refused, the running config stays: {e}\n").into_bytes(),
                ),
            };
        }
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
                serde_json::to_vec(&self.live.load().jwks).unwrap_or_default(),
            ),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}
