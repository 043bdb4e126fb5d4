//! Engine.IO affinity that survives the process: a small signed cookie naming the node that
//! owns a polling session.
//!
//! Every request of one Engine.IO session must reach the node that created it. The gateway
//! learns `sid -> node` from the handshake answer (`upstream::StickyTable`), but that table
//! lives in one process: after a restart or a binary upgrade, or behind a second gateway
//! replica, a polling client's next request would be routed at random and answered
//! `Session ID unknown`. So the gateway also hands the client a cookie, and any process holding
//! the key honours it.
//!
//! The cookie holds a few entries `<node>~<mac>`, newest first, joined by `|`, where `mac` is
//! an HMAC-SHA256 (truncated to 128 bits) over the route's name, the session's `sid` and the
//! node. An entry is honoured only for the `sid` it was made for, only if its MAC verifies
//! with the current key or one of the previous keys (rotation), and only if the node is one of
//! the route's upstreams right now; anything else (forged, stale, unknown, malformed) is
//! ignored and the request is routed as if there were no cookie. Several entries let several
//! tabs of one browser, each with its own session, share the one cookie.
//!
//! The `sid` is only known from the handshake's body, after its headers are gone. So the
//! handshake's answer carries an entry bound to no `sid`, naming the node of the browser's
//! newest handshake: the session's next request, which may reach another process before any
//! bound entry exists, is routed by it when neither a bound entry nor this process's table
//! knows the `sid`. The first answered polling request of the session then adds the bound
//! entry (and any later one that arrives without it).

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_spanned::Spanned;
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, SecretSource};
use crate::routing::Route;
use crate::session::cookie;

/// `[affinity]`: the cookie's name and keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityConfig {
    #[serde(default = "default_cookie")]
    pub cookie: String,
    /// HMAC keys, any length (at least 32 bytes of randomness recommended): the first signs,
    /// all verify. Empty: one key derived from each assertion signing key, in their order, so
    /// every gateway sharing those keys (replicas, the next process after an upgrade) agrees,
    /// and a signing-key rotation keeps cookies valid while the old key is listed.
    #[serde(default)]
    pub keys: Vec<Spanned<SecretSource>>,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        Self {
            cookie: default_cookie(),
            keys: Vec::new(),
        }
    }
}

fn default_cookie() -> String {
    "gw_affinity".into()
}

/// Whether `name` is a cookie name (an RFC 7230 token).
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Entries kept in one cookie: one per concurrent session of a browser, newest first.
const MAX_ENTRIES: usize = 4;
/// Truncated MAC length: forging one entry is a 2^-128 guess, and it could only name one of
/// the route's own nodes anyway.
const MAC_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

pub struct Affinity {
    cookie: String,
    /// The first signs; all verify.
    keys: Vec<HmacSha256>,
}

