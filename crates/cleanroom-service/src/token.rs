//! API tokens: `crt_<token id, 32 hex>_<secret, 64 hex>`.
//!
//! The id is public (it names the token in lists and in the audit log); the secret is 256
//! random bits, shown once and stored only as SHA-256 (a slow hash adds nothing for a secret
//! with this much entropy). Comparison is constant-time.

use std::fmt;

use cleanroom_core::ids::TokenId;
use rand::TryRng;
use rand::rngs::SysRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::ServiceError;

const PREFIX: &str = "crt_";

/// A freshly issued token: the only time its secret exists outside the caller's hands.
pub struct IssuedToken {
    pub id: TokenId,
    secret_hash: [u8; 32],
    full: Zeroizing<String>,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuedToken({}, [redacted])", self.id)
    }
}

impl IssuedToken {
    pub fn generate() -> Result<Self, ServiceError> {
        let id = TokenId::new();
        let mut secret = Zeroizing::new([0u8; 32]);
        SysRng
            .try_fill_bytes(&mut secret[..])
            .map_err(|e| ServiceError::Internal(format!("OS random number generator: {e}")))?;
        let secret_hex = Zeroizing::new(hex::encode(&secret[..]));
        let full = Zeroizing::new(format!(
            "{PREFIX}{}_{}",
            id.to_string().replace('-', ""),
            secret_hex.as_str()
        ));
        Ok(IssuedToken {
            id,
            secret_hash: hash_secret(secret_hex.as_bytes()),
            full,
        })
    }

    /// The whole token string, to show to its holder once.
    pub fn expose(&self) -> &str {
        &self.full
    }

    pub fn secret_hash(&self) -> [u8; 32] {
        self.secret_hash
    }
}

fn hash_secret(secret: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cleanroom-token-v1\0");
    h.update(secret);
    h.finalize().into()
}

/// A token string split into its id and the hash of its secret.
pub struct PresentedToken {
    pub id: TokenId,
    secret_hash: [u8; 32],
}

impl PresentedToken {
    /// Parses a presented token. The error never echoes the token.
    pub fn parse(s: &str) -> Result<Self, ServiceError> {
        let bad = || {
            ServiceError::Unauthenticated(
                "the token is malformed: expected crt_<32 hex>_<64 hex>".into(),
            )
        };
        let rest = s.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let (id_hex, secret) = rest.split_once('_').ok_or_else(bad)?;
        if id_hex.len() != 32
            || secret.len() != 64
            || !secret.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad());
        }
        let id = TokenId::parse(id_hex).map_err(|_| bad())?;
        Ok(PresentedToken {
            id,
            secret_hash: hash_secret(secret.to_ascii_lowercase().as_bytes()),
        })
    }

    /// Constant-time comparison with a stored hash.
    pub fn matches(&self, stored: &[u8; 32]) -> bool {
        self.secret_hash.ct_eq(stored).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_parse_and_match_only_their_hash() {
        let t = IssuedToken::generate().unwrap();
        let p = PresentedToken::parse(t.expose()).unwrap();
        assert_eq!(p.id, t.id);
        assert!(p.matches(&t.secret_hash()));
        let other = IssuedToken::generate().unwrap();
        assert!(!p.matches(&other.secret_hash()));
        assert!(!format!("{t:?}").contains(&t.expose()[40..]));
    }

    #[test]
    fn tampered_and_malformed_tokens_are_refused() {
        let t = IssuedToken::generate().unwrap();
        let mut s = t.expose().to_string();
        let last = s.pop().unwrap();
        s.push(if last == '0' { '1' } else { '0' });
        let p = PresentedToken::parse(&s).unwrap();
        assert!(!p.matches(&t.secret_hash()));
        for bad in ["", "crt_", "Bearer x", "crt_zz_zz", &t.expose()[..50]] {
            assert!(PresentedToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
