//! Parties, their people and what they may do in a collaboration.

use std::fmt;

use crate::CoreError;

/// What a user may do within its own organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserRole {
    /// Manages the organisation's users and tokens, and acts for the organisation.
    Admin,
    /// Acts for the organisation in collaborations.
    Member,
}

impl UserRole {
    /// Every role (the API document lists them).
    pub const ALL: &'static [UserRole] = &[UserRole::Admin, UserRole::Member];

    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Admin => "admin",
            UserRole::Member => "member",
        }
    }
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s {
            "admin" => Ok(UserRole::Admin),
            "member" => Ok(UserRole::Member),
            other => Err(CoreError::invalid(
                "user role",
                format!("{other:?} is not one of admin, member"),
            )),
        }
    }
}

/// One thing a member organisation may do in a collaboration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ability {
    /// Upload datasets into the collaboration.
    Contribute,
    /// Run analyses over the collaboration's data.
    Analyse,
    /// Receive the results of analyses.
    Receive,
}

impl Ability {
    pub const ALL: [Ability; 3] = [Ability::Contribute, Ability::Analyse, Ability::Receive];

    pub fn as_str(self) -> &'static str {
        match self {
            Ability::Contribute => "contribute",
            Ability::Analyse => "analyse",
            Ability::Receive => "receive",
        }
    }

    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s {
            "contribute" => Ok(Ability::Contribute),
            "analyse" | "analyze" => Ok(Ability::Analyse),
            "receive" => Ok(Ability::Receive),
            other => Err(CoreError::invalid(
                "ability",
                format!("{other:?} is not one of contribute, analyse, receive"),
            )),
        }
    }

    fn bit(self) -> u8 {
        match self {
            Ability::Contribute => 1,
            Ability::Analyse => 2,
            Ability::Receive => 4,
        }
    }
}

/// A set of abilities. Stored as a small bit set; printed as a comma-separated list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Abilities(u8);

impl Abilities {
    pub fn none() -> Self {
        Abilities(0)
    }
    pub fn all() -> Self {
        Ability::ALL.into_iter().collect()
    }
    pub fn contains(self, a: Ability) -> bool {
        self.0 & a.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Ability> {
        Ability::ALL.into_iter().filter(move |a| self.contains(*a))
    }
    pub fn to_bits(self) -> i64 {
        i64::from(self.0)
    }
    pub fn from_bits(bits: i64) -> Result<Self, CoreError> {
        if !(0..8).contains(&bits) {
            return Err(CoreError::invalid("abilities", "unknown ability bits"));
        }
        Ok(Abilities(bits as u8))
    }
    /// Parses `contribute,analyse`; an empty list is refused (a member that can do nothing is a
    /// mistake, not a choice).
    pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, CoreError> {
        let mut set = Abilities::none();
        for item in items {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            set.0 |= Ability::parse(item)?.bit();
        }
        if set.is_empty() {
            return Err(CoreError::invalid(
                "abilities",
                "name at least one of contribute, analyse, receive",
            ));
        }
        Ok(set)
    }
}

impl FromIterator<Ability> for Abilities {
    fn from_iter<I: IntoIterator<Item = Ability>>(iter: I) -> Self {
        Abilities(iter.into_iter().fold(0, |acc, a| acc | a.bit()))
    }
}

impl fmt::Display for Abilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Ability::as_str).collect();
        f.write_str(&names.join(","))
    }
}

