//! Phase 4: rewrite headers before proxying.
//!
//! Two rules matter for security: the identity header is only ever the gateway's own, and the
//! client-address headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) are only believed when
//! the peer is a proxy we trust. Upstreams log and rate-limit by these headers, so a client that
//! could set them could pose as any address.

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

/// The client-address headers the gateway sets on every request. Names are lowercase.
pub const CLIENT_ADDRESS_HEADERS: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// Names present in `headers` that spell a client-address header with `_` for `-` (any case).
/// No proxy sends these, trusted or not; an upstream that reads `_` as `-` (CGI-style servers,
/// some frameworks) would believe them over ours, so they are always removed.
pub fn underscore_spellings<'a>(headers: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut found: Vec<String> = headers
        .filter(|h| h.contains('_'))
        .filter(|h| {
            let dash = h.to_ascii_lowercase().replace('_', "-");
            CLIENT_ADDRESS_HEADERS.contains(&dash.as_str())
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

/// The client-address header values to send upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// `X-Forwarded-For`.
    pub for_: String,
    /// `X-Forwarded-Proto`.
    pub proto: String,
    /// `X-Forwarded-Host`.
    pub host: Option<String>,
    /// `Forwarded` (RFC 7239), the same facts in the standard header.
    pub forwarded: String,
    /// `X-Real-IP`: the client's address, as far as trusted proxies tell.
    pub real_ip: String,
}

/// RFC 7239 node: IPv4 as is, IPv6 bracketed and quoted (`for="[::1]"`), else `unknown`.
fn forwarded_node(ip: Option<IpAddr>) -> String {
    match ip {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => format!("\"[{v6}]\""),
        None => "unknown".into(),
    }
}

/// An RFC 7239 value: a token as is, anything else (`host:port`) as a quoted-string.
fn forwarded_value(v: &str) -> String {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !v.is_empty() && v.bytes().all(tchar) {
        v.to_string()
    } else {
        let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    }
}

/// Client-sent values are kept (and appended to) only when the direct peer is trusted; otherwise
/// they are replaced, so a client cannot claim another IP.
pub fn forwarded_headers(
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    tls: bool,
    trusted: &[Cidr],
) -> Forwarded {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let peer_trusted = peer.is_some_and(is_trusted);
    // Every copy, joined as one list: a header may be split over several lines.
    let get = |name: &str| {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let peer_s = peer
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into());
    let own_proto = if tls { "https" } else { "http" }.to_string();
    let own_host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    // This hop, as RFC 7239 describes it.
    let mut hop = format!("for={};proto={own_proto}", forwarded_node(peer));
    if let Some(h) = &own_host {
        hop.push_str(&format!(";host={}", forwarded_value(h)));
    }
    if peer_trusted {
        let for_ = match get("x-forwarded-for") {
            Some(prev) => format!("{prev}, {peer_s}"),
            None => peer_s.clone(),
        };
        // The client is the last address that is not one of our proxies (anything left of it
        // could have been written by the client itself).
        let from_chain = for_
            .rsplit(',')
            .map(str::trim)
            .find(|a| a.parse::<IpAddr>().map_or(true, |ip| !is_trusted(ip)))
            .or_else(|| for_.split(',').next().map(str::trim))
            .unwrap_or(&peer_s)
            .to_string();
        Forwarded {
            real_ip: get("x-real-ip").unwrap_or(from_chain),
            for_,
            proto: get("x-forwarded-proto").unwrap_or(own_proto),
            host: get("x-forwarded-host").or(own_host),
            forwarded: match get("forwarded") {
                Some(prev) => format!("{prev}, {hop}"),
                None => hop,
            },
        }
    } else {
        Forwarded {
            for_: peer_s.clone(),
            proto: own_proto,
            host: own_host,
            forwarded: hop,
            real_ip: peer_s,
        }
    }
}

/// The client's address as the gateway believes it: the peer, or, when the peer is a trusted
/// proxy, the address that proxy names (the same `X-Real-IP` sent upstream). Admission control
/// limits by this, so a client behind no trusted proxy cannot pick its own bucket.
pub fn client_ip(headers: &HeaderMap, peer: Option<IpAddr>, trusted: &[Cidr]) -> Option<IpAddr> {
    if !peer.is_some_and(|p| trusted.iter().any(|c| c.contains(p))) {
        return peer;
    }
    let real = forwarded_headers(headers, peer, false, trusted).real_ip;
    real.trim().parse().ok().or(peer)
}

/// The origin-form target (`/path?query`) to send instead of an absolute-form one
/// (`http://host/path?query`), or `None` if `raw` (the target as received) already is one.
/// Pingora keeps only the path and query in the URI of an absolute-form request but writes the
/// received bytes upstream; an upstream that honours the absolute URI's authority (RFC 9112
/// section 3.2.2 says it must) could then serve another host than the one routed on.
pub fn origin_form(raw: &[u8], uri: &http::Uri) -> Option<http::Uri> {
    if raw.starts_with(b"/") || raw == b"*" {
        return None;
    }
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let pq = if pq.starts_with('/') { pq } else { "/" };
    pq.parse().ok()
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
    fn client_ip_believes_only_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let trusted = [parse_cidr("10.0.0.0/8").unwrap()];
        let lb: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        // Behind two trusted hops, the client is the last untrusted address.
        assert_eq!(
            client_ip(&h, Some(lb), &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        // An untrusted peer's header is ignored: it cannot choose another client's bucket.
        assert_eq!(client_ip(&h, Some(stranger), &trusted), Some(stranger));
        // A trusted proxy that names no usable address: the proxy itself.
        h.insert("x-real-ip", "not-an-ip".parse().unwrap());
        assert_eq!(client_ip(&h, Some(lb), &trusted), Some(lb));
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
                host: Some("app.example".into()),
                forwarded: "for=203.0.113.9;proto=https;host=app.example".into(),
                real_ip: "203.0.113.9".into(),
            }
        );
        let h = hdrs(&[
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("host", "localhost:8443"),
        ]);
        let f = forwarded_headers(&h, Some("::1".parse().unwrap()), true, &[]);
        assert_eq!(
            f.forwarded,
            "for=\"[::1]\";proto=https;host=\"localhost:8443\""
        );
        assert_eq!(f.real_ip, "::1");
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
                host: Some("a.b".into()),
                forwarded: "for=10.0.0.2;proto=http".into(),
                real_ip: "1.2.3.4".into(),
            }
        );
        let h = hdrs(&[
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("forwarded", "for=10.0.0.7"),
            ("x-forwarded-for", "1.2.3.4, 10.0.0.7"),
            ("host", "gw"),
        ]);
        let f = forwarded_headers(&h, Some("10.0.0.2".parse().unwrap()), false, &trusted);
        assert_eq!(
            f.forwarded,
            "for=1.2.3.4;proto=https, for=10.0.0.7, for=10.0.0.2;proto=http;host=gw"
        );
        assert_eq!(f.for_, "1.2.3.4, 10.0.0.7, 10.0.0.2");
        assert_eq!(f.real_ip, "1.2.3.4");
    }

    #[test]
    fn underscore_spellings_of_client_address_headers() {
        let names = [
            "X_Forwarded_For",
            "x_real_ip",
            "X-Real_IP",
            "x-forwarded-for",
            "forwarded",
            "x_request_id",
        ];
        assert_eq!(
            underscore_spellings(names.iter().copied()),
            vec!["X-Real_IP", "X_Forwarded_For", "x_real_ip"]
        );
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let uri: http::Uri = "/a/b?x=1".parse().unwrap();
        assert_eq!(
            origin_form(b"http://gw.example:8080/a/b?x=1", &uri).unwrap(),
            "/a/b?x=1"
        );
        let uri: http::Uri = "http://gw.example".parse().unwrap();
        assert_eq!(origin_form(b"http://gw.example", &uri).unwrap(), "/");
        let uri: http::Uri = "/a?b".parse().unwrap();
        assert!(origin_form(b"/a?b", &uri).is_none());
        assert!(origin_form(b"*", &"*".parse().unwrap()).is_none());
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
