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
    other.protocol = ProtocolKind::Sum;
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

    let mut other = sh.clone();
    other.version = cleanroom_psi::PROTOCOL_VERSION + 1;
    assert_eq!(
        Hello::decode(&other.encode()).unwrap_err(),
        PsiError::VersionMismatch {
            ours: cleanroom_psi::PROTOCOL_VERSION,
            theirs: cleanroom_psi::PROTOCOL_VERSION + 1
        }
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

    // A setting above the ceiling does not lift it: sizes derived from a count stay small
    // enough not to overflow.
    let mut unbounded = rc.clone();
    unbounded.max_peer_items = u64::MAX;
    let mut huge = sh.clone();
    huge.items = vec![cleanroom_psi::MAX_PEER_ITEMS + 1];
    assert_eq!(
        unbounded.agree(&rh, &huge).unwrap_err(),
        PsiError::TooManyItems {
            announced: cleanroom_psi::MAX_PEER_ITEMS + 1,
            cap: cleanroom_psi::MAX_PEER_ITEMS
        }
    );
    huge.items = vec![cleanroom_psi::MAX_PEER_ITEMS];
    assert!(unbounded.agree(&rh, &huge).is_ok());
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
    // Both stream at once: the receiver's first query goes out before the sender's set is in.
    assert!(matches!(send(&mut r), Message::Points { .. }));
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
    // Each side sends its part of a round before it receives: a message before is refused.
    let e = r.receive(Message::End { count: 0 }).unwrap_err();
    assert_eq!(e.code(), "protocol_violation");
    let (mut r, _) = parties(&run, &small(), &small(), 0);
    assert!(matches!(send(&mut r), Message::Tuples { .. }));
    assert!(matches!(r.next_action().unwrap(), Action::Receive));
    let e = r
        .receive(Message::Points {
            kind: 0,
            points: vec![[0xee; 32]],
        })
        .unwrap_err();
    assert_eq!(e, PsiError::InvalidPoint);

    let (mut r, _) = parties(&run, &small(), &small(), 0);
    assert!(matches!(send(&mut r), Message::Tuples { .. }));
    assert!(matches!(r.next_action().unwrap(), Action::Receive));
    let e = r.receive(Message::Done).unwrap_err();
    assert_eq!(e.code(), "protocol_violation");

    // The sender speaks first; a message to it before it has sent is refused.
    let e = s.receive(Message::End { count: 0 }).unwrap_err();
    assert_eq!(e.code(), "protocol_violation");
    assert!(matches!(s.next_action().unwrap(), Action::Send(_)));
}

#[test]
fn the_two_sums_do_not_run_against_each_other() {
    // The listening side asks for the sum to go to the values holder, the other side runs the
    // default: both hellos are well-formed, and the mismatch is named on both sides.
    let default = Run::new(ProtocolKind::Sum, &["email"]);
    let to_holder = Run::new(ProtocolKind::SumToValuesHolder, &["email"]);
    let learner = config(&default, Role::Receiver);
    let learner_hello = learner.hello(&prepare(&default, Role::Receiver, &small()));
    let holder = config(&to_holder, Role::Sender);
    let holder_hello = holder.hello(&prepare(&to_holder, Role::Sender, &small()));
    let wire = |h: &Hello| Hello::decode(&h.encode()).unwrap();
    let e = learner
        .agree(&learner_hello, &wire(&holder_hello))
        .unwrap_err();
    assert_eq!(e.code(), "incompatible_session");
    assert_eq!(
        e.to_string(),
        "the peer wants a different session: the peer runs sum-to-values-holder, we run sum \
         (the sum goes to the party without values unless both sides pass --sum-to values-holder)"
    );
    let e = holder
        .agree(&holder_hello, &wire(&learner_hello))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("the peer runs sum, we run sum-to-values-holder"),
        "{e}"
    );
}

