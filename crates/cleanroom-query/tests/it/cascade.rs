//! `overlap_ids`: matching on a priority cascade of identifiers, against a plaintext cascade.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cleanroom_core::policy::PolicyDraft;
use cleanroom_query::cascade::{Cascade, CascadeCell};
use cleanroom_query::rewrite::RunOptions;
use cleanroom_query::templates::{self, TemplateOutput};
use cleanroom_query::{Catalog, Cell, ColumnKind, LeftOut, PrivacyRequest, QueryError, Released};

use crate::*;

const REGIONS: [&str; 4] = ["north", "south", "east", "west"];

const LEFT_SCHEMA: &[&str] = &[
    "person_id:string:privacy_unit",
    "email:string:identifier",
    "phone:string:identifier",
    "device:string:identifier",
    "maid:string:identifier",
    "region:string:dimension",
    "age_band:string:dimension",
];
const LEFT_HEADER: &str = "person_id,email,phone,device,maid,region,age_band";

const RIGHT_SCHEMA: &[&str] = &[
    "user_id:string:privacy_unit",
    "email_hash:string:identifier",
    "phone:string:identifier",
    "device:string:identifier",
    "maid:string:identifier",
    "segment:string:dimension",
];
const RIGHT_HEADER: &str = "user_id,email_hash,phone,device,maid,segment";

const KEYS: &str = "email:email_hash,phone,device";

fn left_policy() -> PolicyDraft {
    PolicyDraft {
        join_keys: vec!["email".into(), "phone".into(), "device".into()],
        dimensions: vec!["region".into()],
        analysts: vec!["publisher".into()],
        receivers: vec!["publisher".into()],
        ..Default::default()
    }
}

fn right_policy() -> PolicyDraft {
    PolicyDraft {
        join_keys: vec!["email_hash".into(), "phone".into(), "device".into()],
        dimensions: vec!["segment".into()],
        analysts: vec!["brand".into()],
        receivers: vec!["brand".into()],
        ..Default::default()
    }
}

/// One left person: id, email, phone, device, region (empty = null).
#[derive(Clone)]
struct Person {
    id: String,
    ids: [String; 3],
    region: &'static str,
}

/// One right person: id and its email, phone, device (empty = null).
#[derive(Clone)]
struct Match {
    id: String,
    ids: [String; 3],
}

/// `n` left people; right people matching them by category `(i / 4) % 6`: email only, phone
/// only, device only, email and phone (one right person), none, phone and device (two right
/// people). Some left emails and phones are null. Plus `extra` right people matching no one.
fn population(n: usize, extra: usize) -> (Vec<Person>, Vec<Match>) {
    let mut left = Vec::new();
    let mut right = Vec::new();
    for i in 0..n {
        let email = if i % 10 == 7 {
            String::new()
        } else {
            format!("e{i}")
        };
        let phone = if i % 9 == 4 {
            String::new()
        } else {
            format!("p{i}")
        };
        left.push(Person {
            id: format!("c{i}"),
            ids: [email, phone, format!("d{i}")],
            region: REGIONS[i % 4],
        });
        let (e, p, d) = (format!("e{i}"), format!("p{i}"), format!("d{i}"));
        let fresh = |k: &str| format!("x{k}{i}");
        match (i / 4) % 6 {
            0 => right.push(Match {
                id: format!("r{i}"),
                ids: [e, fresh("p"), fresh("d")],
            }),
            1 => right.push(Match {
                id: format!("r{i}"),
                ids: [fresh("e"), p, String::new()],
            }),
            2 => right.push(Match {
                id: format!("r{i}"),
                ids: [String::new(), fresh("p"), d],
            }),
            3 => right.push(Match {
                id: format!("r{i}"),
                ids: [e, p, fresh("d")],
            }),
            4 => right.push(Match {
                id: format!("r{i}"),
                ids: [fresh("e"), fresh("p"), fresh("d")],
            }),
            _ => {
                right.push(Match {
                    id: format!("r{i}a"),
                    ids: [fresh("e"), p, fresh("d")],
                });
                right.push(Match {
                    id: format!("r{i}b"),
                    ids: [String::new(), fresh("p"), d],
                });
            }
        }
    }
    for j in 0..extra {
        right.push(Match {
            id: format!("only{j}"),
            ids: [format!("oe{j}"), format!("op{j}"), format!("od{j}")],
        });
    }
    (left, right)
}

