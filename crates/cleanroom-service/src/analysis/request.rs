//! From a request to a plan: who may run it, on which datasets, at what privacy parameters.

use super::execute::{Checked, Submission};
use super::*;
use cleanroom_core::audit::Action;

impl CleanRoom {
    /// Checks, prices and (unless a dry run) runs a SQL analysis.
    pub async fn run_query(
        &self,
        p: &Principal,
        collab: &str,
        req: QueryRequest,
    ) -> Result<AnalysisView, ServiceError> {
        let ctx = AuditCtx::by(p, Action::AnalysisQuery, "sql");
        let need = Need::open_with(Ability::Analyse);
        let (c, _, ctx) = self.active_member(p, collab, ctx, need).await?;
        let (catalog, datasets) = self.catalog(&c, false).await?;
        let spec = cleanroom_query::check::check(&req.sql, &catalog)
            .await
            .map_err(query_error);
        let spec = self.audited(&ctx, spec).await?;
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
                return Err(self.refuse(&ctx, e).await);
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
                return Err(self.refuse(&ctx, e).await);
            }
        }
        let request = self
            .privacy_request(&c, &catalog, &touched, req.epsilon, req.delta, req.dry_run)
            .await;
        let request = self.audited(&ctx, request).await?;
        let analysis = cleanroom_query::prepare_spec(spec, &catalog, request).map_err(query_error);
        let analysis = self.audited(&ctx, analysis).await?;
        let planned = Planned {
            kind: "sql",
            request: req.sql.clone(),
            touched,
            plan: TemplatePlan::single("result", analysis),
        };
        let checked = Checked {
            catalog,
            datasets,
            planned,
        };
        let sub = Submission {
            receivers: &req.receivers,
            dry_run: req.dry_run,
            ctx,
        };
        self.execute(p, &c, checked, sub).await
    }

    /// Checks, prices and (unless a dry run) runs a template analysis.
    pub async fn run_template(
        &self,
        p: &Principal,
        collab: &str,
        req: TemplateRequest,
    ) -> Result<AnalysisView, ServiceError> {
        let ctx = AuditCtx::by(p, Action::AnalysisTemplate, req.template.as_str());
        let need = Need::open_with(Ability::Analyse);
        let (c, _, ctx) = self.active_member(p, collab, ctx, need).await?;
        let info = templates::find(&req.template, req.version).map_err(query_error);
        let info = self.audited(&ctx, info).await?;
        let (catalog, datasets) = self.catalog(&c, false).await?;
        // The datasets the template would touch, from its parameters.
        let touched = templates::datasets(&info, &req.params, &catalog).map_err(query_error);
        let touched = self.audited(&ctx, touched).await?;
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
                return Err(self.refuse(&ctx, e).await);
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
                return Err(self.refuse(&ctx, e).await);
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
                return Err(self.refuse(&ctx, e).await);
            }
        }
        let request = self
            .privacy_request(&c, &catalog, &touched, req.epsilon, req.delta, req.dry_run)
            .await;
        let request = self.audited(&ctx, request).await?;
        let plan = templates::plan(&info, &req.params, &catalog, request)
            .await
            .map_err(query_error);
        let plan = self.audited(&ctx, plan).await?;
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
        let checked = Checked {
            catalog,
            datasets,
            planned,
        };
        let sub = Submission {
            receivers: &req.receivers,
            dry_run: req.dry_run,
            ctx,
        };
        self.execute(p, &c, checked, sub).await
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
}
