//! Activation: a partner receives the matched segment of an owner's dataset as **its own**
//! record identifiers.
//!
//! The owner's policy lists the partners allowed to ask, the minimum segment size (in people
//! of the owner's dataset) and the dimensions a segment may be narrowed by. The path:
//! the partner asks (checked against the owner's current policy, audited) → the owner
//! approves or rejects → the partner downloads once: the approval is used (one conditional
//! update, so two racing downloads cannot both use it) before any data is read, the request
//! is checked again against the current policy and memberships, the match is computed inside
//! the server (`cleanroom_query::segment`, a join the room builds itself, never SQL), and
//! either the partner's own identifiers are delivered or the request is refused as too small
//! without saying by how much. Every step, refusals included, is in the collaboration's chain.
//!
//! Nothing of the owner's dataset is returned: not its keys, persons or attributes. What the
//! partner learns is which of its own identifiers match the (narrowed) segment, which is the
//! purpose of an activation and what the owner approves.

use cleanroom_core::audit::Action;
use std::collections::BTreeMap;

use cleanroom_core::audit::Outcome;
use cleanroom_core::entities::{Collaboration, Dataset};
use cleanroom_core::ids::ActivationId;
use cleanroom_core::names::{DatasetName, OrgName};
use cleanroom_core::party::{Ability, ActivationStatus, DatasetStatus, MemberStatus};
use cleanroom_core::policy::{ActivationRule, AnalysisPolicy};
use cleanroom_core::schema::ColumnRole;
use cleanroom_meta::{ActivationMove, ActivationRow, MetaError};
use cleanroom_query::segment::{self, SegmentRequest};
use serde_json::{Value, json};

use crate::ServiceError;
use crate::room::{AuditCtx, CleanRoom, Need, Principal, stored_id};

/// Longest filter value accepted (a dimension value, not free text).
pub const MAX_FILTER_VALUE_CHARS: usize = 256;

/// What a partner asks for.
#[derive(Debug, Clone, Default)]
pub struct ActivationRequest {
    /// The owner's dataset whose segment is matched.
    pub source: String,
    /// The partner's own dataset whose identifiers are delivered.
    pub target: String,
    /// `column` (same name on both sides) or `source_column:target_column`.
    pub key: String,
    /// `dimension → value` conditions on the source (each dimension allowed by the rule).
    pub filter: BTreeMap<String, String>,
    /// The identifier column of the target whose values are delivered.
    pub output: String,
}

/// An activation as the partner and the source's owner see it (nobody else sees it).
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationView {
    pub id: String,
    pub partner: OrgName,
    pub requested_by: String,
    pub source: DatasetName,
    pub source_owner: OrgName,
    pub target: DatasetName,
    pub source_key: String,
    pub target_key: String,
    pub filter: BTreeMap<String, String>,
    pub output: String,
    /// The source policy version the request was checked against when made.
    pub policy_version: u32,
    pub status: ActivationStatus,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    /// How many of the partner's identifiers were delivered.
    pub delivered: Option<u64>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// A delivered segment: distinct values of the partner's own column, in ascending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub activation: String,
    /// The target's identifier column the values come from.
    pub column: String,
    pub ids: Vec<String>,
}

/// The request as stored (JSON, interpreted only here).
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    source_key: String,
    target_key: String,
    filter: BTreeMap<String, String>,
    output: String,
}

impl Stored {
    fn encode(&self) -> String {
        json!({
            "source_key": self.source_key,
            "target_key": self.target_key,
            "filter": self.filter,
            "output": self.output,
        })
        .to_string()
    }

    fn decode(s: &str) -> Result<Self, ServiceError> {
        let bad = || ServiceError::Internal("stored activation request".into());
        let v: Value = serde_json::from_str(s).map_err(|_| bad())?;
        let text = |k: &str| v[k].as_str().map(str::to_owned).ok_or_else(bad);
        Ok(Stored {
            source_key: text("source_key")?,
            target_key: text("target_key")?,
            output: text("output")?,
            filter: v["filter"]
                .as_object()
                .ok_or_else(bad)?
                .iter()
                .map(|(k, x)| {
                    x.as_str()
                        .map(|x| (k.clone(), x.to_owned()))
                        .ok_or_else(bad)
                })
                .collect::<Result<_, _>>()?,
        })
    }

