use async_trait::async_trait;
use cleanroom_core::audit::{AuditEntry, ChainHead, Outcome};
use cleanroom_core::entities::{Collaboration, Dataset, Membership, Organisation, Token, User};
use cleanroom_core::ids::{
    ActivationId, AnalysisId, CollaborationId, DatasetId, OrgId, TokenId, UserId,
};
use cleanroom_core::names::{DatasetName, OrgName};
use cleanroom_core::party::{ActivationStatus, AnalysisStatus};

use crate::MetaError;

/// Which replicas count as gone when looking for work left unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orphaned {
    /// Every replica but this handle's: the room has one server at a time (SQLite, under the
    /// data directory's lock), so work of any other replica died with it.
    AllButMine,
    /// Replicas whose last heartbeat is older than this (or that retired), never this
    /// handle's: several servers share the store.
    SilentFor(std::time::Duration),
}

/// An audit entry to append; the store adds sequence number, time and hashes.
#[derive(Debug, Clone)]
pub struct NewAudit {
    pub chain: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// A stored policy version, as its owner wrote it (the service validates it against the schema).
#[derive(Debug, Clone)]
pub struct StoredPolicy {
    pub version: u32,
    pub draft: cleanroom_core::policy::PolicyDraft,
    pub set_by: String,
    pub created_at: String,
}

/// An organisation's privacy ledger for one collaboration, in integer units (epsilon × 10⁹,
/// delta × 10¹⁸).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub org_id: OrgId,
    pub org_name: OrgName,
    pub epsilon_total: u64,
    pub delta_total: u64,
    pub epsilon_per_query: u64,
    pub delta_per_query: u64,
    pub epsilon_spent: u64,
    pub delta_spent: u64,
    pub updated_at: String,
}

/// An explicit grant by an owner: amounts added to its totals, and (optionally) new
/// per-query caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub add_epsilon: u64,
    pub add_delta: u64,
    pub epsilon_per_query: Option<u64>,
    pub delta_per_query: Option<u64>,
}

/// What one analysis debits from one organisation's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub org_id: OrgId,
    pub epsilon: u64,
    pub delta: u64,
}

/// An analysis as stored. `request`, `charges`, `receivers` and `result` are JSON written by
/// the service; the store does not interpret them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisRow {
    pub id: AnalysisId,
    pub collaboration_id: CollaborationId,
    pub org_id: OrgId,
    pub actor: String,
    pub kind: String,
    pub request: String,
    pub fingerprint: String,
    pub receivers: String,
    pub charges: String,
    pub status: AnalysisStatus,
    pub result: Option<String>,
    pub error: Option<String>,
    pub reused_from: Option<AnalysisId>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// An owner's approval of a template version for one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRow {
    pub dataset_id: DatasetId,
    pub template: String,
    pub version: u32,
    pub approved_by: String,
    pub approved_at: String,
}

/// An activation as stored. `request` is JSON written by the service; the store does not
/// interpret it. `delivered` is the number of identifiers delivered (set with `delivered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationRow {
    pub id: ActivationId,
    pub collaboration_id: CollaborationId,
    /// The partner that asked.
    pub org_id: OrgId,
    pub actor: String,
    pub source_dataset_id: DatasetId,
    pub target_dataset_id: DatasetId,
    pub request: String,
    /// The source policy version the request was checked against.
    pub policy_version: u32,
    pub status: ActivationStatus,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub delivered: Option<u64>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// One forward move of an activation's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivationMove<'a> {
    pub from: ActivationStatus,
    pub to: ActivationStatus,
    /// Recorded as the decision's author (approve, reject).
    pub decided_by: Option<&'a str>,
    /// Recorded with a delivery.
    pub delivered: Option<u64>,
    /// Sets `finished_at`.
    pub finished: bool,
}

/// What a token resolves to.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub token: Token,
    pub user: User,
    pub org: Organisation,
}

