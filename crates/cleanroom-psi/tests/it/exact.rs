//! Exact results against a plaintext computation on seeded random sets: empty, disjoint,
//! identical, duplicate-laden, very unequal, and several identifier kinds in a cascade.

use std::collections::{BTreeMap, HashSet};

use cleanroom_psi::intersection::UNMATCHED;
use cleanroom_psi::{MatchCounts, Outcome, ProtocolKind};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::{Records, Run, run};

type Tuple = Vec<Option<String>>;

/// The sender's identifiers per kind.
fn sender_sets(s: &Records, k: usize) -> Vec<HashSet<String>> {
    let mut sets = vec![HashSet::new(); k];
    for (ids, _) in &s.rows {
        for (i, id) in ids.iter().enumerate() {
            if let Some(id) = id {
                sets[i].insert(id.clone());
            }
        }
    }
    sets
}

fn first_match(t: &Tuple, sets: &[HashSet<String>]) -> Option<usize> {
    (0..t.len()).find(|k| t[*k].as_ref().is_some_and(|id| sets[*k].contains(id)))
}

/// Distinct records of the values holder (rows without any identifier dropped), values
/// clamped, summed over duplicate rows, and the record's total clamped again.
fn distinct(r: &Records, max: i64) -> BTreeMap<Tuple, i64> {
    let mut m = BTreeMap::new();
    for (ids, v) in &r.rows {
        if ids.iter().all(|i| i.is_none()) {
            continue;
        }
        *m.entry(ids.clone()).or_insert(0) += (*v).clamp(0, max);
    }
    m.values_mut().for_each(|v| *v = (*v).min(max));
    m
}

fn plain_cardinality(r: &Records, s: &Records, k: usize) -> Vec<i64> {
    let sets = sender_sets(s, k);
    let mut c = vec![0i64; k];
    for t in distinct(r, 0).keys() {
        if let Some(m) = first_match(t, &sets) {
            c[m] += 1;
        }
    }
    c
}

fn plain_rows(r: &Records, s: &Records, k: usize) -> Vec<u8> {
    let sets = sender_sets(s, k);
    r.rows
        .iter()
        .map(|(t, _)| first_match(t, &sets).map_or(UNMATCHED, |m| m as u8))
        .collect()
}

fn plain_sum(r: &Records, s: &Records, k: usize, max: i64) -> (Vec<i64>, Vec<i64>) {
    let sets = sender_sets(s, k);
    let (mut c, mut sum) = (vec![0i64; k], vec![0i64; k]);
    for (t, v) in distinct(r, max) {
        if let Some(m) = first_match(&t, &sets) {
            c[m] += 1;
            sum[m] += v;
        }
    }
    (c, sum)
}