    fn describe(&self) -> String {
        let dims: Vec<&str> = self.filter.keys().map(String::as_str).collect();
        format!(
            "key {}:{}; filter on [{}]; output {}",
            self.source_key,
            self.target_key,
            dims.join(","),
            self.output
        )
    }
}

fn refused(rule: &str, column: Option<&str>, message: impl Into<String>) -> ServiceError {
    ServiceError::PolicyRefused {
        rule: rule.to_owned(),
        column: column.map(str::to_owned),
        message: message.into(),
    }
}

fn not_approved(status: ActivationStatus) -> ServiceError {
    ServiceError::GrantState {
        code: "activation_not_approved",
        message: format!(
            "the activation is {status}: only an approved activation can be downloaded"
        ),
    }
}

fn consumed() -> ServiceError {
    ServiceError::GrantState {
        code: "activation_consumed",
        message: "the approval of this activation has been used: each approval allows one \
                  download; ask again"
            .into(),
    }
}

/// What a checked request resolves to.
struct Checked {
    source: Dataset,
    target: Dataset,
    policy_version: u32,
    rule: ActivationRule,
}

impl CleanRoom {
    /// Checks a request by `partner` against the current policy of the source and the current
    /// memberships. Every refusal is decided from names, roles and policies, never from data.
    async fn check_activation(
        &self,
        c: &Collaboration,
        partner: &OrgName,
        source: &str,
        target: &str,
        req: &Stored,
    ) -> Result<Checked, ServiceError> {
        let datasets = self.meta.list_datasets(c.id).await?;
        let ready = |name: &str| {
            datasets
                .iter()
                .find(|d| d.name.as_str() == name && d.status == DatasetStatus::Ready)
                .cloned()
        };
        let Some(src) = ready(source) else {
            return Err(ServiceError::NotFound(format!(
                "no uploaded dataset named {source} in this collaboration"
            )));
        };
        let members = self.meta.list_members(c.id).await?;
        let receives = members.iter().any(|m| {
            &m.org_name == partner
                && m.status == MemberStatus::Active
                && m.abilities.contains(Ability::Receive)
        });
        if !receives {
            return Err(refused(
                "activation_not_allowed",
                None,
                format!("{partner} is not an active member with the receive ability"),
            ));
        }
        let stored = self.meta.get_policy(src.id).await?;
        let policy = match &stored {
            Some(s) => Some(
                AnalysisPolicy::validate(&s.draft, &src.schema)
                    .map_err(|e| ServiceError::Internal(format!("stored policy: {e}")))?,
            ),
            None => None,
        };
        if &src.owner_org_name == partner {
            return Err(refused(
                "activation_not_allowed",
                None,
                "a segment of your own dataset is not an activation",
            ));
        }
        let Some((policy, rule)) = policy.and_then(|p| p.activation.clone().map(|r| (p, r))) else {
            return Err(refused(
                "activation_not_allowed",
                None,
                format!("the policy of {} has no activation rule", src.name),
            ));
        };
        if !rule.allows_partner(partner) {
            return Err(refused(
                "activation_not_allowed",
                None,
                format!(
                    "the policy of {} does not list {partner} among its activation partners",
                    src.name
                ),
            ));
        }
        let Some(tgt) = ready(target) else {
            return Err(ServiceError::NotFound(format!(
                "no uploaded dataset named {target} in this collaboration"
            )));
        };
        if &tgt.owner_org_name != partner {
            return Err(refused(
                "target_not_own",
                None,
                "the target must be a dataset your organisation owns: segments are delivered \
                 only as your own identifiers",
            ));
        }
        if !policy.is_join_key(&req.source_key) {
            return Err(refused(
                "key_not_allowed",
                Some(req.source_key.as_str()),
                format!(
                    "{} is not a join key in the policy of {}",
                    req.source_key, src.name
                ),
            ));
        }
        for (col, what) in [
            (&req.target_key, "key_not_allowed"),
            (&req.output, "output_not_identifier"),
        ] {
            if tgt.schema.column(col).map(|c| c.role) != Some(ColumnRole::Identifier) {
                return Err(refused(
                    what,
                    Some(col.as_str()),
                    format!("{col} is not an identifier column of {}", tgt.name),
                ));
            }
        }
        for (dim, value) in &req.filter {
            if !rule.allows_dimension(dim) {
                return Err(refused(
                    "dimension_not_allowed",
                    Some(dim.as_str()),
                    format!(
                        "the activation rule of {} does not allow filtering by {dim}",
                        src.name
                    ),
                ));
            }
            if value.chars().count() > MAX_FILTER_VALUE_CHARS {
                return Err(ServiceError::InvalidInput(format!(
                    "filter value too long: at most {MAX_FILTER_VALUE_CHARS} characters"
                )));
            }
        }
        Ok(Checked {
            source: src,
            target: tgt,
            policy_version: stored.map_or(0, |s| s.version),
            rule,
        })
    }

