use cleanroom_privacy::PrivacyError;
use thiserror::Error;

/// Why a query was refused or failed. Every refusal is decided at planning time from the query
/// text, the schemas and the policies, never from the data, so a refusal reveals nothing about
/// anyone's rows.
#[derive(Debug, Error)]
pub enum QueryError {
    /// The SQL does not parse or does not plan (syntax, unknown table or column): caller's fault.
    #[error("{0}")]
    Invalid(String),
    /// A rule of a data owner's policy (or of the room) refuses the query: caller's fault. `rule`
    /// is a stable code naming the rule; `column` the column concerned, when there is one.
    #[error("{message}")]
    Refused {
        rule: &'static str,
        column: Option<String>,
        message: String,
    },
    /// The privacy parameters cannot be met (epsilon too small for the bounds, and so on).
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
    /// Reading the data failed (disk, keys): the outside world's fault.
    #[error("reading the data failed: {0}")]
    Unavailable(String),
    /// The analysis cluster ([`crate::Cluster`]) could not be reached or failed to run the
    /// plan (an executor lost, a stage failed too often). Only the kind of failure is kept.
    #[error("the analysis cluster at {at} failed: {kind}")]
    Cluster { at: String, kind: String },
    /// The analysis failed while running. Only the kind of failure is kept (for example
    /// `arrow/cast`): the engine's own text can quote a row's value, so it is never passed on.
    /// The checker proves every expression total, so this is a bug or a resource limit, not
    /// something the data can cause on purpose.
    #[error("the analysis failed while running ({0})")]
    Execution(String),
    /// The analysis needed more memory than the process's limit allows
    /// ([`crate::limit_memory`]), after spilling as much as the spill quota (`spill_limit`,
    /// `None` when spilling is off) allowed.
    #[error("the analysis needs more memory than the limit allows")]
    OutOfMemory {
        limit: Option<usize>,
        spill_limit: Option<u64>,
    },
    /// A bug: the engine rejected a plan this crate built.
    #[error("internal query error: {0}")]
    Internal(String),
}

impl QueryError {
    pub(crate) fn refused(
        rule: &'static str,
        column: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        QueryError::Refused {
            rule,
            column: column.map(str::to_owned),
            message: message.into(),
        }
    }

    /// The stable code of a refusal (`None` for other errors).
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            QueryError::Refused { rule, .. } => Some(rule),
            _ => None,
        }
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> QueryError {
    QueryError::Internal(e.to_string())
}
