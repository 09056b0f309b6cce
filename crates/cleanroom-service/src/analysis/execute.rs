//! From a plan to a release: receivers, prices, the atomic charge, the run and its record.

use super::*;
use cleanroom_core::audit::Action;
use cleanroom_meta::NewAudit;

/// How an analysis was asked for, beyond its plan.
pub(super) struct Submission<'a> {
    /// Organisations named to receive the result (empty: the requester's).
    pub receivers: &'a [String],
    pub dry_run: bool,
    /// The audit context of the request, in the collaboration's chain.
    pub ctx: AuditCtx,
}

/// A checked plan with the catalog it was checked against.
pub(super) struct Checked {
    pub catalog: Arc<Catalog>,
    pub datasets: Vec<Dataset>,
    pub planned: Planned,
}

/// What an analysis costs each owner.
#[derive(Default)]
struct Priced {
    charges: Vec<Charge>,
    views: Vec<ChargeView>,
    /// Dry runs only: why a budget could not pay.
    problems: Vec<String>,
}

/// An analysis ready to be charged.
struct Charged {
    row: AnalysisRow,
    charges: Vec<Charge>,
    audit: NewAudit,
    owner_ids: BTreeMap<OrgName, OrgId>,
    receiver_names: Vec<String>,
}

impl CleanRoom {
    /// Prices, charges and runs a checked plan (or, for a dry run, only prices it).
    pub(super) async fn execute(
        &self,
        p: &Principal,
        c: &Collaboration,
        checked: Checked,
        sub: Submission<'_>,
    ) -> Result<AnalysisView, ServiceError> {
        let Checked {
            catalog,
            datasets,
            planned,
        } = checked;
        // From here on refusals name the kind of analysis as their target.
        let ctx = sub.ctx.on(planned.kind);
        // Receivers: named members with the receive ability, allowed by every owner touched.
        let receivers = self
            .receivers(p, c, &catalog, &planned.touched, sub.receivers)
            .await;
        let receivers = self.audited(&ctx, receivers).await?;
        let receiver_names: Vec<String> = receivers.iter().map(|o| o.to_string()).collect();
        // What it costs each owner.
        let costs = owner_costs(&planned.plan, &catalog).map_err(query_error);
        let costs = self.audited(&ctx, costs).await?;
        let owner_ids: BTreeMap<OrgName, OrgId> = datasets
            .iter()
            .map(|d| (d.owner_org_name.clone(), d.owner_org_id))
            .collect();
        let fingerprint = planned.plan.fingerprint(&catalog);
        // An identical analysis released before is answered from its release and spends
        // nothing, so it needs no budget left.
        let previous = if sub.dry_run {
            None
        } else {
            self.meta.find_release(c.id, &fingerprint).await?
        };
        let owed: Vec<(OrgName, OrgId, PrivacyCost)> = costs
            .iter()
            .filter(|(_, cost)| **cost != PrivacyCost::ZERO)
            .map(|(org, cost)| (org.clone(), owner_ids[org], *cost))
            .collect();
        let priced = self
            .price(&ctx, c, &owed, sub.dry_run, previous.is_none())
            .await?;
        if sub.dry_run {
            return self
                .dry_run(p, &ctx, &planned, &catalog, priced, receiver_names)
                .await;
        }
        let id = AnalysisId::new();
        let now = cleanroom_meta::now();
        let release = AuditCtx::by(p, Action::AnalysisRelease, id.to_string()).in_chain(c.id);
        let mut row = AnalysisRow {
            id,
            collaboration_id: c.id,
            org_id: p.org.id,
            actor: p.actor(),
            kind: planned.kind.to_owned(),
            request: planned.request.clone(),
            fingerprint,
            receivers: json!(receiver_names).to_string(),
            charges: charges_json(&priced.views),
            status: AnalysisStatus::Running,
            result: None,
            error: None,
            reused_from: None,
            created_at: now.clone(),
            finished_at: None,
        };
        // An identical analysis released before: answer from it, spend nothing.
        if let Some(prev) = previous {
            row.charges = "[]".into();
            row.status = AnalysisStatus::Released;
            row.result = prev.result.clone();
            row.reused_from = Some(prev.id);
            row.finished_at = Some(now);
            let audit = release.entry(
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
        let charge_audit = ctx.on(id.to_string()).entry(
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
                describe_charges(&priced.views)
            ),
        );
        let charged = Charged {
            row,
            charges: priced.charges,
            audit: charge_audit,
            owner_ids,
            receiver_names,
        };
        self.charge_and_run(c, planned, charged, ctx, release)
            .await?;
        let row = self
            .meta
            .get_analysis(id)
            .await?
            .ok_or_else(|| ServiceError::Internal("analysis vanished".into()))?;
        self.view(p, row)
    }

    /// What each owner is charged (`owed`: owners with a non-zero cost). Outside a dry run, refuses (audited) when an owner's budget
    /// cannot pay — unless `must_pay` is false (an earlier release answers for free); a dry run
    /// collects the problems instead.
    async fn price(
        &self,
        ctx: &AuditCtx,
        c: &Collaboration,
        owed: &[(OrgName, OrgId, PrivacyCost)],
        dry_run: bool,
        must_pay: bool,
    ) -> Result<Priced, ServiceError> {
        let ledgers = self.meta.ledgers(c.id).await?;
        let mut priced = Priced::default();
        for (org, org_id, cost) in owed {
            let org_id = *org_id;
            let check = match ledgers.iter().find(|l| l.org_id == org_id) {
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
                    priced.problems.push(e.to_string());
                }
            } else if must_pay {
                self.audited(ctx, check).await?;
            }
            priced.charges.push(Charge {
                org_id,
                epsilon: cost.epsilon.units(),
                delta: cost.delta.units(),
            });
            priced.views.push(ChargeView {
                org: org.clone(),
                epsilon: cost.epsilon.as_f64(),
                delta: cost.delta.as_f64(),
            });
        }
        Ok(priced)
    }

