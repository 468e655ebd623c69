//! The SQL layer's error type.

use quiver_engine::QuiverError;
use quiver_mllib::MllibError;

pub type Result<T, E = SqlError> = std::result::Result<T, E>;

/// Errors of parsing and running ML statements and functions.
#[derive(thiserror::Error)]
pub enum SqlError {
    #[error("SQL error: {0}")]
    Parse(String),

    #[error("invalid option '{option}': {reason}")]
    InvalidOption { option: String, reason: String },

    #[error("model '{name}' already exists (use CREATE OR REPLACE MODEL, or IF NOT EXISTS)")]
    ModelExists { name: String },

    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Mllib(#[from] MllibError),

    #[error(transparent)]
    Engine(#[from] QuiverError),
}

impl From<datafusion::error::DataFusionError> for SqlError {
    /// Unwraps an error a Quiver SQL function raised inside the query, else the engine's.
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError;
        match e {
            DataFusionError::External(boxed) => match boxed.downcast::<SqlError>() {
                Ok(s) => *s,
                Err(other) => SqlError::Engine(QuiverError::from(DataFusionError::External(other))),
            },
            DataFusionError::Context(ctx, inner) => match SqlError::from(*inner) {
                SqlError::Engine(QuiverError::DataFusion(df)) => {
                    SqlError::Engine(QuiverError::DataFusion(df.context(ctx)))
                }
                other => other,
            },
            other => SqlError::Engine(QuiverError::from(other)),
        }
    }
}

impl From<SqlError> for QuiverError {
    /// For callers whose errors are the engine's (the `quiver` command).
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Engine(q) => q,
            SqlError::Mllib(MllibError::Engine(q)) => q,
            other => QuiverError::Worded(other.to_string()),
        }
    }
}

impl SqlError {
    /// As a DataFusion error (for errors raised inside functions during a query).
    pub fn into_datafusion(self) -> datafusion::error::DataFusionError {
        match self {
            SqlError::Engine(e) => e.into_datafusion(),
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        }
    }
}

/// Debug shows the message: errors raised on a cluster executor reach the client as the
/// `Debug` text of the error chain, and there the message is what a user needs.
impl std::fmt::Debug for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
