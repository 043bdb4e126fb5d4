//! One plain-HTTP GET with a deadline, for container health checks.
//!
//! The runtime images carry the service's binary and CA certificates only, so the health check
//! cannot be curl. This does the one thing a health check needs: connect, send
//! `GET <path> HTTP/1.1`, read the status line, all within one deadline. Plain HTTP only: every
//! probed endpoint (`/healthz` on the service's own or admin listener) is inside the container
//! or its private network.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Where to probe: `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
}

#[derive(Debug)]
pub enum ProbeError {
    /// The URL is not `http://host[:port][/path]`.
    BadUrl {
        url: String,
        why: &'static str,
    },
    /// The host name did not resolve to any address.
    Resolve {
        host: String,
        source: io::Error,
    },
    Connect {
        addr: SocketAddr,
        source: io::Error,
    },
    /// Sending the request or reading the answer failed (a timeout included).
    Exchange {
        source: io::Error,
    },
    /// The deadline passed before an answer.
    Timeout {
        after: Duration,
    },
    /// The answer does not start with an HTTP status line.
    BadResponse {
        line: String,
    },
    /// An answer, but not a 2xx one.
    Status {
        code: u16,
    },
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadUrl { url, why } => write!(f, "bad url {url:?}: {why}"),
            Self::Resolve { host, source } => write!(f, "cannot resolve {host}: {source}"),
            Self::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            Self::Exchange { source } => write!(f, "request failed: {source}"),
            Self::Timeout { after } => write!(f, "no answer within {} ms", after.as_millis()),
            Self::BadResponse { line } => write!(f, "not an HTTP answer: {line:?}"),
            Self::Status { code } => write!(f, "status {code}"),
        }
    }
}

impl std::error::Error for ProbeError {}

impl Target {
    pub fn parse(url: &str) -> Result<Self, ProbeError> {
        let bad = |why| ProbeError::BadUrl {
            url: url.to_owned(),
            why,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match &v6[end + 1..] {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            (&v6[..end], port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
        };
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad("spaces or control characters in the path"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// The Host header's value (brackets back around an IPv6 literal).
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// GETs `target` and returns the status code if it is 2xx. Connecting, sending and reading the
/// status line all share one deadline `timeout` from now.
pub fn probe(target: &Target, timeout: Duration) -> Result<u16, ProbeError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ProbeError::Timeout { after: timeout })
    };
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|source| ProbeError::Resolve {
            host: target.host.clone(),
            source,
        })?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(source) => last = Some(ProbeError::Connect { addr, source }),
        }
    }
    let stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e),
        (None, None) => {
            return Err(ProbeError::Resolve {
                host: target.host.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            })
        }
    };
    let exchange = |source| ProbeError::Exchange { source };
    stream.set_write_timeout(Some(left()?)).map_err(exchange)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: healthprobe\r\nConnection: close\r\n\r\n",
        target.path,
        target.host_header()
    );
    (&stream)
        .write_all(request.as_bytes())
        .map_err(|e| timeout_or(e, timeout))?;

    // The status line is all we read. A server that trickles it byte by byte still has to
    // finish by the deadline: the read timeout is renewed with what is left before each read.
    let mut reader = BufReader::new(&stream);
    let mut line = Vec::new();
    loop {
        stream.set_read_timeout(Some(left()?)).map_err(exchange)?;
        let buf = reader.fill_buf().map_err(|e| timeout_or(e, timeout))?;
        if buf.is_empty() {
            break;
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if done || line.len() > 1024 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&line).trim_end().to_owned();
    let code = status_code(&line).ok_or(ProbeError::BadResponse { line })?;
    if (200..300).contains(&code) {
        Ok(code)
    } else {
        Err(ProbeError::Status { code })
    }
}

fn timeout_or(e: io::Error, after: Duration) -> ProbeError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ProbeError::Timeout { after },
        _ => ProbeError::Exchange { source: e },
    }
}

/// `HTTP/1.x NNN reason` -> NNN.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::thread;

    /// A one-connection server on an ephemeral port that answers `reply` after reading the
    /// request head, and hands the request it read back through the join handle.
    fn serve(reply: &'static [u8]) -> (Target, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if conn.read(&mut byte).unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            conn.write_all(reply).unwrap();
            String::from_utf8(head).unwrap()
        });
        let target = Target::parse(&format!("http://127.0.0.1:{port}/healthz")).unwrap();
        (target, handle)
    }

    #[test]
    fn a_2xx_answer_passes_and_the_request_is_a_plain_get() {
        let (target, server) = serve(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(probe(&target, Duration::from_secs(5)).unwrap(), 204);
        let head = server.join().unwrap();
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", target.port)),
            "{head}"
        );
    }

    #[test]
    fn a_non_2xx_answer_fails_with_its_code() {
        let (target, server) =
            serve(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
        let err = probe(&target, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ProbeError::Status { code: 503 }), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn garbage_is_not_an_answer() {
        let (target, server) = serve(b"SSH-2.0-OpenSSH\r\n");
        let err = probe(&target, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ProbeError::BadResponse { .. }), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn a_silent_server_fails_at_the_deadline() {
        // Accepts (the kernel does, from the backlog) and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        let started = Instant::now();
        let err = probe(&Target::parse(&url).unwrap(), Duration::from_millis(300)).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err}");
        assert!(
            took >= Duration::from_millis(300),
            "gave up early: {took:?}"
        );
        assert!(took < Duration::from_secs(3), "deadline not kept: {took:?}");
        drop(listener);
    }

    #[test]
    fn a_closed_port_fails_to_connect() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let target = Target::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let err = probe(&target, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, ProbeError::Connect { .. }), "{err}");
    }

    #[test]
    fn urls() {
        let t = Target::parse("http://10.213.80.10:9180/healthz").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("10.213.80.10", 9180, "/healthz")
        );
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("localhost", 80, "/")
        );
        let t = Target::parse("http://[::1]:3001/readyz?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 3001, "/readyz?x=1")
        );
        assert_eq!(t.host_header(), "[::1]:3001");
        for bad in [
            "https://127.0.0.1/",
            "127.0.0.1:80/",
            "http://:80/",
            "http://h:port/",
            "http://h:99999/",
            "http://u:p@h/",
            "http://[::1/",
            "http://h/a b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
