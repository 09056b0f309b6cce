//! The analysis API over HTTP: problem details that name the rule and the column, budgets,
//! templates, and results that hold aggregates only.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::*;

fn people(prefix: &str, count: usize, offset: usize) -> String {
    let mut s = String::from("pid,email_hmac,city,n\n");
    for i in 0..count {
        s.push_str(&format!(
            "{prefix}-{i:06},secret-hash-{:06},city{},{}\n",
            i + offset,
            i % 3,
            i % 5
        ));
    }
    s
}

pub(crate) async fn setup() -> (Server, String, String, String) {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let id = s
        .collab(&brand, &publisher, &["contribute", "analyse", "receive"])
        .await;
    for (token, name, prefix, offset) in [
        (&brand, "crm", "person", 0),
        (&publisher, "aud", "user", 1000),
    ] {
        s.declare(token, &id, name).await;
        let (st, v) = s
            .upload(token, &id, name, "text/csv", people(prefix, 3000, offset))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let partner = if name == "crm" { "publisher" } else { "brand" };
        s.ok(
            Method::PUT,
            &format!("/v1/collaborations/{id}/datasets/{name}/policy"),
            token,
            Some(json!({
                "join_keys": ["email_hmac"], "dimensions": ["city"],
                "metrics": [{"column": "n", "lower": 0, "upper": 10}],
                "analysts": [partner], "receivers": [partner],
            })),
        )
        .await;
        s.ok(
            Method::POST,
            &format!("/v1/collaborations/{id}/budgets"),
            token,
            Some(json!({"epsilon": 2.0, "epsilon_per_query": 1.0})),
        )
        .await;
    }
    (s, brand, publisher, id)
}

#[tokio::test]
async fn refusals_are_problem_details_naming_the_rule_and_the_column() {
    let (s, brand, _publisher, id) = setup().await;
    let q = |sql: &str| json!({"sql": sql});
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/v1/collaborations/{id}/queries"),
            &brand,
            Some(q(
                "SELECT email_hmac, COUNT(*) FROM crm GROUP BY email_hmac",
            )),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(v["code"], "policy_violation");
    assert_eq!(v["rule"], "identifier_not_allowed");
    assert_eq!(v["column"], "email_hmac");
    // Invalid SQL is invalid input, not a policy decision.
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/v1/collaborations/{id}/queries"),
            &brand,
            Some(q("SELEKT 1")),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input"))
    );
    // A budget that cannot pay.
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/v1/collaborations/{id}/queries"),
            &brand,
            Some(json!({"sql": "SELECT COUNT(*) FROM crm", "epsilon": 3.0})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("budget_exhausted"))
    );
    // A misspelt policy field is refused (not silently ignored) and audited.
    let (st, v) = s
        .call(
            Method::PUT,
            &format!("/v1/collaborations/{id}/datasets/crm/policy"),
            &brand,
            Some(json!({"join_key": ["email_hmac"]})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input"))
    );
    let entries = audit_after(&s, &brand, &id, 0).await;
    assert!(
        refused(&entries, "policy.set", "invalid_input", "denied"),
        "{entries:?}"
    );
    assert!(refused(
        &entries,
        "analysis.query",
        "policy_violation",
        "denied"
    ));
    assert!(refused(
        &entries,
        "analysis.query",
        "budget_exhausted",
        "denied"
    ));
}

#[tokio::test]
async fn analyses_release_aggregates_and_never_rows() {
    let (s, brand, publisher, id) = setup().await;
    let v = s
        .ok(
            Method::POST,
            &format!("/v1/collaborations/{id}/queries"),
            &brand,
            Some(json!({
                "sql": "SELECT a.city, COUNT(DISTINCT c.pid) AS people FROM crm c JOIN aud a ON c.email_hmac = a.email_hmac GROUP BY a.city",
                "epsilon": 0.5,
                "receivers": ["brand", "publisher"],
            })),
        )
        .await;
    assert_eq!(v["status"], "released");
    let table = &v["result"]["tables"][0];
    assert_eq!(table["columns"][1]["kind"], "count");
    assert!(table["columns"][1]["noise_sd"].as_f64().unwrap() > 0.0);
    assert_eq!(table["rows"].as_array().unwrap().len(), 3);
    // How many groups were left out: a noisy estimate with its noise, never below zero.
    assert!(
        table["left_out"]["groups"].as_i64().unwrap() >= 0,
        "{table}"
    );
    assert!(
        table["left_out"]["noise_sd"].as_f64().unwrap() > 0.0,
        "{table}"
    );
    let analysis = v["id"].as_str().unwrap().to_owned();
    // Templates are listed; an unapproved one is refused with its rule.
    let t = s.ok(Method::GET, "/v1/templates", &brand, None).await;
    assert_eq!(t.as_array().unwrap().len(), 5);
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/v1/collaborations/{id}/templates/overlap/runs"),
            &brand,
            Some(json!({"params": {"left": "crm", "right": "aud", "key": "email_hmac"}})),
        )
        .await;
    assert_eq!(
        (st, v["rule"].as_str()),
        (StatusCode::FORBIDDEN, Some("template_not_approved"))
    );
    s.ok(
        Method::POST,
        &format!("/v1/collaborations/{id}/templates/overlap/approvals"),
        &publisher,
        Some(json!({"dataset": "aud"})),
    )
    .await;
    let v = s
        .ok(
            Method::POST,
            &format!("/v1/collaborations/{id}/templates/overlap/runs"),
            &brand,
            Some(json!({"params": {"left": "crm", "right": "aud", "key": "email_hmac"}, "epsilon": 0.5})),
        )
        .await;
    assert_eq!(v["result"]["tables"][0]["name"], "overlap");
    // Every GET of the API, as every party, with an analysis in place: no row leaks.
    let doc = s.ok(Method::GET, "/v1/openapi.json", "", None).await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if item.get("get").is_none() {
            continue;
        }
        let concrete = path
            .replace("{id}", &id)
            .replace("{name}", "crm")
            .replace("{chain}", &id)
            .replace("{analysis}", &analysis);
        for token in [&brand, &publisher, &s.op] {
            let (_, v) = s.call(Method::GET, &concrete, token, None).await;
            let text = v.to_string();
            assert!(
                !text.contains("person-0"),
                "{concrete} leaks a privacy unit"
            );
            assert!(!text.contains("user-0"), "{concrete} leaks a privacy unit");
            assert!(
                !text.contains("secret-hash-"),
                "{concrete} leaks an identifier"
            );
            checked += 1;
        }
    }
    assert!(checked >= 36, "only {checked} answers checked");
    // The list comes a page at a time, newest first on request, with the total in a header.
    let list = format!("/v1/collaborations/{id}/analyses");
    let all = s.ok(Method::GET, &list, &brand, None).await;
    let all = all.as_array().unwrap();
    assert!(all.len() >= 2, "{all:?}");
    let r = s
        .http
        .get(format!("{}{list}?order=newest&limit=1&offset=1", s.base))
        .bearer_auth(&brand)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["x-total-count"].to_str().unwrap(),
        all.len().to_string()
    );
    let page: serde_json::Value = r.json().await.unwrap();
    assert_eq!(page.as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page[0]["id"], all[all.len() - 2]["id"]);
    let (st, v) = s
        .call(Method::GET, &format!("{list}?order=sideways"), &brand, None)
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input")),
        "{v}"
    );
}

