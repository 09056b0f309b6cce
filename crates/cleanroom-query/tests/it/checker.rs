//! The checker's rules, driven by a table of queries and the rule each must trip.

use cleanroom_query::check::check;

use crate::*;

fn fixture() -> Fixture {
    let mut f = Fixture::new();
    f.add(
        "brand",
        "brand",
        BRAND_SCHEMA,
        brand_policy(),
        &csv(
            BRAND_HEADER,
            ["c1,e1,north,25-34,3,10.5,2025-03-01".to_string()],
        ),
    );
    f.add(
        "publisher",
        "publisher",
        PUBLISHER_SCHEMA,
        publisher_policy(),
        &csv(PUBLISHER_HEADER, ["u1,e1,north,true,7".to_string()]),
    );
    f
}

const ALLOWED: &[&str] = &[
    "SELECT region, COUNT(*) FROM brand GROUP BY region",
    "SELECT COUNT(DISTINCT b.customer_id) AS people FROM brand b JOIN publisher p ON b.email = p.email",
    "SELECT p.exposed, SUM(b.purchases) AS bought, AVG(b.revenue) FROM brand b JOIN publisher p ON b.email = p.email WHERE b.region IN ('north', 'south') GROUP BY p.exposed ORDER BY 2 DESC LIMIT 5",
    "SELECT lower(region) AS r, COUNT(*) AS n FROM brand WHERE first_purchase >= '2025-01-01' GROUP BY lower(region)",
    "SELECT region, SUM(LEAST(GREATEST(purchases, 0), 1)) AS buyers FROM brand GROUP BY region",
    "SELECT date_trunc('month', first_purchase) AS m, COUNT(*) FROM brand GROUP BY 1",
    "SELECT CASE WHEN age_band IN ('18-24', '25-34') THEN 'young' ELSE 'older' END AS age, COUNT(*) FROM brand GROUP BY 1",
    "SELECT COUNT(*) FROM brand b JOIN publisher p ON b.email = p.email AND b.region = p.region",
    "SELECT b.region, COUNT(DISTINCT p.email) FROM brand b JOIN publisher p ON b.email = p.email WHERE p.exposed AND NOT b.region LIKE 'sou%' GROUP BY b.region",
    "SELECT region, COUNT(*) AS n FROM brand WHERE age_band IS NOT NULL AND first_purchase BETWEEN '2025-01-01' AND '2025-12-31' GROUP BY region ORDER BY n DESC",
];

