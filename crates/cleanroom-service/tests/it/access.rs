//! Authentication and authorisation: every refusal is enforced and audited.

use cleanroom_core::audit::{Outcome, SYSTEM_CHAIN, verify_chain};
use cleanroom_core::party::{Abilities, Ability, UserRole};
use cleanroom_service::ServiceError;

use crate::{Fixture, csv, csv_input, schema};

#[tokio::test]
async fn unknown_malformed_and_revoked_tokens_are_refused_and_audited() {
    let f = Fixture::new().await;
    assert!(matches!(
        f.room.authenticate(None).await,
        Err(ServiceError::Unauthenticated(_))
    ));
    assert!(matches!(
        f.room.authenticate(Some("nope")).await,
        Err(ServiceError::Unauthenticated(_))
    ));
    let forged = format!("crt_{}_{}", "0".repeat(32), "a".repeat(64));
    assert!(matches!(
        f.room.authenticate(Some(&forged)).await,
        Err(ServiceError::Unauthenticated(_))
    ));

    // A second token, revoked, stops working; the first keeps working.
    let (t, stored) = f.room.create_token(&f.brand, "laptop").await.unwrap();
    assert_eq!(stored.label, "laptop");
    assert_eq!(stored.id, t.id);
    let p = f.room.authenticate(Some(t.expose())).await.unwrap();
    assert_eq!(p.org.name.as_str(), "brand");
    f.room
        .revoke_token(&f.brand, &t.id.to_string())
        .await
        .unwrap();
    let e = f.room.authenticate(Some(t.expose())).await.unwrap_err();
    assert_eq!(e.to_string(), "this token has been revoked");
    // A token with the right id but a wrong secret is refused.
    let mut tampered = t.expose().to_string();
    tampered.replace_range(tampered.len() - 4.., "0000");
    assert!(f.room.authenticate(Some(&tampered)).await.is_err());

    let sys = f.chain(&f.operator, SYSTEM_CHAIN).await;
    let denied_auth = sys
        .iter()
        .filter(|e| e.action == "auth" && e.outcome == Outcome::Denied)
        .count();
    // Four bad tokens and the request without one.
    assert_eq!(denied_auth, 5, "{sys:#?}");
    assert!(
        sys.iter().all(|e| !e.detail.contains(&t.expose()[40..])),
        "secret leaked into the audit log"
    );
    verify_chain(SYSTEM_CHAIN, &sys, None).unwrap();
}

#[tokio::test]
async fn only_the_operator_creates_orgs_and_only_admins_create_users() {
    let f = Fixture::new().await;
    let e = f.room.create_org(&f.brand, "rogue", "x").await.unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e}");
    let (_, member_token) = f
        .room
        .create_user(&f.brand, "analyst", UserRole::Member)
        .await
        .unwrap();
    let member = f
        .room
        .authenticate(Some(member_token.expose()))
        .await
        .unwrap();
    let e = f
        .room
        .create_user(&member, "friend", UserRole::Admin)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e}");
    // A member sees only its own tokens and cannot revoke the admin's.
    let tokens = f.room.list_tokens(&member).await.unwrap();
    assert_eq!(tokens.len(), 1);
    let e = f
        .room
        .revoke_token(&member, &f.brand.token_id.to_string())
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
    // Nobody revokes another organisation's tokens.
    let e = f
        .room
        .revoke_token(&f.publisher, &f.brand.token_id.to_string())
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
    // Duplicate names conflict.
    let e = f
        .room
        .create_org(&f.operator, "brand", "x")
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
    let e = f
        .room
        .create_user(&f.brand, "analyst", UserRole::Member)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
    // Names with path tricks are refused before they reach the store.
    let e = f
        .room
        .create_org(&f.operator, "../etc", "x")
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::InvalidInput(_)), "{e}");
    // Only the operator reads the system log.
    let e = f
        .room
        .audit_log(&f.brand, SYSTEM_CHAIN, 0, 10)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e}");
    // init works once.
    assert!(matches!(
        f.room.init_operator("op2", "root").await,
        Err(ServiceError::Conflict(_))
    ));
}

