//! Every kind of denial against the real server: the HTTP status, the problem `code`, and an
//! audit entry with outcome `denied` in the right chain (the collaboration's for its members,
//! `system` for everyone else, so an outsider's probing leaves no trace its target can see).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{Server, audit_after, csv, head, refused};

enum Body {
    Empty,
    Json(Value),
    Csv(String),
}

struct Case {
    what: &'static str,
    method: Method,
    path: String,
    token: String,
    body: Body,
    status: StatusCode,
    code: &'static str,
    /// The chain the refusal must land in.
    chain: String,
    action: &'static str,
    /// A phrase the answer's detail must contain (the check that refused, where several could).
    detail: &'static str,
}

struct Parties {
    brand: String,
    brand_member: String,
    publisher: String,
    agency: String,
    late: String,
    outsider: String,
    revoked: String,
}

async fn parties(s: &Server) -> Parties {
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let agency = s.org("agency").await;
    let late = s.org("late").await;
    let outsider = s.org("outsider").await;
    let v = s
        .ok(
            Method::POST,
            "/v1/users",
            &brand,
            Some(json!({"name": "analyst", "role": "member"})),
        )
        .await;
    let brand_member = v["token"].as_str().unwrap().to_owned();
    let t = s
        .ok(
            Method::POST,
            "/v1/tokens",
            &brand,
            Some(json!({"label": "old"})),
        )
        .await;
    let id = t["id"].as_str().unwrap();
    let (st, _) = s
        .call(Method::DELETE, &format!("/v1/tokens/{id}"), &brand, None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    Parties {
        brand,
        brand_member,
        publisher,
        agency,
        late,
        outsider,
        revoked: t["token"].as_str().unwrap().to_owned(),
    }
}

#[tokio::test]
async fn every_denial_has_its_status_code_and_audit_entry() {
    let s = Server::start().await;
    let p = parties(&s).await;
    // brand's collaboration: publisher may only receive, agency may contribute, late is invited
    // and has not accepted.
    let v = s
        .ok(
            Method::POST,
            "/v1/collaborations",
            &p.brand,
            Some(json!({"name": "spring"})),
        )
        .await;
    let id = v["collaboration"]["id"].as_str().unwrap().to_owned();
    for (org, abilities) in [
        ("publisher", json!(["receive"])),
        ("agency", json!(["contribute"])),
        ("late", json!(["contribute"])),
    ] {
        s.ok(
            Method::POST,
            &format!("/v1/collaborations/{id}/invitations"),
            &p.brand,
            Some(json!({"org": org, "abilities": abilities})),
        )
        .await;
    }
    for t in [&p.publisher, &p.agency] {
        s.ok(
            Method::POST,
            &format!("/v1/collaborations/{id}/accept"),
            t,
            None,
        )
        .await;
    }
    let (st, _) = s.declare(&p.brand, &id, "crm").await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, v) = s.upload(&p.brand, &id, "crm", "text/csv", csv(50)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // A second collaboration, closed after a dataset was declared.
    let v = s
        .ok(
            Method::POST,
            "/v1/collaborations",
            &p.brand,
            Some(json!({"name": "autumn"})),
        )
        .await;
    let closed = v["collaboration"]["id"].as_str().unwrap().to_owned();
    s.declare(&p.brand, &closed, "gone").await;
    s.ok(
        Method::POST,
        &format!("/v1/collaborations/{closed}/close"),
        &p.brand,
        None,
    )
    .await;

    let sys = "system".to_owned();
    let data = format!("/v1/collaborations/{id}/datasets/crm/data");
    let case =
        |what, method, path: &str, token: &str, body, status, code, chain: &str, action| Case {
            what,
            method,
            path: path.to_owned(),
            token: token.to_owned(),
            body,
            status,
            code,
            chain: chain.to_owned(),
            action,
            detail: "",
        };
    let forbidden = (StatusCode::FORBIDDEN, "forbidden");
    let not_found = (StatusCode::NOT_FOUND, "not_found");
    let cases = vec![
        Case {
            detail: "does not have the contribute ability",
            ..case(
                "a member without contribute declares a dataset",
                Method::POST,
                &format!("/v1/collaborations/{id}/datasets"),
                &p.publisher,
                Body::Json(json!({"name": "aud", "columns": crate::columns()})),
                forbidden.0,
                forbidden.1,
                &id,
                "dataset.create",
            )
        },
        Case {
            detail: "does not have the contribute ability",
            ..case(
                "a member without contribute uploads",
                Method::PUT,
                &data,
                &p.publisher,
                Body::Csv(csv(3)),
                forbidden.0,
                forbidden.1,
                &id,
                "dataset.upload",
            )
        },
        Case {
            detail: "only the organisation that owns a dataset may upload",
            ..case(
                "a member with contribute uploads into another member's dataset",
                Method::PUT,
                &data,
                &p.agency,
                Body::Csv(csv(3)),
                forbidden.0,
                forbidden.1,
                &id,
                "dataset.upload",
            )
        },
        Case {
            detail: "only the organisation that created the collaboration may invite",
            ..case(
                "a member that did not create the collaboration invites",
                Method::POST,
                &format!("/v1/collaborations/{id}/invitations"),
                &p.agency,
                Body::Json(json!({"org": "outsider", "abilities": ["receive"]})),
                forbidden.0,
                forbidden.1,
                &id,
                "collaboration.invite",
            )
        },
        Case {
            detail: "only an admin of the organisation that created the collaboration",
            ..case(
                "a member that did not create the collaboration closes it",
                Method::POST,
                &format!("/v1/collaborations/{id}/close"),
                &p.publisher,
                Body::Empty,
                forbidden.0,
                forbidden.1,
                &id,
                "collaboration.close",
            )
        },
        Case {
            detail: "only an admin of the organisation that created the collaboration",
            ..case(
                "a non-admin user of the creator closes it",
                Method::POST,
                &format!("/v1/collaborations/{id}/close"),
                &p.brand_member,
                Body::Empty,
                forbidden.0,
                forbidden.1,
                &id,
                "collaboration.close",
            )
        },
        Case {
            detail: "only the operator's admins may read the system audit log",
            ..case(
                "a non-operator reads the system chain",
                Method::GET,
                "/v1/audit/system",
                &p.brand,
                Body::Empty,
                forbidden.0,
                forbidden.1,
                &sys,
                "audit.read",
            )
        },
        case(
            "an outsider uploads",
            Method::PUT,
            &data,
            &p.outsider,
            Body::Csv(csv(3)),
            not_found.0,
            not_found.1,
            &sys,
            "dataset.upload",
        ),
        case(
            "an outsider lists datasets",
            Method::GET,
            &format!("/v1/collaborations/{id}/datasets"),
            &p.outsider,
            Body::Empty,
            not_found.0,
            not_found.1,
            &sys,
            "dataset.list",
        ),
        case(
            "an outsider reads the audit log",
            Method::GET,
            &format!("/v1/audit/{id}"),
            &p.outsider,
            Body::Empty,
            not_found.0,
            not_found.1,
            &sys,
            "audit.read",
        ),
        Case {
            detail: "has not accepted the invitation",
            ..case(
                "an invitee lists datasets before accepting",
                Method::GET,
                &format!("/v1/collaborations/{id}/datasets"),
                &p.late,
                Body::Empty,
                forbidden.0,
                forbidden.1,
                &id,
                "dataset.list",
            )
        },
        Case {
            detail: "this token has been revoked",
            ..case(
                "a revoked token",
                Method::GET,
                "/v1/whoami",
                &p.revoked,
                Body::Empty,
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                &sys,
                "auth",
            )
        },
        case(
            "an upload into a closed collaboration",
            Method::PUT,
            &format!("/v1/collaborations/{closed}/datasets/gone/data"),
            &p.brand,
            Body::Csv(csv(3)),
            StatusCode::GONE,
            "collaboration_closed",
            &closed,
            "dataset.upload",
        ),
    ];

    for c in cases {
        // brand reads the collaborations' chains (a member; also after closing), the operator
        // the system chain.
        let reader = |chain: &str| if chain == "system" { &s.op } else { &p.brand };
        let before = head(&s, reader(&c.chain), &c.chain).await;
        let collab_before = head(&s, &p.brand, &id).await;
        let mut r = s.req(c.method.clone(), &c.path, &c.token);
        r = match c.body {
            Body::Empty => r,
            Body::Json(v) => r.json(&v),
            Body::Csv(text) => r.header("content-type", "text/csv").body(text),
        };
        let resp = r.send().await.unwrap();
        let status = resp.status();
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{}",
            c.what
        );
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            (status, v["code"].as_str()),
            (c.status, Some(c.code)),
            "{}: {v}",
            c.what
        );
        assert!(
            v["detail"].as_str().unwrap().contains(c.detail),
            "{}: {v}",
            c.what
        );
        let entries = audit_after(&s, reader(&c.chain), &c.chain, before).await;
        assert!(
            refused(&entries, c.action, c.code, "denied"),
            "{}: no denied {} entry with code {} in chain {}: {entries:#?}",
            c.what,
            c.action,
            c.code,
            c.chain
        );
        if c.chain == "system" {
            assert_eq!(
                head(&s, &p.brand, &id).await,
                collab_before,
                "{}: a refusal outside the collaboration reached its chain",
                c.what
            );
        }
    }
}
