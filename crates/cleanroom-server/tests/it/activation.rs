//! Activations over HTTP against the real server: a partner receives its own identifiers of
//! the matched segment once per approval; every denial is a problem with a stable code.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::*;

/// brand's customers: `person-{i}`, `secret-hash-{i}`, `city{i % 3}`.
fn crm(count: usize) -> String {
    let mut s = String::from("pid,email_hmac,city,n\n");
    for i in 0..count {
        s.push_str(&format!(
            "person-{i:06},secret-hash-{i:06},city{},{}\n",
            i % 3,
            i % 5
        ));
    }
    s
}

/// publisher's audience: shares `secret-hash-{1000..}` and has its own `maid-{i}`.
fn audience(count: usize) -> String {
    let mut s = String::from("uid,email_hmac,maid,n\n");
    for i in 0..count {
        s.push_str(&format!(
            "user-{i:06},secret-hash-{:06},maid-{:06},{}\n",
            i + 1000,
            i + 1000,
            i % 5
        ));
    }
    s
}

async fn setup(rule: Option<Value>) -> (Server, String, String, String) {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let id = s
        .collab(&brand, &publisher, &["contribute", "analyse", "receive"])
        .await;
    s.declare(&brand, &id, "crm").await;
    let (st, v) = s.upload(&brand, &id, "crm", "text/csv", crm(3000)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/v1/collaborations/{id}/datasets"),
            &publisher,
            Some(json!({"name": "audience", "columns": [
                {"name": "uid", "type": "string", "role": "privacy_unit"},
                {"name": "email_hmac", "type": "string", "role": "identifier"},
                {"name": "maid", "type": "string", "role": "identifier"},
                {"name": "n", "type": "int64", "role": "metric"},
            ]})),
        )
        .await;
    assert!(st.is_success(), "{v}");
    let (st, v) = s
        .upload(&publisher, &id, "audience", "text/csv", audience(3000))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let mut policy = json!({"join_keys": ["email_hmac"], "dimensions": ["city"]});
    if let Some(r) = rule {
        policy["activation"] = r;
    }
    s.ok(
        Method::PUT,
        &format!("/v1/collaborations/{id}/datasets/crm/policy"),
        &brand,
        Some(policy),
    )
    .await;
    (s, brand, publisher, id)
}

fn rule() -> Value {
    json!({"partners": ["publisher"], "min_segment_size": 500, "dimensions": ["city"]})
}

fn ask(filter: Value, output: &str) -> Value {
    json!({"source": "crm", "target": "audience", "key": "email_hmac", "filter": filter, "output": output})
}

impl Server {
    /// The owner approves an activation: the activation as it now stands.
    async fn approve(&self, owner: &str, id: &str, activation: &str) -> Value {
        self.ok(
            Method::POST,
            &format!("/v1/collaborations/{id}/activations/{activation}/approve"),
            owner,
            None,
        )
        .await
    }

    async fn activation(&self, token: &str, id: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/v1/collaborations/{id}/activations"),
            token,
            Some(body),
        )
        .await
    }

    /// Downloads a segment: status, content type and body text.
    async fn segment(
        &self,
        token: &str,
        id: &str,
        activation: &str,
        query: &str,
    ) -> (StatusCode, String, String) {
        let resp = self
            .req(
                Method::POST,
                &format!("/v1/collaborations/{id}/activations/{activation}/segment{query}"),
                token,
            )
            .send()
            .await
            .unwrap();
        let st = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (st, ct, resp.text().await.unwrap())
    }
}

