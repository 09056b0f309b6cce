//! Analyses: data owners' policies, their privacy budgets, SQL queries and ready-made templates.
//!
//! The path of every analysis: authorise the caller (member with the `analyse` ability, analyst
//! of every dataset touched, receivers allowed by every owner) → check and calibrate the query
//! (`cleanroom-query`) → answer an identical earlier analysis from its stored release without
//! spending anything → otherwise debit every owner's ledger and record the analysis in one
//! transaction, before any data is read → run → store the release (or the failure: the charge
//! stays) with its audit entry. Every step, refusals included, is in the collaboration's audit
//! chain with its cost.

use cleanroom_core::audit::Action;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cleanroom_core::audit::Outcome;
use cleanroom_core::entities::{Collaboration, Dataset};
use cleanroom_core::ids::{AnalysisId, OrgId};
use cleanroom_core::names::{DatasetName, OrgName};
use cleanroom_core::party::{Ability, AnalysisStatus, DatasetStatus, MemberStatus};
use cleanroom_core::policy::{AnalysisPolicy, PolicyDraft};
use cleanroom_meta::{AnalysisRow, ApprovalRow, Charge, Grant, LedgerRow, MetaError};
use cleanroom_privacy::budget::{Budget, Delta, Epsilon, Ledger, PrivacyCost};
use cleanroom_query::templates::{self, TemplateInfo, TemplateOutput, TemplatePlan};
use cleanroom_query::{Catalog, PrivacyRequest, QueryError, QueryTable, Released};
use serde_json::json;

use crate::ServiceError;
use crate::results::{AnalysisResult, ResultTable};
use crate::room::{AuditCtx, CleanRoom, Need, Principal, stored_id};

mod execute;
mod policy;
mod request;
mod stored;

use stored::{charges_json, decode_stats, encode_stats, parse_charges};

/// Default delta of a grant when none is given.
pub const DEFAULT_DELTA: f64 = 1e-6;

/// A dataset's current policy.
#[derive(Debug, Clone)]
pub struct PolicyView {
    pub dataset: DatasetName,
    pub owner: OrgName,
    pub version: u32,
    pub policy: AnalysisPolicy,
    pub set_by: String,
    pub created_at: String,
}

/// An organisation's privacy ledger in a collaboration.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetView {
    pub org: OrgName,
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

/// An explicit grant: amounts added to the caller's organisation's totals, and optionally new
/// per-query caps (required on the first grant; default: all of the grant, capped at ε = 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrantRequest {
    pub epsilon: f64,
    pub delta: Option<f64>,
    pub epsilon_per_query: Option<f64>,
    pub delta_per_query: Option<f64>,
}

/// A SQL analysis to run.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    pub sql: String,
    /// Epsilon to spend (default: the smallest per-query cap of the owners touched).
    pub epsilon: Option<f64>,
    /// Delta to spend (default: the smallest per-query delta cap of the owners touched).
    pub delta: Option<f64>,
    /// Organisations to deliver the result to (default: the caller's).
    pub receivers: Vec<String>,
    /// Check and price the analysis without running it or spending anything.
    pub dry_run: bool,
}

/// A template analysis to run.
#[derive(Debug, Clone, Default)]
pub struct TemplateRequest {
    pub template: String,
    /// Default: the latest version.
    pub version: Option<u32>,
    pub params: BTreeMap<String, String>,
    pub epsilon: Option<f64>,
    pub delta: Option<f64>,
    pub receivers: Vec<String>,
    pub dry_run: bool,
}

/// What one analysis cost one organisation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeView {
    pub org: OrgName,
    pub epsilon: f64,
    pub delta: f64,
}

/// How a dry run would execute: the datasets, the protection applied, the cost.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanView {
    pub datasets: Vec<String>,
    pub epsilon: Option<f64>,
    pub delta: Option<f64>,
    pub notes: Vec<String>,
    /// Whether every owner's budget can pay for the analysis now.
    pub affordable: bool,
    /// Why not, one sentence per owner that cannot pay (which budget, epsilon or delta).
    pub budget_problems: Vec<String>,
}

