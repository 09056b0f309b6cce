//! The things the clean room keeps track of. Built by the metadata store from its rows and by
//! the service from validated input; fields are public because every invariant is carried by
//! the field types themselves.

use crate::ids::{CollaborationId, DatasetId, OrgId, TokenId, UserId};
use crate::names::{CollaborationName, DatasetName, OrgName, UserName};
use crate::party::{Abilities, CollaborationStatus, DatasetStatus, MemberStatus, UserRole};
use crate::schema::DatasetSchema;

/// A party. The operator organisation runs the server; it has no special access to data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organisation {
    pub id: OrgId,
    pub name: OrgName,
    pub is_operator: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub org_id: OrgId,
    pub name: UserName,
    pub role: UserRole,
    pub created_at: String,
}

/// A stored API token: only a hash of its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: TokenId,
    pub user_id: UserId,
    pub label: String,
    pub secret_hash: [u8; 32],
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// When the token stops working (RFC 3339, UTC); `None` for API tokens, which live until
    /// revoked. Console sessions are tokens with an expiry.
    pub expires_at: Option<String>,
    /// For a console session, the API token it was started with: revoking that token ends
    /// the session too. `None` for API tokens.
    pub parent_id: Option<TokenId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collaboration {
    pub id: CollaborationId,
    pub name: CollaborationName,
    pub description: String,
    pub creator_org_id: OrgId,
    pub status: CollaborationStatus,
    pub created_at: String,
    pub closed_at: Option<String>,
}

/// An organisation's place in a collaboration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub collaboration_id: CollaborationId,
    pub org_id: OrgId,
    pub org_name: OrgName,
    pub abilities: Abilities,
    pub status: MemberStatus,
    pub invited_at: String,
    pub joined_at: Option<String>,
}

impl Membership {
    pub fn is_active(&self) -> bool {
        self.status == MemberStatus::Active
    }
}

/// A dataset's metadata. Its rows are never part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub id: DatasetId,
    pub collaboration_id: CollaborationId,
    pub owner_org_id: OrgId,
    pub owner_org_name: OrgName,
    pub name: DatasetName,
    pub schema: DatasetSchema,
    pub status: DatasetStatus,
    pub row_count: Option<u64>,
    pub byte_size: Option<u64>,
    pub created_at: String,
    pub ready_at: Option<String>,
}