fn code(text: &str) -> (String, String) {
    let v: Value = serde_json::from_str(text).unwrap();
    (
        v["code"].as_str().unwrap_or_default().to_owned(),
        v["rule"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn a_partner_downloads_its_own_identifiers_once_over_http() {
    let (s, brand, publisher, id) = setup(Some(rule())).await;
    let (st, a) = s
        .activation(&publisher, &id, ask(json!({"city": "city2"}), "maid"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(a["status"], "pending");
    let aid = a["id"].as_str().unwrap().to_owned();
    // Before approval: 409 activation_not_approved.
    let (st, _, text) = s.segment(&publisher, &id, &aid, "").await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(code(&text).0, "activation_not_approved");
    // The owner sees the request, the partner cannot approve it, the owner does.
    let list = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/activations"),
            &brand,
            None,
        )
        .await;
    assert_eq!(list[0]["id"], aid.as_str());
    assert_eq!(list[0]["filter"]["city"], "city2");
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/v1/collaborations/{id}/activations/{aid}/approve"),
            &publisher,
            None,
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let v = s.approve(&brand, &id, &aid).await;
    assert_eq!(v["status"], "approved");
    // The owner cannot download it.
    let (st, _, text) = s.segment(&brand, &id, &aid, "").await;
    assert_eq!(
        (st, code(&text).0.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    // The partner can, once: its own device ids, nothing of brand's.
    let (st, ct, text) = s.segment(&publisher, &id, &aid, "").await;
    assert_eq!(st, StatusCode::OK, "{text}");
    assert!(ct.starts_with("text/csv"), "{ct}");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("maid"));
    let got: Vec<&str> = lines.collect();
    let want: Vec<String> = (1000..3000)
        .filter(|i| i % 3 == 2)
        .map(|i| format!("maid-{i:06}"))
        .collect();
    assert_eq!(got, want);
    assert!(!text.contains("person-") && !text.contains("secret-hash-") && !text.contains("city"));
    let (st, _, text) = s.segment(&publisher, &id, &aid, "").await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(code(&text).0, "activation_consumed");
    let v = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/activations/{aid}"),
            &publisher,
            None,
        )
        .await;
    assert_eq!(v["status"], "delivered");
    assert_eq!(v["delivered"], want.len());
    // JSON lines on request.
    let (_, b) = s.activation(&publisher, &id, ask(json!({}), "maid")).await;
    let bid = b["id"].as_str().unwrap().to_owned();
    s.approve(&brand, &id, &bid).await;
    let (st, _, text) = s.segment(&publisher, &id, &bid, "?format=xml").await;
    assert_eq!(
        (st, code(&text).0.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
    let (st, ct, text) = s.segment(&publisher, &id, &bid, "?format=jsonl").await;
    assert_eq!(st, StatusCode::OK, "{text}");
    assert_eq!(ct, "application/x-ndjson");
    assert_eq!(text.lines().count(), 2000);
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first, json!({"maid": "maid-001000"}));
    // The audit log, readable by every member, has every step and no identifier.
    let entries = audit_after(&s, &brand, &id, 0).await;
    for action in [
        "activation.request",
        "activation.approve",
        "activation.download",
        "activation.deliver",
    ] {
        assert!(entries.iter().any(|e| e["action"] == action), "{action}");
    }
    assert!(refused(
        &entries,
        "activation.download",
        "activation_consumed",
        "denied"
    ));
    assert!(refused(
        &entries,
        "activation.download",
        "activation_not_approved",
        "denied"
    ));
    let all = Value::Array(entries).to_string();
    assert!(!all.contains("maid-0") && !all.contains("secret-hash-"));
    // No GET of the API returns identifiers of either party, activations in place.
    let doc = s.ok(Method::GET, "/v1/openapi.json", "", None).await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if item.get("get").is_none() {
            continue;
        }
        let concrete = path
            .replace("{id}", &id)
            .replace("{name}", "audience")
            .replace("{activation}", &aid)
            .replace("{chain}", &id);
        for token in [&brand, &publisher] {
            let (_, v) = s.call(Method::GET, &concrete, token, None).await;
            let text = v.to_string();
            assert!(
                !text.contains("secret-hash-") && !text.contains("maid-0"),
                "{concrete}"
            );
        }
    }
}

#[tokio::test]
async fn activation_denials_over_http() {
    // No activation rule: refused with its rule.
    let (s, brand, publisher, id) = setup(None).await;
    let (st, v) = s.activation(&publisher, &id, ask(json!({}), "maid")).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(
        (v["code"].as_str(), v["rule"].as_str()),
        (Some("policy_violation"), Some("activation_not_allowed"))
    );
    // A rule for someone else.
    s.ok(
        Method::PUT,
        &format!("/v1/collaborations/{id}/datasets/crm/policy"),
        &brand,
        Some(json!({"join_keys": ["email_hmac"], "dimensions": ["city"], "activation": {"partners": ["other"], "min_segment_size": 500}})),
    )
    .await;
    let (_, v) = s.activation(&publisher, &id, ask(json!({}), "maid")).await;
    assert_eq!(v["rule"], "activation_not_allowed");
    // A rule with a minimum below the policy's minimum group size, or a misspelt field.
    for bad in [
        json!({"partners": ["publisher"], "min_segment_size": 10}),
        json!({"partners": ["publisher"], "min_size": 1000}),
        json!({"partners": ["publisher"], "dimensions": ["n"]}),
    ] {
        let (st, v) = s
            .call(
                Method::PUT,
                &format!("/v1/collaborations/{id}/datasets/crm/policy"),
                &brand,
                Some(
                    json!({"join_keys": ["email_hmac"], "dimensions": ["city"], "activation": bad}),
                ),
            )
            .await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_input")),
            "{v}"
        );
    }
    let v = s
        .ok(
            Method::PUT,
            &format!("/v1/collaborations/{id}/datasets/crm/policy"),
            &brand,
            Some(
                json!({"join_keys": ["email_hmac"], "dimensions": ["city"], "activation": rule()}),
            ),
        )
        .await;
    assert_eq!(v["policy"]["activation"]["min_segment_size"], 500);
    let cases = [
        (
            json!({"source": "crm", "target": "crm", "key": "email_hmac", "output": "email_hmac"}),
            "target_not_own",
        ),
        (ask(json!({}), "n"), "output_not_identifier"),
        (ask(json!({}), "uid"), "output_not_identifier"),
        (ask(json!({"n": "1"}), "maid"), "dimension_not_allowed"),
        (
            json!({"source": "crm", "target": "audience", "key": "city:email_hmac", "output": "maid"}),
            "key_not_allowed",
        ),
    ];
    for (body, rule) in cases {
        let (st, v) = s.activation(&publisher, &id, body).await;
        assert_eq!(
            (st, v["rule"].as_str()),
            (StatusCode::FORBIDDEN, Some(rule)),
            "{v}"
        );
    }
    let (st, v) = s
        .activation(&publisher, &id, json!({"source": "crm", "target": "audience", "key": "email_hmac", "output": "maid", "extra": 1}))
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input"))
    );
    // An outsider, and the operator, get not found.
    let outsider = s.org("outsider").await;
    for token in [&outsider, &s.op] {
        let (st, _) = s.activation(token, &id, ask(json!({}), "maid")).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }
    // Too small: refused without the size, and the approval is used.
    let (_, a) = s
        .activation(&publisher, &id, ask(json!({"city": "atlantis"}), "maid"))
        .await;
    let aid = a["id"].as_str().unwrap().to_owned();
    s.approve(&brand, &id, &aid).await;
    let (st, _, text) = s.segment(&publisher, &id, &aid, "").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(
        code(&text),
        ("policy_violation".into(), "segment_too_small".into())
    );
    let (st, _, text) = s.segment(&publisher, &id, &aid, "").await;
    assert_eq!(
        (st, code(&text).0.as_str()),
        (StatusCode::CONFLICT, "activation_consumed")
    );
    // Rejected: not downloadable; deciding twice is a conflict.
    let (_, b) = s.activation(&publisher, &id, ask(json!({}), "maid")).await;
    let bid = b["id"].as_str().unwrap().to_owned();
    let v = s
        .ok(
            Method::POST,
            &format!("/v1/collaborations/{id}/activations/{bid}/reject"),
            &brand,
            None,
        )
        .await;
    assert_eq!(v["status"], "rejected");
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/v1/collaborations/{id}/activations/{bid}/approve"),
            &brand,
            None,
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (st, _, text) = s.segment(&publisher, &id, &bid, "").await;
    assert_eq!(
        (st, code(&text).0.as_str()),
        (StatusCode::CONFLICT, "activation_not_approved")
    );
    // Approved, then the collaboration is closed: gone.
    let (_, c) = s.activation(&publisher, &id, ask(json!({}), "maid")).await;
    let cid = c["id"].as_str().unwrap().to_owned();
    s.approve(&brand, &id, &cid).await;
    s.ok(
        Method::POST,
        &format!("/v1/collaborations/{id}/close"),
        &brand,
        None,
    )
    .await;
    let (st, _, text) = s.segment(&publisher, &id, &cid, "").await;
    assert_eq!(
        (st, code(&text).0.as_str()),
        (StatusCode::GONE, "collaboration_closed")
    );
    let entries = audit_after(&s, &brand, &id, 0).await;
    for c in ["policy_violation", "collaboration_closed"] {
        assert!(
            refused(&entries, "activation.request", c, "denied")
                || refused(&entries, "activation.download", c, "denied")
                || refused(&entries, "activation.deliver", c, "denied"),
            "{c}"
        );
    }
    assert!(refused(
        &entries,
        "activation.deliver",
        "policy_violation",
        "denied"
    ));
}

/// A stop between using the approval and recording the delivery: at start-up the activation
/// is recorded as failed (nothing was sent: identifiers leave only after `delivered` is
/// recorded), the approval stays used, and the partner can ask again.
#[tokio::test]
async fn an_activation_cut_off_by_a_restart_is_failed_and_its_approval_stays_used() {
    let (s, brand, publisher, id) = setup(Some(rule())).await;
    let (st, a) = s.activation(&publisher, &id, ask(json!({}), "maid")).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    let aid = a["id"].as_str().unwrap().to_owned();
    s.approve(&brand, &id, &aid).await;
    // Stage what a crash while matching leaves: the approval used, no outcome recorded.
    let (s, changed) = s
        .restart_editing(
            "UPDATE activations SET status = 'consumed' WHERE id = ? AND status = 'approved'",
            &[&aid],
        )
        .await;
    assert_eq!(changed, 1);
    let v = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/activations/{aid}"),
            &publisher,
            None,
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    let (st, _, text) = s.segment(&publisher, &id, &aid, "").await;
    assert_eq!(st, StatusCode::CONFLICT, "{text}");
    assert_eq!(code(&text).0, "activation_consumed");
    let entries = audit_after(&s, &brand, &id, 0).await;
    assert!(
        entries.iter().any(|e| {
            e["actor"] == "server"
                && e["target"] == aid.as_str()
                && e["outcome"] == "failed"
                && e["detail"]
                    .as_str()
                    .unwrap()
                    .contains("interrupted while matching: its server stopped")
        }),
        "{entries:?}"
    );
    // Asking again works end to end.
    let (st, again) = s.activation(&publisher, &id, ask(json!({}), "maid")).await;
    assert_eq!(st, StatusCode::CREATED, "{again}");
    let again = again["id"].as_str().unwrap().to_owned();
    s.approve(&brand, &id, &again).await;
    let (st, _, text) = s.segment(&publisher, &id, &again, "").await;
    assert_eq!(st, StatusCode::OK, "{text}");
    assert!(text.lines().count() > 500, "{}", text.lines().count());
}
