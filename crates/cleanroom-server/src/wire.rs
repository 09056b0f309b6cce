//! Wire types of the `/v1` API. Domain types do not derive `Serialize`; they are converted
//! here, by hand, so the API changes only when this file does. The CLI uses these same types.

use cleanroom_core::audit::{AuditEntry, ChainHead, Outcome};
use cleanroom_core::entities::{Collaboration, Dataset, Membership, Organisation, Token, User};
use cleanroom_core::party::{
    Abilities, ActivationStatus, AnalysisStatus, CollaborationStatus, DatasetStatus, MemberStatus,
    UserRole,
};
use cleanroom_core::schema::{ColumnRole, ColumnSpec, ColumnType, DatasetSchema};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A string the API document lists the values of, taken from the domain's own list of them
/// (`ALL`), so the document cannot drift from what the server sends. The Rust field stays a
/// `String` (the CLI prints it as it comes); generated clients and the console get an enum.
macro_rules! listed_strings {
    ($($(#[$doc:meta])* $marker:ident = $values:expr;)+) => {
        $(
            $(#[$doc])*
            pub struct $marker;

            impl utoipa::PartialSchema for $marker {
                fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::schema::Type::String)
                        .enum_values(Some($values))
                        .into()
                }
            }

            impl ToSchema for $marker {}
        )+
    };
}

listed_strings! {
    /// What a user may do within its organisation.
    UserRoleName = UserRole::ALL.iter().map(|v| v.as_str());
    /// One thing a member may do in a collaboration.
    AbilityName = Abilities::all().iter().map(|v| v.as_str());
    /// Where a collaboration stands.
    CollaborationStatusName = CollaborationStatus::ALL.iter().map(|v| v.as_str());
    /// Where a member organisation stands in a collaboration.
    MemberStatusName = MemberStatus::ALL.iter().map(|v| v.as_str());
    /// Where a dataset stands.
    DatasetStatusName = DatasetStatus::ALL.iter().map(|v| v.as_str());
    /// A column's type.
    ColumnTypeName = ColumnType::ALL.iter().map(|v| v.as_str());
    /// A column's role.
    ColumnRoleName = ColumnRole::ALL.iter().map(|v| v.as_str());
}

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

/// The server is ready: its metadata store answers and its data files can be written (a 503
/// `not_ready` problem otherwise).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    pub version: String,
    #[serde(default)]
    pub checks: HealthChecks,
}

/// Each readiness check: `ok` or `unavailable`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct HealthChecks {
    pub metadata: String,
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub user: String,
    pub user_id: String,
    #[schema(value_type = UserRoleName)]
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
    #[schema(value_type = UserRoleName)]
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
    #[schema(value_type = Option<UserRoleName>)]
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

/// A new token: the same fields as an item of `GET /v1/tokens`, plus the secret, shown only
/// this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub id: String,
    pub user: String,
    pub label: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    pub token: String,
}

