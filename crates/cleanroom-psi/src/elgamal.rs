//! Exponential ElGamal over ristretto255: additively homomorphic encryption of bounded integers.
//!
//! Keys: secret `x`, public `X = x·G`. `Enc(m) = (r·G, m·G + r·X)` with fresh random `r`.
//! `Enc(a) + Enc(b) = Enc(a + b)` component-wise; `rerandomise` adds `Enc(0)` so a sum cannot be
//! linked to the ciphertexts it was made of. Decryption recovers `m·G = C2 − x·C1` and then `m`
//! by baby-step giant-step over a declared range: this is why sums must be bounded.
//!
//! Masked decryption (PSI-sum to the party without values): the party that holds only a
//! ciphertext `Enc(m)` under the peer's key adds `Enc(r)` for a uniformly random scalar `r`
//! ([`PublicKey::mask`]); the key holder decrypts only as far as the group element
//! `(m + r)·G` ([`SecretKey::decrypt_to_element`]), which is uniform in the group and tells it
//! nothing about `m`, and sends it back; the first party removes `r·G` ([`Mask::unmask`]) and
//! finds `m` by baby-step giant-step ([`Decryptor::log`]).
//!
//! Why this scheme rather than Paillier: it reuses the group and library of the PSI itself
//! (curve25519-dalek, no GMP or OpenSSL), ciphertexts are 64 bytes instead of 512 for
//! 2048-bit Paillier, and encryption is two fixed-base multiplications (microseconds, not
//! milliseconds). Its price, a bounded plaintext range, fits sums of clamped values. Security
//! rests on DDH in ristretto255, like the PSI itself.

use std::collections::HashMap;

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use zeroize::Zeroizing;

use crate::PsiError;
use crate::group::random_nonzero_scalar;

/// The widest range of sums we agree to decrypt: 2^44 (about 1.8·10^13).
pub const MAX_RANGE: u64 = 1 << 44;
/// The largest baby-step table: 2^20 entries (about 50 MB while decrypting).
const MAX_TABLE: u64 = 1 << 20;

/// A ciphertext: two compressed points on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ciphertext {
    c1: RistrettoPoint,
    c2: RistrettoPoint,
}

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ciphertext(..)")
    }
}

impl Ciphertext {
    /// `Enc(0)` with randomness zero: the neutral element for sums.
    pub fn zero() -> Self {
        Ciphertext {
            c1: RistrettoPoint::identity(),
            c2: RistrettoPoint::identity(),
        }
    }

    pub fn add(&self, other: &Ciphertext) -> Ciphertext {
        Ciphertext {
            c1: self.c1 + other.c1,
            c2: self.c2 + other.c2,
        }
    }

    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(self.c1.compress().as_bytes());
        out[32..].copy_from_slice(self.c2.compress().as_bytes());
        out
    }

    /// Decodes a ciphertext from the peer (the identity is allowed: `Enc(0)` sums may hold it).
    pub fn from_bytes(b: &[u8; 64]) -> Result<Self, PsiError> {
        let mut h1 = [0u8; 32];
        let mut h2 = [0u8; 32];
        h1.copy_from_slice(&b[..32]);
        h2.copy_from_slice(&b[32..]);
        Ok(Ciphertext {
            c1: CompressedRistretto(h1)
                .decompress()
                .ok_or(PsiError::InvalidPoint)?,
            c2: CompressedRistretto(h2)
                .decompress()
                .ok_or(PsiError::InvalidPoint)?,
        })
    }
}

/// A public key with its precomputed multiplication table.
pub struct PublicKey {
    point: RistrettoPoint,
    table: Box<RistrettoBasepointTable>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ElGamalPublicKey(..)")
    }
}

impl PublicKey {
    pub fn from_bytes(b: &[u8; 32]) -> Result<Self, PsiError> {
        let point = crate::group::decode_point(b)?;
        Ok(PublicKey {
            table: Box::new(RistrettoBasepointTable::create(&point)),
            point,
        })
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.point.compress().to_bytes()
    }

    /// Encrypts a signed integer (negative values wrap to `−m·G`).
    pub fn encrypt(&self, m: i64) -> Result<Ciphertext, PsiError> {
        let r = Zeroizing::new(random_nonzero_scalar()?);
        Ok(self.encrypt_with(m, &r))
    }

    /// `(r·G, m·G + r·X)`: three fixed-base multiplications (`X` has its own table).
    fn encrypt_with(&self, m: i64, r: &Scalar) -> Ciphertext {
        Ciphertext {
            c1: r * RISTRETTO_BASEPOINT_TABLE,
            c2: &signed_scalar(m) * RISTRETTO_BASEPOINT_TABLE + r * &*self.table,
        }
    }

    /// Adds a fresh encryption of zero: the result decrypts to the same value but its
    /// randomness is independent of the ciphertexts it was computed from.
    pub fn rerandomise(&self, c: &Ciphertext) -> Result<Ciphertext, PsiError> {
        Ok(c.add(&self.encrypt(0)?))
    }

