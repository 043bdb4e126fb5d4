//! Keeps a handshake's request from pinning the HTTP read buffer for the socket's whole life.
//!
//! hyper parses headers and the URI without copying: each `HeaderValue` and the URI are slices
//! of the connection's read buffer (several KiB). engineioxide keeps the handshake's
//! `http::request::Parts` for as long as the socket lives (`socket.req_parts()`), so every
//! idle socket kept that whole buffer alive: more than half of an idle socket's memory
//! (heaptrack, `examples/presence_bench`). Copying the few hundred bytes that matter into
//! their own allocations lets the buffer go when the upgrade completes. The URI is copied too,
//! also the one axum keeps in the request's extensions for `OriginalUri`.
//!
//! Headers this service never reads are dropped on the way (the browser's cookies, user agent,
//! client hints): they would otherwise be held for the socket's whole life, and the service
//! trusts only the gateway's assertion, so it has no use for the session cookie at all.

use axum::extract::{OriginalUri, Request};
use axum::http::{HeaderMap, HeaderValue, Uri};

/// Axum `map_request` middleware, placed outside the Socket.IO layer.
pub async fn detach_from_read_buffer(mut req: Request) -> Request {
    let headers = std::mem::take(req.headers_mut());
    let mut owned = HeaderMap::with_capacity(headers.len());
    let mut name = None;
    for (key, value) in headers {
        // `into_iter` yields the name only for the first value of each header.
        if key.is_some() {
            name = key;
        }
        let Some(name) = name.clone() else { continue };
        if never_read(name.as_str()) {
            continue;
        }
        let copy = HeaderValue::from_bytes(value.as_bytes()).map(|mut v| {
            v.set_sensitive(value.is_sensitive());
            v
        });
        owned.append(name, copy.unwrap_or(value));
    }
    *req.headers_mut() = owned;
    // `Uri::to_string` + parse gives a URI that owns its bytes; if that ever failed the original
    // (still valid) URI is kept.
    if let Ok(uri) = owned_uri(req.uri()) {
        *req.uri_mut() = uri;
    }
    // axum's router stores a clone of the URI (another slice of the buffer) for `OriginalUri`.
    if let Some(original) = req.extensions_mut().get_mut::<OriginalUri>() {
        if let Ok(uri) = owned_uri(&original.0) {
            original.0 = uri;
        }
    }
    req
}

/// Browser headers that nothing here reads (engineioxide needs the WebSocket and upgrade
/// headers; this service the assertion, the request id and the forwarding headers).
fn never_read(name: &str) -> bool {
    const DROPPED: [&str; 8] = [
        "cookie",
        "user-agent",
        "accept",
        "accept-language",
        "accept-encoding",
        "cache-control",
        "pragma",
        "referer",
    ];
    DROPPED.contains(&name) || name.starts_with("sec-ch-") || name.starts_with("sec-fetch-")
}

fn owned_uri(uri: &Uri) -> Result<Uri, axum::http::uri::InvalidUri> {
    uri.to_string().parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_headers_that_are_read_and_the_uri_and_drops_the_browsers() {
        let req = Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket")
            .header("x-identity-assertion", "a.b.c")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-for", "10.0.0.2")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("user-agent", "Mozilla/5.0")
            .header("sec-ch-ua-platform", "\"Linux\"")
            .header("sec-fetch-mode", "websocket")
            .body(axum::body::Body::empty())
            .unwrap();
        let req = detach_from_read_buffer(req).await;
        assert_eq!(req.uri(), "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(req.headers()["x-identity-assertion"], "a.b.c");
        assert_eq!(
            req.headers()["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        let forwarded: Vec<_> = req.headers().get_all("x-forwarded-for").iter().collect();
        assert_eq!(forwarded, ["10.0.0.1", "10.0.0.2"]);
        for dropped in [
            "cookie",
            "user-agent",
            "sec-ch-ua-platform",
            "sec-fetch-mode",
        ] {
            assert!(!req.headers().contains_key(dropped), "{dropped} kept");
        }
    }
}
