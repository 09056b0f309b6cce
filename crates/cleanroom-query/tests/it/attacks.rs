//! The privacy promises, tested as an attacker would test them, end to end through the checker,
//! the rewrite, DataFusion and the release. Each test fails if the protection it checks is
//! removed (the "power" halves run the same attack against an unprotected engine).
//!
//! OpenDP samples from OS randomness and cannot be seeded; bounds are chosen so a correct engine
//! fails an assertion with probability below 10⁻⁶.

use std::sync::Arc;

use cleanroom_query::release::release;
use cleanroom_query::rewrite::{ExactGroup, RunOptions, execute, execute_counted};
use cleanroom_query::{Analysis, Catalog, Cell, PrivacyRequest, prepare, run};
use cleanroom_testkit::empirical::epsilon_lower_bound;

use crate::*;

const ALPHA: f64 = 1e-6;

/// The brand: 1,000 customers in gotham. The partner: the same 1,000 people in gotham plus
/// the target, alone in metropolis.
fn singling_out_fixture(with_target: bool) -> Fixture {
    let mut f = Fixture::new();
    let mut brand: Vec<String> = (0..1000)
        .map(|i| format!("c{i},e{i},gotham,25-34,1,1.0,2025-01-01"))
        .collect();
    brand.push("target,t@x,metropolis,25-34,1,1.0,2025-01-01".into());
    let mut partner: Vec<String> = (0..1000)
        .map(|i| format!("u{i},e{i},gotham,true,1"))
        .collect();
    if with_target {
        partner.push("victim,t@x,metropolis,true,1".into());
    }
    f.add(
        "brand",
        "brand",
        BRAND_SCHEMA,
        brand_policy(),
        &csv(BRAND_HEADER, brand),
    );
    f.add(
        "partner",
        "partner",
        PUBLISHER_SCHEMA,
        publisher_policy(),
        &csv(PUBLISHER_HEADER, partner),
    );
    f
}

const OVERLAP_BY_CITY: &str = "SELECT p.region, COUNT(DISTINCT b.customer_id) AS people \
     FROM brand b JOIN partner p ON b.email = p.email GROUP BY p.region";

