use thiserror::Error;

/// Errors of the storage layer. Each variant has a fault class (see [`StorageError::is_caller_fault`]).
///
/// Messages never carry field values: an error is an output channel to whoever uploaded, and
/// logs must stay free of row data.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The uploaded data does not match its declared schema or is not well-formed.
    /// `line` and `column` are 1-based where known.
    #[error("{}", describe_invalid(*.line, .column.as_deref(), .message))]
    InvalidData {
        line: Option<u64>,
        column: Option<String>,
        message: String,
    },
    /// Reading the upload itself failed (the client went away, or the body exceeded a limit).
    #[error("the upload could not be read to the end: {0}")]
    UploadStream(String),
    /// The upload is larger than the server accepts.
    #[error("upload too large: {0}")]
    TooLarge(String),
    /// A wrapped key or an encrypted file could not be opened with the key given.
    #[error("decryption failed: wrong key or tampered data")]
    Decrypt,
    /// The master key is missing or malformed.
    #[error("master key: {0}")]
    MasterKey(String),
    /// The file system failed.
    #[error("storage I/O error: {context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The object store (S3-compatible) failed or could not be reached.
    #[error("object storage: {context}: {message}")]
    Remote { context: String, message: String },
    /// Parquet or Arrow failed while writing or reading our own files (a bug or corruption).
    #[error("internal storage error: {0}")]
    Internal(String),
}

fn describe_invalid(line: Option<u64>, column: Option<&str>, message: &str) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l}, column {c}: {message}"),
        (Some(l), None) => format!("line {l}: {message}"),
        (None, Some(c)) => format!("column {c}: {message}"),
        (None, None) => message.to_owned(),
    }
}

impl StorageError {
    pub fn invalid(line: Option<u64>, column: Option<String>, message: impl Into<String>) -> Self {
        StorageError::InvalidData {
            line,
            column,
            message: message.into(),
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
        let context = context.into();
        move |source| StorageError::Io { context, source }
    }

    /// True when the caller can fix the problem by sending different input.
    pub fn is_caller_fault(&self) -> bool {
        matches!(
            self,
            StorageError::InvalidData { .. }
                | StorageError::TooLarge(_)
                | StorageError::UploadStream(_)
        )
    }
}

impl From<parquet::errors::ParquetError> for StorageError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        StorageError::Internal(format!("parquet: {e}"))
    }
}

impl From<arrow::error::ArrowError> for StorageError {
    fn from(e: arrow::error::ArrowError) -> Self {
        StorageError::Internal(format!("arrow: {e}"))
    }
}
