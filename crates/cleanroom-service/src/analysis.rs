//! Analyses: data owners' policies, their privacy budgets, SQL queries and ready-made templates.
//!
//! The path of every analysis: authorise the caller (member with the `analyse` ability, analyst
//! of every dataset touched, receivers allowed by every owner) → check and calibrate the query
//! (`cleanroom-query`) → answer an identical earlier analysis from its stored release without
//! spending anything → otherwise debit every owner's ledger and record the analysis in one
//! transaction, before any data is read → run → store the release (or the failure: the charge
//! stays) with its audit entry. Every step, refusals included, is in the collaboration's audit
//! chain with its cost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cleanroom_core::audit::Outcome;
use cleanroom_core::entities::{Collaboration, Dataset};
use cleanroom_core::ids::OrgId;
use cleanroom_core::names::{DatasetName, OrgName};
use cleanroom_core::party::{Ability, DatasetStatus, MemberStatus};
use cleanroom_core::policy::{AnalysisPolicy, PolicyDraft};
use cleanroom_meta::{AnalysisRow, ApprovalRow, Charge, Grant, LedgerRow, MetaError};
use cleanroom_privacy::budget::{Budget, Delta, Epsilon, Ledger, PrivacyCost};
use cleanroom_query::catalog::TableStats;
use cleanroom_query::templates::{self, TemplateInfo, TemplateOutput, TemplatePlan};
use cleanroom_query::{Catalog, PrivacyRequest, QueryError, QueryTable, Released};
use serde_json::{Value, json};

