//! Checks a Socket.IO handshake's assertion at the HTTP layer, before engineioxide keeps the
//! request for the socket's life.
//!
//! engineioxide holds every socket's handshake `Parts` until the socket closes, and the
//! assertion is the largest header in them (a JWT of 400-600 bytes). The token is only needed
//! once, so it is verified here, on the handshake request itself, and removed; what the check
//! found travels in the request's extensions to the Socket.IO connect middleware
//! (`sockets::admit`), which still refuses with a `connect_error` carrying the reason, exactly
//! as when it verified the header itself.

use axum::extract::{Request, State};
use identity_assertion::{Claims, VerifyError};

use crate::trust::Trust;

/// The verdict on a handshake's assertion, left in the request's extensions.
#[derive(Clone, Debug)]
pub struct CheckedAssertion(pub Result<Claims, VerifyError>);

/// Axum `map_request` middleware, outside the Socket.IO layer. Requests other than Engine.IO
/// handshakes pass untouched (the HTTP API reads its own assertion).
pub async fn check_assertion(State(trust): State<Trust>, mut req: Request) -> Request {
    if is_engine_io_handshake(req.uri().query()) {
        let verdict = trust.verify_headers(req.headers()).await;
        req.headers_mut().remove(trust.header());
        req.extensions_mut().insert(CheckedAssertion(verdict));
    }
    req
}

/// An Engine.IO handshake opens a session: it names the protocol (`EIO`) and no session
/// (`sid`). Later requests of a session (polls, the websocket upgrade) are not handshakes: the
/// session keeps the handshake's request, not theirs.
pub(crate) fn is_engine_io_handshake(query: Option<&str>) -> bool {
    let Some(query) = query else { return false };
    let mut eio = false;
    for pair in query.split('&') {
        match pair.split('=').next() {
            Some("EIO") => eio = true,
            Some("sid") => return false,
            _ => {}
        }
    }
    eio
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::HeaderMap;

    /// A trust with no key it could ever load (its JWKS URL refuses connections): every token
    /// is refused, which is all these tests need to see where the verdict and the token go.
    fn keyless_trust() -> Trust {
        let cfg = crate::config::TrustConfig {
            jwks_url: "http://127.0.0.1:9/.well-known/jwks.json".into(),
            jwks_timeout_ms: 200,
            ..Default::default()
        };
        Trust::from_config(&cfg).expect("trust")
    }

    async fn through_check(uri: &str, token: Option<&str>) -> Request {
        let trust = keyless_trust();
        let mut req = Request::builder().uri(uri);
        if let Some(t) = token {
            req = req.header(trust.header(), t);
        }
        check_assertion(State(trust), req.body(Body::empty()).unwrap()).await
    }

    fn has_assertion(headers: &HeaderMap) -> bool {
        headers.contains_key(identity_assertion::DEFAULT_HEADER)
    }

    #[tokio::test]
    async fn a_handshake_leaves_with_the_verdict_and_without_the_token() {
        let req = through_check("/socket.io/?EIO=4&transport=websocket", Some("a.b.c")).await;
        assert!(!has_assertion(req.headers()), "the token is kept");
        let verdict = req.extensions().get::<CheckedAssertion>().expect("verdict");
        assert_eq!(verdict.0, Err(VerifyError::Malformed));

        let req = through_check("/socket.io/?EIO=4&transport=polling", None).await;
        let verdict = req.extensions().get::<CheckedAssertion>().expect("verdict");
        assert_eq!(verdict.0, Err(VerifyError::Missing));
    }

    #[tokio::test]
    async fn other_requests_keep_their_header_and_get_no_verdict() {
        for uri in ["/presence", "/socket.io/?EIO=4&transport=polling&sid=abc"] {
            let req = through_check(uri, Some("a.b.c")).await;
            assert!(has_assertion(req.headers()), "{uri}: header dropped");
            assert!(
                req.extensions().get::<CheckedAssertion>().is_none(),
                "{uri}"
            );
        }
    }

    #[test]
    fn only_requests_that_open_a_session_are_handshakes() {
        for handshake in [
            "EIO=4&transport=websocket",
            "EIO=4&transport=polling&t=PZ1a",
            "transport=polling&EIO=3",
        ] {
            assert!(is_engine_io_handshake(Some(handshake)), "{handshake}");
        }
        for not in [
            "EIO=4&transport=polling&sid=abc",
            "EIO=4&transport=websocket&sid=abc",
            "transport=polling",
            "EIOX=4",
            "",
        ] {
            assert!(!is_engine_io_handshake(Some(not)), "{not}");
        }
        assert!(!is_engine_io_handshake(None));
    }
}