    /// The activation `id` in `c`, if the caller's organisation is its partner or the owner of
    /// its source; otherwise the same `not found` as for an id that names nothing, audited
    /// under `ctx` without the id.
    async fn visible_activation(
        &self,
        p: &Principal,
        c: &Collaboration,
        id: &str,
        ctx: &AuditCtx,
    ) -> Result<(ActivationRow, Vec<Dataset>), ServiceError> {
        let datasets = self.meta.list_datasets(c.id).await?;
        let found = match stored_id::<ActivationId>(id) {
            Some(id) => self.meta.get_activation(id).await?,
            None => None,
        }
        .filter(|r| r.collaboration_id == c.id)
        .filter(|r| {
            r.org_id == p.org.id
                || datasets
                    .iter()
                    .any(|d| d.id == r.source_dataset_id && d.owner_org_id == p.org.id)
        });
        match found {
            Some(r) => Ok((r, datasets)),
            None => {
                let e = ServiceError::NotFound(format!("no activation {id} that you may see"));
                Err(self.refuse(&ctx.on("-"), e).await)
            }
        }
    }

    fn activation_view(
        &self,
        r: &ActivationRow,
        datasets: &[Dataset],
        members: &[cleanroom_core::entities::Membership],
    ) -> Result<ActivationView, ServiceError> {
        let ds = |id| {
            datasets
                .iter()
                .find(|d| d.id == id)
                .ok_or_else(|| ServiceError::Internal("activation without its dataset".into()))
        };
        let (src, tgt) = (ds(r.source_dataset_id)?, ds(r.target_dataset_id)?);
        let partner = members
            .iter()
            .find(|m| m.org_id == r.org_id)
            .map(|m| m.org_name.clone())
            .unwrap_or_else(|| tgt.owner_org_name.clone());
        let s = Stored::decode(&r.request)?;
        Ok(ActivationView {
            id: r.id.to_string(),
            partner,
            requested_by: r.actor.clone(),
            source: src.name.clone(),
            source_owner: src.owner_org_name.clone(),
            target: tgt.name.clone(),
            source_key: s.source_key,
            target_key: s.target_key,
            filter: s.filter,
            output: s.output,
            policy_version: r.policy_version,
            status: r.status,
            decided_by: r.decided_by.clone(),
            decided_at: r.decided_at.clone(),
            delivered: r.delivered,
            created_at: r.created_at.clone(),
            finished_at: r.finished_at.clone(),
        })
    }

    /// Checks a stored activation again, audited under `ctx`: what is approved or downloaded
    /// is what the owner's policy and the memberships allow now, not when it was asked for.
    async fn recheck(
        &self,
        c: &Collaboration,
        ctx: &AuditCtx,
        row: &ActivationRow,
        view: &ActivationView,
    ) -> Result<(Stored, Checked), ServiceError> {
        let stored = Stored::decode(&row.request)?;
        let checked = self
            .check_activation(
                c,
                &view.partner,
                view.source.as_str(),
                view.target.as_str(),
                &stored,
            )
            .await;
        let checked = self.audited(ctx, checked).await?;
        Ok((stored, checked))
    }

