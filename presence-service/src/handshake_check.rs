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
fn is_engine_io_handshake(query: Option<&str>) -> bool {
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
