//! Telephone numbers: parsed by libphonenumber's rules and metadata (the `rlibphonenumber`
//! port, which agrees with Google's library on `testdata/identifiers/phone-oracle.tsv`) in a
//! default region, checked against the numbering plan, written in E.164 with a `+`.
//!
//! Before the parser sees a value, cleanroom refuses what libphonenumber would guess at:
//! letters (vanity numbers such as `1-800-FLOWERS`, placeholders such as `n/a`), a `+` other
//! than at the start, and digits the parser would skip. Everything else — international forms
//! (`+`, or the default region's international prefix such as `00` or `011`), national forms
//! with or without the trunk prefix, separators, `(0)`, extensions, `tel:` URIs, and decimal
//! digits of any script — is read exactly as libphonenumber reads it.

use std::fmt::Write as _;

use rlibphonenumber::enums::Region;
use rlibphonenumber::{PHONE_NUMBER_UTIL, PhoneNumber};
use unicode_normalization::UnicodeNormalization;

use super::{Invalid, clean};

/// Longest input accepted, in characters (E.164 numbers have at most 15 digits; formatting,
/// an international prefix and an extension add some).
pub const MAX_PHONE_CHARS: usize = 48;

/// A default region for phone numbers, resolved once: an ISO 3166-1 alpha-2 code that
/// libphonenumber has a numbering plan for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneRegion(Region);

impl PhoneRegion {
    /// `None` when `region` is not a region libphonenumber knows (e.g. `UK`, `XX`, `001`).
    pub fn parse(region: &str) -> Option<PhoneRegion> {
        let r = region.trim();
        if r.len() != 2 || !r.bytes().all(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        let id = Region::from_code(r).ok()?;
        PHONE_NUMBER_UTIL.get_country_code_for_region(id)?;
        Some(PhoneRegion(id))
    }
}

/// True when `region` is an ISO 3166-1 alpha-2 code libphonenumber has a numbering plan for.
pub fn region_is_known(region: &str) -> bool {
    PhoneRegion::parse(region).is_some()
}

/// E.164 with a leading `+`, e.g. `+447911123456`.
pub fn phone_e164(raw: &str, default_region: &str) -> Result<String, Invalid> {
    let mut out = String::with_capacity(16);
    phone_e164_into(raw, PhoneRegion::parse(default_region), &mut out)?;
    Ok(out)
}

/// [`phone_e164`] into a buffer the caller reuses (cleared first), with the region resolved
/// once: the prepare pipeline's form, which allocates nothing of its own for ASCII input.
pub fn phone_e164_into(
    raw: &str,
    region: Option<PhoneRegion>,
    out: &mut String,
) -> Result<(), Invalid> {
    out.clear();
    let s = clean(raw);
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if s.len() > MAX_PHONE_CHARS * 4 || s.chars().count() > MAX_PHONE_CHARS {
        return Err(Invalid::TooLong);
    }
    // Compatibility forms (full-width digits and signs, superscripts) fold to ASCII; other
    // scripts' decimal digits stay for the parser, which reads them as libphonenumber does.
    let folded: std::borrow::Cow<'_, str> = if s.is_ascii() {
        s
    } else {
        std::borrow::Cow::Owned(s.nfkc().collect::<String>())
    };
    let number = folded.trim();
    let body = strip_tel(number);
    let body = strip_extension(body)?;
    // Only digits, one leading '+', and the punctuation people write numbers with reach the
    // parser: letters (vanity numbers), RFC 3966 parameters and anything else are refused here.
    let mut digits = 0usize;
    let mut other_script = false;
    for (i, c) in body.char_indices() {
        match c {
            '0'..='9' => digits += 1,
            '+' if body[..i].chars().all(|p| p == '(' || p.is_whitespace()) => {}
            ' ' | '-' | '(' | ')' | '.' | '/' => {}
            '\u{2010}'..='\u{2015}' | '\u{2212}' => {}
            c if c.is_whitespace() => {}
            c if c.is_numeric() => {
                digits += 1;
                other_script = true;
            }
            _ => {
                return Err(Invalid::BadCharacters(
                    "only digits, '+' and separators belong in a phone number",
                ));
            }
        }
    }
    // A digit the parser would not read as one (a numeral that is not a decimal digit) would
    // make it read another number: refused instead.
    if other_script && PHONE_NUMBER_UTIL.normalize_digits_only(body).len() != digits {
        return Err(Invalid::BadCharacters(
            "only decimal digits belong in a phone number",
        ));
    }
    if digits < 4 {
        return Err(Invalid::Malformed("too few digits for a phone number"));
    }
    if digits > 17 {
        return Err(Invalid::Malformed("too many digits for a phone number"));
    }
    let international = body.trim_start_matches(['(', ' ']).starts_with('+');
    if region.is_none() && !international {
        return Err(Invalid::NoRegion);
    }
    let parsed = PHONE_NUMBER_UTIL
        .parse(number, region.map(|r| r.0))
        .map_err(|_| Invalid::Malformed("not readable as a phone number"))?;
    if !parsed.is_valid() {
        return Err(Invalid::NotValid(
            "not a number of its country's numbering plan",
        ));
    }
    write_e164(&parsed, out);
    // Defensive: '+' and at most 15 digits, no leading zero (short numbers, such as some
    // Iranian service numbers, are valid E.164 too).
    let ok = out.len() >= 4
        && out.len() <= 16
        && out[1..].bytes().all(|b| b.is_ascii_digit())
        && !out[1..].starts_with('0');
    if !ok {
        out.clear();
        return Err(Invalid::NotValid("not representable in E.164"));
    }
    Ok(())
}

