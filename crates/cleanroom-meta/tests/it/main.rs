//! The metadata store's conformance suite, run against every backend this crate has (SQLite
//! and PostgreSQL; a new backend adds one module like `sqlite.rs` and must pass all of it).
//!
//! Beyond the round trips, the suite attacks the races the service relies on the store to
//! settle: many concurrent charges against one ledger (never overspent), concurrent appends
//! to one audit chain (no gap, no fork, the head consistent), two uploads, two analyses'
//! endings and two activation moves out of the same state (exactly one wins).

/// Calls `$make!(test, …)` with every test of the suite, so each backend's module runs them all
/// (it defines `$make` to turn one suite function into a test on a fresh store of its kind) and
/// a new test lands on every backend at once.
macro_rules! every_conformance_test {
    ($make:ident) => {
        $make!(
            parties_and_tokens_round_trip,
            collaborations_memberships_and_closing,
            datasets_uploads_and_names,
            policies_ledgers_analyses_and_approvals,
            activations_move_forward_only,
            concurrent_charges_never_overspend,
            concurrent_charges_across_ledgers_and_chains,
            concurrent_appends_keep_one_chain,
            racing_uploads_one_wins,
            racing_moves_out_of_one_state_one_wins,
            rewrapping_keys_is_all_or_nothing,
        );
    };
}

mod conformance;
mod postgres;
mod sqlite;
