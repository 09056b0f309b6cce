//! The stored form of rows, the same in every backend: which columns each query selects and
//! how a row of them becomes a domain value. A backend's queries differ (placeholders,
//! types, locking); what they return is read here, once.
//!
//! Identifiers are stored as text and parsed back through their domain parsers, so a row that
//! does not parse is reported as corrupt rather than trusted.

use cleanroom_core::audit::{AuditEntry, ChainHead, Outcome};
use cleanroom_core::entities::{Collaboration, Dataset, Membership, Organisation, Token, User};
use cleanroom_core::ids::{
    ActivationId, AnalysisId, CollaborationId, DatasetId, OrgId, TokenId, UserId,
};
use cleanroom_core::names::{CollaborationName, DatasetName, OrgName, UserName};
use cleanroom_core::party::{
    Abilities, ActivationStatus, AnalysisStatus, CollaborationStatus, DatasetStatus, MemberStatus,
    UserRole,
};
use cleanroom_core::schema::DatasetSchema;
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::MetaError;
use crate::store::{ActivationRow, AnalysisRow, ApprovalRow, LedgerRow};

/// The current UTC time as RFC 3339 with milliseconds, the form every stored time takes (so
/// times sort as text in every backend).
pub fn now() -> String {
    at(time::OffsetDateTime::now_utc())
}

/// The stored form of the moment `ahead` after now (an expiry).
pub fn after_now(ahead: std::time::Duration) -> String {
    let ahead = time::Duration::try_from(ahead).unwrap_or(time::Duration::MAX);
    at(time::OffsetDateTime::now_utc()
        .checked_add(ahead)
        .unwrap_or(time::OffsetDateTime::now_utc()))
}

/// The stored form of the moment `ago` before now (for comparisons with stored times).
pub(crate) fn before_now(ago: std::time::Duration) -> String {
    let ago = time::Duration::try_from(ago).unwrap_or(time::Duration::MAX);
    at(time::OffsetDateTime::now_utc()
        .checked_sub(ago)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH))
}

/// The heartbeat cutoff of [`Orphaned`]: a replica whose last heartbeat is before it is gone
/// (for `AllButMine`, a moment after every heartbeat, so every other replica is gone).
pub(crate) fn orphan_cutoff(o: crate::Orphaned) -> String {
    match o {
        crate::Orphaned::AllButMine => "9999-12-31T23:59:59.999Z".to_owned(),
        crate::Orphaned::SilentFor(d) => before_now(d),
    }
}

/// A moment in the stored form: RFC 3339, UTC, milliseconds (so text order is time order).
fn at(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).expect("formatting a time")
}

/// The column types the metadata store uses, read by name from a row of any backend: text,
/// 64-bit integers, bytes and booleans.
pub(crate) trait Cols {
    fn text(&self, c: &str) -> Result<String, MetaError>;
    fn opt_text(&self, c: &str) -> Result<Option<String>, MetaError>;
    fn int(&self, c: &str) -> Result<i64, MetaError>;
    fn opt_int(&self, c: &str) -> Result<Option<i64>, MetaError>;
    fn bytes(&self, c: &str) -> Result<Vec<u8>, MetaError>;
    fn flag(&self, c: &str) -> Result<bool, MetaError>;
}

impl<R> Cols for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, c: &str) -> Result<String, MetaError> {
        Ok(self.try_get(c)?)
    }
    fn opt_text(&self, c: &str) -> Result<Option<String>, MetaError> {
        Ok(self.try_get(c)?)
    }
    fn int(&self, c: &str) -> Result<i64, MetaError> {
        Ok(self.try_get(c)?)
    }
    fn opt_int(&self, c: &str) -> Result<Option<i64>, MetaError> {
        Ok(self.try_get(c)?)
    }
    fn bytes(&self, c: &str) -> Result<Vec<u8>, MetaError> {
        Ok(self.try_get(c)?)
    }
    fn flag(&self, c: &str) -> Result<bool, MetaError> {
        Ok(self.try_get(c)?)
    }
}

pub(crate) fn corrupt(what: &str) -> impl Fn(cleanroom_core::CoreError) -> MetaError + '_ {
    move |e| MetaError::Corrupt(format!("{what}: {e}"))
}

pub(crate) fn hash32(v: Vec<u8>, what: &str) -> Result<[u8; 32], MetaError> {
    v.try_into()
        .map_err(|_| MetaError::Corrupt(format!("{what}: hash is not 32 bytes")))
}

fn unsigned(v: i64, what: &str) -> Result<u64, MetaError> {
    u64::try_from(v).map_err(|_| MetaError::Corrupt(format!("{what} is negative")))
}

