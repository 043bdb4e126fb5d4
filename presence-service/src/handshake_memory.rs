//! Keeps a handshake's request from pinning the HTTP read buffer for the socket's whole life.
//!
//! hyper parses headers and the URI without copying: each `HeaderValue` and the URI are slices
//! of the connection's read buffer (8-16 KiB). engineioxide keeps the handshake's
//! `http::request::Parts` for as long as the socket lives (`socket.req_parts()`), so every
//! idle socket kept that whole buffer alive: 16 KiB of a measured 30 KiB per idle socket
//! (heaptrack, `examples/presence_bench.rs`). Copying the few hundred bytes that matter into
//! their own allocations lets the buffer go when the upgrade completes. The URI is copied too,
//! also the one axum keeps in the request's extensions for `OriginalUri`.

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

fn owned_uri(uri: &Uri) -> Result<Uri, axum::http::uri::InvalidUri> {
    uri.to_string().parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_every_header_value_and_the_uri() {
        let req = Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket")
            .header("x-identity-assertion", "a.b.c")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(axum::body::Body::empty())
            .unwrap();
        let req = detach_from_read_buffer(req).await;
        assert_eq!(req.uri(), "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(req.headers()["x-identity-assertion"], "a.b.c");
        let cookies: Vec<_> = req.headers().get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }
}
