//! What every metadata backend must do. Each function takes a fresh, empty store.

use std::sync::Arc;

use cleanroom_core::audit::{Outcome, verify_chain};
use cleanroom_core::entities::{Collaboration, Dataset, Membership, Organisation, Token, User};
use cleanroom_core::ids::{
    ActivationId, AnalysisId, CollaborationId, DatasetId, OrgId, TokenId, UserId,
};
use cleanroom_core::names::{CollaborationName, DatasetName, OrgName, UserName};
use cleanroom_core::party::{
    Abilities, ActivationStatus, AnalysisStatus, CollaborationStatus, DatasetStatus, MemberStatus,
    UserRole,
};
use cleanroom_core::policy::PolicyDraft;
use cleanroom_core::schema::{ColumnSpec, DatasetSchema};
use cleanroom_meta::{
    ActivationMove, ActivationRow, AnalysisRow, ApprovalRow, Charge, Grant, MetaError, MetaStore,
    NewAudit, Orphaned,
};

type Store = Arc<dyn MetaStore>;

const AT: &str = "2026-12-03T00:00:00.000Z";

pub fn audit(chain: &str, action: &str) -> NewAudit {
    NewAudit {
        chain: chain.to_owned(),
        actor: "test/admin".into(),
        action: action.into(),
        target: "-".into(),
        outcome: Outcome::Allowed,
        detail: String::new(),
    }
}

fn token(user: UserId, n: u8) -> Token {
    Token {
        id: TokenId::new(),
        user_id: user,
        label: format!("t{n}"),
        secret_hash: [n; 32],
        created_at: AT.into(),
        revoked_at: None,
        expires_at: None,
        parent_id: None,
    }
}

/// An organisation with an admin and a token, stored.
async fn org(s: &Store, name: &str, operator: bool) -> (Organisation, User, Token) {
    let o = Organisation {
        id: OrgId::new(),
        name: OrgName::parse(name).unwrap(),
        is_operator: operator,
        created_at: AT.into(),
    };
    let u = User {
        id: UserId::new(),
        org_id: o.id,
        name: UserName::parse("admin").unwrap(),
        role: UserRole::Admin,
        created_at: AT.into(),
    };
    let t = token(u.id, name.len() as u8);
    if operator {
        s.bootstrap_operator(&o, &u, &t, audit("system", "org.bootstrap"))
            .await
            .unwrap();
    } else {
        s.create_org(&o, &u, &t, audit("system", "org.create"))
            .await
            .unwrap();
    }
    (o, u, t)
}

fn membership(c: CollaborationId, o: &Organisation, status: MemberStatus) -> Membership {
    Membership {
        collaboration_id: c,
        org_id: o.id,
        org_name: o.name.clone(),
        abilities: Abilities::all(),
        status,
        invited_at: AT.into(),
        joined_at: (status == MemberStatus::Active).then(|| AT.to_owned()),
    }
}

/// A collaboration created by `creator`, stored.
async fn collab(s: &Store, creator: &Organisation) -> Collaboration {
    let c = Collaboration {
        id: CollaborationId::new(),
        name: CollaborationName::parse("spring").unwrap(),
        description: "d".into(),
        creator_org_id: creator.id,
        status: CollaborationStatus::Open,
        created_at: AT.into(),
        closed_at: None,
    };
    let m = membership(c.id, creator, MemberStatus::Active);
    s.create_collaboration(
        &c,
        b"wrapped",
        &m,
        audit(&c.id.to_string(), "collaboration.create"),
    )
    .await
    .unwrap();
    c
}

fn schema() -> DatasetSchema {
    DatasetSchema::new(
        [
            "pid:string:privacy_unit",
            "email:string:identifier",
            "city:string:dimension",
        ]
        .iter()
        .map(|c| ColumnSpec::parse_compact(c).unwrap())
        .collect(),
    )
    .unwrap()
}

async fn dataset(s: &Store, c: &Collaboration, owner: &Organisation, name: &str) -> Dataset {
    let d = Dataset {
        id: DatasetId::new(),
        collaboration_id: c.id,
        owner_org_id: owner.id,
        owner_org_name: owner.name.clone(),
        name: DatasetName::parse(name).unwrap(),
        schema: schema(),
        status: DatasetStatus::Pending,
        row_count: None,
        byte_size: None,
        created_at: AT.into(),
        ready_at: None,
    };
    s.create_dataset(&d, b"dkey", audit(&c.id.to_string(), "dataset.create"))
        .await
        .unwrap();
    d
}

fn analysis(c: &Collaboration, o: &Organisation, id: AnalysisId) -> AnalysisRow {
    AnalysisRow {
        id,
        collaboration_id: c.id,
        org_id: o.id,
        actor: "test/admin".into(),
        kind: "sql".into(),
        request: "SELECT 1".into(),
        fingerprint: format!("fp-{id}"),
        receivers: "[]".into(),
        charges: "[]".into(),
        status: AnalysisStatus::Running,
        result: None,
        error: None,
        reused_from: None,
        created_at: AT.into(),
        finished_at: None,
    }
}