pub(crate) fn org_from(r: &impl Cols, prefix: &str) -> Result<Organisation, MetaError> {
    let col = |c: &str| format!("{prefix}{c}");
    Ok(Organisation {
        id: OrgId::parse(&r.text(&col("id"))?).map_err(corrupt("org id"))?,
        name: OrgName::parse(&r.text(&col("name"))?).map_err(corrupt("org name"))?,
        is_operator: r.flag(&col("is_operator"))?,
        created_at: r.text(&col("created_at"))?,
    })
}

pub(crate) fn user_from(r: &impl Cols, prefix: &str) -> Result<User, MetaError> {
    let col = |c: &str| format!("{prefix}{c}");
    Ok(User {
        id: UserId::parse(&r.text(&col("id"))?).map_err(corrupt("user id"))?,
        org_id: OrgId::parse(&r.text(&col("org_id"))?).map_err(corrupt("user org"))?,
        name: UserName::parse(&r.text(&col("name"))?).map_err(corrupt("user name"))?,
        role: UserRole::parse(&r.text(&col("role"))?).map_err(corrupt("user role"))?,
        created_at: r.text(&col("created_at"))?,
    })
}

pub(crate) fn token_from(r: &impl Cols, prefix: &str) -> Result<Token, MetaError> {
    let col = |c: &str| format!("{prefix}{c}");
    Ok(Token {
        id: TokenId::parse(&r.text(&col("id"))?).map_err(corrupt("token id"))?,
        user_id: UserId::parse(&r.text(&col("user_id"))?).map_err(corrupt("token user"))?,
        label: r.text(&col("label"))?,
        secret_hash: hash32(r.bytes(&col("secret_hash"))?, "token")?,
        created_at: r.text(&col("created_at"))?,
        revoked_at: r.opt_text(&col("revoked_at"))?,
        expires_at: r.opt_text(&col("expires_at"))?,
        parent_id: r
            .opt_text(&col("parent_id"))?
            .map(|p| TokenId::parse(&p))
            .transpose()
            .map_err(corrupt("token parent"))?,
    })
}

/// A token with its user and organisation (prefixes `t_`, `u_`, `o_`), for `authenticate`.
pub(crate) const TOKEN_USER_ORG_COLS: &str = "t.id AS t_id, t.user_id AS t_user_id, \
    t.label AS t_label, t.secret_hash AS t_secret_hash, t.created_at AS t_created_at, \
    t.revoked_at AS t_revoked_at, t.expires_at AS t_expires_at, t.parent_id AS t_parent_id, \
    u.id AS u_id, u.org_id AS u_org_id, u.name AS u_name, u.role AS u_role, \
    u.created_at AS u_created_at, \
    o.id AS o_id, o.name AS o_name, o.is_operator AS o_is_operator, o.created_at AS o_created_at";

/// A token with its user (prefixes `t_`, `u_`), for `list_tokens`.
pub(crate) const TOKEN_USER_COLS: &str = "t.id AS t_id, t.user_id AS t_user_id, \
    t.label AS t_label, t.secret_hash AS t_secret_hash, t.created_at AS t_created_at, \
    t.revoked_at AS t_revoked_at, t.expires_at AS t_expires_at, t.parent_id AS t_parent_id, \
    u.id AS u_id, u.org_id AS u_org_id, u.name AS u_name, u.role AS u_role, \
    u.created_at AS u_created_at";

pub(crate) fn collab_from(r: &impl Cols) -> Result<Collaboration, MetaError> {
    Ok(Collaboration {
        id: CollaborationId::parse(&r.text("c_id")?).map_err(corrupt("collaboration id"))?,
        name: CollaborationName::parse(&r.text("c_name")?)
            .map_err(corrupt("collaboration name"))?,
        description: r.text("c_description")?,
        creator_org_id: OrgId::parse(&r.text("c_creator_org_id")?)
            .map_err(corrupt("collaboration creator"))?,
        status: CollaborationStatus::parse(&r.text("c_status")?)
            .map_err(corrupt("collaboration status"))?,
        created_at: r.text("c_created_at")?,
        closed_at: r.opt_text("c_closed_at")?,
    })
}

pub(crate) const COLLAB_COLS: &str = "c.id AS c_id, c.name AS c_name, \
    c.description AS c_description, c.creator_org_id AS c_creator_org_id, c.status AS c_status, \
    c.created_at AS c_created_at, c.closed_at AS c_closed_at";

pub(crate) fn membership_from(r: &impl Cols) -> Result<Membership, MetaError> {
    Ok(Membership {
        collaboration_id: CollaborationId::parse(&r.text("m_collaboration_id")?)
            .map_err(corrupt("membership collaboration"))?,
        org_id: OrgId::parse(&r.text("m_org_id")?).map_err(corrupt("membership org"))?,
        org_name: OrgName::parse(&r.text("m_org_name")?).map_err(corrupt("membership org name"))?,
        abilities: Abilities::from_bits(r.int("m_abilities")?).map_err(corrupt("abilities"))?,
        status: MemberStatus::parse(&r.text("m_status")?).map_err(corrupt("membership status"))?,
        invited_at: r.text("m_invited_at")?,
        joined_at: r.opt_text("m_joined_at")?,
    })
}

