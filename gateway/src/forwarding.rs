//! Phase 4: rewrite headers before proxying.
//!
//! Two rules matter for security: the identity header is only ever the gateway's own, and the
//! `X-Forwarded-*` headers are only believed when the peer is a proxy we trust.

use std::net::IpAddr;

use http::HeaderMap;

/// Names under which a client might smuggle an identity header past an upstream that
/// normalises `_` to `-` (as some frameworks and CGI-style servers do).
fn header_aliases(name: &str) -> (String, String) {
    let lower = name.to_ascii_lowercase();
    (lower.replace('_', "-"), lower.replace('-', "_"))
}

/// Names present in `headers` that spell one of `protected` in any case or with `_` for `-`.
pub fn smuggled_identity_headers<'a>(
    headers: impl Iterator<Item = &'a str>,
    protected: &[String],
) -> Vec<String> {
    let wanted: Vec<(String, String)> = protected.iter().map(|p| header_aliases(p)).collect();
    let mut found: Vec<String> = headers
        .filter(|h| {
            let (dash, _) = header_aliases(h);
            wanted.iter().any(|(d, _)| *d == dash)
        })
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// An IP network, for `trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
        None => max,
    };
    Ok(Cidr { addr, prefix })
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The `X-Forwarded-*` values to send upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct Forwarded {
    pub for_: String,
    pub proto: String,
    pub host: Option<String>,
}

/// Client-sent values are kept (and appended to) only when the direct peer is trusted; otherwise
/// they are replaced, so a client cannot claim another IP.
pub fn forwarded_headers(
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    tls: bool,
    trusted: &[Cidr],
) -> Forwarded {
    let peer_trusted = peer.is_some_and(|ip| trusted.iter().any(|c| c.contains(ip)));
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let peer_s = peer
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into());
    let own_proto = if tls { "https" } else { "http" }.to_string();
    let own_host = get("host");
    if peer_trusted {
        Forwarded {
            for_: match get("x-forwarded-for") {
                Some(prev) => format!("{prev}, {peer_s}"),
                None => peer_s,
            },
            proto: get("x-forwarded-proto").unwrap_or(own_proto),
            host: get("x-forwarded-host").or(own_host),
        }
    } else {
        Forwarded {
            for_: peer_s,
            proto: own_proto,
            host: own_host,
        }
    }
}

/// Accepts a client's request id if it is short and printable (it ends up in logs), else makes one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_header_found_in_any_spelling() {
        let names = [
            "X-Identity-Assertion",
            "x-identity-assertion",
            "x_identity_assertion",
            "X_IDENTITY-assertion",
            "x-identity-assertions",
            "cookie",
        ];
        let found =
            smuggled_identity_headers(names.iter().copied(), &["x-identity-assertion".into()]);
        assert_eq!(
            found,
            vec![
                "X-Identity-Assertion",
                "X_IDENTITY-assertion",
                "x-identity-assertion",
                "x_identity_assertion"
            ]
        );
    }

    #[test]
    fn cidr_matching() {
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(parse_cidr("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(parse_cidr("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(parse_cidr("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
    }

    fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn untrusted_peer_cannot_spoof_forwarded_headers() {
        let h = hdrs(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("host", "app.example"),
        ]);
        let f = forwarded_headers(&h, Some("203.0.113.9".parse().unwrap()), true, &[]);
        assert_eq!(
            f,
            Forwarded {
                for_: "203.0.113.9".into(),
                proto: "https".into(),
                host: Some("app.example".into())
            }
        );
    }

    #[test]
    fn trusted_proxy_is_appended_to() {
        let h = hdrs(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "a.b"),
        ]);
        let trusted = [parse_cidr("10.0.0.0/8").unwrap()];
        let f = forwarded_headers(&h, Some("10.0.0.2".parse().unwrap()), false, &trusted);
        assert_eq!(
            f,
            Forwarded {
                for_: "1.2.3.4, 10.0.0.2".into(),
                proto: "https".into(),
                host: Some("a.b".into())
            }
        );
    }

    #[test]
    fn request_id_passthrough_or_generated() {
        assert_eq!(request_id(&hdrs(&[("x-request-id", "abc-123")])), "abc-123");
        assert_eq!(
            request_id(&hdrs(&[("x-request-id", "has space")])).len(),
            32
        );
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
    }
}
