//! The pieces of the OT-based intersection (KKRT16: Kolesnikov, Kumaresan, Rosulek and
//! Trieu, "Efficient Batched Oblivious PRF with Applications to Private Set Intersection",
//! CCS 2016, eprint 2016/799), semi-honest:
//!
//! - [`base`]: 512 base OTs (Chou–Orlandi "Simplest OT" on ristretto255);
//! - [`matrix`]: the bit-matrix transpose and the AES-CTR column streams of the extension;
//! - [`cuckoo`]: the receiver's stash-less cuckoo table, 3 hash functions;
//! - [`store`]: a side's items by part, in memory or sealed in temporary files, read a
//!   bucket at a time;
//! - here: the parameters, the pseudo-random code and the output hash.
//!
//! The protocol's steps are in [`crate::ot_intersection`].

pub(crate) mod base;
pub(crate) mod cuckoo;
pub(crate) mod matrix;
pub mod store;

use aes::Aes128;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use sha2::{Digest, Sha256};

/// Width of the OPRF's code words and of the extension: 512 bits, four AES blocks. KKRT16's
/// analysis (Table 2) needs about 424-448 bits for 40-bit statistical security at these set
/// sizes; 512 is what libOTe and swanky use.
pub(crate) const WIDTH: usize = 512;
/// Bytes of one row of the extension matrix (one bin).
pub(crate) const ROW: usize = WIDTH / 8;
/// Statistical security of the whole protocol, in bits: the chance of a false match and of a
/// cuckoo failure are each below `2^-STAT`.
pub(crate) const STAT: u32 = 40;
/// Hash functions of the cuckoo table.
pub(crate) const HASHES: usize = 3;
/// Bins are processed (and sent) in chunks of a multiple of this many.
pub(crate) const BIN_ALIGN: usize = 128;
/// The largest chunk of bins per message: 512 columns × 2 KiB = 1 MiB.
pub(crate) const MAX_CHUNK: usize = 1 << 14;

/// The number of cuckoo bins for `n` receiver items: `1.27·n` (the stash-less 3-hash load of
/// Pinkas–Schneider–Zohner, ToPS 2018, §3.2.2, failure ≤ 2^-40 for large `n`), plus 256
/// spare bins that keep small tables as safe, rounded up to a multiple of [`BIN_ALIGN`].
/// Both sides compute it from the receiver's announced count.
pub(crate) fn bins_for(n: u64) -> u64 {
    let want = (n as f64 * 1.27).ceil() as u64 + 256;
    want.div_ceil(BIN_ALIGN as u64) * BIN_ALIGN as u64
}

/// Items per bucket the receiver aims for by default: a bucket's working state is about
/// 120 bytes an item on the receiver's side and 100 on the sender's, so 2^21 items keep a
/// bucket near 250 MB.
pub const DEFAULT_BUCKET_ITEMS: u64 = 1 << 21;

/// The number of buckets the receiver picks: a power of two, enough that the larger side
/// has at most `per_bucket` items a bucket on average, at most [`store::PARTS`].
pub(crate) fn buckets_for(receiver_items: u64, sender_items: u64, per_bucket: u64) -> u64 {
    let n = receiver_items.max(sender_items);
    n.div_ceil(per_bucket.max(1))
        .next_power_of_two()
        .clamp(1, store::PARTS as u64)
}

/// The number of items every bucket is padded to when `n` items fall into `buckets` buckets
/// (uniformly: items are hashes): `μ + t` with `μ = n / buckets` and `t` from Bernstein's
/// inequality, `P[X ≥ μ + t] ≤ exp(-t² / (2μ + 2t/3))`, set so that the chance that any
/// bucket overflows stays below `2^-STAT` (a union bound over the buckets). One bucket holds
/// all `n`. Padding hides how a side's items spread over the buckets: only `n` is announced.
pub(crate) fn bucket_capacity(n: u64, buckets: u64) -> u64 {
    if buckets <= 1 || n == 0 {
        return n;
    }
    let mu = n as f64 / buckets as f64;
    let a = f64::from(STAT) * std::f64::consts::LN_2 + (buckets as f64).ln();
    let t = a / 3.0 + (a * a / 9.0 + 2.0 * a * mu).sqrt();
    ((mu + t).ceil() as u64).min(n)
}