impl Affinity {
    /// From `[affinity]`. With no key configured, one key is derived from each of
    /// `derived_from` (secrets every gateway of a deployment shares: the assertion signing
    /// keys, in their order), so the first signs and all verify, and a cookie signed before the
    /// signing key rotated still verifies while the old key is listed.
    pub fn from_config(
        cfg: &crate::config::Config,
        derived_from: &[Vec<u8>],
    ) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        for (i, k) in cfg.affinity.keys.iter().enumerate() {
            let err = |e: String| {
                cfg.source
                    .error_at(k.span(), &format!("affinity.keys[{i}]"), e)
            };
            let secret = k.get_ref().read(&cfg.base_dir).map_err(err)?;
            if secret.is_empty() {
                return Err(err("the key is empty".into()));
            }
            keys.push(secret.into_bytes());
        }
        if keys.is_empty() {
            keys = derived_from
                .iter()
                .map(|secret| {
                    Sha256::new_with_prefix(b"eio-affinity\0")
                        .chain_update(secret)
                        .finalize()
                        .to_vec()
                })
                .collect();
        }
        Ok(Self::new(cfg.affinity.cookie.clone(), &keys))
    }

    pub fn new(cookie: String, keys: &[Vec<u8>]) -> Self {
        Self {
            cookie,
            keys: keys
                .iter()
                // HMAC takes keys of any length: this cannot fail.
                .filter_map(|k| HmacSha256::new_from_slice(k).ok())
                .collect(),
        }
    }

    fn mac(key: &HmacSha256, route: &str, sid: &str, node: &str) -> HmacSha256 {
        let mut m = key.clone();
        for part in [route, sid, node] {
            m.update(part.as_bytes());
            m.update(b"\0");
        }
        m
    }

    /// The entry bound to no session: the node of this browser's newest handshake.
    const NEWEST: &'static str = "";

    fn entry(&self, route: &str, sid: &str, node: SocketAddr) -> Option<String> {
        let node = node.to_string();
        let tag = Self::mac(self.keys.first()?, route, sid, &node).finalize();
        Some(format!(
            "{node}~{}",
            URL_SAFE_NO_PAD.encode(&tag.into_bytes()[..MAC_BYTES])
        ))
    }

    /// The node an entry of `value` names for `sid` on `route`, if one verifies.
    fn verified(&self, value: &str, route: &str, sid: &str) -> Option<SocketAddr> {
        value.split('|').take(MAX_ENTRIES).find_map(|entry| {
            let (node, tag) = entry.split_once('~')?;
            let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
            if tag.len() != MAC_BYTES {
                return None;
            }
            let ok = self.keys.iter().any(|k| {
                Self::mac(k, route, sid, node)
                    .verify_truncated_left(&tag)
                    .is_ok()
            });
            ok.then(|| node.parse().ok()).flatten()
        })
    }

    fn cookie_value<'a>(&self, headers: &'a http::HeaderMap) -> Option<&'a str> {
        cookie::find(
            headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
            &self.cookie,
        )
    }

    /// The node the request's cookie names for `sid`, if it verifies and is one of the route's
    /// upstreams now (a cookie never routes anywhere else).
    pub fn node_for(
        &self,
        route: &Route,
        sid: &str,
        headers: &http::HeaderMap,
    ) -> Option<SocketAddr> {
        let node = self.verified(self.cookie_value(headers)?, &route.name, sid)?;
        route.pool.is_member(node).then_some(node)
    }

    /// The node of the browser's newest handshake on `route` (the fallback for a session that
    /// has no bound entry yet), if it verifies and is one of the route's upstreams now.
    pub fn newest_handshake_node(
        &self,
        route: &Route,
        headers: &http::HeaderMap,
    ) -> Option<SocketAddr> {
        let node = self.verified(self.cookie_value(headers)?, &route.name, Self::NEWEST)?;
        route.pool.is_member(node).then_some(node)
    }

    /// The `Set-Cookie` value for a polling handshake answered by `node`: the unbound entry
    /// first, replacing the previous one; the bound entries of other sessions are kept.
    pub fn for_handshake(
        &self,
        route: &Route,
        node: SocketAddr,
        headers: &http::HeaderMap,
        secure: bool,
    ) -> Option<String> {
        let old = self.cookie_value(headers).unwrap_or_default();
        let kept = old
            .split('|')
            .filter(|e| is_entry_shaped(e))
            .filter(|e| self.verified(e, &route.name, Self::NEWEST).is_none());
        let first = self.entry(&route.name, Self::NEWEST, node)?;
        Some(self.set_cookie(route, first, kept, secure))
    }

    fn set_cookie<'a>(
        &self,
        route: &Route,
        first: String,
        rest: impl Iterator<Item = &'a str>,
        secure: bool,
    ) -> String {
        let mut entries = vec![first];
        entries.extend(rest.take(MAX_ENTRIES - 1).map(str::to_string));
        // Cross-site pages may poll with credentials; over plain HTTP browsers refuse
        // `SameSite=None`, so the default (Lax) applies there.
        let attrs = if secure {
            "; Secure; SameSite=None"
        } else {
            ""
        };
        format!(
            "{}={}; Path={}; HttpOnly{attrs}",
            self.cookie,
            entries.join("|"),
            route.path_prefix
        )
    }

    /// The `Set-Cookie` value to send with a successful answer from `node` to a request of
    /// session `sid`, or `None` when the request's cookie already names `node` for it. Earlier
    /// entries (other sessions of the same browser) are kept, newest first, up to a bound.
    pub fn renewal(
        &self,
        route: &Route,
        sid: &str,
        node: SocketAddr,
        headers: &http::HeaderMap,
        secure: bool,
    ) -> Option<String> {
        let old = self.cookie_value(headers).unwrap_or_default();
        if self.verified(old, &route.name, sid) == Some(node) {
            return None;
        }
        let first = self.entry(&route.name, sid, node)?;
        let rest = old.split('|').filter(|e| is_entry_shaped(e));
        Some(self.set_cookie(route, first, rest, secure))
    }
}