    /// A partner asks for the segment of an owner's dataset matched against its own dataset.
    /// The activation waits for the owner's approval.
    pub async fn request_activation(
        &self,
        p: &Principal,
        collab: &str,
        req: ActivationRequest,
    ) -> Result<ActivationView, ServiceError> {
        let ctx = AuditCtx::by(p, Action::ActivationRequest, req.source.as_str());
        let need = Need::open_with(Ability::Receive);
        let (c, _, ctx) = self.active_member(p, collab, ctx, need).await?;
        let (source_key, target_key) = match req.key.split_once(':') {
            Some((s, t)) => (s.trim().to_owned(), t.trim().to_owned()),
            None => (req.key.trim().to_owned(), req.key.trim().to_owned()),
        };
        let stored = Stored {
            source_key,
            target_key,
            filter: req
                .filter
                .iter()
                .map(|(k, v)| (k.trim().to_owned(), v.clone()))
                .collect(),
            output: req.output.trim().to_owned(),
        };
        let checked = self
            .check_activation(&c, &p.org.name, &req.source, &req.target, &stored)
            .await;
        let checked = self.audited(&ctx, checked).await?;
        let row = ActivationRow {
            id: ActivationId::new(),
            collaboration_id: c.id,
            org_id: p.org.id,
            actor: p.actor(),
            source_dataset_id: checked.source.id,
            target_dataset_id: checked.target.id,
            request: stored.encode(),
            policy_version: checked.policy_version,
            status: ActivationStatus::Pending,
            decided_by: None,
            decided_at: None,
            delivered: None,
            created_at: cleanroom_meta::now(),
            finished_at: None,
        };
        let audit = ctx.on(row.id.to_string()).entry(
            Outcome::Allowed,
            format!(
                "segment of {} (policy v{}) as {}'s identifiers from {}; {}; waiting for {}",
                checked.source.name,
                checked.policy_version,
                p.org.name,
                checked.target.name,
                stored.describe(),
                checked.source.owner_org_name
            ),
        );
        self.meta.create_activation(&row, audit).await?;
        let members = self.meta.list_members(c.id).await?;
        self.activation_view(&row, &[checked.source, checked.target], &members)
    }

    /// The owner of the source approves (or rejects) a pending activation. An approval allows
    /// exactly one download.
    pub async fn decide_activation(
        &self,
        p: &Principal,
        collab: &str,
        id: &str,
        approve: bool,
    ) -> Result<ActivationView, ServiceError> {
        let action = if approve {
            Action::ActivationApprove
        } else {
            Action::ActivationReject
        };
        let ctx = AuditCtx::by(p, action, id);
        let (c, _, ctx) = self.active_member(p, collab, ctx, Need::open()).await?;
        let (row, datasets) = self.visible_activation(p, &c, id, &ctx).await?;
        let src = datasets
            .iter()
            .find(|d| d.id == row.source_dataset_id)
            .ok_or_else(|| ServiceError::Internal("activation without its source".into()))?;
        if src.owner_org_id != p.org.id {
            let e = ServiceError::Forbidden(
                "only the organisation that owns the source dataset may decide on an activation"
                    .into(),
            );
            return Err(self.refuse(&ctx, e).await);
        }
        let members = self.meta.list_members(c.id).await?;
        let view = self.activation_view(&row, &datasets, &members)?;
        let mut detail = format!("{} for {}", view.source, view.partner);
        if approve {
            // The owner approves what its policy allows today.
            let (_, checked) = self.recheck(&c, &ctx, &row, &view).await?;
            detail = format!(
                "{detail}; one download; minimum segment {} people",
                checked.rule.min_segment_size
            );
        }
        let actor = p.actor();
        let mv = ActivationMove {
            from: ActivationStatus::Pending,
            to: if approve {
                ActivationStatus::Approved
            } else {
                ActivationStatus::Rejected
            },
            decided_by: Some(&actor),
            delivered: None,
            finished: !approve,
        };
        let audit = ctx.entry(Outcome::Allowed, detail);
        match self.meta.move_activation(row.id, mv, audit).await {
            Ok(()) => {}
            Err(MetaError::Conflict(_)) => {
                let e = ServiceError::Conflict(format!(
                    "the activation is {}, not pending: it was decided already",
                    row.status
                ));
                return Err(self.refuse(&ctx, e).await);
            }
            Err(e) => return Err(e.into()),
        }
        let row = self
            .meta
            .get_activation(row.id)
            .await?
            .ok_or_else(|| ServiceError::Internal("activation vanished".into()))?;
        self.activation_view(&row, &datasets, &members)
    }

