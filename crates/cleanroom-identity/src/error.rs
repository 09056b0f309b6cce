use thiserror::Error;

/// Errors of on-premises preparation, each with a stable [`code`](IdentityError::code) and a
/// fault class ([`is_caller_fault`](IdentityError::is_caller_fault)).
///
/// Messages never carry field values or secrets: a prep report or a terminal is shared more
/// widely than the data it describes.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The configuration file is not valid; `line` and `column` are 1-based where known.
    #[error("{}", describe_at("configuration", *.line, *.column, .message))]
    Config {
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// An argument is unacceptable (a short secret, an unknown identifier kind or region).
    #[error("{0}")]
    InvalidInput(String),
    /// The input file is malformed (not the values in it: those are counted, not fatal).
    /// `line` is 1-based; `column` is the header name.
    #[error("{}", describe_data(*.line, .column.as_deref(), .message))]
    InvalidData {
        line: Option<u64>,
        column: Option<String>,
        message: String,
    },
    /// The re-identification risk of the prepared data is above a limit whose action is
    /// `refuse`; no output was written.
    #[error("refused: {0}")]
    RiskRefused(String),
    /// The file system failed. The OS message is the `source`, not repeated in the text: an
    /// error chain printed whole (`{:#}` in the CLI) says it once.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Arrow or Parquet failed on data we built ourselves (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe_at(what: &str, line: Option<usize>, column: Option<usize>, message: &str) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{what}, line {l}, column {c}: {message}"),
        (Some(l), None) => format!("{what}, line {l}: {message}"),
        _ => format!("{what}: {message}"),
    }
}

fn describe_data(line: Option<u64>, column: Option<&str>, message: &str) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l}, column {c}: {message}"),
        (Some(l), None) => format!("line {l}: {message}"),
        (None, Some(c)) => format!("column {c}: {message}"),
        (None, None) => message.to_owned(),
    }
}

impl IdentityError {
    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            IdentityError::Config { .. } => "invalid_config",
            IdentityError::InvalidInput(_) => "invalid_input",
            IdentityError::InvalidData { .. } => "invalid_data",
            IdentityError::RiskRefused(_) => "risk_refused",
            IdentityError::Io { .. } => "io",
            IdentityError::Internal(_) => "internal",
        }
    }

    /// True when the user can fix the problem by changing the input, the configuration or the
    /// arguments; false for the outside world (IO) and for bugs.
    pub fn is_caller_fault(&self) -> bool {
        matches!(
            self,
            IdentityError::Config { .. }
                | IdentityError::InvalidInput(_)
                | IdentityError::InvalidData { .. }
                | IdentityError::RiskRefused(_)
        )
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        IdentityError::Config {
            line: None,
            column: None,
            message: message.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> IdentityError {
        let context = context.into();
        move |source| IdentityError::Io { context, source }
    }

    pub(crate) fn data(
        line: Option<u64>,
        column: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        IdentityError::InvalidData {
            line,
            column: column.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl From<parquet::errors::ParquetError> for IdentityError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        IdentityError::Internal(format!("parquet: {e}"))
    }
}

impl From<arrow::error::ArrowError> for IdentityError {
    fn from(e: arrow::error::ArrowError) -> Self {
        IdentityError::Internal(format!("arrow: {e}"))
    }
}