#[test]
fn count_noise_is_refused_where_it_could_not_protect_anyone() {
    // In the default sum the learner finds the matches itself and sees the count exactly.
    let mut run = Run::new(ProtocolKind::Sum, &["email"]);
    let (lh, hh) = hellos(&run, &small(), &small());
    run.count_epsilon = Some(1.0);
    let (lc, hc) = (config(&run, Role::Receiver), config(&run, Role::Sender));
    let mut asking = hh.clone();
    asking.count_epsilon = Some(1.0);
    let e = config(&Run::new(ProtocolKind::Sum, &["email"]), Role::Receiver)
        .agree(&lh, &asking)
        .unwrap_err();
    assert_eq!(e.code(), "incompatible_session");
    assert!(
        e.to_string().contains("sees the intersection size exactly"),
        "{e}"
    );
    let mut own = lh.clone();
    own.count_epsilon = Some(1.0);
    assert_eq!(lc.agree(&own, &hh).unwrap_err().code(), "invalid_parameter");
    assert_eq!(
        hc.agree(&asking, &lh).unwrap_err().code(),
        "invalid_parameter"
    );
    // Noise on the sum is fine: the values holder adds it.
    let mut run = Run::new(ProtocolKind::Sum, &["email"]);
    run.sum_epsilon = Some(0.5);
    let (lh, hh) = hellos(&run, &small(), &small());
    let s = config(&run, Role::Receiver).agree(&lh, &hh).unwrap();
    assert_eq!(s.sum_epsilon(), Some(0.5));
}

#[test]
fn a_sum_that_could_exceed_the_decryptable_range_is_refused_up_front() {
    // Ten records of values up to 2^41 could add up past 2^44: the learner could not decrypt.
    let mut run = Run::new(ProtocolKind::Sum, &["email"]);
    run.max_value = 1 << 41;
    let (lh, hh) = hellos(&run, &small(), &small());
    for (c, ours, theirs) in [
        (config(&run, Role::Receiver), &lh, &hh),
        (config(&run, Role::Sender), &hh, &lh),
    ] {
        let e = c.agree(ours, theirs).unwrap_err();
        assert_eq!(e.code(), "incompatible_session");
        assert!(e.to_string().contains("lower --max-value"), "{e}");
    }
    run.max_value = 1 << 40;
    let (lh, hh) = hellos(&run, &small(), &small());
    assert!(config(&run, Role::Receiver).agree(&lh, &hh).is_ok());
}

#[test]
fn the_values_holder_decrypts_only_the_masked_sums_it_expects() {
    let run = Run::new(ProtocolKind::Sum, &["email"]);
    let (mut learner, mut holder) = parties(&run, &small(), &small(), 0);
    // Drive both until the learner has sent its masked sums; then replay them with one more.
    let mut to_holder = std::collections::VecDeque::new();
    let mut to_learner = std::collections::VecDeque::new();
    let masked = loop {
        match learner.next_action().unwrap() {
            Action::Send(m @ Message::MaskedSums { .. }) => break m,
            Action::Send(m) => to_holder.push_back(m),
            Action::Receive => {
                if let Some(m) = to_learner.pop_front() {
                    learner.receive(m).unwrap();
                }
            }
            Action::Finished => panic!("finished early"),
        }
        match holder.next_action().unwrap() {
            Action::Send(m) => to_learner.push_back(m),
            Action::Receive => {
                if let Some(m) = to_holder.pop_front() {
                    holder.receive(m).unwrap();
                }
            }
            Action::Finished => panic!("finished early"),
        }
    };
    while let Some(m) = to_holder.pop_front() {
        holder.receive(m).unwrap();
    }
    let Message::MaskedSums { mut sums } = masked else {
        unreachable!()
    };
    sums.push(sums[0]);
    assert!(matches!(holder.next_action().unwrap(), Action::Receive));
    let e = holder.receive(Message::MaskedSums { sums }).unwrap_err();
    assert_eq!(e.code(), "protocol_violation");
}

/// Drives a session, passing every message through `tamper` (told whether the receiver sent
/// it), until a party fails: its side and error. Panics if the session completes.
fn tampered(
    mut r: Party,
    mut s: Party,
    mut tamper: impl FnMut(bool, Message) -> Message,
) -> (Role, PsiError) {
    // queues[0]: to the receiver; queues[1]: to the sender.
    let mut queues: [std::collections::VecDeque<Message>; 2] = Default::default();
    loop {
        let mut progress = false;
        for (i, p, role) in [(0, &mut r, Role::Receiver), (1, &mut s, Role::Sender)] {
            let step = match p.next_action() {
                Ok(Action::Send(m)) => {
                    queues[1 - i].push_back(tamper(role == Role::Receiver, m));
                    Ok(true)
                }
                Ok(Action::Receive) => match queues[i].pop_front() {
                    Some(m) => p.receive(m).map(|_| true),
                    None => Ok(false),
                },
                Ok(Action::Finished) => Ok(false),
                Err(e) => Err(e),
            };
            match step {
                Ok(moved) => progress |= moved,
                Err(e) => return (role, e),
            }
        }
        assert!(progress, "the session ended or stalled without an error");
    }
}