    /// `c + Enc(r)` with fresh randomness: decrypts to `(m + r)·G`, a uniformly random group
    /// element whatever `m` is, and its randomness is independent of `c`'s, so the key holder
    /// who decrypts it learns nothing about `m` and cannot relate it to ciphertexts it made.
    pub fn mask(&self, c: &Ciphertext, mask: &Mask) -> Result<Ciphertext, PsiError> {
        let rho = Zeroizing::new(random_nonzero_scalar()?);
        Ok(c.add(&Ciphertext {
            c1: &*rho * RISTRETTO_BASEPOINT_TABLE,
            c2: &*mask.0 * RISTRETTO_BASEPOINT_TABLE + &*rho * &*self.table,
        }))
    }
}

/// A uniformly random scalar `r` that hides a sum `m` from the key holder asked to decrypt
/// `Enc(m + r)`. Zeroised on drop; never printed.
pub struct Mask(Zeroizing<Scalar>);

impl std::fmt::Debug for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mask([redacted])")
    }
}

impl Mask {
    pub fn generate() -> Result<Self, PsiError> {
        Ok(Mask(Zeroizing::new(random_nonzero_scalar()?)))
    }

    /// `M − r·G` for the decrypted masked element `M = (m + r)·G`: the unmasked `m·G`.
    pub fn unmask(&self, masked: &[u8; 32]) -> Result<RistrettoPoint, PsiError> {
        let m = CompressedRistretto(*masked)
            .decompress()
            .ok_or(PsiError::InvalidPoint)?;
        Ok(m - &*self.0 * RISTRETTO_BASEPOINT_TABLE)
    }
}

/// A secret key. Zeroised on drop; never printed.
pub struct SecretKey {
    x: Zeroizing<Scalar>,
    public: PublicKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ElGamalSecretKey([redacted])")
    }
}

impl SecretKey {
    pub fn generate() -> Result<Self, PsiError> {
        let x = Zeroizing::new(random_nonzero_scalar()?);
        let point = &*x * RISTRETTO_BASEPOINT_TABLE;
        Ok(SecretKey {
            x,
            public: PublicKey {
                table: Box::new(RistrettoBasepointTable::create(&point)),
                point,
            },
        })
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Encrypts a signed integer under this key, as its holder can: `(r·G, (m + x·r)·G)`,
    /// which is `(r·G, m·G + r·X)` for `X = x·G`, the very ciphertext [`PublicKey::encrypt`]
    /// makes with the same `r`, at two fixed-base multiplications instead of three. Scalar
    /// arithmetic and fixed-base multiplication are constant-time in curve25519-dalek.
    pub fn encrypt(&self, m: i64) -> Result<Ciphertext, PsiError> {
        let r = Zeroizing::new(random_nonzero_scalar()?);
        Ok(self.encrypt_with(m, &r))
    }

    fn encrypt_with(&self, m: i64, r: &Scalar) -> Ciphertext {
        let k = Zeroizing::new(signed_scalar(m) + *self.x * r);
        Ciphertext {
            c1: r * RISTRETTO_BASEPOINT_TABLE,
            c2: &*k * RISTRETTO_BASEPOINT_TABLE,
        }
    }

    /// Decrypts `c`, which must hold a value in `[lo, hi]`; otherwise `SumOutOfRange`.
    pub fn decrypt(&self, c: &Ciphertext, lo: i64, hi: i64) -> Result<i64, PsiError> {
        Decryptor::new(lo, hi)?.decrypt(self, c)
    }

    /// Decrypts `c` only as far as the group element `m·G` (no discrete logarithm), plus
    /// `noise·G`, compressed. For a masked sum this element is uniformly random to us.
    pub fn decrypt_to_element(&self, c: &Ciphertext, noise: i64) -> [u8; 32] {
        (c.c2 - c.c1 * *self.x + &signed_scalar(noise) * RISTRETTO_BASEPOINT_TABLE)
            .compress()
            .to_bytes()
    }
}

/// Baby-step giant-step over `[lo, hi]`, with the table built once for several ciphertexts.
pub struct Decryptor {
    lo: i64,
    range: u64,
    m: u64,
    table: HashMap<[u8; 32], u64>,
    giant: RistrettoPoint,
}

impl Decryptor {
    pub fn new(lo: i64, hi: i64) -> Result<Self, PsiError> {
        if hi < lo {
            return Err(PsiError::InvalidParameter("empty decryption range".into()));
        }
        let range = (i128::from(hi) - i128::from(lo)) as u128;
        if range > u128::from(MAX_RANGE) {
            return Err(PsiError::InvalidParameter(format!(
                "sums can be decrypted over a range of at most 2^44; this one is {range}"
            )));
        }
        let range = range as u64;
        let m = ((range + 1) as f64).sqrt().ceil() as u64;
        let m = m.clamp(1, MAX_TABLE);
        let mut table = HashMap::with_capacity(m as usize);
        let mut p = RistrettoPoint::identity();
        let g = curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
        for j in 0..m {
            table.insert(p.compress().to_bytes(), j);
            p += g;
        }
        Ok(Decryptor {
            lo,
            range,
            m,
            table,
            giant: &Scalar::from(m) * RISTRETTO_BASEPOINT_TABLE,
        })
    }

