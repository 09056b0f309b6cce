//! The audit context of every use case, its helpers (append, refuse, record a rejection) and
//! reading a chain.

use cleanroom_core::audit::Action;
use cleanroom_core::audit::{AuditEntry, ChainHead, Outcome, SYSTEM_CHAIN};
use cleanroom_core::ids::CollaborationId;
use cleanroom_core::party::MemberStatus;
use cleanroom_meta::NewAudit;

use super::*;
use crate::ServiceError;

/// Who does what to which target, and the audit chain it is recorded in: one per use case,
/// shared by its refusals, its checks and its final entry.
#[derive(Debug, Clone)]
pub(crate) struct AuditCtx {
    chain: String,
    actor: String,
    action: Action,
    target: String,
}

impl AuditCtx {
    /// An act of someone who is not an authenticated principal (`anonymous`, `server`, the
    /// operator being created), in the `system` chain.
    pub(crate) fn system(
        actor: impl Into<String>,
        action: Action,
        target: impl Into<String>,
    ) -> Self {
        AuditCtx {
            chain: SYSTEM_CHAIN.to_owned(),
            actor: actor.into(),
            action,
            target: target.into(),
        }
    }

    /// An act of `p`, in the `system` chain until [`Self::in_chain`] moves it.
    pub(crate) fn by(p: &Principal, action: Action, target: impl Into<String>) -> Self {
        Self::system(p.actor(), action, target)
    }

    /// The same act, recorded in the chain of collaboration `id`.
    pub(crate) fn in_chain(&self, id: CollaborationId) -> Self {
        AuditCtx {
            chain: id.to_string(),
            ..self.clone()
        }
    }

    /// The same act, on another target.
    pub(crate) fn on(&self, target: impl Into<String>) -> Self {
        AuditCtx {
            target: target.into(),
            ..self.clone()
        }
    }

    /// The entry that records this act with its outcome.
    pub(crate) fn entry(&self, outcome: Outcome, detail: impl Into<String>) -> NewAudit {
        NewAudit {
            chain: self.chain.clone(),
            actor: self.actor.clone(),
            action: self.action.as_str().to_owned(),
            target: self.target.clone(),
            outcome,
            detail: detail.into(),
        }
    }
}

impl CleanRoom {
    // ------------------------------------------------------------------ audit helpers

    /// Appends the entry of `ctx` with its outcome.
    pub(crate) async fn record(
        &self,
        ctx: &AuditCtx,
        outcome: Outcome,
        detail: impl Into<String>,
    ) -> Result<(), ServiceError> {
        self.meta.append_audit(ctx.entry(outcome, detail)).await?;
        Ok(())
    }

    /// Records a refusal and returns the error to give the caller.
    pub(crate) async fn refuse(&self, ctx: &AuditCtx, err: ServiceError) -> ServiceError {
        let detail = err.audit_detail();
        if let Err(e) = self.record(ctx, err.audit_outcome(), detail).await {
            tracing::error!(error = %e, "could not record a refusal in the audit log");
        }
        err
    }

    /// Passes a value through, or records the refusal of the input it came from.
    pub(crate) async fn audited<T, E: Into<ServiceError>>(
        &self,
        ctx: &AuditCtx,
        r: Result<T, E>,
    ) -> Result<T, ServiceError> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(self.refuse(ctx, e.into()).await),
        }
    }

    /// Records, in the `system` chain, that the HTTP adapter started refusing authentication
    /// from `source` (an address or network) after `failures` failed attempts within `window`:
    /// its further attempts in that window are refused without reaching [`Self::authenticate`],
    /// so they are not each recorded. No token material is recorded.
    pub async fn record_auth_throttle(
        &self,
        source: &str,
        failures: u32,
        window: std::time::Duration,
    ) {
        let ctx = AuditCtx::system("anonymous", Action::AuthThrottle, source);
        let detail = format!(
            "{failures} failed authentications within {} s; further attempts from this source \
             are refused until the window ends",
            window.as_secs()
        );
        if let Err(e) = self.record(&ctx, Outcome::Denied, detail).await {
            tracing::error!(error = %e, "could not record an authentication throttle in the audit log");
        }
    }

    /// Records a request that the HTTP adapter refused before it reached a use case (a body
    /// that is not the expected JSON, an unknown ability, a schema that does not parse, an
    /// unsupported media type, a body over a size limit) with the `code` it answered and the
    /// `rule` that was broken: no input values. The refusal goes to the collaboration's chain
    /// when `collab` names one the caller is an active member of, to the `system` chain
    /// otherwise.
    pub async fn record_rejection(
        &self,
        p: &Principal,
        action: Action,
        collab: Option<&str>,
        code: &str,
        rule: &str,
    ) {
        let mut ctx = AuditCtx::by(p, action, "-");
        if let Some(id) = collab.and_then(|c| CollaborationId::parse(c).ok())
            && let Ok(Some(m)) = self.meta.get_membership(id, p.org.id).await
            && m.status == MemberStatus::Active
        {
            ctx = ctx.in_chain(id);
        }
        let detail = format!("{code}: {rule}");
        if let Err(e) = self.record(&ctx, Outcome::Denied, detail).await {
            tracing::error!(error = %e, "could not record a refusal in the audit log");
        }
    }

    // ------------------------------------------------------------------ audit

    /// Entries of an audit chain after `after`, at most `limit`, with the chain's recorded head.
    /// A collaboration's chain is readable by its active members (also after it is closed); the
    /// `system` chain by the operator's admins.
    pub async fn audit_log(
        &self,
        p: &Principal,
        chain: &str,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, Option<ChainHead>), ServiceError> {
        let ctx = AuditCtx::by(p, Action::AuditRead, "-");
        let chain_id = if chain == SYSTEM_CHAIN {
            if !(p.org.is_operator && p.is_admin()) {
                let e = ServiceError::Forbidden(
                    "only the operator's admins may read the system audit log".into(),
                );
                return Err(self.refuse(&ctx.on(SYSTEM_CHAIN), e).await);
            }
            SYSTEM_CHAIN.to_owned()
        } else {
            let (c, _, _) = self.active_member(p, chain, ctx, Need::read()).await?;
            c.id.to_string()
        };
        let limit = limit.clamp(1, 10_000);
        Ok(self.meta.audit_page(&chain_id, after, limit).await?)
    }
}
