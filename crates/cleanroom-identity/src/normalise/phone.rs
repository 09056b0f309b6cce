//! Telephone numbers: parsed with libphonenumber's metadata (the `phonenumber` crate) in a
//! default region, checked against the numbering plan, written in E.164 with a `+`.

use phonenumber::Mode;
use phonenumber::country::Id;
use unicode_normalization::UnicodeNormalization;

use super::{Invalid, clean};

/// Longest input accepted, in characters (E.164 numbers have at most 15 digits; formatting,
/// an international prefix and an extension add some).
pub const MAX_PHONE_CHARS: usize = 48;

/// True when `region` is an ISO 3166-1 alpha-2 code libphonenumber has a numbering plan for.
pub fn region_is_known(region: &str) -> bool {
    region_id(region).is_some()
}

fn region_id(region: &str) -> Option<Id> {
    let r = region.trim();
    if r.len() != 2 || !r.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    r.to_ascii_uppercase().parse::<Id>().ok()
}

/// E.164 with a leading `+`, e.g. `+447911123456`.
pub fn phone_e164(raw: &str, default_region: &str) -> Result<String, Invalid> {
    let s = clean(raw);
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if s.chars().count() > MAX_PHONE_CHARS {
        return Err(Invalid::TooLong);
    }
    let folded: String = if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        s.nfkc().collect::<String>().to_lowercase()
    };
    let mut number = folded.trim();
    if let Some(rest) = number.strip_prefix("tel:") {
        number = rest.trim();
    }
    let number = strip_extension(number)?;
    // Only digits, one leading '+', and the punctuation people write numbers with reach the
    // parser: letters (vanity numbers), RFC 3966 parameters and anything else are refused here.
    let mut digits = 0usize;
    for (i, c) in number.char_indices() {
        match c {
            '0'..='9' => digits += 1,
            '+' if i == 0 || number[..i].chars().all(|p| p == '(') => {}
            ' ' | '-' | '(' | ')' | '.' | '/' => {}
            c if c.is_whitespace() => {}
            _ => {
                return Err(Invalid::BadCharacters(
                    "only digits, '+' and separators belong in a phone number",
                ));
            }
        }
    }
    if digits < 4 {
        return Err(Invalid::Malformed("too few digits for a phone number"));
    }
    if digits > 17 {
        return Err(Invalid::Malformed("too many digits for a phone number"));
    }
    let international = number.trim_start_matches('(').starts_with('+');
    let region = region_id(default_region);
    if region.is_none() && !international {
        return Err(Invalid::NoRegion);
    }
    let parsed = phonenumber::parse(region, number)
        .map_err(|_| Invalid::Malformed("not readable as a phone number"))?;
    if !phonenumber::is_valid(&parsed) {
        return Err(Invalid::NotValid(
            "not a number of its country's numbering plan",
        ));
    }
    let out = parsed.format().mode(Mode::E164).to_string();
    // Defensive: the formatter must give '+' and 8 to 15 digits in total.
    let ok = out.len() >= 8
        && out.len() <= 16
        && out.starts_with('+')
        && out[1..].bytes().all(|b| b.is_ascii_digit())
        && !out[1..].starts_with('0');
    if !ok {
        return Err(Invalid::NotValid("not representable in E.164"));
    }
    Ok(out)
}

/// Removes a trailing extension (`ext. 12`, `x12`, `#12`): E.164 has none, and a person
/// reached through an extension is matched on the main number.
fn strip_extension(s: &str) -> Result<&str, Invalid> {
    for marker in ["extension", "ext.", "ext", "#", "x"] {
        if let Some(pos) = s.find(marker) {
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
