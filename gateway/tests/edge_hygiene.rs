//! What the edge does before any route: client-address headers a client cannot forge, origin-form
//! targets upstream, a readable answer to plain HTTP on the TLS port, and no error lines for
//! browsers that reject the development certificate. Raw TCP (and TLS) clients against the real
//! gateway binary, in front of a recording upstream.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;

/// Every way a client might claim an address, in the spellings upstreams are known to read.
const SPOOFED: &str = "Forwarded: for=6.6.6.6;proto=https;host=evil\r\n\
                       X-Real-IP: 6.6.6.6\r\n\
                       X_Forwarded_For: 6.6.6.6\r\n\
                       x_real_ip: 6.6.6.6\r\n\
                       X_FORWARDED_HOST: evil\r\n\
                       x-forwarded_proto: https\r\n\
                       X-Forwarded-For: 6.6.6.6\r\n";

async fn send(gw: &Gateway, target: &str, host: &str, extra: &str) -> String {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    raw_exchange(gw.http, req.as_bytes()).await
}

#[tokio::test]
async fn client_address_headers_are_the_gateways_unless_the_peer_is_trusted() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&app_route(&up)).await;
    let host = format!("127.0.0.1:{}", gw.http);
    let resp = send(&gw, "/p?q=1", &host, SPOOFED).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let r = &up.requests()[0];
    // One of each, ours; no `_` spelling survives for an upstream that reads `_` as `-`.
    assert_eq!(
        r.headers_like("x-forwarded-for"),
        vec!["127.0.0.1"],
        "{r:?}"
    );
    assert_eq!(r.headers_like("x-real-ip"), vec!["127.0.0.1"], "{r:?}");
    assert_eq!(r.headers_like("x-forwarded-proto"), vec!["http"], "{r:?}");
    assert_eq!(
        r.headers_like("x-forwarded-host"),
        vec![host.as_str()],
        "{r:?}"
    );
    assert_eq!(
        r.headers_like("forwarded"),
        vec![format!("for=127.0.0.1;proto=http;host=\"{host}\"").as_str()],
        "{r:?}"
    );
    drop(gw);

    // Behind a trusted proxy the chain is kept and this hop appended, in both headers.
    let gw = Gateway::start_with(&app_route(&up), "trusted_proxies = [\"127.0.0.0/8\"]").await;
    let host = format!("127.0.0.1:{}", gw.http);
    let resp = send(&gw, "/", &host, SPOOFED).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let r = &up.requests()[1];
    assert_eq!(
        r.headers_like("forwarded"),
        vec![format!(
            "for=6.6.6.6;proto=https;host=evil, for=127.0.0.1;proto=http;host=\"{host}\""
        )
        .as_str()],
        "{r:?}"
    );
    assert_eq!(
        r.headers_like("x-forwarded-for"),
        vec!["6.6.6.6, 127.0.0.1"],
        "{r:?}"
    );
    assert_eq!(r.headers_like("x-real-ip"), vec!["6.6.6.6"], "{r:?}");
    // `_` spellings are never a proxy's: still removed.
    assert!(
        !r.headers.iter().any(|(k, _)| k.contains('_')),
        "{:?}",
        r.headers
    );
}

#[tokio::test]
async fn absolute_form_targets_reach_upstreams_in_origin_form() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&app_route(&up)).await;
    let authority = format!("127.0.0.1:{}", gw.http);
    let resp = send(
        &gw,
        &format!("http://{authority}/p/q?x=1&y=2"),
        &authority,
        "",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let r = &up.requests()[0];
    assert_eq!(r.uri, "/p/q?x=1&y=2");
    assert_eq!(r.header("host"), Some(authority.as_str()));
    assert_eq!(r.header("x-forwarded-host"), Some(authority.as_str()));

    let resp = send(&gw, &format!("http://{authority}"), &authority, "").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(up.requests()[1].uri, "/");

    // A target whose authority differs from Host is ambiguous (which host was routed?): Pingora
    // refuses it before any route sees it.
    let resp = send(&gw, "http://other.example/p", &authority, "").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(up.count(), 2);
}

fn tls_client(roots: rustls::RootCertStore) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn https_get(gw: &Gateway, roots: rustls::RootCertStore) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = gw.https.expect("tls listener");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tls_client(roots).connect(name, tcp).await?;
    tls.write_all(b"GET /over-tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).to_string())
}

fn dev_ca(gw: &Gateway) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let ca = rustls::pki_types::CertificateDer::from_pem_file(gw.dir.path().join("certs/ca.crt"))
        .expect("dev CA");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("add CA");
    roots
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_told_to_use_https() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_tls(&app_route(&up)).await;
    let port = gw.https.expect("tls listener");
    let resp = raw_exchange(
        port,
        format!("GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp:?}");
    assert!(
        resp.contains(&format!(
            "This port speaks HTTPS, not plain HTTP: use https://localhost:{port}/socket.io/?EIO=4"
        )),
        "{resp:?}"
    );
    assert!(resp.contains("text/plain"), "{resp:?}");

    // TLS on the same port is untouched.
    let resp = https_get(&gw, dev_ca(&gw)).await.expect("TLS request");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(up.requests().len(), 1);
    assert_eq!(up.requests()[0].header("x-forwarded-proto"), Some("https"));
    let log = gw.log_text();
    assert!(!log.contains("ERROR"), "{log}");
    assert!(
        log.contains("plain HTTP request on a TLS listener"),
        "{log}"
    );
}

/// A browser that does not trust the dev CA aborts every handshake, and retries: ordinary
/// client behaviour, summarised at info, not an ERROR line per attempt.
#[tokio::test]
async fn clients_rejecting_the_certificate_leave_no_error_lines() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_tls(&app_route(&up)).await;
    // Connections closed before their first byte (a load balancer's TCP check, the readiness
    // probe, the harness waiting for the port) are not failed handshakes.
    for _ in 0..3 {
        let port = gw.https.expect("tls listener");
        drop(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    for _ in 0..3 {
        let err = https_get(&gw, rustls::RootCertStore::empty())
            .await
            .expect_err("the handshake fails: no root trusts the dev CA");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }
    // The gateway sees the alert after the client gives up; give it a moment to log.
    let seen = eventually(Duration::from_secs(5), || async {
        gw.log_text().contains("TLS handshakes failed")
    })
    .await;
    let log = gw.log_text();
    assert!(seen, "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    assert_eq!(
        log.matches("TLS handshakes failed").count(),
        1,
        "summarised once: {log}"
    );
    assert!(
        !log.contains("closed before"),
        "probes are not counted: {log}"
    );
    assert_eq!(up.count(), 0);
}