fn fixture(left: &[Person], right: &[Match]) -> Fixture {
    let mut f = Fixture::new();
    let l = left.iter().map(|p| {
        format!(
            "{},{},{},{},m{},{},25-34",
            p.id, p.ids[0], p.ids[1], p.ids[2], p.id, p.region
        )
    });
    let r = right
        .iter()
        .map(|m| format!("{},{},{},{},,a", m.id, m.ids[0], m.ids[1], m.ids[2]));
    f.add(
        "crm",
        "brand",
        LEFT_SCHEMA,
        left_policy(),
        &csv(LEFT_HEADER, l),
    );
    f.add(
        "aud",
        "publisher",
        RIGHT_SCHEMA,
        right_policy(),
        &csv(RIGHT_HEADER, r),
    );
    f
}

/// Distinct people.
type Ids<'a> = BTreeSet<&'a str>;

/// The cells of a plaintext cascade: (region or "", level) → (left people, right people).
fn plaintext(left: &[Person], right: &[Match], by: bool) -> BTreeMap<(String, usize), (i64, i64)> {
    let mut values: [HashMap<&str, BTreeSet<&str>>; 3] = Default::default();
    for m in right {
        for (k, v) in m.ids.iter().enumerate() {
            if !v.is_empty() {
                values[k].entry(v.as_str()).or_default().insert(&m.id);
            }
        }
    }
    let mut cells: BTreeMap<(String, usize), (Ids, Ids)> = BTreeMap::new();
    for p in left {
        let level =
            (0..3).find(|k| !p.ids[*k].is_empty() && values[*k].contains_key(p.ids[*k].as_str()));
        if let Some(k) = level {
            let g = if by {
                p.region.to_owned()
            } else {
                String::new()
            };
            let cell = cells.entry((g, k)).or_default();
            cell.0.insert(&p.id);
            cell.1.extend(values[k][p.ids[k].as_str()].iter().copied());
        }
    }
    cells
        .into_iter()
        .map(|(k, (l, r))| (k, (l.len() as i64, r.len() as i64)))
        .collect()
}

fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn run_template(
    cat: &Catalog,
    kv: &[(&str, &str)],
    req: PrivacyRequest,
) -> Result<(templates::TemplatePlan, TemplateOutput), QueryError> {
    let info = templates::find("overlap_ids", Some(1))?;
    let plan = templates::plan(&info, &params(kv), cat, req).await?;
    let out = templates::run(&plan, cat, 2).await?;
    Ok((plan, out))
}

fn int(c: &Cell) -> i64 {
    match c {
        Cell::Int(v) => *v,
        other => panic!("not an int: {other:?}"),
    }
}

fn text(c: &Cell) -> String {
    match c {
        Cell::Text(v) => v.clone(),
        Cell::Null => String::new(),
        other => panic!("not text: {other:?}"),
    }
}

/// The table's rows as (group, id_type) → (matched, audience).
fn rows(t: &Released, by: bool) -> BTreeMap<(String, String), (i64, i64)> {
    let g = usize::from(by);
    t.rows
        .iter()
        .map(|r| {
            let group = if by { text(&r[0]) } else { String::new() };
            ((group, text(&r[g + 1])), (int(&r[g + 2]), int(&r[g + 3])))
        })
        .collect()
}

const LABELS: [&str; 3] = ["email:email_hash", "phone", "device"];

