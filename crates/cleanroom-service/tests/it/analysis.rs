//! Analyses through the service: policies, budgets, SQL, templates, reuse, concurrency, and
//! every refusal (with its audit entry).

use std::collections::BTreeMap;

use cleanroom_core::audit::Outcome;
use cleanroom_core::party::{Abilities, Ability};
use cleanroom_core::policy::{MetricDraft, PolicyDraft};
use cleanroom_core::schema::{ColumnSpec, DatasetSchema};
use cleanroom_service::{
    AnalysisView, Cell, GrantRequest, Principal, QueryRequest, ServiceError, TemplateRequest,
};

use crate::{Fixture, csv_input};

fn schema(cols: &[&str]) -> DatasetSchema {
    DatasetSchema::new(
        cols.iter()
            .map(|s| ColumnSpec::parse_compact(s).unwrap())
            .collect(),
    )
    .unwrap()
}

const PEOPLE: &[&str] = &[
    "pid:string:privacy_unit",
    "email_hmac:string:identifier",
    "city:string:dimension",
    "n:int64:metric",
];

/// `count` people `{prefix}{i}`, emails `e{i + offset}`, cities by index, n = i % 5.
fn people_csv(prefix: &str, count: usize, offset: usize) -> String {
    let mut s = String::from("pid,email_hmac,city,n\n");
    for i in 0..count {
        s.push_str(&format!(
            "{prefix}{i},e{},city{},{}\n",
            i + offset,
            i % 3,
            i % 5
        ));
    }
    s
}

fn policy(partner: &str) -> PolicyDraft {
    PolicyDraft {
        join_keys: vec!["email_hmac".into()],
        dimensions: vec!["city".into()],
        metrics: vec![MetricDraft {
            column: "n".into(),
            lower: 0.0,
            upper: 10.0,
            ..Default::default()
        }],
        analysts: vec![partner.into()],
        receivers: vec![partner.into()],
        ..Default::default()
    }
}

fn grant(epsilon: f64, per_query: f64) -> GrantRequest {
    GrantRequest {
        epsilon,
        delta: Some(1e-5),
        epsilon_per_query: Some(per_query),
        delta_per_query: Some(1e-6),
    }
}

async fn upload(f: &Fixture, p: &Principal, collab: &str, name: &str, cols: &[&str], csv: String) {
    f.room
        .create_dataset(p, collab, name, schema(cols))
        .await
        .unwrap();
    f.room
        .upload(p, collab, name, csv_input(csv))
        .await
        .unwrap();
}

/// brand's `crm` (3,000 people) and publisher's `audience` (3,000 people, 2,000 shared).
async fn two_party(f: &Fixture) -> String {
    let id = f
        .collab(
            &[Ability::Contribute, Ability::Analyse, Ability::Receive],
            true,
        )
        .await;
    upload(f, &f.brand, &id, "crm", PEOPLE, people_csv("c", 3000, 0)).await;
    upload(
        f,
        &f.publisher,
        &id,
        "audience",
        PEOPLE,
        people_csv("u", 3000, 1000),
    )
    .await;
    id
}

async fn ready(f: &Fixture, id: &str) {
    f.room
        .set_policy(&f.brand, id, "crm", policy("publisher"))
        .await
        .unwrap();
    f.room
        .set_policy(&f.publisher, id, "audience", policy("brand"))
        .await
        .unwrap();
    f.room
        .grant_budget(&f.brand, id, grant(3.0, 1.0))
        .await
        .unwrap();
    f.room
        .grant_budget(&f.publisher, id, grant(3.0, 1.0))
        .await
        .unwrap();
}

const OVERLAP: &str = "SELECT c.city, COUNT(DISTINCT c.pid) AS people FROM crm c \
                       JOIN audience a ON c.email_hmac = a.email_hmac GROUP BY c.city";

fn q(sql: &str) -> QueryRequest {
    QueryRequest {
        sql: sql.into(),
        ..Default::default()
    }
}

fn rule(e: &ServiceError) -> &str {
    match e {
        ServiceError::PolicyRefused { rule, .. } => rule,
        other => panic!("expected a policy refusal, got {other:?}"),
    }
}

async fn last_entry(f: &Fixture, p: &Principal, id: &str) -> cleanroom_core::audit::AuditEntry {
    f.chain(p, id).await.pop().unwrap()
}