/// An analysis as its requester or a receiver sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisView {
    pub id: String,
    pub kind: String,
    pub request: String,
    pub requested_by: String,
    pub status: AnalysisStatus,
    pub receivers: Vec<String>,
    pub charges: Vec<ChargeView>,
    /// Only for receivers.
    pub result: Option<AnalysisResult>,
    pub error: Option<String>,
    pub reused_from: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// Dry runs only.
    pub plan: Option<PlanView>,
}

/// An owner's approval of a template version for one of its datasets.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalView {
    pub dataset: DatasetName,
    pub owner: OrgName,
    pub template: String,
    pub version: u32,
    pub approved_by: String,
    pub approved_at: String,
}

/// What the analyst, the receivers and the audit chain learn of an analysis that failed after
/// its charge: this sentence and a stable code, never the cause's text.
const ANALYSIS_FAILED: &str =
    "the analysis failed while running; nothing was released and the charge stays";
const ANALYSIS_UNAVAILABLE: &str =
    "the data could not be read; nothing was released and the charge stays; try again later";

const ANALYSIS_CLUSTER_FAILED: &str = "the analysis cluster did not answer or failed to run the \
     analysis; nothing was released and the charge stays; try again later";

pub(crate) fn query_error(e: QueryError) -> ServiceError {
    match e {
        QueryError::Invalid(m) => {
            ServiceError::InvalidInput(format!("the query is not valid SQL here: {m}"))
        }
        QueryError::Refused {
            rule,
            column,
            message,
        } => ServiceError::PolicyRefused {
            rule: rule.to_owned(),
            column,
            message,
        },
        QueryError::Privacy(p) => ServiceError::InvalidInput(p.to_string()),
        QueryError::Unavailable(m) => {
            tracing::error!(error = %m, "reading a dataset for an analysis failed");
            ServiceError::Unavailable("reading the data failed; try again".into())
        }
        QueryError::Cluster { at, kind } => {
            tracing::error!(cluster = %at, %kind, "the analysis cluster failed to run an analysis");
            ServiceError::Unavailable(ANALYSIS_CLUSTER_FAILED.into())
        }
        QueryError::Execution(kind) => {
            tracing::error!(%kind, "an analysis failed while running");
            ServiceError::AnalysisFailed(ANALYSIS_FAILED.into())
        }
        QueryError::OutOfMemory { limit, spill_limit } => {
            let limit = match limit {
                Some(b) => format!("the server's limit of {} MiB (--max-memory)", b >> 20),
                None => "the memory this machine has".to_owned(),
            };
            let spill = match spill_limit {
                Some(b) => format!(
                    " even after spilling up to {} MiB to disk (--max-spill)",
                    b >> 20
                ),
                None => String::new(),
            };
            ServiceError::MemoryLimit(format!(
                "the analysis needs more memory than {limit}{spill}; nothing was released and \
                 the charge stays; ask the operator for a higher limit, or narrow the analysis"
            ))
        }
        QueryError::Internal(m) => ServiceError::Internal(format!("query engine: {m}")),
    }
}

fn refused(rule: &str, column: Option<&str>, message: impl Into<String>) -> ServiceError {
    ServiceError::PolicyRefused {
        rule: rule.to_owned(),
        column: column.map(str::to_owned),
        message: message.into(),
    }
}

fn budget_view(l: &LedgerRow) -> BudgetView {
    let e = |u: u64| Epsilon::from_units(u).as_f64();
    let d = |u: u64| Delta::from_units(u).as_f64();
    BudgetView {
        org: l.org_name.clone(),
        epsilon_total: e(l.epsilon_total),
        delta_total: d(l.delta_total),
        epsilon_per_query: e(l.epsilon_per_query),
        delta_per_query: d(l.delta_per_query),
        epsilon_spent: e(l.epsilon_spent),
        delta_spent: d(l.delta_spent),
        epsilon_left: e(l.epsilon_total.saturating_sub(l.epsilon_spent)),
        delta_left: d(l.delta_total.saturating_sub(l.delta_spent)),
        updated_at: l.updated_at.clone(),
    }
}

