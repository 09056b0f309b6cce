//! The HTTP surface: OpenAPI, problem details, authentication, and that no endpoint leaks rows.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{Server, csv};

/// The OpenAPI document against the router itself: every documented path and method is routed
/// (and, where it takes a token, answers 401 without one), every undocumented method on a
/// documented path is refused as such, and every error answer is declared as problem details.
#[tokio::test]
async fn openapi_document_matches_the_router() {
    let s = Server::start().await;
    let doc = s.ok(Method::GET, "/v1/openapi.json", "", None).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    let paths = doc["paths"].as_object().unwrap();
    let mut probed = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "00000000-0000-4000-8000-000000000000")
            .replace("{name}", "crm")
            .replace("{chain}", "system");
        for (name, method) in [
            ("get", Method::GET),
            ("post", Method::POST),
            ("put", Method::PUT),
            ("delete", Method::DELETE),
            ("patch", Method::PATCH),
        ] {
            let (st, v) = s.call(method, &concrete, "", None).await;
            let Some(op) = item.get(name) else {
                assert_eq!(
                    v["code"], "method_not_allowed",
                    "{name} {path} is routed but not documented: {st} {v}"
                );
                continue;
            };
            probed += 1;
            assert!(
                v["code"] != "no_such_endpoint" && v["code"] != "method_not_allowed",
                "{name} {path} is documented but not routed: {st} {v}"
            );
            let responses = op["responses"].as_object().unwrap();
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            if secured {
                assert_eq!(
                    st,
                    StatusCode::UNAUTHORIZED,
                    "{name} {path} without a token"
                );
                assert!(responses.contains_key("401"), "{name} {path} lacks 401");
            } else {
                assert!(st.is_success(), "{name} {path}: {st}");
            }
            for (status, r) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let content = r["content"].as_object().unwrap();
                    assert_eq!(
                        content.keys().collect::<Vec<_>>(),
                        ["application/problem+json"],
                        "{name} {path} {status}"
                    );
                    assert_eq!(
                        content["application/problem+json"]["schema"]["$ref"],
                        "#/components/schemas/Problem"
                    );
                }
            }
        }
    }
    assert!(probed >= 21, "only {probed} operations documented");
    // Statuses documented where they occur.
    let upload = &paths["/v1/collaborations/{id}/datasets/{name}/data"]["put"]["responses"];
    for status in ["403", "404", "409", "410", "413", "415", "422", "503"] {
        assert!(upload.get(status).is_some(), "upload lacks {status}");
    }
}