    pub fn decrypt(&self, sk: &SecretKey, c: &Ciphertext) -> Result<i64, PsiError> {
        self.log(c.c2 - c.c1 * *sk.x)
    }

    /// The discrete logarithm `m` of `m·G`, if `m` is in `[lo, hi]`; otherwise `SumOutOfRange`.
    pub fn log(&self, element: RistrettoPoint) -> Result<i64, PsiError> {
        // Shifted so the value sought is in [0, range].
        let mut p = element - &signed_scalar(self.lo) * RISTRETTO_BASEPOINT_TABLE;
        let steps = self.range / self.m + 1;
        for i in 0..steps {
            if let Some(j) = self.table.get(&p.compress().to_bytes()) {
                let v = i * self.m + j;
                if v > self.range {
                    break;
                }
                return Ok((i128::from(self.lo) + i128::from(v)) as i64);
            }
            p -= self.giant;
        }
        Err(PsiError::SumOutOfRange)
    }
}

fn signed_scalar(m: i64) -> Scalar {
    if m >= 0 {
        Scalar::from(m as u64)
    } else {
        -Scalar::from(m.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_decrypt_and_rerandomisation_changes_the_ciphertext() {
        let sk = SecretKey::generate().unwrap();
        let pk = PublicKey::from_bytes(&sk.public().to_bytes()).unwrap();
        let values = [5i64, 0, 1000, 77, -3];
        let mut acc = Ciphertext::zero();
        for v in values {
            acc = acc.add(&pk.encrypt(v).unwrap());
        }
        let fresh = pk.rerandomise(&acc).unwrap();
        assert_ne!(fresh.to_bytes(), acc.to_bytes());
        let d = Decryptor::new(-100, 5000).unwrap();
        assert_eq!(d.decrypt(&sk, &fresh).unwrap(), 1079);
        assert_eq!(sk.decrypt(&Ciphertext::zero(), 0, 10).unwrap(), 0);
        let big = pk.encrypt(6000).unwrap();
        assert_eq!(d.decrypt(&sk, &big), Err(PsiError::SumOutOfRange));
        let round = Ciphertext::from_bytes(&fresh.to_bytes()).unwrap();
        assert_eq!(d.decrypt(&sk, &round).unwrap(), 1079);
        assert!(Decryptor::new(0, i64::MAX).is_err());
        assert_eq!(format!("{sk:?}"), "ElGamalSecretKey([redacted])");
    }

    #[test]
    fn the_key_holder_encrypts_exactly_as_the_public_key_does() {
        let sk = SecretKey::generate().unwrap();
        let pk = PublicKey::from_bytes(&sk.public().to_bytes()).unwrap();
        let d = Decryptor::new(-(1 << 20), 1 << 20).unwrap();
        for m in [0i64, 1, -1, 97, 1000, -77_777, 1 << 20] {
            let r = random_nonzero_scalar().unwrap();
            let by_holder = sk.encrypt_with(m, &r);
            assert_eq!(by_holder, pk.encrypt_with(m, &r), "{m}");
            assert_eq!(d.decrypt(&sk, &by_holder).unwrap(), m);
            // Fresh randomness each time.
            assert_ne!(sk.encrypt(m).unwrap(), sk.encrypt(m).unwrap());
        }
    }

    #[test]
    fn a_masked_sum_decrypts_to_a_random_element_that_only_the_mask_opens() {
        let sk = SecretKey::generate().unwrap();
        let pk = sk.public();
        let sum = pk.encrypt(40).unwrap().add(&pk.encrypt(2).unwrap());
        let mask = Mask::generate().unwrap();
        let masked = pk.mask(&sum, &mask).unwrap();
        assert_ne!(masked.c1, sum.c1, "the mask re-randomises");
        let element = sk.decrypt_to_element(&masked, 0);
        let d = Decryptor::new(-1000, 1000).unwrap();
        // The key holder's view is not 42·G, nor any small multiple of G.
        let plain = d.log(CompressedRistretto(element).decompress().unwrap());
        assert_eq!(plain, Err(PsiError::SumOutOfRange));
        assert_eq!(d.log(mask.unmask(&element).unwrap()).unwrap(), 42);
        // Noise added in the exponent by the key holder survives unmasking.
        let noisy = sk.decrypt_to_element(&masked, -50);
        assert_eq!(d.log(mask.unmask(&noisy).unwrap()).unwrap(), -8);
        // A fresh mask gives a different element for the same sum.
        let again = sk.decrypt_to_element(&pk.mask(&sum, &Mask::generate().unwrap()).unwrap(), 0);
        assert_ne!(again, element);
        assert_eq!(format!("{mask:?}"), "Mask([redacted])");
    }
}
