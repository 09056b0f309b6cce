//! Activation through the service: a partner receives the matched segment as its own
//! identifiers, once per approval, above the owner's minimum; and every denial, audited.

use std::collections::BTreeMap;

use cleanroom_core::audit::Outcome;
use cleanroom_core::party::Ability;
use cleanroom_core::policy::{ActivationDraft, PolicyDraft};
use cleanroom_core::schema::{ColumnSpec, DatasetSchema};
use cleanroom_service::{ActivationRequest, ActivationView, Principal, ServiceError};

use crate::{Fixture, csv_input};

fn schema(cols: &[&str]) -> DatasetSchema {
    DatasetSchema::new(
        cols.iter()
            .map(|s| ColumnSpec::parse_compact(s).unwrap())
            .collect(),
    )
    .unwrap()
}

/// The owner's customers: person `c{i}`, email `e{i}`, city `city{i % 3}`, band `b{i % 2}`.
fn crm(count: usize) -> String {
    let mut s = String::from("pid,email_hmac,city,band\n");
    for i in 0..count {
        s.push_str(&format!("c{i},e{i},city{},b{}\n", i % 3, i % 2));
    }
    s
}

/// The partner's audience: user `u{i}`, email `e{i + 1000}`, its own device id `m{i + 1000}`.
fn audience(count: usize) -> String {
    let mut s = String::from("uid,email_hmac,maid,segment\n");
    for i in 0..count {
        s.push_str(&format!("u{i},e{},m{},s{}\n", i + 1000, i + 1000, i % 4));
    }
    s
}

fn owner_policy(activation: Option<ActivationDraft>) -> PolicyDraft {
    PolicyDraft {
        join_keys: vec!["email_hmac".into()],
        dimensions: vec!["city".into(), "band".into()],
        activation,
        ..Default::default()
    }
}

fn rule(partners: &[&str]) -> ActivationDraft {
    ActivationDraft {
        partners: partners.iter().map(|s| s.to_string()).collect(),
        min_segment_size: Some(500),
        dimensions: vec!["city".into()],
    }
}

/// brand owns `crm` (3,000 people); publisher owns `audience` (3,000 people, 2,000 shared).
async fn setup(f: &Fixture, activation: Option<ActivationDraft>) -> String {
    let id = f
        .collab(
            &[Ability::Contribute, Ability::Analyse, Ability::Receive],
            true,
        )
        .await;
    let up = |p: &Principal, name: &'static str, cols: &'static [&'static str], csv: String| {
        let id = id.clone();
        let p = p.clone();
        async move {
            f.room
                .create_dataset(&p, &id, name, schema(cols))
                .await
                .unwrap();
            f.room.upload(&p, &id, name, csv_input(csv)).await.unwrap();
        }
    };
    up(
        &f.brand,
        "crm",
        &[
            "pid:string:privacy_unit",
            "email_hmac:string:identifier",
            "city:string:dimension",
            "band:string:dimension",
        ],
        crm(3000),
    )
    .await;
    up(
        &f.publisher,
        "audience",
        &[
            "uid:string:privacy_unit",
            "email_hmac:string:identifier",
            "maid:string:identifier",
            "segment:string:dimension",
        ],
        audience(3000),
    )
    .await;
    f.room
        .set_policy(&f.brand, &id, "crm", owner_policy(activation))
        .await
        .unwrap();
    id
}

fn ask(filter: &[(&str, &str)], output: &str) -> ActivationRequest {
    ActivationRequest {
        source: "crm".into(),
        target: "audience".into(),
        key: "email_hmac".into(),
        filter: filter
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        output: output.into(),
    }
}

fn rule_of(e: &ServiceError) -> Option<&str> {
    match e {
        ServiceError::PolicyRefused { rule, .. } => Some(rule),
        _ => None,
    }
}

/// A download that must be refused: the error it gets.
async fn refused_download(
    f: &Fixture,
    who: &Principal,
    id: &str,
    activation: &str,
) -> ServiceError {
    f.room
        .download_segment(who, id, activation)
        .await
        .unwrap_err()
}

