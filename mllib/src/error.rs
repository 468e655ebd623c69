//! MLlib's error type: one variant per rule a user can break.

use quiver_engine::QuiverError;

pub type Result<T, E = MllibError> = std::result::Result<T, E>;

/// Errors of fitting, applying, saving and loading models.
#[derive(thiserror::Error)]
pub enum MllibError {
    #[error("invalid parameter '{param}': {reason}")]
    InvalidParam { param: String, reason: String },

    #[error("unknown parameter '{param}' for {algorithm}; known: {known}")]
    UnknownParam {
        param: String,
        algorithm: String,
        known: String,
    },

    #[error("unknown algorithm '{name}'; the catalogue holds {known}")]
    UnknownAlgorithm { name: String, known: String },

    #[error("unknown option '{option}' for model_type '{model_type}'; valid options: {valid}")]
    UnknownOption {
        option: String,
        model_type: String,
        valid: String,
    },

    #[error("invalid option '{option}': {reason}")]
    InvalidOption { option: String, reason: String },

    #[error("invalid parameter 'reg_param': {0} is negative (or not finite); it must be >= 0")]
    NegativeRegParam(f64),

    #[error("invalid parameter 'elastic_net_param': {0} is outside [0, 1]")]
    ElasticNetOutOfRange(f64),

    #[error("invalid parameter 'k' = {k}: {reason}")]
    InvalidK { k: usize, reason: String },

    #[error("invalid parameters: min ({min}) must be below max ({max})")]
    MinNotBelowMax { min: f64, max: f64 },

    #[error("invalid parameter 'output_col': the output column needs a name")]
    EmptyOutputColumn,

    #[error("model '{name}' is a {found}, not a {expected}")]
    WrongModelKind {
        name: String,
        expected: String,
        found: String,
    },

    #[error(
        "model '{name}' ({kind}) has format version {found}; this build reads up to {supported}"
    )]
    UnsupportedFormatVersion {
        name: String,
        kind: String,
        found: u32,
        supported: u32,
    },

    #[error("model '{name}' is of kind '{kind}', which this build cannot load")]
    UnknownModelKind { name: String, kind: String },

    #[error("model '{name}' is corrupt: {reason}")]
    CorruptModel { name: String, reason: String },

    #[error(transparent)]
    Engine(#[from] QuiverError),
}

impl From<arrow::error::ArrowError> for MllibError {
    fn from(e: arrow::error::ArrowError) -> Self {
        MllibError::Engine(QuiverError::Arrow(e))
    }
}

impl From<MllibError> for QuiverError {
    /// For callers whose errors are the engine's (the `quiver` command).
    fn from(e: MllibError) -> Self {
        match e {
            MllibError::Engine(q) => q,
            other => QuiverError::Worded(other.to_string()),
        }
    }
}

/// Debug shows the message: errors raised on a cluster executor reach the client as the
/// `Debug` text of the error chain, and there the message is what a user needs.
impl std::fmt::Debug for MllibError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
