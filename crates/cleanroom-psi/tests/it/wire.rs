//! What crosses the wire: never an identifier, a normalised identifier, a plain hash of one
//! (SHA-256, SHA-512, the domain-separated SHA-512 that feeds hash-to-group), the unblinded
//! group element `H(x)`, an unencrypted value `v·G`, or an unmasked sum `S·G`; and what the
//! values holder of the default sum sees does not depend on the sum.

use cleanroom_psi::elgamal::Decryptor;
use cleanroom_psi::group::Kinds;
use cleanroom_psi::{Message, Outcome, ProtocolKind, PsiError};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use sha2::{Digest, Sha256, Sha512};

use crate::{Records, Run, Transcript, run};

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Byte strings that must not appear for one identifier of kind index `k`.
fn forbidden(kinds: &Kinds, k: usize, id: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("identifier".into(), id.as_bytes().to_vec()),
        (
            "upper-case identifier".into(),
            id.to_uppercase().into_bytes(),
        ),
        ("SHA-256".into(), Sha256::digest(id.as_bytes()).to_vec()),
        (
            "SHA-256 hex".into(),
            hex::encode(Sha256::digest(id.as_bytes())).into_bytes(),
        ),
        ("SHA-512".into(), Sha512::digest(id.as_bytes()).to_vec()),
    ];
    let mut domain = format!("cleanroom-psi/v1/hash-to-group/{}", kinds.label(k)).into_bytes();
    domain.push(0);
    let h = Sha512::new_with_prefix(&domain)
        .chain_update(id.as_bytes())
        .finalize();
    out.push(("domain-separated SHA-512".into(), h.to_vec()));
    let p = kinds.hash_to_group(k, id.as_bytes()).compress().to_bytes();
    out.push(("unblinded H(x)".into(), p.to_vec()));
    out.push(("tag of unblinded H(x)".into(), p[..16].to_vec()));
    // The OT intersection's item, whole, and the 15 bytes of it that enter a bin unchanged.
    let item = kinds.ot_item(k, id.as_bytes());
    out.push(("OT item".into(), item.to_vec()));
    out.push(("OT item in a bin".into(), item[..15].to_vec()));
    out
}

#[test]
fn no_identifier_or_unblinded_hash_crosses_the_wire() {
    let kinds_l = ["email", "phone"];
    let kinds = Kinds::new(&kinds_l).unwrap();
    let person = |i: u32| {
        (
            vec![
                Some(format!("person.{i:04}@example.org")),
                Some(format!("+4479460{i:05}")),
            ],
            1000 + i as i64,
        )
    };
    let r = Records {
        rows: (0..60).map(person).collect(),
    };
    let s = Records {
        rows: (30..100).map(person).collect(),
    };
    for protocol in [
        ProtocolKind::Cardinality,
        ProtocolKind::Intersection,
        ProtocolKind::IntersectionOt,
        ProtocolKind::SumToValuesHolder,
        ProtocolKind::Sum,
    ] {
        let mut cfg = Run::new(protocol, &kinds_l);
        cfg.max_value = 5000;
        let (ro, _, t) = run(&cfg, &r, &s);
        let wire = t.all_bytes();
        if let Outcome::Sum(out) = &ro {
            assert_eq!(out.counts.total, 30);
            // 30 matches of values 1030..1059 (either party's values: the same people).
            assert_eq!(out.total_sum, (1030..1060).sum::<i64>());
            // The sums in the clear, as group elements, never cross the wire: only masked
            // (Sum) or encrypted (SumToValuesHolder) forms of them do.
            for s in out.sums.iter().chain([&out.total_sum]) {
                let sg = (Scalar::from(*s as u64) * RISTRETTO_BASEPOINT_POINT).compress();
                assert!(
                    !contains(&wire, sg.as_bytes()),
                    "{protocol:?}: the unmasked sum S·G on the wire"
                );
            }
        }
        assert!(
            wire.len() > 60 * 32,
            "{protocol:?}: the transcript is not empty"
        );
        for rows in [&r.rows, &s.rows] {
            for (ids, v) in rows {
                for (k, id) in ids.iter().enumerate() {
                    let id = id.as_ref().unwrap();
                    for (what, bytes) in forbidden(&kinds, k, id) {
                        assert!(
                            !contains(&wire, &bytes),
                            "{protocol:?}: {what} of an identifier on the wire"
                        );
                    }
                }
                let vg = (Scalar::from(*v as u64) * RISTRETTO_BASEPOINT_POINT).compress();
                assert!(
                    !contains(&wire, vg.as_bytes()),
                    "{protocol:?}: unencrypted value on the wire"
                );
            }
        }
    }
}

