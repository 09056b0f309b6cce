//! Mutual TLS between the server, the scheduler and the executors of a room's cluster.
//!
//! Every process of the cluster holds the same certificate and private key, from a file only
//! its operator can read (`cleanroom cluster-cert FILE` makes one: a self-signed ECDSA P-256
//! certificate for the name [`CLUSTER_NAME`]). Every connection between them is TLS 1.3 (or
//! 1.2) in both directions:
//!
//! - each listening process (the scheduler's gRPC service, each executor's Arrow Flight
//!   service) presents the certificate and **requires** the caller to present it too;
//! - each caller trusts that one certificate and nothing else (no system roots), and checks
//!   the name [`CLUSTER_NAME`] whatever address it dials.
//!
//! The certificate is thereby pinned: a process without the file can neither reach a
//! scheduler or an executor (no plan submitted, no shuffle partition fetched) nor pose as one
//! (no plan or wrapped key received, no result forged). The scheduler needs this file but not
//! the cluster key. Holding the file makes a process a member: one that also sees plans (the
//! scheduler) can replay their wrapped keys in plans of its own, so the file is as sensitive
//! as the data (docs/security.md).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::EndpointOverrideFn;
use ballista_core::utils::{GrpcClientConfig, create_grpc_client_endpoint};
use cleanroom_storage::keys::{read_owner_only, write_owner_only};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tonic::codegen::http::Uri;
use tonic::codegen::http::uri::Scheme;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::ClusterError;

/// The one name in the cluster certificate, checked by every caller whatever host it dials.
pub const CLUSTER_NAME: &str = "cleanroom-cluster.invalid";

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate and private key every process of the cluster holds.
#[derive(Clone)]
pub struct ClusterTls {
    cert_pem: Arc<str>,
    key_pem: Arc<zeroize::Zeroizing<String>>,
    fingerprint: Arc<str>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterTls(cert {}, key <withheld>)", self.fingerprint)
    }
}

fn ring() {
    // The process-wide provider rustls uses where tonic does not pass one (its servers).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl ClusterTls {
    /// A fresh certificate and key (ECDSA P-256, self-signed, for [`CLUSTER_NAME`]).
    pub fn generate() -> Result<Self, ClusterError> {
        let made = rcgen::generate_simple_self_signed(vec![CLUSTER_NAME.to_owned()])
            .map_err(|e| ClusterError::Config(format!("cannot make a certificate: {e}")))?;
        let text = format!("{}{}", made.cert.pem(), made.signing_key.serialize_pem());
        Self::from_pem(&text)
    }

    /// Writes a new certificate and key to `path`, which must not exist (created readable
    /// by its owner only).
    pub fn create_file(path: &Path) -> Result<Self, ClusterError> {
        if path.exists() {
            return Err(ClusterError::Config(format!(
                "{} exists already: a cluster certificate is never overwritten (the server, the \
                 scheduler and every executor must hold the same one)",
                path.display()
            )));
        }
        let tls = Self::generate()?;
        let text = format!("{}{}", tls.cert_pem, tls.key_pem.as_str());
        write_owner_only(path, text.as_bytes()).map_err(|e| {
            ClusterError::Config(format!(
                "writing the cluster certificate {}: {e}",
                path.display()
            ))
        })?;
        Ok(tls)
    }

    /// Reads the file made by [`ClusterTls::create_file`] (a PEM certificate and its PEM
    /// private key), refusing one others may read or whose key is not the certificate's.
    pub fn read_file(path: &Path) -> Result<Self, ClusterError> {
        let fail = |why: String| {
            ClusterError::Config(format!(
                "reading the cluster certificate {}: {why} (make one with `cleanroom \
                 cluster-cert FILE` and give the same file to every process of the cluster)",
                path.display()
            ))
        };
        let bytes = read_owner_only(path).map_err(|e| fail(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| fail("not a PEM text".into()))?;
        Self::from_pem(&text).map_err(|e| fail(e.to_string()))
    }

    /// Exactly one certificate and one (unencrypted) private key, the certificate's; the
    /// blocks checked are the blocks used.
    fn from_pem(text: &str) -> Result<Self, ClusterError> {
        let bad = |why: &str| ClusterError::Config(why.to_owned());
        let blocks = pem_blocks(text);
        let certs: Vec<&str> = blocks
            .iter()
            .copied()
            .filter(|b| b.starts_with("-----BEGIN CERTIFICATE-----"))
            .collect();
        let keys: Vec<&str> = blocks
            .iter()
            .copied()
            .filter(|b| b.contains("PRIVATE KEY-----"))
            .collect();
        let (cert_pem, key_pem) = match (certs.as_slice(), keys.as_slice()) {
            ([c], [k]) if blocks.len() == 2 => (*c, *k),
            ([], _) => return Err(bad("no PEM certificate in it")),
            (_, []) => return Err(bad("no PEM private key in it")),
            _ => {
                return Err(bad(
                    "it must hold exactly one PEM certificate and its PEM private key",
                ));
            }
        };
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| bad("its certificate is not readable"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| bad("its private key is not readable (an encrypted key is not taken)"))?;
        let signer = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad(&format!("its private key is unusable: {e}")))?;
        rustls::sign::CertifiedKey::new(vec![cert.clone()], signer)
            .keys_match()
            .map_err(|_| {
                bad("its private key is not the certificate's (or the certificate is unreadable)")
            })?;
        Ok(ClusterTls {
            fingerprint: hex::encode(Sha256::digest(cert.as_ref())).into(),
            cert_pem: cert_pem.into(),
            key_pem: Arc::new(zeroize::Zeroizing::new(key_pem.to_owned())),
        })
    }

    /// The certificate, PEM-encoded (public).
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The SHA-256 of the certificate (for logs: every process should show the same).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }

    /// What a listening process presents and requires.
    pub fn server(&self) -> ServerTlsConfig {
        ring();
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(Certificate::from_pem(self.cert_pem.as_bytes()))
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// What a calling process trusts and presents.
    pub fn client(&self) -> ClientTlsConfig {
        ring();
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.cert_pem.as_bytes()))
            .identity(self.identity())
            .domain_name(CLUSTER_NAME)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// Ballista's hook on every gRPC endpoint it makes: TLS with this certificate. Ballista
    /// writes some addresses as `http://` whatever its TLS setting (an executor's scheduler),
    /// so those are rebuilt as `https://` with Ballista's default timeouts.
    pub fn endpoint_override(&self) -> EndpointOverrideFn {
        let client = self.client();
        Arc::new(move |endpoint: Endpoint| {
            let endpoint = if endpoint.uri().scheme_str() == Some("https") {
                endpoint
            } else {
                let mut parts = endpoint.uri().clone().into_parts();
                parts.scheme = Some(Scheme::HTTPS);
                let uri = Uri::from_parts(parts)?;
                create_grpc_client_endpoint(uri, Some(&GrpcClientConfig::default()))?
            };
            Ok(endpoint.tls_config(client.clone())?)
        })
    }
}

