//! The tamper-evident audit chain.
//!
//! Each collaboration (and the server itself, chain `system`) has an append-only list of
//! entries. Entry `n` carries the hash of entry `n-1`, and its own hash covers every field and
//! that previous hash, so editing, removing or reordering any entry breaks every hash after it.
//! The store also records the chain's head (last sequence number and hash) in the same
//! transaction as each append, so cutting entries off the end is detected too.
//!
//! This module is pure so that a client can verify a chain it downloaded without trusting the
//! server's word that it is intact.

use sha2::{Digest, Sha256};

/// The name of the chain that records server-wide actions (organisations, users, tokens,
/// refused authentication).
pub const SYSTEM_CHAIN: &str = "system";

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The action was authorised and done.
    Allowed,
    /// The action was refused (authentication, authorisation, validation, policy).
    Denied,
    /// The action was authorised but failed part way; nothing was kept.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allowed" => Some(Outcome::Allowed),
            "denied" => Some(Outcome::Denied),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

/// One entry of a chain, as stored and as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub chain: String,
    pub seq: u64,
    /// RFC 3339 UTC time of the entry.
    pub at: String,
    /// Who acted: `org/user`, or `anonymous` for refused authentication.
    pub actor: String,
    /// What was attempted, e.g. `dataset.upload`.
    pub action: String,
    /// What it was attempted on, e.g. a dataset name.
    pub target: String,
    pub outcome: Outcome,
    /// A short, non-secret detail (row counts, reasons, error codes). Never row data.
    pub detail: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// The `prev_hash` of a chain's first entry.
pub fn genesis_hash(chain: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cleanroom-audit-genesis-v1\0");
    h.update(chain.as_bytes());
    h.finalize().into()
}

fn put(h: &mut Sha256, field: &[u8]) {
    h.update((field.len() as u64).to_be_bytes());
    h.update(field);
}

/// The hash of an entry with these fields. Fields are length-prefixed, so no two different
/// entries encode alike.
#[allow(clippy::too_many_arguments)]
pub fn entry_hash(
    chain: &str,
    seq: u64,
    at: &str,
    actor: &str,
    action: &str,
    target: &str,
    outcome: Outcome,
    detail: &str,
    prev_hash: &[u8; 32],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cleanroom-audit-entry-v1\0");
    put(&mut h, chain.as_bytes());
    h.update(seq.to_be_bytes());
    put(&mut h, at.as_bytes());
    put(&mut h, actor.as_bytes());
    put(&mut h, action.as_bytes());
    put(&mut h, target.as_bytes());
    put(&mut h, outcome.as_str().as_bytes());
    put(&mut h, detail.as_bytes());
    h.update(prev_hash);
    h.finalize().into()
}

impl AuditEntry {
    /// Builds the next entry after `prev_hash` (with `seq = previous seq + 1`), hash included.
    #[allow(clippy::too_many_arguments)]
    pub fn next(
        chain: &str,
        seq: u64,
        at: String,
        actor: String,
        action: String,
        target: String,
        outcome: Outcome,
        detail: String,
        prev_hash: [u8; 32],
    ) -> Self {
        let hash = entry_hash(
            chain, seq, &at, &actor, &action, &target, outcome, &detail, &prev_hash,
        );
        AuditEntry {
            chain: chain.to_owned(),
            seq,
            at,
            actor,
            action,
            target,
            outcome,
            detail,
            prev_hash,
            hash,
        }
    }

    pub fn recompute_hash(&self) -> [u8; 32] {
        entry_hash(
            &self.chain,
            self.seq,
            &self.at,
            &self.actor,
            &self.action,
            &self.target,
            self.outcome,
            &self.detail,
            &self.prev_hash,
        )
    }
}

/// Where a chain stops being intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain {chain} is broken at entry {seq}: {reason}")]
pub struct ChainBreak {
    pub chain: String,
    pub seq: u64,
    pub reason: String,
}

