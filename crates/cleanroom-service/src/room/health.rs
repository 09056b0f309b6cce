//! Readiness: whether the room can serve requests now (its metadata store answers and its
//! data files can be written), for load balancers and orchestrators.

use cleanroom_core::audit::Action;

use super::{AuditCtx, CleanRoom, Principal};
use crate::ServiceError;

/// What a readiness check found. The reasons are for the operator's log, not for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// The metadata store answered a read.
    pub metadata: Result<(), String>,
    /// A file could be written and removed where uploads are written.
    pub data: Result<(), String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.metadata.is_ok() && self.data.is_ok()
    }
}

impl CleanRoom {
    /// Checks the metadata store (a read of the system chain's head) and the data files (a
    /// probe file written, synced and removed). Neither check records anything.
    pub async fn readiness(&self) -> Readiness {
        let metadata = self
            .meta
            .audit_head(cleanroom_core::audit::SYSTEM_CHAIN)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        let files = self.files.clone();
        let data = match tokio::task::spawn_blocking(move || files.probe()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the probe did not finish: {e}")),
        };
        Readiness { metadata, data }
    }
}

impl CleanRoom {
    /// Whether `p` may read the server's metrics: the operator's admins only. A refusal is
    /// audited; an allowed read is not (a scraper reads every few seconds).
    pub async fn authorize_metrics(&self, p: &Principal) -> Result<(), ServiceError> {
        if p.org.is_operator && p.is_admin() {
            return Ok(());
        }
        let ctx = AuditCtx::by(p, Action::MetricsRead, "-");
        let e = ServiceError::Forbidden(
            "only the operator's admins may read the server's metrics".into(),
        );
        Err(self.refuse(&ctx, e).await)
    }
}
