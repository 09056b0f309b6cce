//! What crosses the wire: never an identifier, a normalised identifier, a plain hash of one
//! (SHA-256, SHA-512, the domain-separated SHA-512 that feeds hash-to-group), the unblinded
//! group element `H(x)`, or an unencrypted value `v·G`.

use cleanroom_psi::group::Kinds;
use cleanroom_psi::{Outcome, ProtocolKind};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha256, Sha512};

use crate::{Records, Run, run};

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
        ProtocolKind::SumToValuesHolder,
    ] {
        let mut cfg = Run::new(protocol, &kinds_l);
        cfg.max_value = 5000;
        let (ro, _, t) = run(&cfg, &r, &s);
        if let Outcome::Sum(out) = &ro {
            assert_eq!(out.counts.total, 30);
        }
        let wire = t.all_bytes();
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
