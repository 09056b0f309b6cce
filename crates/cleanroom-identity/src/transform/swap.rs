//! Data swapping: values of one column exchanged between records, so the column's multiset
//! (every total, count and distribution of the column on its own) is exactly preserved while
//! the link between that value and the rest of the record is broken for the swapped records.
//!
//! - `rank`: rank swapping (Moore 1996). Records are sorted by the column; going up the ranks,
//!   each record not yet swapped is chosen with probability `rate` and swapped with a record
//!   drawn uniformly from the not yet swapped ones at most `window · n` ranks above it, so a
//!   value moves only to a record with a similar value.
//! - `stratum`: records sharing the values of the `within` columns form a stratum; within each,
//!   records are chosen with probability `rate`, shuffled, and swapped in pairs, so the column
//!   stays consistent with the stratum (e.g. a district swapped only between people of the same
//!   age band).
//!
//! Randomness: ChaCha20 seeded by the operating system. The realised share of records swapped
//! is in the report. Memory: the table is held in memory (plus one index per row).
//!
//! Risk: an attacker matching on the swapped column links a share `rate` of records to the
//! wrong person, and cannot tell which. Utility: the column alone is untouched; its
//! relationship with other columns is weakened in proportion to the rate (and, for rank
//! swapping, to the window).

use std::collections::BTreeMap;

use rand::RngExt;

use super::{Outcome, Table, TransformRng};
use crate::IdentityError;

#[derive(Debug, Clone, PartialEq)]
pub enum Swap {
    /// Partner within `window · n` ranks (0 < window ≤ 1).
    Rank { window: f64, rate: f64 },
    /// Partner with the same values of the `within` output columns.
    Stratum { within: Vec<String>, rate: f64 },
}

