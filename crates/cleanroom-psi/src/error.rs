use thiserror::Error;

/// Who is at fault when a PSI session fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Our own caller: bad parameters or input.
    Caller,
    /// The peer: it broke the protocol, sent malformed data, or wants something we refuse.
    Peer,
    /// A bug or an exhausted resource on this side.
    Internal,
}

/// Errors of the PSI protocols. Messages never contain identifiers, points or values: an error
/// text may be shown to, or caused by, the other party.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PsiError {
    /// Our caller passed an invalid parameter.
    #[error("invalid PSI parameter: {0}")]
    InvalidParameter(String),
    /// The peer's first message does not start with the cleanroom-psi magic.
    #[error("the peer does not speak the cleanroom PSI protocol (bad magic)")]
    NotPsi,
    /// The peer speaks another protocol version.
    #[error("peer speaks PSI protocol v{theirs}, we speak v{ours}")]
    VersionMismatch { ours: u16, theirs: u16 },
    /// Both sides run the same protocol version but disagree on what to run.
    #[error("the peer wants a different session: {0}")]
    Incompatible(String),
    /// The peer announces or sends more items than our cap allows.
    #[error("the peer sends {announced} items but at most {cap} are accepted (--max-peer-items)")]
    TooManyItems { announced: u64, cap: u64 },
    /// A message could not be decoded.
    #[error("malformed message from the peer: {0}")]
    Malformed(String),
    /// A message arrived that does not fit the protocol step.
    #[error("protocol violation: expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    /// A group element from the peer is not a valid ristretto255 encoding (or is the identity).
    #[error("the peer sent an invalid group element")]
    InvalidPoint,
    /// The peer's stream does not match what it announced.
    #[error("the peer's stream does not match its announcement: {0}")]
    CountMismatch(String),
    /// A homomorphic sum could not be decrypted within its declared bound.
    #[error("the sum is outside its declared bound and cannot be decrypted")]
    SumOutOfRange,
    /// Differential privacy noise could not be calibrated or drawn.
    #[error("differential privacy: {0}")]
    Privacy(String),
    /// The operating system's random number generator failed, or a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl PsiError {
    /// A stable, machine-readable code for scripts and logs.
    pub fn code(&self) -> &'static str {
        match self {
            PsiError::InvalidParameter(_) => "invalid_parameter",
            PsiError::NotPsi => "not_psi",
            PsiError::VersionMismatch { .. } => "version_mismatch",
            PsiError::Incompatible(_) => "incompatible_session",
            PsiError::TooManyItems { .. } => "too_many_items",
            PsiError::Malformed(_) => "malformed_message",
            PsiError::Unexpected { .. } => "protocol_violation",
            PsiError::InvalidPoint => "invalid_point",
            PsiError::CountMismatch(_) => "count_mismatch",
            PsiError::SumOutOfRange => "sum_out_of_range",
            PsiError::Privacy(_) => "privacy",
            PsiError::Internal(_) => "internal",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            PsiError::InvalidParameter(_) | PsiError::Privacy(_) => Fault::Caller,
            PsiError::Internal(_) => Fault::Internal,
            _ => Fault::Peer,
        }
    }
}

impl From<cleanroom_privacy::PrivacyError> for PsiError {
    fn from(e: cleanroom_privacy::PrivacyError) -> Self {
        PsiError::Privacy(e.to_string())
    }
}
