//! Opaque identifiers. They are random UUIDs so that they can't be enumerated and need no
//! database sequence (the PostgreSQL backend uses the same values).

use std::fmt;
use std::str::FromStr;

use crate::CoreError;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A fresh random identifier.
            pub fn new() -> Self {
                Self(uuid::Uuid::new_v4())
            }
            pub fn parse(s: &str) -> Result<Self, CoreError> {
                uuid::Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| CoreError::invalid($what, "not a valid id"))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = CoreError;
            fn from_str(s: &str) -> Result<Self, CoreError> {
                Self::parse(s)
            }
        }
    };
}

id_type!(
    /// An organisation (a party: brand, publisher, hospital, bank, operator).
    OrgId,
    "organisation id"
);
id_type!(
    /// A person who acts for an organisation.
    UserId,
    "user id"
);
id_type!(
    /// An API token (the public half of a token string).
    TokenId,
    "token id"
);
id_type!(
    /// A collaboration between organisations.
    CollaborationId,
    "collaboration id"
);
id_type!(
    /// A dataset contributed to a collaboration.
    DatasetId,
    "dataset id"
);
id_type!(
    /// An analysis (a SQL query or a template run) and its release.
    AnalysisId,
    "analysis id"
);
id_type!(
    /// A partner's request to receive a matched segment as its own identifiers.
    ActivationId,
    "activation id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = DatasetId::new();
        assert_eq!(DatasetId::parse(&id.to_string()).unwrap(), id);
        assert!(DatasetId::parse("../etc/passwd").is_err());
        assert!(OrgId::parse("").is_err());
    }
}