#[tokio::test]
async fn policies_are_set_by_owners_only_versioned_and_audited() {
    let f = Fixture::new().await;
    let id = two_party(&f).await;
    let v1 = f
        .room
        .set_policy(&f.brand, &id, "crm", policy("publisher"))
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let mut stricter = policy("publisher");
    stricter.min_group_size = Some(200);
    let v2 = f
        .room
        .set_policy(&f.brand, &id, "crm", stricter)
        .await
        .unwrap();
    assert_eq!((v2.version, v2.policy.min_group_size), (2, 200));
    // Members read it; the policy is part of what they agreed to.
    let seen = f.room.get_policy(&f.publisher, &id, "crm").await.unwrap();
    assert_eq!(seen.version, 2);
    let e = last_entry(&f, &f.brand, &id).await;
    assert_eq!(
        (e.action.as_str(), e.outcome),
        ("policy.set", Outcome::Allowed)
    );
    assert!(e.detail.contains("version 2"), "{}", e.detail);

    // Another member cannot set it; a policy that does not fit the schema is refused.
    let err = f
        .room
        .set_policy(&f.publisher, &id, "crm", policy("publisher"))
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Forbidden(_)), "{err:?}");
    assert_eq!(last_entry(&f, &f.brand, &id).await.outcome, Outcome::Denied);
    let mut bad = policy("publisher");
    bad.dimensions.push("email_hmac".into());
    let err = f
        .room
        .set_policy(&f.brand, &id, "crm", bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only dimension columns"), "{err}");
    assert_eq!(last_entry(&f, &f.brand, &id).await.outcome, Outcome::Denied);
    // An outsider cannot even learn that the dataset exists.
    let err = f
        .room
        .get_policy(&f.outsider, &id, "crm")
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn an_analysis_needs_policies_budgets_and_permissions() {
    let f = Fixture::new().await;
    let id = two_party(&f).await;
    // No policy on crm yet.
    let err = f
        .room
        .run_query(&f.publisher, &id, q(OVERLAP))
        .await
        .unwrap_err();
    assert_eq!(rule(&err), "no_policy");
    f.room
        .set_policy(&f.brand, &id, "crm", policy("publisher"))
        .await
        .unwrap();
    f.room
        .set_policy(&f.publisher, &id, "audience", policy("brand"))
        .await
        .unwrap();
    // No budget granted yet.
    let err = f
        .room
        .run_query(&f.publisher, &id, q(OVERLAP))
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::BudgetExhausted(_)), "{err:?}");
    assert!(err.to_string().contains("has not granted"), "{err}");
    // Only admins grant; members see every ledger.
    f.room
        .grant_budget(&f.brand, &id, grant(3.0, 1.0))
        .await
        .unwrap();
    f.room
        .grant_budget(&f.publisher, &id, grant(3.0, 1.0))
        .await
        .unwrap();
    assert_eq!(f.room.budgets(&f.publisher, &id).await.unwrap().len(), 2);
    // An analyst the owner did not list.
    let mut narrow = policy("somebody-else");
    narrow.receivers = vec!["publisher".into()];
    f.room
        .set_policy(&f.brand, &id, "crm", narrow)
        .await
        .unwrap();
    let err = f
        .room
        .run_query(&f.publisher, &id, q(OVERLAP))
        .await
        .unwrap_err();
    assert_eq!(rule(&err), "analyst_not_allowed");
    let e = last_entry(&f, &f.brand, &id).await;
    assert_eq!(
        (e.action.as_str(), e.outcome),
        ("analysis.query", Outcome::Denied)
    );
    assert!(e.detail.contains("policy_violation"), "{}", e.detail);
    // A receiver the owner did not allow.
    let mut no_receivers = policy("publisher");
    no_receivers.receivers.clear();
    f.room
        .set_policy(&f.brand, &id, "crm", no_receivers)
        .await
        .unwrap();
    let err = f
        .room
        .run_query(&f.publisher, &id, q(OVERLAP))
        .await
        .unwrap_err();
    assert_eq!(rule(&err), "receiver_not_allowed");
    // A rule of the checker, with its column.
    f.room
        .set_policy(&f.brand, &id, "crm", policy("publisher"))
        .await
        .unwrap();
    let err = f
        .room
        .run_query(
            &f.publisher,
            &id,
            q("SELECT email_hmac, COUNT(*) FROM crm GROUP BY email_hmac"),
        )
        .await
        .unwrap_err();
    match &err {
        ServiceError::PolicyRefused { rule, column, .. } => {
            assert_eq!(
                (rule.as_str(), column.as_deref()),
                ("identifier_not_allowed", Some("email_hmac"))
            )
        }
        other => panic!("{other:?}"),
    }
    // SQL is the owner's choice: templates only.
    let mut templates_only = policy("publisher");
    templates_only.allow_sql = Some(false);
    f.room
        .set_policy(&f.brand, &id, "crm", templates_only)
        .await
        .unwrap();
    let err = f
        .room
        .run_query(&f.publisher, &id, q(OVERLAP))
        .await
        .unwrap_err();
    assert_eq!(rule(&err), "sql_not_allowed");

    // A member without the analyse ability, and an outsider.
    let f2 = Fixture::new().await;
    let id2 = f2
        .collab(&[Ability::Contribute, Ability::Receive], true)
        .await;
    let err = f2
        .room
        .run_query(&f2.publisher, &id2, q(OVERLAP))
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Forbidden(_)), "{err:?}");
    let err = f2
        .room
        .run_query(&f2.outsider, &id2, q(OVERLAP))
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
}