const REFUSED: &[(&str, &str)] = &[
    ("SELECT * FROM brand", "non_aggregate_output"),
    (
        "SELECT region FROM brand GROUP BY region",
        "non_aggregate_output",
    ),
    ("SELECT DISTINCT region FROM brand", "non_aggregate_output"),
    (
        "SELECT email, COUNT(*) FROM brand GROUP BY email",
        "identifier_not_allowed",
    ),
    (
        "SELECT customer_id, COUNT(*) FROM brand GROUP BY customer_id",
        "privacy_unit_not_allowed",
    ),
    (
        "SELECT purchases, COUNT(*) FROM brand GROUP BY purchases",
        "metric_not_allowed",
    ),
    (
        "SELECT COUNT(*) FROM brand b JOIN publisher p ON b.region = p.region",
        "join_not_on_key",
    ),
    (
        "SELECT COUNT(*) FROM brand b JOIN publisher p ON b.email = p.user_id",
        "join_not_on_key",
    ),
    ("SELECT COUNT(*) FROM brand, publisher", "join_not_on_key"),
    (
        "SELECT COUNT(*) FROM brand b CROSS JOIN publisher p",
        "join_not_on_key",
    ),
    (
        "SELECT COUNT(*) FROM brand a JOIN brand b ON a.email = b.email",
        "self_join",
    ),
    (
        "SELECT COUNT(*) FROM brand b LEFT JOIN publisher p ON b.email = p.email",
        "join_type",
    ),
    (
        "SELECT COUNT(*) FROM brand WHERE customer_id = 'c1'",
        "privacy_unit_not_allowed",
    ),
    (
        "SELECT COUNT(*) FROM brand WHERE email = 'e1'",
        "identifier_not_allowed",
    ),
    (
        "SELECT COUNT(*) FROM brand WHERE email LIKE 'e%'",
        "identifier_not_allowed",
    ),
    (
        "SELECT COUNT(*) FROM brand WHERE purchases > 3",
        "metric_not_allowed",
    ),
    (
        "SELECT region, COUNT(*), ROW_NUMBER() OVER () FROM brand GROUP BY region",
        "window_function",
    ),
    (
        "SELECT region, COUNT(*) FROM (SELECT * FROM brand) t GROUP BY region",
        "subquery",
    ),
    (
        "SELECT region, COUNT(*) FROM brand WHERE region IN (SELECT region FROM publisher) GROUP BY region",
        "subquery",
    ),
    (
        "SELECT region, COUNT(*) FROM brand WHERE EXISTS (SELECT 1 FROM publisher) GROUP BY region",
        "subquery",
    ),
    (
        "WITH t AS (SELECT * FROM brand) SELECT region, COUNT(*) FROM t GROUP BY region",
        "subquery",
    ),
    (
        "SELECT region, COUNT(*) FROM brand GROUP BY region HAVING COUNT(*) > 5",
        "having",
    ),
    (
        "SELECT region, COUNT(*) FROM brand GROUP BY region UNION SELECT region, COUNT(*) FROM publisher GROUP BY region",
        "set_operation",
    ),
    (
        "SELECT median(purchases) FROM brand",
        "aggregate_not_allowed",
    ),
    ("SELECT MAX(purchases) FROM brand", "aggregate_not_allowed"),
    (
        "SELECT SUM(DISTINCT purchases) FROM brand",
        "aggregate_not_allowed",
    ),
    (
        "SELECT SUM(purchases * 2) FROM brand",
        "aggregate_not_allowed",
    ),
    (
        "SELECT SUM(page_views) FROM brand b JOIN publisher p ON b.email = p.email WHERE p.page_views > 1",
        "metric_not_allowed",
    ),
    ("SELECT COUNT(*) / 2 FROM brand", "computed_output"),
    (
        "SELECT region, COUNT(*) FROM brand WHERE CAST(age_band AS INT) > 3 GROUP BY region",
        "cast_not_allowed",
    ),
    (
        "SELECT region, COUNT(*) FROM brand WHERE TRY_CAST(age_band AS INT) > 3 GROUP BY region",
        "cast_not_allowed",
    ),
    (
        "SELECT region || 'x', COUNT(*) FROM brand GROUP BY 1",
        "arithmetic_not_allowed",
    ),
    (
        "SELECT abs(purchases), COUNT(*) FROM brand GROUP BY 1",
        "function_not_allowed",
    ),
    (
        "SELECT reverse(region), COUNT(*) FROM brand GROUP BY 1",
        "function_not_allowed",
    ),
    (
        "SELECT region, COUNT(*) FROM brand WHERE random() < 0.5 GROUP BY region",
        "function_not_allowed",
    ),
    (
        "SELECT region, COUNT(*) FROM brand WHERE region = 5 GROUP BY region",
        "type_mismatch",
    ),
    (
        "SELECT region, COUNT(*) FROM brand WHERE first_purchase > 'yesterday' GROUP BY region",
        "type_mismatch",
    ),
    (
        "SELECT region, COUNT(*) FROM brand GROUP BY ROLLUP(region)",
        "grouping_sets",
    ),
    ("DROP TABLE brand", "statement_not_allowed"),
    (
        "CREATE TABLE x AS SELECT * FROM brand",
        "statement_not_allowed",
    ),
    ("INSERT INTO brand VALUES ('a')", "statement_not_allowed"),
    (
        "EXPLAIN SELECT COUNT(*) FROM brand",
        "statement_not_allowed",
    ),
    ("COPY brand TO '/tmp/x.csv'", "statement_not_allowed"),
    ("SELECT COUNT(*)", "no_dataset"),
    ("SELECT COUNT(*) FROM (VALUES (1), (2)) v(x)", "subquery"),
    (
        "SELECT COUNT(*) FROM brand WHERE substr(region, 0) = 'x'",
        "function_not_allowed",
    ),
    (
        "SELECT COUNT(*) FILTER (WHERE region = 'north') FROM brand",
        "aggregate_filter",
    ),
];

