//! The real binary, started with a temp config and a PEM key written here; tokens minted with the
//! gateway's own `AssertionSigner`. The socket.io-client and python-socketio suites in
//! integration/presence-tests cover the Socket.IO side; this file covers start-up and HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use identity_assertion::{AssertionSigner, Identity, SigningKey};

struct Node {
    child: Child,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("presence-it-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start(config: &str, dir: &std::path::Path) -> Node {
    let path = dir.join("presence.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_presence-service"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(line.contains("listening on"), "{line}");
    Node { child, addr }
}

/// A bare HTTP/1.1 request: status code and body.
fn request(addr: &str, method: &str, path: &str, assertion: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let header = assertion
        .map(|t| format!("x-identity-assertion: {t}\r\n"))
        .unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: x\r\n{header}content-length: 0\r\nconnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn signer() -> (AssertionSigner, SigningKey) {
    let key = SigningKey::generate("gw-it");
    (
        AssertionSigner::new("edge-gateway", 60, vec![key.clone()]).unwrap(),
        key,
    )
}

fn alice() -> Identity {
    Identity {
        sub: "alice".into(),
        name: Some("Alice".into()),
        sid: "h-alice".into(),
    }
}

#[test]
fn http_routes_trust_only_the_gateway_assertion() {
    let dir = temp_dir();
    let (signer, key) = signer();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(dir.join("keys/gw.pem"), key.public_pem()).unwrap();
    let node = start(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[trust.public_keys]]\nkid = \"gw-it\"\npem = \"keys/gw.pem\"\n",
        &dir,
    );
    assert_eq!(request(&node.addr, "GET", "/healthz", None).0, 200);
    assert_eq!(request(&node.addr, "GET", "/readyz", None).0, 200);
    assert_eq!(request(&node.addr, "GET", "/presence", None).0, 401);

    let other =
        AssertionSigner::new("edge-gateway", 60, vec![SigningKey::generate("gw-it")]).unwrap();
    let forged = other.sign(&alice(), "presence-service").unwrap();
    assert_eq!(
        request(&node.addr, "GET", "/presence", Some(&forged)).0,
        401
    );
    let wrong_aud = signer.sign(&alice(), "demo-service").unwrap();
    assert_eq!(
        request(&node.addr, "GET", "/presence", Some(&wrong_aud)).0,
        401
    );

    let good = signer.sign(&alice(), "presence-service").unwrap();
    let (status, body) = request(&node.addr, "GET", "/presence", Some(&good));
    assert_eq!((status, body.as_str()), (200, r#"{"onlineUsers":[]}"#));
    assert_eq!(
        request(&node.addr, "POST", "/internal/sessions/ended", Some(&good)).0,
        204
    );
    assert_eq!(
        request(
            &node.addr,
            "POST",
            "/internal/sessions/ended",
            Some(&forged)
        )
        .0,
        401
    );

    let (_, metrics) = request(&node.addr, "GET", "/metrics", None);
    assert!(
        metrics.contains(r#"presence_rejected_handshakes_total{reason="bad_signature"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"presence_rejected_handshakes_total{reason="wrong_audience"} 1"#),
        "{metrics}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Started before the gateway: not ready while it holds no key (every socket would be refused),
/// ready by itself once the gateway's JWKS answers, without a handshake to trigger the fetch.
#[test]
fn not_ready_until_the_gateway_keys_are_loaded() {
    let dir = temp_dir();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let node = start(
        &format!("[server]\nlisten = \"127.0.0.1:0\"\n[trust]\njwks_url = \"http://127.0.0.1:{port}/jwks\"\n"),
        &dir,
    );
    let (status, body) = request(&node.addr, "GET", "/readyz", None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("keys"), "{body}");
    assert_eq!(request(&node.addr, "GET", "/healthz", None).0, 200);

    let (signer, _) = signer();
    let jwks = serde_json::to_string(&signer.jwks()).unwrap();
    let gateway = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for conn in gateway.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 2048];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                jwks.len()
            );
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while request(&node.addr, "GET", "/readyz", None).0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let good = signer.sign(&alice(), "presence-service").unwrap();
    assert_eq!(request(&node.addr, "GET", "/presence", Some(&good)).0, 200);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_config_error_names_file_line_and_key() {
    let dir = temp_dir();
    let path = dir.join("presence.toml");
    std::fs::write(&path, "[presence]\nmode = \"diff\"\ngrace = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_presence-service"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&path.display().to_string())
            && err.contains("line 3")
            && err.contains("grace"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}