impl CreatedToken {
    pub fn new(listed: TokenOut, secret: String) -> Self {
        let TokenOut {
            id,
            user,
            label,
            created_at,
            revoked_at,
            ..
        } = listed;
        CreatedToken {
            id,
            user,
            label,
            created_at,
            revoked_at,
            token: secret,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenOut {
    pub id: String,
    pub user: String,
    pub label: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// When it stops working on its own (console sessions); absent for API tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// For a console session, the API token it was started with: revoking that ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl From<&(Token, User)> for TokenOut {
    fn from((t, u): &(Token, User)) -> Self {
        TokenOut {
            id: t.id.to_string(),
            user: u.name.to_string(),
            label: t.label.clone(),
            created_at: t.created_at.clone(),
            revoked_at: t.revoked_at.clone(),
            expires_at: t.expires_at.clone(),
            parent: t.parent_id.map(|p| p.to_string()),
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
    #[schema(value_type = Option<Vec<AbilityName>>)]
    pub abilities: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CollaborationOut {
    pub id: String,
    pub name: String,
    pub description: String,
    /// `open` or `closed`.
    #[schema(value_type = CollaborationStatusName)]
    pub status: String,
    pub created_at: String,
    pub closed_at: Option<String>,
    /// Your organisation's standing: `active` or `invited`.
    #[schema(value_type = MemberStatusName)]
    pub your_status: String,
    #[schema(value_type = Vec<AbilityName>)]
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
    #[schema(value_type = Vec<AbilityName>)]
    pub abilities: Vec<String>,
    /// `active`, `invited` or `declined`.
    #[schema(value_type = MemberStatusName)]
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
    #[schema(value_type = Vec<AbilityName>)]
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
    #[schema(value_type = ColumnTypeName)]
    pub r#type: String,
    #[schema(value_type = ColumnRoleName)]
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
    #[schema(value_type = DatasetStatusName)]
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

// ---------------------------------------------------------------------------- analyses

/// A metric rule of a policy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricRuleWire {
    pub column: String,
    /// `count`, `count_distinct`, `sum`, `avg`, `min`, `max` (default: the first four).
    #[serde(default)]
    pub aggregates: Vec<String>,
    /// Values are clamped into `[lower, upper]` before aggregating.
    pub lower: f64,
    pub upper: f64,
    /// Decimal digits kept in sums (default 0 for int64, 2 for float64).
    #[serde(default)]
    pub precision: Option<u8>,
}

/// A data owner's analysis policy for one dataset. Omitted fields take their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyWire {
    /// Identifier columns usable only in equality joins, never output.
    #[serde(default)]
    pub join_keys: Vec<String>,
    /// Columns that may be grouped and filtered on.
    #[serde(default)]
    pub dimensions: Vec<String>,
    #[serde(default)]
    pub metrics: Vec<MetricRuleWire>,
    /// Distinct people of this dataset every output row must stand for (default 50).
    #[serde(default)]
    pub min_group_size: Option<u32>,
    /// Rows one person may contribute (default 1).
    #[serde(default)]
    pub max_rows_per_unit: Option<u32>,
    /// Rows kept per join-key value (default 1).
    #[serde(default)]
    pub max_rows_per_key: Option<u32>,
    /// Noise and budget charges on results touching this dataset (default true).
    #[serde(default)]
    pub differential_privacy: Option<bool>,
    /// Whether analysts may send their own SQL (default true); templates need approval anyway.
    #[serde(default)]
    pub allow_sql: Option<bool>,
    /// Organisations besides the owner that may analyse the dataset.
    #[serde(default)]
    pub analysts: Vec<String>,
    /// Organisations besides the owner that may receive results touching it.
    #[serde(default)]
    pub receivers: Vec<String>,
    /// Who may receive matched segments as their own identifiers (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<ActivationRuleWire>,
}

/// An owner's activation (list) rule: partners that may receive the matched segment of the
/// dataset as their own identifiers, once per approval.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivationRuleWire {
    /// Organisations that may ask for segments (at least one; never the owner).
    pub partners: Vec<String>,
    /// Distinct people of this dataset a segment must stand for (default 1000, at least
    /// `min_group_size`).
    #[serde(default)]
    pub min_segment_size: Option<u32>,
    /// Dimensions of the policy a segment may be narrowed by.
    #[serde(default)]
    pub dimensions: Vec<String>,
}

impl PolicyWire {
    pub fn to_draft(&self) -> cleanroom_core::policy::PolicyDraft {
        cleanroom_core::policy::PolicyDraft {
            join_keys: self.join_keys.clone(),
            dimensions: self.dimensions.clone(),
            metrics: self
                .metrics
                .iter()
                .map(|m| cleanroom_core::policy::MetricDraft {
                    column: m.column.clone(),
                    aggregates: m.aggregates.clone(),
                    lower: m.lower,
                    upper: m.upper,
                    precision: m.precision,
                })
                .collect(),
            min_group_size: self.min_group_size,
            max_rows_per_unit: self.max_rows_per_unit,
            max_rows_per_key: self.max_rows_per_key,
            differential_privacy: self.differential_privacy,
            allow_sql: self.allow_sql,
            analysts: self.analysts.clone(),
            receivers: self.receivers.clone(),
            activation: self
                .activation
                .as_ref()
                .map(|a| cleanroom_core::policy::ActivationDraft {
                    partners: a.partners.clone(),
                    min_segment_size: a.min_segment_size,
                    dimensions: a.dimensions.clone(),
                }),
        }
    }

    pub fn from_policy(p: &cleanroom_core::policy::AnalysisPolicy) -> Self {
        let d = p.to_draft();
        PolicyWire {
            join_keys: d.join_keys,
            dimensions: d.dimensions,
            metrics: d
                .metrics
                .into_iter()
                .map(|m| MetricRuleWire {
                    column: m.column,
                    aggregates: m.aggregates,
                    lower: m.lower,
                    upper: m.upper,
                    precision: m.precision,
                })
                .collect(),
            min_group_size: d.min_group_size,
            max_rows_per_unit: d.max_rows_per_unit,
            max_rows_per_key: d.max_rows_per_key,
            differential_privacy: d.differential_privacy,
            allow_sql: d.allow_sql,
            analysts: d.analysts,
            receivers: d.receivers,
            activation: d.activation.map(|a| ActivationRuleWire {
                partners: a.partners,
                min_segment_size: a.min_segment_size,
                dimensions: a.dimensions,
            }),
        }
    }
}

/// A dataset's current policy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyOut {
    pub dataset: String,
    pub owner: String,
    pub version: u32,
    pub set_by: String,
    pub created_at: String,
    pub policy: PolicyWire,
}

impl From<&cleanroom_service::PolicyView> for PolicyOut {
    fn from(v: &cleanroom_service::PolicyView) -> Self {
        PolicyOut {
            dataset: v.dataset.to_string(),
            owner: v.owner.to_string(),
            version: v.version,
            set_by: v.set_by.clone(),
            created_at: v.created_at.clone(),
            policy: PolicyWire::from_policy(&v.policy),
        }
    }
}

/// An explicit grant of privacy budget by the caller's organisation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantIn {
    /// Epsilon added to the total.
    pub epsilon: f64,
    /// Delta added to the total (default 1e-6 on the first grant, 0 afterwards).
    #[serde(default)]
    pub delta: Option<f64>,
    /// Most epsilon one analysis may spend (required default: min(total, 1) on the first grant).
    #[serde(default)]
    pub epsilon_per_query: Option<f64>,
    #[serde(default)]
    pub delta_per_query: Option<f64>,
}

/// An organisation's privacy ledger in a collaboration.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BudgetOut {
    pub org: String,
    pub epsilon_total: f64,
    pub delta_total: f64,
    pub epsilon_per_query: f64,
    pub delta_per_query: f64,
    pub epsilon_spent: f64,
    pub delta_spent: f64,
    pub epsilon_left: f64,
    pub delta_left: f64,
    pub updated_at: String,
}

impl From<&cleanroom_service::BudgetView> for BudgetOut {
    fn from(b: &cleanroom_service::BudgetView) -> Self {
        BudgetOut {
            org: b.org.to_string(),
            epsilon_total: b.epsilon_total,
            delta_total: b.delta_total,
            epsilon_per_query: b.epsilon_per_query,
            delta_per_query: b.delta_per_query,
            epsilon_spent: b.epsilon_spent,
            delta_spent: b.delta_spent,
            epsilon_left: b.epsilon_left,
            delta_left: b.delta_left,
            updated_at: b.updated_at.clone(),
        }
    }
}

/// A SQL analysis.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryIn {
    pub sql: String,
    /// Epsilon to spend (default: the smallest per-query cap of the owners touched).
    #[serde(default)]
    pub epsilon: Option<f64>,
    #[serde(default)]
    pub delta: Option<f64>,
    /// Organisations to deliver the result to (default: yours).
    #[serde(default)]
    pub receivers: Vec<String>,
    /// Check and price only: nothing runs, nothing is spent.
    #[serde(default)]
    pub dry_run: bool,
}

