use thiserror::Error;

/// Errors raised while parsing domain values. All are the caller's fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A value did not satisfy the rules of its type; the message says which rule.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

impl CoreError {
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        CoreError::Invalid {
            what,
            reason: reason.into(),
        }
    }
}