impl Swap {
    pub fn describe(&self) -> String {
        match self {
            Swap::Rank { window, rate } => format!(
                "rank swapping, rate {} of records, partners within {} of the ranks",
                super::format_number(*rate, 4),
                crate::risk::percent(*window)
            ),
            Swap::Stratum { within, rate } => format!(
                "swapping within strata of {}, rate {} of records",
                within
                    .iter()
                    .map(|w| format!("`{w}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                super::format_number(*rate, 4)
            ),
        }
    }

    pub fn apply(
        &self,
        table: &mut Table,
        col: usize,
        rng: &mut TransformRng,
        o: &mut Outcome,
    ) -> Result<(), IdentityError> {
        let pairs = match self {
            Swap::Rank { window, rate } => rank_pairs(table, col, *window, *rate, rng, o),
            Swap::Stratum { within, rate } => {
                let mut cols = Vec::new();
                for w in within {
                    cols.push(table.index(w).ok_or_else(|| {
                        IdentityError::Internal(format!("stratum column {w} not in the output"))
                    })?);
                }
                stratum_pairs(table, col, &cols, *rate, rng, o)
            }
        };
        let column = table.column_mut(col);
        let numeric = column.iter().any(|v| v.number().is_some());
        for (a, b) in pairs {
            if column[a] != column[b] {
                o.changed += 2;
            }
            let da = column[a].number();
            let db = column[b].number();
            if let (Some(x), Some(y)) = (da, db) {
                o.abs_change_sum += 2.0 * (x - y).abs();
            }
            column.swap(a, b);
            o.swapped += 2;
        }
        if numeric {
            // Mean change over every value seen, swapped or not.
            o.numbers = o.values;
        }
        o.notes.push(format!(
            "{} of {} records swapped ({})",
            o.swapped,
            o.values,
            crate::risk::percent(if o.values == 0 {
                0.0
            } else {
                o.swapped as f64 / o.values as f64
            })
        ));
        Ok(())
    }
}

/// Pairs of rows to swap by rank swapping.
fn rank_pairs(
    table: &Table,
    col: usize,
    window: f64,
    rate: f64,
    rng: &mut TransformRng,
    o: &mut Outcome,
) -> Vec<(usize, usize)> {
    let column = table.column(col);
    let mut ranked: Vec<(f64, usize)> = column
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.number().map(|x| (x, i)))
        .collect();
    o.values = ranked.len() as u64;
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let n = ranked.len();
    let w = ((window * n as f64).round() as usize).max(1);
    let mut taken = vec![false; n];
    let mut pairs = Vec::new();
    for i in 0..n {
        if taken[i] || !rng.random_bool(rate) {
            continue;
        }
        let hi = (i + w).min(n.saturating_sub(1));
        if hi <= i {
            continue;
        }
        // Uniform over the free ranks in (i, hi]: a few random probes, then a scan.
        let mut partner = None;
        for _ in 0..32 {
            let j = rng.random_range(i + 1..=hi);
            if !taken[j] {
                partner = Some(j);
                break;
            }
        }
        if partner.is_none() {
            let free: Vec<usize> = (i + 1..=hi).filter(|j| !taken[*j]).collect();
            if !free.is_empty() {
                partner = Some(free[rng.random_range(0..free.len())]);
            }
        }
        if let Some(j) = partner {
            taken[i] = true;
            taken[j] = true;
            pairs.push((ranked[i].1, ranked[j].1));
        }
    }
    pairs
}

/// Pairs of rows to swap within strata.
fn stratum_pairs(
    table: &Table,
    col: usize,
    within: &[usize],
    rate: f64,
    rng: &mut TransformRng,
    o: &mut Outcome,
) -> Vec<(usize, usize)> {
    let column = table.column(col);
    // Ordered by key so that a seeded run is reproducible.
    let mut strata: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
    let mut key = Vec::new();
    for (i, v) in column.iter().enumerate() {
        if v.is_null() {
            continue;
        }
        o.values += 1;
        key.clear();
        for c in within {
            table.column(*c)[i].encode(&mut key);
        }
        strata.entry(key.clone()).or_default().push(i);
    }
    let mut pairs = Vec::new();
    for rows in strata.values() {
        let mut chosen: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|_| rng.random_bool(rate))
            .collect();
        // Fisher–Yates.
        for i in (1..chosen.len()).rev() {
            let j = rng.random_range(0..=i);
            chosen.swap(i, j);
        }
        for p in chosen.chunks_exact(2) {
            pairs.push((p[0], p[1]));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::super::{Transform, Value};
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn outcome() -> Outcome {
        Outcome::new(&Transform::Swap {
            column: "x".into(),
            swap: Swap::Rank {
                window: 0.1,
                rate: 0.5,
            },
        })
    }

    fn sorted(col: &[Value]) -> Vec<String> {
        let mut v: Vec<String> = col.iter().map(|x| format!("{x:?}")).collect();
        v.sort();
        v
    }

    proptest! {
        /// Both methods preserve the column's multiset exactly, and leave other columns alone.
        #[test]
        fn swapping_preserves_the_multiset(
            xs in proptest::collection::vec(proptest::option::of(-50i64..50), 0..300),
            strata in proptest::collection::vec(0u8..4, 300),
            seed in any::<u8>(),
            rate in 0.0f64..=1.0,
        ) {
            let col: Vec<Value> = xs.iter().map(|x| x.map_or(Value::Null, Value::Int)).collect();
            let st: Vec<Value> = strata[..col.len()].iter().map(|s| Value::Text(s.to_string())).collect();
            for swap in [
                Swap::Rank { window: 0.05, rate },
                Swap::Stratum { within: vec!["s".into()], rate },
            ] {
                let mut t = Table::from_columns(vec![("x", col.clone()), ("s", st.clone())]);
                let mut rng = TransformRng::from_seed([seed; 32]);
                let mut o = outcome();
                swap.apply(&mut t, 0, &mut rng, &mut o).unwrap();
                prop_assert_eq!(sorted(t.column(0)), sorted(&col));
                prop_assert_eq!(t.column(1), &st[..]);
                // Stratum swaps never cross strata: the multiset per stratum is preserved.
                if let Swap::Stratum { .. } = swap {
                    for s in 0..4u8 {
                        let key = Value::Text(s.to_string());
                        let before: Vec<Value> = col.iter().zip(&st).filter(|(_, k)| **k == key).map(|(v, _)| v.clone()).collect();
                        let after: Vec<Value> = t.column(0).iter().zip(&st).filter(|(_, k)| **k == key).map(|(v, _)| v.clone()).collect();
                        prop_assert_eq!(sorted(&before), sorted(&after));
                    }
                }
            }
        }
    }

    #[test]
    fn rank_swaps_stay_within_the_window_and_seeded_runs_agree() {
        let col: Vec<Value> = (0..1000).map(Value::Int).collect();
        let run = |seed: u8| {
            let mut t = Table::from_columns(vec![("x", col.clone())]);
            let mut rng = TransformRng::from_seed([seed; 32]);
            let mut o = outcome();
            Swap::Rank {
                window: 0.01,
                rate: 0.5,
            }
            .apply(&mut t, 0, &mut rng, &mut o)
            .unwrap();
            (t, o)
        };
        let (t, o) = run(3);
        for (i, v) in t.column(0).iter().enumerate() {
            let Value::Int(x) = v else { panic!() };
            assert!((x - i as i64).abs() <= 10, "moved {i} to {x}");
        }
        // rate 0.5 chooses about half of the free records, each taking a partner: between a
        // third and two thirds of records end up swapped.
        assert!(o.swapped > 300 && o.swapped < 700, "{}", o.swapped);
        assert_eq!(run(3).0, t);
        assert_ne!(run(4).0, t);
    }
}