async fn approved(f: &Fixture, id: &str, req: ActivationRequest) -> ActivationView {
    let a = f
        .room
        .request_activation(&f.publisher, id, req)
        .await
        .unwrap();
    f.room
        .decide_activation(&f.brand, id, &a.id, true)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_partner_receives_its_own_identifiers_of_the_matched_segment_once() {
    let f = Fixture::new().await;
    let id = setup(&f, Some(rule(&["publisher"]))).await;
    let a = f
        .room
        .request_activation(&f.publisher, &id, ask(&[("city", "city1")], "maid"))
        .await
        .unwrap();
    assert_eq!(a.status.as_str(), "pending");
    assert_eq!(
        (a.source_key.as_str(), a.target_key.as_str()),
        ("email_hmac", "email_hmac")
    );
    // Not before the owner approves.
    let e = refused_download(&f, &f.publisher, &id, &a.id).await;
    assert_eq!(e.code(), "activation_not_approved");
    // Only the owner of the source decides; the partner cannot approve its own request.
    let e = f
        .room
        .decide_activation(&f.publisher, &id, &a.id, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "forbidden");
    let v = f
        .room
        .decide_activation(&f.brand, &id, &a.id, true)
        .await
        .unwrap();
    assert_eq!(v.status.as_str(), "approved");
    assert_eq!(v.decided_by.as_deref(), Some("brand/admin"));
    // The owner cannot download the partner's segment.
    let e = refused_download(&f, &f.brand, &id, &a.id).await;
    assert_eq!(e.code(), "forbidden");
    let seg = f
        .room
        .download_segment(&f.publisher, &id, &a.id)
        .await
        .unwrap();
    // Exactly the partner's own device ids of the shared people in city1, sorted.
    let mut want: Vec<String> = (1000..3000)
        .filter(|i| i % 3 == 1)
        .map(|i| format!("m{i}"))
        .collect();
    want.sort();
    assert_eq!(seg.column, "maid");
    assert_eq!(seg.ids, want);
    assert!(seg.ids.iter().all(|v| v.starts_with('m')));
    // Once per approval.
    let e = refused_download(&f, &f.publisher, &id, &a.id).await;
    assert_eq!(e.code(), "activation_consumed");
    let v = f.room.get_activation(&f.brand, &id, &a.id).await.unwrap();
    assert_eq!(
        (v.status.as_str(), v.delivered),
        ("delivered", Some(want.len() as u64))
    );
    // Everything is in the collaboration's chain; the filter value is not.
    let chain = f.chain(&f.brand, &id).await;
    for action in [
        "activation.request",
        "activation.approve",
        "activation.download",
        "activation.deliver",
    ] {
        assert!(
            chain
                .iter()
                .any(|e| e.action == action && e.outcome == Outcome::Allowed && e.target == a.id),
            "{action} missing"
        );
    }
    assert!(chain.iter().any(|e| e.action == "activation.download"
        && e.outcome == Outcome::Denied
        && e.detail.starts_with("activation_consumed: ")));
    assert!(!chain.iter().any(|e| e.detail.contains("city1")));
    // A key named differently on each side works too (source:target).
    let b = approved(
        &f,
        &id,
        ActivationRequest {
            key: "email_hmac:email_hmac".into(),
            ..ask(&[], "email_hmac")
        },
    )
    .await;
    let seg = f
        .room
        .download_segment(&f.publisher, &id, &b.id)
        .await
        .unwrap();
    assert_eq!(seg.ids.len(), 2000);
    // Both parties list both activations; nobody else sees them.
    assert_eq!(
        f.room.list_activations(&f.brand, &id).await.unwrap().len(),
        2
    );
    assert_eq!(
        f.room
            .list_activations(&f.publisher, &id)
            .await
            .unwrap()
            .len(),
        2
    );
    let e = f.room.list_activations(&f.outsider, &id).await.unwrap_err();
    assert_eq!(e.code(), "not_found");
}

#[tokio::test]
async fn requests_outside_the_owners_rule_are_refused_and_audited() {
    let f = Fixture::new().await;
    // A policy without an activation rule.
    let id = setup(&f, None).await;
    let e = f
        .room
        .request_activation(&f.publisher, &id, ask(&[], "maid"))
        .await
        .unwrap_err();
    assert_eq!(rule_of(&e), Some("activation_not_allowed"));
    // A rule that lists another organisation.
    f.room
        .set_policy(
            &f.brand,
            &id,
            "crm",
            owner_policy(Some(rule(&["outsider"]))),
        )
        .await
        .unwrap();
    let e = f
        .room
        .request_activation(&f.publisher, &id, ask(&[], "maid"))
        .await
        .unwrap_err();
    assert_eq!(rule_of(&e), Some("activation_not_allowed"));
    f.room
        .set_policy(
            &f.brand,
            &id,
            "crm",
            owner_policy(Some(rule(&["publisher"]))),
        )
        .await
        .unwrap();
    let cases: Vec<(ActivationRequest, &str)> = vec![
        // Someone else's dataset as the target: the owner's own identifiers.
        (
            ActivationRequest {
                target: "crm".into(),
                ..ask(&[], "email_hmac")
            },
            "target_not_own",
        ),
        // Output that is not an identifier of the partner's dataset.
        (ask(&[], "segment"), "output_not_identifier"),
        (ask(&[], "uid"), "output_not_identifier"),
        // A key that is not a join key of the owner's policy.
        (
            ActivationRequest {
                key: "city:email_hmac".into(),
                ..ask(&[], "maid")
            },
            "key_not_allowed",
        ),
        (
            ActivationRequest {
                key: "email_hmac:segment".into(),
                ..ask(&[], "maid")
            },
            "key_not_allowed",
        ),
        // A dimension of the policy that the rule does not allow, and a non-dimension.
        (ask(&[("band", "b1")], "maid"), "dimension_not_allowed"),
        (ask(&[("pid", "c1")], "maid"), "dimension_not_allowed"),
    ];
    for (req, want) in cases {
        let e = f
            .room
            .request_activation(&f.publisher, &id, req)
            .await
            .unwrap_err();
        assert_eq!(rule_of(&e), Some(want), "{e}");
    }
    // The owner cannot activate its own data to itself.
    let e = f
        .room
        .request_activation(
            &f.brand,
            &id,
            ActivationRequest {
                target: "crm".into(),
                ..ask(&[], "email_hmac")
            },
        )
        .await
        .unwrap_err();
    assert_eq!(rule_of(&e), Some("activation_not_allowed"));
    // Outsiders learn nothing.
    let e = f
        .room
        .request_activation(&f.outsider, &id, ask(&[], "maid"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "not_found");
    let chain = f.chain(&f.brand, &id).await;
    let denied = chain
        .iter()
        .filter(|e| e.action == "activation.request" && e.outcome == Outcome::Denied)
        .count();
    assert_eq!(denied, 10);
    assert!(
        f.room
            .list_activations(&f.publisher, &id)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_partner_without_the_receive_ability_cannot_ask() {
    let f = Fixture::new().await;
    let id = f.collab(&[Ability::Contribute], true).await;
    let e = f
        .room
        .request_activation(&f.publisher, &id, ask(&[], "maid"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "forbidden");
}

#[tokio::test]
async fn a_small_segment_is_refused_without_its_size_and_uses_the_approval() {
    let f = Fixture::new().await;
    let id = setup(&f, Some(rule(&["publisher"]))).await;
    // No one lives in "nowhere": zero people, far below 500.
    let a = approved(&f, &id, ask(&[("city", "nowhere")], "maid")).await;
    let e = refused_download(&f, &f.publisher, &id, &a.id).await;
    assert_eq!(rule_of(&e), Some("segment_too_small"));
    assert!(e.to_string().contains("fewer than 500"));
    assert!(!e.to_string().contains(" 0 "));
    let e = refused_download(&f, &f.publisher, &id, &a.id).await;
    assert_eq!(e.code(), "activation_consumed");
    let v = f
        .room
        .get_activation(&f.publisher, &id, &a.id)
        .await
        .unwrap();
    assert_eq!((v.status.as_str(), v.delivered), ("too_small", None));
    let chain = f.chain(&f.brand, &id).await;
    assert!(chain.iter().any(|e| e.action == "activation.deliver"
        && e.outcome == Outcome::Denied
        && e.detail.starts_with("policy_violation: ")));
    // Many identifiers of one matched person do not pass the minimum: it counts the owner's
    // people. One shared person (e1000) given 600 device ids by the partner.
    let mut s = String::from("uid,email_hmac,maid,segment\n");
    for i in 0..600 {
        s.push_str(&format!("x{i},e1000,fake{i},s0\n"));
    }
    f.room
        .create_dataset(
            &f.publisher,
            &id,
            "padded",
            schema(&[
                "uid:string:privacy_unit",
                "email_hmac:string:identifier",
                "maid:string:identifier",
                "segment:string:dimension",
            ]),
        )
        .await
        .unwrap();
    f.room
        .upload(&f.publisher, &id, "padded", csv_input(s))
        .await
        .unwrap();
    let b = approved(
        &f,
        &id,
        ActivationRequest {
            target: "padded".into(),
            ..ask(&[], "maid")
        },
    )
    .await;
    let e = refused_download(&f, &f.publisher, &id, &b.id).await;
    assert_eq!(rule_of(&e), Some("segment_too_small"));
}

#[tokio::test]
async fn rejected_changed_and_closed_activations_deliver_nothing() {
    let f = Fixture::new().await;
    let id = setup(&f, Some(rule(&["publisher"]))).await;
    // Rejected: never downloadable, and a decision is final.
    let a = f
        .room
        .request_activation(&f.publisher, &id, ask(&[], "maid"))
        .await
        .unwrap();
    let v = f
        .room
        .decide_activation(&f.brand, &id, &a.id, false)
        .await
        .unwrap();
    assert_eq!(v.status.as_str(), "rejected");
    let e = refused_download(&f, &f.publisher, &id, &a.id).await;
    assert_eq!(e.code(), "activation_not_approved");
    let e = f
        .room
        .decide_activation(&f.brand, &id, &a.id, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "conflict");
    // Approved, then the owner withdraws the rule: the download is refused and the approval
    // is not used (it would work again if the rule came back).
    let b = approved(&f, &id, ask(&[], "maid")).await;
    f.room
        .set_policy(&f.brand, &id, "crm", owner_policy(None))
        .await
        .unwrap();
    let e = refused_download(&f, &f.publisher, &id, &b.id).await;
    assert_eq!(rule_of(&e), Some("activation_not_allowed"));
    let v = f
        .room
        .get_activation(&f.publisher, &id, &b.id)
        .await
        .unwrap();
    assert_eq!(v.status.as_str(), "approved");
    // Unknown and malformed ids look the same.
    for bad in ["not-an-id", "00000000-0000-4000-8000-000000000000"] {
        let e = refused_download(&f, &f.publisher, &id, bad).await;
        assert_eq!(e.code(), "not_found");
    }
    // After the collaboration is closed, nothing is delivered.
    f.room
        .set_policy(
            &f.brand,
            &id,
            "crm",
            owner_policy(Some(rule(&["publisher"]))),
        )
        .await
        .unwrap();
    f.room.close_collaboration(&f.brand, &id).await.unwrap();
    let e = refused_download(&f, &f.publisher, &id, &b.id).await;
    assert_eq!(e.code(), "collaboration_closed");
}

#[tokio::test]
async fn two_racing_downloads_use_one_approval() {
    let f = Fixture::new().await;
    let id = setup(&f, Some(rule(&["publisher"]))).await;
    let a = approved(&f, &id, ask(&[], "maid")).await;
    let (x, y) = tokio::join!(
        f.room.download_segment(&f.publisher, &id, &a.id),
        f.room.download_segment(&f.publisher, &id, &a.id),
    );
    let codes: Vec<&str> = [&x, &y]
        .iter()
        .map(|r| match r {
            Ok(_) => "ok",
            Err(e) => e.code(),
        })
        .collect();
    assert!(
        codes == ["ok", "activation_consumed"] || codes == ["activation_consumed", "ok"],
        "{codes:?}"
    );
    let seg = x.or(y).unwrap();
    assert_eq!(seg.ids.len(), 2000);
}