    /// The partner downloads its approved segment: once. The approval is used before any data
    /// is read; a segment below the owner's minimum is refused (`segment_too_small`) without
    /// its size.
    pub async fn download_segment(
        &self,
        p: &Principal,
        collab: &str,
        id: &str,
    ) -> Result<Segment, ServiceError> {
        let ctx = AuditCtx::by(p, Action::ActivationDownload, id);
        let need = Need::open_with(Ability::Receive);
        let (c, _, ctx) = self.active_member(p, collab, ctx, need).await?;
        let (row, datasets) = self.visible_activation(p, &c, id, &ctx).await?;
        if row.org_id != p.org.id {
            let e = ServiceError::Forbidden(
                "only the organisation that asked for an activation may download it".into(),
            );
            return Err(self.refuse(&ctx, e).await);
        }
        let state = match row.status {
            ActivationStatus::Approved => None,
            s @ (ActivationStatus::Pending | ActivationStatus::Rejected) => Some(not_approved(s)),
            _ => Some(consumed()),
        };
        if let Some(e) = state {
            return Err(self.refuse(&ctx, e).await);
        }
        let members = self.meta.list_members(c.id).await?;
        let view = self.activation_view(&row, &datasets, &members)?;
        // Policies and memberships may have changed since the approval: check again.
        let (stored, checked) = self.recheck(&c, &ctx, &row, &view).await?;
        let claim = ActivationMove {
            from: ActivationStatus::Approved,
            to: ActivationStatus::Consumed,
            decided_by: None,
            delivered: None,
            finished: false,
        };
        let audit = ctx.entry(Outcome::Allowed, "approval used; matching");
        let deliver = AuditCtx::by(p, Action::ActivationDeliver, id).in_chain(c.id);
        // Use the approval and match in a task of its own: a client that disconnects drops the
        // request, not the claim, the match or the record of its outcome, so the activation is
        // never left `consumed` without an outcome until a restart.
        let room = self.clone();
        let activation = row.id;
        let task = tokio::spawn(async move {
            match room.meta.move_activation(activation, claim, audit).await {
                Ok(()) => {}
                Err(MetaError::Conflict(_)) => return Err(room.refuse(&ctx, consumed()).await),
                Err(e) => return Err(e.into()),
            }
            Self::match_and_record(room, c, checked, stored, activation, deliver).await
        });
        let ids = task
            .await
            .map_err(|e| ServiceError::Internal(format!("activation task: {e}")))??;
        Ok(Segment {
            activation: id.to_owned(),
            column: view.output,
            ids,
        })
    }

