//! The ECDH cardinality, intersection and both sums stream both ways at once, in rounds: both
//! parties re-blind at the same time, and at most a round per direction is in flight, so the
//! transport's small send queue can never deadlock them.

use std::collections::VecDeque;

use cleanroom_psi::{Action, Hello, Message, Outcome, Party, ProtocolKind, Role};

use crate::{Records, Run, config, prepare, run};

/// One identifier a row, valued `i % 7` (the value matters only to a sum's values holder).
fn ids(range: std::ops::Range<usize>) -> Records {
    Records {
        rows: range
            .map(|i| (vec![Some(format!("user{i}@example.com"))], (i % 7) as i64))
            .collect(),
    }
}

const ECDH: [ProtocolKind; 4] = [
    ProtocolKind::Cardinality,
    ProtocolKind::Intersection,
    ProtocolKind::Sum,
    ProtocolKind::SumToValuesHolder,
];

fn parties(run: &Run, r: &Records, s: &Records) -> [Party; 2] {
    let (ri, si) = (
        prepare(run, Role::Receiver, r),
        prepare(run, Role::Sender, s),
    );
    let (rc, sc) = (config(run, Role::Receiver), config(run, Role::Sender));
    let (rh, sh) = (rc.hello(&ri), sc.hello(&si));
    let wire = |h: &Hello| Hello::decode(&h.encode()).unwrap();
    [
        Party::new(rc.agree(&rh, &wire(&sh)).unwrap(), ri).unwrap(),
        Party::new(sc.agree(&sh, &wire(&rh)).unwrap(), si).unwrap(),
    ]
}