#[test]
fn each_session_blinds_with_a_fresh_key() {
    let r = Records::single(&["a@example.com".to_owned(), "b@example.com".to_owned()]);
    let s = Records::single(&["b@example.com".to_owned()]);
    let cfg = Run::new(ProtocolKind::Intersection, &["email"]);
    let (_, _, t1) = run(&cfg, &r, &s);
    let (_, _, t2) = run(&cfg, &r, &s);
    // The sender's blinded set (its second message, after the hello) differs between sessions.
    assert_ne!(t1.sender_sent[1], t2.sender_sent[1]);
    assert_eq!(t1.sender_sent[1].len(), t2.sender_sent[1].len());
}

#[test]
fn each_ot_session_draws_fresh_keys_and_the_sender_sends_sorted_outputs() {
    let r = Records::single(&(0..50).map(|i| format!("r{i}@x.org")).collect::<Vec<_>>());
    let s = Records::single(&(25..90).map(|i| format!("r{i}@x.org")).collect::<Vec<_>>());
    let cfg = Run::new(ProtocolKind::IntersectionOt, &["email"]);
    let outputs = |t: &Transcript| -> Vec<Vec<u8>> {
        decoded(&t.sender_sent)
            .into_iter()
            .filter_map(|m| match m {
                Message::OtOutputs { width, outputs, .. } => Some(
                    outputs
                        .chunks(width as usize)
                        .map(<[u8]>::to_vec)
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect()
    };
    let (_, _, t1) = run(&cfg, &r, &s);
    let (_, _, t2) = run(&cfg, &r, &s);
    let (o1, o2) = (outputs(&t1), outputs(&t2));
    // 65 items × 3 hash functions, none repeated across sessions.
    assert_eq!(o1.len(), 3 * 65);
    assert!(o1.iter().all(|o| !o2.contains(o)));
    // Each hash function's outputs are sorted as numbers (little-endian), hiding S's order.
    for chunk in o1.chunks(65) {
        let as_num: Vec<u128> = chunk
            .iter()
            .map(|o| {
                let mut b = [0u8; 16];
                b[..o.len()].copy_from_slice(o);
                u128::from_le_bytes(b)
            })
            .collect();
        assert!(as_num.windows(2).all(|w| w[0] <= w[1]));
    }
    // Every message of the receiver after its setup differs between sessions too.
    assert_ne!(t1.receiver_sent[1], t2.receiver_sent[1]);
    assert_ne!(t1.receiver_sent[2], t2.receiver_sent[2]);
}

/// The messages of one side, decoded (the hello, first, is skipped).
fn decoded(sent: &[Vec<u8>]) -> Vec<Message> {
    sent[1..]
        .iter()
        .map(|b| Message::decode(b).unwrap())
        .collect()
}

fn point(b: &[u8]) -> RistrettoPoint {
    CompressedRistretto::from_slice(b)
        .unwrap()
        .decompress()
        .unwrap()
}

/// What the values holder sees of the sum: the masked ciphertexts it receives and the group
/// elements it decrypts them to (which it sends back verbatim).
struct HolderView {
    /// Everything the holder received, hello included.
    received: Vec<Vec<u8>>,
    masked: Vec<[u8; 64]>,
    decrypted: Vec<[u8; 32]>,
    /// The first halves `ρ·G` of the ciphertexts the holder sent, one per record.
    sent_c1: Vec<RistrettoPoint>,
}

fn holder_view(t: &Transcript) -> HolderView {
    let mut masked = None;
    for m in decoded(&t.receiver_sent) {
        if let Message::MaskedSums { sums } = m {
            masked = Some(sums);
        }
    }
    let mut decrypted = None;
    let mut sent_c1 = Vec::new();
    for m in decoded(&t.sender_sent) {
        match m {
            Message::DecryptedMaskedSums { elements } => decrypted = Some(elements),
            Message::SumRecords { ciphertexts, .. } => {
                sent_c1.extend(ciphertexts.iter().map(|c| point(&c[..32])))
            }
            _ => {}
        }
    }
    HolderView {
        received: t.receiver_sent.clone(),
        masked: masked.expect("masked sums"),
        decrypted: decrypted.expect("decrypted masked sums"),
        sent_c1,
    }
}

#[test]
fn the_values_holders_view_does_not_depend_on_the_sum() {
    // The learner and the values holder have the same 40 people: every record matches.
    let people = (0..40)
        .map(|i| format!("p{i}@example.com"))
        .collect::<Vec<_>>();
    let learner = Records::single(&people);
    let holder_with = |shift: i64| {
        let mut h = Records::single(&people);
        h.rows
            .iter_mut()
            .enumerate()
            .for_each(|(i, r)| r.1 = 10 + i as i64 + shift);
        h
    };
    let cfg = Run::new(ProtocolKind::Sum, &["email"]);
    // Any small discrete logarithm the holder could find: the sums below are in [0, 10^5].
    let small = Decryptor::new(-100_000, 1_000_000).unwrap();
    let mut views = Vec::new();
    for shift in [0, 0, 7] {
        let (lo, _, t) = run(&cfg, &learner, &holder_with(shift));
        let Outcome::Sum(out) = lo else { panic!() };
        let sum = (0..40).map(|i| 10 + i + shift).sum::<i64>();
        assert_eq!(out.total_sum, sum, "the learner gets the right sum");
        let v = holder_view(&t);
        assert_eq!(v.decrypted.len(), 1);
        let m = point(&v.decrypted[0]);
        // The mask: what the holder decrypts is not g^S, nor any element with a small
        // discrete logarithm (without the mask, it would be g^S and the holder would find S).
        let gs = Scalar::from(sum as u64) * RISTRETTO_BASEPOINT_POINT;
        assert_ne!(m, gs, "the holder decrypted the unmasked sum");
        assert_eq!(small.log(m), Err(PsiError::SumOutOfRange));
        // The re-randomisation: the masked ciphertext is not the plain homomorphic sum of the
        // holder's own ciphertexts, whose randomness the holder knows (every record matched,
        // so that sum's first half is the sum of all the first halves it sent), nor any one of
        // them.
        assert_eq!(v.sent_c1.len(), 40);
        let c1 = point(&v.masked[0][..32]);
        let all: RistrettoPoint = v
            .sent_c1
            .iter()
            .fold(RistrettoPoint::identity(), |a, p| a + p);
        assert_ne!(c1, all, "the masked sum was not re-randomised");
        assert!(!v.sent_c1.contains(&c1));
        views.push(v);
    }
    // Same inputs, then a different sum: apart from fresh randomness the holder's view is the
    // same. Its received hello and message sizes are identical; the masked ciphertexts and
    // the decrypted elements differ from run to run whether the sum changed or not.
    for v in &views[1..] {
        assert_eq!(v.received[0], views[0].received[0], "the learner's hello");
        assert_eq!(
            v.received.iter().map(Vec::len).collect::<Vec<_>>(),
            views[0].received.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
    let decrypted: Vec<_> = views.iter().map(|v| v.decrypted[0]).collect();
    let masked: Vec<_> = views.iter().map(|v| v.masked[0]).collect();
    for i in 0..3 {
        for j in i + 1..3 {
            assert_ne!(decrypted[i], decrypted[j], "runs {i} and {j}");
            assert_ne!(masked[i], masked[j], "runs {i} and {j}");
        }
    }
}

#[test]
fn ot_buckets_are_padded_so_the_traffic_does_not_depend_on_the_items() {
    // 600 against 500 items in buckets of about 40: 16 buckets. Two unrelated pairs of sets of
    // these sizes give transcripts of the same shape, message for message, although their
    // items spread differently over the buckets.
    let cfg = Run::new(ProtocolKind::IntersectionOt, &["email"]).bucketed(40, [None, Some(0)]);
    let set = |p: &str, n: u32| {
        Records::single(
            &(0..n)
                .map(|i| format!("{p}{i}@example.com"))
                .collect::<Vec<_>>(),
        )
    };
    let sizes = |t: &Transcript| -> (Vec<usize>, Vec<usize>) {
        (
            t.receiver_sent.iter().map(Vec::len).collect(),
            t.sender_sent.iter().map(Vec::len).collect(),
        )
    };
    let (_, _, t1) = run(&cfg, &set("a", 600), &set("b", 500));
    let (_, _, t2) = run(&cfg, &set("c", 600), &set("d", 500));
    assert_eq!(sizes(&t1), sizes(&t2));
    let buckets = decoded(&t1.receiver_sent)
        .iter()
        .filter(|m| matches!(m, Message::OtBucket { .. }))
        .count();
    assert_eq!(buckets, 16);
    // The spread really differs: without the padding the outputs per bucket would differ.
    let kinds = Kinds::new(&["email"]).unwrap();
    let spread = |p: &str, n: u32| {
        let mut c = [0u32; 16];
        for i in 0..n {
            c[usize::from(kinds.ot_item(0, format!("{p}{i}@example.com").as_bytes())[0] / 16)] += 1;
        }
        c
    };
    assert_ne!(spread("b", 500), spread("d", 500));
    // Every output list is padded to the same length: 3 hash functions × 16 buckets of the
    // padded size, more than the 3 × 500 real outputs.
    let outputs: usize = decoded(&t1.sender_sent)
        .iter()
        .map(|m| match m {
            Message::OtOutputs { width, outputs, .. } => outputs.len() / usize::from(*width),
            _ => 0,
        })
        .sum();
    assert_eq!(outputs % 48, 0);
    assert!(outputs > 3 * 500);
}