/// Checks every protocol on one pair of inputs.
fn check_all(kinds: &[&'static str], r: &Records, s: &Records) {
    let k = kinds.len();

    let (ro, so, _) = run(&Run::new(ProtocolKind::Cardinality, kinds), r, s);
    let want = MatchCounts::new(plain_cardinality(r, s, k), false);
    assert_eq!(ro, Outcome::Cardinality(want.clone()));
    assert_eq!(so, Outcome::Cardinality(want));

    for protocol in [ProtocolKind::Intersection, ProtocolKind::IntersectionOt] {
        check_intersection(protocol, kinds, r, s);
    }

    let run_sum = Run::new(ProtocolKind::SumToValuesHolder, kinds);
    let (ro, so, _) = run(&run_sum, r, s);
    let (c, sums) = plain_sum(r, s, k, run_sum.max_value as i64);
    let Outcome::Sum(out) = ro else {
        panic!("{ro:?}")
    };
    assert_eq!(out.counts, MatchCounts::new(c.clone(), false));
    assert_eq!(out.sums, sums);
    assert_eq!(out.total_sum, sums.iter().sum::<i64>());
    assert_eq!(so, Outcome::SumCounts(MatchCounts::new(c, false)));

    check_sum_to_the_party_without_values(kinds, r, s);
}

/// The intersection on either engine: the receiver's rows and kinds as the plaintext says;
/// the sender learns the receiver's number of distinct identifiers.
fn check_intersection(protocol: ProtocolKind, kinds: &[&'static str], r: &Records, s: &Records) {
    check_intersection_as(&Run::new(protocol, kinds), r, s)
}

fn check_intersection_as(cfg: &Run, r: &Records, s: &Records) {
    let (protocol, k) = (cfg.protocol, cfg.kinds.len());
    let (ro, so, _) = run(cfg, r, s);
    let rows = plain_rows(r, s, k);
    let Outcome::Intersection(out) = ro else {
        panic!("{protocol:?} {ro:?}")
    };
    assert_eq!(out.row_kinds, rows, "{protocol:?}");
    let mut per_kind = vec![0i64; k];
    rows.iter()
        .filter(|x| **x != UNMATCHED)
        .for_each(|x| per_kind[*x as usize] += 1);
    assert_eq!(out.counts, MatchCounts::new(per_kind, false));
    let distinct_ids: u64 = (0..k)
        .map(|i| {
            r.rows
                .iter()
                .filter_map(|(t, _)| t[i].clone())
                .collect::<HashSet<_>>()
                .len() as u64
        })
        .sum();
    assert_eq!(
        so,
        Outcome::Answered {
            identifiers: distinct_ids
        }
    );
}

/// The default sum: `s` (identifiers only) is the receiver and learns the count and the sum of
/// `r`'s values over the intersection; `r` holds the values and learns nothing.
fn check_sum_to_the_party_without_values(kinds: &[&'static str], r: &Records, s: &Records) {
    let k = kinds.len();
    let run_sum = Run::new(ProtocolKind::Sum, kinds);
    let (learner, holder, _) = run(&run_sum, s, r);
    let (c, sums) = plain_sum(r, s, k, run_sum.max_value as i64);
    let Outcome::Sum(out) = learner else {
        panic!("{learner:?}")
    };
    assert_eq!(out.counts, MatchCounts::new(c, false));
    assert_eq!(out.sums, sums);
    assert_eq!(out.total_sum, sums.iter().sum::<i64>());
    assert!(!out.noisy);
    assert_eq!(
        holder,
        Outcome::SumAnswered {
            records: distinct(r, 0).len() as u64
        }
    );
}

fn ids(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}@example.com")).collect()
}

#[test]
fn edge_cases_single_kind() {
    let kinds = &["email"];
    let empty = Records::default();
    let a = Records::single(&ids("a", 0..40));
    let b = Records::single(&ids("a", 20..90));
    let disjoint = Records::single(&ids("z", 0..30));
    check_all(kinds, &empty, &empty);
    check_all(kinds, &empty, &a);
    check_all(kinds, &a, &empty);
    check_all(kinds, &a, &disjoint);
    check_all(kinds, &a, &a);
    check_all(kinds, &a, &b);
    check_all(kinds, &b, &a);
    // Very unequal sizes, both ways round.
    let tiny = Records::single(&ids("a", 35..38));
    let big = Records::single(&ids("a", 0..600));
    check_all(kinds, &tiny, &big);
    check_all(kinds, &big, &tiny);
}

fn random_records(
    rng: &mut Xoshiro256PlusPlus,
    n: usize,
    k: usize,
    universe: u32,
    absent: f64,
) -> Records {
    let rows = (0..n)
        .map(|_| {
            let person = rng.random_range(0..universe);
            let ids = (0..k)
                .map(|kind| {
                    if rng.random_bool(absent) {
                        None
                    } else if rng.random_bool(0.1) {
                        // An identifier of this kind belonging to somebody else.
                        Some(format!("k{kind}-p{}", rng.random_range(0..universe)))
                    } else {
                        Some(format!("k{kind}-p{person}"))
                    }
                })
                .collect();
            (ids, rng.random_range(-5..1500i64))
        })
        .collect();
    Records { rows }
}

#[test]
fn random_sets_with_duplicates_single_kind() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0x5eed);
    for round in 0..6 {
        // Small universes make many duplicates on both sides.
        let universe = [10, 50, 200, 1000, 30, 400][round];
        let nr = rng.random_range(0..250);
        let ns = rng.random_range(0..250);
        let r = random_records(&mut rng, nr, 1, universe, 0.0);
        let s = random_records(&mut rng, ns, 1, universe, 0.0);
        check_all(&["email"], &r, &s);
    }
}