#[tokio::test]
async fn nothing_flows_before_an_invitation_is_accepted() {
    let f = Fixture::new().await;
    let id = f.collab(&[Ability::Contribute], false).await;
    // The invitee sees the collaboration (to decide) but no datasets and cannot contribute.
    let view = f.room.get_collaboration(&f.publisher, &id).await.unwrap();
    assert_eq!(view.you.status.as_str(), "invited");
    let e = f.room.list_datasets(&f.publisher, &id).await.unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e}");
    let e = f
        .room
        .create_dataset(&f.publisher, &id, "audience", schema())
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e}");
    let e = f
        .room
        .audit_log(&f.publisher, &id, 0, 10)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e}");
    // After accepting it can.
    f.room.respond(&f.publisher, &id, true).await.unwrap();
    f.room
        .create_dataset(&f.publisher, &id, "audience", schema())
        .await
        .unwrap();
    // Accepting twice is a conflict.
    let e = f.room.respond(&f.publisher, &id, true).await.unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
}

#[tokio::test]
async fn a_declined_invitation_gives_no_access_and_can_be_renewed() {
    let f = Fixture::new().await;
    let id = f.collab(&[Ability::Contribute], false).await;
    f.room.respond(&f.publisher, &id, false).await.unwrap();
    let e = f
        .room
        .get_collaboration(&f.publisher, &id)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
    assert!(
        f.room
            .list_collaborations(&f.publisher)
            .await
            .unwrap()
            .is_empty()
    );
    f.room
        .invite(
            &f.brand,
            &id,
            "publisher",
            [Ability::Receive].into_iter().collect(),
        )
        .await
        .unwrap();
    f.room.respond(&f.publisher, &id, true).await.unwrap();
    let view = f.room.get_collaboration(&f.publisher, &id).await.unwrap();
    assert!(view.you.abilities.contains(Ability::Receive));
    assert!(!view.you.abilities.contains(Ability::Contribute));
}

#[tokio::test]
async fn outsiders_cannot_tell_a_collaboration_exists() {
    let f = Fixture::new().await;
    let id = f.collab(&[Ability::Contribute], true).await;
    let missing = cleanroom_core::ids::CollaborationId::new().to_string();
    for who in [&f.outsider, &f.operator] {
        let e1 = f.room.get_collaboration(who, &id).await.unwrap_err();
        let e2 = f.room.get_collaboration(who, &missing).await.unwrap_err();
        assert_eq!(
            e1.to_string(),
            e2.to_string(),
            "existence leaks through the error"
        );
        assert!(matches!(e1, ServiceError::NotFound(_)));
        assert!(f.room.list_datasets(who, &id).await.is_err());
        assert!(f.room.audit_log(who, &id, 0, 10).await.is_err());
        assert!(
            f.room
                .create_dataset(who, &id, "x", schema())
                .await
                .is_err()
        );
        assert!(
            f.room
                .upload(who, &id, "x", csv_input(csv(3)))
                .await
                .is_err()
        );
        assert!(
            f.room
                .invite(who, &id, "outsider", Abilities::all())
                .await
                .is_err()
        );
        assert!(f.room.respond(who, &id, true).await.is_err());
        assert!(f.room.close_collaboration(who, &id).await.is_err());
    }
    // The probes are in the system chain, not in the collaboration's.
    let sys = f.chain(&f.operator, SYSTEM_CHAIN).await;
    assert!(
        sys.iter()
            .any(|e| e.actor == "outsider/admin" && e.target == id && e.outcome == Outcome::Denied)
    );
    let own = f.chain(&f.brand, &id).await;
    assert!(own.iter().all(|e| !e.actor.starts_with("outsider/")));
    assert!(
        f.room
            .list_collaborations(&f.outsider)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn members_act_only_within_their_abilities_and_refusals_are_audited() {
    let f = Fixture::new().await;
    let id = f.collab(&[Ability::Receive], true).await;
    let e = f
        .room
        .create_dataset(&f.publisher, &id, "audience", schema())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "your organisation does not have the contribute ability in this collaboration"
    );
    let e = f
        .room
        .invite(&f.publisher, &id, "outsider", Abilities::all())
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e}");
    let e = f
        .room
        .close_collaboration(&f.publisher, &id)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e}");
    // Brand's own dataset: the publisher may not upload into it.
    f.room
        .create_dataset(&f.brand, &id, "crm", schema())
        .await
        .unwrap();
    let e = f
        .room
        .upload(&f.publisher, &id, "crm", csv_input(csv(3)))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e}");
    let log = f.chain(&f.brand, &id).await;
    let denied: Vec<&str> = log
        .iter()
        .filter(|e| e.outcome == Outcome::Denied)
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        denied,
        [
            "dataset.create",
            "collaboration.invite",
            "collaboration.close",
            "dataset.upload"
        ]
    );
    verify_chain(&id, &log, None).unwrap();
    // A member user (not admin) of the creator may not close either.
    let (_, t) = f
        .room
        .create_user(&f.brand, "analyst", UserRole::Member)
        .await
        .unwrap();
    let analyst = f.room.authenticate(Some(t.expose())).await.unwrap();
    let e = f.room.close_collaboration(&analyst, &id).await.unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e}");
}

