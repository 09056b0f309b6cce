//! Audit helpers of every use case (append, refuse, record a rejection) and reading a chain.

use cleanroom_core::audit::Action;
use cleanroom_core::audit::{AuditEntry, ChainHead, Outcome, SYSTEM_CHAIN};
use cleanroom_core::ids::CollaborationId;
use cleanroom_core::party::MemberStatus;
use cleanroom_meta::NewAudit;

use super::*;
use crate::ServiceError;

impl CleanRoom {
    // ------------------------------------------------------------------ audit helpers

    pub(crate) fn audit(
        chain: &str,
        actor: &str,
        action: Action,
        target: &str,
        outcome: Outcome,
        detail: impl Into<String>,
    ) -> NewAudit {
        NewAudit {
            chain: chain.to_owned(),
            actor: actor.to_owned(),
            action: action.as_str().to_owned(),
            target: target.to_owned(),
            outcome,
            detail: detail.into(),
        }
    }

    /// Records a refusal and returns the error to give the caller.
    pub(crate) async fn refuse(
        &self,
        chain: &str,
        actor: &str,
        action: Action,
        target: &str,
        err: ServiceError,
    ) -> ServiceError {
        let detail = err.audit_detail();
        let entry = Self::audit(chain, actor, action, target, err.audit_outcome(), detail);
        if let Err(e) = self.meta.append_audit(entry).await {
            tracing::error!(error = %e, "could not record a refusal in the audit log");
        }
        err
    }

    /// Passes a value through, or records the refusal of the input it came from.
    pub(crate) async fn audited<T, E: Into<ServiceError>>(
        &self,
        r: Result<T, E>,
        chain: &str,
        actor: &str,
        action: Action,
        target: &str,
    ) -> Result<T, ServiceError> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(self.refuse(chain, actor, action, target, e.into()).await),
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
        let mut chain = SYSTEM_CHAIN.to_owned();
        if let Some(id) = collab.and_then(|c| CollaborationId::parse(c).ok())
            && let Ok(Some(m)) = self.meta.get_membership(id, p.org.id).await
            && m.status == MemberStatus::Active
        {
            chain = id.to_string();
        }
        let entry = Self::audit(
            &chain,
            &p.actor(),
            action,
            "-",
            Outcome::Denied,
            format!("{code}: {rule}"),
        );
        if let Err(e) = self.meta.append_audit(entry).await {
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
        let chain_id = if chain == SYSTEM_CHAIN {
            if !(p.org.is_operator && p.is_admin()) {
                let e = ServiceError::Forbidden(
                    "only the operator's admins may read the system audit log".into(),
                );
                return Err(self
                    .refuse(SYSTEM_CHAIN, &p.actor(), Action::AuditRead, SYSTEM_CHAIN, e)
                    .await);
            }
            SYSTEM_CHAIN.to_owned()
        } else {
            let (c, _) = self
                .active_member(p, chain, Action::AuditRead, "-", None, false)
                .await?;
            c.id.to_string()
        };
        let limit = limit.clamp(1, 10_000);
        Ok(self.meta.audit_page(&chain_id, after, limit).await?)
    }
}