async fn exact_groups(a: &Analysis, cat: &Catalog) -> Vec<ExactGroup> {
    execute(
        &a.spec,
        cat,
        RunOptions {
            bound_contributions: true,
            partitions: 2,
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn singling_out_by_a_crafted_upload_never_shows_the_target() {
    let f = singling_out_fixture(true);
    let cat = f.catalog();
    let a = prepare(OVERLAP_BY_CITY, &cat, REQ).await.unwrap();
    // End to end a few times, then the release step many times over the same exact groups.
    for _ in 0..5 {
        let r = run(&a, &cat, 2).await.unwrap();
        assert_eq!(r.rows.len(), 1, "{r:?}");
        assert_eq!(r.rows[0][0], Cell::Text("gotham".into()));
    }
    let groups = exact_groups(&a, &cat).await;
    assert_eq!(
        groups.len(),
        1,
        "the engine's exact minimum already drops metropolis"
    );
    // Even if the exact minimum were lowered to 1, private selection keeps the target out.
    let lowered: Arc<Catalog> = {
        let mut tables = f.tables.clone();
        for t in &mut tables {
            t.policy.min_group_size = 2;
        }
        Catalog::new(tables)
    };
    let a = prepare(OVERLAP_BY_CITY, &lowered, REQ).await.unwrap();
    let mut groups = exact_groups(&a, &lowered).await;
    // Put the target's one-person group back in front of the selection.
    let mut target = groups[0].clone();
    target.keys = vec![datafusion::common::ScalarValue::Utf8(Some(
        "metropolis".into(),
    ))];
    target.units = vec![1, 1];
    groups.push(target);
    let mut seen = 0;
    for _ in 0..20_000 {
        let r = release(&a.spec, &a.calibration, groups.clone(), groups.len()).unwrap();
        seen += r
            .rows
            .iter()
            .filter(|row| row[0] == Cell::Text("metropolis".into()))
            .count();
    }
    // δ = 1e-7: expected appearances ≤ 0.002; three or more has probability < 1e-9.
    assert!(seen <= 2, "the target's group appeared {seen} times");

    // Power: a plain "at least k people" rule on exact counts with k lowered to 1 would show it
    // every time. (The partner controls its upload, so a fixed k alone is no defence.)
    assert!(groups.iter().any(|g| g.units == vec![1, 1]));
}

#[tokio::test]
async fn the_number_of_groups_left_out_does_not_single_out_a_crafted_group() {
    // The partner uploads the victim alone in metropolis, or not, and reads how many groups
    // the overlap by city left out: an exact number would say 1 or 0.
    let req = PrivacyRequest {
        epsilon: 10.0,
        delta: 1e-7,
    };
    let (with, without) = (singling_out_fixture(true), singling_out_fixture(false));
    let (cw, co) = (with.catalog(), without.catalog());
    let a = prepare(OVERLAP_BY_CITY, &cw, req).await.unwrap();
    let opts = RunOptions {
        bound_contributions: true,
        partitions: 2,
    };
    let (gw, fw) = execute_counted(&a.spec, &cw, opts).await.unwrap();
    let (go, fo) = execute_counted(&a.spec, &co, opts).await.unwrap();
    assert_eq!(
        (gw.len(), fw, go.len(), fo),
        (1, 2, 1, 1),
        "metropolis is formed only with the victim, and never comes out"
    );
    let left_out = |gs: &[ExactGroup], formed: usize| -> i64 {
        let r = release(&a.spec, &a.calibration, gs.to_vec(), formed).unwrap();
        assert_eq!(r.rows.len(), 1, "{r:?}");
        r.left_out.expect("counted").groups
    };
    let runs = 40_000;
    let (mut h1, mut h0) = (0, 0);
    for _ in 0..runs {
        h1 += u64::from(left_out(&gw, fw) >= 1);
        h0 += u64::from(left_out(&go, fo) >= 1);
    }
    let lb = epsilon_lower_bound(h1, h0, runs, ALPHA);
    eprintln!("groups left out: TPR {h1}/{runs}, FPR {h0}/{runs}, epsilon lower bound {lb:.3}");
    // The count's own share of the partner's charge bounds what it gives away.
    let count = a.calibration.group_count.as_ref().unwrap();
    let charged = count
        .cost_for(a.calibration.rows_changed[1])
        .unwrap()
        .epsilon
        .as_f64();
    assert!(
        lb <= charged,
        "empirical epsilon {lb} exceeds the {charged} charged for the count"
    );
    // The check has power: at this epsilon the count does move with the victim.
    assert!(lb > 0.1, "lower bound {lb} too weak to detect anything");
}

/// Counts how often the attacker's event "the released overlap is at least `t`" happens on the
/// dataset with the target and on the one without.
fn differencing_hits(
    a: &Analysis,
    with: &[ExactGroup],
    without: &[ExactGroup],
    t: i64,
    runs: u64,
) -> (u64, u64) {
    let mut h1 = 0;
    let mut h0 = 0;
    let value = |gs: &[ExactGroup]| -> i64 {
        let r = release(&a.spec, &a.calibration, gs.to_vec(), gs.len()).unwrap();
        match r.rows.first().map(|row| &row[0]) {
            Some(Cell::Int(v)) => *v,
            _ => i64::MIN,
        }
    };
    for _ in 0..runs {
        h1 += u64::from(value(with) >= t);
        h0 += u64::from(value(without) >= t);
    }
    (h1, h0)
}

#[tokio::test]
async fn differencing_two_uploads_that_differ_by_one_person_is_bounded_by_epsilon() {
    // The partner uploads twice, once with and once without the target, and asks the overlap.
    let sql = "SELECT COUNT(DISTINCT b.customer_id) AS people FROM brand b JOIN partner p ON b.email = p.email";
    let with = singling_out_fixture(true);
    let without = singling_out_fixture(false);
    let (cw, co) = (with.catalog(), without.catalog());
    let a = prepare(sql, &cw, REQ).await.unwrap();
    let a0 = prepare(sql, &co, REQ).await.unwrap();
    let gw = exact_groups(&a, &cw).await;
    let go = exact_groups(&a0, &co).await;
    assert_eq!(gw[0].units[0], 1001);
    assert_eq!(go[0].units[0], 1000);
    let runs = 40_000;
    let (h1, h0) = differencing_hits(&a, &gw, &go, 1001, runs);
    let lb = epsilon_lower_bound(h1, h0, runs, ALPHA);
    eprintln!("differencing: TPR {h1}/{runs}, FPR {h0}/{runs}, epsilon lower bound {lb:.3}");
    let charged = a.calibration.costs[1].epsilon.as_f64();
    assert!(
        lb <= charged,
        "empirical epsilon {lb} exceeds the {charged} charged"
    );
    // The check has power: the attacker learns something measurable (the bound is not vacuous).
    assert!(lb > 0.1, "lower bound {lb} too weak to detect anything");
}

#[tokio::test]
async fn join_amplification_is_caught_without_bounding_and_bounded_with_it() {
    // The partner repeats the target's email under 500 made-up people: without contribution
    // bounding after the join, the target moves the overlap by 500, not by at most 2.
    let build = |with_target: bool| {
        let mut f = Fixture::new();
        let mut brand: Vec<String> = (0..1000)
            .map(|i| format!("c{i},e{i},gotham,25-34,1,1.0,2025-01-01"))
            .collect();
        if with_target {
            brand.push("target,t@x,gotham,25-34,1,1.0,2025-01-01".into());
        }
        let mut partner: Vec<String> = (0..1000)
            .map(|i| format!("u{i},e{i},gotham,true,1"))
            .collect();
        partner.extend((0..500).map(|i| format!("fake{i},t@x,gotham,true,1")));
        f.add(
            "brand",
            "brand",
            BRAND_SCHEMA,
            brand_policy(),
            &csv(BRAND_HEADER, brand),
        );
        f.add(
            "partner",
            "partner",
            PUBLISHER_SCHEMA,
            publisher_policy(),
            &csv(PUBLISHER_HEADER, partner),
        );
        f
    };
    let sql = "SELECT COUNT(*) AS pairs FROM brand b JOIN partner p ON b.email = p.email";
    let (fw, fo) = (build(true), build(false));
    let (cw, co) = (fw.catalog(), fo.catalog());
    let a = prepare(sql, &cw, REQ).await.unwrap();
    let runs = 20_000;
    let exec = |cat: Arc<Catalog>, bound: bool, a: Analysis| async move {
        execute(
            &a.spec,
            &cat,
            RunOptions {
                bound_contributions: bound,
                partitions: 2,
            },
        )
        .await
        .unwrap()
    };
    // Protected engine: the brand's target changes at most Δ = 2 joined rows.
    let gw = exec(cw.clone(), true, a.clone()).await;
    let go = exec(co.clone(), true, a.clone()).await;
    let (h1, h0) = differencing_hits(&a, &gw, &go, 1001, runs);
    let lb = epsilon_lower_bound(h1, h0, runs, ALPHA);
    eprintln!("join amplification, bounded: epsilon lower bound {lb:.3}");
    assert!(lb <= a.calibration.costs[0].epsilon.as_f64(), "{lb}");
    // Unprotected engine, same noise: the target's 500 copies give it away.
    let gw = exec(cw, false, a.clone()).await;
    let go = exec(co, false, a.clone()).await;
    let (h1, h0) = differencing_hits(&a, &gw, &go, 1250, runs);
    let lb = epsilon_lower_bound(h1, h0, runs, ALPHA);
    eprintln!("join amplification, unbounded: epsilon lower bound {lb:.3}");
    assert!(
        lb > 2.0,
        "the attack should succeed without bounding (bound {lb})"
    );
}