/// The operator receives each new organisation's first admin token. The organisation's admin
/// replaces it: a new token of its own, then the initial one revoked (docs/security.md).
#[tokio::test]
async fn an_admin_replaces_the_initial_token_it_was_given() {
    let f = Fixture::new().await;
    let (_, _, initial) = f
        .room
        .create_org(&f.operator, "agency", "admin")
        .await
        .unwrap();
    let admin = f.room.authenticate(Some(initial.expose())).await.unwrap();
    let (own, _) = f.room.create_token(&admin, "maya's laptop").await.unwrap();
    let admin = f.room.authenticate(Some(own.expose())).await.unwrap();
    let tokens = f.room.list_tokens(&admin).await.unwrap();
    let (first, _) = tokens
        .iter()
        .find(|(t, _)| t.label == "initial admin token")
        .expect("the initial token is listed");
    assert_eq!(first.id, initial.id);
    f.room
        .revoke_token(&admin, &initial.id.to_string())
        .await
        .unwrap();
    // The copy the operator saw is dead; the organisation's own token works.
    let e = f
        .room
        .authenticate(Some(initial.expose()))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "this token has been revoked");
    let me = f.room.authenticate(Some(own.expose())).await.unwrap();
    assert_eq!(me.org.name.as_str(), "agency");
    let sys = f.chain(&f.operator, SYSTEM_CHAIN).await;
    assert!(sys.iter().any(|e| e.action == "token.revoke"
        && e.target == initial.id.to_string()
        && e.outcome == Outcome::Allowed));
}

/// Input that fails validation in a use case is refused and audited; the entry keeps the rule
/// that was broken, not the value (which could be a pasted secret).
#[tokio::test]
async fn invalid_input_is_audited_without_the_value() {
    let f = Fixture::new().await;
    let id = f.collab(&[Ability::Contribute], true).await;
    let secret = "crt_NOT-A-NAME";
    assert!(f.room.create_org(&f.operator, secret, "x").await.is_err());
    assert!(
        f.room
            .create_user(&f.brand, secret, UserRole::Member)
            .await
            .is_err()
    );
    assert!(f.room.revoke_token(&f.brand, secret).await.is_err());
    assert!(
        f.room
            .create_collaboration(&f.brand, secret, "", Abilities::all())
            .await
            .is_err()
    );
    assert!(f.room.get_collaboration(&f.brand, secret).await.is_err());
    assert!(
        f.room
            .create_dataset(&f.brand, &id, secret, schema())
            .await
            .is_err()
    );
    assert!(f.room.get_dataset(&f.brand, &id, secret).await.is_err());
    assert!(
        f.room
            .invite(&f.brand, &id, secret, Abilities::all())
            .await
            .is_err()
    );
    let sys = f.chain(&f.operator, SYSTEM_CHAIN).await;
    let own = f.chain(&f.brand, &id).await;
    let denied = |log: &[cleanroom_core::audit::AuditEntry], action: &str, detail: &str| {
        log.iter()
            .any(|e| e.action == action && e.outcome == Outcome::Denied && e.detail == detail)
    };
    assert!(
        denied(
            &sys,
            "org.create",
            "invalid_input: invalid organisation name"
        ),
        "{sys:#?}"
    );
    assert!(
        denied(&sys, "user.create", "invalid_input: invalid user name"),
        "{sys:#?}"
    );
    assert!(
        denied(&sys, "token.revoke", "invalid_input: invalid token id"),
        "{sys:#?}"
    );
    assert!(
        denied(
            &sys,
            "collaboration.create",
            "invalid_input: invalid collaboration name"
        ),
        "{sys:#?}"
    );
    assert!(sys.iter().any(|e| e.action == "collaboration.show"
        && e.outcome == Outcome::Denied
        && e.detail.starts_with("not_found: ")));
    assert!(
        denied(
            &own,
            "dataset.create",
            "invalid_input: invalid dataset name"
        ),
        "{own:#?}"
    );
    assert!(
        denied(&own, "dataset.show", "invalid_input: invalid dataset name"),
        "{own:#?}"
    );
    assert!(
        denied(
            &own,
            "collaboration.invite",
            "invalid_input: invalid organisation name"
        ),
        "{own:#?}"
    );
    for e in sys.iter().chain(&own) {
        assert!(
            !e.detail.contains("NOT-A-NAME") && !e.target.contains("NOT-A-NAME"),
            "{e:#?}"
        );
    }
}
