use cleanroom_meta::MetaError;
use cleanroom_storage::StorageError;
use thiserror::Error;

/// What went wrong, classified by whose fault it is. The server turns each variant into an HTTP
/// status and a stable `code`; the CLI into an exit status. Messages are safe to show to the
/// caller: no secrets, no row values, nothing about other parties the caller may not see.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// No valid credentials (unknown, malformed or revoked token).
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing, or the caller may not know it exists.
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with the current state (a name in use, an upload in progress).
    #[error("{0}")]
    Conflict(String),
    /// A malformed argument (a name, a schema, a header).
    #[error("{0}")]
    InvalidInput(String),
    /// Uploaded data that does not match its declared schema; line and column are 1-based.
    #[error("{message}")]
    InvalidData {
        message: String,
        line: Option<u64>,
        column: Option<String>,
    },
    /// The upload exceeds a limit.
    #[error("{0}")]
    TooLarge(String),
    /// An analysis refused by a rule of a data owner's policy or of the room. `rule` is a stable
    /// code naming the rule, `column` the column concerned.
    #[error("{message}")]
    PolicyRefused {
        rule: String,
        column: Option<String>,
        message: String,
    },
    /// A one-time grant is not in a state that allows this: an activation not (yet) approved
    /// (`activation_not_approved`) or already used (`activation_consumed`). `code` is stable.
    #[error("{message}")]
    GrantState { code: &'static str, message: String },
    /// A privacy budget cannot pay for an analysis (exhausted, or above the per-query cap).
    #[error("{0}")]
    BudgetExhausted(String),
    /// The collaboration is closed and its data destroyed.
    #[error("{0}")]
    Gone(String),
    /// A dependency (disk, database) is unavailable; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// A charged analysis failed while running. The message is a fixed sentence, never the
    /// engine's text (which can quote a row's value); the charge stays.
    #[error("{0}")]
    AnalysisFailed(String),
    /// A charged analysis needed more memory than the server's limit (`--max-memory`) allows.
    /// The message names the limit, nothing of the data; the charge stays.
    #[error("{0}")]
    MemoryLimit(String),
    /// The audit chain of a collaboration (or the system chain) holds entries past its recorded
    /// head, or entries without a head: it was changed outside the server. Nothing more is
    /// written to it until the operator has investigated.
    #[error("{0}")]
    ChainBroken(String),
    /// A bug or corruption. The message is for logs; callers see a generic text.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Unauthenticated(_) => "unauthenticated",
            ServiceError::Forbidden(_) => "forbidden",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::InvalidInput(_) => "invalid_input",
            ServiceError::InvalidData { .. } => "invalid_data",
            ServiceError::TooLarge(_) => "payload_too_large",
            ServiceError::Gone(_) => "collaboration_closed",
            ServiceError::PolicyRefused { .. } => "policy_violation",
            ServiceError::BudgetExhausted(_) => "budget_exhausted",
            ServiceError::GrantState { code, .. } => code,
            ServiceError::Unavailable(_) => "unavailable",
            ServiceError::AnalysisFailed(_) => "analysis_failed",
            ServiceError::MemoryLimit(_) => "memory_limit",
            ServiceError::ChainBroken(_) => "audit_chain_broken",
            ServiceError::Internal(_) => "internal",
        }
    }

    /// The outcome recorded in the audit log for a refusal or failure of this kind.
    pub fn audit_outcome(&self) -> cleanroom_core::audit::Outcome {
        use cleanroom_core::audit::Outcome;
        match self {
            ServiceError::Unavailable(_)
            | ServiceError::Internal(_)
            | ServiceError::AnalysisFailed(_)
            | ServiceError::MemoryLimit(_)
            | ServiceError::ChainBroken(_) => Outcome::Failed,
            _ => Outcome::Denied,
        }
    }
}

impl ServiceError {
    /// The message as the audit log keeps it: for invalid input only the rule that was broken,
    /// since the rest may repeat what the caller sent (a pasted secret included):
    /// `invalid organisation name: may contain only …` is kept as `invalid organisation name`.
    pub fn audit_text(&self) -> String {
        match self {
            ServiceError::InvalidInput(m) => m
                .split_once(": ")
                .map_or(m.as_str(), |(rule, _)| rule)
                .to_owned(),
            other => other.to_string(),
        }
    }

    /// The detail of a refusal's audit entry: its code and [`ServiceError::audit_text`].
    pub fn audit_detail(&self) -> String {
        format!("{}: {}", self.code(), self.audit_text())
    }
}

impl From<cleanroom_core::CoreError> for ServiceError {
    fn from(e: cleanroom_core::CoreError) -> Self {
        ServiceError::InvalidInput(e.to_string())
    }
}

impl From<MetaError> for ServiceError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Conflict(m) => ServiceError::Conflict(m),
            MetaError::NotFound(m) => ServiceError::NotFound(m),
            MetaError::Unavailable(src) => {
                tracing::error!(error = %src, "metadata store unavailable");
                ServiceError::Unavailable("the metadata store is unavailable; try again".into())
            }
            MetaError::Corrupt(m) => ServiceError::Internal(format!("metadata: {m}")),
            MetaError::ChainBroken(chain) => ServiceError::ChainBroken(format!(
                "the audit chain {chain} holds entries the server did not write (or has lost its head                  record): nothing more is recorded or changed in it until the operator has investigated                  (`cleanroom audit verify` shows where it breaks)"
            )),
            MetaError::BudgetExhausted(m) => ServiceError::BudgetExhausted(format!(
                "a privacy budget cannot pay for this analysis ({m})"
            )),
        }
    }
}

impl From<StorageError> for ServiceError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::InvalidData {
                line,
                column,
                message,
            } => {
                let full = StorageError::InvalidData {
                    line,
                    column: column.clone(),
                    message,
                }
                .to_string();
                ServiceError::InvalidData {
                    message: full,
                    line,
                    column,
                }
            }
            StorageError::TooLarge(m) => ServiceError::TooLarge(m),
            StorageError::UploadStream(m) => {
                ServiceError::InvalidInput(format!("the upload could not be read to the end: {m}"))
            }
            StorageError::Io { context, source } => {
                tracing::error!(%context, error = %source, "storage I/O failed");
                ServiceError::Unavailable(format!("storage failed while {context}; try again"))
            }
            StorageError::Remote { context, message } => {
                tracing::error!(%context, error = %message, "object storage failed");
                ServiceError::Unavailable(format!(
                    "object storage failed while {context}; try again"
                ))
            }
            other => ServiceError::Internal(other.to_string()),
        }
    }
}