macro_rules! str_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($(#[$vdoc:meta])* $variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// Every value, in declaration order (the API document lists them).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
            pub fn parse(s: &str) -> Result<Self, CoreError> {
                match s {
                    $($s => Ok($name::$variant),)+
                    other => Err(CoreError::invalid($what, format!("unknown value {other:?}"))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(
    /// Where an organisation stands in a collaboration.
    MemberStatus, "member status", {
        /// Invited; sees nothing and can do nothing but accept or decline.
        Invited => "invited",
        /// Accepted (or the creator); abilities apply.
        Active => "active",
        /// Declined the invitation.
        Declined => "declined",
    }
);

str_enum!(
    /// The life cycle of a collaboration.
    CollaborationStatus, "collaboration status", {
        /// Data may flow.
        Open => "open",
        /// Closed: its keys are destroyed and its data unreadable.
        Closed => "closed",
    }
);

str_enum!(
    /// The life cycle of a dataset.
    DatasetStatus, "dataset status", {
        /// Declared (schema known), no data yet, or the last upload failed.
        Pending => "pending",
        /// An upload is under way; a second one is refused.
        Uploading => "uploading",
        /// Data stored, encrypted; immutable from now on.
        Ready => "ready",
        /// Its key was destroyed when the collaboration closed.
        Shredded => "shredded",
    }
);

str_enum!(
    /// The life cycle of an analysis. A dry run is never stored.
    AnalysisStatus, "analysis status", {
        /// Priced, not charged: only shown to the requester.
        DryRun => "dry_run",
        /// Charged (the budgets are debited) and running.
        Running => "running",
        /// Its release is stored for the receivers.
        Released => "released",
        /// It failed after its charge; the charge stays, nothing was released.
        Failed => "failed",
    }
);

impl AnalysisStatus {
    /// Whether an analysis may move from `self` to `to`. A stored analysis starts `Running`
    /// (or `Released` when answered from an identical earlier release) and ends once.
    pub fn can_move_to(self, to: AnalysisStatus) -> bool {
        use AnalysisStatus::*;
        matches!((self, to), (Running, Released | Failed))
    }

    /// Released or failed: nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(self, AnalysisStatus::Released | AnalysisStatus::Failed)
    }
}

str_enum!(
    /// The life cycle of an activation (a segment handed to a partner).
    ActivationStatus, "activation status", {
        /// Requested by the partner, waiting for the owner's decision.
        Pending => "pending",
        /// Approved by the owner: the partner may download it once.
        Approved => "approved",
        /// Refused by the owner.
        Rejected => "rejected",
        /// The approval is used (once, by one conditional update); the segment is being matched.
        Consumed => "consumed",
        /// The segment was sent to the partner.
        Delivered => "delivered",
        /// The matched segment was below the owner's minimum: nothing was sent.
        TooSmall => "too_small",
        /// Matching failed after the approval was used (or a restart cut it off); nothing was
        /// sent and the approval stays used.
        Failed => "failed",
    }
);

impl ActivationStatus {
    /// Whether an activation may move from `self` to `to`.
    pub fn can_move_to(self, to: ActivationStatus) -> bool {
        use ActivationStatus::*;
        matches!(
            (self, to),
            (Pending, Approved | Rejected)
                | (Approved, Consumed)
                | (Consumed, Delivered | TooSmall | Failed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abilities_parse_and_print() {
        let a = Abilities::parse_list("analyse, receive".split(',')).unwrap();
        assert!(a.contains(Ability::Analyse));
        assert!(!a.contains(Ability::Contribute));
        assert_eq!(a.to_string(), "analyse,receive");
        assert_eq!(Abilities::from_bits(a.to_bits()).unwrap(), a);
        assert!(Abilities::parse_list([""]).is_err());
        assert!(Abilities::parse_list(["admin"]).is_err());
        assert!(Abilities::from_bits(9).is_err());
    }

    #[test]
    fn statuses_round_trip() {
        for s in ["pending", "uploading", "ready", "shredded"] {
            assert_eq!(DatasetStatus::parse(s).unwrap().as_str(), s);
        }
        assert!(MemberStatus::parse("owner").is_err());
        for s in ["dry_run", "running", "released", "failed"] {
            assert_eq!(AnalysisStatus::parse(s).unwrap().as_str(), s);
        }
        for s in [
            "pending",
            "approved",
            "rejected",
            "consumed",
            "delivered",
            "too_small",
            "failed",
        ] {
            assert_eq!(ActivationStatus::parse(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn only_legal_moves_are_allowed() {
        use ActivationStatus as A;
        use AnalysisStatus as S;
        let all = [S::DryRun, S::Running, S::Released, S::Failed];
        let moves: Vec<_> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_move_to(*b))
            .collect();
        assert_eq!(moves, [(S::Running, S::Released), (S::Running, S::Failed)]);
        assert!(
            all.iter()
                .all(|s| !s.is_final() || !all.iter().any(|t| s.can_move_to(*t)))
        );
        let all = [
            A::Pending,
            A::Approved,
            A::Rejected,
            A::Consumed,
            A::Delivered,
            A::TooSmall,
            A::Failed,
        ];
        let moves = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_move_to(*b))
            .count();
        assert_eq!(moves, 6);
        assert!(
            !A::Consumed.can_move_to(A::Approved),
            "a used approval is never restored"
        );
        assert!(!A::Rejected.can_move_to(A::Approved));
    }
}
