//! Development certificates: a local CA, a server certificate for localhost signed by it, and
//! an Ed25519 assertion signing key. Never for production: the CA key sits beside the certs.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

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

/// Writes `ca.crt`, `ca.key`, `server.crt`, `server.key` (for localhost, 127.0.0.1, ::1 and
/// `extra_names`) into `dir`.
pub fn make_tls(dir: &Path, extra_names: &[String]) -> Result<(), DevCertError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "edge-gateway dev CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
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
}
