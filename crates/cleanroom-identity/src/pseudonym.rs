//! Keyed pseudonyms: HMAC-SHA-256 of a normalised identifier under a subkey derived from the
//! collaboration's shared secret.
//!
//! A plain SHA-256 of an email address is reversible by dictionary (SHA-256 runs at millions
//! per second per core, and lists of addresses are for sale); an HMAC under a secret the server
//! never receives is not, as long as the secret stays with the parties.
//!
//! Derivation (HKDF-SHA-256, RFC 5869):
//!
//! ```text
//! PRK        = HKDF-Extract(salt = "cleanroom/pseudonym/v1", IKM = secret)
//! subkey(k)  = HKDF-Expand(PRK, info = len32(label) || label || len32(kind) || kind, 32)
//! pseudonym  = lowercase_hex(HMAC-SHA-256(subkey(kind), normalised_value))
//! ```
//!
//! `len32` is a 4-byte big-endian length, so no two (label, kind) pairs share an `info`. A
//! subkey per kind separates domains: the same string as an email and as an opaque key gives
//! unrelated pseudonyms, and a pseudonym from one collaboration says nothing in another.

use std::fmt;
use std::io::Read;
use std::path::Path;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::IdentityError;
use crate::normalise::IdKind;

/// Fewest bytes a shared secret may have.
pub const MIN_SECRET_BYTES: usize = 16;
/// Most bytes read from a secret file (a secret is short; a large file is a mistake).
pub const MAX_SECRET_BYTES: usize = 4096;
/// HKDF salt: fixes the scheme and its version.
pub const KDF_SALT: &[u8] = b"cleanroom/pseudonym/v1";
/// Environment variable the CLI reads the secret from.
pub const SECRET_ENV: &str = "CLEANROOM_PREP_SECRET";

type HmacSha256 = Hmac<Sha256>;

/// The keyed pseudonymisation function of one collaboration: one keyed HMAC state per
/// identifier kind, cloned for every value (cheaper than keying again).
///
/// Prints as `[redacted]`; the subkeys are zeroised on drop.
#[derive(Clone)]
pub struct PseudonymKey {
    /// Keyed HMAC states, indexed like [`IdKind::ALL`].
    macs: [HmacSha256; 6],
    /// The subkeys themselves, kept only to be zeroised.
    _subkeys: Zeroizing<[[u8; 32]; 6]>,
}

impl fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PseudonymKey([redacted])")
    }
}

fn kind_index(kind: IdKind) -> usize {
    match kind {
        IdKind::Email => 0,
        IdKind::Phone => 1,
        IdKind::Maid => 2,
        IdKind::Name => 3,
        IdKind::PostalCode => 4,
        IdKind::Opaque => 5,
    }
}

/// The HKDF `info` for a (label, kind) pair: both length-prefixed.
fn kdf_info(label: &str, kind: IdKind) -> Vec<u8> {
    let mut info = Vec::with_capacity(8 + label.len() + 12);
    for part in [label.as_bytes(), kind.as_str().as_bytes()] {
        info.extend_from_slice(&(part.len() as u32).to_be_bytes());
        info.extend_from_slice(part);
    }
    info
}

impl PseudonymKey {
    /// Derives the per-kind subkeys from a shared secret (at least 16 bytes) and the
    /// collaboration's label (both parties must use the same, e.g. the collaboration's id).
    pub fn derive(secret: &[u8], collaboration_label: &str) -> Result<Self, IdentityError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(IdentityError::InvalidInput(format!(
                "the shared secret must have at least {MIN_SECRET_BYTES} bytes (it has {}); generate one with e.g. `openssl rand -hex 32`",
                secret.len()
            )));
        }
        if collaboration_label.trim().is_empty() {
            return Err(IdentityError::InvalidInput(
                "the collaboration label must not be empty".into(),
            ));
        }
        if collaboration_label.len() > 1024 {
            return Err(IdentityError::InvalidInput(
                "the collaboration label must have at most 1024 bytes".into(),
            ));
        }
        let hk = Hkdf::<Sha256>::new(Some(KDF_SALT), secret);
        let mut subkeys = Zeroizing::new([[0u8; 32]; 6]);
        for kind in IdKind::ALL {
            hk.expand(
                &kdf_info(collaboration_label, kind),
                &mut subkeys[kind_index(kind)],
            )
            .map_err(|_| IdentityError::Internal("HKDF output length".into()))?;
        }
        let mac = |i: usize| {
            <HmacSha256 as KeyInit>::new_from_slice(&subkeys[i])
                .map_err(|_| IdentityError::Internal("HMAC key length".into()))
        };
        let macs = [mac(0)?, mac(1)?, mac(2)?, mac(3)?, mac(4)?, mac(5)?];
        Ok(PseudonymKey {
            macs,
            _subkeys: subkeys,
        })
    }

    /// The 32 raw bytes of the pseudonym of an already normalised value.
    pub fn pseudonym_bytes(&self, kind: IdKind, normalised: &str) -> [u8; 32] {
        let mut mac = self.macs[kind_index(kind)].clone();
        mac.update(normalised.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The pseudonym of an already normalised value, as 64 lowercase hex digits.
    pub fn pseudonymise(&self, kind: IdKind, normalised: &str) -> String {
        self.pseudonym_hex(kind, normalised).as_str().to_owned()
    }

    /// The pseudonym as 64 lowercase hex digits on the stack: the hot path of `prepare`
    /// appends it to an output column without allocating.
    pub fn pseudonym_hex(&self, kind: IdKind, normalised: &str) -> PseudonymHex {
        let mut out = [0u8; 64];
        // 32 bytes always fit 64 hex digits.
        let _ = hex::encode_to_slice(self.pseudonym_bytes(kind, normalised), &mut out);
        PseudonymHex(out)
    }
}

/// A pseudonym written as 64 lowercase hex digits.
#[derive(Clone, Copy)]
pub struct PseudonymHex([u8; 64]);

impl PseudonymHex {
    pub fn as_str(&self) -> &str {
        // Hex digits are ASCII, so this never fails; the fallback is unreachable.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Reads a shared secret from a file: surrounding whitespace (a trailing newline) is removed,
/// so `echo secret > file` and `printf secret > file` give the same key.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    let f = std::fs::File::open(path).map_err(IdentityError::io(format!(
        "cannot open the secret file {}",
        path.display()
    )))?;
    let mut buf = Zeroizing::new(Vec::new());
    f.take(MAX_SECRET_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(IdentityError::io(format!(
            "cannot read the secret file {}",
            path.display()
        )))?;
    if buf.len() > MAX_SECRET_BYTES {
        return Err(IdentityError::InvalidInput(format!(
            "the secret file {} is larger than {MAX_SECRET_BYTES} bytes: is it the right file?",
            path.display()
        )));
    }
    Ok(trim_secret(&buf))
}

