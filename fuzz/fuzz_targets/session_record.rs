//! Stored session records, as the edge decodes them after the cookie verified:
//! - connect-redis (express-session + Passport): one JSON string
//!   (`gateway::session::store::decode_connect_redis`, `cookie.expires` in RFC 3339);
//! - tower-sessions (axum-login): a MessagePack `Record`, decoded with `rmp_serde` exactly as
//!   tower-sessions' SQLite and Redis stores do, then `store::from_tower_record`;
//! - then the user id / display name by dotted path (`gateway::session::fields`).
//!
//! Input: byte 0 picks the mode; for the two decoders the rest is the record, with an optional
//! field path after a `\0`. Checked, besides "never panics":
//! - a decoded record re-encodes and decodes to the same data and expiry;
//! - `expires` is set exactly when `cookie.expires` is a string (connect-redis);
//! - a user id planted at a path is found there: `passport.user`, `axum-login.data.user_id`,
//!   and arbitrary dotted paths (a top-level key equal to the path always wins);
//! - `as_text` never returns an empty id.
#![no_main]

use std::collections::HashMap;

use gateway::session::fields::{as_text, lookup};
use gateway::session::store::{decode_connect_redis, from_tower_record};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};

const PATHS: [&str; 4] = [
    "passport.user",
    "axum-login.data.user_id",
    "display_name",
    "user",
];

/// Seeds for the MessagePack mode, encoded as tower-sessions' stores encode them: records like
/// the ones axum-login (the demo service) writes.
fn tower_seeds() -> Vec<(String, Vec<u8>)> {
    let expiry = OffsetDateTime::from_unix_timestamp(1_798_000_000).unwrap();
    let record = |id: i128, data: Value| Record {
        id: Id(id),
        data: data.as_object().unwrap().clone().into_iter().collect(),
        expiry_date: expiry,
    };
    let hash: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37)).collect();
    [
        (
            "tower-alice",
            record(
                0x0123_4567_89ab_cdef_0011_2233_4455_6677,
                json!({"axum-login.data": {"user_id": "alice", "auth_hash": hash}, "display_name": "Alice"}),
            ),
        ),
        (
            "tower-numeric-id",
            record(-42, json!({"axum-login.data": {"user_id": 42, "auth_hash": hash}})),
        ),
        ("tower-anonymous", record(7, json!({}))),
    ]
    .into_iter()
    .map(|(name, r)| {
        let mut bytes = vec![1u8];
        bytes.extend(rmp_serde::to_vec(&r).unwrap());
        (name.to_string(), bytes)
    })
    .collect()
}

fuzz_target!(|data: &[u8]| {
    static SEEDS: std::sync::Once = std::sync::Once::new();
    SEEDS.call_once(|| edge_fuzz::write_seeds_if_asked("session_record", tower_seeds));
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (body, path) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], Some(String::from_utf8_lossy(&rest[i + 1..]))),
        None => (rest, None),
    };
    match mode % 3 {
        0 => connect_redis(body, path.as_deref()),
        1 => tower_record(body, path.as_deref()),
        _ => planted(rest),
    }
});

fn check_fields(data: &Map<String, Value>, extra: Option<&str>) {
    for path in PATHS.iter().copied().chain(extra) {
        if let Some(v) = lookup(data, path) {
            if let Some(t) = as_text(v) {
                assert!(!t.is_empty());
            }
        }
        if let Some(exact) = data.get(path) {
            assert_eq!(
                lookup(data, path),
                Some(exact),
                "exact key {path:?} not preferred"
            );
        }
    }
}

fn connect_redis(body: &[u8], path: Option<&str>) {
    let Ok(raw) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(s) = decode_connect_redis(raw) else {
        return;
    };
    let expires_str = s
        .data
        .get("cookie")
        .and_then(|c| c.get("expires"))
        .and_then(Value::as_str);
    assert_eq!(s.expires.is_some(), expires_str.is_some());
    // Round trip: what connect-redis would store for this data decodes to the same session.
    let again = decode_connect_redis(&serde_json::to_string(&s.data).unwrap())
        .expect("re-encoded session refused");
    assert!(
        same(&Value::Object(again.data), &Value::Object(s.data.clone())),
        "re-encoded session differs"
    );
    assert_eq!(again.expires, s.expires);
    check_fields(&s.data, path);
}

/// Equal, except that floats may differ in the last place: serde_json's default float parser is
/// best-effort (exact only with its `float_roundtrip` feature), so a long decimal and its
/// shortest re-encoding can parse one ULP apart (`regressions/session_record/`). User ids are
/// strings or integers, which must match exactly.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn tower_record(body: &[u8], path: Option<&str>) {
    let Ok(record) = rmp_serde::from_slice::<Record>(body) else {
        return;
    };
    let bytes = rmp_serde::to_vec(&record).expect("a decoded record encodes");
    let again: Record = rmp_serde::from_slice(&bytes).expect("re-encoded record refused");
    assert_eq!(again, record);
    let expiry = record.expiry_date;
    let s = from_tower_record(record);
    assert_eq!(s.expires, Some(expiry));
    check_fields(&s.data, path);
}

/// A user id planted at a path built from the input must be found at that path, through both
/// decoders.
fn planted(rest: &[u8]) {
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('\0');
    let user = parts.next().unwrap_or("");
    let segs: Vec<&str> = parts
        .next()
        .unwrap_or("passport.user")
        .split('.')
        .filter(|s| !s.is_empty())
        .take(6)
        .collect();
    if segs.is_empty() || user.is_empty() {
        return;
    }
    // The first segment is a top-level key; the rest nest, as Passport stores `passport.user`.
    let mut v = json!(user);
    for seg in segs[1..].iter().rev() {
        let mut m = Map::new();
        m.insert(seg.to_string(), v);
        v = Value::Object(m);
    }
    let path = segs.join(".");
    let mut data = Map::new();
    data.insert(segs[0].to_string(), v);
    data.insert(
        "cookie".into(),
        json!({"originalMaxAge": 2592000000u64, "expires": "2026-12-26T01:20:19.662Z", "httpOnly": true, "path": "/"}),
    );
    let s = decode_connect_redis(&Value::Object(data.clone()).to_string()).unwrap();
    assert!(s.expires.is_some());
    if segs[0] != "cookie" {
        assert_eq!(
            lookup(&s.data, &path).and_then(as_text).as_deref(),
            Some(user),
            "{path:?}"
        );
    }

    let record = Record {
        id: Id(i128::from_le_bytes(
            spread(rest).try_into().expect("16 bytes from the input"),
        )),
        data: data
            .into_iter()
            .filter(|(k, _)| k != "cookie")
            .collect::<HashMap<_, _>>(),
        expiry_date: OffsetDateTime::from_unix_timestamp(1_798_000_000).unwrap(),
    };
    let bytes = rmp_serde::to_vec(&record).unwrap();
    let back = from_tower_record(rmp_serde::from_slice(&bytes).unwrap());
    if segs[0] != "cookie" {
        assert_eq!(
            lookup(&back.data, &path).and_then(as_text).as_deref(),
            Some(user)
        );
    }
}

/// 16 bytes spread from the input (not a hash worth the name; an id that varies with it).
fn spread(input: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 16];
    for (i, b) in input.iter().enumerate() {
        out[i % 16] = out[i % 16].wrapping_mul(31).wrapping_add(*b);
    }
    out
}