/// The `-----BEGIN …-----` … `-----END …-----` blocks of a PEM text, each with its newline.
fn pem_blocks(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let from = &rest[start..];
        let Some(end_tag) = from.find("-----END ") else {
            break;
        };
        let after = &from[end_tag + 9..];
        let close = after.find("-----").map(|i| i + 5).unwrap_or(after.len());
        let mut len = end_tag + 9 + close;
        if from[len..].starts_with('\n') {
            len += 1;
        }
        out.push(&from[..len]);
        rest = &from[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_file_is_made_once_read_back_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.pem");
        let made = ClusterTls::create_file(&path).unwrap();
        let read = ClusterTls::read_file(&path).unwrap();
        assert_eq!(made.fingerprint(), read.fingerprint());
        assert_eq!(made.fingerprint().len(), 64);
        assert!(!format!("{read:?}").contains("PRIVATE"));
        let e = ClusterTls::create_file(&path).unwrap_err().to_string();
        assert!(e.contains("never overwritten"), "{e}");

        // Another file's key with this certificate is refused.
        let other = ClusterTls::generate().unwrap();
        let mixed = dir.path().join("mixed.pem");
        write_owner_only(
            &mixed,
            format!("{}{}", read.cert_pem, other.key_pem.as_str()).as_bytes(),
        )
        .unwrap();
        let e = ClusterTls::read_file(&mixed).unwrap_err().to_string();
        assert!(e.contains("not the certificate's"), "{e}");

        let half = dir.path().join("half.pem");
        write_owner_only(&half, read.cert_pem.as_bytes()).unwrap();
        let e = ClusterTls::read_file(&half).unwrap_err().to_string();
        assert!(e.contains("no PEM private key"), "{e}");

        // Two keys (say an encrypted one before the right one): refused, not guessed.
        let two = dir.path().join("two.pem");
        write_owner_only(
            &two,
            format!(
                "{}{}{}",
                read.cert_pem,
                other.key_pem.as_str(),
                read.key_pem.as_str()
            )
            .as_bytes(),
        )
        .unwrap();
        let e = ClusterTls::read_file(&two).unwrap_err().to_string();
        assert!(e.contains("exactly one"), "{e}");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = ClusterTls::read_file(&path).unwrap_err().to_string();
            assert!(e.contains("readable by other users"), "{e}");
        }
        let e = ClusterTls::read_file(&dir.path().join("none.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cleanroom cluster-cert"), "{e}");
    }

    #[test]
    fn pem_blocks_are_split_whole() {
        let t = ClusterTls::generate().unwrap();
        let text = format!("junk\n{}{}trailer", t.cert_pem, t.key_pem.as_str());
        let blocks = pem_blocks(&text);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0], &*t.cert_pem);
        assert_eq!(blocks[1], t.key_pem.as_str());
    }
}
