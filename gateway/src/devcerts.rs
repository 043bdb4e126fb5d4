//! Development certificates: a local CA, a server certificate for localhost signed by it, and
//! an Ed25519 assertion signing key. Never for production: the CA key sits beside the certs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, GeneralSubtree, IsCa, KeyPair,
    KeyUsagePurpose, NameConstraints, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), DevCertError> {
    let io = |source| DevCertError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, contents).map_err(io)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

/// The names the dev CA may sign for (RFC 5280 name constraints): `localhost` and every
/// `*.localhost` name, 127.0.0.1 and ::1, plus exactly the `extra_names` it was made for. A
/// trusted dev CA whose key leaks therefore cannot be used to impersonate any other site.
pub fn ca_name_constraints(extra_names: &[String]) -> NameConstraints {
    let mut permitted = vec![
        // A dNSName constraint covers the name and every name below it (RFC 5280 4.2.1.10).
        GeneralSubtree::DnsName("localhost".into()),
        GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([127, 0, 0, 1], 32)),
        GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(
            std::net::Ipv6Addr::LOCALHOST.octets(),
            128,
        )),
    ];
    for name in extra_names {
        permitted.push(match name.parse::<std::net::IpAddr>() {
            Ok(ip) => GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                ip,
                if ip.is_ipv4() { 32 } else { 128 },
            )),
            Err(_) => GeneralSubtree::DnsName(name.clone()),
        });
    }
    NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    }
}

/// Writes `ca.crt`, `ca.key`, `server.crt`, `server.key` (for localhost, 127.0.0.1, ::1 and
/// `extra_names`) into `dir`. The CA is name-constrained to those names
/// ([`ca_name_constraints`]).
pub fn make_tls(dir: &Path, extra_names: &[String]) -> Result<(), DevCertError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "edge-gateway dev CA");
    // Path length 0: the CA signs leaf certificates only.
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.name_constraints = Some(ca_name_constraints(extra_names));
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut names = vec!["localhost".to_string()];
    names.extend(extra_names.iter().cloned());
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names)?;
    server
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    server
        .subject_alt_names
        .push(SanType::IpAddress("::1".parse().expect("ip")));
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let server_cert = server.signed_by(&server_key, &issuer)?;

    write(&dir.join("ca.crt"), &ca_cert.pem(), false)?;
    write(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    // Chain: server first, then the CA, as TLS clients expect.
    write(
        &dir.join("server.crt"),
        &format!("{}{}", server_cert.pem(), ca_cert.pem()),
        false,
    )?;
    write(&dir.join("server.key"), &server_key.serialize_pem(), true)?;
    Ok(())
}

/// Writes a fresh Ed25519 PKCS#8 key for signing assertions.
pub fn make_signing_key(path: &Path) -> Result<(), DevCertError> {
    let key = identity_assertion::SigningKey::generate("dev");
    write(path, &key.to_pkcs8_pem(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_loadable_files() {
        let dir = std::env::temp_dir().join(format!("gw-devcerts-{}", std::process::id()));
        make_tls(&dir, &["gateway".into()]).unwrap();
        make_signing_key(&dir.join("signing.pem")).unwrap();
        let crt = std::fs::read_to_string(dir.join("server.crt")).unwrap();
        assert_eq!(crt.matches("BEGIN CERTIFICATE").count(), 2);
        let pem = std::fs::read_to_string(dir.join("signing.pem")).unwrap();
        assert!(identity_assertion::SigningKey::from_pkcs8_pem("k", &pem).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The CA certificate carries the NameConstraints extension (id-ce-nameConstraints,
    /// 2.5.29.30), critical, permitting the localhost names and the extra name.
    #[test]
    fn ca_is_name_constrained_to_localhost_names() {
        let dir = std::env::temp_dir().join(format!("gw-devcerts-nc-{}", std::process::id()));
        make_tls(&dir, &["gateway".into()]).unwrap();
        let pem = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        // Extension: SEQUENCE { OID 2.5.29.30, BOOLEAN TRUE (critical), OCTET STRING ... }.
        let oid = [0x06, 0x03, 0x55, 0x1d, 0x1e, 0x01, 0x01, 0xff];
        let at = der
            .windows(oid.len())
            .position(|w| w == oid)
            .expect("CA certificate has a critical NameConstraints extension");
        let ext = &der[at..];
        let contains = |needle: &[u8]| ext.windows(needle.len()).any(|w| w == needle);
        // dNSName [2] "localhost" (and so *.localhost), iPAddress [7] 127.0.0.1/255.255.255.255.
        assert!(contains(b"\x82\x09localhost"));
        assert!(contains(b"\x82\x07gateway"));
        assert!(contains(&[0x87, 0x08, 127, 0, 0, 1, 255, 255, 255, 255]));
        assert!(contains(&[0x87, 0x20, 0, 0, 0, 0]));
        assert!(!contains(b"example"));
    }
}
