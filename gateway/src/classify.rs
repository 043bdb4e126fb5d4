//! Phase 1: what kind of request is this?
//!
//! Engine.IO rules (the protocol's, as docs/design.md states them in "The Socket.IO handshake at
//! the edge"): a request with `EIO` in the query and no `sid` opens a new Engine.IO session (a
//! handshake); every later request of that session carries `sid`. Only handshakes are authenticated: that is the seed's
//! `onlyForHandshake` rule, moved to the edge.

use http::Method;

/// The transport an Engine.IO request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    Websocket,
}

/// How a request on a Socket.IO route must be treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeClass {
    /// Opens an Engine.IO session: authenticate, then forward with an assertion.
    Handshake { transport: Transport },
    /// Belongs to an existing Engine.IO session (`sid` present): forward without a lookup,
    /// to the upstream that owns `sid`.
    Established { sid: String, transport: Transport },
    /// Not a valid Engine.IO request: answer 400.
    Malformed(&'static str),
}

/// Minimal request facts the classifier needs, so it can be unit-tested without a server.
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub query: Option<&'a str>,
    /// `Connection: upgrade` + `Upgrade: websocket` on an HTTP/1.1 request.
    pub is_websocket_upgrade: bool,
}

pub fn classify(req: &RequestFacts<'_>) -> HandshakeClass {
    let mut eio = None;
    let mut sid = None;
    let mut transport = None;
    for (k, v) in form_pairs(req.query.unwrap_or("")) {
        match k.as_str() {
            "EIO" => eio = Some(v),
            "sid" => sid = Some(v),
            "transport" => transport = Some(v),
            _ => {}
        }
    }
    if eio.is_none() {
        return HandshakeClass::Malformed("missing EIO query parameter");
    }
    let transport = match transport.as_deref() {
        Some("polling") | None => Transport::Polling,
        Some("websocket") => Transport::Websocket,
        Some(_) => return HandshakeClass::Malformed("unknown transport"),
    };
    match sid {
        Some(sid) if sid.is_empty() => HandshakeClass::Malformed("empty sid"),
        Some(sid) => HandshakeClass::Established { sid, transport },
        None => {
            if req.method != Method::GET {
                return HandshakeClass::Malformed("handshake must be a GET");
            }
            if transport == Transport::Websocket && !req.is_websocket_upgrade {
                return HandshakeClass::Malformed("websocket handshake without an Upgrade");
            }
            HandshakeClass::Handshake { transport }
        }
    }
}

/// Decoded `application/x-www-form-urlencoded` pairs of a query string.
pub fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k), decode(v))
    })
}

fn decode(s: &str) -> String {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

/// True for an HTTP/1.1 WebSocket upgrade request (RFC 6455 section 4.1).
pub fn is_websocket_upgrade(headers: &http::HeaderMap, version: http::Version) -> bool {
    if version != http::Version::HTTP_11 {
        return false;
    }
    has_token(headers, http::header::CONNECTION, "upgrade")
        && has_token(headers, http::header::UPGRADE, "websocket")
}

/// Whether a comma-separated header field (`Connection`, `Upgrade`) lists `token`, in any case.
pub fn has_token(headers: &http::HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(method: Method, query: &str, upgrade: bool) -> HandshakeClass {
        classify(&RequestFacts {
            method: &method,
            query: Some(query),
            is_websocket_upgrade: upgrade,
        })
    }

    #[test]
    fn polling_handshake() {
        assert_eq!(
            class(Method::GET, "EIO=4&transport=polling&t=OxYz", false),
            HandshakeClass::Handshake {
                transport: Transport::Polling
            }
        );
    }

    #[test]
    fn websocket_handshake_needs_upgrade() {
        assert_eq!(
            class(Method::GET, "EIO=4&transport=websocket", true),
            HandshakeClass::Handshake {
                transport: Transport::Websocket
            }
        );
        assert!(matches!(
            class(Method::GET, "EIO=4&transport=websocket", false),
            HandshakeClass::Malformed(_)
        ));
    }

    #[test]
    fn requests_with_sid_are_established_sessions() {
        assert_eq!(
            class(Method::POST, "EIO=4&transport=polling&sid=abc%3D", false),
            HandshakeClass::Established {
                sid: "abc=".into(),
                transport: Transport::Polling
            }
        );
        assert_eq!(
            class(Method::GET, "EIO=4&transport=websocket&sid=abc", true),
            HandshakeClass::Established {
                sid: "abc".into(),
                transport: Transport::Websocket
            }
        );
    }

    #[test]
    fn post_handshake_and_missing_eio_are_malformed() {
        assert!(matches!(
            class(Method::POST, "EIO=4&transport=polling", false),
            HandshakeClass::Malformed(_)
        ));
        assert!(matches!(
            class(Method::GET, "transport=polling", false),
            HandshakeClass::Malformed(_)
        ));
        assert!(matches!(
            class(Method::GET, "", false),
            HandshakeClass::Malformed(_)
        ));
        assert!(matches!(
            class(Method::GET, "EIO=4&transport=carrier-pigeon", false),
            HandshakeClass::Malformed(_)
        ));
        assert!(matches!(
            class(Method::GET, "EIO=4&sid=", false),
            HandshakeClass::Malformed(_)
        ));
    }

    #[test]
    fn upgrade_detection_accepts_token_lists_and_case() {
        let mut h = http::HeaderMap::new();
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        h.insert("upgrade", "WebSocket".parse().unwrap());
        assert!(is_websocket_upgrade(&h, http::Version::HTTP_11));
        assert!(!is_websocket_upgrade(&h, http::Version::HTTP_2));
        h.remove("upgrade");
        assert!(!is_websocket_upgrade(&h, http::Version::HTTP_11));
    }
}