/// Only characters our own entries use, so a client cannot make us echo anything else.
fn is_entry_shaped(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= 80
        && e.contains('~')
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"[]:.~-_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn route(upstreams: &[&str]) -> Route {
        let lb = pingora::lb::LoadBalancer::<pingora::lb::selection::RoundRobin>::try_from_iter(
            upstreams.iter().copied(),
        )
        .unwrap();
        Route {
            name: "presence".into(),
            path_prefix: "/socket.io/".into(),
            host: None,
            auth: crate::config::AuthPolicy::None,
            audience: None,
            assertion_header: "x-identity-assertion".into(),
            allowed_origins: vec![],
            pool: Arc::new(crate::upstream::UpstreamPool::new(
                "presence".into(),
                Arc::new(lb),
            )),
            sessions: vec![],
            logout: None,
        }
    }

    fn with_cookie(set_cookie: &str) -> http::HeaderMap {
        let pair = set_cookie.split(';').next().unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, pair.parse().unwrap());
        h
    }

    const A: &str = "127.0.0.1:3001";
    const B: &str = "127.0.0.1:3002";

    #[test]
    fn a_cookie_names_the_node_for_its_sid_only() {
        let aff = Affinity::new("gw_affinity".into(), &[b"k1".to_vec()]);
        let r = route(&[A, B]);
        let set = aff
            .renewal(&r, "sid-1", B.parse().unwrap(), &Default::default(), false)
            .unwrap();
        assert!(set.starts_with("gw_affinity="), "{set}");
        assert!(set.contains("Path=/socket.io/; HttpOnly"), "{set}");
        let h = with_cookie(&set);
        assert_eq!(aff.node_for(&r, "sid-1", &h), Some(B.parse().unwrap()));
        assert_eq!(aff.node_for(&r, "sid-2", &h), None, "bound to its sid");
        // Already right: nothing to set again.
        assert_eq!(
            aff.renewal(&r, "sid-1", B.parse().unwrap(), &h, false),
            None
        );
        // Another process with the same key honours it; one with another key does not.
        let same = Affinity::new("gw_affinity".into(), &[b"k1".to_vec()]);
        assert_eq!(same.node_for(&r, "sid-1", &h), Some(B.parse().unwrap()));
        let other = Affinity::new("gw_affinity".into(), &[b"k2".to_vec()]);
        assert_eq!(other.node_for(&r, "sid-1", &h), None);
    }

    #[test]
    fn rotation_keeps_old_cookies_valid() {
        let old = Affinity::new("c".into(), &[b"old".to_vec()]);
        let r = route(&[A, B]);
        let h = with_cookie(
            &old.renewal(&r, "s", A.parse().unwrap(), &Default::default(), true)
                .unwrap(),
        );
        let rotated = Affinity::new("c".into(), &[b"new".to_vec(), b"old".to_vec()]);
        assert_eq!(rotated.node_for(&r, "s", &h), Some(A.parse().unwrap()));
        let dropped = Affinity::new("c".into(), &[b"new".to_vec()]);
        assert_eq!(dropped.node_for(&r, "s", &h), None);
    }

    #[test]
    fn forged_stale_or_foreign_values_fall_back() {
        let aff = Affinity::new("c".into(), &[b"k".to_vec()]);
        let r = route(&[A, B]);
        let good = aff
            .renewal(&r, "s", A.parse().unwrap(), &Default::default(), false)
            .unwrap();
        let value = good.split(';').next().unwrap().trim_start_matches("c=");
        let (_, tag) = value.split_once('~').unwrap();
        for forged in [
            format!("c={B}~{tag}"),                           // another node, same tag
            format!("c=10.9.9.9:1~{tag}"),                    // outside the route
            "c=127.0.0.1:3001~AAAAAAAAAAAAAAAAAAAAAA".into(), // made-up tag
            "c=127.0.0.1:3001".into(),
            "c=~~~|||".into(),
            "c=".into(),
        ] {
            assert_eq!(
                aff.node_for(&r, "s", &with_cookie(&forged)),
                None,
                "{forged}"
            );
        }
        // A node that left the route is not honoured even with a valid MAC.
        let shrunk = route(&[B]);
        assert_eq!(aff.node_for(&shrunk, "s", &with_cookie(&good)), None);
    }

    #[test]
    fn a_handshake_names_its_node_until_the_session_is_bound() {
        let aff = Affinity::new("c".into(), &[b"k".to_vec()]);
        let r = route(&[A, B]);
        let set = aff
            .for_handshake(&r, B.parse().unwrap(), &Default::default(), true)
            .unwrap();
        assert!(set.ends_with("; Secure; SameSite=None"), "{set}");
        let h = with_cookie(&set);
        assert_eq!(aff.newest_handshake_node(&r, &h), Some(B.parse().unwrap()));
        // Not a bound entry for any real session.
        assert_eq!(aff.node_for(&r, "s", &h), None);
        // Bound next; a later handshake replaces the unbound entry and keeps the bound one.
        let h = with_cookie(&aff.renewal(&r, "s", B.parse().unwrap(), &h, true).unwrap());
        let h = with_cookie(&aff.for_handshake(&r, A.parse().unwrap(), &h, true).unwrap());
        assert_eq!(aff.newest_handshake_node(&r, &h), Some(A.parse().unwrap()));
        assert_eq!(aff.node_for(&r, "s", &h), Some(B.parse().unwrap()));
        let value = h.get(http::header::COOKIE).unwrap().to_str().unwrap();
        assert_eq!(value.matches('|').count(), 1, "{value}");
    }

    #[test]
    fn several_sessions_share_one_bounded_cookie() {
        let aff = Affinity::new("c".into(), &[b"k".to_vec()]);
        let r = route(&[A, B]);
        let mut h = http::HeaderMap::new();
        for i in 0..10 {
            let node = if i % 2 == 0 { A } else { B };
            let set = aff
                .renewal(&r, &format!("s{i}"), node.parse().unwrap(), &h, false)
                .unwrap();
            h = with_cookie(&set);
        }
        // The newest sessions are all still routed; the oldest fell out of the bound.
        for i in 10 - MAX_ENTRIES..10 {
            let node = if i % 2 == 0 { A } else { B };
            assert_eq!(
                aff.node_for(&r, &format!("s{i}"), &h),
                Some(node.parse().unwrap())
            );
        }
        assert_eq!(aff.node_for(&r, "s0", &h), None);
        // Junk in the client's cookie is not echoed back.
        let mut junk = http::HeaderMap::new();
        junk.insert(http::header::COOKIE, "c=<script>~x|a~b".parse().unwrap());
        let set = aff
            .renewal(&r, "s", A.parse().unwrap(), &junk, false)
            .unwrap();
        assert!(!set.contains("script"), "{set}");
    }
}
