//! Refusals decided before a use case runs (no token, malformed ids and names, bodies that are
//! not the expected JSON, unknown abilities, schemas or media types) and uploads cut short by a
//! crash all reach the audit log, in the right chain, without the values that were sent.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{Server, audit_after, csv, head, refused};

/// Sends a request with a raw body; returns status and problem.
async fn raw(
    s: &Server,
    method: Method,
    path: &str,
    token: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, Value) {
    let resp = s
        .req(method, path, token)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn refusals_before_any_use_case_are_audited_in_the_right_chain() {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let id = s.collab(&brand, &publisher, &["contribute"]).await;
    let sys = "system";
    let secret = "CRT_PASTED_SECRET_0123456789";

    // Each step: what the request is, the answer expected, and where the refusal must land.
    let mut sys_seen = head(&s, &s.op, sys).await;
    let mut collab_seen = head(&s, &brand, &id).await;
    macro_rules! expect {
        ($what:expr, $got:expr, $status:expr, $code:expr, $chain:expr, $action:expr) => {{
            let (st, v): (StatusCode, Value) = $got;
            assert_eq!(
                (st, v["code"].as_str()),
                ($status, Some($code)),
                "{}: {v}",
                $what
            );
            let (reader, seen) = if $chain == sys {
                (&s.op, &mut sys_seen)
            } else {
                (&brand, &mut collab_seen)
            };
            let entries = audit_after(&s, reader, $chain, *seen).await;
            assert!(
                refused(&entries, $action, $code, "denied"),
                "{}: no denied {} entry with code {} in {}: {entries:#?}",
                $what,
                $action,
                $code,
                $chain
            );
            for e in &entries {
                assert!(!e.to_string().contains(secret), "{}: echoed {e}", $what);
            }
            *seen = entries.last().unwrap()["seq"].as_u64().unwrap();
        }};
    }

    // No Authorization header at all.
    expect!(
        "no token",
        s.call(Method::GET, "/v1/whoami", "", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        sys,
        "auth"
    );
    let entries = audit_after(&s, &s.op, sys, 0).await;
    let last_auth = entries
        .iter()
        .rev()
        .find(|e| e["action"] == "auth")
        .unwrap();
    assert_eq!(last_auth["actor"], "anonymous");
    // A malformed collaboration id: the same answer as for one that does not exist.
    expect!(
        "malformed collaboration id",
        s.call(Method::GET, "/v1/collaborations/not-an-id", &brand, None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        sys,
        "collaboration.show"
    );
    // A malformed token id.
    expect!(
        "malformed token id",
        s.call(
            Method::DELETE,
            &format!("/v1/tokens/{secret}"),
            &brand,
            None
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        sys,
        "token.revoke"
    );
    // Bad names: of a dataset (a member: its collaboration's chain), of an organisation.
    expect!(
        "bad dataset name (show)",
        s.call(
            Method::GET,
            &format!("/v1/collaborations/{id}/datasets/{secret}"),
            &brand,
            None
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &id,
        "dataset.show"
    );
    expect!(
        "bad dataset name (create)",
        s.call(
            Method::POST,
            &format!("/v1/collaborations/{id}/datasets"),
            &brand,
            Some(json!({"name": secret, "columns": crate::columns()}))
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &id,
        "dataset.create"
    );
    expect!(
        "bad organisation name",
        s.call(
            Method::POST,
            "/v1/orgs",
            &s.op,
            Some(json!({"name": secret, "admin": "a"}))
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        sys,
        "org.create"
    );
    // Abilities, schema and role that do not parse (decided where the wire is converted).
    expect!(
        "unknown ability (invite)",
        s.call(
            Method::POST,
            &format!("/v1/collaborations/{id}/invitations"),
            &brand,
            Some(json!({"org": "publisher", "abilities": [secret]}))
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &id,
        "collaboration.invite"
    );
    expect!(
        "unknown ability (create)",
        s.call(
            Method::POST,
            "/v1/collaborations",
            &brand,
            Some(json!({"name": "x", "abilities": [secret]}))
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        sys,
        "collaboration.create"
    );
    expect!(
        "schema that does not parse",
        s.call(
            Method::POST,
            &format!("/v1/collaborations/{id}/datasets"),
            &brand,
            Some(json!({"name": "crm", "columns": [{"name": "pid", "type": secret, "role": "privacy_unit"}]}))
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &id,
        "dataset.create"
    );
    expect!(
        "unknown role",
        s.call(
            Method::POST,
            "/v1/users",
            &brand,
            Some(json!({"name": "ana", "role": secret}))
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        sys,
        "user.create"
    );
    // Bodies that are not the expected JSON: axum's rejection, as a 400 with a stable code.
    expect!(
        "malformed JSON",
        raw(
            &s,
            Method::POST,
            &format!("/v1/collaborations/{id}/invitations"),
            &brand,
            "application/json",
            &format!("{{\"org\": \"{secret}"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &id,
        "collaboration.invite"
    );
    expect!(
        "a missing field",
        s.call(
            Method::POST,
            "/v1/orgs",
            &s.op,
            Some(json!({"name": secret}))
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        sys,
        "org.create"
    );
    expect!(
        "JSON without its content type",
        raw(
            &s,
            Method::POST,
            "/v1/tokens",
            &brand,
            "text/plain",
            "{\"label\": \"x\"}"
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        sys,
        "token.create"
    );
    // An outsider's malformed body for a collaboration goes to the system chain.
    let outsider = s.org("outsider").await;
    sys_seen = head(&s, &s.op, sys).await;
    expect!(
        "an outsider's malformed JSON",
        raw(
            &s,
            Method::POST,
            &format!("/v1/collaborations/{id}/invitations"),
            &outsider,
            "application/json",
            "{",
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        sys,
        "collaboration.invite"
    );
    // An unsupported media type and a malformed query.
    s.declare(&brand, &id, "crm").await;
    collab_seen = head(&s, &brand, &id).await;
    expect!(
        "unsupported media type",
        s.upload(&brand, &id, "crm", "application/json", csv(2))
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        &id,
        "dataset.upload"
    );
    expect!(
        "malformed query",
        s.call(
            Method::GET,
            &format!("/v1/audit/{id}?after=-1"),
            &brand,
            None
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        &id,
        "audit.read"
    );
    // The invalid-input entries keep the rule, not the value.
    let entries = audit_after(&s, &brand, &id, 0).await;
    assert!(
        entries
            .iter()
            .any(|e| e["detail"] == "invalid_input: invalid dataset name"),
        "{entries:#?}"
    );
}

/// A crash in the middle of an upload leaves the dataset `uploading`; the next start returns
/// it to pending and says so in the collaboration's chain.
#[tokio::test]
async fn an_upload_interrupted_by_a_crash_is_audited_at_start_up() {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let id = s.collab(&brand, &publisher, &["contribute"]).await;
    s.declare(&brand, &id, "crm").await;
    let before = head(&s, &brand, &id).await;
    // What a crash during the upload leaves in the metadata.
    let (s, changed) = s
        .restart_editing("UPDATE datasets SET status = 'uploading'", &[])
        .await;
    assert_eq!(changed, 1);
    let entries = audit_after(&s, &brand, &id, before).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let e = &entries[0];
    assert_eq!(
        (
            e["actor"].as_str(),
            e["action"].as_str(),
            e["target"].as_str(),
            e["outcome"].as_str(),
            e["detail"].as_str()
        ),
        (
            Some("server"),
            Some("dataset.upload"),
            Some("crm"),
            Some("failed"),
            Some("interrupted upload discarded: the server receiving it stopped")
        )
    );
    let d = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/datasets/crm"),
            &brand,
            None,
        )
        .await;
    assert_eq!(d["status"], "pending");
    let (st, v) = s.upload(&brand, &id, "crm", "text/csv", csv(5)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}
