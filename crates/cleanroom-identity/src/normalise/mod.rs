//! Normalisation of identifiers as the ad ecosystem does it, so that two parties who hold the
//! same person's identifier in different spellings produce the same string (and so the same
//! pseudonym). The rules are in `docs/identity.md`; each normaliser is idempotent
//! (`normalise(normalise(x)) == normalise(x)`), which the property tests check.
//!
//! A value that cannot be normalised is an [`Invalid`] saying why, never echoing the value: it
//! becomes NULL in the output and is counted in the prep report, so it can never match.

mod email;
mod maid;
mod name;
mod phone;
mod postal;

use std::fmt;

use crate::IdentityError;

pub use email::{email_base, gmail_canonical, is_gmail_domain};
pub use phone::{PhoneRegion, phone_e164, phone_e164_into, region_is_known};
pub use postal::{gb_outward, postal_code};

/// The kind of an identifier column: decides how its values are normalised and which
/// pseudonymisation subkey they are keyed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    /// An email address.
    Email,
    /// A telephone number (output in E.164 with `+`).
    Phone,
    /// A mobile advertising id (IDFA, GAID): a UUID.
    Maid,
    /// A person's (first, last or full) name.
    Name,
    /// A postal code.
    PostalCode,
    /// An already-pseudonymised or otherwise opaque key: trimmed only.
    Opaque,
}

impl IdKind {
    /// Every kind, in a fixed order.
    pub const ALL: [IdKind; 6] = [
        IdKind::Email,
        IdKind::Phone,
        IdKind::Maid,
        IdKind::Name,
        IdKind::PostalCode,
        IdKind::Opaque,
    ];

    /// Parses a kind as written in a configuration file (case-insensitive; a few aliases).
    pub fn parse(s: &str) -> Result<IdKind, IdentityError> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "email" | "e_mail" => Ok(IdKind::Email),
            "phone" | "telephone" | "mobile" => Ok(IdKind::Phone),
            "maid" | "idfa" | "gaid" | "aaid" | "mobile_ad_id" => Ok(IdKind::Maid),
            "name" | "first_name" | "last_name" | "full_name" => Ok(IdKind::Name),
            "postal_code" | "postcode" | "zip" | "zip_code" => Ok(IdKind::PostalCode),
            "opaque" => Ok(IdKind::Opaque),
            _ => Err(IdentityError::InvalidInput(format!(
                "unknown identifier kind {:?}: use one of email, phone, maid, name, postal_code, opaque",
                truncate(s, 40)
            ))),
        }
    }

    /// The canonical name, as written in configuration files and mixed into key derivation.
    pub fn as_str(&self) -> &'static str {
        match self {
            IdKind::Email => "email",
            IdKind::Phone => "phone",
            IdKind::Maid => "maid",
            IdKind::Name => "name",
            IdKind::PostalCode => "postal_code",
            IdKind::Opaque => "opaque",
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options of normalisation. Both parties of a collaboration must use the same options, or
/// their pseudonyms will not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormaliseOptions {
    /// For gmail.com and googlemail.com addresses: remove dots and `+tag` from the local part
    /// and map googlemail.com to gmail.com (Gmail delivers all of these to one mailbox).
    pub gmail_rules: bool,
    /// ISO 3166-1 alpha-2 region (e.g. `"GB"`) for phone numbers written without a country
    /// code, and the postal code system to validate against.
    pub default_region: String,
}

impl Default for NormaliseOptions {
    fn default() -> Self {
        NormaliseOptions {
            gmail_rules: false,
            default_region: "GB".to_owned(),
        }
    }
}

