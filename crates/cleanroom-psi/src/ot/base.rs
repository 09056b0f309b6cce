//! Base oblivious transfers: Chou and Orlandi's "Simplest OT" (CO15, eprint 2015/267, Fig. 1)
//! on ristretto255, semi-honest, [`WIDTH`] transfers at once.
//!
//! The base-OT sender draws `a` and sends `A = a·G`. For each transfer `j` the receiver, with
//! choice bit `c_j`, draws `b_j` and sends `B_j = b_j·G + c_j·A`. The sender's two keys are
//! `k_j^0 = H(j, A, B_j, a·B_j)` and `k_j^1 = H(j, A, B_j, a·(B_j − A))`; the receiver gets
//! `k_j^{c_j} = H(j, A, B_j, b_j·A)`. `B_j` is uniform whatever `c_j` is, so the sender learns
//! nothing of the choices; the other key needs `b_j·A ± a·A`, a CDH value, so the receiver
//! learns nothing of it. `H` is SHA-256 with a domain, cut to an AES-128 key.
//!
//! In KKRT16 the roles are reversed: the PSI receiver is the base-OT sender (it gets both
//! keys of every column), and the PSI sender is the base-OT receiver whose 512 choice bits are
//! the secret `s` of its OPRF key.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::WIDTH;
use crate::PsiError;
use crate::group::{Point, decode_point, random_nonzero_scalar};

const DOMAIN: &[u8] = b"cleanroom-psi/v1/ot/base\0";

/// One column's AES key, from a base OT.
pub(crate) type ColumnKey = [u8; 16];

fn key(j: usize, a: &Point, b: &Point, shared: &RistrettoPoint) -> ColumnKey {
    let d = Sha256::new_with_prefix(DOMAIN)
        .chain_update((j as u16).to_be_bytes())
        .chain_update(a)
        .chain_update(b)
        .chain_update(shared.compress().as_bytes())
        .finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// The base-OT sender (the PSI receiver), before the receiver's answer.
pub(crate) struct BaseSender {
    a: Zeroizing<Scalar>,
    big_a: RistrettoPoint,
    a_bytes: Point,
}

impl BaseSender {
    pub(crate) fn new() -> Result<Self, PsiError> {
        let a = Zeroizing::new(random_nonzero_scalar()?);
        let big_a = RISTRETTO_BASEPOINT_TABLE * &*a;
        Ok(BaseSender {
            a_bytes: big_a.compress().to_bytes(),
            a,
            big_a,
        })
    }

    /// `A`, the first message.
    pub(crate) fn message(&self) -> Point {
        self.a_bytes
    }

    /// Both keys of every transfer, from the receiver's points.
    pub(crate) fn keys(&self, bs: &[Point]) -> Result<Vec<[ColumnKey; 2]>, PsiError> {
        if bs.len() != WIDTH {
            return Err(PsiError::CountMismatch(format!(
                "{} base-OT points where {WIDTH} were expected",
                bs.len()
            )));
        }
        bs.par_iter()
            .enumerate()
            .map(|(j, b)| {
                let big_b = decode_point(b)?;
                let k0 = key(j, &self.a_bytes, b, &(big_b * *self.a));
                let k1 = key(j, &self.a_bytes, b, &((big_b - self.big_a) * *self.a));
                Ok([k0, k1])
            })
            .collect()
    }
}

/// The base-OT receiver (the PSI sender): its answer to `A` for the choice bits `choices`
/// (bit `j` of byte `j / 8`), and the chosen key of every transfer.
pub(crate) fn receive(
    a: &Point,
    choices: &[u8; WIDTH / 8],
) -> Result<(Vec<Point>, Vec<ColumnKey>), PsiError> {
    let big_a = decode_point(a)?;
    let scalars = (0..WIDTH)
        .map(|_| random_nonzero_scalar().map(Zeroizing::new))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(scalars
        .par_iter()
        .enumerate()
        .map(|(j, b)| {
            let mut big_b = RISTRETTO_BASEPOINT_TABLE * &**b;
            if (choices[j / 8] >> (j % 8)) & 1 == 1 {
                big_b += big_a;
            }
            let b_bytes = big_b.compress().to_bytes();
            let k = key(j, a, &b_bytes, &(big_a * **b));
            (b_bytes, k)
        })
        .unzip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_gets_exactly_the_key_it_chose() {
        let sender = BaseSender::new().unwrap();
        let mut choices = [0u8; WIDTH / 8];
        crate::group::fill_random(&mut choices).unwrap();
        let (bs, got) = receive(&sender.message(), &choices).unwrap();
        let keys = sender.keys(&bs).unwrap();
        for j in 0..WIDTH {
            let c = ((choices[j / 8] >> (j % 8)) & 1) as usize;
            assert_eq!(got[j], keys[j][c], "transfer {j}");
            assert_ne!(got[j], keys[j][1 - c], "transfer {j}");
        }
        // Keys differ between transfers.
        assert_ne!(keys[0][0], keys[1][0]);
    }

    #[test]
    fn a_wrong_count_or_an_invalid_point_is_refused() {
        let sender = BaseSender::new().unwrap();
        assert!(matches!(
            sender.keys(&[[0u8; 32]; 3]),
            Err(PsiError::CountMismatch(_))
        ));
        let mut bs = vec![sender.message(); WIDTH];
        bs[7] = [0xFF; 32];
        assert_eq!(sender.keys(&bs).err(), Some(PsiError::InvalidPoint));
        assert_eq!(
            receive(&[0xFF; 32], &[0; WIDTH / 8]).err(),
            Some(PsiError::InvalidPoint)
        );
    }
}