/// Bytes of each OPRF output kept for comparison. The receiver compares each of its `bins`
/// outputs with `3·n_sender` of the sender's, so a false match happens with probability at
/// most `bins · 3·n_sender · 2^-8w`; `w` is the smallest width that keeps this below
/// `2^-STAT` (KKRT16 §5, "v"). 10-11 bytes at a million a side, 12 at a hundred million.
pub(crate) fn mask_bytes(bins: u64, sender_items: u64) -> usize {
    let pairs = bins as f64 * (HASHES as f64) * (sender_items.max(1) as f64);
    let bits = f64::from(STAT) + pairs.log2();
    ((bits / 8.0).ceil() as usize).clamp(8, 16)
}

/// A 128-bit item: the first 16 bytes of `SHA-256(domain_kind ‖ identifier)` (see
/// `Kinds::ot_item`), with the hash index mixed into its last byte when it enters a bin.
pub(crate) fn item_with_hash(item: u128, hash: usize) -> u128 {
    item ^ ((hash as u128 + 1) << 120)
}

/// Keys derived from both sides' seeds (a coin toss: neither side picks them alone).
pub(crate) fn derive_key(label: &[u8], seed_r: &[u8; 16], seed_s: &[u8; 16]) -> [u8; 16] {
    let d = Sha256::new_with_prefix(b"cleanroom-psi/v1/ot/")
        .chain_update(label)
        .chain_update([0])
        .chain_update(seed_r)
        .chain_update(seed_s)
        .finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// The pseudo-random code `C(x) = (AES_K1(x)⊕x, …, AES_K4(x)⊕x)` of KKRT16 §4 (libOTe's
/// `KkrtNcoOtSender`), keyed after the base OTs by a coin toss.
pub(crate) struct Code(Box<[Aes128; 4]>);

impl Code {
    pub(crate) fn new(seed_r: &[u8; 16], seed_s: &[u8; 16]) -> Self {
        let k = |i: u8| Aes128::new(&derive_key(&[b'c', b'0' + i], seed_r, seed_s).into());
        Code(Box::new([k(0), k(1), k(2), k(3)]))
    }

    /// The code words of `items`, one [`ROW`]-byte row each, into `out`.
    pub(crate) fn encode(&self, items: &[u128], out: &mut [u8]) {
        debug_assert_eq!(out.len(), items.len() * ROW);
        let mut blocks: Vec<u8> = Vec::with_capacity(items.len() * 16);
        for (q, aes) in self.0.iter().enumerate() {
            blocks.clear();
            items
                .iter()
                .for_each(|x| blocks.extend_from_slice(&x.to_le_bytes()));
            aes.encrypt_blocks(matrix::as_blocks(&mut blocks));
            for (i, (c, x)) in blocks.chunks_exact(16).zip(items).enumerate() {
                let w = u128::from_le_bytes(c.try_into().expect("16 bytes")) ^ x;
                out[i * ROW + q * 16..i * ROW + (q + 1) * 16].copy_from_slice(&w.to_le_bytes());
            }
        }
    }
}

/// The OPRF's output: SHA-256 of the 64-byte row, its first `width` bytes kept (the rest of
/// the `u128` is zero). SHA-256 is the correlation-robust hash KKRT16 §3 asks for.
pub(crate) fn output(row: &[u8], width: usize) -> u128 {
    let d = Sha256::digest(row);
    let mut b = [0u8; 16];
    b[..width].copy_from_slice(&d[..width]);
    u128::from_le_bytes(b)
}

/// The three bins of an item, keyed by the receiver's hash key: `⌊AES_Kh(x⊕i) · bins / 2^64⌋`
/// on the first eight bytes (Lemire's multiply-shift range reduction, no modulo bias).
pub(crate) struct BinHash {
    aes: Aes128,
    bins: u64,
}

impl BinHash {
    pub(crate) fn new(key: &[u8; 16], bins: u64) -> Self {
        BinHash {
            aes: Aes128::new(key.into()),
            bins,
        }
    }

    /// The bins of every item, `HASHES` per item, into `out`.
    pub(crate) fn bins_of(&self, items: &[u128], out: &mut Vec<u32>) {
        let mut blocks: Vec<u8> = Vec::with_capacity(items.len() * 16 * HASHES);
        for x in items {
            for h in 0..HASHES {
                blocks.extend_from_slice(&item_with_hash(*x, h).to_le_bytes());
            }
        }
        self.aes.encrypt_blocks(matrix::as_blocks(&mut blocks));
        out.clear();
        out.extend(blocks.chunks_exact(16).map(|c| {
            let v = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
            ((u128::from(v) * u128::from(self.bins)) >> 64) as u32
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_follow_the_stated_bounds() {
        assert_eq!(bins_for(0), 256);
        assert_eq!(bins_for(1_000_000) % BIN_ALIGN as u64, 0);
        assert!(bins_for(1_000_000) >= 1_270_256);
        // 2^20 × 2^20: 40 + log2(1.33M · 3 · 1M) ≈ 81.9 bits → 11 bytes.
        assert_eq!(mask_bytes(bins_for(1 << 20), 1 << 20), 11);
        assert_eq!(mask_bytes(bins_for(100_000_000), 100_000_000), 12);
        assert_eq!(mask_bytes(256, 0), 8);
    }

    #[test]
    fn buckets_are_powers_of_two_and_their_padding_is_small_but_safe() {
        assert_eq!(buckets_for(0, 0, DEFAULT_BUCKET_ITEMS), 1);
        assert_eq!(buckets_for(1_000_000, 1_000_000, DEFAULT_BUCKET_ITEMS), 1);
        assert_eq!(buckets_for(100_000_000, 3, DEFAULT_BUCKET_ITEMS), 64);
        assert_eq!(buckets_for(3, 10_000_000_000, DEFAULT_BUCKET_ITEMS), 256);
        assert_eq!(bucket_capacity(12_345, 1), 12_345);
        assert_eq!(bucket_capacity(0, 64), 0);
        // 100M into 64: μ ≈ 1.56M, σ ≈ 1,250; the pad is ≈ 8σ (0.64 %), never below 7σ.
        let (n, b) = (100_000_000u64, 64u64);
        let mu = n as f64 / b as f64;
        let cap = bucket_capacity(n, b) as f64;
        assert!(cap > mu + 7.0 * mu.sqrt() && cap < mu * 1.01, "{cap}");
        // A small set cannot be padded beyond itself.
        assert_eq!(bucket_capacity(10, 256), 10);
    }

    #[test]
    fn the_padding_holds_in_simulation() {
        use rand::{RngExt, SeedableRng};
        // 200 trials of 200,000 uniform items into 64 buckets: no bucket ever overflows,
        // and the fullest bucket is well above the mean (the bound is not vacuous).
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(17);
        let (n, b) = (200_000u64, 64usize);
        let cap = bucket_capacity(n, b as u64);
        let mut fullest = 0;
        for _ in 0..200 {
            let mut counts = vec![0u64; b];
            for _ in 0..n {
                counts[rng.random_range(0..b)] += 1;
            }
            fullest = fullest.max(*counts.iter().max().unwrap());
        }
        assert!(fullest <= cap, "{fullest} > {cap}");
        assert!(fullest as f64 > n as f64 / b as f64 + 100.0);
    }

    #[test]
    fn the_code_is_deterministic_per_key_and_differs_between_keys() {
        let (a, b) = (Code::new(&[1; 16], &[2; 16]), Code::new(&[1; 16], &[3; 16]));
        let items = [5u128, 6, 5];
        let (mut x, mut y) = (vec![0u8; 3 * ROW], vec![0u8; 3 * ROW]);
        a.encode(&items, &mut x);
        b.encode(&items, &mut y);
        assert_eq!(x[..ROW], x[2 * ROW..]);
        assert_ne!(x[..ROW], x[ROW..2 * ROW]);
        assert_ne!(x, y);
        // Each 16-byte quarter uses its own key.
        assert_ne!(x[..16], x[16..32]);
    }

    #[test]
    fn bins_are_in_range_and_spread() {
        let h = BinHash::new(&[9; 16], 1000);
        let items: Vec<u128> = (0..10_000u128).map(|i| i * 0x9E37_79B9).collect();
        let mut out = Vec::new();
        h.bins_of(&items, &mut out);
        assert_eq!(out.len(), 3 * items.len());
        let mut counts = vec![0u32; 1000];
        out.iter().for_each(|b| counts[*b as usize] += 1);
        // 30 per bin on average; a uniform spread keeps every bin within 5 sd of it.
        assert!(counts.iter().all(|c| (3..=60).contains(c)), "{counts:?}");
    }

    #[test]
    fn outputs_keep_exactly_their_width() {
        let o = output(&[1u8; ROW], 10);
        assert_eq!(o >> 80, 0);
        assert_ne!(o, 0);
        assert_eq!(output(&[1u8; ROW], 16) & ((1u128 << 80) - 1), o);
    }
}