#[test]
fn the_ot_intersection_refuses_a_peer_that_breaks_its_steps() {
    let mut run = Run::new(ProtocolKind::IntersectionOt, &["email"]);
    run.batch = 128;
    let fresh = |lie| parties(&run, &small(), &small(), lie);

    // A sender with more items than it announced: the receiver counts its outputs.
    let (r, s) = fresh(1);
    let (side, e) = tampered(r, s, |_, m| m);
    assert_eq!((side, e.code()), (Role::Receiver, "count_mismatch"), "{e}");

    // Base-OT answers: a point off the curve, or too few of them.
    for cut in [false, true] {
        let (r, s) = fresh(0);
        let (side, e) = tampered(r, s, |from_r, m| match m {
            Message::OtChoices { mut points, seed } if !from_r => {
                if cut {
                    points.pop();
                } else {
                    points[3] = [0xee; 32];
                }
                Message::OtChoices { points, seed }
            }
            m => m,
        });
        let want = if cut {
            "count_mismatch"
        } else {
            "invalid_point"
        };
        assert_eq!((side, e.code()), (Role::Receiver, want), "{e}");
    }

    // An invalid base-OT point from the receiver.
    let (r, s) = fresh(0);
    let (side, e) = tampered(r, s, |_, m| match m {
        Message::OtSetup { seed, buckets, .. } => Message::OtSetup {
            point: [0xee; 32],
            seed,
            buckets,
        },
        m => m,
    });
    assert_eq!((side, e), (Role::Sender, PsiError::InvalidPoint));

    // Fewer buckets than the sender's memory setting allows (10 items a side at 2 a bucket
    // give 8 buckets): one bucket would hold every item, at any size.
    let small_buckets = Run::new(ProtocolKind::IntersectionOt, &["email"]).bucketed(2, [None; 2]);
    for (buckets, refused) in [(1u16, true), (4, true), (8, false), (16, false)] {
        let (r, s) = parties(&small_buckets, &small(), &small(), 0);
        let tamper = |_: bool, m: Message| match m {
            Message::OtSetup { point, seed, .. } => Message::OtSetup {
                point,
                seed,
                buckets,
            },
            m => m,
        };
        if refused {
            let (side, e) = tampered(r, s, tamper);
            assert_eq!(
                (side, e.code()),
                (Role::Sender, "incompatible_session"),
                "{buckets}: {e}"
            );
            assert!(e.to_string().contains("needs at least 8"), "{e}");
        } else {
            // As many buckets as the setting gives, or more: the sender answers the setup
            // (the receiver speaks first, with it).
            let (mut r, mut s) = (r, s);
            let Action::Send(m) = r.next_action().unwrap() else {
                panic!("the receiver speaks first")
            };
            assert!(matches!(s.next_action().unwrap(), Action::Receive));
            s.receive(tamper(true, m)).unwrap();
            assert!(matches!(
                s.next_action().unwrap(),
                Action::Send(Message::OtChoices { .. })
            ));
        }
    }

    // Chunks of another size than the session's (128 bins at batch 128), and more outputs
    // in a message than the batch.
    let (r, s) = fresh(0);
    let (side, e) = tampered(r, s, |_, m| match m {
        Message::OtColumns { .. } => Message::OtColumns {
            bins: 256,
            columns: vec![0; 256 * 64],
        },
        m => m,
    });
    assert_eq!((side, e.code()), (Role::Sender, "malformed_message"), "{e}");
    assert!(e.to_string().contains("next chunk has 128"), "{e}");
    let (r, s) = fresh(0);
    let (side, e) = tampered(r, s, |_, m| match m {
        Message::OtOutputs { hash, width, .. } => Message::OtOutputs {
            hash,
            width,
            outputs: vec![1; 129 * usize::from(width)],
        },
        m => m,
    });
    assert_eq!(
        (side, e.code()),
        (Role::Receiver, "malformed_message"),
        "{e}"
    );
    assert!(e.to_string().contains("1 to 128"), "{e}");

    // Columns for more bins than the session has.
    let (r, s) = fresh(0);
    let (side, e) = tampered(r, s, |_, m| match m {
        Message::OtColumns { .. } => Message::OtColumns {
            bins: 16_384,
            columns: vec![0; 16_384 * 64],
        },
        m => m,
    });
    assert_eq!((side, e.code()), (Role::Sender, "count_mismatch"), "{e}");

    // Outputs of another width than the session's.
    let (r, s) = fresh(0);
    let (side, e) = tampered(r, s, |_, m| match m {
        Message::OtOutputs { hash, outputs, .. } => Message::OtOutputs {
            hash,
            width: 16,
            outputs: vec![0; outputs.len() / 8 * 16],
        },
        m => m,
    });
    assert_eq!(
        (side, e.code()),
        (Role::Receiver, "malformed_message"),
        "{e}"
    );

    // An empty batch of outputs.
    let (r, s) = fresh(0);
    let (side, e) = tampered(r, s, |_, m| match m {
        Message::OtOutputs { hash, width, .. } => Message::OtOutputs {
            hash,
            width,
            outputs: Vec::new(),
        },
        m => m,
    });
    assert_eq!(
        (side, e.code()),
        (Role::Receiver, "malformed_message"),
        "{e}"
    );

    // An acknowledgement of fewer outputs than were sent.
    let (r, s) = fresh(0);
    let (side, e) = tampered(r, s, |_, m| match m {
        Message::End { count } => Message::End { count: count - 1 },
        m => m,
    });
    assert_eq!((side, e.code()), (Role::Sender, "count_mismatch"), "{e}");

    // Outputs of a later hash function before the first one's are complete.
    let (r, s) = fresh(0);
    let (side, e) = tampered(r, s, |_, m| match m {
        Message::OtOutputs {
            hash: 0,
            width,
            outputs,
        } => Message::OtOutputs {
            hash: 1,
            width,
            outputs,
        },
        m => m,
    });
    assert_eq!((side, e.code()), (Role::Receiver, "count_mismatch"), "{e}");

    // Something else where a bucket's key belongs.
    let (r, s) = fresh(0);
    let (side, e) = tampered(r, s, |_, m| match m {
        Message::OtBucket { .. } => Message::Done,
        m => m,
    });
    assert_eq!(
        (side, e.code()),
        (Role::Sender, "protocol_violation"),
        "{e}"
    );

    // A message of another protocol where the setup belongs.
    let (r, s) = fresh(0);
    let (side, e) = tampered(r, s, |_, m| match m {
        Message::OtSetup { .. } => Message::Done,
        m => m,
    });
    assert_eq!(
        (side, e.code()),
        (Role::Sender, "protocol_violation"),
        "{e}"
    );
}

