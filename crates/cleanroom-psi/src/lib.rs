//! Private set intersection between two parties' own machines, semi-honest security.
//!
//! - [`group`]: ristretto255 hash-to-group with domain separation, per-session secret scalars
//!   (zeroised, never printed), blinding, and 16-byte tags of double-blinded values.
//! - [`elgamal`]: exponential ElGamal over ristretto255, additively homomorphic, for sums.
//! - [`wire`]: the hello and the typed messages, with exact-length decoding.
//! - [`input`]: a party's records, blinded in parallel batches as they are read, deduplicated.
//! - [`session`]: the comparison of both hellos and the agreed parameters (caps, noise).
//! - [`side`]: what each side may bring to a protocol (values and their bound, a matches
//!   file, noise), checked before any input is read.
//! - [`cardinality`], [`intersection`], [`sum`] (to the party without values, masked
//!   decryption), [`sum_to_holder`] (to the values holder): each role's steps as types that
//!   consume themselves, so steps cannot run out of order; [`Party`] wraps them for a transport.
//!
//! No transport and no async: a transport moves [`wire::Message`]s between two [`Party`]s. The
//! only IO is the OT engine's input beyond 256 MiB, sealed in nameless temporary files
//! ([`ot::store`]).
//! See `docs/psi.md` for the protocols, what each party learns, and the threat model.

pub mod cardinality;
pub mod elgamal;
mod error;
pub mod group;
pub mod input;
pub mod intersection;
pub mod ot;
pub mod ot_intersection;
mod party;
pub mod session;
pub mod side;
pub mod stream;
pub mod sum;
pub mod sum_to_holder;
pub mod wire;

pub use error::{Fault, PsiError};
pub use input::{InputBuilder, PreparedInput};
pub use intersection::IntersectionOutput;
pub use ot::store::SpillConfig;
pub use party::{Action, Outcome, Party};
pub use session::{MAX_PEER_ITEMS, Session, SessionConfig};
pub use wire::{Hello, Message, ProtocolKind, Role};

/// Bumped whenever messages or their meaning change; part of the hash-to-group domain.
pub const PROTOCOL_VERSION: u16 = 3;

/// Matched records per identifier kind (in cascade order: a record counts for the first kind
/// it matched on) and in total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchCounts {
    pub per_kind: Vec<i64>,
    pub total: i64,
    /// Whether the counts carry differential-privacy noise.
    pub noisy: bool,
}

impl MatchCounts {
    pub fn new(per_kind: Vec<i64>, noisy: bool) -> Self {
        MatchCounts {
            total: per_kind.iter().sum(),
            per_kind,
            noisy,
        }
    }
}

/// What the party that learns a sum gets: the matched records and the sum of the values
/// holder's values over them, per kind in the cascade and in total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumOutput {
    pub counts: MatchCounts,
    /// Sum of the values over matched records, per kind in the cascade.
    pub sums: Vec<i64>,
    pub total_sum: i64,
    /// Whether the sums carry differential-privacy noise.
    pub noisy: bool,
}
