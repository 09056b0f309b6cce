//! Appending to an audit chain, the same in every backend: given the chain's head record and
//! the last sequence number actually stored, the next entry (its time, sequence number and
//! hashes, computed by `cleanroom_core::audit`), or `ChainBroken` when the two disagree.
//!
//! A backend's part is to read both under its lock on the chain (SQLite: the single writer
//! connection; PostgreSQL: a transaction-scoped advisory lock keyed by the chain) and to store
//! the entry and the new head in the same transaction.

use cleanroom_core::audit::{AuditEntry, ChainHead, genesis_hash};

use crate::MetaError;
use crate::rows::now;
use crate::store::NewAudit;

/// The entry that follows `head` (`None`: the chain is empty and starts from its genesis hash),
/// when `last_seq` (the greatest stored sequence number, `None` when there is none) agrees with
/// it. An entry past the head, or entries without a head, were written outside the store:
/// refuse, naming that, rather than fail later on a sequence number clash.
pub(crate) fn next_entry(
    a: NewAudit,
    head: Option<ChainHead>,
    last_seq: Option<i64>,
) -> Result<AuditEntry, MetaError> {
    let (prev_seq, prev_hash) = match head {
        Some(h) => (h.seq, h.hash),
        None => (0, genesis_hash(&a.chain)),
    };
    if last_seq.unwrap_or(0) as u64 != prev_seq {
        tracing::error!(chain = %a.chain, head = prev_seq, last = ?last_seq, "audit chain has entries past its head");
        return Err(MetaError::ChainBroken(a.chain));
    }
    Ok(AuditEntry::next(
        &a.chain,
        prev_seq + 1,
        now(),
        a.actor,
        a.action,
        a.target,
        a.outcome,
        a.detail,
        prev_hash,
    ))
}