/// The head a verified chain ends at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// Verifies a whole chain, in order from its first entry, and that it ends at `expected_head`
/// when one is known (from the store's head record or from a head pinned earlier by a member).
pub fn verify_chain(
    chain: &str,
    entries: &[AuditEntry],
    expected_head: Option<ChainHead>,
) -> Result<ChainHead, ChainBreak> {
    let brk = |seq: u64, reason: String| ChainBreak {
        chain: chain.to_owned(),
        seq,
        reason,
    };
    let mut prev = genesis_hash(chain);
    let mut head = ChainHead { seq: 0, hash: prev };
    for (i, e) in entries.iter().enumerate() {
        let want_seq = i as u64 + 1;
        if e.chain != chain {
            return Err(brk(e.seq, format!("entry belongs to chain {}", e.chain)));
        }
        if e.seq != want_seq {
            return Err(brk(
                want_seq,
                format!(
                    "expected entry {want_seq}, found {} (an entry was removed or reordered)",
                    e.seq
                ),
            ));
        }
        if e.prev_hash != prev {
            return Err(brk(
                e.seq,
                "its link to the previous entry does not match (an earlier entry was edited, removed or reordered)"
                    .into(),
            ));
        }
        if e.recompute_hash() != e.hash {
            return Err(brk(
                e.seq,
                "its content does not match its hash (edited)".into(),
            ));
        }
        prev = e.hash;
        head = ChainHead {
            seq: e.seq,
            hash: e.hash,
        };
    }
    if let Some(want) = expected_head {
        if want.seq > head.seq {
            return Err(brk(
                head.seq + 1,
                format!(
                    "the chain ends at entry {} but its head record says {} (entries were cut off the end)",
                    head.seq, want.seq
                ),
            ));
        }
        if want.seq < head.seq {
            return Err(brk(
                want.seq + 1,
                format!(
                    "the chain has entries past its recorded head {} (entries were appended outside the server)",
                    want.seq
                ),
            ));
        }
        if want.hash != head.hash {
            return Err(brk(
                head.seq,
                "the last entry's hash differs from the recorded head".into(),
            ));
        }
    }
    Ok(head)
}