/// What happened, in order: (party, received message's name).
type Log = Vec<(usize, &'static str)>;

/// Moves messages with at most `cap` messages queued per direction: a party whose message does
/// not fit waits with it, as it would on a full send queue with no network buffer at all.
/// Panics on a deadlock.
fn drive_bounded(mut parties: [Party; 2], cap: usize) -> ([Outcome; 2], Log) {
    let mut queues: [VecDeque<Message>; 2] = Default::default();
    let mut held: [Option<Message>; 2] = [None, None];
    let mut finished = [false; 2];
    let mut log = Log::new();
    while finished != [true, true] {
        let mut progress = false;
        for i in 0..2 {
            if finished[i] {
                continue;
            }
            let action = match held[i].take() {
                Some(m) => Action::Send(m),
                None => parties[i].next_action().unwrap(),
            };
            match action {
                Action::Send(m) if queues[1 - i].len() < cap => {
                    queues[1 - i].push_back(m);
                    progress = true;
                }
                Action::Send(m) => held[i] = Some(m),
                Action::Receive => {
                    if let Some(m) = queues[i].pop_front() {
                        log.push((i, m.name()));
                        parties[i].receive(m).unwrap();
                        progress = true;
                    }
                }
                Action::Finished => {
                    finished[i] = true;
                    progress = true;
                }
            }
        }
        assert!(
            progress,
            "deadlock with {cap} message(s) per direction: both parties wait"
        );
    }
    assert!(queues.iter().all(VecDeque::is_empty), "messages left over");
    let [a, b] = parties;
    ([a.outcome().unwrap(), b.outcome().unwrap()], log)
}

#[test]
fn any_sizes_and_batches_finish_with_one_message_in_flight_and_agree_with_unbounded_runs() {
    let sizes = [
        (0, 0),
        (0, 30),
        (30, 0),
        (1, 1),
        (5, 300),
        (300, 5),
        (100, 100),
        (64, 65),
    ];
    for protocol in ECDH {
        for batch in [1u32, 7, 64] {
            for (nr, ns) in sizes {
                // Half of the smaller side is shared.
                let (r, s) = (ids(0..nr), ids(nr / 2..nr / 2 + ns));
                let mut cfg = Run::new(protocol, &["email"]);
                cfg.batch = batch;
                let (ro, so, _) = run(&cfg, &r, &s);
                for cap in [1, 2, 4] {
                    let ([bro, bso], _) = drive_bounded(parties(&cfg, &r, &s), cap);
                    assert_eq!(
                        (&bro, &bso),
                        (&ro, &so),
                        "{protocol:?} {nr}×{ns} batch {batch}"
                    );
                }
            }
        }
    }
}

#[test]
fn both_parties_reblind_at_the_same_time() {
    for protocol in [ProtocolKind::Cardinality, ProtocolKind::Intersection] {
        let mut cfg = Run::new(protocol, &["email"]);
        cfg.batch = 10;
        let (r, s) = (ids(0..100), ids(50..150));
        let ([ro, _], log) = drive_bounded(parties(&cfg, &r, &s), 2);
        let (receiver, sender) = (0, 1);
        // The sender re-blinds most of the receiver's 10 batches before the receiver has
        // re-blinded the sender's whole set (10 batches): neither waits for the other.
        let receiver_last_set_batch = log
            .iter()
            .rposition(|(p, name)| *p == receiver && *name == "points")
            .unwrap();
        let sender_batches_before = log[..receiver_last_set_batch]
            .iter()
            .filter(|(p, name)| *p == sender && *name != "end of stream")
            .count();
        assert!(
            sender_batches_before >= 8,
            "{protocol:?}: the sender re-blinded only {sender_batches_before} batches before \
             the receiver finished the sender's set"
        );
        match ro {
            Outcome::Cardinality(c) => assert_eq!(c.total, 50),
            Outcome::Intersection(o) => assert_eq!(o.counts.total, 50),
            other => panic!("{other:?}"),
        }
    }
}

/// Two rows per person, on email and phone: `email` missing on one side's rows of a given kind
/// so that one kind is empty on the receiver's side and another on the sender's.
fn cascade(range: std::ops::Range<usize>, email: bool, phone: bool) -> Records {
    Records {
        rows: range
            .map(|i| {
                (
                    vec![
                        email.then(|| format!("user{i}@example.com")),
                        (phone && i % 3 != 0).then(|| format!("+4477009{i:05}")),
                    ],
                    (i % 5) as i64,
                )
            })
            .collect(),
    }
}

#[test]
fn cascades_with_an_empty_kind_on_either_side_agree_with_unbounded_runs() {
    let cases = [
        // receiver without phones, sender with both
        (cascade(0..40, true, false), cascade(20..90, true, true)),
        // receiver with both, sender without emails: matches only on phone
        (cascade(0..40, true, true), cascade(10..60, false, true)),
        // both with both: rows match on email first, on phone where the email is missing
        (cascade(0..70, true, true), cascade(30..100, true, true)),
    ];
    for protocol in ECDH {
        for (r, s) in &cases {
            for batch in [1u32, 7] {
                let mut cfg = Run::new(protocol, &["email", "phone"]);
                cfg.batch = batch;
                let (ro, so, _) = run(&cfg, r, s);
                for cap in [1, 2] {
                    let ([bro, bso], _) = drive_bounded(parties(&cfg, r, s), cap);
                    assert_eq!((&bro, &bso), (&ro, &so), "{protocol:?} batch {batch}");
                }
            }
        }
    }
}

/// The sums: the values holder V re-blinds the identifiers side I's set while I re-blinds V's
/// records, and V returns I's set as soon as it has ended, so I keeps only the records that
/// came while its set was streaming. `(I, V)` as parties of `drive_bounded`.
fn sum_sides(protocol: ProtocolKind) -> (usize, usize) {
    match protocol {
        ProtocolKind::Sum => (0, 1),
        _ => (1, 0),
    }
}

#[test]
fn in_both_sums_the_two_sides_reblind_at_the_same_time() {
    for protocol in [ProtocolKind::Sum, ProtocolKind::SumToValuesHolder] {
        let mut cfg = Run::new(protocol, &["email"]);
        cfg.batch = 10;
        let (r, s) = (ids(0..100), ids(50..150));
        let (ro, so, _) = run(&cfg, &r, &s);
        let ([bro, bso], log) = drive_bounded(parties(&cfg, &r, &s), 2);
        assert_eq!((&bro, &bso), (&ro, &so), "{protocol:?}");
        let (i, v) = sum_sides(protocol);
        // I re-blinds most of V's 10 record batches before V has re-blinded I's whole set (10
        // batches). Before protocol v3 V sent its records only after returning I's set: 0.
        let last_set_batch = log
            .iter()
            .rposition(|(p, name)| *p == v && *name == "points")
            .unwrap();
        let records_before = log[..last_set_batch]
            .iter()
            .filter(|(p, name)| *p == i && *name == "sum records")
            .count();
        assert!(
            records_before >= 8,
            "{protocol:?}: I re-blinded only {records_before} record batches before V finished \
             I's set"
        );
        let sums = match (&bro, &bso) {
            (Outcome::Sum(o), _) | (_, Outcome::Sum(o)) => o.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(sums.counts.total, 50);
        assert_eq!(
            sums.total_sum,
            (50..100).map(|i| (i % 7) as i64).sum::<i64>()
        );
    }
}

#[test]
fn in_both_sums_the_identifiers_side_keeps_few_records_waiting_for_its_set() {
    // V holds 30 times as many records as I has identifiers: if V returned I's set only after
    // all its records, I would keep all 300 batches of them; it keeps about one per batch of
    // its own set.
    for protocol in [ProtocolKind::Sum, ProtocolKind::SumToValuesHolder] {
        let (i, v) = sum_sides(protocol);
        let mut cfg = Run::new(protocol, &["email"]);
        cfg.batch = 10;
        let small = ids(0..100);
        let large = ids(0..3000);
        let (r, s) = if i == 0 {
            (&small, &large)
        } else {
            (&large, &small)
        };
        for cap in [1, 2, 4] {
            let ([bro, bso], log) = drive_bounded(parties(&cfg, r, s), cap);
            let (ro, so, _) = run(&cfg, r, s);
            assert_eq!((&bro, &bso), (&ro, &so), "{protocol:?}");
            let own_batches = 1 + log
                .iter()
                .filter(|(p, name)| *p == v && *name == "points")
                .count();
            let first_return = log
                .iter()
                .position(|(p, name)| *p == i && *name == "tags")
                .unwrap();
            let waiting = log[..first_return]
                .iter()
                .filter(|(p, name)| *p == i && *name == "sum records")
                .count();
            // I's set: 10 batches and the end; at most two rounds in flight.
            assert_eq!(own_batches, 11);
            assert!(
                waiting <= own_batches + 2,
                "{protocol:?}, room for {cap}: {waiting} record batches waited for I's set"
            );
        }
    }
}
