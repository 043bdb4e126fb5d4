//! Engine.IO request classification (`gateway::classify`): query parsing, percent-decoding and
//! the handshake rule.
//!
//! Input: byte 0 picks the method and the Upgrade flag; the rest is the raw query string.
//! Checked, besides "never panics":
//! - a request whose query has a `sid` (any spelling that decodes to `sid`) is never a handshake;
//! - a handshake is a GET with `EIO`, and a websocket handshake carries an Upgrade;
//! - `Established { sid }` holds the last decoded, non-empty `sid`;
//! - `form_pairs` round-trips: pairs percent-encoded and joined by `&` decode to themselves;
//! - `is_websocket_upgrade` is true only on HTTP/1.1 with both tokens present.
#![no_main]

use gateway::classify::{
    classify, form_pairs, is_websocket_upgrade, HandshakeClass, RequestFacts, Transport,
};
use http::Method;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let method = match ctl & 3 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::OPTIONS,
        _ => Method::PUT,
    };
    let upgrade = ctl & 4 != 0;
    let query = String::from_utf8_lossy(rest);
    let query_opt = (ctl & 8 == 0).then_some(query.as_ref());

    check_classify(&method, query_opt, upgrade);
    check_round_trip(rest);
    check_upgrade_headers(ctl, rest);
});

fn check_classify(method: &Method, query: Option<&str>, upgrade: bool) {
    let class = classify(&RequestFacts {
        method,
        query,
        is_websocket_upgrade: upgrade,
    });
    let pairs: Vec<(String, String)> = form_pairs(query.unwrap_or("")).collect();
    let last = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let has_eio = last("EIO").is_some();
    let sid = last("sid");
    match &class {
        HandshakeClass::Handshake { transport } => {
            assert!(sid.is_none(), "a request with sid classified as handshake");
            assert!(has_eio, "handshake without EIO");
            assert_eq!(method, Method::GET, "non-GET handshake");
            if *transport == Transport::Websocket {
                assert!(upgrade, "websocket handshake without Upgrade");
                assert_eq!(last("transport"), Some("websocket"));
            }
        }
        HandshakeClass::Established {
            sid: got,
            transport,
        } => {
            assert!(has_eio);
            assert!(!got.is_empty(), "empty sid accepted");
            assert_eq!(Some(got.as_str()), sid, "sid is not the query's sid");
            let want = match last("transport") {
                Some("websocket") => Transport::Websocket,
                _ => Transport::Polling,
            };
            assert_eq!(*transport, want);
        }
        HandshakeClass::Malformed(_) => {}
    }
    if sid.is_some() {
        assert!(!matches!(class, HandshakeClass::Handshake { .. }));
    }
}

/// Splits the input into strings at NUL bytes, pairs them up as key/value, encodes each the way
/// a browser's `URLSearchParams` would (percent-encoding, no `+`) and checks `form_pairs` gives
/// exactly the pairs back.
fn check_round_trip(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let parts: Vec<&str> = text.split('\0').collect();
    let pairs: Vec<(&str, &str)> = parts
        .chunks(2)
        .map(|c| (c[0], c.get(1).copied().unwrap_or("")))
        .collect();
    let query = pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let back: Vec<(String, String)> = form_pairs(&query).collect();
    assert_eq!(back.len(), pairs.len(), "{query:?}");
    for ((k, v), (bk, bv)) in pairs.iter().zip(&back) {
        assert_eq!((*k, *v), (bk.as_str(), bv.as_str()), "{query:?}");
    }
    // `+` is a space in a query, `%2B` a plus.
    let plus: Vec<(String, String)> = form_pairs("a+b=c%2Bd").collect();
    assert_eq!(plus, [("a b".to_string(), "c+d".to_string())]);
}

fn check_upgrade_headers(ctl: u8, bytes: &[u8]) {
    let mid = bytes.len() / 2;
    let (conn, upg) = bytes.split_at(mid);
    let mut headers = http::HeaderMap::new();
    let Ok(c) = http::HeaderValue::from_bytes(conn) else {
        return;
    };
    let Ok(u) = http::HeaderValue::from_bytes(upg) else {
        return;
    };
    headers.append(http::header::CONNECTION, c);
    headers.append(http::header::UPGRADE, u);
    let version = if ctl & 16 == 0 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_2
    };
    if is_websocket_upgrade(&headers, version) {
        assert_eq!(version, http::Version::HTTP_11);
        let has = |v: &[u8], t: &str| {
            String::from_utf8_lossy(v)
                .split(',')
                .any(|x| x.trim().eq_ignore_ascii_case(t))
        };
        assert!(has(conn, "upgrade") && has(upg, "websocket"));
    }
}