pub(crate) const MEMBER_COLS: &str = "m.collaboration_id AS m_collaboration_id, \
    m.org_id AS m_org_id, mo.name AS m_org_name, m.abilities AS m_abilities, \
    m.status AS m_status, m.invited_at AS m_invited_at, m.joined_at AS m_joined_at";

pub(crate) fn dataset_from(r: &impl Cols) -> Result<Dataset, MetaError> {
    let opt_u64 = |c: &str| -> Result<Option<u64>, MetaError> {
        r.opt_int(c)?.map(|v| unsigned(v, c)).transpose()
    };
    Ok(Dataset {
        id: DatasetId::parse(&r.text("id")?).map_err(corrupt("dataset id"))?,
        collaboration_id: CollaborationId::parse(&r.text("collaboration_id")?)
            .map_err(corrupt("dataset collaboration"))?,
        owner_org_id: OrgId::parse(&r.text("owner_org_id")?).map_err(corrupt("dataset owner"))?,
        owner_org_name: OrgName::parse(&r.text("owner_name")?)
            .map_err(corrupt("dataset owner name"))?,
        name: DatasetName::parse(&r.text("name")?).map_err(corrupt("dataset name"))?,
        schema: DatasetSchema::from_compact(&r.text("schema")?)
            .map_err(corrupt("dataset schema"))?,
        status: DatasetStatus::parse(&r.text("status")?).map_err(corrupt("dataset status"))?,
        row_count: opt_u64("row_count")?,
        byte_size: opt_u64("byte_size")?,
        created_at: r.text("created_at")?,
        ready_at: r.opt_text("ready_at")?,
    })
}

pub(crate) const DATASET_SELECT: &str = "SELECT d.id, d.collaboration_id, d.owner_org_id, \
    o.name AS owner_name, d.name, d.schema, d.status, d.row_count, d.byte_size, d.created_at, \
    d.ready_at FROM datasets d JOIN organisations o ON o.id = d.owner_org_id";

/// A ready dataset's collaboration and id (`recover_uploads`).
pub(crate) fn dataset_ids_from(r: &impl Cols) -> Result<(CollaborationId, DatasetId), MetaError> {
    Ok((
        CollaborationId::parse(&r.text("collaboration_id")?)
            .map_err(corrupt("dataset collaboration"))?,
        DatasetId::parse(&r.text("id")?).map_err(corrupt("dataset id"))?,
    ))
}

pub(crate) fn audit_from(r: &impl Cols) -> Result<AuditEntry, MetaError> {
    let outcome = r.text("outcome")?;
    Ok(AuditEntry {
        chain: r.text("chain")?,
        seq: unsigned(r.int("seq")?, "audit seq")?,
        at: r.text("at")?,
        actor: r.text("actor")?,
        action: r.text("action")?,
        target: r.text("target")?,
        outcome: Outcome::parse(&outcome)
            .ok_or_else(|| MetaError::Corrupt(format!("audit outcome {outcome:?}")))?,
        detail: r.text("detail")?,
        prev_hash: hash32(r.bytes("prev_hash")?, "audit prev_hash")?,
        hash: hash32(r.bytes("hash")?, "audit hash")?,
    })
}

pub(crate) const AUDIT_COLS: &str =
    "chain, seq, at, actor, action, target, outcome, detail, prev_hash, hash";

/// A chain's head record (`seq`, `hash`).
pub(crate) fn head_from(r: &impl Cols) -> Result<ChainHead, MetaError> {
    Ok(ChainHead {
        seq: unsigned(r.int("seq")?, "audit head seq")?,
        hash: hash32(r.bytes("hash")?, "audit head")?,
    })
}

pub(crate) const LEDGER_SELECT: &str = "SELECT l.org_id, o.name AS org_name, l.epsilon_total, \
    l.delta_total, l.epsilon_per_query, l.delta_per_query, l.epsilon_spent, l.delta_spent, \
    l.updated_at FROM privacy_ledgers l JOIN organisations o ON o.id = l.org_id";

pub(crate) fn ledger_from(r: &impl Cols) -> Result<LedgerRow, MetaError> {
    let u = |k: &str| -> Result<u64, MetaError> { unsigned(r.int(k)?, &format!("ledger {k}")) };
    Ok(LedgerRow {
        org_id: OrgId::parse(&r.text("org_id")?).map_err(corrupt("ledger org"))?,
        org_name: OrgName::parse(&r.text("org_name")?).map_err(corrupt("ledger org name"))?,
        epsilon_total: u("epsilon_total")?,
        delta_total: u("delta_total")?,
        epsilon_per_query: u("epsilon_per_query")?,
        delta_per_query: u("delta_per_query")?,
        epsilon_spent: u("epsilon_spent")?,
        delta_spent: u("delta_spent")?,
        updated_at: r.text("updated_at")?,
    })
}