fn ledger_of(l: &LedgerRow) -> Result<Ledger, ServiceError> {
    let budget = Budget::new(
        PrivacyCost {
            epsilon: Epsilon::from_units(l.epsilon_total),
            delta: Delta::from_units(l.delta_total),
        },
        PrivacyCost {
            epsilon: Epsilon::from_units(l.epsilon_per_query),
            delta: Delta::from_units(l.delta_per_query),
        },
    )
    .map_err(|e| ServiceError::Internal(format!("stored ledger: {e}")))?;
    Ledger::restore(
        budget,
        PrivacyCost {
            epsilon: Epsilon::from_units(l.epsilon_spent),
            delta: Delta::from_units(l.delta_spent),
        },
    )
    .map_err(|e| ServiceError::Internal(format!("stored ledger: {e}")))
}

/// What the service needs to run and record one analysis, SQL or template.
struct Planned {
    kind: &'static str,
    request: String,
    /// Catalog indices of the datasets touched.
    touched: BTreeSet<usize>,
    plan: TemplatePlan,
}

impl CleanRoom {
    fn view(&self, p: &Principal, row: AnalysisRow) -> Result<AnalysisView, ServiceError> {
        let receivers: Vec<String> = serde_json::from_str(&row.receivers)
            .map_err(|_| ServiceError::Internal("stored receivers".into()))?;
        let is_receiver = receivers.iter().any(|r| r == p.org.name.as_str());
        let result = match (&row.result, is_receiver) {
            (Some(r), true) => {
                let mut res = crate::results::decode(r)
                    .map_err(|e| ServiceError::Internal(format!("stored result: {e}")))?;
                // Tables meant for one organisation (its own benchmark figures) go to it only.
                res.tables.retain(|t| {
                    t.visible_to
                        .as_ref()
                        .is_none_or(|o| o == p.org.name.as_str())
                });
                Some(res)
            }
            _ => None,
        };
        Ok(AnalysisView {
            id: row.id.to_string(),
            kind: row.kind,
            request: row.request,
            requested_by: row.actor,
            status: row.status,
            receivers,
            charges: parse_charges(&row.charges)?,
            result,
            error: row.error,
            reused_from: row.reused_from.map(|id| id.to_string()),
            created_at: row.created_at,
            finished_at: row.finished_at,
            plan: None,
        })
    }

    /// One analysis, for its requester's organisation or a receiver.
    pub async fn get_analysis(
        &self,
        p: &Principal,
        collab: &str,
        id: &str,
    ) -> Result<AnalysisView, ServiceError> {
        let ctx = AuditCtx::by(p, Action::AnalysisShow, id);
        let (c, _, ctx) = self.active_member(p, collab, ctx, Need::read()).await?;
        let found = match stored_id::<AnalysisId>(id) {
            Some(id) => self.meta.get_analysis(id).await?,
            None => None,
        }
        .filter(|r| r.collaboration_id == c.id)
        .filter(|r| r.org_id == p.org.id || r.receivers.contains(&format!("\"{}\"", p.org.name)));
        match found {
            Some(row) => self.view(p, row),
            None => {
                let e = ServiceError::NotFound(format!("no analysis {id} that you may see"));
                Err(self.refuse(&ctx, e).await)
            }
        }
    }

    /// Analyses the caller's organisation requested or receives.
    pub async fn list_analyses(
        &self,
        p: &Principal,
        collab: &str,
    ) -> Result<Vec<AnalysisView>, ServiceError> {
        let ctx = AuditCtx::by(p, Action::AnalysisList, "-");
        let (c, _, _) = self.active_member(p, collab, ctx, Need::read()).await?;
        let quoted = format!("\"{}\"", p.org.name);
        self.meta
            .list_analyses(c.id)
            .await?
            .into_iter()
            .filter(|r| r.org_id == p.org.id || r.receivers.contains(&quoted))
            .map(|r| self.view(p, r))
            .collect()
    }
}
