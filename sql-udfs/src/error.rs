//! The SQL layer's error type.

use quiver_engine::QuiverError;

pub type Result<T, E = SqlError> = std::result::Result<T, E>;

/// Errors of parsing and running ML statements and functions.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("SQL error: {0}")]
    Parse(String),

    #[error(transparent)]
    Engine(#[from] QuiverError),
}
