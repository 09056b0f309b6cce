//! Email addresses: trim, Unicode compatibility folding, lowercase, validate; optionally the
//! Gmail rules.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use super::{Invalid, clean};

/// Longest address (RFC 5321 path limit less the angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;
/// Longest local part (RFC 5321).
pub const MAX_LOCAL_BYTES: usize = 64;

/// The base form every destination starts from: trimmed, NFKC-folded (full-width letters and
/// the like become ASCII), lowercased and validated: exactly one `@`, a non-empty local part
/// and domain, a domain of dot-separated labels with a non-numeric top-level label, no spaces
/// or control characters.
pub fn email_base(raw: &str) -> Result<String, Invalid> {
    let s = clean(raw);
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if s.len() > 4 * MAX_EMAIL_BYTES {
        return Err(Invalid::TooLong);
    }
    let folded = if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        fold(&s)?
    };
    validate(&folded)?;
    Ok(folded)
}

/// NFKC then lowercase, repeated until stable (lowercasing can, rarely, produce a string NFKC
/// would change again), so that the result is a fixed point and normalisation is idempotent.
fn fold(s: &str) -> Result<String, Invalid> {
    let mut cur: String = s.nfkc().collect::<String>().to_lowercase();
    for _ in 0..3 {
        let next = cur.nfkc().collect::<String>().to_lowercase();
        if next == cur {
            // NFKC may have produced spaces at the edges (e.g. from an ideographic space).
            let trimmed = cur.trim();
            if trimmed.len() != cur.len() {
                cur = trimmed.to_owned();
                continue;
            }
            return Ok(cur);
        }
        cur = next;
    }
    Err(Invalid::Malformed(
        "text that does not settle under Unicode normalisation",
    ))
}