/// Every action the audit chain records, by its stable name (`noun.verb`; `auth` for a failed
/// authentication). Names are part of the audit format: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    ActivationApprove,
    ActivationDeliver,
    ActivationDownload,
    ActivationList,
    ActivationReject,
    ActivationRequest,
    ActivationShow,
    AnalysisList,
    AnalysisQuery,
    AnalysisRelease,
    AnalysisShow,
    AnalysisTemplate,
    AuditRead,
    Auth,
    AuthThrottle,
    BudgetGrant,
    BudgetShow,
    CollaborationAccept,
    CollaborationClose,
    CollaborationCreate,
    CollaborationDecline,
    CollaborationInvite,
    CollaborationShow,
    DatasetCreate,
    DatasetList,
    DatasetShow,
    DatasetUpload,
    MasterKeyRotate,
    MetadataMigrate,
    MetricsRead,
    OrgCreate,
    PolicySet,
    PolicyShow,
    RequestPath,
    ServerInit,
    SessionEnd,
    SessionStart,
    TemplateApprovals,
    TemplateApprove,
    TemplateRevoke,
    TokenCreate,
    TokenRevoke,
    UserCreate,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 43] = [
        Action::ActivationApprove,
        Action::ActivationDeliver,
        Action::ActivationDownload,
        Action::ActivationList,
        Action::ActivationReject,
        Action::ActivationRequest,
        Action::ActivationShow,
        Action::AnalysisList,
        Action::AnalysisQuery,
        Action::AnalysisRelease,
        Action::AnalysisShow,
        Action::AnalysisTemplate,
        Action::AuditRead,
        Action::Auth,
        Action::AuthThrottle,
        Action::BudgetGrant,
        Action::BudgetShow,
        Action::CollaborationAccept,
        Action::CollaborationClose,
        Action::CollaborationCreate,
        Action::CollaborationDecline,
        Action::CollaborationInvite,
        Action::CollaborationShow,
        Action::DatasetCreate,
        Action::DatasetList,
        Action::DatasetShow,
        Action::DatasetUpload,
        Action::MasterKeyRotate,
        Action::MetadataMigrate,
        Action::MetricsRead,
        Action::OrgCreate,
        Action::PolicySet,
        Action::PolicyShow,
        Action::RequestPath,
        Action::ServerInit,
        Action::SessionEnd,
        Action::SessionStart,
        Action::TemplateApprovals,
        Action::TemplateApprove,
        Action::TemplateRevoke,
        Action::TokenCreate,
        Action::TokenRevoke,
        Action::UserCreate,
    ];

    /// The name written into audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ActivationApprove => "activation.approve",
            Action::ActivationDeliver => "activation.deliver",
            Action::ActivationDownload => "activation.download",
            Action::ActivationList => "activation.list",
            Action::ActivationReject => "activation.reject",
            Action::ActivationRequest => "activation.request",
            Action::ActivationShow => "activation.show",
            Action::AnalysisList => "analysis.list",
            Action::AnalysisQuery => "analysis.query",
            Action::AnalysisRelease => "analysis.release",
            Action::AnalysisShow => "analysis.show",
            Action::AnalysisTemplate => "analysis.template",
            Action::AuditRead => "audit.read",
            Action::Auth => "auth",
            Action::AuthThrottle => "auth.throttle",
            Action::BudgetGrant => "budget.grant",
            Action::BudgetShow => "budget.show",
            Action::CollaborationAccept => "collaboration.accept",
            Action::CollaborationClose => "collaboration.close",
            Action::CollaborationCreate => "collaboration.create",
            Action::CollaborationDecline => "collaboration.decline",
            Action::CollaborationInvite => "collaboration.invite",
            Action::CollaborationShow => "collaboration.show",
            Action::DatasetCreate => "dataset.create",
            Action::DatasetList => "dataset.list",
            Action::DatasetShow => "dataset.show",
            Action::DatasetUpload => "dataset.upload",
            Action::MasterKeyRotate => "master_key.rotate",
            Action::MetadataMigrate => "metadata.migrate",
            Action::MetricsRead => "metrics.read",
            Action::OrgCreate => "org.create",
            Action::PolicySet => "policy.set",
            Action::PolicyShow => "policy.show",
            Action::RequestPath => "request.path",
            Action::ServerInit => "server.init",
            Action::SessionEnd => "session.end",
            Action::SessionStart => "session.start",
            Action::TemplateApprovals => "template.approvals",
            Action::TemplateApprove => "template.approve",
            Action::TemplateRevoke => "template.revoke",
            Action::TokenCreate => "token.create",
            Action::TokenRevoke => "token.revoke",
            Action::UserCreate => "user.create",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod action_names {
    use super::Action;

    #[test]
    fn names_are_unique_and_shaped_noun_verb() {
        let mut seen = std::collections::BTreeSet::new();
        for a in Action::ALL {
            let n = a.as_str();
            assert!(seen.insert(n), "{n} twice");
            assert!(
                n == "auth"
                    || n.split_once('.').is_some_and(|(noun, verb)| {
                        !noun.is_empty()
                            && !verb.is_empty()
                            && n.chars()
                                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
                    }),
                "{n}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut prev = genesis_hash("c1");
        (1..=n)
            .map(|seq| {
                let e = AuditEntry::next(
                    "c1",
                    seq,
                    format!("2026-01-01T00:00:{seq:02}Z"),
                    "acme/alice".into(),
                    "dataset.upload".into(),
                    format!("d{seq}"),
                    Outcome::Allowed,
                    format!("rows={seq}"),
                    prev,
                );
                prev = e.hash;
                e
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let c = chain(5);
        let head = verify_chain("c1", &c, None).unwrap();
        assert_eq!(head.seq, 5);
        assert!(verify_chain("c1", &c, Some(head)).is_ok());
        assert_eq!(verify_chain("c1", &[], None).unwrap().seq, 0);
    }

    #[test]
    fn edits_removals_reorders_and_truncation_are_detected() {
        let c = chain(5);
        let head = verify_chain("c1", &c, None).unwrap();

        let mut edited = c.clone();
        edited[2].detail = "rows=999".into();
        assert_eq!(verify_chain("c1", &edited, None).unwrap_err().seq, 3);

        let mut removed = c.clone();
        removed.remove(1);
        assert!(verify_chain("c1", &removed, None).is_err());

        let mut reordered = c.clone();
        reordered.swap(1, 2);
        assert!(verify_chain("c1", &reordered, None).is_err());

        // Renumbering after a swap still breaks the links.
        let mut renumbered = reordered.clone();
        renumbered[1].seq = 2;
        renumbered[2].seq = 3;
        assert!(verify_chain("c1", &renumbered, None).is_err());

        let truncated = &c[..4];
        assert!(verify_chain("c1", truncated, None).is_ok());
        assert!(verify_chain("c1", truncated, Some(head)).is_err());

        let mut outcome_flipped = c.clone();
        outcome_flipped[4].outcome = Outcome::Denied;
        assert!(verify_chain("c1", &outcome_flipped, None).is_err());

        assert!(verify_chain("other", &c, None).is_err());
    }
}