/// Every read and write of metadata. Each mutating call that takes a [`NewAudit`] appends it in
/// the same transaction as the change: either both happen or neither does.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Flushes and closes the store; nothing may be called after it. The default does nothing.
    async fn close(&self) {}

    // --- parties and tokens ---
    /// Creates the operator organisation, its first admin and token; fails with `Conflict` if
    /// an operator exists already.
    async fn bootstrap_operator(
        &self,
        org: &Organisation,
        admin: &User,
        token: &Token,
        audit: NewAudit,
    ) -> Result<(), MetaError>;
    async fn create_org(
        &self,
        org: &Organisation,
        admin: &User,
        token: &Token,
        audit: NewAudit,
    ) -> Result<(), MetaError>;
    async fn list_orgs(&self) -> Result<Vec<Organisation>, MetaError>;
    async fn find_org(&self, name: &OrgName) -> Result<Option<Organisation>, MetaError>;
    async fn create_user(
        &self,
        user: &User,
        token: &Token,
        audit: NewAudit,
    ) -> Result<(), MetaError>;
    async fn list_users(&self, org: OrgId) -> Result<Vec<User>, MetaError>;
    async fn get_user(&self, id: UserId) -> Result<Option<User>, MetaError>;
    async fn create_token(&self, token: &Token, audit: NewAudit) -> Result<(), MetaError>;
    /// Tokens of all users of `org`, with the user each belongs to.
    async fn list_tokens(&self, org: OrgId) -> Result<Vec<(Token, User)>, MetaError>;
    /// Marks a token revoked; `NotFound` unless it exists, belongs to `org` and is live.
    async fn revoke_token(&self, id: TokenId, org: OrgId, audit: NewAudit)
    -> Result<(), MetaError>;
    /// The token (revoked or not) and who holds it.
    async fn authenticate(&self, id: TokenId) -> Result<Option<Authenticated>, MetaError>;

    // --- collaborations ---
    async fn create_collaboration(
        &self,
        collab: &Collaboration,
        wrapped_key: &[u8],
        creator: &Membership,
        audit: NewAudit,
    ) -> Result<(), MetaError>;
    async fn get_collaboration(
        &self,
        id: CollaborationId,
    ) -> Result<Option<Collaboration>, MetaError>;
    /// Collaborations `org` is in or invited to, with its membership.
    async fn list_collaborations(
        &self,
        org: OrgId,
    ) -> Result<Vec<(Collaboration, Membership)>, MetaError>;
    /// The wrapped collaboration key; `None` once shredded.
    async fn collaboration_key(&self, id: CollaborationId) -> Result<Option<Vec<u8>>, MetaError>;
    async fn get_membership(
        &self,
        collab: CollaborationId,
        org: OrgId,
    ) -> Result<Option<Membership>, MetaError>;
    async fn list_members(&self, collab: CollaborationId) -> Result<Vec<Membership>, MetaError>;
    /// Adds an invitation; `Conflict` if the organisation is already in or invited.
    async fn invite(&self, membership: &Membership, audit: NewAudit) -> Result<(), MetaError>;
    /// Accepts or declines a pending invitation; `Conflict` unless it is pending.
    async fn respond_invitation(
        &self,
        collab: CollaborationId,
        org: OrgId,
        accept: bool,
        audit: NewAudit,
    ) -> Result<(), MetaError>;
    /// Closes an open collaboration and destroys its wrapped keys and every dataset's, in one
    /// transaction. Returns how many dataset keys were destroyed.
    async fn close_collaboration(
        &self,
        collab: CollaborationId,
        audit: NewAudit,
    ) -> Result<u64, MetaError>;

    // --- datasets ---
    async fn create_dataset(
        &self,
        dataset: &Dataset,
        wrapped_key: &[u8],
        audit: NewAudit,
    ) -> Result<(), MetaError>;
    /// Every dataset of the collaboration with this name: at most one per owner, and at most
    /// one that is ready or shredded (the one every member sees).
    async fn find_datasets(
        &self,
        collab: CollaborationId,
        name: &DatasetName,
    ) -> Result<Vec<Dataset>, MetaError>;
    async fn list_datasets(&self, collab: CollaborationId) -> Result<Vec<Dataset>, MetaError>;
    /// The wrapped dataset key; `None` once shredded.
    async fn dataset_key(&self, id: DatasetId) -> Result<Option<Vec<u8>>, MetaError>;
    /// Moves a dataset from pending to uploading; `Conflict` if it is in any other state
    /// (an upload in progress, or already uploaded). This is the lock two racing uploads meet.
    async fn begin_upload(&self, id: DatasetId) -> Result<(), MetaError>;
    /// Marks an uploading dataset ready with its size, with its audit entry.
    async fn finish_upload(
        &self,
        id: DatasetId,
        rows: u64,
        bytes: u64,
        audit: NewAudit,
    ) -> Result<(), MetaError>;
    /// Returns an uploading dataset to pending after a failed upload, with its audit entry;
    /// `Conflict` (and no entry) if it is not uploading any more.
    async fn abort_upload(&self, id: DatasetId, audit: NewAudit) -> Result<(), MetaError>;
    /// Datasets being uploaded by a replica that is gone (`orphaned` says which), whose
    /// upload will never finish.
    async fn uploading_datasets(&self, orphaned: Orphaned) -> Result<Vec<Dataset>, MetaError>;
    /// Every dataset whose file must be kept: ready ones, and those some replica is
    /// uploading (its file may be complete a moment before its metadata).
    async fn recover_uploads(&self) -> Result<Vec<(CollaborationId, DatasetId)>, MetaError>;

    // --- analysis policies ---
    /// Stores a new version of a dataset's policy with its audit entry; returns the version.
    async fn set_policy(
        &self,
        dataset: DatasetId,
        draft: &cleanroom_core::policy::PolicyDraft,
        set_by: &str,
        audit: NewAudit,
    ) -> Result<u32, MetaError>;
    /// The latest policy version of a dataset.
    async fn get_policy(&self, dataset: DatasetId) -> Result<Option<StoredPolicy>, MetaError>;

    // --- privacy ledgers ---
    /// Adds `grant` to the organisation's ledger for the collaboration (creating it; the first
    /// grant must set the per-query caps), with its audit entry. Returns the ledger after.
    async fn grant_budget(
        &self,
        collab: CollaborationId,
        org: OrgId,
        grant: Grant,
        audit: NewAudit,
    ) -> Result<LedgerRow, MetaError>;
    /// Every ledger of a collaboration.
    async fn ledgers(&self, collab: CollaborationId) -> Result<Vec<LedgerRow>, MetaError>;

    // --- analyses ---
    /// Records a running analysis and debits every charge, atomically with the audit entries.
    /// Fails with `BudgetExhausted` (and changes nothing) when a ledger is missing, a charge
    /// exceeds a per-query cap, or a ledger cannot pay: concurrent analyses never overspend.
    async fn begin_analysis(
        &self,
        row: &AnalysisRow,
        charges: &[Charge],
        audits: Vec<NewAudit>,
    ) -> Result<(), MetaError>;
    /// Records the end of a running analysis: released with its result, or failed with its
    /// error (its charges stay debited).
    async fn finish_analysis(
        &self,
        id: AnalysisId,
        result: Result<&str, &str>,
        audit: NewAudit,
    ) -> Result<(), MetaError>;
    /// Records an analysis answered from an earlier release (no charge).
    async fn record_reuse(&self, row: &AnalysisRow, audit: NewAudit) -> Result<(), MetaError>;
    async fn get_analysis(&self, id: AnalysisId) -> Result<Option<AnalysisRow>, MetaError>;
    /// Analyses still marked running by a replica that is gone (`orphaned` says which).
    async fn running_analyses(&self, orphaned: Orphaned) -> Result<Vec<AnalysisRow>, MetaError>;
    async fn list_analyses(&self, collab: CollaborationId) -> Result<Vec<AnalysisRow>, MetaError>;
    /// The latest released analysis with this fingerprint in the collaboration.
    async fn find_release(
        &self,
        collab: CollaborationId,
        fingerprint: &str,
    ) -> Result<Option<AnalysisRow>, MetaError>;

    // --- dataset statistics (internal) ---
    async fn dataset_stats(&self, dataset: DatasetId) -> Result<Option<String>, MetaError>;
    async fn set_dataset_stats(&self, dataset: DatasetId, stats: &str) -> Result<(), MetaError>;

    // --- template approvals ---
    async fn approve_template(&self, row: &ApprovalRow, audit: NewAudit) -> Result<(), MetaError>;
    async fn revoke_template(
        &self,
        dataset: DatasetId,
        template: &str,
        version: u32,
        audit: NewAudit,
    ) -> Result<(), MetaError>;
    async fn template_approvals(
        &self,
        collab: CollaborationId,
    ) -> Result<Vec<ApprovalRow>, MetaError>;

    // --- activations ---
    async fn create_activation(
        &self,
        row: &ActivationRow,
        audit: NewAudit,
    ) -> Result<(), MetaError>;
    async fn get_activation(&self, id: ActivationId) -> Result<Option<ActivationRow>, MetaError>;
    async fn list_activations(
        &self,
        collab: CollaborationId,
    ) -> Result<Vec<ActivationRow>, MetaError>;
    /// Activations whose approval was used but whose delivery was never recorded, claimed by
    /// a replica that is gone (`orphaned` says which), in every collaboration.
    async fn consumed_activations(
        &self,
        orphaned: Orphaned,
    ) -> Result<Vec<ActivationRow>, MetaError>;
    /// Moves an activation from `mv.from` to `mv.to` in one conditional statement, with its
    /// audit entry; `Conflict` (and nothing changes) unless it is in `mv.from`.
    async fn move_activation(
        &self,
        id: ActivationId,
        mv: ActivationMove<'_>,
        audit: NewAudit,
    ) -> Result<(), MetaError>;

    // --- master key rotation ---
    /// The wrapped key of every collaboration that still has one (the open ones).
    async fn collaboration_keys(&self) -> Result<Vec<(CollaborationId, Vec<u8>)>, MetaError>;
    /// Replaces, in one transaction with `audit`, the wrapped key of each listed collaboration
    /// and the value of each listed setting. Fails with a conflict, changing nothing, when a
    /// listed collaboration has no key any more or a listed setting does not exist.
    async fn rewrap_keys(
        &self,
        collaborations: &[(CollaborationId, Vec<u8>)],
        settings: &[(&str, Vec<u8>)],
        audit: NewAudit,
    ) -> Result<(), MetaError>;

    // --- replicas ---
    /// This handle's replica id: one per process. Uploads begun, analyses recorded and
    /// activations claimed through this handle are marked with it.
    fn replica(&self) -> &str;
    /// Records that this replica is alive (now).
    async fn heartbeat(&self) -> Result<(), MetaError>;
    /// Records that this replica stopped: its unfinished work is orphaned at once.
    async fn retire(&self) -> Result<(), MetaError>;
    /// How many other replicas beat within `lease` and have not retired.
    async fn other_live_replicas(&self, lease: std::time::Duration) -> Result<u64, MetaError>;

    // --- settings ---
    async fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, MetaError>;
    /// Stores `value` unless the setting exists; returns the value now stored.
    async fn init_setting(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, MetaError>;

    // --- audit ---
    async fn append_audit(&self, audit: NewAudit) -> Result<AuditEntry, MetaError>;
    /// Entries of `chain` with `seq > after`, in order, at most `limit`.
    async fn audit_entries(
        &self,
        chain: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, MetaError>;
    async fn audit_head(&self, chain: &str) -> Result<Option<ChainHead>, MetaError>;
    /// Entries after `after` (at most `limit`) and the chain's head, read together in one
    /// snapshot: no entry returned can be newer than the head returned with it.
    async fn audit_page(
        &self,
        chain: &str,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, Option<ChainHead>), MetaError>;
}
