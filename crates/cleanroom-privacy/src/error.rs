use thiserror::Error;

/// Errors of the privacy layer.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PrivacyError {
    /// A privacy parameter is out of range (caller's fault).
    #[error("invalid privacy parameter: {0}")]
    InvalidParameter(String),
    /// The owner's budget cannot pay for this release (caller's fault; the owner may grant more).
    #[error(
        "the privacy budget is exhausted: this release costs epsilon {cost_epsilon} (delta {cost_delta:e}) but only epsilon {left_epsilon} (delta {left_delta:e}) is left"
    )]
    BudgetExhausted {
        cost_epsilon: f64,
        cost_delta: f64,
        left_epsilon: f64,
        left_delta: f64,
    },
    /// A single release would cost more than the owner allows per query (caller's fault).
    #[error(
        "this release costs epsilon {cost_epsilon} but a single query may spend at most {cap_epsilon}"
    )]
    PerQueryCap { cost_epsilon: f64, cap_epsilon: f64 },
    /// A bound or sensitivity computation would overflow (caller's fault: bounds too wide).
    #[error("overflow: {0}")]
    Overflow(String),
    /// OpenDP refused or failed (a bug or an unsupported combination).
    #[error("mechanism error: {0}")]
    Mechanism(String),
}

impl From<opendp::error::Error> for PrivacyError {
    fn from(e: opendp::error::Error) -> Self {
        PrivacyError::Mechanism(format!(
            "{:?}: {}",
            e.variant,
            e.message.as_deref().unwrap_or("")
        ))
    }
}