#[test]
fn random_sets_cascade_of_three_kinds() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0xca5c);
    for round in 0..5 {
        let universe = [40, 150, 600, 20, 300][round];
        let nr = rng.random_range(0..200);
        let ns = rng.random_range(0..200);
        let r = random_records(&mut rng, nr, 3, universe, 0.3);
        let s = random_records(&mut rng, ns, 3, universe, 0.3);
        check_all(&["email", "phone", "maid"], &r, &s);
    }
}

#[test]
fn cascade_counts_a_record_once_on_its_best_kind() {
    let kinds = &["email", "phone"];
    let row = |e: Option<&str>, p: Option<&str>, v: i64| {
        (vec![e.map(str::to_owned), p.map(str::to_owned)], v)
    };
    let r = Records {
        rows: vec![
            row(Some("a"), Some("1"), 10), // both match: counts for email only
            row(Some("b"), Some("2"), 20), // phone only
            row(None, Some("1"), 40),      // phone only (no email)
            row(Some("c"), None, 80),      // nothing
            row(None, None, 160),          // no identifiers at all
            row(Some("a"), Some("1"), 5),  // duplicate record: merged, value added
        ],
    };
    let s = Records {
        rows: vec![
            row(Some("a"), None, 0),
            row(None, Some("1"), 0),
            row(Some("x"), Some("2"), 0),
        ],
    };
    check_all(kinds, &r, &s);
    let (ro, _, _) = run(&Run::new(ProtocolKind::SumToValuesHolder, kinds), &r, &s);
    let Outcome::Sum(out) = ro else { panic!() };
    assert_eq!(out.counts.per_kind, vec![1, 2]);
    assert_eq!(out.sums, vec![15, 60]);
    // The same with the sum going to the party without values.
    let (learner, _, _) = run(&Run::new(ProtocolKind::Sum, kinds), &s, &r);
    let Outcome::Sum(out) = learner else { panic!() };
    assert_eq!(out.counts.per_kind, vec![1, 2]);
    assert_eq!(out.sums, vec![15, 60]);
    assert_eq!(out.total_sum, 75);
    let (ro, _, _) = run(&Run::new(ProtocolKind::Intersection, kinds), &r, &s);
    let Outcome::Intersection(out) = ro else {
        panic!()
    };
    assert_eq!(out.row_kinds, vec![0, 1, 1, UNMATCHED, UNMATCHED, 0]);
    assert_eq!(
        out.matched_rows().map(|(i, _)| i).collect::<Vec<_>>(),
        vec![0, 1, 2, 5]
    );
}

#[test]
fn noise_is_applied_when_either_side_asks() {
    let r = Records::single(&ids("a", 0..60));
    let s = Records::single(&ids("a", 30..90));
    let mut run_c = Run::new(ProtocolKind::Cardinality, &["email"]);
    run_c.count_epsilon = Some(0.5);
    let (ro, so, _) = run(&run_c, &r, &s);
    let (Outcome::Cardinality(a), Outcome::Cardinality(b)) = (&ro, &so) else {
        panic!()
    };
    assert_eq!(a, b, "both sides get the same released value");
    assert!(a.noisy);
    // Discrete Laplace with scale 2: beyond 60 in either direction has probability e^-30.
    assert!((a.total - 30).abs() < 60, "{a:?}");

    let mut run_s = Run::new(ProtocolKind::SumToValuesHolder, &["email"]);
    run_s.sum_epsilon = Some(1.0);
    run_s.max_value = 100;
    let (ro, _, _) = run(&run_s, &r, &s);
    let Outcome::Sum(out) = ro else { panic!() };
    assert!(out.noisy && !out.counts.noisy);
    assert_eq!(out.counts.total, 30);
    // Each value is 1; noise scale 100: beyond 45 scales is below 1e-19.
    assert!((out.total_sum - 30).abs() <= 4500, "{out:?}");
}