use crate::ServiceError;
use crate::results::{AnalysisResult, ResultTable};
use crate::room::{CleanRoom, Principal};

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
    pub status: String,
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
        QueryError::Execution(kind) => {
            tracing::error!(%kind, "an analysis failed while running");
            ServiceError::AnalysisFailed(ANALYSIS_FAILED.into())
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
    // ------------------------------------------------------------------ policies

    /// Sets (a new version of) the analysis policy of one of the caller's datasets.
    pub async fn set_policy(
        &self,
        p: &Principal,
        collab: &str,
        dataset: &str,
        draft: PolicyDraft,
    ) -> Result<PolicyView, ServiceError> {
        const ACTION: &str = "policy.set";
        let (c, _) = self
            .active_member(p, collab, ACTION, dataset, None, true)
            .await?;
        let chain = c.id.to_string();
        let d = self.find_dataset(&c, p, dataset, ACTION).await?;
        if d.owner_org_id != p.org.id {
            let e = ServiceError::Forbidden(
                "only the organisation that owns a dataset may set its policy".into(),
            );
            return Err(self.refuse(&chain, &p.actor(), ACTION, dataset, e).await);
        }
        let policy = self
            .audited(
                AnalysisPolicy::validate(&draft, &d.schema),
                &chain,
                &p.actor(),
                ACTION,
                dataset,
            )
            .await?;
        let audit = Self::audit(
            &chain,
            &p.actor(),
            ACTION,
            dataset,
            Outcome::Allowed,
            policy_summary(&policy),
        );
        let version = self
            .meta
            .set_policy(d.id, &policy.to_draft(), &p.actor(), audit)
            .await?;
        self.get_policy(p, collab, dataset)
            .await
            .map(|v| PolicyView { version, ..v })
    }

    /// A dataset's current policy, for any active member.
    pub async fn get_policy(
        &self,
        p: &Principal,
        collab: &str,
        dataset: &str,
    ) -> Result<PolicyView, ServiceError> {
        const ACTION: &str = "policy.show";
        let (c, _) = self
            .active_member(p, collab, ACTION, dataset, None, false)
            .await?;
        let d = self.find_dataset(&c, p, dataset, ACTION).await?;
        let Some(stored) = self.meta.get_policy(d.id).await? else {
            return Err(ServiceError::NotFound(format!(
                "dataset {} has no analysis policy yet",
                d.name
            )));
        };
        let policy = AnalysisPolicy::validate(&stored.draft, &d.schema)
            .map_err(|e| ServiceError::Internal(format!("stored policy: {e}")))?;
        Ok(PolicyView {
            dataset: d.name,
            owner: d.owner_org_name,
            version: stored.version,
            policy,
            set_by: stored.set_by,
            created_at: stored.created_at,
        })
    }

    // ------------------------------------------------------------------ budgets

    /// The caller's organisation grants (more) privacy budget for its data in this
    /// collaboration: an explicit act, admins only, audited. Budgets never refresh by
    /// themselves and spending is never undone.
    pub async fn grant_budget(
        &self,
        p: &Principal,
        collab: &str,
        grant: GrantRequest,
    ) -> Result<BudgetView, ServiceError> {
        const ACTION: &str = "budget.grant";
        let (c, _) = self
            .active_member(p, collab, ACTION, p.org.name.as_str(), None, true)
            .await?;
        let chain = c.id.to_string();
        let target = p.org.name.as_str();
        if !p.is_admin() {
            let e = ServiceError::Forbidden(
                "only an admin of your organisation may grant privacy budget".into(),
            );
            return Err(self.refuse(&chain, &p.actor(), ACTION, target, e).await);
        }
        let existing = self
            .meta
            .ledgers(c.id)
            .await?
            .into_iter()
            .find(|l| l.org_id == p.org.id);
        let parsed = (|| -> Result<Grant, ServiceError> {
            let bad =
                |e: cleanroom_privacy::PrivacyError| ServiceError::InvalidInput(e.to_string());
            let add_epsilon = Epsilon::grant(grant.epsilon).map_err(bad)?;
            let delta = grant.delta.unwrap_or(if existing.is_none() {
                DEFAULT_DELTA
            } else {
                0.0
            });
            let add_delta = Delta::grant(delta).map_err(bad)?;
            let (total_e, total_d) = match &existing {
                Some(l) => (
                    l.epsilon_total.saturating_add(add_epsilon.units()),
                    l.delta_total.saturating_add(add_delta.units()),
                ),
                None => (add_epsilon.units(), add_delta.units()),
            };
            let cap_e = match grant.epsilon_per_query {
                Some(v) => Some(Epsilon::grant(v).map_err(bad)?.units()),
                None if existing.is_none() => {
                    Some(total_e.min(Epsilon::grant(1.0).map_err(bad)?.units()))
                }
                None => None,
            };
            // By default delta is spread like epsilon: a query may spend the same share of
            // each, so neither runs out long before the other.
            let cap_d = match grant.delta_per_query {
                Some(v) => Some(Delta::grant(v).map_err(bad)?.units()),
                None if existing.is_none() => Some(match cap_e {
                    Some(ce) if total_e > 0 => {
                        (u128::from(total_d) * u128::from(ce) / u128::from(total_e)) as u64
                    }
                    _ => total_d,
                }),
                None => None,
            };
            if total_e
                > Epsilon::grant(cleanroom_privacy::budget::MAX_EPSILON)
                    .map_err(bad)?
                    .units()
            {
                return Err(ServiceError::InvalidInput(format!(
                    "a collaboration's total epsilon is at most {}",
                    cleanroom_privacy::budget::MAX_EPSILON
                )));
            }
            let eff_e = cap_e
                .or(existing.as_ref().map(|l| l.epsilon_per_query))
                .unwrap_or(0);
            let eff_d = cap_d
                .or(existing.as_ref().map(|l| l.delta_per_query))
                .unwrap_or(0);
            if eff_e == 0 || eff_e > total_e || eff_d > total_d {
                return Err(ServiceError::InvalidInput(
                    "the per-query caps must be above zero and within the total budget".into(),
                ));
            }
            if total_e == 0 {
                return Err(ServiceError::InvalidInput("grant some epsilon".into()));
            }
            Ok(Grant {
                add_epsilon: add_epsilon.units(),
                add_delta: add_delta.units(),
                epsilon_per_query: cap_e,
                delta_per_query: cap_d,
            })
        })();
        let g = self
            .audited(parsed, &chain, &p.actor(), ACTION, target)
            .await?;
        let detail = format!(
            "granted epsilon {} and delta {:e}{}",
            Epsilon::from_units(g.add_epsilon).as_f64(),
            Delta::from_units(g.add_delta).as_f64(),
            match (g.epsilon_per_query, g.delta_per_query) {
                (None, None) => String::new(),
                (e, d) => format!(
                    "; per-query caps epsilon {} delta {}",
                    e.map_or("unchanged".into(), |v| Epsilon::from_units(v)
                        .as_f64()
                        .to_string()),
                    d.map_or("unchanged".into(), |v| format!(
                        "{:e}",
                        Delta::from_units(v).as_f64()
                    )),
                ),
            }
        );
        let audit = Self::audit(&chain, &p.actor(), ACTION, target, Outcome::Allowed, detail);
        let row = self.meta.grant_budget(c.id, p.org.id, g, audit).await?;
        Ok(budget_view(&row))
    }

    /// Every organisation's ledger in the collaboration (amounts only), for active members.
    pub async fn budgets(
        &self,
        p: &Principal,
        collab: &str,
    ) -> Result<Vec<BudgetView>, ServiceError> {
        let (c, _) = self
            .active_member(p, collab, "budget.show", "-", None, false)
            .await?;
        Ok(self
            .meta
            .ledgers(c.id)
            .await?
            .iter()
            .map(budget_view)
            .collect())
    }

    // ------------------------------------------------------------------ templates

    /// The ready-made analyses this server offers.
    pub fn templates(&self) -> Vec<TemplateInfo> {
        templates::all()
    }

    /// The owner of a dataset approves a template version on it.
    pub async fn approve_template(
        &self,
        p: &Principal,
        collab: &str,
        dataset: &str,
        template: &str,
        version: Option<u32>,
        approve: bool,
    ) -> Result<ApprovalView, ServiceError> {
        let action = if approve {
            "template.approve"
        } else {
            "template.revoke"
        };
        let (c, _) = self
            .active_member(p, collab, action, dataset, None, true)
            .await?;
        let chain = c.id.to_string();
        let d = self.find_dataset(&c, p, dataset, action).await?;
        let target = format!("{template} on {dataset}");
        if d.owner_org_id != p.org.id {
            let e = ServiceError::Forbidden(
                "only the organisation that owns a dataset may approve templates on it".into(),
            );
            return Err(self.refuse(&chain, &p.actor(), action, &target, e).await);
        }
        let info = self
            .audited(
                templates::find(template, version).map_err(query_error),
                &chain,
                &p.actor(),
                action,
                &target,
            )
            .await?;
        let row = ApprovalRow {
            dataset_id: d.id,
            template: info.name.to_owned(),
            version: info.version,
            approved_by: p.actor(),
            approved_at: cleanroom_meta::now(),
        };
        let audit = Self::audit(
            &chain,
            &p.actor(),
            action,
            &target,
            Outcome::Allowed,
            format!("{} version {}", info.name, info.version),
        );
        let r = if approve {
            self.meta.approve_template(&row, audit).await
        } else {
            self.meta
                .revoke_template(d.id, info.name, info.version, audit)
                .await
        };
        match r {
            Ok(()) => Ok(ApprovalView {
                dataset: d.name,
                owner: d.owner_org_name,
                template: row.template,
                version: row.version,
                approved_by: row.approved_by,
                approved_at: row.approved_at,
            }),
            Err(e @ (MetaError::Conflict(_) | MetaError::NotFound(_))) => Err(self
                .refuse(&chain, &p.actor(), action, &target, e.into())
                .await),
            Err(e) => Err(e.into()),
        }
    }

    /// Template approvals in the collaboration, for active members.
    pub async fn template_approvals(
        &self,
        p: &Principal,
        collab: &str,
    ) -> Result<Vec<ApprovalView>, ServiceError> {
        let (c, _) = self
            .active_member(p, collab, "template.approvals", "-", None, false)
            .await?;
        let datasets = self.meta.list_datasets(c.id).await?;
        Ok(self
            .meta
            .template_approvals(c.id)
            .await?
            .into_iter()
            .filter_map(|a| {
                let d = datasets.iter().find(|d| d.id == a.dataset_id)?;
                Some(ApprovalView {
                    dataset: d.name.clone(),
                    owner: d.owner_org_name.clone(),
                    template: a.template,
                    version: a.version,
                    approved_by: a.approved_by,
                    approved_at: a.approved_at,
                })
            })
            .collect())
    }

    // ------------------------------------------------------------------ running analyses

    /// Checks, prices and (unless a dry run) runs a SQL analysis.
    pub async fn run_query(
        &self,
        p: &Principal,
        collab: &str,
        req: QueryRequest,
    ) -> Result<AnalysisView, ServiceError> {
        const ACTION: &str = "analysis.query";
        let (c, _) = self
            .active_member(p, collab, ACTION, "sql", Some(Ability::Analyse), true)
            .await?;
        let chain = c.id.to_string();
        let (catalog, datasets) = self.catalog(&c, false).await?;
        let spec = self
            .audited(
                cleanroom_query::check::check(&req.sql, &catalog)
                    .await
                    .map_err(query_error),
                &chain,
                &p.actor(),
                ACTION,
                "sql",
            )
            .await?;
        let touched: BTreeSet<usize> = spec.uses.iter().map(|u| u.table).collect();
        // SQL needs every owner to allow this analyst and free SQL.
        for &t in &touched {
            let table = &catalog.tables[t];
            if !table.policy.allows_analyst(&p.org.name, &table.owner) {
                let e = refused(
                    "analyst_not_allowed",
                    None,
                    format!(
                        "the policy of {} does not list your organisation among its analysts",
                        table.name
                    ),
                );
                return Err(self.refuse(&chain, &p.actor(), ACTION, "sql", e).await);
            }
            if !table.policy.allow_sql && table.owner != p.org.name {
                let e = refused(
                    "sql_not_allowed",
                    None,
                    format!(
                        "the owner of {} allows only approved templates on it, not free SQL",
                        table.name
                    ),
                );
                return Err(self.refuse(&chain, &p.actor(), ACTION, "sql", e).await);
            }
        }
        let request = self
            .audited(
                self.privacy_request(&c, &catalog, &touched, req.epsilon, req.delta, req.dry_run)
                    .await,
                &chain,
                &p.actor(),
                ACTION,
                "sql",
            )
            .await?;
        let analysis = self
            .audited(
                cleanroom_query::prepare_spec(spec, &catalog, request).map_err(query_error),
                &chain,
                &p.actor(),
                ACTION,
                "sql",
            )
            .await?;
        let planned = Planned {
            kind: "sql",
            request: req.sql.clone(),
            touched,
            plan: TemplatePlan::single("result", analysis),
        };
        self.execute(
            p,
            &c,
            catalog,
            datasets,
            planned,
            &req.receivers,
            req.dry_run,
            ACTION,
        )
        .await
    }

    /// Checks, prices and (unless a dry run) runs a template analysis.
    pub async fn run_template(
        &self,
        p: &Principal,
        collab: &str,
        req: TemplateRequest,
    ) -> Result<AnalysisView, ServiceError> {
        const ACTION: &str = "analysis.template";
        let target = req.template.clone();
        let (c, _) = self
            .active_member(p, collab, ACTION, &target, Some(Ability::Analyse), true)
            .await?;
        let chain = c.id.to_string();
        let info = self
            .audited(
                templates::find(&req.template, req.version).map_err(query_error),
                &chain,
                &p.actor(),
                ACTION,
                &target,
            )
            .await?;
        let (catalog, datasets) = self.catalog(&c, false).await?;
        // The datasets the template would touch, from its parameters.
        let touched = self
            .audited(
                templates::datasets(&info, &req.params, &catalog).map_err(query_error),
                &chain,
                &p.actor(),
                ACTION,
                &target,
            )
            .await?;
        let approvals = self.meta.template_approvals(c.id).await?;
        for &t in &touched {
            let table = &catalog.tables[t];
            if !table.has_policy {
                let e = refused(
                    "no_policy",
                    None,
                    format!(
                        "dataset {} has no analysis policy yet: its owner ({}) must set one \
                         (`cleanroom policy set`) before anyone can analyse it",
                        table.name, table.owner
                    ),
                );
                return Err(self.refuse(&chain, &p.actor(), ACTION, &target, e).await);
            }
            if table.owner == p.org.name {
                continue;
            }
            if !table.policy.allows_analyst(&p.org.name, &table.owner) {
                let e = refused(
                    "analyst_not_allowed",
                    None,
                    format!(
                        "the policy of {} does not list your organisation among its analysts",
                        table.name
                    ),
                );
                return Err(self.refuse(&chain, &p.actor(), ACTION, &target, e).await);
            }
            let approved = approvals.iter().any(|a| {
                a.dataset_id == table.dataset_id
                    && a.template == info.name
                    && a.version == info.version
            });
            if !approved {
                let e = refused(
                    "template_not_approved",
                    None,
                    format!(
                        "{} has not approved {} version {} on {}",
                        table.owner, info.name, info.version, table.name
                    ),
                );
                return Err(self.refuse(&chain, &p.actor(), ACTION, &target, e).await);
            }
        }
        let request = self
            .audited(
                self.privacy_request(&c, &catalog, &touched, req.epsilon, req.delta, req.dry_run)
                    .await,
                &chain,
                &p.actor(),
                ACTION,
                &target,
            )
            .await?;
        let plan = self
            .audited(
                templates::plan(&info, &req.params, &catalog, request)
                    .await
                    .map_err(query_error),
                &chain,
                &p.actor(),
                ACTION,
                &target,
            )
            .await?;
        let request_text = json!({
            "template": info.name,
            "version": info.version,
            "params": req.params,
        })
        .to_string();
        let planned = Planned {
            kind: "template",
            request: request_text,
            touched,
            plan,
        };
        self.execute(
            p,
            &c,
            catalog,
            datasets,
            planned,
            &req.receivers,
            req.dry_run,
            ACTION,
        )
        .await
    }

    /// The datasets of a collaboration that analyses may use: ready ones, with their policies
    /// (and their decryption handles when `with_data`).
    pub(crate) async fn catalog(
        &self,
        c: &Collaboration,
        with_data: bool,
    ) -> Result<(Arc<Catalog>, Vec<Dataset>), ServiceError> {
        self.catalog_opening(c, |_| with_data).await
    }

    /// As [`Self::catalog`], with decryption handles only for the datasets `open` picks: a
    /// dataset's key is derived only when its data is needed.
    pub(crate) async fn catalog_opening(
        &self,
        c: &Collaboration,
        open: impl Fn(&Dataset) -> bool,
    ) -> Result<(Arc<Catalog>, Vec<Dataset>), ServiceError> {
        let datasets: Vec<Dataset> = self
            .meta
            .list_datasets(c.id)
            .await?
            .into_iter()
            .filter(|d| d.status == DatasetStatus::Ready)
            .collect();
        let mut tables = Vec::with_capacity(datasets.len());
        for d in &datasets {
            let stored = self.meta.get_policy(d.id).await?;
            let (policy, has_policy, version) = match &stored {
                Some(s) => (
                    AnalysisPolicy::validate(&s.draft, &d.schema)
                        .map_err(|e| ServiceError::Internal(format!("stored policy: {e}")))?,
                    true,
                    s.version,
                ),
                None => (
                    AnalysisPolicy::validate(&PolicyDraft::default(), &d.schema)
                        .map_err(|e| ServiceError::Internal(format!("empty policy: {e}")))?,
                    false,
                    0,
                ),
            };
            let data = if open(d) {
                let key = self.dataset_key(c.id, d.id).await?;
                let files = self.files.clone();
                let (cid, did) = (c.id, d.id);
                Some(
                    tokio::task::spawn_blocking(move || files.open_dataset(cid, did, key))
                        .await
                        .map_err(|e| ServiceError::Internal(format!("open task: {e}")))??,
                )
            } else {
                None
            };
            tables.push(QueryTable {
                name: d.name.to_string(),
                dataset_id: d.id,
                owner: d.owner_org_name.clone(),
                schema: d.schema.clone(),
                policy,
                has_policy,
                policy_version: version,
                data,
                stats: None,
            });
        }
        Ok((Catalog::new(tables), datasets))
    }

    /// The privacy parameters of an analysis: the caller's or the owners' per-query defaults.
    /// Every owner touched with differential privacy on must have granted a budget.
    async fn privacy_request(
        &self,
        c: &Collaboration,
        catalog: &Catalog,
        touched: &BTreeSet<usize>,
        epsilon: Option<f64>,
        delta: Option<f64>,
        dry_run: bool,
    ) -> Result<PrivacyRequest, ServiceError> {
        let ledgers = self.meta.ledgers(c.id).await?;
        let mut eps_cap = f64::INFINITY;
        let mut delta_cap = f64::INFINITY;
        for &t in touched {
            let table = &catalog.tables[t];
            if !table.policy.differential_privacy {
                continue;
            }
            let Some(l) = ledgers.iter().find(|l| l.org_name == table.owner) else {
                // A dry run is priced at the defaults and says who has no budget yet.
                if dry_run {
                    continue;
                }
                return Err(ServiceError::BudgetExhausted(format!(
                    "{} has not granted a privacy budget in this collaboration: its data cannot be analysed until it does (`cleanroom budget grant`)",
                    table.owner
                )));
            };
            eps_cap = eps_cap.min(Epsilon::from_units(l.epsilon_per_query).as_f64());
            delta_cap = delta_cap.min(Delta::from_units(l.delta_per_query).as_f64());
        }
        let epsilon = epsilon.unwrap_or(if eps_cap.is_finite() { eps_cap } else { 1.0 });
        // The default delta is the cap's share that matches the epsilon asked for: spending a
        // fifth of the epsilon cap spends a fifth of the delta cap.
        let delta = delta.unwrap_or(if delta_cap.is_finite() {
            if eps_cap.is_finite() && epsilon < eps_cap {
                delta_cap * (epsilon / eps_cap)
            } else {
                delta_cap
            }
        } else {
            DEFAULT_DELTA
        });
        if !(epsilon.is_finite() && epsilon > 0.0) {
            return Err(ServiceError::InvalidInput(
                "epsilon must be a positive number".into(),
            ));
        }
        if !(delta.is_finite() && delta > 0.0 && delta < 1e-3) {
            return Err(ServiceError::InvalidInput(
                "delta must be above 0 and below 0.001".into(),
            ));
        }
        Ok(PrivacyRequest { epsilon, delta })
    }

    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        p: &Principal,
        c: &Collaboration,
        catalog: Arc<Catalog>,
        datasets: Vec<Dataset>,
        planned: Planned,
        receivers: &[String],
        dry_run: bool,
        action: &str,
    ) -> Result<AnalysisView, ServiceError> {
        let chain = c.id.to_string();
        let target = planned.kind;
        // Receivers: named members with the receive ability, allowed by every owner touched.
        let receivers = self
            .audited(
                self.receivers(p, c, &catalog, &planned.touched, receivers)
                    .await,
                &chain,
                &p.actor(),
                action,
                target,
            )
            .await?;
        // What it costs each owner.
        let costs = self
            .audited(
                owner_costs(&planned.plan, &catalog).map_err(query_error),
                &chain,
                &p.actor(),
                action,
                target,
            )
            .await?;
        let owner_ids: BTreeMap<OrgName, OrgId> = datasets
            .iter()
            .map(|d| (d.owner_org_name.clone(), d.owner_org_id))
            .collect();
        let ledgers = self.meta.ledgers(c.id).await?;
        let fingerprint = planned.plan.fingerprint(&catalog);
        // An identical analysis released before is answered from its release and spends
        // nothing, so it needs no budget left.
        let previous = if dry_run {
            None
        } else {
            self.meta.find_release(c.id, &fingerprint).await?
        };
        let mut charges = Vec::new();
        let mut charge_views = Vec::new();
        let mut budget_problems = Vec::new();
        for (org, cost) in &costs {
            if *cost == PrivacyCost::ZERO {
                continue;
            }
            let org_id = owner_ids[org];
            let ledger = ledgers.iter().find(|l| l.org_id == org_id);
            let check = match ledger {
                None => Err(ServiceError::BudgetExhausted(format!(
                    "{org} has not granted a privacy budget in this collaboration"
                ))),
                Some(l) => ledger_of(l)?
                    .charge(*cost)
                    .map(|_| ())
                    .map_err(|e| ServiceError::BudgetExhausted(format!("{org}'s budget: {e}"))),
            };
            if dry_run {
                if let Err(e) = check {
                    budget_problems.push(e.to_string());
                }
            } else if previous.is_none() {
                self.audited(check, &chain, &p.actor(), action, target)
                    .await?;
            }
            charges.push(Charge {
                org_id,
                epsilon: cost.epsilon.units(),
                delta: cost.delta.units(),
            });
            charge_views.push(ChargeView {
                org: org.clone(),
                epsilon: cost.epsilon.as_f64(),
                delta: cost.delta.as_f64(),
            });
        }
        let receiver_names: Vec<String> = receivers.iter().map(|o| o.to_string()).collect();
        let now = cleanroom_meta::now();
        if dry_run {
            let audit = Self::audit(
                &chain,
                &p.actor(),
                action,
                target,
                Outcome::Allowed,
                format!("dry run; would cost {}", describe_charges(&charge_views)),
            );
            self.meta.append_audit(audit).await?;
            return Ok(AnalysisView {
                id: String::new(),
                kind: planned.kind.to_owned(),
                request: planned.request,
                requested_by: p.actor(),
                status: "dry_run".into(),
                receivers: receiver_names,
                charges: charge_views,
                result: None,
                error: None,
                reused_from: None,
                created_at: now,
                finished_at: None,
                plan: Some(PlanView {
                    affordable: budget_problems.is_empty(),
                    budget_problems,
                    ..plan_view(&planned.plan, &catalog)
                }),
            });
        }
        let id = cleanroom_core::ids::AnalysisId::new().to_string();
        // An identical analysis released before: answer from it, spend nothing.
        if let Some(prev) = previous {
            let row = AnalysisRow {
                id: id.clone(),
                collaboration_id: c.id,
                org_id: p.org.id,
                actor: p.actor(),
                kind: planned.kind.to_owned(),
                request: planned.request.clone(),
                fingerprint,
                receivers: json!(receiver_names).to_string(),
                charges: "[]".into(),
                status: "released".into(),
                result: prev.result.clone(),
                error: None,
                reused_from: Some(prev.id.clone()),
                created_at: now.clone(),
                finished_at: Some(now),
            };
            let audit = Self::audit(
                &chain,
                &p.actor(),
                "analysis.release",
                &id,
                Outcome::Allowed,
                format!(
                    "identical to analysis {}: its stored result, no budget spent; to {}",
                    prev.id,
                    receiver_names.join(",")
                ),
            );
            self.meta.record_reuse(&row, audit).await?;
            return self.view(p, row);
        }
        // Debit every ledger and record the analysis, atomically, before reading any data.
        let row = AnalysisRow {
            id: id.clone(),
            collaboration_id: c.id,
            org_id: p.org.id,
            actor: p.actor(),
            kind: planned.kind.to_owned(),
            request: planned.request.clone(),
            fingerprint,
            receivers: json!(receiver_names).to_string(),
            charges: charges_json(&charge_views),
            status: "running".into(),
            result: None,
            error: None,
            reused_from: None,
            created_at: now,
            finished_at: None,
        };
        let charge_audit = Self::audit(
            &chain,
            &p.actor(),
            action,
            &id,
            Outcome::Allowed,
            format!(
                "{} over {}; charged {}",
                planned.kind,
                planned
                    .touched
                    .iter()
                    .map(|t| catalog.tables[*t].name.clone())
                    .collect::<Vec<_>>()
                    .join(","),
                describe_charges(&charge_views)
            ),
        );
        // The charge, the run and the record of its outcome happen in a task of their own: a
        // client that disconnects (the request future is dropped) cancels none of them, so no
        // analysis is left charged and `running`, and a failure after the charge keeps it.
        let room = self.clone();
        let (actor, action, target) = (p.actor(), action.to_owned(), target.to_owned());
        let c = c.clone();
        let task = tokio::spawn(async move {
            match room
                .meta
                .begin_analysis(&row, &charges, vec![charge_audit])
                .await
            {
                Ok(()) => {}
                Err(MetaError::BudgetExhausted(org)) => {
                    let who = owner_ids
                        .iter()
                        .find(|(_, id)| id.to_string() == org)
                        .map(|(n, _)| n.to_string())
                        .unwrap_or(org);
                    let e = ServiceError::BudgetExhausted(format!(
                        "{who}'s privacy budget cannot pay for this analysis (spent by a concurrent analysis)"
                    ));
                    return Err(room.refuse(&chain, &actor, &action, &target, e).await);
                }
                Err(e) => return Err(e.into()),
            }
            Self::run_and_record(
                room,
                c,
                planned.plan,
                planned.touched,
                row.id,
                actor,
                receiver_names,
            )
            .await
        });
        task.await
            .map_err(|e| ServiceError::Internal(format!("analysis task: {e}")))??;
        let row = self
            .meta
            .get_analysis(&id)
            .await?
            .ok_or_else(|| ServiceError::Internal("analysis vanished".into()))?;
        self.view(p, row)
    }

    /// Runs a charged analysis and records its release or its failure.
    async fn run_and_record(
        room: CleanRoom,
        c: Collaboration,
        plan: TemplatePlan,
        touched: BTreeSet<usize>,
        id: String,
        actor: String,
        receiver_names: Vec<String>,
    ) -> Result<(), ServiceError> {
        let chain = c.id.to_string();
        let outcome = async {
            let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
            let (data_catalog, _) = room.catalog(&c, true).await?;
            let data_catalog = room.with_stats(data_catalog, &touched, partitions).await?;
            templates::run(&plan, &data_catalog, partitions)
                .await
                .map_err(query_error)
        }
        .await;
        match outcome {
            Ok(output) => {
                let result = to_result(output);
                let encoded = crate::results::encode(&result);
                let audit = Self::audit(
                    &chain,
                    &actor,
                    "analysis.release",
                    &id,
                    Outcome::Allowed,
                    format!(
                        "released {} table(s) to {}",
                        result.tables.len(),
                        receiver_names.join(",")
                    ),
                );
                room.meta.finish_analysis(&id, Ok(&encoded), audit).await?;
                Ok(())
            }
            Err(e) => {
                // The cause goes to the server log (engine failures are already reduced to their
                // kind); everyone else gets a stable code and a fixed sentence.
                tracing::error!(analysis = %id, code = e.code(), error = %e, "a charged analysis failed");
                let public = match e {
                    ServiceError::Unavailable(_) => {
                        ServiceError::Unavailable(ANALYSIS_UNAVAILABLE.into())
                    }
                    _ => ServiceError::AnalysisFailed(ANALYSIS_FAILED.into()),
                };
                let stored = format!("{}: {public}", public.code());
                let audit = Self::audit(
                    &chain,
                    &actor,
                    "analysis.release",
                    &id,
                    public.audit_outcome(),
                    stored.clone(),
                );
                room.meta.finish_analysis(&id, Err(&stored), audit).await?;
                Err(public)
            }
        }
    }

    /// At start-up: analyses that were running when the server stopped are failed (their
    /// charges stay) and the failure is recorded in their collaboration's chain.
    pub(crate) async fn recover_analyses(&self) -> Result<(), ServiceError> {
        for row in self.meta.running_analyses().await? {
            let audit = Self::audit(
                &row.collaboration_id.to_string(),
                "server",
                "analysis.release",
                &row.id,
                Outcome::Failed,
                "interrupted by a server restart; nothing was released and the charge stays",
            );
            self.meta
                .finish_analysis(&row.id, Err("interrupted by a server restart"), audit)
                .await?;
        }
        Ok(())
    }

    /// The catalog with the exact multiplicities of the datasets touched, computed at their
    /// first analysis and kept (internal: they only let the rewrite skip no-op bounding).
    async fn with_stats(
        &self,
        catalog: Arc<Catalog>,
        touched: &BTreeSet<usize>,
        partitions: usize,
    ) -> Result<Arc<Catalog>, ServiceError> {
        let mut tables = catalog.tables.clone();
        for &t in touched {
            let table = &mut tables[t];
            let stored = self.meta.dataset_stats(table.dataset_id).await?;
            let stats = match stored.as_deref().map(decode_stats) {
                Some(Ok(s)) => s,
                _ => {
                    let s = cleanroom_query::rewrite::table_stats(table, partitions)
                        .await
                        .map_err(query_error)?;
                    self.meta
                        .set_dataset_stats(table.dataset_id, &encode_stats(&s))
                        .await?;
                    s
                }
            };
            table.stats = Some(stats);
        }
        Ok(Catalog::new(tables))
    }

    async fn receivers(
        &self,
        p: &Principal,
        c: &Collaboration,
        catalog: &Catalog,
        touched: &BTreeSet<usize>,
        requested: &[String],
    ) -> Result<Vec<OrgName>, ServiceError> {
        let names: Vec<OrgName> = if requested.is_empty() {
            vec![p.org.name.clone()]
        } else {
            let mut v = requested
                .iter()
                .map(|r| OrgName::parse(r.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            v.sort();
            v.dedup();
            v
        };
        let members = self.meta.list_members(c.id).await?;
        for r in &names {
            let m = members.iter().find(|m| &m.org_name == r);
            match m {
                Some(m)
                    if m.status == MemberStatus::Active
                        && m.abilities.contains(Ability::Receive) => {}
                _ => {
                    return Err(refused(
                        "receiver_not_allowed",
                        None,
                        format!("{r} is not an active member with the receive ability"),
                    ));
                }
            }
            for &t in touched {
                let table = &catalog.tables[t];
                if !table.policy.allows_receiver(r, &table.owner) {
                    return Err(refused(
                        "receiver_not_allowed",
                        None,
                        format!(
                            "the policy of {} does not allow {r} to receive results",
                            table.name
                        ),
                    ));
                }
            }
        }
        Ok(names)
    }

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
            id: row.id,
            kind: row.kind,
            request: row.request,
            requested_by: row.actor,
            status: row.status,
            receivers,
            charges: parse_charges(&row.charges)?,
            result,
            error: row.error,
            reused_from: row.reused_from,
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
        let (c, _) = self
            .active_member(p, collab, "analysis.show", id, None, false)
            .await?;
        let found = self
            .meta
            .get_analysis(id)
            .await?
            .filter(|r| r.collaboration_id == c.id)
            .filter(|r| {
                r.org_id == p.org.id || r.receivers.contains(&format!("\"{}\"", p.org.name))
            });
        match found {
            Some(row) => self.view(p, row),
            None => {
                let e = ServiceError::NotFound(format!("no analysis {id} that you may see"));
                Err(self
                    .refuse(&c.id.to_string(), &p.actor(), "analysis.show", id, e)
                    .await)
            }
        }
    }

    /// Analyses the caller's organisation requested or receives.
    pub async fn list_analyses(
        &self,
        p: &Principal,
        collab: &str,
    ) -> Result<Vec<AnalysisView>, ServiceError> {
        let (c, _) = self
            .active_member(p, collab, "analysis.list", "-", None, false)
            .await?;
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

fn encode_stats(s: &TableStats) -> String {
    json!({"max_rows_per_unit": s.max_rows_per_unit, "max_rows_per_key": s.max_rows_per_key})
        .to_string()
}

fn decode_stats(text: &str) -> Result<TableStats, ()> {
    let v: Value = serde_json::from_str(text).map_err(|_| ())?;
    Ok(TableStats {
        max_rows_per_unit: v["max_rows_per_unit"].as_u64().ok_or(())?,
        max_rows_per_key: v["max_rows_per_key"]
            .as_object()
            .ok_or(())?
            .iter()
            .map(|(k, n)| n.as_u64().map(|n| (k.clone(), n)).ok_or(()))
            .collect::<Result<_, ()>>()?,
    })
}

/// What the plan costs each owner: the sum over its datasets and the plan's parts.
fn owner_costs(
    plan: &TemplatePlan,
    catalog: &Catalog,
) -> Result<BTreeMap<OrgName, PrivacyCost>, QueryError> {
    let mut out: BTreeMap<OrgName, PrivacyCost> = BTreeMap::new();
    for (table, cost) in plan.costs() {
        let owner = catalog.tables[table].owner.clone();
        let e = out.entry(owner).or_insert(PrivacyCost::ZERO);
        *e = e.plus(cost)?;
    }
    Ok(out)
}

fn describe_charges(c: &[ChargeView]) -> String {
    if c.is_empty() {
        return "nothing (no differential privacy on the data touched)".into();
    }
    c.iter()
        .map(|c| format!("{} epsilon {:.6} delta {:e}", c.org, c.epsilon, c.delta))
        .collect::<Vec<_>>()
        .join("; ")
}

fn charges_json(c: &[ChargeView]) -> String {
    Value::Array(
        c.iter()
            .map(|c| json!({"org": c.org.as_str(), "epsilon": c.epsilon, "delta": c.delta}))
            .collect(),
    )
    .to_string()
}

fn parse_charges(s: &str) -> Result<Vec<ChargeView>, ServiceError> {
    let bad = || ServiceError::Internal("stored charges".into());
    let v: Value = serde_json::from_str(s).map_err(|_| bad())?;
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|c| {
            Ok(ChargeView {
                org: OrgName::parse(c["org"].as_str().ok_or_else(bad)?).map_err(|_| bad())?,
                epsilon: c["epsilon"].as_f64().ok_or_else(bad)?,
                delta: c["delta"].as_f64().ok_or_else(bad)?,
            })
        })
        .collect()
}

fn policy_summary(p: &AnalysisPolicy) -> String {
    format!(
        "join keys [{}]; dimensions [{}]; metrics [{}]; min group {}; rows per person {}; rows per key {}; differential privacy {}; sql {}; analysts [{}]; receivers [{}]",
        p.join_keys
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
        p.dimensions
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
        p.metrics
            .iter()
            .map(|m| format!("{} [{}, {}]", m.column, m.lower, m.upper))
            .collect::<Vec<_>>()
            .join(","),
        p.min_group_size,
        p.max_rows_per_unit,
        p.max_rows_per_key,
        if p.differential_privacy { "on" } else { "off" },
        if p.allow_sql {
            "allowed"
        } else {
            "templates only"
        },
        p.analysts
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join(","),
        p.receivers
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn plan_view(plan: &TemplatePlan, catalog: &Catalog) -> PlanView {
    let mut datasets: Vec<String> = plan
        .costs()
        .into_iter()
        .map(|(t, _)| catalog.tables[t].name.clone())
        .collect();
    datasets.sort();
    datasets.dedup();
    let request = plan.request();
    PlanView {
        datasets,
        epsilon: request.map(|r| r.epsilon),
        delta: request.map(|r| r.delta),
        notes: plan.describe(catalog),
        affordable: true,
        budget_problems: Vec::new(),
    }
}

fn to_result(output: TemplateOutput) -> AnalysisResult {
    AnalysisResult {
        tables: output
            .tables
            .into_iter()
            .map(
                |(name, released, visible_to): (String, Released, Option<OrgName>)| {
                    ResultTable::from_released(name, released, visible_to.map(|o| o.to_string()))
                },
            )
            .collect(),
        notes: output.notes,
    }
}
