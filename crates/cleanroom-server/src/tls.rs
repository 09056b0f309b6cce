//! TLS for the API, built in (rustls with the *ring* provider, TLS 1.2 and 1.3, HTTP/1.1), so
//! the server can leave loopback without a proxy in front of it.
//!
//! The certificate chain and the private key are PEM files (the key PKCS#8, PKCS#1 or SEC1, as
//! certbot and most CAs write them). They are read once at start; a problem with them stops
//! the start with a message naming the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read the TLS certificate file {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error(
        "the TLS certificate file {0} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"
    )]
    NoCertificate(PathBuf),
    #[error(
        "cannot read a private key from {path}: {reason} (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)"
    )]
    Key { path: PathBuf, reason: String },
    #[error("the TLS certificate and key do not make a usable configuration: {0}")]
    Config(String),
}

/// A server configuration from a PEM certificate chain (leaf first) and its private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsSetupError::Certificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Certificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate(cert.to_owned()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_with_the_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &missing).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = server_config(&empty, &empty).unwrap_err();
        assert!(matches!(e, TlsSetupError::NoCertificate(_)), "{e}");

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_file = dir.path().join("cert.pem");
        std::fs::write(&cert_file, cert.pem()).unwrap();
        // The certificate where the key should be.
        let e = server_config(&cert_file, &cert_file)
            .unwrap_err()
            .to_string();
        assert!(e.contains("private key") && e.contains("cert.pem"), "{e}");
        // Another key than the certificate's.
        let other = dir.path().join("other.pem");
        std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let e = server_config(&cert_file, &other).unwrap_err();
        assert!(matches!(e, TlsSetupError::Config(_)), "{e}");
        // The right pair.
        let key_file = dir.path().join("key.pem");
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        server_config(&cert_file, &key_file).unwrap();
    }
}
