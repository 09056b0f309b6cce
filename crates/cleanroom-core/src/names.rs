//! Validated names. A name that reaches the store or the file system has passed one of these
//! parsers, so `../`, control characters and look-alike Unicode never get that far.

use std::fmt;

use crate::CoreError;

const MAX_SLUG: usize = 63;

fn parse_slug(what: &'static str, s: &str) -> Result<String, CoreError> {
    if s.is_empty() {
        return Err(CoreError::invalid(what, "must not be empty"));
    }
    if s.len() > MAX_SLUG {
        return Err(CoreError::invalid(
            what,
            format!("must be at most {MAX_SLUG} characters"),
        ));
    }
    let first = s.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(CoreError::invalid(
            what,
            "must start with a lowercase letter or a digit",
        ));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(CoreError::invalid(
            what,
            format!(
                "may contain only lowercase letters, digits, '-' and '_' (found {:?})",
                bad
            ),
        ));
    }
    Ok(s.to_owned())
}

macro_rules! slug_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, CoreError> {
                parse_slug($what, s).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

slug_type!(
    /// The short name of an organisation, unique on a server (`acme-retail`).
    OrgName,
    "organisation name"
);
slug_type!(
    /// The login name of a user, unique within its organisation.
    UserName,
    "user name"
);
slug_type!(
    /// The name of a collaboration, unique per creating organisation.
    CollaborationName,
    "collaboration name"
);
slug_type!(
    /// The name of a dataset, unique within a collaboration.
    DatasetName,
    "dataset name"
);

/// The name of a column in a dataset schema: an SQL-friendly identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColumnName(String);

impl ColumnName {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        const WHAT: &str = "column name";
        if s.is_empty() || s.len() > MAX_SLUG {
            return Err(CoreError::invalid(
                WHAT,
                format!("must be 1 to {MAX_SLUG} characters"),
            ));
        }
        let first = s.as_bytes()[0];
        if !(first.is_ascii_alphabetic() || first == b'_') {
            return Err(CoreError::invalid(
                WHAT,
                format!("{s:?} must start with a letter or '_'"),
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(CoreError::invalid(
                WHAT,
                format!("{s:?} may contain only ASCII letters, digits and '_'"),
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ColumnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slugs_refuse_paths_and_odd_characters() {
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            ".hidden",
            "A",
            "née",
            "a b",
            "a\0",
            &"x".repeat(64),
        ] {
            assert!(DatasetName::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "0day", "brand-customers_2026", &"x".repeat(63)] {
            assert_eq!(DatasetName::parse(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn column_names_are_sql_identifiers() {
        assert!(ColumnName::parse("email_hash").is_ok());
        assert!(ColumnName::parse("_x1").is_ok());
        for bad in ["1x", "a-b", "a.b", "", "é", "a b"] {
            assert!(ColumnName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn accepted_slugs_are_safe_path_components(s in "\\PC{0,80}") {
            if let Ok(n) = DatasetName::parse(&s) {
                prop_assert!(!n.as_str().contains('/'));
                prop_assert!(!n.as_str().contains(".."));
                prop_assert!(n.as_str().len() <= 63);
                prop_assert!(n.as_str().is_ascii());
            }
        }

        #[test]
        fn accepted_column_names_round_trip(s in "[A-Za-z_][A-Za-z0-9_]{0,62}") {
            let parsed = ColumnName::parse(&s).unwrap();
            prop_assert_eq!(parsed.as_str(), s.as_str());
        }
    }
}
