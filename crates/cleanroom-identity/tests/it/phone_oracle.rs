//! Phone numbers against libphonenumber itself: the messy corpus and the per-region example
//! numbers written by `testdata/identifiers/phone-oracle.py` (Python `phonenumbers`, the
//! reference port), and the property that a number is never turned into another valid one.

use cleanroom_identity::normalise::{PhoneRegion, phone_e164, phone_e164_into};
use proptest::prelude::*;

const ORACLE: &str = include_str!("../../../../testdata/identifiers/phone-oracle.tsv");
const EXAMPLES: &str = include_str!("../../../../testdata/identifiers/phone-examples.tsv");

fn rows(tsv: &str) -> impl Iterator<Item = Vec<&str>> {
    tsv.lines()
        .skip(1) // the comment line
        .skip(1) // the header
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').collect())
}

#[test]
fn the_corpus_agrees_with_libphonenumber() {
    let (mut total, mut agree) = (0usize, 0usize);
    let mut refused_valid = Vec::new();
    let mut accepted_invalid = Vec::new();
    let mut other_number = Vec::new();
    for f in rows(ORACLE) {
        assert_eq!(f.len(), 4, "{f:?}");
        let (input, region, want, family) = (f[0], f[1], f[2], f[3]);
        total += 1;
        match (phone_e164(input, region), want) {
            (Ok(got), "INVALID") => {
                accepted_invalid.push(format!("{input:?} {region} → {got} ({family})"))
            }
            (Ok(got), want) if got == want => agree += 1,
            (Ok(got), want) => other_number.push(format!(
                "{input:?} {region} → {got}, libphonenumber {want} ({family})"
            )),
            (Err(_), "INVALID") => agree += 1,
            (Err(e), want) => refused_valid.push(format!(
                "{input:?} {region}: {e}, libphonenumber {want} ({family})"
            )),
        }
    }
    assert!(total >= 5000, "the corpus has {total} rows");
    eprintln!(
        "phone oracle: {agree} of {total} agree; {} refused where libphonenumber accepts, {} accepted where it refuses",
        refused_valid.len(),
        accepted_invalid.len()
    );
    // Never a different valid number: zero tolerated.
    assert!(
        other_number.is_empty(),
        "another number:\n{}",
        other_number.join("\n")
    );
    let rate = agree as f64 / total as f64;
    assert!(
        rate >= 0.995,
        "agreement {agree}/{total} = {rate:.4}\nrefused, libphonenumber valid:\n{}\naccepted, libphonenumber invalid:\n{}",
        refused_valid.join("\n"),
        accepted_invalid.join("\n")
    );
}

