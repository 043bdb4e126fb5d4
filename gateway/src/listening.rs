//! Whether the proxy listeners accept connections yet. Pingora starts each service on its own
//! runtime and binds its sockets there, so the admin listener can answer before a proxy
//! listener is bound: a readiness probe that said "ready" then would send traffic to a port
//! that refuses it. Each listener is checked with a plain TCP connect until one succeeds; a
//! bound socket stays bound for the life of the process, so it is never checked again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one probe waits for the kernel to answer a connect on the same host.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

struct Probe {
    /// As written in the config, for the readiness report.
    listen: String,
    target: SocketAddr,
    accepting: AtomicBool,
}

pub struct ListenerProbes {
    probes: Vec<Probe>,
}

/// Where a connect reaches a listener bound to `addr`: a wildcard bind answers on loopback.
fn probe_target(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

impl ListenerProbes {
    /// One probe per listen address; an address that is not `ip:port` was refused by config
    /// validation already, so it is left out here rather than reported twice.
    pub fn new<'a>(listens: impl IntoIterator<Item = &'a str>) -> Self {
        let probes = listens
            .into_iter()
            .filter_map(|l| {
                let addr: SocketAddr = l.parse().ok()?;
                Some(Probe {
                    listen: l.to_string(),
                    target: probe_target(addr),
                    accepting: AtomicBool::new(false),
                })
            })
            .collect();
        Self { probes }
    }

    /// Checks every listener not yet seen accepting; appends one line per listener to
    /// `report` and says whether all accept.
    pub async fn check(&self, report: &mut String) -> bool {
        let mut all = true;
        for p in &self.probes {
            if !p.accepting.load(Ordering::Relaxed) {
                let connected = matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(p.target))
                        .await,
                    Ok(Ok(_))
                );
                if connected {
                    p.accepting.store(true, Ordering::Relaxed);
                }
            }
            if p.accepting.load(Ordering::Relaxed) {
                report.push_str(&format!("listener {}: accepting\n", p.listen));
            } else {
                all = false;
                report.push_str(&format!("listener {}: not accepting yet\n", p.listen));
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_probed_on_loopback() {
        assert_eq!(
            probe_target("0.0.0.0:8443".parse().unwrap()),
            "127.0.0.1:8443".parse().unwrap()
        );
        assert_eq!(
            probe_target("[::]:80".parse().unwrap()),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            probe_target("10.1.2.3:80".parse().unwrap()),
            "10.1.2.3:80".parse().unwrap()
        );
    }

    #[tokio::test]
    async fn a_listener_is_ready_once_it_accepts_and_stays_so() {
        // A socket bound but not yet listening holds the port and refuses connections, as a
        // proxy listener does between Pingora creating it and listening on it.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        let probes = ListenerProbes::new([addr.as_str()]);
        let mut report = String::new();
        assert!(!probes.check(&mut report).await, "{report}");
        assert!(report.contains("not accepting yet"), "{report}");

        let listener = socket.listen(16).unwrap();
        let mut report = String::new();
        assert!(probes.check(&mut report).await, "{report}");
        drop(listener);
        let mut report = String::new();
        assert!(probes.check(&mut report).await, "{report}");
        assert_eq!(report, format!("listener {addr}: accepting\n"));
    }
}