fn people_by_city(v: &AnalysisView) -> BTreeMap<String, i64> {
    let t = &v.result.as_ref().expect("a result for a receiver").tables[0];
    t.rows
        .iter()
        .map(|r| match (&r[0], &r[1]) {
            (Cell::Text(c), Cell::Int(n)) => (c.clone(), *n),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_query_is_charged_to_every_owner_released_to_receivers_and_audited() {
    let f = Fixture::new().await;
    let id = two_party(&f).await;
    ready(&f, &id).await;
    let mut req = q(OVERLAP);
    req.epsilon = Some(0.5);
    req.receivers = vec!["publisher".into(), "brand".into()];
    let v = f.room.run_query(&f.publisher, &id, req).await.unwrap();
    assert_eq!(v.status.as_str(), "released");
    // 2,000 shared people over three cities, ≈ 667 each, noisy.
    let got = people_by_city(&v);
    assert_eq!(got.len(), 3, "{got:?}");
    for n in got.values() {
        assert!((600..=730).contains(n), "{got:?}");
    }
    // Both owners paid, at most the query's epsilon each.
    assert_eq!(v.charges.len(), 2);
    for c in &v.charges {
        assert!(c.epsilon > 0.0 && c.epsilon <= 0.5 + 1e-9, "{c:?}");
    }
    let budgets = f.room.budgets(&f.brand, &id).await.unwrap();
    for b in &budgets {
        assert!(b.epsilon_spent > 0.0 && b.epsilon_left < 3.0, "{b:?}");
    }
    // The brand, a receiver, sees the result; the analysis is in the chain with its cost.
    let seen = f.room.get_analysis(&f.brand, &id, &v.id).await.unwrap();
    assert_eq!(people_by_city(&seen), got);
    let chain = f.chain(&f.brand, &id).await;
    let charge = chain
        .iter()
        .find(|e| e.action == "analysis.query" && e.target == v.id)
        .unwrap();
    assert!(
        charge.detail.contains("charged brand epsilon"),
        "{}",
        charge.detail
    );
    let release = chain
        .iter()
        .find(|e| e.action == "analysis.release" && e.target == v.id)
        .unwrap();
    assert!(
        release.detail.contains("to brand,publisher"),
        "{}",
        release.detail
    );

    // A requester that is not a receiver sees the analysis but not the result.
    let mut to_brand =
        q("SELECT COUNT(*) AS n FROM crm c JOIN audience a ON c.email_hmac = a.email_hmac");
    to_brand.receivers = vec!["brand".into()];
    let v = f.room.run_query(&f.publisher, &id, to_brand).await.unwrap();
    assert!(v.result.is_none());
    assert!(
        f.room
            .get_analysis(&f.brand, &id, &v.id)
            .await
            .unwrap()
            .result
            .is_some()
    );
    // An outsider of the analysis (not requester, not receiver) cannot see it at all.
    let mut to_pub = q("SELECT COUNT(*) AS m FROM audience");
    to_pub.receivers = vec!["publisher".into()];
    let only_pub = f.room.run_query(&f.publisher, &id, to_pub).await.unwrap();
    let err = f
        .room
        .get_analysis(&f.brand, &id, &only_pub.id)
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
    assert!(
        f.room
            .list_analyses(&f.brand, &id)
            .await
            .unwrap()
            .iter()
            .all(|a| a.id != only_pub.id)
    );
}

#[tokio::test]
async fn repeating_a_query_costs_nothing_and_variants_exhaust_the_budget() {
    let f = Fixture::new().await;
    let id = two_party(&f).await;
    ready(&f, &id).await;
    let mut req = q(OVERLAP);
    req.epsilon = Some(1.0);
    let first = f
        .room
        .run_query(&f.publisher, &id, req.clone())
        .await
        .unwrap();
    let spent = f.room.budgets(&f.brand, &id).await.unwrap();
    // Averaging attack, step 1: repeat the query. Same numbers, no spending.
    for _ in 0..3 {
        let again = f
            .room
            .run_query(&f.publisher, &id, req.clone())
            .await
            .unwrap();
        assert_eq!(again.reused_from.as_deref(), Some(first.id.as_str()));
        assert!(again.charges.is_empty());
        assert_eq!(people_by_city(&again), people_by_city(&first));
    }
    assert_eq!(f.room.budgets(&f.brand, &id).await.unwrap(), spent);
    // Step 2: trivial variants are new queries and are charged; the budget (3.0) runs out.
    let variants = [
        "SELECT c.city, COUNT(DISTINCT c.pid) AS people FROM crm c JOIN audience a ON c.email_hmac = a.email_hmac WHERE c.city <> 'nowhere' GROUP BY c.city",
        "SELECT c.city, COUNT(DISTINCT c.pid) AS p2 FROM crm c JOIN audience a ON c.email_hmac = a.email_hmac GROUP BY c.city",
        "SELECT c.city, COUNT(DISTINCT c.pid) AS p3 FROM crm c JOIN audience a ON c.email_hmac = a.email_hmac GROUP BY c.city",
    ];
    let mut refused = None;
    for sql in variants {
        let mut r = q(sql);
        r.epsilon = Some(1.0);
        match f.room.run_query(&f.publisher, &id, r).await {
            Ok(v) => assert!(!v.charges.is_empty()),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the budget must run out");
    assert!(matches!(e, ServiceError::BudgetExhausted(_)), "{e:?}");
    assert!(e.to_string().contains("only epsilon"), "{e}");
    for b in f.room.budgets(&f.brand, &id).await.unwrap() {
        assert!(b.epsilon_spent <= b.epsilon_total + 1e-9, "{b:?}");
    }
    // With too little budget left for a new release, the first query is still answered from
    // its stored release: it spends nothing, so it needs nothing.
    let again = f
        .room
        .run_query(&f.publisher, &id, req.clone())
        .await
        .unwrap();
    assert_eq!(again.reused_from.as_deref(), Some(first.id.as_str()));
    assert_eq!(people_by_city(&again), people_by_city(&first));
    // Over the per-query cap is refused too, and a dry run spends nothing.
    let mut big = q(OVERLAP);
    big.epsilon = Some(1.5);
    let e = f.room.run_query(&f.publisher, &id, big).await.unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
    let before = f.room.budgets(&f.brand, &id).await.unwrap();
    let mut dry = q("SELECT COUNT(*) AS dry FROM crm");
    dry.dry_run = true;
    dry.epsilon = Some(0.1);
    let v = f.room.run_query(&f.brand, &id, dry).await.unwrap();
    assert_eq!(v.status.as_str(), "dry_run");
    assert!(v.result.is_none() && !v.charges.is_empty());
    assert_eq!(f.room.budgets(&f.brand, &id).await.unwrap(), before);
    // More budget is an explicit, audited grant by the owner.
    f.room
        .grant_budget(
            &f.brand,
            &id,
            GrantRequest {
                epsilon: 1.0,
                delta: None,
                epsilon_per_query: None,
                delta_per_query: None,
            },
        )
        .await
        .unwrap();
    let e = last_entry(&f, &f.brand, &id).await;
    assert_eq!(e.action, "budget.grant");
    assert!(e.detail.contains("granted epsilon 1"), "{}", e.detail);
}

#[tokio::test]
async fn concurrent_queries_never_overspend() {
    let f = Fixture::new().await;
    let id = two_party(&f).await;
    f.room
        .set_policy(&f.brand, &id, "crm", policy("publisher"))
        .await
        .unwrap();
    f.room
        .grant_budget(&f.brand, &id, grant(1.0, 0.3))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let room = f.room.clone();
        let p = f.brand.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = q(&format!(
                "SELECT city, COUNT(*) AS n{i} FROM crm GROUP BY city"
            ));
            r.epsilon = Some(0.3);
            room.run_query(&p, &id, r).await
        }));
    }
    let mut ok = 0;
    let mut exhausted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ServiceError::BudgetExhausted(_)) => exhausted += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    // 3 × 0.3 ≤ 1.0 < 4 × 0.3.
    assert_eq!((ok, exhausted), (3, 5));
    let b = &f.room.budgets(&f.brand, &id).await.unwrap()[0];
    assert!(b.epsilon_spent <= 1.0 && b.epsilon_spent > 0.85, "{b:?}");
}

