//! ristretto255 primitives: hashing identifiers to the group with domain separation, blinding
//! with a per-session secret scalar, and 16-byte tags of double-blinded values.
//!
//! For a session key `k` and an identifier `x` of kind `t`, the singly-blinded value is
//! `H_t(x)^k`, where `H_t(x) = RistrettoPoint::from_hash(SHA-512(domain_t ‖ x))` and
//! `domain_t = "cleanroom-psi/v1/hash-to-group/" ‖ t ‖ 0x00`. Exponentiation commutes, so
//! `(H(x)^a)^b = (H(x)^b)^a`: two parties who blind each other's values a second time can compare
//! them without either learning the other's identifiers (DDH in ristretto255).

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use rand::TryRng;
use rand::rngs::SysRng;
use rayon::prelude::*;
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

use crate::PROTOCOL_VERSION;
use crate::PsiError;

/// A compressed ristretto255 point as it travels on the wire.
pub type Point = [u8; 32];

/// The first 16 bytes of a compressed double-blinded point: what is compared.
///
/// A compressed ristretto255 encoding is a canonical field element whose lowest bit is zero,
/// so a tag carries 127 bits. Among `n × m` pairs of distinct double-blinded values (which are
/// uniform in the group), the chance that any two tags collide is at most `n·m / 2^127`:
/// about `3·10^-27` for 10^6 × 10^6 items.
pub type Tag = [u8; 16];

/// The kinds of identifier of a session, in priority order, with their hash domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kinds {
    labels: Vec<String>,
    domains: Vec<Vec<u8>>,
    ot_domains: Vec<Vec<u8>>,
}

/// At most this many identifier kinds per session (they travel as one byte).
pub const MAX_KINDS: usize = 16;

impl Kinds {
    /// Kinds named by short labels such as `email`, `phone` or `opaque`, in priority order.
    pub fn new<S: AsRef<str>>(labels: &[S]) -> Result<Self, PsiError> {
        if labels.is_empty() || labels.len() > MAX_KINDS {
            return Err(PsiError::InvalidParameter(format!(
                "a session needs between 1 and {MAX_KINDS} identifier kinds"
            )));
        }
        let mut out = Vec::with_capacity(labels.len());
        for l in labels {
            let l = l.as_ref();
            if l.is_empty()
                || l.len() > 32
                || !l
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(PsiError::InvalidParameter(format!(
                    "identifier kind label {l:?} must be 1-32 characters of a-z, 0-9 and _"
                )));
            }
            if out.iter().any(|o: &String| o == l) {
                return Err(PsiError::InvalidParameter(format!(
                    "identifier kind {l} is given twice"
                )));
            }
            out.push(l.to_owned());
        }
        let domains_of = |what: &str| {
            out.iter()
                .map(|l| {
                    let mut d = format!("cleanroom-psi/v{PROTOCOL_VERSION}/{what}/").into_bytes();
                    d.extend_from_slice(l.as_bytes());
                    d.push(0);
                    d
                })
                .collect()
        };
        Ok(Kinds {
            domains: domains_of("hash-to-group"),
            ot_domains: domains_of("ot-item"),
            labels: out,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn label(&self, kind: usize) -> &str {
        &self.labels[kind]
    }

    /// The OT intersection's item for an identifier of kind index `kind`:
    /// `SHA-256("cleanroom-psi/v{PROTOCOL_VERSION}/ot-item/" ‖ t ‖ 0x00 ‖ x)`; the protocol uses its first 16
    /// bytes. Among 2^28 items a collision has probability below 2^-72.
    pub fn ot_item(&self, kind: usize, id: &[u8]) -> Point {
        Sha256::new_with_prefix(&self.ot_domains[kind])
            .chain_update(id)
            .finalize()
            .into()
    }

    /// `H_t(x)`: hash an identifier of kind index `kind` to the group.
    pub fn hash_to_group(&self, kind: usize, id: &[u8]) -> RistrettoPoint {
        RistrettoPoint::from_hash(Sha512::new_with_prefix(&self.domains[kind]).chain_update(id))
    }
}

/// A fresh secret scalar for one session. Zeroised on drop; never printed; never cloned.
pub struct SessionKey(Zeroizing<Scalar>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey([redacted])")
    }
}

impl SessionKey {
    /// Draws a uniformly random non-zero scalar from the operating system.
    pub fn generate() -> Result<Self, PsiError> {
        Ok(SessionKey(Zeroizing::new(random_nonzero_scalar()?)))
    }