/// A template run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRunIn {
    /// Default: the latest version.
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub epsilon: Option<f64>,
    #[serde(default)]
    pub delta: Option<f64>,
    #[serde(default)]
    pub receivers: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChargeOut {
    pub org: String,
    pub epsilon: f64,
    pub delta: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResultColumnOut {
    pub name: String,
    /// `group`, `count`, `sum`, `average`, `extreme` or `value`.
    pub kind: String,
    /// Standard deviation of the noise in this column, when noisy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_sd: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResultTableOut {
    pub name: String,
    pub columns: Vec<ResultColumnOut>,
    /// One array per group; values are strings, numbers, booleans or null.
    #[schema(value_type = Vec<Vec<Object>>)]
    pub rows: Vec<Vec<serde_json::Value>>,
    /// How many groups the table leaves out (below the owners' thresholds or not privately
    /// selected), when counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_out: Option<LeftOutOut>,
}

/// How many groups a result table leaves out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeftOutOut {
    /// The number of groups left out: a noisy estimate (never below zero) when `noise_sd` is
    /// set, otherwise exact but computed from released values only.
    pub groups: i64,
    /// Standard deviation of the noise in `groups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_sd: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResultOut {
    pub tables: Vec<ResultTableOut>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanOut {
    pub datasets: Vec<String>,
    pub epsilon: Option<f64>,
    pub delta: Option<f64>,
    pub notes: Vec<String>,
    /// Whether every owner's budget can pay for the analysis now.
    #[serde(default = "yes")]
    pub affordable: bool,
    /// Why not: one sentence per owner whose budget cannot pay (naming epsilon or delta).
    #[serde(default)]
    pub budget_problems: Vec<String>,
}

fn yes() -> bool {
    true
}

/// An analysis. `result` is present only for receivers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AnalysisOut {
    pub id: String,
    /// `sql` or `template`.
    pub kind: String,
    pub request: String,
    pub requested_by: String,
    pub status: AnalysisStatusOut,
    pub receivers: Vec<String>,
    pub charges: Vec<ChargeOut>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultOut>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanOut>,
}