    /// At start-up: an activation whose approval was used but whose outcome was never
    /// recorded was cut off by a stop while matching. Its identifiers are sent only after
    /// `delivered` is recorded, so nothing reached the partner: it is recorded as failed, in
    /// its collaboration's chain, and the approval stays used (once per approval, even
    /// across a crash); the partner asks again.
    pub(crate) async fn recover_activations(
        &self,
        orphaned: cleanroom_meta::Orphaned,
    ) -> Result<(), ServiceError> {
        for row in self.meta.consumed_activations(orphaned).await? {
            let audit = AuditCtx::system("server", Action::ActivationDeliver, row.id.to_string())
                .in_chain(row.collaboration_id)
                .entry(
                    Outcome::Failed,
                    "interrupted while matching: its server stopped; nothing was delivered and the approval stays used",
                );
            let mv = ActivationMove {
                from: ActivationStatus::Consumed,
                to: ActivationStatus::Failed,
                decided_by: None,
                delivered: None,
                finished: true,
            };
            match self.meta.move_activation(row.id, mv, audit).await {
                Ok(()) | Err(MetaError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Matches a claimed activation and records its delivery, or why nothing was delivered,
    /// under `deliver`.
    async fn match_and_record(
        room: CleanRoom,
        c: Collaboration,
        checked: Checked,
        stored: Stored,
        id: ActivationId,
        deliver: AuditCtx,
    ) -> Result<Vec<String>, ServiceError> {
        let min = checked.rule.min_segment_size;
        let outcome = async {
            let (source, target) = (checked.source.id, checked.target.id);
            let (catalog, _) = room
                .catalog_opening(&c, |d| d.id == source || d.id == target)
                .await?;
            let table = |d: &Dataset| {
                catalog
                    .tables
                    .iter()
                    .find(|t| t.dataset_id == d.id)
                    .ok_or_else(|| ServiceError::Internal("dataset left the catalog".into()))
            };
            let filters: Vec<(String, String)> = stored.filter.clone().into_iter().collect();
            let req = SegmentRequest {
                source: table(&checked.source)?,
                source_key: &stored.source_key,
                filters: &filters,
                target: table(&checked.target)?,
                target_key: &stored.target_key,
                output: &stored.output,
            };
            let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
            let people = segment::matched_people(&req, partitions)
                .await
                .map_err(crate::analysis::query_error)?;
            if people < u64::from(min) {
                return Ok(None);
            }
            segment::segment_ids(&req, partitions)
                .await
                .map(Some)
                .map_err(crate::analysis::query_error)
        }
        .await;
        let done = |to: ActivationStatus, delivered: Option<u64>| ActivationMove {
            from: ActivationStatus::Consumed,
            to,
            decided_by: None,
            delivered,
            finished: true,
        };
        match outcome {
            Ok(Some(ids)) => {
                let n = ids.len() as u64;
                let audit = deliver.entry(
                    Outcome::Allowed,
                    format!(
                        "delivered {n} identifier(s) of {}.{}; the segment has at least {min} people of {}",
                        checked.target.name, stored.output, checked.source.name
                    ),
                );
                room.meta
                    .move_activation(id, done(ActivationStatus::Delivered, Some(n)), audit)
                    .await?;
                Ok(ids)
            }
            Ok(None) => {
                let e = refused(
                    "segment_too_small",
                    None,
                    format!(
                        "the segment stands for fewer than {min} people of {}, the minimum its owner set; nothing was delivered and the approval is used",
                        checked.source.name
                    ),
                );
                let audit = deliver.entry(e.audit_outcome(), e.audit_detail());
                room.meta
                    .move_activation(id, done(ActivationStatus::TooSmall, None), audit)
                    .await?;
                Err(e)
            }
            Err(e) => {
                let audit = deliver.entry(
                    e.audit_outcome(),
                    format!("{}; the approval stays used", e.audit_detail()),
                );
                room.meta
                    .move_activation(id, done(ActivationStatus::Failed, None), audit)
                    .await?;
                Err(e)
            }
        }
    }

    /// One activation, for its partner or the owner of its source.
    pub async fn get_activation(
        &self,
        p: &Principal,
        collab: &str,
        id: &str,
    ) -> Result<ActivationView, ServiceError> {
        let ctx = AuditCtx::by(p, Action::ActivationShow, id);
        let (c, _, ctx) = self.active_member(p, collab, ctx, Need::read()).await?;
        let (row, datasets) = self.visible_activation(p, &c, id, &ctx).await?;
        let members = self.meta.list_members(c.id).await?;
        self.activation_view(&row, &datasets, &members)
    }

    /// Activations the caller's organisation asked for or decides on.
    pub async fn list_activations(
        &self,
        p: &Principal,
        collab: &str,
    ) -> Result<Vec<ActivationView>, ServiceError> {
        let ctx = AuditCtx::by(p, Action::ActivationList, "-");
        let (c, _, _) = self.active_member(p, collab, ctx, Need::read()).await?;
        let datasets = self.meta.list_datasets(c.id).await?;
        let members = self.meta.list_members(c.id).await?;
        self.meta
            .list_activations(c.id)
            .await?
            .iter()
            .filter(|r| {
                r.org_id == p.org.id
                    || datasets
                        .iter()
                        .any(|d| d.id == r.source_dataset_id && d.owner_org_id == p.org.id)
            })
            .map(|r| self.activation_view(r, &datasets, &members))
            .collect()
    }
}
