//! Microaggregation of a numeric column (univariate, fixed group size): the numbers are sorted
//! and cut into consecutive groups of `k` (the last group takes the remainder, so every group
//! has between k and 2k − 1 values), and each value is replaced by its group's mean.
//!
//! Two passes over the column held in memory (one `(f64, row)` pair per value for the sort).
//!
//! Risk: at least k records share each value of the column, so on its own it cannot single
//! anyone out. Utility: the column's total is preserved (up to rounding of integers); values
//! move by the mean absolute change the report gives, little where values are dense.

use super::{Outcome, Value};

/// Replaces the numbers of `column` by the means of sorted groups of at least `k`.
pub fn apply(column: &mut [Value], k: usize, o: &mut Outcome) {
    let mut ranked: Vec<(f64, usize)> = column
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.number().map(|x| (x, i)))
        .collect();
    o.values = column.iter().filter(|v| !v.is_null()).count() as u64;
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let n = ranked.len();
    if n == 0 {
        return;
    }
    if n < k {
        o.notes.push(format!(
            "only {n} numbers, fewer than k = {k}: they form one group"
        ));
    }
    let groups = (n / k).max(1);
    for g in 0..groups {
        let start = g * k;
        let end = if g + 1 == groups { n } else { start + k };
        let group = &ranked[start..end];
        let mean = group.iter().map(|(x, _)| x).sum::<f64>() / group.len() as f64;
        for &(x, row) in group {
            let before = column[row].clone();
            column[row] = before.with_number(mean, 2);
            let after = column[row].number().unwrap_or(mean);
            o.numbers += 1;
            o.abs_change_sum += (after - x).abs();
            if column[row] != before {
                o.changed += 1;
            }
        }
    }
    o.notes.push(format!("{groups} groups"));
}

#[cfg(test)]
mod tests {
    use super::super::Transform;
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn outcome() -> Outcome {
        Outcome::new(&Transform::Microaggregate {
            column: "x".into(),
            k: 3,
        })
    }

    #[test]
    fn groups_of_k_get_their_mean() {
        let mut col: Vec<Value> = [1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]
            .into_iter()
            .map(Value::Float)
            .collect();
        let mut o = outcome();
        apply(&mut col, 3, &mut o);
        let xs: Vec<f64> = col.iter().filter_map(Value::number).collect();
        assert_eq!(xs, vec![2.0, 2.0, 2.0, 11.5, 11.5, 11.5, 11.5]);
        assert!((o.mean_abs_change().unwrap() - (2.0 + 4.0) / 7.0).abs() < 1e-12);
    }

    proptest! {
        /// Every value is shared by at least k records (when there are k numbers), and the
        /// column total is preserved for floats.
        #[test]
        fn every_value_is_shared_by_k(xs in proptest::collection::vec(-1e6f64..1e6, 0..200), k in 2usize..8) {
            let mut col: Vec<Value> = xs.iter().copied().map(Value::Float).collect();
            let mut o = outcome();
            apply(&mut col, k, &mut o);
            if xs.len() >= k {
                let mut counts: HashMap<u64, usize> = HashMap::new();
                for v in &col {
                    *counts.entry(v.number().unwrap().to_bits()).or_default() += 1;
                }
                prop_assert!(counts.values().all(|c| *c >= k), "{counts:?}");
            }
            let before: f64 = xs.iter().sum();
            let after: f64 = col.iter().filter_map(Value::number).sum();
            prop_assert!((before - after).abs() <= 1e-6 * (1.0 + before.abs().max(xs.iter().map(|x| x.abs()).sum())));
        }
    }
}