#[tokio::test]
async fn errors_are_problem_details_with_stable_codes() {
    let s = Server::start().await;
    let (st, v) = s.call(Method::GET, "/v1/whoami", "", None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    assert_eq!(v["status"], 401);
    assert_eq!(v["type"], "urn:cleanroom:problem:unauthenticated");
    let (st, v) = s.call(Method::GET, "/v1/whoami", "crt_garbage", None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    let (st, v) = s.call(Method::GET, "/v1/nope", &s.op, None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_such_endpoint"))
    );
    let (st, v) = s.call(Method::DELETE, "/v1/orgs", &s.op, None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    // Malformed JSON and missing fields.
    let resp = s
        .req(Method::POST, "/v1/orgs", &s.op)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "invalid_input");
    let (st, v) = s
        .call(Method::POST, "/v1/orgs", &s.op, Some(json!({"name": "x"})))
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input"))
    );
    assert!(v["detail"].as_str().unwrap().contains("admin"), "{v}");
    // Validation errors name the rule.
    let (st, v) = s
        .call(
            Method::POST,
            "/v1/orgs",
            &s.op,
            Some(json!({"name": "../x", "admin": "a"})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input"))
    );
    assert!(
        v["detail"].as_str().unwrap().contains("organisation name"),
        "{v}"
    );
    let (st, v) = s
        .call(Method::GET, "/v1/audit/system?after=-1", &s.op, None)
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
}

#[tokio::test]
async fn tokens_are_shown_once_revocable_and_never_listed() {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let who = s.ok(Method::GET, "/v1/whoami", &brand, None).await;
    assert_eq!(who["org"], "brand");
    let t = s
        .ok(
            Method::POST,
            "/v1/tokens",
            &brand,
            Some(json!({"label": "ci"})),
        )
        .await;
    let new = t["token"].as_str().unwrap().to_owned();
    let list = s.ok(Method::GET, "/v1/tokens", &brand, None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let secret = &new[37..];
    assert!(
        !list.to_string().contains(secret),
        "a listing reveals a token secret"
    );
    let id = t["id"].as_str().unwrap();
    let (st, _) = s
        .call(Method::DELETE, &format!("/v1/tokens/{id}"), &brand, None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = s.call(Method::GET, "/v1/whoami", &new, None).await;
    assert_eq!(
        (st, v["detail"].as_str()),
        (
            StatusCode::UNAUTHORIZED,
            Some("this token has been revoked")
        )
    );
    // Another organisation cannot revoke brand's token.
    let other = s.org("other").await;
    let who = s.ok(Method::GET, "/v1/whoami", &brand, None).await;
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/v1/tokens/{}", who["token_id"].as_str().unwrap()),
            &other,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(
        s.call(Method::GET, "/v1/whoami", &brand, None).await.0,
        StatusCode::OK
    );
}

/// Walks every GET route of the OpenAPI document as each party and checks that no answer
/// contains a value from a dataset's rows.
#[tokio::test]
async fn no_endpoint_returns_dataset_rows() {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let id = s
        .collab(&brand, &publisher, &["contribute", "analyse", "receive"])
        .await;
    s.declare(&brand, &id, "crm").await;
    let (st, _) = s.upload(&brand, &id, "crm", "text/csv", csv(300)).await;
    assert_eq!(st, StatusCode::OK);
    let doc = s.ok(Method::GET, "/v1/openapi.json", "", None).await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if item.get("get").is_none() {
            continue;
        }
        let concrete = path
            .replace("{id}", &id)
            .replace("{name}", "crm")
            .replace("{chain}", &id);
        for token in [&brand, &publisher, &s.op] {
            let (_, v) = s.call(Method::GET, &concrete, token, None).await;
            let text = v.to_string();
            assert!(
                !text.contains("person-000"),
                "{concrete} leaks a privacy unit"
            );
            assert!(
                !text.contains("secret-hash-"),
                "{concrete} leaks an identifier"
            );
            checked += 1;
        }
    }
    assert!(checked >= 24, "only {checked} answers checked");
}

#[tokio::test]
async fn collaboration_lifecycle_over_http() {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let outsider = s.org("outsider").await;
    let v = s
        .ok(
            Method::POST,
            "/v1/collaborations",
            &brand,
            Some(json!({"name": "spring", "description": "lift study"})),
        )
        .await;
    let id = v["collaboration"]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["members"][0]["org"], "brand");
    // Invite, see nothing before accepting, accept.
    let (st, _) = s
        .call(
            Method::POST,
            &format!("/v1/collaborations/{id}/invitations"),
            &brand,
            Some(json!({"org": "publisher", "abilities": ["contribute"]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/v1/collaborations/{id}/datasets"),
            &publisher,
            None,
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/v1/collaborations/{id}/invitations"),
            &brand,
            Some(json!({"org": "publisher", "abilities": ["contribute"]})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/v1/collaborations/{id}/invitations"),
            &brand,
            Some(json!({"org": "ghost", "abilities": ["contribute"]})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/v1/collaborations/{id}/invitations"),
            &brand,
            Some(json!({"org": "outsider", "abilities": ["fly"]})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input"))
    );
    s.ok(
        Method::POST,
        &format!("/v1/collaborations/{id}/accept"),
        &publisher,
        None,
    )
    .await;
    let (st, _) = s
        .call(
            Method::GET,
            &format!("/v1/collaborations/{id}"),
            &outsider,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let list = s
        .ok(Method::GET, "/v1/collaborations", &publisher, None)
        .await;
    assert_eq!(list[0]["your_abilities"], json!(["contribute"]));
    // Close: only brand's admin; afterwards uploads are gone.
    let (st, _) = s
        .call(
            Method::POST,
            &format!("/v1/collaborations/{id}/close"),
            &publisher,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    s.declare(&publisher, &id, "aud").await;
    let v = s
        .ok(
            Method::POST,
            &format!("/v1/collaborations/{id}/close"),
            &brand,
            None,
        )
        .await;
    assert_eq!(v["destroyed_dataset_keys"], 1);
    let (st, v) = s.upload(&publisher, &id, "aud", "text/csv", csv(3)).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::GONE, Some("collaboration_closed"))
    );
    let audit = s
        .ok(Method::GET, &format!("/v1/audit/{id}"), &publisher, None)
        .await;
    let entries = audit["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["action"] == "collaboration.close"
        && e["outcome"] == "allowed"
        && e["detail"]
            == "destroyed the collaboration key and 1 dataset key(s); deleted 0 stored result(s)"));
    assert_eq!(audit["head"]["seq"].as_u64().unwrap(), entries.len() as u64);
}

/// Every `$ref` in `v`, with the JSON path where it occurs.
fn refs(v: &Value, at: String, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push((at.clone(), x.as_str().unwrap_or_default().to_owned()));
                } else {
                    refs(x, format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The served document is valid where generators and consoles trip: every reference resolves,
/// every `{template}` of a path is a path parameter and every path parameter is in the
/// template, and query parameters are declared `in: query`.
#[tokio::test]
async fn openapi_references_resolve_and_parameters_are_where_the_router_reads_them() {
    let s = Server::start().await;
    let doc = s.ok(Method::GET, "/v1/openapi.json", "", None).await;
    let mut all = Vec::new();
    refs(&doc, String::new(), &mut all);
    assert!(all.len() > 50, "only {} references", all.len());
    for (at, r) in &all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: external reference {r}"));
        assert!(doc.pointer(pointer).is_some(), "{at}: {r} does not resolve");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        let templated: Vec<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let mut in_path = Vec::new();
            for p in &params {
                let name = p["name"].as_str().unwrap();
                match p["in"].as_str().unwrap() {
                    "path" => {
                        assert!(
                            templated.contains(&name),
                            "{method} {path}: {name} is declared in: path but is not in the path"
                        );
                        in_path.push(name);
                    }
                    "query" => assert!(
                        !templated.contains(&name),
                        "{method} {path}: {name} is in the path but declared in: query"
                    ),
                    other => panic!("{method} {path}: {name} in {other}"),
                }
            }
            for t in &templated {
                assert!(
                    in_path.contains(t),
                    "{method} {path}: {{{t}}} has no path parameter"
                );
            }
        }
    }
    // The query parameters that were declared as path parameters before.
    let audit = &doc["paths"]["/v1/audit/{chain}"]["get"]["parameters"];
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "after" && p["in"] == "query")
    );
}

/// Statuses, roles, abilities and column kinds are enums in the document, with exactly the
/// values the server sends (a console and generated clients switch on them).
#[tokio::test]
async fn openapi_lists_the_values_of_every_status_role_and_kind() {
    let s = Server::start().await;
    let doc = s.ok(Method::GET, "/v1/openapi.json", "", None).await;
    let resolve = |schema: &Value| -> Value {
        match schema["$ref"].as_str() {
            Some(r) => doc.pointer(r.strip_prefix('#').unwrap()).unwrap().clone(),
            None => schema.clone(),
        }
    };
    let values = |object: &str, field: &str| -> Vec<String> {
        let o = &doc["components"]["schemas"][object];
        let mut f = resolve(&o["properties"][field]);
        if f["type"] == "array" {
            f = resolve(&f["items"]);
        }
        f["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{object}.{field} lists no values: {f}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(values("CollaborationOut", "status"), ["open", "closed"]);
    assert_eq!(
        values("CollaborationOut", "your_status"),
        ["invited", "active", "declined"]
    );
    assert_eq!(
        values("MemberOut", "abilities"),
        ["contribute", "analyse", "receive"]
    );
    assert_eq!(
        values("DatasetOut", "status"),
        ["pending", "uploading", "ready", "shredded"]
    );
    assert_eq!(values("UserOut", "role"), ["admin", "member"]);
    assert_eq!(
        values("ColumnOut", "type"),
        ["string", "int64", "float64", "bool", "date"]
    );
    assert_eq!(
        values("ColumnOut", "role"),
        ["identifier", "dimension", "metric", "privacy_unit"]
    );
    assert!(values("AnalysisOut", "status").contains(&"released".to_owned()));
}
