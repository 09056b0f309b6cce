//! Properties of every normaliser: never panics on arbitrary Unicode, idempotent, output of
//! the documented shape, and invalid shapes never yield a value. Also: pseudonyms are
//! distinct and well-formed, and the streaming risk metrics equal a brute-force count.

use std::collections::{HashMap, HashSet};

use cleanroom_identity::normalise::{IdKind, NormaliseOptions, normalise};
use cleanroom_identity::pseudonym::PseudonymKey;
use cleanroom_identity::risk::{RiskAccumulator, RiskLimits};
use proptest::prelude::*;

fn opts(gmail: bool, region: &str) -> NormaliseOptions {
    NormaliseOptions {
        gmail_rules: gmail,
        default_region: region.to_owned(),
    }
}

/// Brute-force equivalence class: record count and distinct sensitive values.
type Class = (u64, HashSet<Option<u8>>);

const REGIONS: [&str; 6] = ["GB", "US", "DE", "FR", "CA", "XX"];

/// Arbitrary text, biased towards characters that matter: separators, digits, look-alikes,
/// combining marks, invisible characters.
fn messy() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        any::<String>(),
        "[ \t@.+()\\-0-9a-zA-Z\u{FF10}-\u{FF5A}\u{0300}-\u{036F}\u{200B}\u{FEFF}éÉßİı]{0,40}",
    ]
}

fn check_shape(kind: IdKind, v: &str, o: &NormaliseOptions) -> Result<(), TestCaseError> {
    prop_assert!(!v.is_empty());
    prop_assert_eq!(v.trim(), v);
    match kind {
        IdKind::Email => {
            prop_assert_eq!(v.matches('@').count(), 1);
            let (local, domain) = v.split_once('@').unwrap_or_default();
            prop_assert!(!local.is_empty() && domain.contains('.'));
            prop_assert!(!v.chars().any(char::is_whitespace));
            prop_assert_eq!(v.to_lowercase(), v);
            if o.gmail_rules && (domain == "gmail.com" || domain == "googlemail.com") {
                prop_assert_eq!(domain, "gmail.com");
                prop_assert!(!local.contains('.') && !local.contains('+'));
            }
        }
        IdKind::Phone => {
            prop_assert!(v.starts_with('+'));
            prop_assert!((8..=16).contains(&v.len()));
            prop_assert!(v[1..].bytes().all(|b| b.is_ascii_digit()));
        }
        IdKind::Maid => {
            prop_assert_eq!(v.len(), 36);
            for (i, b) in v.bytes().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    prop_assert_eq!(b, b'-');
                } else {
                    prop_assert!(b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                }
            }
        }
        IdKind::Name => {
            prop_assert!(!v.contains("  "));
            prop_assert!(v.chars().all(|c| c == ' ' || c.is_alphanumeric()));
            prop_assert_eq!(v.to_lowercase(), v);
            prop_assert!(
                !v.chars()
                    .any(unicode_normalization::char::is_combining_mark)
            );
        }
        IdKind::PostalCode => {
            prop_assert!(
                v.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            );
            if o.default_region == "US" {
                prop_assert_eq!(v.len(), 5);
            }
        }
        IdKind::Opaque => {}
    }
    Ok(())
}