pub(crate) const ANALYSIS_SELECT: &str = "SELECT id, collaboration_id, org_id, actor, kind, \
    request, fingerprint, receivers, charges, status, result, error, reused_from, created_at, \
    finished_at FROM analyses";

pub(crate) fn analysis_from(r: &impl Cols) -> Result<AnalysisRow, MetaError> {
    Ok(AnalysisRow {
        id: AnalysisId::parse(&r.text("id")?).map_err(corrupt("analysis id"))?,
        collaboration_id: CollaborationId::parse(&r.text("collaboration_id")?)
            .map_err(corrupt("analysis collaboration"))?,
        org_id: OrgId::parse(&r.text("org_id")?).map_err(corrupt("analysis org"))?,
        actor: r.text("actor")?,
        kind: r.text("kind")?,
        request: r.text("request")?,
        fingerprint: r.text("fingerprint")?,
        receivers: r.text("receivers")?,
        charges: r.text("charges")?,
        status: AnalysisStatus::parse(&r.text("status")?).map_err(corrupt("analysis status"))?,
        result: r.opt_text("result")?,
        error: r.opt_text("error")?,
        reused_from: r
            .opt_text("reused_from")?
            .as_deref()
            .map(AnalysisId::parse)
            .transpose()
            .map_err(corrupt("analysis reused from"))?,
        created_at: r.text("created_at")?,
        finished_at: r.opt_text("finished_at")?,
    })
}

pub(crate) const APPROVAL_SELECT: &str = "SELECT a.dataset_id, a.template, a.version, \
    a.approved_by, a.approved_at FROM template_approvals a JOIN datasets d ON d.id = a.dataset_id";

pub(crate) fn approval_from(r: &impl Cols) -> Result<ApprovalRow, MetaError> {
    Ok(ApprovalRow {
        dataset_id: DatasetId::parse(&r.text("dataset_id")?)
            .map_err(corrupt("approval dataset"))?,
        template: r.text("template")?,
        version: r.int("version")? as u32,
        approved_by: r.text("approved_by")?,
        approved_at: r.text("approved_at")?,
    })
}

pub(crate) const ACTIVATION_SELECT: &str = "SELECT id, collaboration_id, org_id, actor, \
    source_dataset_id, target_dataset_id, request, policy_version, status, decided_by, \
    decided_at, delivered, created_at, finished_at FROM activations";

pub(crate) fn activation_from(r: &impl Cols) -> Result<ActivationRow, MetaError> {
    let version = r.int("policy_version")?;
    Ok(ActivationRow {
        id: ActivationId::parse(&r.text("id")?).map_err(corrupt("activation id"))?,
        collaboration_id: CollaborationId::parse(&r.text("collaboration_id")?)
            .map_err(corrupt("activation collaboration"))?,
        org_id: OrgId::parse(&r.text("org_id")?).map_err(corrupt("activation org"))?,
        actor: r.text("actor")?,
        source_dataset_id: DatasetId::parse(&r.text("source_dataset_id")?)
            .map_err(corrupt("activation source"))?,
        target_dataset_id: DatasetId::parse(&r.text("target_dataset_id")?)
            .map_err(corrupt("activation target"))?,
        request: r.text("request")?,
        policy_version: u32::try_from(version)
            .map_err(|_| MetaError::Corrupt("activation policy version".into()))?,
        status: ActivationStatus::parse(&r.text("status")?)
            .map_err(corrupt("activation status"))?,
        decided_by: r.opt_text("decided_by")?,
        decided_at: r.opt_text("decided_at")?,
        delivered: r
            .opt_int("delivered")?
            .map(|v| unsigned(v, "activation delivered"))
            .transpose()?,
        created_at: r.text("created_at")?,
        finished_at: r.opt_text("finished_at")?,
    })
}

/// `n` as the signed 64-bit integer both databases store, refused (never wrapped: a wrapped
/// charge would be negative and credit a ledger) when it does not fit.
pub(crate) fn db_int(n: u64, what: &str) -> Result<i64, MetaError> {
    i64::try_from(n)
        .map_err(|_| MetaError::Conflict(format!("{what} of {n} is larger than the store holds")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn integers_that_do_not_fit_are_refused_not_wrapped() {
        assert_eq!(super::db_int(7, "x").unwrap(), 7);
        assert_eq!(super::db_int(i64::MAX as u64, "x").unwrap(), i64::MAX);
        assert!(super::db_int(i64::MAX as u64 + 1, "an epsilon charge").is_err());
        assert!(super::db_int(u64::MAX, "x").is_err());
    }
}