impl From<&cleanroom_service::AnalysisView> for AnalysisOut {
    fn from(a: &cleanroom_service::AnalysisView) -> Self {
        AnalysisOut {
            id: a.id.clone(),
            kind: a.kind.clone(),
            request: a.request.clone(),
            requested_by: a.requested_by.clone(),
            status: a.status.into(),
            receivers: a.receivers.clone(),
            charges: a
                .charges
                .iter()
                .map(|c| ChargeOut {
                    org: c.org.to_string(),
                    epsilon: c.epsilon,
                    delta: c.delta,
                })
                .collect(),
            result: a.result.as_ref().map(|r| ResultOut {
                tables: r
                    .tables
                    .iter()
                    .map(|t| ResultTableOut {
                        name: t.name.clone(),
                        columns: t
                            .columns
                            .iter()
                            .map(|c| ResultColumnOut {
                                name: c.name.clone(),
                                kind: c.kind.clone(),
                                noise_sd: c.noise_sd,
                            })
                            .collect(),
                        rows: t
                            .rows
                            .iter()
                            .map(|row| {
                                row.iter()
                                    .map(cleanroom_service::results::cell_json)
                                    .collect()
                            })
                            .collect(),
                        left_out: t.left_out.map(|l| LeftOutOut {
                            groups: l.groups,
                            noise_sd: l.noise_sd,
                        }),
                    })
                    .collect(),
                notes: r.notes.clone(),
            }),
            error: a.error.clone(),
            reused_from: a.reused_from.clone(),
            created_at: a.created_at.clone(),
            finished_at: a.finished_at.clone(),
            plan: a.plan.as_ref().map(|p| PlanOut {
                datasets: p.datasets.clone(),
                epsilon: p.epsilon,
                delta: p.delta,
                notes: p.notes.clone(),
                affordable: p.affordable,
                budget_problems: p.budget_problems.clone(),
            }),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateParamOut {
    pub name: String,
    pub required: bool,
    pub help: String,
}

/// A ready-made analysis.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateOut {
    pub name: String,
    pub version: u32,
    pub title: String,
    pub description: String,
    pub params: Vec<TemplateParamOut>,
}

impl From<&cleanroom_service::TemplateInfo> for TemplateOut {
    fn from(t: &cleanroom_service::TemplateInfo) -> Self {
        TemplateOut {
            name: t.name.to_owned(),
            version: t.version,
            title: t.title.to_owned(),
            description: t.description.to_owned(),
            params: t
                .params
                .iter()
                .map(|p| TemplateParamOut {
                    name: p.name.to_owned(),
                    required: p.required,
                    help: p.help.to_owned(),
                })
                .collect(),
        }
    }
}

/// An owner approves a template version on one of its datasets.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalIn {
    pub dataset: String,
    /// Default: the latest version.
    #[serde(default)]
    pub version: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApprovalOut {
    pub dataset: String,
    pub owner: String,
    pub template: String,
    pub version: u32,
    pub approved_by: String,
    pub approved_at: String,
}

impl From<&cleanroom_service::ApprovalView> for ApprovalOut {
    fn from(a: &cleanroom_service::ApprovalView) -> Self {
        ApprovalOut {
            dataset: a.dataset.to_string(),
            owner: a.owner.to_string(),
            template: a.template.clone(),
            version: a.version,
            approved_by: a.approved_by.clone(),
            approved_at: a.approved_at.clone(),
        }
    }
}

// ---------------------------------------------------------------------------- activations

/// A partner asks for the matched segment of an owner's dataset as its own identifiers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivationIn {
    /// The owner's dataset (its policy must list you as an activation partner).
    pub source: String,
    /// Your own dataset, whose identifiers you receive.
    pub target: String,
    /// `column` (same name on both sides) or `source_column:target_column`: a join key of the
    /// source's policy and an identifier column of your dataset.
    pub key: String,
    /// `dimension → value` conditions on the source, on dimensions the rule allows.
    #[serde(default)]
    pub filter: std::collections::BTreeMap<String, String>,
    /// The identifier column of your dataset whose values are delivered.
    pub output: String,
}

/// An activation, as its partner and the source's owner see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActivationOut {
    pub id: String,
    pub partner: String,
    pub requested_by: String,
    pub source: String,
    pub source_owner: String,
    pub target: String,
    pub source_key: String,
    pub target_key: String,
    pub filter: std::collections::BTreeMap<String, String>,
    pub output: String,
    /// The source policy version the request was checked against.
    pub policy_version: u32,
    pub status: ActivationStatusOut,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// Identifiers delivered (your own), once delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl From<&cleanroom_service::ActivationView> for ActivationOut {
    fn from(a: &cleanroom_service::ActivationView) -> Self {
        ActivationOut {
            id: a.id.clone(),
            partner: a.partner.to_string(),
            requested_by: a.requested_by.clone(),
            source: a.source.to_string(),
            source_owner: a.source_owner.to_string(),
            target: a.target.to_string(),
            source_key: a.source_key.clone(),
            target_key: a.target_key.clone(),
            filter: a.filter.clone(),
            output: a.output.clone(),
            policy_version: a.policy_version,
            status: a.status.into(),
            decided_by: a.decided_by.clone(),
            decided_at: a.decided_at.clone(),
            delivered: a.delivered,
            created_at: a.created_at.clone(),
            finished_at: a.finished_at.clone(),
        }
    }
}

