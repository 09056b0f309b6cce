use async_trait::async_trait;
use cleanroom_core::audit::{AuditEntry, ChainHead, Outcome};
use cleanroom_core::entities::{Collaboration, Dataset, Membership, Organisation, Token, User};
use cleanroom_core::ids::{CollaborationId, DatasetId, OrgId, TokenId, UserId};
use cleanroom_core::names::{DatasetName, OrgName};

use crate::MetaError;

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
    async fn find_dataset(
        &self,
        collab: CollaborationId,
        name: &DatasetName,
    ) -> Result<Option<Dataset>, MetaError>;
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
    /// Returns an uploading dataset to pending after a failed upload, with its audit entry.
    async fn abort_upload(&self, id: DatasetId, audit: NewAudit) -> Result<(), MetaError>;
    /// Datasets whose upload was under way (after a restart: interrupted by the crash).
    async fn uploading_datasets(&self) -> Result<Vec<Dataset>, MetaError>;
    /// After a restart: uploads that were in progress go back to pending. Returns every
    /// dataset whose file must exist (ready ones).
    async fn recover_uploads(&self) -> Result<Vec<(CollaborationId, DatasetId)>, MetaError>;

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
}
