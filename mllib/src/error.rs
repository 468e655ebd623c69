//! MLlib's error type.

use quiver_engine::QuiverError;

pub type Result<T, E = MllibError> = std::result::Result<T, E>;

/// Errors of fitting and applying models.
#[derive(Debug, thiserror::Error)]
pub enum MllibError {
    #[error("invalid parameter '{param}': {reason}")]
    InvalidParam { param: String, reason: String },

    #[error(transparent)]
    Engine(#[from] QuiverError),
}
