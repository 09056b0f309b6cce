//! What a careless client or a malicious member does to the server: requests that would crash
//! it, clients that vanish half way, connections that are opened and left half-sent, heads too
//! large, paths that do not decode, bodies too large, and the small leaks around datasets.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::*;

fn addr(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_owned()
}

/// Closes `stream` with a reset (RST), as a killed client's kernel or a crashing proxy does.
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    stream.set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

/// Reads a whole HTTP/1.1 answer (the server closes or sends `content-length` bytes).
async fn read_answer(stream: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

async fn dataset_status(s: &Server, token: &str, collab: &str, name: &str) -> String {
    let v = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{collab}/datasets/{name}"),
            token,
            None,
        )
        .await;
    v["status"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_client_that_resets_mid_upload_leaves_the_dataset_pending_and_retry_works() {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let id = s.collab(&brand, &publisher, &["contribute"]).await;
    s.declare(&brand, &id, "crm").await;
    let body = csv(2000);
    for attempt in 0..3 {
        let mut stream = TcpStream::connect(addr(&s)).await.unwrap();
        let head = format!(
            "PUT /v1/collaborations/{id}/datasets/crm/data HTTP/1.1\r\nhost: x\r\n\
             authorization: Bearer {brand}\r\ncontent-type: text/csv\r\ncontent-length: {}\r\n\r\n",
            body.len() * 10
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        // Let the server start the upload, then vanish.
        let mut seen_uploading = false;
        for _ in 0..100 {
            if dataset_status(&s, &brand, &id, "crm").await == "uploading" {
                seen_uploading = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            seen_uploading,
            "attempt {attempt}: the upload never started"
        );
        reset(stream);
        // Without waiting for any idle timeout, the dataset goes back to pending.
        let mut back = false;
        for _ in 0..200 {
            if dataset_status(&s, &brand, &id, "crm").await == "pending" {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(
            back,
            "attempt {attempt}: the dataset stayed uploading after a reset"
        );
    }
    let (st, v) = s.upload(&brand, &id, "crm", "text/csv", body).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "ready");
    assert_eq!(v["row_count"], 2000);
    let entries = audit_after(&s, &brand, &id, 0).await;
    let failed = entries
        .iter()
        .filter(|e| e["action"] == "dataset.upload" && e["outcome"] != "allowed")
        .count();
    assert!(
        failed >= 3,
        "every abandoned upload is audited: {entries:?}"
    );
}

/// Many analyses whose clients reset at different moments: however the request ends, every
/// analysis that was charged ends released or failed, never `running`, and the ledgers agree
/// with the recorded charges.
#[tokio::test]
async fn clients_that_reset_during_analyses_leave_no_analysis_running() {
    let (s, brand, publisher, id) = crate::analysis::setup().await;
    // The publisher analyses the brand's data; the brand grants budget for many small analyses.
    s.ok(
        Method::POST,
        &format!("/v1/collaborations/{id}/budgets"),
        &brand,
        Some(json!({"epsilon": 20.0, "epsilon_per_query": 1.0})),
    )
    .await;
    for i in 0..40u64 {
        let mut stream = TcpStream::connect(addr(&s)).await.unwrap();
        let body = json!({
            "sql": "SELECT city, COUNT(DISTINCT pid) AS n FROM crm GROUP BY city",
            "epsilon": 0.05 + i as f64 * 0.001,
        })
        .to_string();
        let req = format!(
            "POST /v1/collaborations/{id}/queries HTTP/1.1\r\nhost: x\r\n\
             authorization: Bearer {publisher}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        // Reset after a delay that sweeps the whole life of the request.
        tokio::time::sleep(Duration::from_micros(i * 1500)).await;
        reset(stream);
    }
    // Give the analyses that started time to finish, then nothing may be running.
    let mut running = usize::MAX;
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = s
            .ok(
                Method::GET,
                &format!("/v1/collaborations/{id}/analyses"),
                &publisher,
                None,
            )
            .await;
        running = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["status"] == "running")
            .count();
        if running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(running, 0, "analyses left running: {listed}");
    // What the ledger spent is exactly what the recorded analyses were charged.
    let charged: f64 = listed
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["charges"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["org"] == "brand")
        .map(|c| c["epsilon"].as_f64().unwrap())
        .sum();
    let budgets = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/budgets"),
            &brand,
            None,
        )
        .await;
    let spent = budgets
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["org"] == "brand")
        .unwrap()["epsilon_spent"]
        .as_f64()
        .unwrap();
    assert!(
        (spent - charged).abs() < 1e-6,
        "spent {spent}, charged {charged}"
    );
}

#[tokio::test]
async fn half_sent_requests_time_out_and_a_full_server_refuses_cleanly() {
    let opts = cleanroom_server::ServeOptions {
        max_connections: 8,
        header_read_timeout: Duration::from_millis(800),
        body_idle_timeout: Duration::from_millis(800),
        ..crate::serve_options()
    };
    let s = Server::start_serving(cleanroom_service::Limits::default(), opts).await;
    // Eight connections that send half a head and stop.
    let mut idle = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        c.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        idle.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The ninth is refused at once, with problem details.
    let mut extra = TcpStream::connect(addr(&s)).await.unwrap();
    extra
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, head, body) = read_answer(&mut extra).await;
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(head.contains("application/problem+json"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], "unavailable");
    // The half-sent ones are closed by the header-read timeout...
    for mut c in idle {
        let mut b = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
            .await
            .expect("the server closes a half-sent request")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&b[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    // ...after which the server accepts again.
    let (st, _) = s.call(Method::GET, "/v1/health", "", None).await;
    assert_eq!(st, StatusCode::OK);
    // A JSON body that stalls fails instead of holding the connection.
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(
        format!(
            "POST /v1/orgs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"name\":",
            s.op
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, body) = read_answer(&mut c).await;
    assert!(
        (400..500).contains(&status),
        "a stalled body: {status} {head} {body}"
    );
    // A kept-alive connection left idle is closed too.
    let mut k = TcpStream::connect(addr(&s)).await.unwrap();
    k.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_answer(&mut k).await;
    assert_eq!(status, 200);
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), k.read(&mut b))
        .await
        .expect("an idle kept-alive connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn every_refusal_of_a_malformed_request_is_problem_details() {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    // Too many headers.
    let mut r = s.req(Method::GET, "/v1/whoami", &brand);
    for i in 0..150 {
        r = r.header(format!("x-pad-{i}"), "1");
    }
    let resp = r.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "headers_too_large");
    // Headers too large in bytes.
    let resp = s
        .req(Method::GET, "/v1/whoami", &brand)
        .header("x-big", "a".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // A JSON body over the limit: 413, not 400.
    let big = json!({"name": "c", "description": "x".repeat(3 << 20)});
    let (st, v) = s
        .call(Method::POST, "/v1/collaborations", &brand, Some(big))
        .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["code"], "payload_too_large");
    // Deeply nested JSON is invalid input, not a crash.
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let resp = s
        .req(Method::POST, "/v1/collaborations", &brand)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // A path that does not decode to UTF-8: problem details, audited.
    let (st, v) = s
        .call(Method::GET, "/v1/collaborations/%FF%FE", &brand, None)
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["code"], "invalid_path");
    let entries = audit_after(&s, &s.op, "system", 0).await;
    assert!(
        refused(&entries, "request.path", "invalid_path", "denied"),
        "{entries:?}"
    );
    let (st, _) = s.call(Method::GET, "/v1/health", "", None).await;
    assert_eq!(st, StatusCode::OK);
}

/// SQL nested to the size limit, in every way SQL nests, as a dry run by any member: refused
/// with problem details, and the server keeps serving (it used to abort on a stack overflow).
#[tokio::test]
async fn deeply_nested_sql_is_refused_and_the_server_survives() {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let v = s
        .ok(
            Method::POST,
            "/v1/collaborations",
            &brand,
            Some(json!({"name": "deep"})),
        )
        .await;
    let id = v["collaboration"]["id"].as_str().unwrap().to_owned();
    let limit = 64 * 1024 - 200;
    let fill = |unit: &str, open: &str, close: &str| -> String {
        let n = limit / (unit.len() + open.len() + close.len()).max(1);
        format!("{}{}{}", open.repeat(n), unit, close.repeat(n))
    };
    let terms = |sep: &str, unit: &str| -> String {
        let n = limit / (sep.len() + unit.len());
        vec![unit; n].join(sep)
    };
    let cases = vec![
        ("operator chain", format!("SELECT {} AS n", terms("+", "1"))),
        (
            "AND chain",
            format!("SELECT COUNT(*) FROM crm WHERE {}", terms(" AND ", "a=1")),
        ),
        (
            "OR chain",
            format!("SELECT COUNT(*) FROM crm WHERE {}", terms(" OR ", "a=1")),
        ),
        (
            "parentheses",
            format!("SELECT {} AS n", fill("1", "(", ")")),
        ),
        (
            "CASE",
            format!("SELECT {} AS n", fill("1", "CASE WHEN true THEN ", " END")),
        ),
        (
            "function calls",
            format!("SELECT {} AS n", fill("'x'", "lower(", ")")),
        ),
        (
            "sub-queries",
            format!("SELECT {} AS n", fill("1", "(SELECT ", ")")),
        ),
        (
            "NOT chain",
            format!("SELECT {} AS n", fill("true", "NOT ", "")),
        ),
        (
            "casts",
            format!("SELECT 1{} AS n", "::int".repeat(limit / 5)),
        ),
        (
            "unary minus",
            format!("SELECT {}1 AS n", "- ".repeat(limit / 2)),
        ),
    ];
    for (kind, sql) in cases {
        assert!(sql.len() <= 64 * 1024, "{kind}: {} bytes", sql.len());
        let (st, v) = s
            .call(
                Method::POST,
                &format!("/v1/collaborations/{id}/queries"),
                &brand,
                Some(json!({"sql": sql, "dry_run": true})),
            )
            .await;
        assert!(st.is_client_error(), "{kind}: {st} {v}");
        let (st, _) = s.call(Method::GET, "/v1/health", "", None).await;
        assert_eq!(st, StatusCode::OK, "the server died on {kind}");
    }
}

/// What members see of each other's datasets: no size of the encrypted file (it changes with
/// one person's values), and no sign of a declaration that is not ready.
#[tokio::test]
async fn members_see_neither_file_sizes_nor_pending_names_of_others() {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let id = s.collab(&brand, &publisher, &["contribute"]).await;
    // The publisher declares "crm" first; the brand can still declare its own "crm": a clash
    // would tell it that the publisher's pending dataset exists.
    let (st, v) = s.declare(&publisher, &id, "crm").await;
    assert!(st.is_success(), "{v}");
    let (st, v) = s.declare(&brand, &id, "crm").await;
    assert!(
        st.is_success(),
        "a pending name of another member clashed: {v}"
    );
    let (st, v) = s.upload(&brand, &id, "crm", "text/csv", csv(50)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(
        v["encrypted_bytes"].as_u64().unwrap() > 0,
        "the owner sees its size"
    );
    // The publisher sees the brand's ready dataset, without its size.
    let list = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/datasets"),
            &publisher,
            None,
        )
        .await;
    let theirs: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["owner"] == "brand")
        .collect();
    assert_eq!(theirs.len(), 1);
    assert!(theirs[0]["encrypted_bytes"].is_null(), "{list}");
    // The publisher's own upload of "crm" now clashes with a dataset it can see: refused at
    // the end, its dataset back to pending, nothing left uploading.
    let (st, v) = s.upload(&publisher, &id, "crm", "text/csv", csv(10)).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(dataset_status(&s, &publisher, &id, "crm").await, "pending");
    // A new declaration of a name another member's ready dataset holds is refused (that
    // dataset is visible to all members anyway).
    s.declare(&publisher, &id, "aud").await;
    let (st, v) = s.upload(&publisher, &id, "aud", "text/csv", csv(10)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = s.declare(&brand, &id, "aud").await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
}

/// Guessing tokens is throttled per source: after the limit of failed authentications within
/// the window, every request that needs a token from that address is refused with 429 and a
/// `Retry-After` (a valid token included), without reaching the token check; the moment of
/// throttling is audited once, the refused attempts are not each recorded, and requests that
/// need no token still work.
#[tokio::test]
async fn failed_authentications_are_throttled_per_source_and_audited_once() {
    let mut opts = crate::serve_options();
    opts.auth_throttle.max_failures = 5;
    opts.auth_throttle.window = Duration::from_secs(120);
    let s = Server::start_serving(cleanroom_service::Limits::default(), opts).await;
    let before = head(&s, &s.op, "system").await;
    let wrong = "crt_00000000-0000-4000-8000-000000000000_00";
    for i in 0..5 {
        let token = if i % 2 == 0 { wrong } else { "" };
        let (st, v) = s.call(Method::GET, "/v1/whoami", token, None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "attempt {i}: {v}");
    }
    for token in [wrong, "", s.op.as_str()] {
        let resp = s
            .req(Method::GET, "/v1/whoami", token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=120).contains(&wait), "{wait}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["code"], "too_many_failures");
        assert!(!v.to_string().contains(wrong));
    }
    let (st, _) = s.call(Method::GET, "/v1/health", "", None).await;
    assert_eq!(st, StatusCode::OK);
    // The chain, read in-process (the operator's token is refused over HTTP from here now).
    let (entries, _) = s
        .room
        .audit_log(
            &s.room.authenticate(Some(&s.op)).await.unwrap(),
            "system",
            before,
            10_000,
        )
        .await
        .unwrap();
    let denied_auth = entries.iter().filter(|e| e.action == "auth").count();
    let throttles: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "auth.throttle")
        .collect();
    assert_eq!(denied_auth, 5, "{entries:#?}");
    assert_eq!(throttles.len(), 1, "{entries:#?}");
    assert_eq!(throttles[0].target, "127.0.0.1");
    assert!(!throttles[0].detail.contains(wrong));
}