#[tokio::test]
async fn an_analysis_cut_off_by_a_crash_is_failed_at_start_up_and_stays_charged() {
    let (s, brand, _publisher, id) = setup().await;
    let v = s
        .ok(
            Method::POST,
            &format!("/v1/collaborations/{id}/queries"),
            &brand,
            Some(
                json!({"sql": "SELECT city, COUNT(*) AS n FROM crm GROUP BY city", "epsilon": 0.4}),
            ),
        )
        .await;
    let analysis = v["id"].as_str().unwrap().to_owned();
    let spent = |b: &serde_json::Value| {
        b.as_array()
            .unwrap()
            .iter()
            .find(|x| x["org"] == "brand")
            .unwrap()["epsilon_spent"]
            .as_f64()
            .unwrap()
    };
    let before = spent(
        &s.ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/budgets"),
            &brand,
            None,
        )
        .await,
    );
    // Stage what a crash during the run leaves: the analysis recorded and charged, not finished.
    let (s, changed) = s
        .restart_editing(
            "UPDATE analyses SET status = 'running', result = NULL, finished_at = NULL WHERE id = ?",
            &[&analysis],
        )
        .await;
    assert_eq!(changed, 1);
    let v = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/analyses/{analysis}"),
            &brand,
            None,
        )
        .await;
    assert_eq!(v["status"], "failed");
    assert!(v.get("result").is_none());
    let after = spent(
        &s.ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/budgets"),
            &brand,
            None,
        )
        .await,
    );
    assert_eq!(before, after, "the charge stays");
    let entries = audit_after(&s, &brand, &id, 0).await;
    assert!(entries.iter().any(|e| {
        e["actor"] == "server"
            && e["target"] == analysis.as_str()
            && e["detail"]
                .as_str()
                .unwrap()
                .contains("interrupted: its server stopped")
    }));
}

#[tokio::test]
async fn the_identifier_cascade_runs_end_to_end_and_charges_both_owners() {
    let (s, brand, publisher, id) = setup().await;
    let run = |params: serde_json::Value| {
        let s = &s;
        let brand = brand.clone();
        let id = id.clone();
        async move {
            s.call(
                Method::POST,
                &format!("/v1/collaborations/{id}/templates/overlap_ids/runs"),
                &brand,
                Some(json!({"params": params, "epsilon": 1.0})),
            )
            .await
        }
    };
    let (_, v) = run(json!({"left": "crm", "right": "aud", "keys": "email_hmac"})).await;
    assert_eq!(v["rule"], "template_not_approved", "{v}");
    s.ok(
        Method::POST,
        &format!("/v1/collaborations/{id}/templates/overlap_ids/approvals"),
        &publisher,
        Some(json!({"dataset": "aud"})),
    )
    .await;
    // Refused from the policies, naming the rule and the column.
    let (_, v) = run(json!({"left": "crm", "right": "aud", "keys": "email_hmac,city"})).await;
    assert_eq!(v["rule"], "join_not_on_key", "{v}");
    assert_eq!(v["column"], "city", "{v}");
    let (st, v) = run(json!({"left": "crm", "right": "aud", "keys": "email_hmac"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let table = &v["result"]["tables"][0];
    assert_eq!(table["name"], "overlap_ids", "{v}");
    let rows = table["rows"].as_array().unwrap();
    // 2,000 people in common: one identifier type and the total.
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(rows[0][1], "email_hmac");
    assert_eq!(rows[1][1], "total");
    let matched = rows[1][2].as_i64().unwrap();
    assert!((1500..2500).contains(&matched), "{matched}");
    let charged: Vec<&str> = v["charges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["org"].as_str().unwrap())
        .collect();
    assert!(
        charged.contains(&"brand") && charged.contains(&"publisher"),
        "{v}"
    );
    assert!(!v.to_string().contains("secret-hash-"), "no identifier out");
}