/// Why a value could not be normalised. Never contains the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invalid {
    /// Empty or only whitespace: a missing value rather than a wrong one.
    Empty,
    /// Longer than any real value of its kind.
    TooLong,
    /// Contains characters that cannot occur in its kind (spaces inside an email address,
    /// letters in a phone number, control characters).
    BadCharacters(&'static str),
    /// Not shaped like its kind; the text says how.
    Malformed(&'static str),
    /// Well-formed but not a real value (a phone number no numbering plan assigns).
    NotValid(&'static str),
    /// An all-zero advertising id: the device has limited ad tracking.
    OptedOut,
    /// A national phone number with no usable default region to read it in.
    NoRegion,
    /// Below the minimum of a generalisation (an age under the first band).
    BelowMinimum,
}

impl Invalid {
    /// A short stable category for reports: `empty`, `too_long`, `bad_characters`,
    /// `malformed`, `not_valid`, `opted_out`, `no_region`, `below_minimum`.
    pub fn category(&self) -> &'static str {
        match self {
            Invalid::Empty => "empty",
            Invalid::TooLong => "too_long",
            Invalid::BadCharacters(_) => "bad_characters",
            Invalid::Malformed(_) => "malformed",
            Invalid::NotValid(_) => "not_valid",
            Invalid::OptedOut => "opted_out",
            Invalid::NoRegion => "no_region",
            Invalid::BelowMinimum => "below_minimum",
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Empty => f.write_str("empty"),
            Invalid::TooLong => f.write_str("too long"),
            Invalid::BadCharacters(why) => write!(f, "bad characters: {why}"),
            Invalid::Malformed(why) => write!(f, "malformed: {why}"),
            Invalid::NotValid(why) => write!(f, "not valid: {why}"),
            Invalid::OptedOut => f.write_str("opted out (all-zero advertising id)"),
            Invalid::NoRegion => f.write_str("national number but no valid default region"),
            Invalid::BelowMinimum => f.write_str("below the minimum"),
        }
    }
}

impl std::error::Error for Invalid {}

/// Normalises one identifier of the given kind. See `docs/identity.md` for the rules.
pub fn normalise(kind: IdKind, raw: &str, opts: &NormaliseOptions) -> Result<String, Invalid> {
    match kind {
        IdKind::Email => {
            let base = email::email_base(raw)?;
            if opts.gmail_rules && email::has_gmail_domain(&base) {
                email::gmail_canonical(&base)
            } else {
                // Not Gmail: the base form is the matching form (no second copy).
                Ok(base)
            }
        }
        IdKind::Phone => phone::phone_e164(raw, &opts.default_region),
        IdKind::Maid => maid::maid(raw),
        IdKind::Name => name::name(raw),
        IdKind::PostalCode => postal::postal_code(raw, &opts.default_region),
        IdKind::Opaque => opaque(raw),
    }
}

/// Longest opaque key accepted, in bytes.
pub const MAX_OPAQUE_BYTES: usize = 1024;

fn opaque(raw: &str) -> Result<String, Invalid> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    if s.len() > MAX_OPAQUE_BYTES {
        return Err(Invalid::TooLong);
    }
    Ok(s.to_owned())
}

/// Characters that are invisible but common in exported data (zero-width spaces and joiners,
/// word joiner, byte-order mark): removed from every identifier except opaque ones.
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
    )
}

/// Trims whitespace and removes invisible characters.
pub(crate) fn clean(raw: &str) -> std::borrow::Cow<'_, str> {
    if raw.is_ascii() {
        // No invisible character is ASCII, and `trim` removes exactly the whitespace.
        return std::borrow::Cow::Borrowed(raw.trim());
    }
    let t = raw.trim_matches(|c: char| c.is_whitespace() || is_invisible(c));
    if t.chars().any(is_invisible) {
        std::borrow::Cow::Owned(t.chars().filter(|c| !is_invisible(*c)).collect())
    } else {
        std::borrow::Cow::Borrowed(t)
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_aliases_parse() {
        for k in IdKind::ALL {
            assert_eq!(IdKind::parse(k.as_str()).unwrap(), k);
        }
        assert_eq!(IdKind::parse(" IDFA ").unwrap(), IdKind::Maid);
        assert_eq!(IdKind::parse("postcode").unwrap(), IdKind::PostalCode);
        let e = IdKind::parse("ssn").unwrap_err();
        assert_eq!(e.code(), "invalid_input");
    }

    #[test]
    fn opaque_is_trimmed_only() {
        let o = NormaliseOptions::default();
        assert_eq!(
            normalise(IdKind::Opaque, "  AbC.1 ", &o).unwrap(),
            "AbC.1".to_owned()
        );
        assert_eq!(normalise(IdKind::Opaque, " \t", &o), Err(Invalid::Empty));
        assert_eq!(
            normalise(IdKind::Opaque, &"x".repeat(2000), &o),
            Err(Invalid::TooLong)
        );
    }

    #[test]
    fn clean_removes_invisible_characters() {
        assert_eq!(clean("\u{FEFF} a\u{200B}b \u{00A0}"), "ab");
    }

    #[test]
    fn invalid_never_echoes_the_value() {
        let o = NormaliseOptions::default();
        let secretish = "alice-secret-value";
        for k in IdKind::ALL {
            if let Err(e) = normalise(k, &format!("{secretish}@@ \u{7}"), &o) {
                assert!(!e.to_string().contains("alice"), "{e}");
            }
        }
    }
}
