//! Bit matrices and the AES-CTR streams of the OT extension.
//!
//! A matrix of `rows × cols` bits is kept row-major: row `r` is `cols / 8` bytes, and bit `c`
//! of a row is bit `c % 8` of byte `c / 8` (least significant first). Transposing turns the
//! extension's 512 column streams into one 512-bit row per cuckoo bin, and back.

use aes::Aes128;
use aes::cipher::{BlockCipherEncrypt, KeyInit};

/// Transposes a `rows × cols` bit matrix (row-major, `cols / 8` bytes a row) into a
/// `cols × rows` one (`rows / 8` bytes a row). Both dimensions must be multiples of 8.
///
/// Works on 8×8 bit blocks: eight bytes, one from each of eight rows, are gathered into a
/// `u64`, transposed with three mask-and-shift rounds (Hacker's Delight §7-3), and scattered
/// to eight output rows. Safe code only; about 1 ns per 64 bits here.
pub(crate) fn transpose(input: &[u8], rows: usize, cols: usize, out: &mut [u8]) {
    assert!(
        rows.is_multiple_of(8) && cols.is_multiple_of(8),
        "dimensions must be multiples of 8"
    );
    assert_eq!(input.len(), rows * cols / 8);
    assert_eq!(out.len(), rows * cols / 8);
    let in_stride = cols / 8;
    let out_stride = rows / 8;
    for rb in 0..rows / 8 {
        for cb in 0..cols / 8 {
            let mut x = 0u64;
            for i in 0..8 {
                x |= u64::from(input[(rb * 8 + i) * in_stride + cb]) << (8 * i);
            }
            let x = transpose8(x);
            for i in 0..8 {
                out[(cb * 8 + i) * out_stride + rb] = (x >> (8 * i)) as u8;
            }
        }
    }
}

/// Transposes an 8×8 bit matrix held in a `u64`: byte `i` is row `i`, bit `j` of it column `j`.
fn transpose8(mut x: u64) -> u64 {
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^= t ^ (t << 28);
    x
}

/// An AES-128 counter-mode stream, addressed by block: the bytes from block `first` on.
/// Seekable, so the extension's columns can be produced chunk by chunk and in parallel.
pub(crate) struct Prg(Aes128);

impl Prg {
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        Prg(Aes128::new(key.into()))
    }

    /// Fills `out` (a multiple of 16 bytes) with the stream from block number `first`.
    pub(crate) fn fill(&self, first: u64, out: &mut [u8]) {
        debug_assert!(out.len().is_multiple_of(16));
        for (i, chunk) in out.chunks_exact_mut(16).enumerate() {
            chunk.copy_from_slice(&u128::from(first + i as u64).to_le_bytes());
        }
        let blocks = as_blocks(out);
        self.0.encrypt_blocks(blocks);
    }
}

/// Views a byte buffer (a multiple of 16 bytes) as AES blocks.
pub(crate) fn as_blocks(bytes: &mut [u8]) -> &mut [aes::Block] {
    let (blocks, rest) = bytes.as_chunks_mut::<16>();
    debug_assert!(rest.is_empty());
    aes::Block::cast_slice_from_core_mut(blocks)
}

/// XORs `src` into `dst`, eight bytes at a time.
pub(crate) fn xor_into(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    let (d8, d_rest) = dst.as_chunks_mut::<8>();
    let (s8, s_rest) = src.as_chunks::<8>();
    for (d, s) in d8.iter_mut().zip(s8) {
        *d = (u64::from_ne_bytes(*d) ^ u64::from_ne_bytes(*s)).to_ne_bytes();
    }
    for (d, s) in d_rest.iter_mut().zip(s_rest) {
        *d ^= s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(m: &[u8], stride: usize, r: usize, c: usize) -> bool {
        (m[r * stride + c / 8] >> (c % 8)) & 1 == 1
    }

    #[test]
    fn transpose_moves_every_bit_and_is_its_own_inverse() {
        let (rows, cols) = (24, 512);
        let input: Vec<u8> = (0..rows * cols / 8)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2])
            .collect();
        let mut out = vec![0u8; input.len()];
        transpose(&input, rows, cols, &mut out);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    bit(&input, cols / 8, r, c),
                    bit(&out, rows / 8, c, r),
                    "({r}, {c})"
                );
            }
        }
        let mut back = vec![0u8; input.len()];
        transpose(&out, cols, rows, &mut back);
        assert_eq!(back, input);
    }

    #[test]
    fn the_stream_is_addressable_by_block_and_matches_aes_ctr() {
        let prg = Prg::new(&[7u8; 16]);
        let mut whole = vec![0u8; 16 * 10];
        prg.fill(0, &mut whole);
        let mut tail = vec![0u8; 16 * 4];
        prg.fill(6, &mut tail);
        assert_eq!(&whole[96..], &tail[..]);
        // Block 3 is AES_k(3 as a little-endian 128-bit counter).
        let mut b = aes::Block::from(3u128.to_le_bytes());
        Aes128::new(&[7u8; 16].into()).encrypt_block(&mut b);
        assert_eq!(&whole[48..64], b.as_slice());
        assert_ne!(&whole[..16], &whole[16..32]);
    }

    #[test]
    fn xor_into_handles_ragged_lengths() {
        let mut a = vec![0xF0u8; 13];
        xor_into(&mut a, &[0xFFu8; 13]);
        assert_eq!(a, vec![0x0Fu8; 13]);
    }
}
