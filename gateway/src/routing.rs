//! Route matching: longest path prefix wins; a route with a `host` beats one without.

use std::sync::Arc;

use crate::config::AuthPolicy;
use crate::upstream::UpstreamPool;

/// Where to tell other services that a session ended.
#[derive(Debug, Clone)]
pub struct LogoutRoute {
    pub path: String,
    pub notify: Vec<String>,
    pub audience: String,
    pub header: String,
}

pub struct Route {
    pub name: String,
    pub path_prefix: String,
    pub host: Option<String>,
    pub auth: AuthPolicy,
    pub audience: Option<String>,
    pub assertion_header: String,
    pub allowed_origins: Vec<String>,
    pub pool: Arc<UpstreamPool>,
    /// Session sources to authenticate with, in order (the first whose cookie is present).
    pub sessions: Vec<Arc<crate::session::SessionSource>>,
    pub logout: Option<LogoutRoute>,
}

impl Route {
    pub fn is_logout(&self, method: &http::Method, path: &str) -> bool {
        method == http::Method::POST && self.logout.as_ref().is_some_and(|l| l.path == path)
    }

    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(got)) => {
                let got = got.rsplit_once(':').map_or(got, |(h, p)| {
                    if p.bytes().all(|b| b.is_ascii_digit()) {
                        h
                    } else {
                        got
                    }
                });
                want.eq_ignore_ascii_case(got)
            }
            (Some(_), None) => false,
        };
        host_ok && prefix_matches(&self.path_prefix, path)
    }
}

/// `/socket.io/` matches `/socket.io/` and below, and also `/socket.io` itself.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix) || (prefix.ends_with('/') && path == &prefix[..prefix.len() - 1])
}

pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Every assertion header name configured anywhere: stripped from every request.
    protected: Vec<String>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut protected: Vec<String> = routes
            .iter()
            .map(|r| r.assertion_header.to_ascii_lowercase())
            .collect();
        protected.extend(
            routes
                .iter()
                .filter_map(|r| r.logout.as_ref())
                .map(|l| l.header.to_ascii_lowercase()),
        );
        protected.push(identity_assertion::DEFAULT_HEADER.to_string());
        protected.sort();
        protected.dedup();
        Self {
            routes: routes.into_iter().map(Arc::new).collect(),
            protected,
        }
    }

    pub fn find(&self, host: Option<&str>, path: &str) -> Option<Arc<Route>> {
        self.routes
            .iter()
            .filter(|r| r.matches(host, path))
            .max_by_key(|r| (r.host.is_some(), r.path_prefix.len()))
            .cloned()
    }

    pub fn protected_headers(&self) -> &[String] {
        &self.protected
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::lb::{selection::RoundRobin, LoadBalancer};

    fn route(name: &str, prefix: &str, host: Option<&str>) -> Route {
        let lb = LoadBalancer::<RoundRobin>::try_from_iter(["127.0.0.1:1"]).unwrap();
        Route {
            name: name.into(),
            path_prefix: prefix.into(),
            host: host.map(Into::into),
            auth: AuthPolicy::None,
            audience: None,
            assertion_header: "X-Identity-Assertion".into(),
            allowed_origins: vec![],
            pool: Arc::new(UpstreamPool::new(name.to_string(), Arc::new(lb))),
            sessions: vec![],
            logout: None,
        }
    }

    #[test]
    fn longest_prefix_and_host_win() {
        let t = RouteTable::new(vec![
            route("app", "/", None),
            route("sio", "/socket.io/", None),
            route("admin-host", "/", Some("admin.example")),
        ]);
        let name = |h: Option<&str>, p: &str| t.find(h, p).map(|r| r.name.clone());
        assert_eq!(name(None, "/socket.io/").as_deref(), Some("sio"));
        assert_eq!(name(None, "/socket.io").as_deref(), Some("sio"));
        assert_eq!(name(None, "/socket.iox").as_deref(), Some("app"));
        assert_eq!(name(Some("app.example"), "/login").as_deref(), Some("app"));
        assert_eq!(
            name(Some("ADMIN.example:8443"), "/x").as_deref(),
            Some("admin-host")
        );
        assert_eq!(t.protected_headers(), ["x-identity-assertion"]);
    }

    #[test]
    fn no_route_without_catch_all() {
        let t = RouteTable::new(vec![route("sio", "/socket.io/", None)]);
        assert!(t.find(None, "/api").is_none());
    }
}