#[test]
fn the_two_intersection_engines_do_not_run_against_each_other() {
    let ecdh = Run::new(ProtocolKind::Intersection, &["email"]);
    let ot = Run::new(ProtocolKind::IntersectionOt, &["email"]);
    let rh = config(&ecdh, Role::Receiver).hello(&prepare(&ecdh, Role::Receiver, &small()));
    let sh = config(&ot, Role::Sender).hello(&prepare(&ot, Role::Sender, &small()));
    let e = config(&ecdh, Role::Receiver)
        .agree(&rh, &Hello::decode(&sh.encode()).unwrap())
        .unwrap_err();
    assert_eq!(e.code(), "incompatible_session");
    assert!(
        e.to_string()
            .contains("the peer runs intersection-ot, we run intersection"),
        "{e}"
    );
}

/// Identifiers whose OT items all fall into the first of 32 buckets.
fn colliding(n: usize) -> Vec<String> {
    let kinds = cleanroom_psi::group::Kinds::new(&["email"]).unwrap();
    (0u64..)
        .map(|i| format!("crafted-{i}@example.com"))
        .filter(|id| kinds.ot_item(0, id.as_bytes())[0] < 8)
        .take(n)
        .collect()
}

#[test]
fn identifiers_chosen_to_fill_one_bucket_are_refused_by_their_own_side() {
    // 300 items in buckets of about 10: 32 buckets, each padded to 47. All 300 in bucket 0 is
    // what padding cannot hide: the side that holds them stops, before sending anything of
    // that bucket, with a message that says why.
    let mut run = Run::new(ProtocolKind::IntersectionOt, &["email"]).bucketed(10, [None, None]);
    run.batch = 128;
    let crafted = crate::Records::single(&colliding(300));
    let spread = crate::Records::single(
        &(0..300)
            .map(|i| format!("p{i}@example.com"))
            .collect::<Vec<_>>(),
    );
    for (r, s, bad) in [
        (&crafted, &spread, Role::Receiver),
        (&spread, &crafted, Role::Sender),
    ] {
        let ri = crate::prepare(&run, Role::Receiver, r);
        let si = crate::prepare(&run, Role::Sender, s);
        let (rc, sc) = (config(&run, Role::Receiver), config(&run, Role::Sender));
        let (rh, sh) = (rc.hello(&ri), sc.hello(&si));
        let rp = Party::new(rc.agree(&rh, &sh).unwrap(), ri).unwrap();
        let sp = Party::new(sc.agree(&sh, &rh).unwrap(), si).unwrap();
        let (side, e) = tampered(rp, sp, |_, m| m);
        assert_eq!((side, e.code()), (bad, "invalid_parameter"), "{e}");
        assert!(e.to_string().contains("chosen to collide"), "{e}");
    }
}

