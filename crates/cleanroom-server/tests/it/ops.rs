//! What an operator runs the room with: `/metrics` for the operator's admins only, counting
//! requests by route template, analyses by outcome, budget refusals and upload bytes, without
//! any name, id or identifier; and `/v1/health` as a readiness check that fails when the
//! metadata store or the data files are not usable.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::analysis::setup;
use crate::*;

/// The value of the sample `name{labels}` (labels as written, in order), or 0 when absent.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn scrape(s: &Server, token: &str) -> (StatusCode, String) {
    let resp = s.req(Method::GET, "/metrics", token).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test]
async fn metrics_count_what_operators_watch_for_the_operator_only() {
    let (s, brand, publisher, id) = setup().await;
    let queries = format!("/v1/collaborations/{id}/queries");
    let released = s
        .ok(
            Method::POST,
            &queries,
            &brand,
            Some(json!({
                "sql": "SELECT a.city, COUNT(DISTINCT c.pid) AS people FROM crm c JOIN aud a ON c.email_hmac = a.email_hmac GROUP BY a.city",
                "epsilon": 0.5,
            })),
        )
        .await;
    assert_eq!(released["status"], "released");
    let (st, v) = s
        .call(
            Method::POST,
            &queries,
            &brand,
            Some(json!({"sql": "SELECT COUNT(*) FROM crm", "epsilon": 3.0})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("budget_exhausted"))
    );
    let (st, _) = s.call(Method::GET, "/v1/whoami", "crt_nope", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Members may not read the metrics; the refusal is audited.
    let (st, text) = scrape(&s, &publisher).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{text}");
    let (st, _) = scrape(&s, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let entries = audit_after(&s, &s.op, "system", 0).await;
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "metrics.read" && e["outcome"] == "denied"),
        "{entries:#?}"
    );

    // Made-up methods do not make new series.
    for i in 0..20 {
        let m = Method::from_bytes(format!("PROBE{i}").as_bytes()).unwrap();
        let _ = s.req(m, "/v1/health", "").send().await.unwrap();
    }
    let (st, text) = scrape(&s, &s.op).await;
    assert_eq!(st, StatusCode::OK, "{text}");
    assert!(!text.contains("PROBE"), "{text}");
    assert!(text.contains("method=\"OTHER\""), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let route = "/v1/collaborations/{id}/queries";
    assert_eq!(
        sample(
            &text,
            &format!(
                "cleanroom_http_requests_total{{method=\"POST\",route=\"{route}\",status=\"200\"}}"
            )
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "cleanroom_analyses_total{kind=\"query\",outcome=\"released\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "cleanroom_analyses_total{kind=\"query\",outcome=\"budget_exhausted\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "cleanroom_budget_refusals_total"), 1.0);
    // The bad token, the member-less scrape: two 401s.
    assert_eq!(sample(&text, "cleanroom_auth_failures_total"), 2.0);
    // Both uploads' CSV bodies were counted as they streamed in.
    let uploaded = sample(&text, "cleanroom_upload_bytes_total");
    assert!(uploaded >= 2.0 * 3000.0 * 20.0, "{uploaded}");
    assert!(sample(&text, "cleanroom_connections_open") >= 1.0);
    // No memory limit in this process: nothing spilled, and the counters say so.
    assert_eq!(sample(&text, "cleanroom_spill_files_total"), 0.0);
    assert_eq!(sample(&text, "cleanroom_spilled_bytes_total"), 0.0);
    // No concrete id, name, identifier or SQL in any label.
    for secret in [
        id.as_str(),
        "brand",
        "publisher",
        "crm",
        "secret-hash",
        "SELECT",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test]
async fn health_is_a_readiness_check() {
    let s = Server::start().await;
    let (st, v) = s.call(Method::GET, "/v1/health", "", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["checks"], json!({"metadata": "ok", "data": "ok"}));

    // Data files that cannot be written: not ready, and which check failed is said.
    let tmp = s.dir.path().join("data").join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    // A check is reused for a second (asking often must not make the server write often).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let resp = s.req(Method::GET, "/v1/health", "").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "not_ready");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("metadata: ok, data: unavailable"),
        "{v}"
    );
    // No path or OS message leaks to the unauthenticated caller.
    assert!(!v.to_string().contains("tmp"), "{v}");
    std::fs::create_dir(&tmp).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (st, _) = s.call(Method::GET, "/v1/health", "", None).await;
    assert_eq!(st, StatusCode::OK);

    // A metadata store that does not answer: not ready.
    s.room.close().await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let resp = s.req(Method::GET, "/v1/health", "").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("metadata: unavailable"),
        "{v}"
    );
}