/// Removes surrounding ASCII whitespace from a secret (as read from a file or variable).
pub fn trim_secret(raw: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(raw.trim_ascii().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn known_answer() {
        // Computed independently with Python's hmac/hashlib (HKDF written out by hand):
        //   prk = HMAC(b"cleanroom/pseudonym/v1", SECRET)
        //   info = len32(b"spring-campaign") + b"spring-campaign" + len32(b"email") + b"email"
        //   okm = HMAC(prk, info + b"\x01")
        //   HMAC(okm, b"john@example.com").hexdigest()
        let key = PseudonymKey::derive(SECRET, "spring-campaign").unwrap();
        assert_eq!(
            key.pseudonymise(IdKind::Email, "john@example.com"),
            KAT_EMAIL
        );
        assert_eq!(key.pseudonymise(IdKind::Phone, "+447911123456"), KAT_PHONE);
    }

    const KAT_EMAIL: &str = "69711f9c9b74f0f45e72b5344258770bc012b8197ae3917b240151ff99a9ffb2";
    const KAT_PHONE: &str = "a4e181c35cdd305cf4e9ba66ff2a783b7fb5a384dabce1af59d3f245e62baeca";

    #[test]
    fn kinds_and_collaborations_are_separated() {
        let a = PseudonymKey::derive(SECRET, "collab-a").unwrap();
        let b = PseudonymKey::derive(SECRET, "collab-b").unwrap();
        let v = "same-string";
        let mut seen = std::collections::HashSet::new();
        for k in IdKind::ALL {
            assert!(seen.insert(a.pseudonymise(k, v)), "{k} collides in a");
            assert!(seen.insert(b.pseudonymise(k, v)), "{k} collides in b");
        }
        // Deterministic within one key.
        assert_eq!(
            a.pseudonymise(IdKind::Email, v),
            a.clone().pseudonymise(IdKind::Email, v)
        );
        // Length prefixes: label "ab" + kind "c..." differs from label "a" + kind "bc...".
        assert_ne!(kdf_info("ab", IdKind::Email), kdf_info("a", IdKind::Email));
    }

    #[test]
    fn output_shape() {
        let k = PseudonymKey::derive(SECRET, "x").unwrap();
        let p = k.pseudonymise(IdKind::Opaque, "");
        assert_eq!(p.len(), 64);
        assert!(
            p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn short_secrets_and_empty_labels_are_refused() {
        let e = PseudonymKey::derive(b"too short", "x").unwrap_err();
        assert_eq!(e.code(), "invalid_input");
        assert!(e.to_string().contains("at least 16 bytes"));
        assert!(!e.to_string().contains("too short"));
        assert!(PseudonymKey::derive(SECRET, " ").is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let k = PseudonymKey::derive(SECRET, "x").unwrap();
        assert_eq!(format!("{k:?}"), "PseudonymKey([redacted])");
    }

    #[test]
    fn secret_files_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, b"  abcdefghijklmnopqrstuvwxyz\n").unwrap();
        assert_eq!(
            read_secret_file(&p).unwrap().as_slice(),
            b"abcdefghijklmnopqrstuvwxyz"
        );
        std::fs::write(&p, vec![b'a'; MAX_SECRET_BYTES + 1]).unwrap();
        assert!(read_secret_file(&p).is_err());
    }

    #[test]
    fn a_missing_secret_file_says_the_os_reason_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-secret");
        let e = read_secret_file(&path).unwrap_err();
        // The whole chain, as the CLI prints it.
        let mut chain = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            chain.push_str(&format!(": {s}"));
            src = s.source();
        }
        let os = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
        let os_text = std::fs::File::open(&path).unwrap_err().to_string();
        assert_eq!(chain.matches(&os_text).count(), 1, "{chain} ({os})");
        assert!(chain.starts_with("cannot open the secret file "), "{chain}");
    }
}