#[test]
fn both_sums_refuse_a_peer_that_breaks_the_exchange() {
    for protocol in [ProtocolKind::Sum, ProtocolKind::SumToValuesHolder] {
        let run = Run::new(protocol, &["email"]);
        // The values holder is the sender of the default sum and the receiver of the other.
        let holder_is_receiver = protocol == ProtocolKind::SumToValuesHolder;
        let ids_side = if holder_is_receiver {
            Role::Sender
        } else {
            Role::Receiver
        };
        let from_holder = |by_receiver: bool| by_receiver == holder_is_receiver;
        let fresh = || parties(&run, &small(), &small(), 0);

        // Records before the key.
        let (r, s) = fresh();
        let (role, e) = tampered(r, s, |by_r, m| match m {
            Message::PublicKey(_) if from_holder(by_r) => Message::SumRecords {
                width: 1,
                points: vec![],
                ciphertexts: vec![],
            },
            m => m,
        });
        assert_eq!(
            (role, e.code()),
            (ids_side, "protocol_violation"),
            "{protocol:?}"
        );
        assert!(e.to_string().contains("public key"), "{e}");

        // The holder keeps the return of the identifiers side's set to itself: its first end
        // (the return's) then does not add up.
        let (r, s) = fresh();
        let (role, e) = tampered(r, s, |by_r, m| match m {
            Message::Tags { tags, .. } if from_holder(by_r) => Message::Tags {
                section: 0,
                width: 1,
                tags: tags[..tags.len() - 1].to_vec(),
            },
            m => m,
        });
        assert_eq!(
            (role, e.code()),
            (ids_side, "count_mismatch"),
            "{protocol:?}"
        );

        // Records of the wrong width, or with a ciphertext missing.
        for (width, points) in [(2u8, 2), (1, 2)] {
            let (r, s) = fresh();
            let mut first = true;
            let (role, e) = tampered(r, s, |by_r, m| match m {
                Message::SumRecords {
                    points: p,
                    ciphertexts,
                    ..
                } if from_holder(by_r) && std::mem::take(&mut first) => Message::SumRecords {
                    width,
                    points: p.iter().cycle().take(points).copied().collect(),
                    ciphertexts: ciphertexts[..1].to_vec(),
                },
                m => m,
            });
            assert_eq!(
                (role, e.code()),
                (ids_side, "malformed_message"),
                "{protocol:?}"
            );
        }

        // A second key.
        let (r, s) = fresh();
        let mut key = None;
        let (role, e) = tampered(r, s, |by_r, m| match m {
            Message::PublicKey(k) if from_holder(by_r) => {
                key = Some(k);
                m
            }
            Message::SumRecords { .. } if from_holder(by_r) && key.is_some() => {
                Message::PublicKey(key.take().unwrap())
            }
            m => m,
        });
        assert_eq!(
            (role, e.code()),
            (ids_side, "protocol_violation"),
            "{protocol:?}"
        );

        // Records in a message: none, or one more than the batch of 7 holds.
        for n in [0, 8] {
            let (r, s) = fresh();
            let (role, e) = tampered(r, s, |by_r, m| match m {
                Message::SumRecords {
                    width,
                    points,
                    ciphertexts,
                } if from_holder(by_r) => Message::SumRecords {
                    width,
                    points: points.iter().cycle().take(n).copied().collect(),
                    ciphertexts: ciphertexts.iter().cycle().take(n).copied().collect(),
                },
                m => m,
            });
            assert_eq!(
                (role, e.code()),
                (ids_side, "malformed_message"),
                "{protocol:?}, {n} records"
            );
            assert!(e.to_string().contains("1 to 7"), "{e}");
        }

        // The return of a set the identifiers side has not finished sending (10 identifiers
        // at batch 7: its end is its third message; the holder's first records come earlier).
        let (r, s) = fresh();
        let mut first = true;
        let (role, e) = tampered(r, s, |by_r, m| match m {
            Message::SumRecords { .. } if from_holder(by_r) && std::mem::take(&mut first) => {
                Message::Tags {
                    section: 0,
                    width: 1,
                    tags: vec![[7; 16]],
                }
            }
            m => m,
        });
        assert_eq!(
            (role, e.code()),
            (ids_side, "protocol_violation"),
            "{protocol:?}"
        );
    }
}