#[test]
fn sum_noise_to_the_party_without_values_is_added_by_the_values_holder() {
    // The learner `s` has 60 identifiers, the values holder `r` 60 records of value 7, and 30
    // of them match: the exact sum is 210.
    let learner = Records::single(&ids("a", 30..90));
    let mut holder = Records::single(&ids("a", 0..60));
    holder.rows.iter_mut().for_each(|r| r.1 = 7);
    let mut run_s = Run::new(ProtocolKind::Sum, &["email"]);
    run_s.sum_epsilon = Some(1.0);
    run_s.max_value = 10;
    let mut released = Vec::new();
    for _ in 0..8 {
        let (lo, _, _) = run(&run_s, &learner, &holder);
        let Outcome::Sum(out) = lo else { panic!() };
        assert!(out.noisy && !out.counts.noisy);
        // The learner finds the matches itself: its count is exact.
        assert_eq!(out.counts.total, 30);
        // Scale 10: beyond 45 scales (the decryption allowance) is below 1e-19.
        assert!((out.total_sum - 210).abs() <= 450, "{out:?}");
        released.push(out.total_sum);
    }
    // Eight draws of discrete Laplace with scale 10 are all equal with probability < 1e-6:
    // the learner does not see the exact sum.
    assert!(released.iter().any(|s| *s != 210), "{released:?}");
}

#[test]
fn ot_intersection_with_one_side_a_thousand_times_larger() {
    let kinds = &["email"];
    let small = Records::single(&ids("a", 4_990..5_010));
    let large = Records::single(&ids("a", 0..20_000));
    check_intersection(ProtocolKind::IntersectionOt, kinds, &small, &large);
    check_intersection(ProtocolKind::IntersectionOt, kinds, &large, &small);
}

/// The OT intersection in many buckets, with either side's items in memory or sealed on disk,
/// finds exactly what the plaintext intersection finds, on the edge cases and on random
/// cascades.
#[test]
fn ot_intersection_in_buckets_and_from_disk_is_exact() {
    let kinds = &["email"];
    let ot = |per_bucket, spill| {
        Run::new(ProtocolKind::IntersectionOt, kinds).bucketed(per_bucket, spill)
    };
    let both_disk = [Some(0), Some(0)];
    let a = Records::single(&ids("a", 0..600));
    let b = Records::single(&ids("a", 300..900));
    let c = Records::single(&ids("c", 0..600));
    let none = Records::default();
    for (r, s) in [
        (&a, &b),
        (&a, &a),
        (&a, &c),
        (&none, &a),
        (&a, &none),
        (&none, &none),
    ] {
        // 600 items in buckets of about 20 → 32 buckets; of about 1 → 256.
        check_intersection_as(&ot(20, both_disk), r, s);
        check_intersection_as(&ot(1, [None, Some(0)]), r, s);
    }
    // One side a thousand times larger, in buckets, the larger one spilled.
    let small = Records::single(&ids("a", 4_990..5_010));
    let large = Records::single(&ids("a", 0..20_000));
    check_intersection_as(&ot(500, [None, Some(64 * 1024)]), &small, &large);
    check_intersection_as(&ot(500, [Some(64 * 1024), None]), &large, &small);
    // Cascades of three kinds with duplicates and absent identifiers.
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0xb0c7);
    for round in 0..4 {
        let universe = [40, 300, 2000, 900][round];
        let r = random_records(&mut rng, 1500, 3, universe, 0.3);
        let s = random_records(&mut rng, 1200, 3, universe, 0.3);
        let mut cfg = ot(40, [Some(0), None]);
        cfg.kinds = vec!["email", "phone", "maid"];
        check_intersection_as(&cfg, &r, &s);
    }
}