#[tokio::test]
async fn cascade_counts_each_person_once_under_its_first_matching_identifier() {
    let (left, right) = population(600, 50);
    let f = fixture(&left, &right);
    let cat = f.exact();
    for by in [false, true] {
        let mut kv = vec![("left", "crm"), ("right", "aud"), ("keys", KEYS)];
        if by {
            kv.push(("by", "region"));
        }
        let (plan, out) = run_template(&cat, &kv, REQ).await.unwrap();
        assert!(plan.request().is_none(), "exact run");
        assert!(plan.costs().iter().all(|(_, c)| c.epsilon.as_f64() == 0.0));
        let table = &out.tables[0].1;
        assert_eq!(out.tables[0].0, "overlap_ids");
        let got = rows(table, by);
        let want = plaintext(&left, &right, by);
        let groups: BTreeSet<String> = want.keys().map(|(g, _)| g.clone()).collect();
        for g in &groups {
            let audience = left
                .iter()
                .filter(|p| !by || p.region == g.as_str())
                .count() as i64;
            let mut total = 0;
            for (k, label) in LABELS.iter().enumerate() {
                let n = want.get(&(g.clone(), k)).map_or(0, |c| c.0);
                assert!(n > 0, "every type matches someone in {g:?}");
                assert_eq!(
                    got[&(g.clone(), (*label).to_owned())],
                    (n, audience),
                    "{g:?} {label}"
                );
                total += n;
            }
            // Never double counted: the total is the people matched by any identifier.
            let any = left
                .iter()
                .filter(|p| !by || p.region == g.as_str())
                .filter(|p| plaintext(std::slice::from_ref(*p), &right, false).len() == 1)
                .count() as i64;
            assert_eq!(total, any);
            assert_eq!(got[&(g.clone(), "total".to_owned())], (total, audience));
        }
        assert_eq!(got.len(), groups.len() * 4, "{got:?}");
        // Categories 3 (email and phone) and 5 (phone and device): one count each, under the
        // first identifier — a naive per-key overlap would count them twice.
        let naive: i64 = LABELS
            .iter()
            .map(|l| {
                got.iter()
                    .filter(|((_, t), _)| t == l)
                    .map(|(_, v)| v.0)
                    .sum::<i64>()
            })
            .sum();
        let matched_any: i64 = want.values().map(|c| c.0).sum();
        assert_eq!(naive, matched_any);
    }
}

#[tokio::test]
async fn bounded_cells_equal_the_plaintext_cascade_including_null_identifiers() {
    // Every identifier value is unique: bounding must change nothing, even though many emails
    // and phones are null (a null is not a value and is never bounded away).
    let (left, right) = population(600, 50);
    let f = fixture(&left, &right);
    let cat = f.catalog();
    let keys = vec![
        ("email".to_owned(), "email_hash".to_owned()),
        ("phone".to_owned(), "phone".to_owned()),
        ("device".to_owned(), "device".to_owned()),
    ];
    let c = Cascade::plan(&cat, 0, 1, &keys, Some("region"), REQ).unwrap();
    let cells = c
        .execute(
            &cat,
            RunOptions {
                bound_contributions: true,
                partitions: 2,
            },
        )
        .await
        .unwrap();
    let got: BTreeMap<(String, usize), (i64, i64)> = cells
        .iter()
        .map(|c: &CascadeCell| {
            (
                (c.group.to_string(), c.level),
                (c.left_people, c.right_people),
            )
        })
        .collect();
    assert_eq!(got, plaintext(&left, &right, true));
}