    /// A dry run's answer: what the analysis would cost and whether the budgets can pay.
    async fn dry_run(
        &self,
        p: &Principal,
        ctx: &AuditCtx,
        planned: &Planned,
        catalog: &Catalog,
        priced: Priced,
        receivers: Vec<String>,
    ) -> Result<AnalysisView, ServiceError> {
        let detail = format!("dry run; would cost {}", describe_charges(&priced.views));
        self.record(ctx, Outcome::Allowed, detail).await?;
        Ok(AnalysisView {
            id: String::new(),
            kind: planned.kind.to_owned(),
            request: planned.request.clone(),
            requested_by: p.actor(),
            status: AnalysisStatus::DryRun,
            receivers,
            charges: priced.views,
            result: None,
            error: None,
            reused_from: None,
            created_at: cleanroom_meta::now(),
            finished_at: None,
            plan: Some(PlanView {
                affordable: priced.problems.is_empty(),
                budget_problems: priced.problems,
                ..plan_view(&planned.plan, catalog)
            }),
        })
    }

    /// Charges and runs in a task of its own: a client that disconnects (the request future is
    /// dropped) cancels none of it, so no analysis is left charged and `running`, and a
    /// failure after the charge keeps it. A refused charge is audited under `ctx`, the release
    /// or failure under `release`.
    async fn charge_and_run(
        &self,
        c: &Collaboration,
        planned: Planned,
        charged: Charged,
        ctx: AuditCtx,
        release: AuditCtx,
    ) -> Result<(), ServiceError> {
        let room = self.clone();
        let c = c.clone();
        let task = tokio::spawn(async move {
            let Charged {
                row,
                charges,
                audit,
                owner_ids,
                receiver_names,
            } = charged;
            match room.meta.begin_analysis(&row, &charges, vec![audit]).await {
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
                    return Err(room.refuse(&ctx, e).await);
                }
                Err(e) => return Err(e.into()),
            }
            Self::run_and_record(
                room,
                c,
                planned.plan,
                planned.touched,
                row.id,
                release,
                receiver_names,
            )
            .await
        });
        task.await
            .map_err(|e| ServiceError::Internal(format!("analysis task: {e}")))?
    }

    /// Runs a charged analysis and records its release or its failure.
    async fn run_and_record(
        room: CleanRoom,
        c: Collaboration,
        plan: TemplatePlan,
        touched: BTreeSet<usize>,
        id: AnalysisId,
        release: AuditCtx,
        receiver_names: Vec<String>,
    ) -> Result<(), ServiceError> {
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
                let audit = release.entry(
                    Outcome::Allowed,
                    format!(
                        "released {} table(s) to {}",
                        result.tables.len(),
                        receiver_names.join(",")
                    ),
                );
                room.meta.finish_analysis(id, Ok(&encoded), audit).await?;
                Ok(())
            }
            Err(e) => {
                // The cause goes to the server log (engine failures are already reduced to their
                // kind); everyone else gets a stable code and a fixed sentence.
                tracing::error!(analysis = %id, code = e.code(), error = %e, "a charged analysis failed");
                let public = match e {
                    // A fixed sentence of ours, naming no cause.
                    ServiceError::Unavailable(m) if m == ANALYSIS_CLUSTER_FAILED => {
                        ServiceError::Unavailable(m)
                    }
                    ServiceError::Unavailable(_) => {
                        ServiceError::Unavailable(ANALYSIS_UNAVAILABLE.into())
                    }
                    // Names the configured limit only.
                    ServiceError::MemoryLimit(m) => ServiceError::MemoryLimit(m),
                    _ => ServiceError::AnalysisFailed(ANALYSIS_FAILED.into()),
                };
                let stored = format!("{}: {public}", public.code());
                let audit = release.entry(public.audit_outcome(), stored.clone());
                room.meta.finish_analysis(id, Err(&stored), audit).await?;
                Err(public)
            }
        }
    }

    /// At start-up: analyses that were running when the server stopped are failed (their
    /// charges stay) and the failure is recorded in their collaboration's chain.
    pub(crate) async fn recover_analyses(
        &self,
        orphaned: cleanroom_meta::Orphaned,
    ) -> Result<(), ServiceError> {
        for row in self.meta.running_analyses(orphaned).await? {
            let audit = AuditCtx::system("server", Action::AnalysisRelease, row.id.to_string())
                .in_chain(row.collaboration_id)
                .entry(
                    Outcome::Failed,
                    "interrupted: its server stopped; nothing was released and the charge stays",
                );
            let done = self
                .meta
                .finish_analysis(row.id, Err("interrupted: its server stopped"), audit)
                .await;
            match done {
                Ok(()) | Err(cleanroom_meta::MetaError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
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
