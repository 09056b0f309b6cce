use thiserror::Error;

/// Errors of the metadata store.
#[derive(Debug, Error)]
pub enum MetaError {
    /// A uniqueness rule or a state precondition was violated (caller's fault).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A privacy ledger cannot pay for an analysis (caller's fault; the owner may grant more).
    #[error("budget: {0}")]
    BudgetExhausted(String),
    /// The thing asked for does not exist (caller's fault).
    #[error("not found: {0}")]
    NotFound(String),
    /// The database is unreachable or failed (outside world).
    #[error("metadata store unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A stored row does not parse: corruption or a bug (internal).
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// An audit chain holds entries past its recorded head, or entries without a head record:
    /// something wrote to it outside the store. Nothing more is appended to it.
    #[error("the audit chain {0} was changed outside the server")]
    ChainBroken(String),
}

impl From<sqlx::Error> for MetaError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return MetaError::Conflict("already exists".into());
        }
        MetaError::Unavailable(e)
    }
}

impl From<cleanroom_core::CoreError> for MetaError {
    fn from(e: cleanroom_core::CoreError) -> Self {
        MetaError::Corrupt(e.to_string())
    }
}