fn validate(s: &str) -> Result<(), Invalid> {
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if s.len() > MAX_EMAIL_BYTES {
        return Err(Invalid::TooLong);
    }
    no_spaces_or_controls(s)?;
    let mut parts = s.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Invalid::Malformed("needs exactly one @"));
    };
    if local.is_empty() {
        return Err(Invalid::Malformed("nothing before the @"));
    }
    if domain.is_empty() {
        return Err(Invalid::Malformed("nothing after the @"));
    }
    if local.len() > MAX_LOCAL_BYTES {
        return Err(Invalid::TooLong);
    }
    if local.chars().any(|c| {
        matches!(
            c,
            '"' | ',' | ';' | ':' | '<' | '>' | '(' | ')' | '[' | ']' | '\\'
        )
    }) {
        return Err(Invalid::BadCharacters(
            "characters not used in unquoted addresses",
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(Invalid::Malformed("misplaced dot in the local part"));
    }
    if !domain.contains('.') {
        return Err(Invalid::Malformed("the domain has no dot"));
    }
    // Internationalised labels: letters, digits and the combining marks many scripts need
    // (Devanagari vowel signs and virama, Arabic harakat, Thai tone marks: `संपर्क.भारत`).
    if !domain.chars().all(|c| {
        c.is_alphanumeric() || c == '-' || c == '.' || (!c.is_ascii() && is_combining_mark(c))
    }) {
        return Err(Invalid::BadCharacters(
            "characters not used in domain names",
        ));
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(Invalid::Malformed("empty label in the domain"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(Invalid::Malformed("domain label starts or ends with '-'"));
        }
    }
    let tld = domain.rsplit('.').next().unwrap_or_default();
    if tld.chars().all(|c| c.is_ascii_digit()) {
        return Err(Invalid::Malformed("the domain has no top-level name"));
    }
    Ok(())
}

/// Refuses whitespace and control or invisible characters.
fn no_spaces_or_controls(s: &str) -> Result<(), Invalid> {
    if !s.is_ascii() {
        return no_spaces_or_controls_by_char(s);
    }
    // The same two checks a byte at a time (the common case): ASCII whitespace as
    // `char::is_whitespace` defines it, then ASCII controls; no invisible character is ASCII.
    let b = s.as_bytes();
    if b.iter().any(|c| matches!(c, b' ' | b'\t'..=b'\r')) {
        return Err(Invalid::BadCharacters("spaces inside the address"));
    }
    if b.iter().any(u8::is_ascii_control) {
        return Err(Invalid::BadCharacters("control characters"));
    }
    Ok(())
}

fn no_spaces_or_controls_by_char(s: &str) -> Result<(), Invalid> {
    if s.chars().any(|c| c.is_whitespace()) {
        return Err(Invalid::BadCharacters("spaces inside the address"));
    }
    if s.chars().any(|c| c.is_control() || super::is_invisible(c)) {
        return Err(Invalid::BadCharacters("control characters"));
    }
    Ok(())
}

/// True for the domains the Gmail rules apply to.
pub fn is_gmail_domain(domain: &str) -> bool {
    domain == "gmail.com" || domain == "googlemail.com"
}

/// True when a base form's domain is one the Gmail rules apply to.
pub(crate) fn has_gmail_domain(base: &str) -> bool {
    base.rsplit_once('@')
        .is_some_and(|(_, domain)| is_gmail_domain(domain))
}

/// The Gmail rules over a base form: for gmail.com and googlemail.com, remove the dots and
/// any `+tag` from the local part and map googlemail.com to gmail.com; other addresses are
/// unchanged. A Gmail local part must be ASCII letters and digits once dots and the tag are
/// gone.
pub fn gmail_canonical(base: &str) -> Result<String, Invalid> {
    let Some((local, domain)) = base.split_once('@') else {
        return Err(Invalid::Malformed("needs exactly one @"));
    };
    if !is_gmail_domain(domain) {
        return Ok(base.to_owned());
    }
    let untagged = local.split('+').next().unwrap_or_default();
    let user: String = untagged.chars().filter(|c| *c != '.').collect();
    if user.is_empty() {
        return Err(Invalid::Malformed("a Gmail address with no user name"));
    }
    if !user
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(Invalid::Malformed(
            "a Gmail user name has only letters and digits",
        ));
    }
    Ok(format!("{user}@gmail.com"))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The byte-at-a-time check agrees with the per-character one on every ASCII string.
        #[test]
        fn ascii_fast_path_agrees(s in "[\\x00-\\x7f]{0,12}") {
            proptest::prop_assert_eq!(no_spaces_or_controls(&s), no_spaces_or_controls_by_char(&s));
            proptest::prop_assert_eq!(
                crate::normalise::clean(&s).into_owned(),
                s.trim_matches(|c: char| c.is_whitespace()).to_owned()
            );
        }
    }

    #[test]
    fn base_form() {
        assert_eq!(
            email_base("  John.Smith@Example.COM \n").unwrap(),
            "john.smith@example.com"
        );
        assert_eq!(
            email_base("ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ").unwrap(),
            "john@example.com"
        );
        assert_eq!(
            email_base("x+tag@sub.example.co.uk").unwrap(),
            "x+tag@sub.example.co.uk"
        );
    }

    #[test]
    fn invalid_addresses_say_why() {
        let e = |s: &str| email_base(s).unwrap_err().category();
        assert_eq!(e(""), "empty");
        assert_eq!(e("   "), "empty");
        assert_eq!(e("john"), "malformed");
        assert_eq!(e("a@b@c.com"), "malformed");
        assert_eq!(e("@example.com"), "malformed");
        assert_eq!(e("john@"), "malformed");
        assert_eq!(e("john@localhost"), "malformed");
        assert_eq!(e("john smith@example.com"), "bad_characters");
        assert_eq!(e("john@exa_mple.com"), "bad_characters");
        assert_eq!(e("john@example..com"), "malformed");
        assert_eq!(e("john@1.2.3.4"), "malformed");
        assert_eq!(e(".john@example.com"), "malformed");
        assert_eq!(e(&format!("{}@example.com", "a".repeat(65))), "too_long");
    }

    #[test]
    fn gmail_rules() {
        let g = |s: &str| gmail_canonical(&email_base(s).unwrap());
        assert_eq!(g("J.O.H.N+ads@Gmail.com").unwrap(), "john@gmail.com");
        assert_eq!(
            g("john.smith@googlemail.com").unwrap(),
            "johnsmith@gmail.com"
        );
        assert_eq!(g("j.smith+x@outlook.com").unwrap(), "j.smith+x@outlook.com");
        assert_eq!(g("+only@gmail.com").unwrap_err().category(), "malformed");
    }

    #[test]
    fn internationalised_domains_with_combining_marks_are_valid() {
        for (raw, want) in [
            ("info@संपर्क.भारत", "info@संपर्क.भारत"),
            ("Info@संपर्क.भारत", "info@संपर्क.भारत"),
            ("user@مثال.إختبار", "user@مثال.إختبار"),
            ("a@ตัวอย่าง.ไทย", "a@ตัวอย่าง.ไทย"),
            ("anna@bücher.de", "anna@bücher.de"),
        ] {
            assert_eq!(email_base(raw).as_deref(), Ok(want), "{raw}");
        }
        // A combining mark is not a licence for symbols.
        assert!(email_base("a@ex\u{2603}mple.com").is_err());
    }
}