#[test]
fn both_sums_refuse_a_holder_that_holds_back_the_return() {
    for protocol in [ProtocolKind::Sum, ProtocolKind::SumToValuesHolder] {
        let run = Run::new(protocol, &["email"]);
        let holder_is_receiver = protocol == ProtocolKind::SumToValuesHolder;
        // The identifiers side has 10 identifiers (3 messages at batch 7: two batches and
        // the end), the holder 300 records (43 messages of records).
        let big = Records::single(&(0..300).map(|i| format!("id{i}")).collect::<Vec<_>>());
        let (r, s) = if holder_is_receiver {
            parties(&run, &big, &small(), 0)
        } else {
            parties(&run, &small(), &big, 0)
        };
        let (mut ids, mut holder) = if holder_is_receiver { (s, r) } else { (r, s) };
        // An honest holder, except that the return of the other side's set (its tags and
        // their end, the first end it sends) is kept back and its records go out instead.
        let (mut to_ids, mut to_holder, mut held) = (
            std::collections::VecDeque::new(),
            std::collections::VecDeque::new(),
            Vec::new(),
        );
        let mut returned = false;
        let e = loop {
            let mut progress = false;
            match holder.next_action().unwrap() {
                Action::Send(m) => {
                    progress = true;
                    match m {
                        Message::Tags { .. } => held.push(m),
                        Message::End { .. } if !returned => {
                            returned = true;
                            held.push(m);
                        }
                        m => to_ids.push_back(m),
                    }
                }
                Action::Receive => {
                    if let Some(m) = to_holder.pop_front() {
                        progress = true;
                        holder.receive(m).unwrap();
                    }
                }
                Action::Finished => {}
            }
            match ids.next_action() {
                Ok(Action::Send(m)) => {
                    progress = true;
                    to_holder.push_back(m);
                }
                Ok(Action::Receive) => {
                    if let Some(m) = to_ids.pop_front() {
                        progress = true;
                        if let Err(e) = ids.receive(m) {
                            break e;
                        }
                    }
                }
                Ok(Action::Finished) => panic!("{protocol:?}: the identifiers side finished"),
                Err(e) => break e,
            }
            assert!(progress, "{protocol:?}: stalled without an error");
        };
        assert_eq!(e.code(), "protocol_violation", "{protocol:?}: {e}");
        assert!(e.to_string().contains("returned as soon as"), "{e}");
        assert!(!held.is_empty());
    }
}

#[test]
fn every_protocol_refuses_an_empty_or_oversized_batch() {
    for protocol in [ProtocolKind::Cardinality, ProtocolKind::Intersection] {
        let run = Run::new(protocol, &["email"]);
        for n in [0, 8] {
            let (r, s) = parties(&run, &small(), &small(), 0);
            // The sender's set batches, to the receiver.
            let (role, e) = tampered(r, s, |by_r, m| match m {
                Message::Points { kind, points } if !by_r => Message::Points {
                    kind,
                    points: points.iter().cycle().take(n).copied().collect(),
                },
                m => m,
            });
            assert_eq!(
                (role, e.code()),
                (Role::Receiver, "malformed_message"),
                "{protocol:?}, {n} points"
            );
        }
    }
}