#[test]
fn every_regions_example_numbers_normalise_to_themselves() {
    let mut failures = Vec::new();
    let regions: Vec<&str> = rows(EXAMPLES).map(|f| f[0]).collect();
    for (i, f) in rows(EXAMPLES).enumerate() {
        let (region, ty, e164, national) = (f[0], f[1], f[2], f[3]);
        // International form under its own region and under some other one.
        let other = regions[(i * 7919) % regions.len()];
        for (input, r) in [(e164, region), (e164, other), (national, region)] {
            match phone_e164(input, r) {
                Ok(got) if got == e164 => {}
                got => failures.push(format!(
                    "{region} {ty}: {input:?} in {r} gave {got:?}, want {e164}"
                )),
            }
        }
        if let Some(idd) = f.get(4).filter(|p| !p.is_empty()) {
            let input = format!("{idd} {}", &e164[1..]);
            match phone_e164(&input, region) {
                Ok(got) if got == e164 => {}
                got => failures.push(format!(
                    "{region} {ty}: {input:?} gave {got:?}, want {e164}"
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_known_failures_of_issue_12() {
    let ok = |s: &str, r: &str, want: &str| {
        assert_eq!(phone_e164(s, r).as_deref(), Ok(want), "{s} in {r}")
    };
    // An international number is read by its own country code, not the default region's trunk prefix.
    ok("+49 1512 3456596", "US", "+4915123456596");
    ok("0049 1512 3456596", "GB", "+4915123456596");
    ok("011 49 1512 3456596", "US", "+4915123456596");
    // '+' then more than the country code, then punctuation.
    ok("+1201-555-5779", "US", "+12015555779");
    ok("+1201-555-5779", "DE", "+12015555779");
    ok("+55/11/96123-9920", "US", "+5511961239920");
    // Extra digits are not a valid number.
    assert!(phone_e164("012012972931", "JP").is_err());
    // National numbers that begin with the country's own calling code.
    ok("91234 56789", "IN", "+919123456789");
    ok("+91 91234 56789", "IN", "+919123456789");
    ok("393 123 4567", "IT", "+393931234567");
    ok("+39 393 123 4567", "IT", "+393931234567");
    // Decimal digits of other scripts.
    ok("९८७६५ ४३२१०", "IN", "+919876543210");
    ok("٠٧٩١١ ١٢٣٤٥٦", "GB", "+447911123456");
    ok("۰۹۱۲ ۳۴۵ ۶۷۸۹", "IR", "+989123456789");
    // A numeral that is not a decimal digit is refused rather than skipped.
    assert!(phone_e164("+44 7911 12345Ⅵ", "GB").is_err());
}

#[test]
fn the_buffered_form_gives_the_same_answers() {
    let mut buf = String::new();
    for f in rows(ORACLE).take(2000) {
        let want = phone_e164(f[0], f[1]);
        let got = phone_e164_into(f[0], PhoneRegion::parse(f[1]), &mut buf).map(|()| buf.clone());
        assert_eq!(got, want, "{:?}", f[0]);
    }
}

/// Valid numbers (libphonenumber's examples) with their national significant number varied
/// in its last digits: valid or not, they have one E.164 reading when written with `+`.
fn numbers() -> impl Strategy<Value = (String, String, String)> {
    let ex: Vec<(String, String, String)> = rows(EXAMPLES)
        .map(|f| {
            (
                f[0].to_owned(),
                f[2].to_owned(),
                f.get(4).copied().unwrap_or("").to_owned(),
            )
        })
        .collect();
    (
        prop::sample::select(ex),
        prop::collection::vec(0u8..10, 0..4),
    )
        .prop_map(|((r, e, idd), tail)| {
            let mut e = e;
            let n = e.len();
            let k = tail.len().min(n.saturating_sub(6));
            e.truncate(n - k);
            e.extend(tail[..k].iter().map(|d| char::from(b'0' + d)));
            (r, e, idd)
        })
}

fn regions() -> Vec<String> {
    let mut r: Vec<String> = rows(EXAMPLES).map(|f| f[0].to_owned()).collect();
    r.dedup();
    r
}

/// Writes the digits of `digits` with separators between arbitrary groups.
fn written(digits: &str, seps: &[(usize, u8)]) -> String {
    const SEP: [&str; 8] = [" ", "-", ".", "/", "", " - ", "  ", "\u{2013}"];
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if let Some((_, s)) = seps.iter().find(|(p, _)| *p == i) {
            out.push_str(SEP[*s as usize % SEP.len()]);
        }
        out.push(c);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A number written with `+` and any separators, read with any default region, is its own
    /// E.164 or refused — never another number.
    #[test]
    fn plus_form_is_itself_or_refused(
        (_, e164, _) in numbers(),
        region in prop::sample::select(regions()),
        seps in prop::collection::vec((0usize..16, 0u8..8), 0..5),
    ) {
        let input = format!("+{}", written(&e164[1..], &seps));
        if let Ok(got) = phone_e164(&input, &region) {
            prop_assert_eq!(got, e164, "{} in {}", input, region);
        }
    }

    /// The same with the international prefix of a region whose prefix that is (00, 011, …).
    #[test]
    fn idd_form_is_itself_or_refused(
        (home, e164, _) in numbers(),
        (region, idd) in prop::sample::select(
            rows(EXAMPLES).filter(|f| f.get(4).is_some_and(|p| !p.is_empty()))
                .map(|f| (f[0].to_owned(), f[4].to_owned())).collect::<Vec<_>>()),
        seps in prop::collection::vec((0usize..16, 0u8..8), 0..5),
    ) {
        let _ = home;
        let input = format!("{idd} {}", written(&e164[1..], &seps));
        if let Ok(got) = phone_e164(&input, &region) {
            prop_assert_eq!(got, e164, "{} in {}", input, region);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// An example number in its national form (digits as libphonenumber writes them, trunk
    /// prefix included), regrouped with any separators, under its own region: itself or refused.
    #[test]
    fn national_form_is_itself_or_refused(
        (region, e164, national) in prop::sample::select(
            rows(EXAMPLES).map(|f| (f[0].to_owned(), f[2].to_owned(), f[3].to_owned())).collect::<Vec<_>>()),
        seps in prop::collection::vec((0usize..16, 0u8..8), 0..5),
    ) {
        let digits: String = national.chars().filter(char::is_ascii_digit).collect();
        let input = written(&digits, &seps);
        if let Ok(got) = phone_e164(&input, &region) {
            prop_assert_eq!(got, e164, "{} in {}", input, region);
        }
    }
}
