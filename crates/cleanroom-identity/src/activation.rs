//! Plain SHA-256 forms of identifiers, as ad platforms take them for activation (uploading an
//! audience). Each platform has its own normalisation; there is no common contract, so the
//! destination is explicit.
//!
//! These hashes are **reversible by dictionary**: anyone holding one can test candidate
//! addresses or phone numbers at millions per second. They are for the owner's own upload to
//! the platform, never for the clean room: `cleanroom prepare` writes them to a separate file
//! that stays on premises.

use std::fmt;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::IdentityError;
use crate::normalise::{
    IdKind, Invalid, NormaliseOptions, email_base, is_gmail_domain, phone_e164,
};

/// An activation destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// Google Customer Match / enhanced conversions: email trimmed and lowercased, dots
    /// removed before `@gmail.com`/`@googlemail.com`; phone in E.164 with `+`; SHA-256 hex.
    Google,
    /// Meta Custom Audiences: email trimmed and lowercased; phone as digits with country code,
    /// no `+`; SHA-256 hex.
    Meta,
    /// Snap: email trimmed and lowercased; phone digits with country code, no `+` or leading
    /// zeros; SHA-256 lowercase hex.
    Snap,
    /// Unified ID 2.0: email lowercased, for gmail.com also dots and `+tag` removed; phone in
    /// E.164 with `+`; SHA-256, then standard base64 of the 32 raw bytes.
    Uid2,
}

impl Destination {
    pub const ALL: [Destination; 4] = [
        Destination::Google,
        Destination::Meta,
        Destination::Snap,
        Destination::Uid2,
    ];

    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "google" => Ok(Destination::Google),
            "meta" | "facebook" => Ok(Destination::Meta),
            "snap" | "snapchat" => Ok(Destination::Snap),
            "uid2" => Ok(Destination::Uid2),
            _ => Err(IdentityError::InvalidInput(format!(
                "unknown activation destination {:?}: use google, meta, snap or uid2",
                s.chars().take(30).collect::<String>()
            ))),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Destination::Google => "google",
            Destination::Meta => "meta",
            Destination::Snap => "snap",
            Destination::Uid2 => "uid2",
        }
    }

    /// True when this destination takes hashed identifiers of this kind.
    pub fn supports(&self, kind: IdKind) -> bool {
        matches!(kind, IdKind::Email | IdKind::Phone)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string a destination hashes: the destination's own normalisation of `raw`.
pub fn activation_input(
    dest: Destination,
    kind: IdKind,
    raw: &str,
    opts: &NormaliseOptions,
) -> Result<String, Invalid> {
    let base = match kind {
        IdKind::Email => email_base(raw)?,
        IdKind::Phone => phone_e164(raw, &opts.default_region)?,
        _ => {
            return Err(Invalid::Malformed(
                "activation hashes exist for email and phone only",
            ));
        }
    };
    activation_input_from_base(dest, kind, &base)
}

/// The string a destination hashes, from the base form: for email [`email_base`] (without the
/// Gmail rules, which are a matching choice, not a platform's), for phone E.164 with `+`.
pub fn activation_input_from_base(
    dest: Destination,
    kind: IdKind,
    base: &str,
) -> Result<String, Invalid> {
    match kind {
        IdKind::Email => {
            let (local, domain) = base
                .split_once('@')
                .ok_or(Invalid::Malformed("needs exactly one @"))?;
            Ok(match dest {
                Destination::Google if is_gmail_domain(domain) => {
                    format!("{}@{domain}", local.replace('.', ""))
                }
                Destination::Uid2 if domain == "gmail.com" => {
                    let user = local.split('+').next().unwrap_or_default().replace('.', "");
                    if user.is_empty() {
                        return Err(Invalid::Malformed("a Gmail address with no user name"));
                    }
                    format!("{user}@{domain}")
                }
                _ => base.to_owned(),
            })
        }
        IdKind::Phone => Ok(match dest {
            Destination::Google | Destination::Uid2 => base.to_owned(),
            Destination::Meta | Destination::Snap => base.trim_start_matches('+').to_owned(),
        }),
        _ => Err(Invalid::Malformed(
            "activation hashes exist for email and phone only",
        )),
    }
}

/// The hashed form a destination takes: SHA-256 as lowercase hex, or base64 for UID2.
pub fn activation_hash(dest: Destination, input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    match dest {
        Destination::Uid2 => base64::engine::general_purpose::STANDARD.encode(digest),
        _ => hex::encode(digest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> NormaliseOptions {
        NormaliseOptions {
            gmail_rules: true,
            default_region: "GB".into(),
        }
    }

    #[test]
    fn per_destination_inputs() {
        let e =
            |d| activation_input(d, IdKind::Email, " J.Doe+x@GoogleMail.com ", &opts()).unwrap();
        assert_eq!(e(Destination::Google), "jdoe+x@googlemail.com");
        assert_eq!(e(Destination::Meta), "j.doe+x@googlemail.com");
        assert_eq!(e(Destination::Uid2), "j.doe+x@googlemail.com");
        let u = activation_input(
            Destination::Uid2,
            IdKind::Email,
            "J.Doe+x@gmail.com",
            &opts(),
        );
        assert_eq!(u.unwrap(), "jdoe@gmail.com");
        let p = |d| activation_input(d, IdKind::Phone, "07911 123456", &opts()).unwrap();
        assert_eq!(p(Destination::Google), "+447911123456");
        assert_eq!(p(Destination::Meta), "447911123456");
        assert_eq!(p(Destination::Snap), "447911123456");
        assert_eq!(p(Destination::Uid2), "+447911123456");
        assert!(activation_input(Destination::Meta, IdKind::Maid, "x", &opts()).is_err());
    }

    #[test]
    fn known_hashes() {
        // Computed independently: `printf test@example.com | sha256sum`.
        assert_eq!(
            activation_hash(Destination::Google, "test@example.com"),
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
        // `printf user@example.com | openssl dgst -sha256 -binary | base64` (UID2's own example).
        assert_eq!(
            activation_hash(Destination::Uid2, "user@example.com"),
            "tMmiiTI7IaAcPpQPFQ65uMVCWH8av9jw4cwf/F5HVRQ="
        );
    }
}