#[tokio::test]
async fn noisy_cascade_is_close_to_the_truth_and_charges_both_owners() {
    let (left, right) = population(7200, 0);
    let f = fixture(&left, &right);
    let cat = f.catalog();
    let req = PrivacyRequest {
        epsilon: 8.0,
        delta: 1e-7,
    };
    let kv = [("left", "crm"), ("right", "aud"), ("keys", KEYS)];
    let (plan, out) = run_template(&cat, &kv, req).await.unwrap();
    // Costs: both datasets' owners, each within the request.
    let mut per_table: BTreeMap<usize, f64> = BTreeMap::new();
    for (t, c) in plan.costs() {
        *per_table.entry(t).or_default() += c.epsilon.as_f64();
        assert!(c.delta.as_f64() <= req.delta);
    }
    assert!(
        per_table[&0] > 0.0 && per_table[&0] <= req.epsilon + 1e-9,
        "{per_table:?}"
    );
    assert!(
        per_table[&1] > 0.0 && per_table[&1] <= req.epsilon + 1e-9,
        "{per_table:?}"
    );
    // Identical runs share one release; a different priority order is another analysis.
    let info = templates::find("overlap_ids", None).unwrap();
    let again = templates::plan(&info, &params(&kv), &cat, req)
        .await
        .unwrap();
    assert_eq!(plan.fingerprint(&cat), again.fingerprint(&cat));
    let other = templates::plan(
        &info,
        &params(&[
            ("left", "crm"),
            ("right", "aud"),
            ("keys", "phone,email:email_hash,device"),
        ]),
        &cat,
        req,
    )
    .await
    .unwrap();
    assert_ne!(plan.fingerprint(&cat), other.fingerprint(&cat));

    let table = &out.tables[0].1;
    let ColumnKind::Count { noise_sd: Some(sd) } = table.columns[2].kind else {
        panic!("{:?}", table.columns[2]);
    };
    let ColumnKind::Count {
        noise_sd: Some(audience_sd),
    } = table.columns[3].kind
    else {
        panic!("{:?}", table.columns[3]);
    };
    let got = rows(table, false);
    let want = plaintext(&left, &right, false);
    // 8 standard deviations: a false failure has probability far below 1e-6 per value.
    for (k, label) in LABELS.iter().enumerate() {
        let n = want[&(String::new(), k)].0 as f64;
        let (m, a) = got[&(String::new(), (*label).to_owned())];
        assert!(
            (m as f64 - n).abs() < 8.0 * sd,
            "{label}: {m} vs {n} (sd {sd})"
        );
        assert!((a as f64 - 7200.0).abs() < 8.0 * audience_sd, "{a}");
    }
    // Without a dimension the identifier types left out are those not shown: none here.
    assert_eq!(
        table.left_out,
        Some(LeftOut {
            groups: 0,
            noise_sd: None
        })
    );
    // Fresh noise on every run (the same plan run again, as only a charged run may).
    let again = templates::run(&plan, &cat, 2).await.unwrap();
    assert_ne!(rows(&again.tables[0].1, false), got, "noise is drawn");
    // Cells are selected privately. By region every cell holds 50 to 700 people. At
    // epsilon 2 (1 for the cascade; default bounds and three keys: one person moves at most
    // 4 left people, scale 8) the noisy threshold is about 200: every cell far above it is
    // shown, within its noise of the truth.
    let mut by = kv.to_vec();
    by.push(("by", "region"));
    let threshold_of = |plan: &templates::TemplatePlan| {
        plan.describe(&cat)
            .iter()
            .find_map(|l| l.strip_prefix("cascade: a cell is shown only if"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap()
    };
    let cells = plaintext(&left, &right, true);
    assert!(
        cells.values().all(|c| (50..700).contains(&c.0)),
        "{cells:?}"
    );
    let (by_plan, by_out) = run_template(
        &cat,
        &by,
        PrivacyRequest {
            epsilon: 2.0,
            delta: 1e-7,
        },
    )
    .await
    .unwrap();
    let threshold = threshold_of(&by_plan);
    assert!((100..300).contains(&threshold), "{threshold}");
    let t = &by_out.tables[0].1;
    let ColumnKind::Count {
        noise_sd: Some(by_sd),
    } = t.columns[3].kind
    else {
        panic!("{:?}", t.columns[3]);
    };
    // With one, the cells left out are a noisy count of the cells formed (a tenth of the
    // cascade's epsilon 1, sensitivity 2 · 4 moved people: scale 80) less those shown.
    let left_out = t.left_out.expect("counted");
    assert!(left_out.groups >= 0);
    let lsd = left_out.noise_sd.expect("noisy");
    assert!((lsd - 113.1).abs() < 0.5, "{lsd}");
    let shown = rows(t, true);
    let mut far_above = 0;
    for ((g, k), (n, _)) in &cells {
        let got = shown.get(&(g.clone(), LABELS[*k].to_owned()));
        if (*n as f64) > threshold as f64 + 8.0 * by_sd {
            far_above += 1;
            let (m, _) = got.unwrap_or_else(|| panic!("{g} {k}: {n} people not shown"));
            assert!(
                (*m as f64 - *n as f64).abs() < 8.0 * by_sd,
                "{g} {k}: {m} vs {n}"
            );
        }
    }
    assert!(far_above >= 8, "{far_above} of {cells:?}");
    // At epsilon 0.1 the threshold is in the thousands: a cell of 700 reaches it with
    // probability below 10^-7, so none appears although each clears the exact minimum of 50.
    let (low_plan, low_out) = run_template(
        &cat,
        &by,
        PrivacyRequest {
            epsilon: 0.1,
            delta: 1e-7,
        },
    )
    .await
    .unwrap();
    assert!(
        threshold_of(&low_plan) > 2000,
        "{}",
        threshold_of(&low_plan)
    );
    let t = &low_out.tables[0].1;
    assert!(t.rows.is_empty(), "{t:?}");
    let total: f64 = want.values().map(|c| c.0 as f64).sum();
    let (t, _) = got[&(String::new(), "total".to_owned())];
    assert!(
        (t as f64 - total).abs() < 8.0 * sd * 3f64.sqrt(),
        "{t} vs {total}"
    );
}

/// Adds 1,000 made-up right people repeating the phone of left person 5 (matched by phone),
/// and 1,000 made-up left people sharing a phone that one right person holds.
fn with_repeated_keys(n: usize) -> (Vec<Person>, Vec<Match>) {
    let (mut left, mut right) = population(n, 0);
    right.extend((0..1000).map(|j| Match {
        id: format!("fake{j}"),
        ids: [String::new(), "p5".into(), String::new()],
    }));
    left.extend((0..1000).map(|j| Person {
        id: format!("fakeleft{j}"),
        ids: [String::new(), "shared".into(), String::new()],
        region: "north",
    }));
    right.push(Match {
        id: "holder".into(),
        ids: [String::new(), "shared".into(), String::new()],
    });
    (left, right)
}

#[tokio::test]
async fn a_key_repeated_a_thousand_times_counts_at_most_its_bound() {
    let (left, right) = with_repeated_keys(600);
    let f = fixture(&left, &right);
    let cat = f.catalog();
    let keys = vec![
        ("email".to_owned(), "email_hash".to_owned()),
        ("phone".to_owned(), "phone".to_owned()),
    ];
    let c = Cascade::plan(&cat, 0, 1, &keys, None, REQ).unwrap();
    // Defaults (one row per person and per key value): C_L · (1 + K) = 1 · 3 on the left,
    // C_R · K · m_L = 1 · 2 · 1 on the right.
    assert_eq!(c.bounds()[0].moves, 3);
    assert_eq!(c.bounds()[1].moves, 2);
    let phone_cell = |bound: bool| {
        let c = c.clone();
        let cat = cat.clone();
        async move {
            c.execute(
                &cat,
                RunOptions {
                    bound_contributions: bound,
                    partitions: 2,
                },
            )
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.level == 1)
            .unwrap()
        }
    };
    // The phone cell without the repeated values (email and phone only).
    let (base_left, base_right) = population(600, 0);
    let strip = |p: &[Person]| -> Vec<Person> {
        p.iter()
            .map(|p| Person {
                ids: [p.ids[0].clone(), p.ids[1].clone(), String::new()],
                ..p.clone()
            })
            .collect()
    };
    let base = plaintext(&strip(&base_left), &base_right, false);
    let (n, r) = base[&(String::new(), 1)];
    let bounded = phone_cell(true).await;
    assert!(bounded.left_people <= n + 1, "{bounded:?} vs {n}");
    // The right side is only a set of values per key: the 1,000 right people repeating
    // one phone are behind one left person, whom they match once.
    assert!(bounded.right_people >= r + 1000, "{bounded:?} vs {r}");
    // Without bounding the made-up people count (the test has power).
    let unbounded = phone_cell(false).await;
    assert!(unbounded.left_people >= n + 1000, "{unbounded:?}");
    assert!(unbounded.right_people >= r + 1000, "{unbounded:?}");

    // End to end, with noise: the phone count stays within its noise of the truth (+1).
    let (left, right) = with_repeated_keys(7200);
    let f = fixture(&left, &right);
    let req = PrivacyRequest {
        epsilon: 8.0,
        delta: 1e-7,
    };
    let (_, out) = run_template(
        &f.catalog(),
        &[("left", "crm"), ("right", "aud"), ("keys", KEYS)],
        req,
    )
    .await
    .unwrap();
    let table = &out.tables[0].1;
    let ColumnKind::Count { noise_sd: Some(sd) } = table.columns[2].kind else {
        panic!("{:?}", table.columns[2])
    };
    let (base_left, base_right) = population(7200, 0);
    let truth = plaintext(&base_left, &base_right, false)[&(String::new(), 1)].0 as f64;
    let (m, _) = rows(table, false)[&(String::new(), "phone".to_owned())];
    assert!(
        (m as f64 - truth).abs() < 8.0 * sd + 1.0,
        "phone {m}: truth {truth}, at most 1 more (sd {sd})"
    );
}

fn rule(e: QueryError) -> (String, Option<String>) {
    match e {
        QueryError::Refused { rule, column, .. } => (rule.to_owned(), column),
        other => panic!("not a refusal: {other}"),
    }
}

#[tokio::test]
async fn refusals_are_decided_from_policies_before_any_data() {
    let (left, right) = population(40, 0);
    let f = fixture(&left, &right);
    // No data at all: every refusal comes from parameters, schemas and policies.
    let mut tables = f.tables.clone();
    for t in &mut tables {
        t.data = None;
    }
    let cat = Catalog::new(tables);
    let info = templates::find("overlap_ids", Some(1)).unwrap();
    let plan = |keys: &str, by: Option<&str>| {
        let mut kv = vec![("left", "crm"), ("right", "aud"), ("keys", keys)];
        if let Some(b) = by {
            kv.push(("by", b));
        }
        let p = params(&kv);
        let cat = cat.clone();
        async move { templates::plan(&info, &p, &cat, REQ).await }
    };
    let cases: &[(&str, Option<&str>, &str, Option<&str>)] = &[
        ("maid", None, "join_not_on_key", Some("maid")),
        (
            "email:email_hash,phone:maid",
            None,
            "join_not_on_key",
            Some("maid"),
        ),
        ("region", None, "join_not_on_key", Some("region")),
        (
            "email:email_hash,phone,email:email_hash",
            None,
            "duplicate_key",
            Some("email"),
        ),
        (
            "email:email_hash,phone:phone,device:phone",
            None,
            "duplicate_key",
            Some("phone"),
        ),
        (
            KEYS,
            Some("age_band"),
            "column_not_allowed",
            Some("age_band"),
        ),
        (KEYS, Some("email"), "identifier_not_allowed", Some("email")),
        (
            KEYS,
            Some("person_id"),
            "privacy_unit_not_allowed",
            Some("person_id"),
        ),
        (KEYS, Some("segment"), "unknown_column", Some("segment")),
        ("nope", None, "unknown_column", Some("nope")),
        (
            "email,phone,device,maid,region,age_band",
            None,
            "too_many_keys",
            None,
        ),
    ];
    for (keys, by, want, column) in cases {
        let e = plan(keys, *by).await.unwrap_err();
        assert_eq!(
            rule(e),
            ((*want).to_owned(), column.map(str::to_owned)),
            "keys {keys} by {by:?}"
        );
    }
    // Accepted without data, with the keys' priority as given.
    let ok = plan(KEYS, Some("region")).await.unwrap();
    assert!(ok.request().is_some());
}

/// `n` people as [`population`], plus 60 left people in the north sharing one device that a
/// single right person holds.
fn with_shared_device(n: usize) -> (Vec<Person>, Vec<Match>) {
    let (mut left, mut right) = population(n, 0);
    left.extend((0..60).map(|j| Person {
        id: format!("dev{j}"),
        ids: [String::new(), String::new(), "shared-device".into()],
        region: "north",
    }));
    right.push(Match {
        id: "one".into(),
        ids: [String::new(), String::new(), "shared-device".into()],
    });
    (left, right)
}

#[tokio::test]
async fn a_cell_below_either_owners_minimum_is_suppressed() {
    // 600 people as before, plus 60 left people sharing one device that a single right
    // person holds: 60 left people, but 1 right person behind them.
    let (left, right) = with_shared_device(600);
    let f = fixture(&left, &right);
    let mut tables = f.tables.clone();
    for t in &mut tables {
        t.policy.differential_privacy = false;
    }
    // Left: minimum 30 people; right: minimum 40 people.
    tables[0].policy.min_group_size = 30;
    tables[1].policy.min_group_size = 40;
    let cat = Catalog::new(tables);
    let (_, out) = run_template(
        &cat,
        &[
            ("left", "crm"),
            ("right", "aud"),
            ("keys", KEYS),
            ("by", "region"),
        ],
        REQ,
    )
    .await
    .unwrap();
    let got = rows(&out.tables[0].1, true);
    let want = plaintext(&left, &right, true);
    for ((g, k), (n, r)) in &want {
        let shown = got.get(&(g.clone(), LABELS[*k].to_owned()));
        if *n >= 30 && *r >= 40 {
            assert_eq!(shown.map(|v| v.0), Some(*n), "{g} {k}");
        } else {
            assert!(shown.is_none(), "{g} {k}: {n} left, {r} right people");
        }
    }
    // Suppressed for each reason: too few left people (devices elsewhere than the north);
    // enough left people but too few right people behind them (the north's devices: the 60
    // extra people all stand behind one right person).
    assert!(want.values().any(|(n, _)| *n < 30), "{want:?}");
    assert!(want.values().any(|(n, r)| *n >= 30 && *r < 40), "{want:?}");
    // The total only sums the types shown.
    for g in REGIONS {
        let shown: i64 = LABELS
            .iter()
            .filter_map(|l| got.get(&(g.to_owned(), (*l).to_owned())))
            .map(|v| v.0)
            .sum();
        if let Some(t) = got.get(&(g.to_owned(), "total".to_owned())) {
            assert_eq!(t.0, shown);
        }
    }
}

#[tokio::test]
async fn with_differential_privacy_the_right_owners_minimum_holds_through_a_floor_on_matched_people()
 {
    let (left, right) = with_shared_device(4800);
    let f = fixture(&left, &right);
    let mut tables = f.tables.clone();
    // Left: minimum 30 people, 3 rows per key value; right: minimum 40 people, 2 rows per
    // person. One right person stands behind at most 2 · 3 left people, so the floor on the
    // matched left people is max(30, 2 · 3 · 40) = 240.
    tables[0].policy.min_group_size = 30;
    tables[0].policy.max_rows_per_key = 3;
    tables[1].policy.min_group_size = 40;
    tables[1].policy.max_rows_per_unit = 2;
    let cat = Arc::new(Catalog::new(tables));
    let keys: Vec<(String, String)> = KEYS
        .split(',')
        .map(|k| match k.split_once(':') {
            Some((l, r)) => (l.to_owned(), r.to_owned()),
            None => (k.to_owned(), k.to_owned()),
        })
        .collect();
    let c = Cascade::plan(&cat, 0, 1, &keys, Some("region"), REQ).unwrap();
    // The invariant the floor rests on, on the bounded rows: n ≤ C_R · m_L · r in every cell.
    let bounded = c
        .execute(
            &cat,
            RunOptions {
                bound_contributions: true,
                partitions: 2,
            },
        )
        .await
        .unwrap();
    assert!(!bounded.is_empty());
    for cell in &bounded {
        assert!(cell.left_people <= 6 * cell.right_people, "{cell:?}");
    }
    let shared = bounded
        .iter()
        .find(|c| c.group.to_string() == "north" && c.level == 2)
        .unwrap();
    // Without the cap the 60 people sharing a device would all count.
    let want = plaintext(&left, &right, true);
    assert_eq!(
        shared.left_people,
        want[&("north".to_owned(), 2)].0 - 57,
        "3 of the 60 keep the shared device"
    );

    let by = [
        ("left", "crm"),
        ("right", "aud"),
        ("keys", KEYS),
        ("by", "region"),
    ];
    let req = PrivacyRequest {
        epsilon: 50.0,
        delta: 1e-7,
    };
    let (plan, out) = run_template(&cat, &by, req).await.unwrap();
    assert!(
        plan.describe(&cat)
            .iter()
            .any(|l| l.contains("at least 240 matched people of crm (and so at least 40 of aud)")),
        "{:?}",
        plan.describe(&cat)
    );
    let shown = rows(&out.tables[0].1, true);
    let (mut below, mut above) = (0, 0);
    for ((g, k), (n, _)) in &want {
        let got = shown.get(&(g.clone(), LABELS[*k].to_owned()));
        if *n < 240 {
            below += 1;
            assert!(got.is_none(), "{g} {k}: {n} people shown as {got:?}");
        } else if *n >= 300 {
            above += 1;
            assert!(got.is_some(), "{g} {k}: {n} people not shown");
        }
    }
    assert!(below >= 2 && above >= 2, "{want:?}");
}
