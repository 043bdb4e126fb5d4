//! A WebSocket handshake's upstream leg, run by the gateway instead of Pingora's proxy, so the
//! connection can leave Pingora once it is upgraded.
//!
//! Inside Pingora's proxy an upgraded connection keeps the whole request alive for as long as
//! the WebSocket lives: the proxy future, both HTTP sessions with their buffers, the task pipes
//! (tens of KiB per idle socket; `integration/bench/gateway-bench.sh` measures it). So for a
//! WebSocket handshake the proxy (`proxy::Gateway::proxy_upgrade`) runs the same phases itself:
//! the same upstream choice, a connection from Pingora's connector with the same peer options,
//! the request head cleaned of hop-by-hop fields as Pingora's default policy does, then the
//! gateway's own header rewrite, the upstream's response through the same `response_filter`.
//! Once a `101` has reached the client, both connections are taken out of their sessions (with
//! the bytes each session had read past its head) and relayed by `tunnel`.
//!
//! Only what this module can do completely takes this path: HTTP/1.1 WebSocket upgrades
//! without a request body. Anything else with an `Upgrade` field stays on Pingora's proxy path.

use std::future::Future;
use std::io::Cursor;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::server::HttpSession as ClientSessionV1;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::classify;

/// Reads that collect what is already buffered or readable when a connection leaves its
/// session; anything later is the relay's to read.
const MAX_EARLY_READS: usize = 8;

/// Header fields that describe one hop, never forwarded (the upgrade's own are set again).
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Whether this request's upgrade is run by the gateway: an HTTP/1.1 WebSocket handshake
/// (RFC 6455: a GET) that announces no body.
pub fn takes(req: &RequestHeader, http1: bool) -> bool {
    let no_body = !req.headers.contains_key(header::TRANSFER_ENCODING)
        && req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
    http1
        && req.method == http::Method::GET
        && no_body
        && classify::is_websocket_upgrade(&req.headers, req.version)
}

/// The request head to send upstream, before the gateway's own rewrite: the client's, without
/// hop-by-hop fields or fields its `Connection` names (except `Host`, which the route was chosen
/// by and which the upstream needs; RFC 9110 never makes it hop-by-hop), with the WebSocket
/// upgrade fields.
pub fn upstream_head(client: &RequestHeader) -> Result<RequestHeader> {
    let mut req = client.clone();
    let nominated: Vec<String> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "host")
        .collect();
    for name in nominated.iter().map(String::as_str).chain(HOP_BY_HOP) {
        req.remove_header(name);
    }
    req.insert_header(header::CONNECTION, "Upgrade")?;
    req.insert_header(header::UPGRADE, "websocket")?;
    Ok(req)
}

/// An upstream connection with a handshake in progress.
pub struct Upstream(UpstreamSession);

impl Upstream {
    /// Connects to `peer` with its options (connect timeouts, read and write timeouts).
    pub async fn connect(connector: &TransportConnector, peer: &HttpPeer) -> Result<Self> {
        let stream = connector.new_stream(peer).await.map_err(|e| e.into_up())?;
        let mut session = UpstreamSession::new(stream);
        session.read_timeout = peer.options.read_timeout;
        session.write_timeout = peer.options.write_timeout;
        Ok(Upstream(session))
    }

    /// Sends the request head and reads the response head (informational responses other
    /// than `101` are skipped, as a client never sees them), all within `wait`.
    pub async fn handshake(
        &mut self,
        req: RequestHeader,
        wait: Duration,
    ) -> Result<ResponseHeader> {
        within(
            wait,
            "no answer to a WebSocket handshake",
            self.exchange_heads(req),
        )
        .await
    }

    async fn exchange_heads(&mut self, req: RequestHeader) -> Result<ResponseHeader> {
        let up = &mut self.0;
        up.write_request_header(Box::new(req))
            .await
            .map_err(|e| e.into_up())?;
        loop {
            up.read_response().await.map_err(|e| e.into_up())?;
            let Some(resp) = up.resp_header() else {
                return Error::e_explain(ErrorType::InvalidHTTPHeader, "no response head");
            };
            if resp.status == 101 || !resp.status.is_informational() {
                // Pingora's client session switches to the upgraded body only for an HTTP/1.1
                // `101`; anything else could not be relayed byte for byte.
                if resp.status == 101
                    && (!switched_to_websocket(resp) || resp.version != http::Version::HTTP_11)
                {
                    return Err(Error::explain(
                        ErrorType::InvalidHTTPHeader,
                        "a 101 to a WebSocket handshake that is not HTTP/1.1 `Upgrade: websocket`",
                    )
                    .into_up());
                }
                return Ok(resp.clone());
            }
        }
    }

