use thiserror::Error;

/// Errors of the privacy layer.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PrivacyError {
    /// A privacy parameter is out of range (caller's fault).
    #[error("invalid privacy parameter: {0}")]
    InvalidParameter(String),
    /// The owner's budget cannot pay for this release (caller's fault; the owner may grant more).
    /// The message names what ran out: epsilon, delta, or both.
    #[error("{}", exhausted(*cost_epsilon, *cost_delta, *left_epsilon, *left_delta))]
    BudgetExhausted {
        cost_epsilon: f64,
        cost_delta: f64,
        left_epsilon: f64,
        left_delta: f64,
    },
    /// A single release would cost more than the owner allows per query (caller's fault).
    #[error("{}", over_cap(*cost_epsilon, *cost_delta, *cap_epsilon, *cap_delta))]
    PerQueryCap {
        cost_epsilon: f64,
        cost_delta: f64,
        cap_epsilon: f64,
        cap_delta: f64,
    },
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

fn exhausted(cost_e: f64, cost_d: f64, left_e: f64, left_d: f64) -> String {
    let (e, d) = (cost_e > left_e, cost_d > left_d);
    let what = match (e, d) {
        (true, true) => "epsilon and delta are",
        (false, true) => "delta is",
        _ => "epsilon is",
    };
    format!(
        "the privacy budget's {what} exhausted: this release costs epsilon {cost_e} and delta {cost_d:e}, \
         but only epsilon {left_e} and delta {left_d:e} are left (the owner may grant more)"
    )
}

fn over_cap(cost_e: f64, cost_d: f64, cap_e: f64, cap_d: f64) -> String {
    if cost_d > cap_d && cost_e <= cap_e {
        format!(
            "this release costs delta {cost_d:e} but a single query may spend at most delta {cap_d:e} \
             (ask for a smaller delta, or the owner may raise the per-query cap)"
        )
    } else {
        format!(
            "this release costs epsilon {cost_e} but a single query may spend at most epsilon {cap_e} \
             (ask for a smaller epsilon, or the owner may raise the per-query cap)"
        )
    }
}