    /// `H_t(x)^k`, compressed.
    pub fn blind(&self, kinds: &Kinds, kind: usize, id: &[u8]) -> Point {
        (kinds.hash_to_group(kind, id) * *self.0)
            .compress()
            .to_bytes()
    }

    /// `P^k` for a point from the peer, compressed. Refuses invalid encodings and the identity.
    pub fn reblind(&self, p: &Point) -> Result<Point, PsiError> {
        Ok((decode_point(p)? * *self.0).compress().to_bytes())
    }

    /// The tag of `P^k` for a point from the peer.
    pub fn reblind_tag(&self, p: &Point) -> Result<Tag, PsiError> {
        Ok(tag_of(&self.reblind(p)?))
    }

    /// Re-blinds many points in parallel, in order.
    pub fn reblind_tags(&self, points: &[Point]) -> Result<Vec<Tag>, PsiError> {
        points.par_iter().map(|p| self.reblind_tag(p)).collect()
    }
}

/// Decodes a point from the peer; the identity is refused (it would match every blinding).
pub fn decode_point(p: &Point) -> Result<RistrettoPoint, PsiError> {
    let point = CompressedRistretto(*p)
        .decompress()
        .ok_or(PsiError::InvalidPoint)?;
    if point == RistrettoPoint::identity() {
        return Err(PsiError::InvalidPoint);
    }
    Ok(point)
}

pub fn tag_of(p: &Point) -> Tag {
    let mut t = [0u8; 16];
    t.copy_from_slice(&p[..16]);
    t
}

/// A uniformly random group element, compressed: padding for an absent identifier, which the
/// peer cannot tell apart from a blinded one.
pub fn random_point() -> Result<Point, PsiError> {
    let mut wide = Zeroizing::new([0u8; 64]);
    fill_random(&mut wide[..])?;
    Ok(RistrettoPoint::from_uniform_bytes(&wide)
        .compress()
        .to_bytes())
}

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), PsiError> {
    SysRng
        .try_fill_bytes(buf)
        .map_err(|e| PsiError::Internal(format!("OS random number generator: {e}")))
}

pub(crate) fn random_nonzero_scalar() -> Result<Scalar, PsiError> {
    loop {
        let mut wide = Zeroizing::new([0u8; 64]);
        fill_random(&mut wide[..])?;
        let s = Scalar::from_bytes_mod_order_wide(&wide);
        if s != Scalar::ZERO {
            return Ok(s);
        }
    }
}

/// Tags are uniformly random, so their first eight bytes are already a good hash.
#[derive(Default)]
pub struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // A tag hashes as its length, then its bytes: XOR-ing the first eight bytes of each
        // write keeps the tag's own randomness.
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
}

/// A set of tags: about 17 bytes per entry at full load, up to twice that just after growing.
pub type TagSet = HashSet<Tag, BuildHasherDefault<TagHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blinding_commutes_and_domains_separate() {
        let kinds = Kinds::new(&["email", "phone"]).unwrap();
        let a = SessionKey::generate().unwrap();
        let b = SessionKey::generate().unwrap();
        let x = b"alice@example.com";
        let ab = b.reblind(&a.blind(&kinds, 0, x)).unwrap();
        let ba = a.reblind(&b.blind(&kinds, 0, x)).unwrap();
        assert_eq!(ab, ba);
        let other_kind = a.reblind(&b.blind(&kinds, 1, x)).unwrap();
        assert_ne!(ab, other_kind);
        assert_eq!(format!("{a:?}"), "SessionKey([redacted])");
    }

    #[test]
    fn invalid_points_and_labels_are_refused() {
        let k = SessionKey::generate().unwrap();
        assert_eq!(k.reblind(&[0u8; 32]), Err(PsiError::InvalidPoint));
        assert_eq!(k.reblind(&[0xff; 32]), Err(PsiError::InvalidPoint));
        assert!(Kinds::new(&["Email"]).is_err());
        assert!(Kinds::new(&["email", "email"]).is_err());
        assert!(Kinds::new::<&str>(&[]).is_err());
    }
}
