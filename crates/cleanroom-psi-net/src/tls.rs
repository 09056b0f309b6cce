//! Mutual TLS 1.3 where each side pins the other's self-signed certificate by the SHA-256 of
//! its DER encoding. No certificate authority is trusted and no name is checked: a peer is who
//! holds the private key of the pinned certificate, nothing else is accepted.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::NetError;

/// The name in every certificate `keygen` makes (never checked, only pinned).
pub const CERT_NAME: &str = "cleanroom-psi.invalid";

/// Our certificate and private key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identity(cert {}, key [redacted])",
            fingerprint(&self.cert)
        )
    }
}

impl Identity {
    /// A fresh self-signed certificate (ECDSA P-256) and its key, as PEM texts.
    pub fn generate_pem() -> Result<(String, String), NetError> {
        let ck = rcgen::generate_simple_self_signed(vec![CERT_NAME.to_owned()])
            .map_err(|e| NetError::Credentials(format!("cannot generate a certificate: {e}")))?;
        Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
    }

    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, NetError> {
        let cert = CertificateDer::from_pem_slice(cert_pem)
            .map_err(|e| NetError::Credentials(format!("not a PEM certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| NetError::Credentials(format!("not a PEM private key: {e}")))?;
        Ok(Identity { cert, key })
    }

    pub fn load(cert: &Path, key: &Path) -> Result<Self, NetError> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| NetError::Credentials(format!("cannot read {}: {e}", p.display())))
        };
        Self::from_pem(&read(cert)?, &read(key)?)
    }

    /// The SHA-256 fingerprint of our certificate, as the peer pins it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }
}

/// SHA-256 of a certificate's DER encoding, lowercase hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// The SHA-256 of the one certificate we accept from the peer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PeerPin([u8; 32]);

impl std::fmt::Debug for PeerPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerPin({})", hex::encode(self.0))
    }
}

impl PeerPin {
    /// Parses 64 hex digits (colons and spaces allowed, as tools print them).
    pub fn parse(s: &str) -> Result<Self, NetError> {
        let clean: String = s
            .chars()
            .filter(|c| !matches!(c, ':' | ' '))
            .collect::<String>()
            .to_ascii_lowercase();
        let bytes = hex::decode(&clean)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                NetError::InvalidSetting(
                    "--peer-cert-sha256 must be 64 hex digits (the SHA-256 printed by `cleanroom psi keygen`)".into(),
                )
            })?;
        let mut a = [0u8; 32];
        a.copy_from_slice(&bytes);
        Ok(PeerPin(a))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Checks the presented certificate against the pin; remembers a mismatch for the error text.
#[derive(Debug)]
struct Pinned {
    pin: PeerPin,
    provider: Arc<CryptoProvider>,
    mismatch: Arc<Mutex<Option<String>>>,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let got: [u8; 32] = Sha256::digest(cert.as_ref()).into();
        if bool::from(got.ct_eq(&self.pin.0)) {
            Ok(())
        } else {
            if let Ok(mut m) = self.mismatch.lock() {
                *m = Some(hex::encode(got));
            }
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// TLS settings for one side: our identity and the peer's pin.
pub struct TlsSetup {
    pub(crate) server: Arc<rustls::ServerConfig>,
    pub(crate) client: Arc<rustls::ClientConfig>,
    mismatch: Arc<Mutex<Option<String>>>,
    pin: PeerPin,
}

impl TlsSetup {
    pub fn new(identity: Identity, pin: PeerPin) -> Result<Self, NetError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mismatch = Arc::new(Mutex::new(None));
        let verifier = Arc::new(Pinned {
            pin,
            provider: provider.clone(),
            mismatch: mismatch.clone(),
        });
        let bad = |e: rustls::Error| NetError::Credentials(format!("TLS configuration: {e}"));
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(bad)?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
            .map_err(bad)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(bad)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![identity.cert], identity.key)
            .map_err(bad)?;
        Ok(TlsSetup {
            server: Arc::new(server),
            client: Arc::new(client),
            mismatch,
            pin,
        })
    }

    /// Turns a failed handshake into the clearest error we can give.
    pub(crate) fn handshake_error(&self, e: std::io::Error) -> NetError {
        if let Some(presented) = self.mismatch.lock().ok().and_then(|mut m| m.take()) {
            return NetError::PinMismatch {
                presented,
                pinned: self.pin.hex(),
            };
        }
        let text = e.to_string();
        if text.contains("ApplicationVerificationFailure")
            || text.contains("AccessDenied")
            || text.contains("BadCertificate")
            || text.contains("CertificateUnknown")
        {
            return NetError::Tls(format!(
                "the peer refused our certificate (does it pin our SHA-256?): {text}"
            ));
        }
        NetError::Tls(text)
    }
}
