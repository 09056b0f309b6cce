//! The receiver's cuckoo table: every item in one of its [`HASHES`] bins, at most one item a
//! bin, no stash (PSZ18 §3.2.2). Insertion is the random walk: an item that finds its bin
//! taken evicts the occupant, which moves to one of its other bins.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::HASHES;

/// An empty bin.
pub(crate) const EMPTY: u32 = u32::MAX;

/// Evictions one insertion may cause before the table is declared failed.
const MAX_KICKS: usize = 2_000;

/// Bin → (item, which of its hashes put it there).
pub(crate) struct Table {
    pub(crate) item: Vec<u32>,
    pub(crate) hash: Vec<u8>,
}

/// Places items `0..n` whose bins are `positions[HASHES·i ..]`. `None` when the walk fails
/// (the caller draws a new hash key). The walk's coin flips only steer the placement, which
/// stays on this side; they are seeded from `seed`.
pub(crate) fn build(positions: &[u32], bins: usize, seed: u64) -> Option<Table> {
    let n = positions.len() / HASHES;
    let mut item = vec![EMPTY; bins];
    let mut hash = vec![0u8; bins];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    for start in 0..n as u32 {
        let (mut cur, mut h) = (start, 0usize);
        let mut placed = false;
        for _ in 0..MAX_KICKS {
            // A free bin among the item's choices first: fewer evictions.
            let own = &positions[cur as usize * HASHES..(cur as usize + 1) * HASHES];
            if let Some(free) = (0..HASHES).find(|k| item[own[*k] as usize] == EMPTY) {
                let b = own[free] as usize;
                item[b] = cur;
                hash[b] = free as u8;
                placed = true;
                break;
            }
            let b = own[h] as usize;
            let (evicted, evicted_h) = (item[b], hash[b]);
            item[b] = cur;
            hash[b] = h as u8;
            cur = evicted;
            // The evicted item goes to one of its other bins.
            h = (usize::from(evicted_h) + rng.random_range(1..HASHES)) % HASHES;
        }
        if !placed {
            return None;
        }
    }
    Some(Table { item, hash })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ot::{BinHash, bins_for};

    fn check(table: &Table, positions: &[u32], n: usize) {
        let mut seen = vec![false; n];
        for (b, (i, h)) in table.item.iter().zip(&table.hash).enumerate() {
            if *i != EMPTY {
                assert_eq!(positions[*i as usize * HASHES + *h as usize] as usize, b);
                assert!(!seen[*i as usize], "item {i} placed twice");
                seen[*i as usize] = true;
            }
        }
        assert!(seen.iter().all(|s| *s), "an item was lost");
    }

    #[test]
    fn every_item_lands_in_one_of_its_own_bins_at_the_stated_load() {
        for n in [0usize, 1, 2, 100, 5_000, 100_000] {
            let bins = bins_for(n as u64);
            let items: Vec<u128> = (0..n as u128)
                .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
                .collect();
            let mut positions = Vec::new();
            BinHash::new(&[n as u8; 16], bins).bins_of(&items, &mut positions);
            let table = build(&positions, bins as usize, 1).expect("cuckoo hashing failed");
            check(&table, &positions, n);
        }
    }

    #[test]
    fn an_overfull_table_fails_instead_of_looping() {
        // Four items that all hash to the same three bins cannot fit.
        let positions = [0u32, 1, 2].repeat(4);
        assert!(build(&positions, 3, 7).is_none());
    }
}