#[tokio::test]
async fn a_failed_analysis_keeps_its_charge() {
    let f = Fixture::new().await;
    let id = two_party(&f).await;
    ready(&f, &id).await;
    // Make the data unreadable after the charge: remove the encrypted files.
    std::fs::remove_dir_all(f.dir.path().join("data/datasets").join(&id)).unwrap();
    let before = f.room.budgets(&f.brand, &id).await.unwrap()[0].epsilon_spent;
    let err = f
        .room
        .run_query(&f.publisher, &id, q(OVERLAP))
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Unavailable(_)), "{err:?}");
    let after = f.room.budgets(&f.brand, &id).await.unwrap()[0].epsilon_spent;
    assert!(after > before, "the failed analysis must stay charged");
    let listed = f.room.list_analyses(&f.publisher, &id).await.unwrap();
    assert_eq!(listed.last().unwrap().status.as_str(), "failed");
}

#[tokio::test]
async fn templates_need_each_owners_approval_of_the_exact_version() {
    let f = Fixture::new().await;
    let id = two_party(&f).await;
    ready(&f, &id).await;
    let run = || TemplateRequest {
        template: "overlap".into(),
        params: BTreeMap::from([
            ("left".into(), "audience".into()),
            ("right".into(), "crm".into()),
            ("key".into(), "email_hmac".into()),
            ("by".into(), "city".into()),
        ]),
        epsilon: Some(1.0),
        ..Default::default()
    };
    let err = f
        .room
        .run_template(&f.publisher, &id, run())
        .await
        .unwrap_err();
    assert_eq!(rule(&err), "template_not_approved");
    // Only the owner approves, and only its own dataset.
    let err = f
        .room
        .approve_template(&f.publisher, &id, "crm", "overlap", Some(1), true)
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Forbidden(_)), "{err:?}");
    let err = f
        .room
        .approve_template(&f.brand, &id, "crm", "overlap", Some(9), true)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no version 9"), "{err}");
    f.room
        .approve_template(&f.brand, &id, "crm", "overlap", Some(1), true)
        .await
        .unwrap();
    let v = f.room.run_template(&f.publisher, &id, run()).await.unwrap();
    let t = &v.result.as_ref().unwrap().tables[0];
    assert_eq!(t.name, "overlap");
    let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["city", "matched", "audience", "match_rate"]);
    assert_eq!(t.rows.len(), 3);
    for r in &t.rows {
        let (Cell::Int(m), Cell::Int(a), Cell::Float(rate)) = (&r[1], &r[2], &r[3]) else {
            panic!("{r:?}");
        };
        assert!((600..=730).contains(m) && (930..=1070).contains(a), "{r:?}");
        assert!((0.55..=0.78).contains(rate), "{r:?}");
    }
    // Withdrawn: refused again.
    f.room
        .approve_template(&f.brand, &id, "crm", "overlap", Some(1), false)
        .await
        .unwrap();
    let mut r = run();
    r.epsilon = Some(0.9);
    let err = f.room.run_template(&f.publisher, &id, r).await.unwrap_err();
    assert_eq!(rule(&err), "template_not_approved");
}

