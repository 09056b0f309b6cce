//! Sessions refuse a peer that disagrees, lies about its sizes, or breaks the protocol.

use cleanroom_psi::{Action, Hello, Message, Party, ProtocolKind, PsiError, Role};

use crate::{Records, Run, config, prepare};

fn hellos(run: &Run, r: &Records, s: &Records) -> (Hello, Hello) {
    let ri = prepare(run, Role::Receiver, r);
    let si = prepare(run, Role::Sender, s);
    (
        config(run, Role::Receiver).hello(&ri),
        config(run, Role::Sender).hello(&si),
    )
}

fn small() -> Records {
    Records::single(&(0..10).map(|i| format!("id{i}")).collect::<Vec<_>>())
}

#[test]
fn hellos_must_agree() {
    let run = Run::new(ProtocolKind::Cardinality, &["email"]);
    let (rh, sh) = hellos(&run, &small(), &small());
    let rc = config(&run, Role::Receiver);

    let mut other = sh.clone();
    other.protocol = ProtocolKind::SumToValuesHolder;
    let e = rc.agree(&rh, &other).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the peer wants a different session: the peer runs sum, we run cardinality"
    );

    let e = rc.agree(&rh, &rh).unwrap_err();
    assert_eq!(e.code(), "incompatible_session");
    assert!(
        e.to_string()
            .contains("exactly one side must be the receiver"),
        "{e}"
    );

    let mut kinds = sh.clone();
    kinds.kinds = vec!["phone".into()];
    assert!(
        rc.agree(&rh, &kinds)
            .unwrap_err()
            .to_string()
            .contains("identifier kinds differ")
    );

    let mut v2 = sh.clone();
    v2.version = 2;
    assert_eq!(
        Hello::decode(&v2.encode()).unwrap_err(),
        PsiError::VersionMismatch { ours: 1, theirs: 2 }
    );

    let mut capped = rc.clone();
    capped.max_peer_items = 9;
    assert_eq!(
        capped.agree(&rh, &sh).unwrap_err(),
        PsiError::TooManyItems {
            announced: 10,
            cap: 9
        }
    );
}

/// Parties for a run, after agreeing.
fn parties(run: &Run, r: &Records, s: &Records, lie: u64) -> (Party, Party) {
    let ri = prepare(run, Role::Receiver, r);
    let si = prepare(run, Role::Sender, s);
    let (rc, sc) = (config(run, Role::Receiver), config(run, Role::Sender));
    let (rh, mut sh) = (rc.hello(&ri), sc.hello(&si));
    let real = sh.clone();
    sh.items[0] -= lie;
    let rs = rc.agree(&rh, &sh).unwrap();
    let ss = sc.agree(&real, &rh).unwrap();
    (Party::new(rs, ri).unwrap(), Party::new(ss, si).unwrap())
}

fn send(p: &mut Party) -> Message {
    match p.next_action().unwrap() {
        Action::Send(m) => m,
        a => panic!("expected to send, got {a:?}"),
    }
}

#[test]
fn a_peer_sending_more_than_it_announced_is_refused() {
    let mut run = Run::new(ProtocolKind::Intersection, &["email"]);
    run.batch = 100;
    let (mut r, mut s) = parties(&run, &small(), &small(), 1);
    let m = send(&mut s);
    assert!(matches!(r.next_action().unwrap(), Action::Receive));
    let e = r.receive(m).unwrap_err();
    assert_eq!(e.code(), "count_mismatch");
    // A failed party stays failed.
    assert!(r.next_action().is_err());
}

#[test]
fn invalid_points_and_out_of_order_messages_are_refused() {
    let run = Run::new(ProtocolKind::Cardinality, &["email"]);
    let (mut r, mut s) = parties(&run, &small(), &small(), 0);
    assert!(matches!(r.next_action().unwrap(), Action::Receive));
    let e = r
        .receive(Message::Points {
            kind: 0,
            points: vec![[0xee; 32]],
        })
        .unwrap_err();
    assert_eq!(e, PsiError::InvalidPoint);

    let (mut r, _) = parties(&run, &small(), &small(), 0);
    assert!(matches!(r.next_action().unwrap(), Action::Receive));
    let e = r.receive(Message::Done).unwrap_err();
    assert_eq!(e.code(), "protocol_violation");

    // The sender speaks first; a message to it before it has sent is refused.
    let e = s.receive(Message::End { count: 0 }).unwrap_err();
    assert_eq!(e.code(), "protocol_violation");
    assert!(matches!(s.next_action().unwrap(), Action::Send(_)));
}