/// `+`, the country code, then the national significant number (with the leading zeros some
/// plans keep, as in Italian fixed lines).
fn write_e164(n: &PhoneNumber, out: &mut String) {
    out.push('+');
    let _ = write!(out, "{}", n.country_code);
    if n.italian_leading_zero() {
        let zeros = n.number_of_leading_zeros().clamp(0, 10);
        for _ in 0..zeros {
            out.push('0');
        }
    }
    let _ = write!(out, "{}", n.national_number);
}

/// `tel:` (RFC 3966) in any case, removed for the character check; the parser reads it itself.
fn strip_tel(s: &str) -> &str {
    match s.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("tel:") => s[4..].trim_start(),
        _ => s,
    }
}

/// Removes a trailing extension (`ext. 12`, `x12`, `#12`) for the character check: E.164 has
/// none, and a person reached through an extension is matched on the main number.
fn strip_extension(s: &str) -> Result<&str, Invalid> {
    for marker in ["extension", "ext.", "ext", "#", "x"] {
        if let Some(pos) = find_ignore_ascii_case(s, marker) {
            let rest = s[pos + marker.len()..].trim_start_matches([' ', '.', ':']);
            if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(s[..pos].trim_end_matches([' ', ',', ';']));
            }
            return Err(Invalid::BadCharacters(
                "only digits, '+' and separators belong in a phone number",
            ));
        }
    }
    Ok(s)
}

fn find_ignore_ascii_case(s: &str, needle: &str) -> Option<usize> {
    let (h, n) = (s.as_bytes(), needle.as_bytes());
    (0..=h.len().checked_sub(n.len())?).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_and_international_forms_meet() {
        for s in [
            "07911 123456",
            "+44 7911 123456",
            "0044 7911 123456",
            "+44 (0) 7911 123456",
            "(07911) 123-456",
            "tel:+447911123456",
            "+447911123456",
            "０７９１１ １２３４５６",
        ] {
            assert_eq!(phone_e164(s, "GB").unwrap(), "+447911123456", "{s}");
        }
        assert_eq!(phone_e164("(415) 555-2671", "US").unwrap(), "+14155552671");
        assert_eq!(
            phone_e164("+1 415 555 2671 ext. 12", "GB").unwrap(),
            "+14155552671"
        );
        assert_eq!(phone_e164("030 1234567", "DE").unwrap(), "+49301234567");
    }

    #[test]
    fn invalid_numbers_say_why() {
        let e = |s: &str, r: &str| phone_e164(s, r).unwrap_err().category();
        assert_eq!(e("", "GB"), "empty");
        assert_eq!(e("123", "GB"), "malformed");
        assert_eq!(e("1-800-FLOWERS", "US"), "bad_characters");
        assert_eq!(e("+44 1234", "GB"), "not_valid");
        assert_eq!(e("07911 123456", "XX"), "no_region");
        assert_eq!(e("+999 123456789", "GB"), "malformed");
        assert_eq!(e("12345678901234567890", "GB"), "malformed");
    }

    #[test]
    fn regions_are_checked() {
        assert!(region_is_known("GB"));
        assert!(region_is_known("us"));
        assert!(!region_is_known("UK"));
        assert!(!region_is_known("G"));
    }
}