#[tokio::test]
async fn lift_and_reach_templates_answer_from_protected_aggregates() {
    let f = Fixture::new().await;
    let id = f
        .collab(
            &[Ability::Contribute, Ability::Analyse, Ability::Receive],
            true,
        )
        .await;
    // The publisher: 4,000 users, half exposed; the brand: purchases of 3,000 of them, with
    // exposed people converting at 30 % and unexposed at 15 %.
    let mut audience = String::from("pid,email_hmac,exposed\n");
    let mut sales = String::from("pid,email_hmac,purchases\n");
    for i in 0..4000 {
        let exposed = i % 2 == 0;
        audience.push_str(&format!("u{i},e{i},{exposed}\n"));
        if i < 3000 {
            let converts = if exposed { i % 20 < 6 } else { i % 40 < 6 };
            sales.push_str(&format!("c{i},e{i},{}\n", if converts { 2 } else { 0 }));
        }
    }
    upload(
        &f,
        &f.publisher,
        &id,
        "audience",
        &[
            "pid:string:privacy_unit",
            "email_hmac:string:identifier",
            "exposed:bool:dimension",
        ],
        audience,
    )
    .await;
    upload(
        &f,
        &f.brand,
        &id,
        "sales",
        &[
            "pid:string:privacy_unit",
            "email_hmac:string:identifier",
            "purchases:int64:metric",
        ],
        sales,
    )
    .await;
    let mut pub_policy = PolicyDraft {
        join_keys: vec!["email_hmac".into()],
        dimensions: vec!["exposed".into()],
        analysts: vec!["brand".into()],
        receivers: vec!["brand".into()],
        ..Default::default()
    };
    f.room
        .set_policy(&f.publisher, &id, "audience", pub_policy.clone())
        .await
        .unwrap();
    f.room
        .set_policy(
            &f.brand,
            &id,
            "sales",
            PolicyDraft {
                join_keys: vec!["email_hmac".into()],
                metrics: vec![MetricDraft {
                    column: "purchases".into(),
                    lower: 0.0,
                    upper: 10.0,
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for p in [&f.brand, &f.publisher] {
        f.room.grant_budget(p, &id, grant(5.0, 2.0)).await.unwrap();
    }
    f.room
        .approve_template(&f.publisher, &id, "audience", "lift", None, true)
        .await
        .unwrap();
    let v = f
        .room
        .run_template(
            &f.brand,
            &id,
            TemplateRequest {
                template: "lift".into(),
                params: BTreeMap::from([
                    ("exposure".into(), "audience".into()),
                    ("exposed".into(), "exposed".into()),
                    ("outcome".into(), "sales".into()),
                    ("conversion".into(), "purchases".into()),
                    ("key".into(), "email_hmac".into()),
                ]),
                epsilon: Some(2.0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = v.result.unwrap();
    let lift = r.tables.iter().find(|t| t.name == "lift").unwrap();
    let row = &lift.rows[0];
    let (Cell::Float(e), Cell::Float(u), Cell::Float(rel)) = (&row[0], &row[1], &row[3]) else {
        panic!("{row:?}");
    };
    // Exposed: 1,500 matched of 2,000 convert at 30 % → 450 / 2,000 = 0.225; unexposed:
    // 225 / 2,000 = 0.1125; relative lift 1.0.
    assert!((e - 0.225).abs() < 0.03, "{row:?}");
    assert!((u - 0.1125).abs() < 0.03, "{row:?}");
    assert!((rel - 1.0).abs() < 0.5, "{row:?}");

    // Reach and frequency: an impression log where person i has 1 + i % 4 impressions.
    let mut log = String::from("pid,email_hmac,exposed\n");
    for i in 0..3000 {
        for _ in 0..(1 + i % 4) {
            log.push_str(&format!("u{i},e{i},true\n"));
        }
    }
    upload(
        &f,
        &f.publisher,
        &id,
        "impressions",
        &[
            "pid:string:privacy_unit",
            "email_hmac:string:identifier",
            "exposed:bool:dimension",
        ],
        log,
    )
    .await;
    pub_policy.max_rows_per_unit = Some(4);
    pub_policy.max_rows_per_key = Some(4);
    f.room
        .set_policy(&f.publisher, &id, "impressions", pub_policy)
        .await
        .unwrap();
    f.room
        .approve_template(&f.publisher, &id, "impressions", "reach", None, true)
        .await
        .unwrap();
    let v = f
        .room
        .run_template(
            &f.brand,
            &id,
            TemplateRequest {
                template: "reach".into(),
                params: BTreeMap::from([("exposures".into(), "impressions".into())]),
                epsilon: Some(2.0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = v.result.unwrap();
    let reach = &r.tables.iter().find(|t| t.name == "reach").unwrap().rows[0];
    let (Cell::Int(people), Cell::Int(impressions)) = (&reach[0], &reach[1]) else {
        panic!("{reach:?}");
    };
    assert!((people - 3000).abs() < 100, "{reach:?}");
    assert!((impressions - 7500).abs() < 300, "{reach:?}");
    let freq = r.tables.iter().find(|t| t.name == "frequency").unwrap();
    assert_eq!(freq.rows.len(), 4, "{freq:?}");
    for row in &freq.rows {
        let (Cell::Int(_), Cell::Int(n)) = (&row[0], &row[1]) else {
            panic!("{row:?}");
        };
        assert!((n - 750).abs() < 120, "{row:?}");
    }
}

#[tokio::test]
async fn a_benchmark_shows_each_party_its_own_figures_against_enough_peers() {
    let f = Fixture::new().await;
    let id = f
        .collab(
            &[Ability::Contribute, Ability::Analyse, Ability::Receive],
            true,
        )
        .await;
    f.room
        .invite(&f.brand, &id, "outsider", Abilities::all())
        .await
        .unwrap();
    f.room.respond(&f.outsider, &id, true).await.unwrap();
    // Three operators, 600 turbines each, capacity factor by region; the third is better. The
    // brand alone also has 200 turbines in city9: a group too few parties have.
    let parties = [
        (&f.brand, "brand-farm", 30),
        (&f.publisher, "pub-farm", 30),
        (&f.outsider, "out-farm", 40),
    ];
    for (p, name, base) in parties {
        let mut csv = String::from("pid,email_hmac,city,n\n");
        for i in 0..600 {
            csv.push_str(&format!(
                "{name}-{i},x{i},city{},{}\n",
                i % 2,
                base + (i % 5) as i64
            ));
        }
        if name == "brand-farm" {
            for i in 0..200 {
                csv.push_str(&format!("{name}-extra{i},y{i},city9,{base}\n"));
            }
        }
        upload(&f, p, &id, name, PEOPLE, csv).await;
        let mut pol = policy("brand");
        pol.analysts = vec!["brand".into(), "publisher".into(), "outsider".into()];
        pol.receivers = pol.analysts.clone();
        pol.metrics[0].upper = 100.0;
        f.room.set_policy(p, &id, name, pol).await.unwrap();
        f.room.grant_budget(p, &id, grant(5.0, 2.0)).await.unwrap();
        f.room
            .approve_template(p, &id, name, "benchmark", None, true)
            .await
            .unwrap();
    }
    let req = TemplateRequest {
        template: "benchmark".into(),
        params: BTreeMap::from([
            ("datasets".into(), "brand-farm,pub-farm,out-farm".into()),
            ("metric".into(), "n".into()),
            ("by".into(), "city".into()),
        ]),
        epsilon: Some(2.0),
        receivers: vec!["brand".into(), "publisher".into(), "outsider".into()],
        ..Default::default()
    };
    let v = f.room.run_template(&f.brand, &id, req).await.unwrap();
    // Every party paid its share.
    assert_eq!(v.charges.len(), 3);
    let mine = v.result.unwrap();
    let names: Vec<&str> = mine.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["peers", "yours: brand"],
        "the brand sees only its own figures"
    );
    // The peers' table says that one group was left out: city9, where only the brand has
    // enough turbines (a function of the parties' private selections, hence exact).
    let peers = &mine.tables[0];
    assert_eq!(peers.rows.len(), 2, "{peers:?}");
    let left_out = peers.left_out.expect("counted");
    assert_eq!((left_out.groups, left_out.noise_sd), (1, None));
    let yours = &mine.tables[1];
    assert_eq!(yours.rows.len(), 2, "{yours:?}");
    for row in &yours.rows {
        let (Cell::Float(own), Cell::Float(peers)) = (&row[2], &row[3]) else {
            panic!("{row:?}");
        };
        // Own average 32 exactly; the peers' (publisher 32, outsider 42) ≈ 37.
        assert_eq!(*own, 32.0);
        assert!((peers - 37.0).abs() < 2.0, "{row:?}");
    }
    // The outsider sees its own table, not the brand's.
    let theirs = f.room.get_analysis(&f.outsider, &id, &v.id).await.unwrap();
    let names: Vec<String> = theirs
        .result
        .unwrap()
        .tables
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["peers", "yours: outsider"]);
    // With a minimum above the parties present, nothing is shown.
    let mut strict = TemplateRequest {
        template: "benchmark".into(),
        params: BTreeMap::from([
            ("datasets".into(), "brand-farm,pub-farm,out-farm".into()),
            ("metric".into(), "n".into()),
            ("min_parties".into(), "4".into()),
        ]),
        epsilon: Some(1.0),
        ..Default::default()
    };
    let err = f
        .room
        .run_template(&f.brand, &id, strict.clone())
        .await
        .unwrap_err();
    assert_eq!(rule(&err), "too_few_parties");
    strict.params.insert("min_parties".into(), "2".into());
    let err = f
        .room
        .run_template(&f.brand, &id, strict)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least 3"), "{err}");
}

#[tokio::test]
async fn closing_a_collaboration_deletes_its_stored_results() {
    let f = Fixture::new().await;
    let id = two_party(&f).await;
    ready(&f, &id).await;
    let v = f
        .room
        .run_query(&f.publisher, &id, q(OVERLAP))
        .await
        .unwrap();
    f.room.close_collaboration(&f.brand, &id).await.unwrap();
    let after = f.room.get_analysis(&f.publisher, &id, &v.id).await.unwrap();
    assert!(
        after.result.is_none(),
        "results are destroyed with the collaboration"
    );
    let closing = f
        .chain(&f.brand, &id)
        .await
        .into_iter()
        .find(|e| e.action == "collaboration.close")
        .unwrap();
    assert!(
        closing.detail.contains("1 stored result"),
        "{}",
        closing.detail
    );
}

/// The README's own grant (`--epsilon 5 --per-query-epsilon 1`, delta by default) pays for
/// five analyses at the cap: delta is spread like epsilon, so it does not run out first, and
/// the refusal after them names epsilon. Asking for half the epsilon cap spends half the
/// delta cap.
#[tokio::test]
async fn default_delta_lasts_as_long_as_epsilon() {
    let f = Fixture::new().await;
    let id = two_party(&f).await;
    f.room
        .set_policy(&f.brand, &id, "crm", policy("publisher"))
        .await
        .unwrap();
    let readme = |epsilon: f64, per_query: Option<f64>| GrantRequest {
        epsilon,
        delta: None,
        epsilon_per_query: per_query,
        delta_per_query: None,
    };
    let b = f
        .room
        .grant_budget(&f.brand, &id, readme(5.0, Some(1.0)))
        .await
        .unwrap();
    assert!((b.delta_total - 1e-6).abs() < 1e-12, "{b:?}");
    assert!((b.delta_per_query - 2e-7).abs() < 1e-12, "{b:?}");
    let sql =
        |i: usize| format!("SELECT city, COUNT(DISTINCT pid) AS people_{i} FROM crm GROUP BY city");
    for i in 0..5 {
        let v = f
            .room
            .run_query(&f.publisher, &id, q(&sql(i)))
            .await
            .unwrap_or_else(|e| panic!("analysis {i}: {e}"));
        assert_eq!(v.status.as_str(), "released", "{v:?}");
    }
    let e = f
        .room
        .run_query(&f.publisher, &id, q(&sql(5)))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("epsilon is exhausted") || text.contains("epsilon and delta are exhausted"),
        "{e}"
    );
    // Half the epsilon cap: half the delta cap by default.
    f.room
        .grant_budget(&f.brand, &id, readme(1.0, None))
        .await
        .unwrap();
    let mut half = q(&sql(6));
    half.epsilon = Some(0.5);
    let v = f.room.run_query(&f.publisher, &id, half).await.unwrap();
    let charged = v
        .charges
        .iter()
        .find(|c| c.org.as_str() == "brand")
        .unwrap();
    assert!(charged.delta <= 1e-7 + 1e-15, "{charged:?}");
}

/// The bytes of every dataset file under `data`, by path.
fn data_files(data: &std::path::Path) -> BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![data.join("datasets")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn write_key(path: &std::path::Path, hex: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(hex.as_bytes()).unwrap();
}

/// Rotating the master key re-wraps the collaboration keys in one audited step without touching
/// a data file; the data stays readable under the new key only; a rotation cut off by a crash
/// before or after its transaction is undone or finished when the room opens next.
#[tokio::test]
async fn master_key_rotation_rewraps_keys_and_survives_a_crash() {
    use cleanroom_service::{CleanRoom, Config, MasterKeyHex};
    let f = Fixture::new().await;
    let id = two_party(&f).await;
    ready(&f, &id).await;
    let data = f.dir.path().join("data");
    let key_file = data.join("master.key");
    let next_file = data.join("master.key.next");
    let old_key = std::fs::read_to_string(&key_file).unwrap();
    let files = data_files(&data);
    assert_eq!(files.len(), 2);
    let Fixture {
        dir: _dir,
        room,
        operator,
        publisher,
        ..
    } = f;
    // The key file's room refuses a separate output file: it replaces master.key itself.
    let out = data.join("elsewhere.key");
    let room2 = room.clone();
    let e = room2
        .rotate_master_key(&data, Some(&out))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::InvalidInput(_)), "{e:?}");
    drop(room);
    let room = CleanRoom::open(Config::new(&data)).await.unwrap();
    let done = room.rotate_master_key(&data, None).await.unwrap();
    assert_eq!(done.collaboration_keys, 1);
    assert_eq!(done.new_key_at, key_file);
    let new_key = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(old_key, new_key);
    assert!(!next_file.exists());
    assert_eq!(data_files(&data), files, "a data file changed");

    let room = CleanRoom::open(Config::new(&data)).await.unwrap();
    let v = room.run_query(&publisher, &id, q(OVERLAP)).await.unwrap();
    assert_eq!(v.status.as_str(), "released");
    let sys = room
        .audit_log(&operator, "system", 0, 10_000)
        .await
        .unwrap()
        .0;
    let rotated: Vec<_> = sys
        .iter()
        .filter(|e| e.action == "master_key.rotate")
        .collect();
    assert_eq!(rotated.len(), 1);
    assert!(
        rotated[0].detail.contains("1 collaboration key"),
        "{rotated:?}"
    );
    assert!(!rotated[0].detail.contains(new_key.trim()));
    room.close().await;
    // The old key opens nothing any more.
    let mut old = Config::new(&data);
    old.master_key_hex = Some(MasterKeyHex::new(old_key.trim().to_owned()));
    assert!(CleanRoom::open(old).await.is_err());

    // A crash after the transaction, before the key file moved: finished at the next open.
    write_key(&key_file, &old_key);
    write_key(&next_file, &new_key);
    let room = CleanRoom::open(Config::new(&data)).await.unwrap();
    assert!(!next_file.exists());
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), new_key);
    let v = room.run_query(&publisher, &id, q(OVERLAP)).await.unwrap();
    assert_eq!(v.status.as_str(), "released");
    room.close().await;

    // A crash before the transaction: the staged key is dropped, the current one stays.
    write_key(&next_file, &"ab".repeat(32));
    let room = CleanRoom::open(Config::new(&data)).await.unwrap();
    assert!(!next_file.exists());
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), new_key);
    room.close().await;

    // A key from the environment: the new key goes to the file the operator names.
    let mut env = Config::new(&data);
    env.master_key_hex = Some(MasterKeyHex::new(new_key.trim().to_owned()));
    let room = CleanRoom::open(env).await.unwrap();
    let e = room
        .clone()
        .rotate_master_key(&data, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--new-key-out"), "{e}");
    let mut env = Config::new(&data);
    env.master_key_hex = Some(MasterKeyHex::new(new_key.trim().to_owned()));
    let room = CleanRoom::open(env).await.unwrap();
    let done = room.rotate_master_key(&data, Some(&out)).await.unwrap();
    assert_eq!(done.new_key_at, out);
    let third = std::fs::read_to_string(&out).unwrap();
    let mut env = Config::new(&data);
    env.master_key_hex = Some(MasterKeyHex::new(third.trim().to_owned()));
    let room = CleanRoom::open(env).await.unwrap();
    let v = room.run_query(&publisher, &id, q(OVERLAP)).await.unwrap();
    assert_eq!(v.status.as_str(), "released");
    room.close().await;
}
