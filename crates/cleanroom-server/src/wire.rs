//! Wire types of the `/v1` API. Domain types do not derive `Serialize`; they are converted
//! here, by hand, so the API changes only when this file does. The CLI uses these same types.

use cleanroom_core::audit::{AuditEntry, ChainHead, Outcome};
use cleanroom_core::entities::{Collaboration, Dataset, Membership, Organisation, Token, User};
use cleanroom_core::party::Abilities;
use cleanroom_core::schema::{ColumnSpec, DatasetSchema};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An error (RFC 9457 problem details). `code` is stable; `detail` says what to do.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    pub r#type: String,
    pub title: String,
    pub status: u16,
    /// Stable machine-readable error code, e.g. `invalid_data`, `forbidden`.
    pub code: String,
    pub detail: String,
    /// For invalid uploads: the 1-based line of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// For invalid uploads: the 1-based column number and name; for refused analyses: the
    /// column the rule concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// For refused analyses: the stable code of the rule that refused it (`join_not_on_key`,
    /// `identifier_not_allowed`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub user: String,
    pub user_id: String,
    pub role: String,
    pub org: String,
    pub org_id: String,
    pub operator: bool,
    pub token_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgOut {
    pub id: String,
    pub name: String,
    pub operator: bool,
    pub created_at: String,
}