fn grant(epsilon: u64, per_query: u64) -> Grant {
    Grant {
        add_epsilon: epsilon,
        add_delta: 1_000,
        epsilon_per_query: Some(per_query),
        delta_per_query: Some(1_000),
    }
}

pub async fn parties_and_tokens_round_trip(s: Store) {
    let (op, admin, t) = org(&s, "operator", true).await;
    // One operator only.
    let other = Organisation {
        id: OrgId::new(),
        name: OrgName::parse("second").unwrap(),
        is_operator: true,
        created_at: AT.into(),
    };
    let u2 = User {
        id: UserId::new(),
        org_id: other.id,
        name: UserName::parse("x").unwrap(),
        role: UserRole::Admin,
        created_at: AT.into(),
    };
    assert!(matches!(
        s.bootstrap_operator(&other, &u2, &token(u2.id, 9), audit("system", "x"))
            .await,
        Err(MetaError::Conflict(_))
    ));
    let (brand, _, _) = org(&s, "brand", false).await;
    assert_eq!(s.list_orgs().await.unwrap().len(), 2);
    assert_eq!(
        s.find_org(&brand.name).await.unwrap().map(|o| o.id),
        Some(brand.id)
    );
    assert!(
        s.find_org(&OrgName::parse("nobody").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    let member = User {
        id: UserId::new(),
        org_id: op.id,
        name: UserName::parse("member").unwrap(),
        role: UserRole::Member,
        created_at: AT.into(),
    };
    s.create_user(
        &member,
        &token(member.id, 3),
        audit("system", "user.create"),
    )
    .await
    .unwrap();
    assert_eq!(s.list_users(op.id).await.unwrap().len(), 2);
    assert_eq!(
        s.get_user(member.id).await.unwrap().unwrap().name,
        member.name
    );
    let extra = token(admin.id, 4);
    s.create_token(&extra, audit("system", "token.create"))
        .await
        .unwrap();
    // A console session started with `extra`: revoking `extra` ends it too.
    let session = Token {
        parent_id: Some(extra.id),
        expires_at: Some("2999-01-01T00:00:00.000Z".into()),
        ..token(admin.id, 5)
    };
    s.create_token(&session, audit("system", "session.start"))
        .await
        .unwrap();
    assert_eq!(
        s.authenticate(session.id)
            .await
            .unwrap()
            .unwrap()
            .token
            .parent_id,
        Some(extra.id)
    );
    assert_eq!(s.list_tokens(op.id).await.unwrap().len(), 4);
    let a = s.authenticate(t.id).await.unwrap().unwrap();
    assert_eq!((a.user.id, a.org.id), (admin.id, op.id));
    assert_eq!(a.token.secret_hash, t.secret_hash);
    s.revoke_token(extra.id, op.id, audit("system", "token.revoke"))
        .await
        .unwrap();
    assert!(
        s.authenticate(extra.id)
            .await
            .unwrap()
            .unwrap()
            .token
            .revoked_at
            .is_some()
    );
    assert!(
        s.authenticate(session.id)
            .await
            .unwrap()
            .unwrap()
            .token
            .revoked_at
            .is_some(),
        "the session started with a revoked token lives on"
    );
    // Revoking twice, or another organisation's token, is `NotFound`.
    assert!(matches!(
        s.revoke_token(extra.id, op.id, audit("system", "token.revoke"))
            .await,
        Err(MetaError::NotFound(_))
    ));
    assert!(matches!(
        s.revoke_token(t.id, brand.id, audit("system", "token.revoke"))
            .await,
        Err(MetaError::NotFound(_))
    ));
    assert!(s.authenticate(TokenId::new()).await.unwrap().is_none());
    // Settings are written once.
    assert_eq!(s.init_setting("k", b"one").await.unwrap(), b"one");
    assert_eq!(s.init_setting("k", b"two").await.unwrap(), b"one");
    assert_eq!(s.get_setting("k").await.unwrap().unwrap(), b"one");
    // Every successful write above was audited (six), the refused ones left nothing, all in
    // one unbroken chain.
    let (entries, head) = s.audit_page("system", 0, 100).await.unwrap();
    let verified = verify_chain("system", &entries, head).unwrap();
    assert_eq!(verified.seq, 6);
    assert_eq!(entries.len(), 6);
}

pub async fn collaborations_memberships_and_closing(s: Store) {
    let (brand, _, _) = org(&s, "brand", false).await;
    let (publisher, _, _) = org(&s, "publisher", false).await;
    let c = collab(&s, &brand).await;
    let chain = c.id.to_string();
    assert_eq!(s.get_collaboration(c.id).await.unwrap().unwrap(), c);
    s.invite(
        &membership(c.id, &publisher, MemberStatus::Invited),
        audit(&chain, "collaboration.invite"),
    )
    .await
    .unwrap();
    assert!(matches!(
        s.invite(
            &membership(c.id, &publisher, MemberStatus::Invited),
            audit(&chain, "collaboration.invite"),
        )
        .await,
        Err(MetaError::Conflict(_))
    ));
    assert_eq!(s.list_collaborations(publisher.id).await.unwrap().len(), 1);
    s.respond_invitation(
        c.id,
        publisher.id,
        true,
        audit(&chain, "collaboration.accept"),
    )
    .await
    .unwrap();
    assert!(matches!(
        s.respond_invitation(c.id, publisher.id, false, audit(&chain, "x"))
            .await,
        Err(MetaError::Conflict(_))
    ));
    let m = s.get_membership(c.id, publisher.id).await.unwrap().unwrap();
    assert_eq!(m.status, MemberStatus::Active);
    assert_eq!(s.list_members(c.id).await.unwrap().len(), 2);
    dataset(&s, &c, &brand, "crm").await;
    assert!(s.collaboration_key(c.id).await.unwrap().is_some());
    let shredded = s
        .close_collaboration(c.id, audit(&chain, "collaboration.close"))
        .await
        .unwrap();
    assert_eq!(shredded, 1);
    assert!(s.collaboration_key(c.id).await.unwrap().is_none());
    assert_eq!(
        s.get_collaboration(c.id).await.unwrap().unwrap().status,
        CollaborationStatus::Closed
    );
    for d in s.list_datasets(c.id).await.unwrap() {
        assert!(s.dataset_key(d.id).await.unwrap().is_none());
    }
}

pub async fn datasets_uploads_and_names(s: Store) {
    let (brand, _, _) = org(&s, "brand", false).await;
    let (publisher, _, _) = org(&s, "publisher", false).await;
    let c = collab(&s, &brand).await;
    let chain = c.id.to_string();
    let d = dataset(&s, &c, &brand, "crm").await;
    // A pending name of another owner does not clash; the same owner's does.
    let theirs = dataset(&s, &c, &publisher, "crm").await;
    let again = Dataset {
        id: DatasetId::new(),
        ..d.clone()
    };
    assert!(matches!(
        s.create_dataset(&again, b"k", audit(&chain, "dataset.create"))
            .await,
        Err(MetaError::Conflict(_))
    ));
    assert_eq!(
        s.find_datasets(c.id, &d.name).await.unwrap().len(),
        2,
        "one per owner"
    );
    s.begin_upload(d.id).await.unwrap();
    assert!(
        s.uploading_datasets(Orphaned::AllButMine)
            .await
            .unwrap()
            .is_empty(),
        "a replica's own upload is never orphaned for it"
    );
    s.abort_upload(d.id, audit(&chain, "dataset.upload"))
        .await
        .unwrap();
    s.begin_upload(d.id).await.unwrap();
    s.finish_upload(d.id, 10, 100, audit(&chain, "dataset.upload"))
        .await
        .unwrap();
    let ready = s.list_datasets(c.id).await.unwrap();
    let mine = ready.iter().find(|x| x.id == d.id).unwrap();
    assert_eq!(
        (mine.status, mine.row_count, mine.byte_size),
        (DatasetStatus::Ready, Some(10), Some(100))
    );
    // Once one is ready, the other owner's same-named upload cannot become ready too.
    s.begin_upload(theirs.id).await.unwrap();
    assert!(matches!(
        s.finish_upload(theirs.id, 1, 1, audit(&chain, "dataset.upload"))
            .await,
        Err(MetaError::Conflict(_))
    ));
    s.abort_upload(theirs.id, audit(&chain, "dataset.upload"))
        .await
        .unwrap();
    // ...and a new declaration of the ready name by another owner is refused.
    let (agency, _, _) = org(&s, "agency", false).await;
    let late = Dataset {
        id: DatasetId::new(),
        owner_org_id: agency.id,
        owner_org_name: agency.name.clone(),
        ..d.clone()
    };
    assert!(matches!(
        s.create_dataset(&late, b"k", audit(&chain, "dataset.create"))
            .await,
        Err(MetaError::Conflict(_))
    ));
    assert_eq!(
        s.recover_uploads().await.unwrap(),
        vec![(c.id, d.id)],
        "the ready dataset's file must exist"
    );
    assert!(s.dataset_stats(d.id).await.unwrap().is_none());
    s.set_dataset_stats(d.id, "{\"x\":1}").await.unwrap();
    assert_eq!(s.dataset_stats(d.id).await.unwrap().unwrap(), "{\"x\":1}");
}

pub async fn policies_ledgers_analyses_and_approvals(s: Store) {
    let (brand, _, _) = org(&s, "brand", false).await;
    let c = collab(&s, &brand).await;
    let chain = c.id.to_string();
    let d = dataset(&s, &c, &brand, "crm").await;
    let draft = PolicyDraft {
        join_keys: vec!["email".into()],
        dimensions: vec!["city".into()],
        ..Default::default()
    };
    assert_eq!(
        s.set_policy(d.id, &draft, "brand/admin", audit(&chain, "policy.set"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.set_policy(d.id, &draft, "brand/admin", audit(&chain, "policy.set"))
            .await
            .unwrap(),
        2
    );
    let p = s.get_policy(d.id).await.unwrap().unwrap();
    assert_eq!(
        (p.version, p.draft.join_keys.clone()),
        (2, draft.join_keys.clone())
    );
    let l = s
        .grant_budget(
            c.id,
            brand.id,
            grant(100, 10),
            audit(&chain, "budget.grant"),
        )
        .await
        .unwrap();
    assert_eq!((l.epsilon_total, l.epsilon_per_query), (100, 10));
    // A charge over the per-query cap changes nothing.
    let over = [Charge {
        org_id: brand.id,
        epsilon: 11,
        delta: 0,
    }];
    let (a0, a1, a2) = (AnalysisId::new(), AnalysisId::new(), AnalysisId::new());
    assert!(matches!(
        s.begin_analysis(&analysis(&c, &brand, a0), &over, vec![audit(&chain, "q")])
            .await,
        Err(MetaError::BudgetExhausted(_))
    ));
    assert!(s.get_analysis(a0).await.unwrap().is_none());
    let ok = [Charge {
        org_id: brand.id,
        epsilon: 10,
        delta: 100,
    }];
    s.begin_analysis(&analysis(&c, &brand, a1), &ok, vec![audit(&chain, "q")])
        .await
        .unwrap();
    assert!(
        s.running_analyses(Orphaned::AllButMine)
            .await
            .unwrap()
            .is_empty()
    );
    s.finish_analysis(a1, Ok("{\"tables\":[]}"), audit(&chain, "analysis.release"))
        .await
        .unwrap();
    let a = s.get_analysis(a1).await.unwrap().unwrap();
    assert_eq!(a.status.as_str(), "released");
    assert!(a.finished_at.is_some());
    assert_eq!(
        s.find_release(c.id, &format!("fp-{a1}"))
            .await
            .unwrap()
            .map(|r| r.id),
        Some(a1)
    );
    let reuse = AnalysisRow {
        status: AnalysisStatus::Released,
        reused_from: Some(a1),
        result: a.result.clone(),
        ..analysis(&c, &brand, a2)
    };
    s.record_reuse(&reuse, audit(&chain, "analysis.release"))
        .await
        .unwrap();
    assert_eq!(s.list_analyses(c.id).await.unwrap().len(), 2);
    let ledger = &s.ledgers(c.id).await.unwrap()[0];
    assert_eq!((ledger.epsilon_spent, ledger.delta_spent), (10, 100));
    let row = ApprovalRow {
        dataset_id: d.id,
        template: "overlap".into(),
        version: 1,
        approved_by: "brand/admin".into(),
        approved_at: AT.into(),
    };
    s.approve_template(&row, audit(&chain, "template.approve"))
        .await
        .unwrap();
    assert_eq!(s.template_approvals(c.id).await.unwrap(), vec![row]);
    s.revoke_template(d.id, "overlap", 1, audit(&chain, "template.revoke"))
        .await
        .unwrap();
    assert!(s.template_approvals(c.id).await.unwrap().is_empty());
}

fn activation(
    c: &Collaboration,
    partner: &Organisation,
    src: &Dataset,
    dst: &Dataset,
) -> ActivationRow {
    ActivationRow {
        id: ActivationId::new(),
        collaboration_id: c.id,
        org_id: partner.id,
        actor: "publisher/admin".into(),
        source_dataset_id: src.id,
        target_dataset_id: dst.id,
        request: "{}".into(),
        policy_version: 1,
        status: ActivationStatus::Pending,
        decided_by: None,
        decided_at: None,
        delivered: None,
        created_at: AT.into(),
        finished_at: None,
    }
}

fn mv<'a>(from: &str, to: &str) -> ActivationMove<'a> {
    ActivationMove {
        from: ActivationStatus::parse(from).unwrap(),
        to: ActivationStatus::parse(to).unwrap(),
        decided_by: None,
        delivered: None,
        finished: false,
    }
}

pub async fn activations_move_forward_only(s: Store) {
    let (brand, _, _) = org(&s, "brand", false).await;
    let (publisher, _, _) = org(&s, "publisher", false).await;
    let c = collab(&s, &brand).await;
    let chain = c.id.to_string();
    let src = dataset(&s, &c, &brand, "crm").await;
    let dst = dataset(&s, &c, &publisher, "aud").await;
    let a = activation(&c, &publisher, &src, &dst);
    s.create_activation(&a, audit(&chain, "activation.request"))
        .await
        .unwrap();
    assert_eq!(s.list_activations(c.id).await.unwrap().len(), 1);
    let approve = ActivationMove {
        decided_by: Some("brand/admin"),
        ..mv("pending", "approved")
    };
    s.move_activation(a.id, approve, audit(&chain, "activation.approve"))
        .await
        .unwrap();
    // The same move again finds it no longer pending.
    assert!(matches!(
        s.move_activation(a.id, approve, audit(&chain, "activation.approve"))
            .await,
        Err(MetaError::Conflict(_))
    ));
    s.move_activation(
        a.id,
        mv("approved", "consumed"),
        audit(&chain, "activation.download"),
    )
    .await
    .unwrap();
    assert!(
        s.consumed_activations(Orphaned::AllButMine)
            .await
            .unwrap()
            .is_empty()
    );
    let deliver = ActivationMove {
        delivered: Some(42),
        finished: true,
        ..mv("consumed", "delivered")
    };
    s.move_activation(a.id, deliver, audit(&chain, "activation.download"))
        .await
        .unwrap();
    let got = s.get_activation(a.id).await.unwrap().unwrap();
    assert_eq!(
        (got.status.as_str(), got.delivered),
        ("delivered", Some(42))
    );
    assert_eq!(got.decided_by.as_deref(), Some("brand/admin"));
    assert!(got.finished_at.is_some());
    assert!(
        s.consumed_activations(Orphaned::AllButMine)
            .await
            .unwrap()
            .is_empty()
    );
    // A move the life cycle does not allow is refused before it reaches the store's rows.
    assert!(matches!(
        s.move_activation(
            a.id,
            mv("delivered", "approved"),
            audit(&chain, "activation.approve")
        )
        .await,
        Err(MetaError::Conflict(_))
    ));
    let got = s.get_activation(a.id).await.unwrap().unwrap();
    assert_eq!(got.status.as_str(), "delivered");
}

/// 40 analyses race for a ledger that pays for 10: exactly 10 are recorded, and the ledger
/// is spent exactly, never beyond.
pub async fn concurrent_charges_never_overspend(s: Store) {
    let (brand, _, _) = org(&s, "brand", false).await;
    let c = collab(&s, &brand).await;
    let chain = c.id.to_string();
    s.grant_budget(
        c.id,
        brand.id,
        grant(100, 10),
        audit(&chain, "budget.grant"),
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let s = Arc::clone(&s);
        let row = analysis(&c, &brand, AnalysisId::new());
        let chain = chain.clone();
        let org = brand.id;
        tasks.push(tokio::spawn(async move {
            let charge = [Charge {
                org_id: org,
                epsilon: 10,
                delta: 1,
            }];
            s.begin_analysis(&row, &charge, vec![audit(&chain, "analysis.query")])
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(MetaError::BudgetExhausted(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 10);
    let l = &s.ledgers(c.id).await.unwrap()[0];
    assert_eq!(l.epsilon_spent, 100);
    assert_eq!(s.list_analyses(c.id).await.unwrap().len(), 10);
}

/// 30 analyses race, each charging two ledgers (in alternating order) and auditing to two
/// chains (in alternating order): no deadlock, exactly 10 are recorded, both ledgers are
/// spent exactly, and both chains verify.
pub async fn concurrent_charges_across_ledgers_and_chains(s: Store) {
    let (brand, _, _) = org(&s, "brand", false).await;
    let (publisher, _, _) = org(&s, "publisher", false).await;
    let c = collab(&s, &brand).await;
    let chain = c.id.to_string();
    for o in [&brand, &publisher] {
        s.grant_budget(c.id, o.id, grant(100, 10), audit(&chain, "budget.grant"))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..30 {
        let s = Arc::clone(&s);
        let row = analysis(&c, &brand, AnalysisId::new());
        let mut charges = [brand.id, publisher.id].map(|org_id| Charge {
            org_id,
            epsilon: 10,
            delta: 1,
        });
        let mut audits = vec![
            audit(&chain, "analysis.query"),
            audit("system", "analysis.query"),
        ];
        if i % 2 == 1 {
            charges.reverse();
            audits.reverse();
        }
        tasks.push(tokio::spawn(async move {
            s.begin_analysis(&row, &charges, audits).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(MetaError::BudgetExhausted(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(won, 10);
    for l in s.ledgers(c.id).await.unwrap() {
        assert_eq!(l.epsilon_spent, 100, "{l:?}");
    }
    assert_eq!(s.list_analyses(c.id).await.unwrap().len(), 10);
    for ch in [chain.as_str(), "system"] {
        let (entries, head) = s.audit_page(ch, 0, 1000).await.unwrap();
        verify_chain(ch, &entries, head).unwrap();
    }
}

/// 60 concurrent appends to one chain: sequence numbers 1..=60 (plus what was there), each
/// linked to the one before, the head at the last.
pub async fn concurrent_appends_keep_one_chain(s: Store) {
    let chain = "race-chain".to_owned();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let s = Arc::clone(&s);
        let chain = chain.clone();
        tasks.push(tokio::spawn(async move {
            let mut a = audit(&chain, "x");
            a.detail = format!("append {i}");
            s.append_audit(a).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let (entries, head) = s.audit_page(&chain, 0, 1000).await.unwrap();
    assert_eq!(entries.len(), 60);
    let verified = verify_chain(&chain, &entries, head).unwrap();
    assert_eq!(verified.seq, 60);
    assert_eq!(s.audit_head(&chain).await.unwrap(), head);
    assert_eq!(s.audit_entries(&chain, 58, 10).await.unwrap().len(), 2);
}

/// Two uploads of one dataset: one begins, the other is refused.
pub async fn racing_uploads_one_wins(s: Store) {
    let (brand, _, _) = org(&s, "brand", false).await;
    let c = collab(&s, &brand).await;
    let d = dataset(&s, &c, &brand, "crm").await;
    let (a, b) = tokio::join!(s.begin_upload(d.id), s.begin_upload(d.id));
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count(),
        1,
        "{a:?} {b:?}"
    );
}

/// Two endings of one analysis, and two uses of one approval: exactly one wins each race.
pub async fn racing_moves_out_of_one_state_one_wins(s: Store) {
    let (brand, _, _) = org(&s, "brand", false).await;
    let (publisher, _, _) = org(&s, "publisher", false).await;
    let c = collab(&s, &brand).await;
    let chain = c.id.to_string();
    s.grant_budget(
        c.id,
        brand.id,
        grant(100, 10),
        audit(&chain, "budget.grant"),
    )
    .await
    .unwrap();
    for _ in 0..5 {
        let id = AnalysisId::new();
        s.begin_analysis(&analysis(&c, &brand, id), &[], vec![audit(&chain, "q")])
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            s.finish_analysis(id, Ok("{}"), audit(&chain, "analysis.release")),
            s.finish_analysis(id, Err("failed"), audit(&chain, "analysis.release")),
        );
        assert_eq!(
            [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count(),
            1,
            "{a:?} {b:?}"
        );
    }
    let src = dataset(&s, &c, &brand, "crm").await;
    let dst = dataset(&s, &c, &publisher, "aud").await;
    for _ in 0..5 {
        let act = activation(&c, &publisher, &src, &dst);
        s.create_activation(&act, audit(&chain, "activation.request"))
            .await
            .unwrap();
        s.move_activation(act.id, mv("pending", "approved"), audit(&chain, "a"))
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            s.move_activation(act.id, mv("approved", "consumed"), audit(&chain, "d1")),
            s.move_activation(act.id, mv("approved", "consumed"), audit(&chain, "d2")),
        );
        assert_eq!(
            [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count(),
            1,
            "{a:?} {b:?}"
        );
    }
    let (entries, head) = s.audit_page(&chain, 0, 1000).await.unwrap();
    verify_chain(&chain, &entries, head).unwrap();
}

/// Given a chain that refuses appends (`broken`, changed outside the store), every write whose
/// audit entry goes to it fails with `ChainBroken` and leaves nothing behind: the change and
/// its entry are one transaction. Backends call this after breaking the chain their own way.
pub async fn a_failed_append_changes_nothing(s: Store, broken: &str) {
    let (brand, _, _) = org(&s, "brand", false).await;
    let c = collab(&s, &brand).await;
    let chain = c.id.to_string();

    let o = Organisation {
        id: OrgId::new(),
        name: OrgName::parse("ghost").unwrap(),
        is_operator: false,
        created_at: AT.into(),
    };
    let u = User {
        id: UserId::new(),
        org_id: o.id,
        name: UserName::parse("admin").unwrap(),
        role: UserRole::Admin,
        created_at: AT.into(),
    };
    let e = s
        .create_org(&o, &u, &token(u.id, 9), audit(broken, "org.create"))
        .await
        .unwrap_err();
    assert!(matches!(e, MetaError::ChainBroken(_)), "{e:?}");
    assert!(s.find_org(&o.name).await.unwrap().is_none());
    assert!(s.get_user(u.id).await.unwrap().is_none());

    let e = s
        .grant_budget(
            c.id,
            brand.id,
            grant(100, 10),
            audit(broken, "budget.grant"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, MetaError::ChainBroken(_)), "{e:?}");
    assert!(s.ledgers(c.id).await.unwrap().is_empty());

    s.grant_budget(
        c.id,
        brand.id,
        grant(100, 10),
        audit(&chain, "budget.grant"),
    )
    .await
    .unwrap();
    let id = AnalysisId::new();
    let charge = [Charge {
        org_id: brand.id,
        epsilon: 10,
        delta: 1,
    }];
    // The first entry goes to a sound chain, the second to the broken one: neither is kept.
    let e = s
        .begin_analysis(
            &analysis(&c, &brand, id),
            &charge,
            vec![
                audit(&chain, "analysis.query"),
                audit(broken, "analysis.query"),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(e, MetaError::ChainBroken(_)), "{e:?}");
    assert_eq!(s.ledgers(c.id).await.unwrap()[0].epsilon_spent, 0);
    assert!(s.get_analysis(id).await.unwrap().is_none());
    let (entries, head) = s.audit_page(&chain, 0, 1000).await.unwrap();
    assert_eq!(
        head.unwrap().seq,
        2,
        "collaboration.create and budget.grant only"
    );
    verify_chain(&chain, &entries, head).unwrap();

    let e = s
        .close_collaboration(c.id, audit(broken, "collaboration.close"))
        .await
        .unwrap_err();
    assert!(matches!(e, MetaError::ChainBroken(_)), "{e:?}");
    assert_eq!(
        s.get_collaboration(c.id).await.unwrap().unwrap().status,
        CollaborationStatus::Open
    );
    assert!(s.collaboration_key(c.id).await.unwrap().is_some());
}

/// Master-key rotation's one transaction: every open collaboration's wrapped key and the listed
/// settings replaced with the audit entry, or nothing at all.
pub async fn rewrapping_keys_is_all_or_nothing(s: Store) {
    let (brand, _, _) = org(&s, "brand", false).await;
    let (publisher, _, _) = org(&s, "publisher", false).await;
    let open = collab(&s, &brand).await;
    let closed = collab(&s, &publisher).await;
    s.close_collaboration(
        closed.id,
        audit(&closed.id.to_string(), "collaboration.close"),
    )
    .await
    .unwrap();
    s.init_setting("check", b"old-check").await.unwrap();
    // Closed collaborations have no key to re-wrap.
    assert_eq!(
        s.collaboration_keys().await.unwrap(),
        vec![(open.id, b"wrapped".to_vec())]
    );
    let head = s.audit_head("system").await.unwrap().map_or(0, |h| h.seq);
    // A listed collaboration without a key: nothing changes, nothing is recorded.
    let refused = s
        .rewrap_keys(
            &[(open.id, b"new".to_vec()), (closed.id, b"new".to_vec())],
            &[("check", b"new-check".to_vec())],
            audit("system", "master_key.rotate"),
        )
        .await;
    assert!(
        matches!(refused, Err(MetaError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(
        s.collaboration_key(open.id).await.unwrap().unwrap(),
        b"wrapped"
    );
    assert_eq!(s.get_setting("check").await.unwrap().unwrap(), b"old-check");
    assert_eq!(
        s.audit_head("system").await.unwrap().map_or(0, |h| h.seq),
        head
    );
    // A setting that does not exist: the same.
    let refused = s
        .rewrap_keys(
            &[(open.id, b"new".to_vec())],
            &[("missing", b"x".to_vec())],
            audit("system", "master_key.rotate"),
        )
        .await;
    assert!(
        matches!(refused, Err(MetaError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(
        s.collaboration_key(open.id).await.unwrap().unwrap(),
        b"wrapped"
    );
    // The real thing.
    s.rewrap_keys(
        &[(open.id, b"new".to_vec())],
        &[("check", b"new-check".to_vec())],
        audit("system", "master_key.rotate"),
    )
    .await
    .unwrap();
    assert_eq!(s.collaboration_key(open.id).await.unwrap().unwrap(), b"new");
    assert_eq!(s.get_setting("check").await.unwrap().unwrap(), b"new-check");
    let entries = s.audit_entries("system", head, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].action, "master_key.rotate");
}

/// Two replicas (`a`, `b`: two handles on one database). Work a replica began is orphaned for
/// the other only once that replica is gone (silent past the lease, or retired), never for
/// itself, and taking it over succeeds once: a second recovery, or the late owner finishing,
/// meets `Conflict`. The files of uploads under way are kept whoever runs them.
pub async fn work_of_a_gone_replica_is_orphaned_once(a: Store, b: Store) {
    use std::time::Duration;
    const LEASE: Orphaned = Orphaned::SilentFor(Duration::from_secs(60));
    assert_ne!(a.replica(), b.replica());
    assert_eq!(
        a.other_live_replicas(Duration::from_secs(60))
            .await
            .unwrap(),
        0
    );
    a.heartbeat().await.unwrap();
    assert_eq!(
        a.other_live_replicas(Duration::from_secs(60))
            .await
            .unwrap(),
        0
    );
    b.heartbeat().await.unwrap();
    assert_eq!(
        a.other_live_replicas(Duration::from_secs(60))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        b.other_live_replicas(Duration::from_secs(60))
            .await
            .unwrap(),
        1
    );
    let (brand, _, _) = org(&a, "brand", false).await;
    let (publisher, _, _) = org(&a, "publisher", false).await;
    let c = collab(&a, &brand).await;
    let chain = c.id.to_string();
    let src = dataset(&a, &c, &brand, "crm").await;
    let dst = dataset(&a, &c, &publisher, "aud").await;
    let other = dataset(&a, &c, &brand, "other").await;
    a.grant_budget(
        c.id,
        brand.id,
        grant(100, 10),
        audit(&chain, "budget.grant"),
    )
    .await
    .unwrap();
    // `a` starts an upload, an analysis and an activation's delivery.
    a.begin_upload(src.id).await.unwrap();
    let an = AnalysisId::new();
    a.begin_analysis(&analysis(&c, &brand, an), &[], vec![audit(&chain, "q")])
        .await
        .unwrap();
    let act = activation(&c, &publisher, &src, &dst);
    a.create_activation(&act, audit(&chain, "activation.request"))
        .await
        .unwrap();
    for (from, to) in [("pending", "approved"), ("approved", "consumed")] {
        a.move_activation(act.id, mv(from, to), audit(&chain, "activation"))
            .await
            .unwrap();
    }
    // `b` uploads too.
    b.begin_upload(other.id).await.unwrap();

    // While `a` beats, nothing of it is orphaned for `b`; nor is `b`'s own work.
    assert!(b.uploading_datasets(LEASE).await.unwrap().is_empty());
    assert!(b.running_analyses(LEASE).await.unwrap().is_empty());
    assert!(b.consumed_activations(LEASE).await.unwrap().is_empty());
    assert!(a.uploading_datasets(LEASE).await.unwrap().is_empty());
    // One server at a time (SQLite's rule): everything not mine is orphaned.
    let ids = |v: Vec<Dataset>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(
        ids(b.uploading_datasets(Orphaned::AllButMine).await.unwrap()),
        vec![src.id]
    );
    assert_eq!(
        ids(a.uploading_datasets(Orphaned::AllButMine).await.unwrap()),
        vec![other.id]
    );
    // The files of both uploads under way are kept, with the ready ones.
    let mut keep = b.recover_uploads().await.unwrap();
    keep.sort();
    let mut want = vec![(c.id, src.id), (c.id, other.id)];
    want.sort();
    assert_eq!(keep, want);

    // `a` falls silent: past a short lease its work is orphaned for `b`, not for itself.
    tokio::time::sleep(Duration::from_millis(30)).await;
    b.heartbeat().await.unwrap();
    let short = Orphaned::SilentFor(Duration::from_millis(20));
    assert_eq!(
        b.other_live_replicas(Duration::from_millis(20))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        a.other_live_replicas(Duration::from_millis(20))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ids(b.uploading_datasets(short).await.unwrap()),
        vec![src.id]
    );
    // `a` beats again: alive again, nothing orphaned.
    a.heartbeat().await.unwrap();
    assert!(b.uploading_datasets(LEASE).await.unwrap().is_empty());
    // `a` retires: orphaned at once, whatever the lease.
    a.retire().await.unwrap();
    assert_eq!(
        b.other_live_replicas(Duration::from_secs(60))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        ids(b.uploading_datasets(LEASE).await.unwrap()),
        vec![src.id]
    );
    let running = b.running_analyses(LEASE).await.unwrap();
    assert_eq!(running.iter().map(|r| r.id).collect::<Vec<_>>(), vec![an]);
    let consumed = b.consumed_activations(LEASE).await.unwrap();
    assert_eq!(
        consumed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![act.id]
    );

    // `b` takes each over once; a second recovery and the late owner both meet Conflict.
    b.abort_upload(src.id, audit(&chain, "dataset.upload"))
        .await
        .unwrap();
    assert!(matches!(
        b.abort_upload(src.id, audit(&chain, "dataset.upload"))
            .await,
        Err(MetaError::Conflict(_))
    ));
    assert!(matches!(
        a.finish_upload(src.id, 1, 1, audit(&chain, "dataset.upload"))
            .await,
        Err(MetaError::Conflict(_))
    ));
    b.finish_analysis(an, Err("interrupted"), audit(&chain, "analysis.release"))
        .await
        .unwrap();
    assert!(matches!(
        a.finish_analysis(an, Ok("{}"), audit(&chain, "analysis.release"))
            .await,
        Err(MetaError::Conflict(_))
    ));
    let fail = ActivationMove {
        finished: true,
        ..mv("consumed", "failed")
    };
    b.move_activation(act.id, fail, audit(&chain, "activation.download"))
        .await
        .unwrap();
    assert!(matches!(
        b.move_activation(act.id, fail, audit(&chain, "activation.download"))
            .await,
        Err(MetaError::Conflict(_))
    ));
    assert!(b.running_analyses(LEASE).await.unwrap().is_empty());
    assert!(b.consumed_activations(LEASE).await.unwrap().is_empty());
    assert!(b.uploading_datasets(LEASE).await.unwrap().is_empty());
    // Every entry those moves wrote is in one unbroken chain.
    let entries = b.audit_entries(&chain, 0, 1000).await.unwrap();
    verify_chain(&chain, &entries, b.audit_head(&chain).await.unwrap()).unwrap();
}