#[tokio::test]
async fn allowed_queries_pass_the_checker() {
    let f = fixture();
    let cat = f.catalog();
    for sql in ALLOWED {
        if let Err(e) = check(sql, &cat).await {
            panic!("{sql}\n  was refused: {e} ({:?})", e.rule());
        }
    }
}

#[tokio::test]
async fn each_refused_query_names_its_rule() {
    let f = fixture();
    let cat = f.catalog();
    let mut wrong = Vec::new();
    for (sql, rule) in REFUSED {
        match check(sql, &cat).await {
            Ok(_) => wrong.push(format!("{sql}\n  was accepted, expected {rule}")),
            Err(e) if e.rule() == Some(rule) => {}
            Err(e) => wrong.push(format!("{sql}\n  expected {rule}, got {:?}: {e}", e.rule())),
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn refusals_name_the_column_and_the_policy() {
    let f = fixture();
    let e = check(
        "SELECT email, COUNT(*) FROM brand GROUP BY email",
        &f.catalog(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("email"), "{e}");
    match e {
        cleanroom_query::QueryError::Refused { column, .. } => {
            assert_eq!(column.as_deref(), Some("email"))
        }
        other => panic!("{other:?}"),
    }
    // Row-level output names the column that would be output.
    let e = check("SELECT email FROM brand", &f.catalog())
        .await
        .unwrap_err();
    assert_eq!(e.rule(), Some("non_aggregate_output"));
    match &e {
        cleanroom_query::QueryError::Refused { column, .. } => {
            assert_eq!(column.as_deref(), Some("email"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // A dimension the owner did not list is refused with the owner's policy named.
    let cat = f.with_policy("brand", |d| d.dimensions.retain(|x| x != "age_band"));
    let e = check(
        "SELECT age_band, COUNT(*) FROM brand GROUP BY age_band",
        &cat,
    )
    .await
    .unwrap_err();
    assert_eq!(e.rule(), Some("column_not_allowed"));
    assert!(e.to_string().contains("policy of brand"), "{e}");
    // Unknown tables and syntax errors are invalid queries, not policy refusals.
    let e = check("SELECT COUNT(*) FROM nowhere", &f.catalog())
        .await
        .unwrap_err();
    assert!(
        matches!(e, cleanroom_query::QueryError::Invalid(_)),
        "{e:?}"
    );
    let e = check("SELEC 1", &f.catalog()).await.unwrap_err();
    assert!(
        matches!(e, cleanroom_query::QueryError::Invalid(_)),
        "{e:?}"
    );
}

#[tokio::test]
async fn equivalent_spellings_share_a_fingerprint_and_different_queries_do_not() {
    let f = fixture();
    let cat = f.catalog();
    let req = cleanroom_query::PrivacyRequest {
        epsilon: 1.0,
        delta: 1e-7,
    };
    let fp = |sql: &'static str| {
        let cat = cat.clone();
        async move {
            cleanroom_query::prepare(sql, &cat, req)
                .await
                .unwrap()
                .fingerprint
        }
    };
    let a = fp("SELECT region, COUNT(*) AS n FROM brand GROUP BY region").await;
    let b = fp("select REGION, count(*) as n from BRAND group by region").await;
    let c =
        fp("SELECT region, COUNT(*) AS n FROM brand WHERE age_band <> 'x' GROUP BY region").await;
    assert_eq!(a, b);
    assert_ne!(a, c);
}