impl From<&Organisation> for OrgOut {
    fn from(o: &Organisation) -> Self {
        OrgOut {
            id: o.id.to_string(),
            name: o.name.to_string(),
            operator: o.is_operator,
            created_at: o.created_at.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserOut {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at: String,
}

impl From<&User> for UserOut {
    fn from(u: &User) -> Self {
        UserOut {
            id: u.id.to_string(),
            name: u.name.to_string(),
            role: u.role.as_str().to_owned(),
            created_at: u.created_at.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateOrgRequest {
    /// Short name: lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// Name of the organisation's first admin user.
    pub admin: String,
}

/// A new organisation with its admin's token. The token is shown only this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedOrg {
    pub org: OrgOut,
    pub admin: UserOut,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateUserRequest {
    pub name: String,
    /// `admin` or `member` (default).
    #[serde(default)]
    pub role: Option<String>,
}

/// A new user with its first token, shown only this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedUser {
    pub user: UserOut,
    pub token: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateTokenRequest {
    #[serde(default)]
    pub label: String,
}

/// A new token, shown only this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub id: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenOut {
    pub id: String,
    pub user: String,
    pub label: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<&(Token, User)> for TokenOut {
    fn from((t, u): &(Token, User)) -> Self {
        TokenOut {
            id: t.id.to_string(),
            user: u.name.to_string(),
            label: t.label.clone(),
            created_at: t.created_at.clone(),
            revoked_at: t.revoked_at.clone(),
        }
    }
}

fn abilities_out(a: Abilities) -> Vec<String> {
    a.iter().map(|x| x.as_str().to_owned()).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateCollaborationRequest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Abilities of the creating organisation; default all of
    /// `contribute`, `analyse`, `receive`.
    #[serde(default)]
    pub abilities: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CollaborationOut {
    pub id: String,
    pub name: String,
    pub description: String,
    /// `open` or `closed`.
    pub status: String,
    pub created_at: String,
    pub closed_at: Option<String>,
    /// Your organisation's standing: `active` or `invited`.
    pub your_status: String,
    pub your_abilities: Vec<String>,
}

impl CollaborationOut {
    pub fn new(c: &Collaboration, you: &Membership) -> Self {
        CollaborationOut {
            id: c.id.to_string(),
            name: c.name.to_string(),
            description: c.description.clone(),
            status: c.status.as_str().to_owned(),
            created_at: c.created_at.clone(),
            closed_at: c.closed_at.clone(),
            your_status: you.status.as_str().to_owned(),
            your_abilities: abilities_out(you.abilities),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberOut {
    pub org: String,
    pub abilities: Vec<String>,
    /// `active`, `invited` or `declined`.
    pub status: String,
    pub invited_at: String,
    pub joined_at: Option<String>,
}

impl From<&Membership> for MemberOut {
    fn from(m: &Membership) -> Self {
        MemberOut {
            org: m.org_name.to_string(),
            abilities: abilities_out(m.abilities),
            status: m.status.as_str().to_owned(),
            invited_at: m.invited_at.clone(),
            joined_at: m.joined_at.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CollaborationDetail {
    pub collaboration: CollaborationOut,
    pub creator: String,
    pub members: Vec<MemberOut>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InviteRequest {
    /// The invited organisation's name.
    pub org: String,
    /// Any of `contribute`, `analyse`, `receive`.
    pub abilities: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Closed {
    /// How many dataset keys were destroyed (with the collaboration key).
    pub destroyed_dataset_keys: u64,
}

/// A declared column: name, type (`string`, `int64`, `float64`, `bool`, `date`) and role
/// (`identifier`, `dimension`, `metric`, `privacy_unit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ColumnOut {
    pub name: String,
    pub r#type: String,
    pub role: String,
}

impl From<&ColumnSpec> for ColumnOut {
    fn from(c: &ColumnSpec) -> Self {
        ColumnOut {
            name: c.name.to_string(),
            r#type: c.ty.as_str().to_owned(),
            role: c.role.as_str().to_owned(),
        }
    }
}

impl ColumnOut {
    pub fn to_spec(&self) -> Result<ColumnSpec, cleanroom_core::CoreError> {
        ColumnSpec::new(&self.name, &self.r#type, &self.role)
    }
}

/// Parses wire columns into a validated schema.
pub fn schema_from(columns: &[ColumnOut]) -> Result<DatasetSchema, cleanroom_core::CoreError> {
    DatasetSchema::new(
        columns
            .iter()
            .map(ColumnOut::to_spec)
            .collect::<Result<_, _>>()?,
    )
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateDatasetRequest {
    pub name: String,
    pub columns: Vec<ColumnOut>,
}

/// A dataset's metadata. No endpoint returns a dataset's rows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DatasetOut {
    pub id: String,
    pub name: String,
    pub owner: String,
    /// `pending`, `uploading`, `ready` or `shredded`.
    pub status: String,
    pub columns: Vec<ColumnOut>,
    pub row_count: Option<u64>,
    /// Size of the encrypted file.
    pub encrypted_bytes: Option<u64>,
    pub created_at: String,
    pub ready_at: Option<String>,
}

impl From<&Dataset> for DatasetOut {
    fn from(d: &Dataset) -> Self {
        DatasetOut {
            id: d.id.to_string(),
            name: d.name.to_string(),
            owner: d.owner_org_name.to_string(),
            status: d.status.as_str().to_owned(),
            columns: d.schema.columns().iter().map(ColumnOut::from).collect(),
            row_count: d.row_count,
            encrypted_bytes: d.byte_size,
            created_at: d.created_at.clone(),
            ready_at: d.ready_at.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryOut {
    pub chain: String,
    pub seq: u64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// `allowed`, `denied` or `failed`.
    pub outcome: String,
    pub detail: String,
    /// Hex SHA-256 of the previous entry.
    pub prev_hash: String,
    /// Hex SHA-256 of this entry.
    pub hash: String,
}

impl From<&AuditEntry> for AuditEntryOut {
    fn from(e: &AuditEntry) -> Self {
        AuditEntryOut {
            chain: e.chain.clone(),
            seq: e.seq,
            at: e.at.clone(),
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            outcome: e.outcome.as_str().to_owned(),
            detail: e.detail.clone(),
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
        }
    }
}

fn hash_from_hex(s: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| format!("{s:?} is not a 64-digit hex hash"))?;
    Ok(out)
}

impl AuditEntryOut {
    /// Back to the domain form, to verify the chain on the client side.
    pub fn to_entry(&self) -> Result<AuditEntry, String> {
        Ok(AuditEntry {
            chain: self.chain.clone(),
            seq: self.seq,
            at: self.at.clone(),
            actor: self.actor.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            outcome: Outcome::parse(&self.outcome)
                .ok_or_else(|| format!("unknown outcome {:?}", self.outcome))?,
            detail: self.detail.clone(),
            prev_hash: hash_from_hex(&self.prev_hash)?,
            hash: hash_from_hex(&self.hash)?,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeadOut {
    pub seq: u64,
    pub hash: String,
}

impl From<&ChainHead> for HeadOut {
    fn from(h: &ChainHead) -> Self {
        HeadOut {
            seq: h.seq,
            hash: hex::encode(h.hash),
        }
    }
}

impl HeadOut {
    pub fn to_head(&self) -> Result<ChainHead, String> {
        Ok(ChainHead {
            seq: self.seq,
            hash: hash_from_hex(&self.hash)?,
        })
    }
}

/// A page of an audit chain, with the head the server has recorded for the whole chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub chain: String,
    pub entries: Vec<AuditEntryOut>,
    pub head: Option<HeadOut>,
}