    /// After a `101`: the connection, and what the upstream sent right after its head (an
    /// Engine.IO open packet, usually), owed to the client first.
    pub fn into_upgraded(mut self) -> (Stream, Bytes) {
        let mut early = BytesMut::new();
        for _ in 0..MAX_EARLY_READS {
            match ready_now(self.0.read_body_bytes()) {
                Some(Ok(Some(b))) => early.extend_from_slice(&b),
                _ => break,
            }
        }
        (self.0.into_inner(), early.freeze())
    }

    /// After any other response: its body, to the client, all within `wait` (a refusal is
    /// short; the handshake still holds its user's tunnel slot). The connection is not reused.
    pub async fn relay_body(
        &mut self,
        client: &mut pingora::proxy::Session,
        wait: Duration,
    ) -> Result<()> {
        within(
            wait,
            "a refused WebSocket handshake's body not complete",
            self.copy_body(client),
        )
        .await
    }

    async fn copy_body(&mut self, client: &mut pingora::proxy::Session) -> Result<()> {
        loop {
            let chunk = self.0.read_body_bytes().await.map_err(|e| e.into_up())?;
            let end = chunk.is_none();
            client
                .write_response_body(chunk, end)
                .await
                .map_err(|e| e.into_down())?;
            if end {
                return Ok(());
            }
        }
    }
}

fn switched_to_websocket(resp: &ResponseHeader) -> bool {
    classify::has_token(&resp.headers, header::UPGRADE, "websocket")
}

/// Takes the client's connection out of its session after the `101`, with the bytes the
/// session had read past the request head (owed upstream). The session keeps a closed stand-in
/// (its request head and response are gone with it), so what Pingora does with the session
/// afterwards, finish it and close it, touches nothing of the tunnel's. Call it last: it is
/// Pingora's `logging` phase's final step, after the access line has read the session.
pub fn take_client(session: &mut ServerSession) -> Option<(Stream, Bytes)> {
    let ServerSession::H1(h1) = session else {
        return None;
    };
    let mut early = BytesMut::new();
    for _ in 0..MAX_EARLY_READS {
        match ready_now(h1.read_body_bytes()) {
            Some(Ok(Some(b))) => early.extend_from_slice(&b),
            _ => break,
        }
    }
    // A new session has keep-alive off: Pingora shuts the stand-in down instead of reusing it.
    let stand_in = ClientSessionV1::new(Box::new(Cursor::new(Vec::new())));
    let client = std::mem::replace(h1, stand_in);
    Some((client.into_inner(), early.freeze()))
}

/// `step`, or an upstream read timeout (a `504`) once `wait` has passed.
async fn within<T>(wait: Duration, what: &str, step: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(wait, step).await {
        Ok(done) => done,
        Err(_) => {
            Err(Error::explain(ErrorType::ReadTimedout, format!("{what} in {wait:?}")).into_up())
        }
    }
}

/// The future's output if it is ready at its first poll: bytes already buffered or readable,
/// never a wait.
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/socket.io/?EIO=4&transport=websocket", None)
            .expect("request head");
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("header");
        }
        req
    }

    const WS: [(&str, &str); 2] = [("connection", "Upgrade"), ("upgrade", "websocket")];

    #[test]
    fn only_bodiless_http1_websocket_gets_are_taken() {
        assert!(takes(&request(&WS), true));
        assert!(
            !takes(&request(&WS), false),
            "HTTP/2 stays on Pingora's path"
        );
        assert!(!takes(
            &request(&[("connection", "Upgrade"), ("upgrade", "h2c")]),
            true
        ));
        let mut post = request(&WS);
        post.set_method(http::Method::POST);
        assert!(!takes(&post, true));
        let with_body = [WS[0], WS[1], ("content-length", "5")];
        assert!(!takes(&request(&with_body), true));
        let chunked = [WS[0], WS[1], ("transfer-encoding", "chunked")];
        assert!(!takes(&request(&chunked), true));
        let empty_body = [WS[0], WS[1], ("content-length", "0")];
        assert!(takes(&request(&empty_body), true));
    }

    #[test]
    fn the_upstream_head_drops_hop_by_hop_and_nominated_fields() {
        let req = request(&[
            ("host", "app.example"),
            ("connection", "Upgrade, X-Secret, Host"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic x"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let up = upstream_head(&req).expect("head");
        for gone in ["x-secret", "keep-alive", "proxy-authorization"] {
            assert!(!up.headers.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(
            up.headers["host"], "app.example",
            "Host is never hop-by-hop"
        );
        assert_eq!(up.headers["connection"], "Upgrade");
        assert_eq!(up.headers["upgrade"], "websocket");
        assert_eq!(up.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    }
}