fn kind() -> impl Strategy<Value = IdKind> {
    prop::sample::select(IdKind::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Never panics; anything accepted is a fixed point of the documented shape.
    #[test]
    fn arbitrary_text(kind in kind(), s in messy(), gmail in any::<bool>(), r in prop::sample::select(REGIONS.to_vec())) {
        let o = opts(gmail, r);
        if let Ok(v) = normalise(kind, &s, &o) {
            check_shape(kind, &v, &o)?;
            prop_assert_eq!(normalise(kind, &v, &o), Ok(v.clone()), "not idempotent for {:?}", s);
        }
    }

    /// Email-shaped input with noise: accepted, lowercased, idempotent, Gmail-canonical.
    #[test]
    fn emails(local in "[A-Za-z0-9][A-Za-z0-9_+-]{0,10}(\\.[A-Za-z0-9_+-]{1,8}){0,2}",
              domain in prop::sample::select(vec!["Example.com", "gmail.com", "GoogleMail.com", "sub.example.co.uk", "München.de"]),
              pad in "[ \t\u{200B}]{0,3}", gmail in any::<bool>()) {
        let o = opts(gmail, "GB");
        let raw = format!("{pad}{local}@{domain}{pad}");
        let v = normalise(IdKind::Email, &raw, &o);
        let is_gmail = domain.eq_ignore_ascii_case("gmail.com") || domain.eq_ignore_ascii_case("googlemail.com");
        if gmail && is_gmail {
            let user = local.split('+').next().unwrap_or_default().replace('.', "").to_lowercase();
            if user.is_empty() || !user.bytes().all(|b| b.is_ascii_alphanumeric()) {
                prop_assert!(v.is_err(), "{:?} is not a possible Gmail address", raw);
            } else {
                prop_assert_eq!(v, Ok(format!("{user}@gmail.com")));
            }
        } else {
            let v = v.unwrap_or_default();
            prop_assert_eq!(&v, &format!("{local}@{domain}").to_lowercase());
            prop_assert_eq!(normalise(IdKind::Email, &v, &o), Ok(v.clone()));
        }
    }

    /// Anything without exactly one '@', or with a space inside, is never an email.
    #[test]
    fn non_emails(a in "[a-z]{1,8}", b in "[a-z]{1,8}\\.[a-z]{2,3}") {
        let o = opts(false, "GB");
        for bad in [format!("{a}{b}"), format!("{a}@@{b}"), format!("{a} x@{b}"), format!("{a}@{b}@{b}")] {
            prop_assert!(normalise(IdKind::Email, &bad, &o).is_err(), "{bad}");
        }
    }

    /// UK mobiles written every way people write them give one E.164 number.
    #[test]
    fn uk_mobiles_in_any_format(rest in "[0-9]{6}", sep in prop::sample::select(vec!["", " ", "-", "."])) {
        let o = opts(false, "GB");
        let want = format!("+447400{rest}");
        for raw in [
            format!("07400{sep}{rest}"),
            format!("+44{sep}7400{sep}{rest}"),
            format!("0044 7400 {rest}"),
            format!("+44 (0)7400 {rest}"),
        ] {
            prop_assert_eq!(normalise(IdKind::Phone, &raw, &o), Ok(want.clone()), "{}", raw);
        }
    }

    /// Letters in a phone number (other than an extension marker) are never a phone number.
    #[test]
    fn phones_with_letters(digits in "[0-9]{10}", letter in "[a-wyzA-WYZ]") {
        let o = opts(false, "GB");
        let raw = format!("{}{letter}{}", &digits[..5], &digits[5..]);
        prop_assert!(normalise(IdKind::Phone, &raw, &o).is_err());
    }

    /// Every 128-bit value but zero is a MAID, whatever the case and hyphenation.
    #[test]
    fn maids(bits in any::<u128>(), upper in any::<bool>(), hyphens in any::<bool>()) {
        let o = opts(false, "GB");
        let hex = format!("{bits:032x}");
        let mut raw = if hyphens {
            format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
        } else {
            hex.clone()
        };
        if upper {
            raw = raw.to_uppercase();
        }
        let got = normalise(IdKind::Maid, &raw, &o);
        if bits == 0 {
            prop_assert!(got.is_err());
        } else {
            let v = got.unwrap_or_default();
            prop_assert_eq!(v.replace('-', ""), hex);
            check_shape(IdKind::Maid, &v, &o)?;
        }
    }

    /// A MAID of the wrong length is never accepted.
    #[test]
    fn short_maids(hex in "[0-9a-f]{1,31}") {
        prop_assert!(normalise(IdKind::Maid, &hex, &opts(false, "GB")).is_err());
    }

    /// Names: case, accents and punctuation do not matter.
    #[test]
    fn names(first in "[a-z]{1,10}", last in "[a-z]{1,10}") {
        let o = opts(false, "GB");
        let want = format!("{first} {last}");
        let shouting = format!("  {}  {} ", first.to_uppercase(), last.to_uppercase());
        let hyphen = format!("{first}-{last}");
        prop_assert_eq!(normalise(IdKind::Name, &shouting, &o), Ok(want.clone()));
        prop_assert_eq!(normalise(IdKind::Name, &hyphen, &o), Ok(want.clone()));
        let accented: String = first.chars().flat_map(|c| [c, '\u{0301}']).collect();
        prop_assert_eq!(normalise(IdKind::Name, &accented, &o), Ok(first.clone()));
    }

    /// US ZIP+4 always gives its ZIP5; anything with letters never is a US ZIP.
    #[test]
    fn zips(zip in "[0-9]{5}", plus in "[0-9]{4}", letters in "[A-Z]{1,3}") {
        let o = opts(false, "US");
        prop_assert_eq!(normalise(IdKind::PostalCode, &format!("{zip}-{plus}"), &o), Ok(zip.clone()));
        let lettered = format!("{zip}{letters}");
        prop_assert!(normalise(IdKind::PostalCode, &lettered, &o).is_err());
    }

    /// Opaque keys are only trimmed.
    #[test]
    fn opaque(s in "[!-~]{1,40}", pad in "[ \t]{0,3}") {
        prop_assert_eq!(normalise(IdKind::Opaque, &format!("{pad}{s}{pad}"), &opts(false, "GB")), Ok(s));
    }

    /// Distinct values give distinct 64-hex-digit pseudonyms.
    #[test]
    fn pseudonyms(values in prop::collection::hash_set("[a-z0-9@.]{0,20}", 1..50)) {
        let key = PseudonymKey::derive(b"property-test-secret-0123456789", "props").unwrap();
        let mut seen = HashSet::new();
        for v in &values {
            let p = key.pseudonymise(IdKind::Email, v);
            prop_assert_eq!(p.len(), 64);
            prop_assert!(p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            prop_assert!(seen.insert(p));
        }
    }

    /// The streaming risk metrics equal a brute-force count over the same records.
    #[test]
    fn risk_matches_brute_force(rows in prop::collection::vec((0u8..4, prop::option::of(0u8..3), prop::option::of(0u8..4)), 1..200), k in 2u64..6) {
        let mut acc = RiskAccumulator::new(true);
        let mut classes: HashMap<(u8, Option<u8>), Class> = HashMap::new();
        for (a, b, s) in &rows {
            let a_s = a.to_string();
            let b_s = b.map(|x| x.to_string());
            let s_s = s.map(|x| x.to_string());
            acc.add(&[Some(a_s.as_str()), b_s.as_deref()], s_s.as_deref());
            let e = classes.entry((*a, *b)).or_default();
            e.0 += 1;
            e.1.insert(*s);
        }
        let limits = RiskLimits { k, ..RiskLimits::default() };
        let r = acc.assess(&limits, vec!["a".into(), "b".into()]);
        let n = rows.len() as u64;
        prop_assert_eq!(r.records, n);
        prop_assert_eq!(r.classes, classes.len() as u64);
        prop_assert_eq!(r.k_anonymity, classes.values().map(|c| c.0).min().unwrap_or(0));
        prop_assert_eq!(r.unique_records, classes.values().filter(|c| c.0 == 1).count() as u64);
        prop_assert_eq!(r.below_k_records, classes.values().filter(|c| c.0 < k).map(|c| c.0).sum::<u64>());
        prop_assert_eq!(r.l_diversity, classes.values().map(|c| c.1.len() as u64).min());
    }
}