/// Where an analysis stands: `dry_run` (priced only, never stored), `running` (charged),
/// `released` or `failed` (the charge stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisStatusOut {
    DryRun,
    Running,
    Released,
    Failed,
}

impl AnalysisStatusOut {
    pub fn as_str(self) -> &'static str {
        AnalysisStatus::from(self).as_str()
    }
}

impl From<AnalysisStatusOut> for AnalysisStatus {
    fn from(s: AnalysisStatusOut) -> Self {
        match s {
            AnalysisStatusOut::DryRun => AnalysisStatus::DryRun,
            AnalysisStatusOut::Running => AnalysisStatus::Running,
            AnalysisStatusOut::Released => AnalysisStatus::Released,
            AnalysisStatusOut::Failed => AnalysisStatus::Failed,
        }
    }
}

impl std::fmt::Display for AnalysisStatusOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for AnalysisStatusOut {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<AnalysisStatus> for AnalysisStatusOut {
    fn from(s: AnalysisStatus) -> Self {
        match s {
            AnalysisStatus::DryRun => AnalysisStatusOut::DryRun,
            AnalysisStatus::Running => AnalysisStatusOut::Running,
            AnalysisStatus::Released => AnalysisStatusOut::Released,
            AnalysisStatus::Failed => AnalysisStatusOut::Failed,
        }
    }
}

/// Where an activation stands: `pending` (waiting for the owner), `approved` or `rejected`,
/// `consumed` (the one download is under way), then `delivered`, `too_small` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActivationStatusOut {
    Pending,
    Approved,
    Rejected,
    Consumed,
    Delivered,
    TooSmall,
    Failed,
}

