use cleanroom_psi::PsiError;
use thiserror::Error;

/// Errors of the PSI transport. Like the protocol's, they carry no identifiers or data.
#[derive(Debug, Error)]
pub enum NetError {
    /// A certificate or key file is missing or unreadable (caller's fault).
    #[error("{0}")]
    Credentials(String),
    /// A flag or setting is invalid (caller's fault).
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    /// Could not listen or connect.
    #[error("cannot reach the peer at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    /// The TLS handshake failed (the peer is not speaking TLS, or refused our certificate).
    #[error("TLS handshake with the peer failed: {0}")]
    Tls(String),
    /// The peer presented a certificate other than the pinned one.
    #[error(
        "the peer's certificate (SHA-256 {presented}) is not the pinned one (--peer-cert-sha256 {pinned}); refusing to talk to it"
    )]
    PinMismatch { presented: String, pinned: String },
    /// The connection closed before the session finished.
    #[error("the peer closed the connection in the middle of the session ({0})")]
    PeerClosed(String),
    /// The peer stopped the session and told us why (a stable error code).
    #[error("the peer stopped the session: {0}")]
    PeerAborted(String),
    /// The peer said nothing for too long.
    #[error("the peer sent nothing for {secs} s ({what}); giving up")]
    Timeout { what: &'static str, secs: u64 },
    /// The session as a whole took longer than allowed ([`crate::Limits::session_timeout`]).
    #[error(
        "the session did not finish within {secs} s, the longest a session may take; giving up \
         (`cleanroom psi` takes a longer one with --session-timeout)"
    )]
    SessionTimeout { secs: u64 },
    /// The peer announced a frame larger than we accept.
    #[error("the peer sent a frame of {size} bytes; at most {max} are accepted")]
    FrameTooLarge { size: u64, max: u64 },
    /// The task writing our messages stopped (its own error is reported instead).
    #[error("the connection stopped taking our messages")]
    WriterStopped,
    /// Another IO error on the connection.
    #[error("connection error: {0}")]
    Io(std::io::Error),
    /// The protocol failed (version mismatch, malformed or unexpected message, caps).
    #[error(transparent)]
    Psi(#[from] PsiError),
}

impl NetError {
    /// A stable code for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            NetError::Credentials(_) => "credentials",
            NetError::InvalidSetting(_) => "invalid_setting",
            NetError::Connect { .. } => "unreachable",
            NetError::Tls(_) => "tls_handshake",
            NetError::PinMismatch { .. } => "pin_mismatch",
            NetError::PeerClosed(_) => "peer_closed",
            NetError::PeerAborted(_) => "peer_aborted",
            NetError::Timeout { .. } => "timeout",
            NetError::SessionTimeout { .. } => "session_timeout",
            NetError::FrameTooLarge { .. } => "frame_too_large",
            NetError::Io(_) | NetError::WriterStopped => "io",
            NetError::Psi(e) => e.code(),
        }
    }
}

impl From<std::io::Error> for NetError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
                NetError::PeerClosed(e.kind().to_string())
            }
            _ => NetError::Io(e),
        }
    }
}
