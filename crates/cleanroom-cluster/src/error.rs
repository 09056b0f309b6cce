use thiserror::Error;

/// Why a cluster process could not start or a cluster could not be used.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// A setting is wrong (an address, a key file, a work directory): the message says which
    /// and how to fix it.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Storage(#[from] cleanroom_storage::StorageError),
    /// Ballista failed (its own text: it names addresses and stages, never a row).
    #[error("the cluster failed: {0}")]
    Ballista(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl From<ballista_core::error::BallistaError> for ClusterError {
    fn from(e: ballista_core::error::BallistaError) -> Self {
        ClusterError::Ballista(e.to_string())
    }
}