impl ActivationStatusOut {
    pub fn as_str(self) -> &'static str {
        ActivationStatus::from(self).as_str()
    }
}

impl From<ActivationStatusOut> for ActivationStatus {
    fn from(s: ActivationStatusOut) -> Self {
        match s {
            ActivationStatusOut::Pending => ActivationStatus::Pending,
            ActivationStatusOut::Approved => ActivationStatus::Approved,
            ActivationStatusOut::Rejected => ActivationStatus::Rejected,
            ActivationStatusOut::Consumed => ActivationStatus::Consumed,
            ActivationStatusOut::Delivered => ActivationStatus::Delivered,
            ActivationStatusOut::TooSmall => ActivationStatus::TooSmall,
            ActivationStatusOut::Failed => ActivationStatus::Failed,
        }
    }
}

impl std::fmt::Display for ActivationStatusOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ActivationStatusOut {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<ActivationStatus> for ActivationStatusOut {
    fn from(s: ActivationStatus) -> Self {
        match s {
            ActivationStatus::Pending => ActivationStatusOut::Pending,
            ActivationStatus::Approved => ActivationStatusOut::Approved,
            ActivationStatus::Rejected => ActivationStatusOut::Rejected,
            ActivationStatus::Consumed => ActivationStatusOut::Consumed,
            ActivationStatus::Delivered => ActivationStatusOut::Delivered,
            ActivationStatus::TooSmall => ActivationStatusOut::TooSmall,
            ActivationStatus::Failed => ActivationStatusOut::Failed,
        }
    }
}

#[cfg(test)]
mod status_wire {
    use super::*;

    /// The wire spells every status as the core does (the CLI and stored rows use those words).
    #[test]
    fn statuses_serialise_as_their_core_names() {
        for s in [
            AnalysisStatus::DryRun,
            AnalysisStatus::Running,
            AnalysisStatus::Released,
            AnalysisStatus::Failed,
        ] {
            let json = serde_json::to_string(&AnalysisStatusOut::from(s)).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        for name in [
            "pending",
            "approved",
            "rejected",
            "consumed",
            "delivered",
            "too_small",
            "failed",
        ] {
            let s = ActivationStatus::parse(name).unwrap();
            let json = serde_json::to_string(&ActivationStatusOut::from(s)).unwrap();
            assert_eq!(json, format!("\"{name}\""));
        }
    }
}
