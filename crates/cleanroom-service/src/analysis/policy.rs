//! Policies, budgets and template approvals: what data owners decide.

use super::*;
use cleanroom_core::audit::Action;

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
        let ctx = AuditCtx::by(p, Action::PolicySet, dataset);
        let (c, _, ctx) = self.active_member(p, collab, ctx, Need::open()).await?;
        let d = self.find_dataset(&c, p, dataset, &ctx).await?;
        if d.owner_org_id != p.org.id {
            let e = ServiceError::Forbidden(
                "only the organisation that owns a dataset may set its policy".into(),
            );
            return Err(self.refuse(&ctx, e).await);
        }
        let policy = self
            .audited(&ctx, AnalysisPolicy::validate(&draft, &d.schema))
            .await?;
        let audit = ctx.entry(Outcome::Allowed, policy_summary(&policy));
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
        let ctx = AuditCtx::by(p, Action::PolicyShow, dataset);
        let (c, _, ctx) = self.active_member(p, collab, ctx, Need::read()).await?;
        let d = self.find_dataset(&c, p, dataset, &ctx).await?;
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
        let ctx = AuditCtx::by(p, Action::BudgetGrant, p.org.name.as_str());
        let (c, _, ctx) = self.active_member(p, collab, ctx, Need::open()).await?;
        if !p.is_admin() {
            let e = ServiceError::Forbidden(
                "only an admin of your organisation may grant privacy budget".into(),
            );
            return Err(self.refuse(&ctx, e).await);
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
        let g = self.audited(&ctx, parsed).await?;
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
        let audit = ctx.entry(Outcome::Allowed, detail);
        let row = self.meta.grant_budget(c.id, p.org.id, g, audit).await?;
        Ok(budget_view(&row))
    }

    /// Every organisation's ledger in the collaboration (amounts only), for active members.
    pub async fn budgets(
        &self,
        p: &Principal,
        collab: &str,
    ) -> Result<Vec<BudgetView>, ServiceError> {
        let ctx = AuditCtx::by(p, Action::BudgetShow, "-");
        let (c, _, _) = self.active_member(p, collab, ctx, Need::read()).await?;
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
            Action::TemplateApprove
        } else {
            Action::TemplateRevoke
        };
        let ctx = AuditCtx::by(p, action, dataset);
        let (c, _, ctx) = self.active_member(p, collab, ctx, Need::open()).await?;
        let d = self.find_dataset(&c, p, dataset, &ctx).await?;
        let ctx = ctx.on(format!("{template} on {dataset}"));
        if d.owner_org_id != p.org.id {
            let e = ServiceError::Forbidden(
                "only the organisation that owns a dataset may approve templates on it".into(),
            );
            return Err(self.refuse(&ctx, e).await);
        }
        let info = templates::find(template, version).map_err(query_error);
        let info = self.audited(&ctx, info).await?;
        let row = ApprovalRow {
            dataset_id: d.id,
            template: info.name.to_owned(),
            version: info.version,
            approved_by: p.actor(),
            approved_at: cleanroom_meta::now(),
        };
        let audit = ctx.entry(
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
            Err(e @ (MetaError::Conflict(_) | MetaError::NotFound(_))) => {
                Err(self.refuse(&ctx, e.into()).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Template approvals in the collaboration, for active members.
    pub async fn template_approvals(
        &self,
        p: &Principal,
        collab: &str,
    ) -> Result<Vec<ApprovalView>, ServiceError> {
        let ctx = AuditCtx::by(p, Action::TemplateApprovals, "-");
        let (c, _, _) = self.active_member(p, collab, ctx, Need::read()).await?;
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
